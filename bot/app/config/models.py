"""The configuration, as typed models. Loaded once at start-up and passed in.

Every model forbids unknown keys: a typo in an allow-list must stop the bot,
not silently grant or deny (errbot#711, #1606).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)

from adapters.discord.config import DiscordSection
from adapters.slack.config import SlackSection
from adapters.telegram.config import TelegramSection
from bot.audit.chain import ChainKey
from bot.cluster.config import StateSection
from bot.delivery.config import ChannelGroup
from bot.features.actions.config import ActionConfig, JobsSection
from bot.features.alerts.check_config import CheckConfig
from bot.features.alerts.config import AlertsSection
from bot.features.heartbeats.config import HeartbeatConfig
from bot.features.policy.config import PolicySection
from bot.features.probes.config import Service
from bot.features.queues.config import QueueConfig
from bot.features.runbooks.config import RunbookConfig
from bot.kernel.settings import Duration, Name, Pattern, Strict
from bot.pipeline.config import FloodSection, Identity, Role


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class BotSection(Strict):
    name: Name = "opsbot"
    # Where the embedded defaults keep their files (the SQLite audit log, its spool).
    data_dir: Path = Path(".opsbot")
    # Names this process in the audit log; start-up closes only its own unfinished
    # commands as interrupted. Give each replica a stable one (e.g. a StatefulSet ordinal).
    replica_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        default_factory=lambda: socket.gethostname()[:64] or "opsbot"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: LogFormat = LogFormat.AUTO
    command_timeout: Duration = timedelta(seconds=30)


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _host(value: str) -> str:
    """An address to bind: an IPv4/IPv6 address or a host name."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is neither an IP address nor a host name "
                "(127.0.0.1 for this machine, 0.0.0.0 for every interface)"
            ) from None
    return value


class HttpSection(Strict):
    enabled: bool = True
    host: Annotated[str, AfterValidator(_host)] = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


def _database_url(value: str) -> str:
    if not value.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
        raise ValueError(
            "must start with sqlite+aiosqlite:/// (a file) or postgresql+asyncpg:// (a server)"
        )
    return value


def _audit_key(value: SecretStr) -> SecretStr:
    ChainKey.from_text(value.get_secret_value())
    return value


def _audit_key_file(path: Path) -> Path:
    read_key_file(path)
    return path


def read_key_file(path: Path) -> ChainKey:
    try:
        text = path.read_bytes()[:4096].decode("ascii")
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not an audit key: not ASCII text") from None
    return ChainKey.from_text(text)


class AuditSection(Strict):
    # The key the audit chain's rows are an HMAC with: without it, someone who can write
    # the database cannot make rows that verify. Keep it out of the database's reach
    # (docs/audit.md: make, keep, rotate). One of these, or neither (rows unkeyed).
    key: Annotated[SecretStr, AfterValidator(_audit_key)] | None = None
    key_file: Annotated[Path, AfterValidator(_audit_key_file)] | None = None
    # None: an SQLite file in bot.data_dir, migrated at start-up. A configured URL
    # (PostgreSQL shared by replicas) is migrated only by `opsbot db upgrade`.
    database_url: Annotated[str, AfterValidator(_database_url)] | None = None
    spool_path: Path | None = None  # default: <data_dir>/audit-spool.jsonl
    retention_days: int = Field(default=365, ge=1, le=3650)
    retention_every: Duration = timedelta(hours=1)
    # Regexes whose matches are replaced by *** in audit records and replies,
    # on top of the built-in token shapes (Slack, Telegram, bearer, URL passwords).
    redact_patterns: list[Pattern] = []
    excerpt_chars: int = Field(default=300, ge=0, le=4000)
    # A read-only command's reply waits at most this long for its audit record to commit.
    reply_wait: Duration = timedelta(seconds=2)
    # The outside witness (docs/audit.md): the chain head appended to this file every
    # witness_every and at shutdown. Put it on another volume than the database.
    witness_path: Path | None = None
    witness_every: Duration = timedelta(minutes=1)
    # Channels (names from [channels]) the head is posted to every witness_post_every
    # while it moves, by the replica that runs scheduled work: the platform keeps it.
    witness_channels: list[Name] = []
    witness_post_every: Duration = timedelta(hours=1)

    @model_validator(mode="after")
    def _one_key(self) -> AuditSection:
        if self.key is not None and self.key_file is not None:
            raise ValueError("set audit.key (OPSBOT_AUDIT_KEY) or audit.key_file, not both")
        return self

    def chain_key(self) -> ChainKey | None:
        """The configured key (the key file is read again: a rotation needs a restart)."""
        if self.key is not None:
            return ChainKey.from_text(self.key.get_secret_value())
        if self.key_file is not None:
            return read_key_file(self.key_file)
        return None


class ConsoleSection(Strict):
    principal: Name | None = None
    channel: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "ops"
    # Set (OPSBOT_CONSOLE_TOKEN): `opsbot run` serves its console on the HTTP server, for
    # `opsbot console --connect` on this host (bot/app/remote_console.py).
    token: SecretStr | None = None


class Config(Strict):
    bot: BotSection = BotSection()
    http: HttpSection = HttpSection()
    flood: FloodSection = FloodSection()
    console: ConsoleSection = ConsoleSection()
    roles: dict[Name, Role] = {}
    identities: dict[Name, Identity] = {}
    channels: dict[Name, ChannelGroup] = {}
    services: list[Service] = []
    policy: PolicySection = PolicySection()
    audit: AuditSection = AuditSection()
    queues: list[QueueConfig] = []
    actions: list[ActionConfig] = []
    jobs: JobsSection = JobsSection()
    runbooks: list[RunbookConfig] = []
    slack: SlackSection | None = None
    telegram: TelegramSection | None = None
    discord: DiscordSection | None = None
    state: StateSection = StateSection()
    heartbeat: list[HeartbeatConfig] = []
    alerts: AlertsSection | None = None
    checks: list[CheckConfig] = []

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def action(self, name: str) -> ActionConfig | None:
        return next((a for a in self.actions if a.name == name), None)

    def queue(self, name: str) -> QueueConfig | None:
        return next((q for q in self.queues if q.name == name), None)
