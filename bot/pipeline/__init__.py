"""The pipeline: parse -> flood check -> identify -> authorize -> dispatch, one message at a
time, with its audit entries. The one place that decides who may run what.
"""
