"""Runbooks: several steps run in order and verified (``[[runbooks]]``, ``/runbook``).

``config`` (the steps: an action, a wait for a service's health, a verification of its
version or of a check, a post to channels; ``on_failure`` steps), ``plan`` (a runbook
with its arguments checked and every value filled in, as shown before it runs), and
``service`` (RunbookService: dry run, one approval for the whole runbook, the run itself,
each step audited under the runbook's request id). Action steps run as jobs of the
actions feature, so its slots, locks, timeouts and orphan handling apply. Who may run or
approve a runbook is decided by ``bot.pipeline.authorize``, not here.
"""
