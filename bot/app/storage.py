"""Where the audit log and the state tables live, as the config says: the database URL,
the spool, the secrets to redact, the schema step at start-up."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import structlog
from pydantic import SecretStr

from bot.app.config.models import Config
from bot.audit import AuditStore, check_schema
from bot.audit.redact import Redactor, secrets_in_url
from bot.audit.store import is_connection_error
from bot.audit.trail import AuditTrail, is_embedded, make_dir, migrate
from bot.kernel.clock import Clock
from bot.kernel.errors import DependencyError

log = structlog.get_logger("opsbot.audit")


def database_url(config: Config) -> str:
    """The configured audit database, or the embedded default: an SQLite file in data_dir."""
    if config.audit.database_url:
        return config.audit.database_url
    return f"sqlite+aiosqlite:///{(config.bot.data_dir / 'audit.db').absolute()}"


def spool_path(config: Config) -> Path:
    return config.audit.spool_path or config.bot.data_dir / "audit-spool.jsonl"


def alert_inbox_path(config: Config) -> Path:
    """The alert journal (bot.features.alerts.inbox): beside the audit spool, one per process."""
    return spool_path(config).parent / "alert-inbox.journal"


async def prepare_database(config: Config) -> None:
    """Start-up's schema step. The embedded SQLite file is created and migrated here; a
    configured server is only checked (replicas share it: `opsbot db upgrade` migrates).

    Raises :class:`DependencyError` for an unmigrated, older or newer schema. A server that
    cannot be reached is not fatal: the bot answers and spools until it is back.
    """
    url = database_url(config)
    make_dir(spool_path(config).parent, "audit spool")
    if is_embedded(url):
        await migrate(url)
        return
    try:
        await check_schema(url)
    except DependencyError as exc:
        if exc.original is None or not is_connection_error(exc.original):
            raise
        log.warning(
            "audit.database_unreachable_at_start",
            error=str(exc.original),
            hint="answering anyway; audit records wait in the spool until it is back",
        )


def configured_secrets(config: Config) -> list[str]:
    """Secret values in the config besides the database's: Redis passwords, the actions'
    secret_env, the platform tokens, the alerts token. Whatever echoes one (a script, an
    error) is masked."""
    urls = [q.redis_url.get_secret_value() for q in config.queues]
    if config.state.redis_url is not None:
        urls.append(config.state.redis_url.get_secret_value())
    secrets = [password for url in urls for password in secrets_in_url(url)]
    secrets += [v.get_secret_value() for a in config.actions for v in a.secret_env.values()]
    # Services' and checks' headers, auth and URLs (bot.features.probes.config).
    secrets += [s for service in config.services for s in service.secrets()]
    secrets += [s for check in config.checks for s in check.secrets()]
    for section in (config.slack, config.telegram, config.discord):
        if section is not None:
            secrets += [
                value.get_secret_value()
                for value in section.__dict__.values()
                if isinstance(value, SecretStr)
            ]
    if config.alerts is not None and config.alerts.token is not None:
        secrets.append(config.alerts.token.get_secret_value())
    key = config.audit.chain_key()
    if key is not None:
        secrets.append(key.secret.decode("ascii"))
    return secrets


def open_trail(config: Config, clock: Clock) -> AuditTrail:
    """The trail for ``config``; nothing is opened until ``trail.store.start()``."""
    url = database_url(config)
    redactor = Redactor.for_config(url, config.audit.redact_patterns, configured_secrets(config))
    store = AuditStore(
        url, spool_path=spool_path(config), clock=clock, key=config.audit.chain_key()
    )
    return AuditTrail(
        store,
        redactor,
        replica=config.bot.replica_id,
        excerpt_chars=config.audit.excerpt_chars,
        reply_wait=config.audit.reply_wait,
        clock=clock,
        retention=timedelta(days=config.audit.retention_days),
        retention_every=config.audit.retention_every,
    )
