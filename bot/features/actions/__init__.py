"""Allow-listed actions: argument checks (``arguments``) and running them (``process``).

    prepared = await prepare(action, positionals, named, base_dir=config_dir)
    result = await ActionProcess(prepared, redactor).run()

Nothing is imported here: a bot without actions never loads the runner.
"""
