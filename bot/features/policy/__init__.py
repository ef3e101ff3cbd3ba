"""Policy: the strict/off mode shared by every replica (Redis, or this process) with its
time-boxed off window, and the policy section of the config (mode, per-command rules).
"""
