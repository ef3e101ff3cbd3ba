"""Slack: the Bolt adapter (Socket Mode or HTTP), Block Kit rendering, the app manifest."""
