"""Alerts: intake from Alertmanager and generic webhooks, the board of firing alerts,
scheduled checks that raise them, and silences that mute them.
"""
