"""Actions: the allow-listed operations chat may run, their jobs and approvals.

``service`` (ActionService: what /rollback, /run, /approve and /deny call), ``arguments``
(argument checks: a request becomes a PreparedAction), ``process`` (running one in its own
process group, bounded and redacted output), ``jobs`` (the JobBoard: answer or acknowledge,
progress, /cancel, shutdown), ``job_locks`` (limits across replicas), ``approvals`` (the
two-person rule's requests, in the state database), ``config`` (``[[actions]]``, ``[jobs]``).
Who may run, approve or cancel is decided by ``bot.pipeline.authorize``, not here.

    prepared = await prepare(action, positionals, named, base_dir=config_dir)
    result = await ActionProcess(prepared, redactor).run()

Nothing is imported here: a bot without actions never loads the runner.
"""
