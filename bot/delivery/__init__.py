"""Delivery: the outbox, the one queue every unprompted post goes through (durable,
per-destination order, rate limits the adapters declare, retries, dead letters), and
the board of connected adapters.
"""
