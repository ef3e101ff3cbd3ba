"""opsbot core, in layers (docs/architecture.md): kernel, storage, audit, cluster, delivery,
features, pipeline, app. Each layer imports only the layers below it (import-linter
contracts in pyproject.toml).
"""

from bot.kernel.version import __version__

__all__ = ["__version__"]
