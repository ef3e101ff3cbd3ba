"""Queues: Redis Streams inspection (length, groups, pending, lag, dead letters) and its
thresholds, behind /queue, /workers, heartbeats and queue checks.
"""
