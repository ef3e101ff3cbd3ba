"""The console: a terminal adapter with no platform, for the demo, scripts and tests."""
