"""Heartbeats: scheduled status posts (health, queues, a sparkline) to channels, pausable."""
