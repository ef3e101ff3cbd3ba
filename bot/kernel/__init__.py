"""The kernel: value types and contracts every layer speaks (a message and its location,
a reply, a command's spec and arguments, errors, the clock, durations, the adapter
contract, the metrics registry). It imports nothing else of ours, so anything may import it.
"""
