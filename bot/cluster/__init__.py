"""What the processes of one deployment share: Redis and HTTP connections, the leader
lease, the scheduler that runs timed work on the leader, and event deduplication.
"""
