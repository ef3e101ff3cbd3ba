"""Config of the actions feature: allow-listed actions (script, argument schema, roles,
approvers, risk) and jobs."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import (
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from bot.kernel.command import Risk
from bot.kernel.settings import Duration, Name, Pattern, Strict

ArgName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,31}$")]


class ArgSchema(Strict):
    """One argument of an action. Exactly the checks given apply; at least one is required
    unless ``kind`` is integer (a bare string argument would accept anything)."""

    name: ArgName
    description: str = ""
    kind: Annotated[str, StringConstraints(pattern=r"^(string|integer)$")] = "string"
    pattern: Pattern | None = None  # full match, RE2 syntax (bot.kernel.regex)
    choices: list[str] = []
    min: int | None = None
    max: int | None = None
    # argv of a command that prints the allowed values, one per line (e.g. git tag --list).
    values_from: list[str] = []
    values_timeout: Duration = timedelta(seconds=5)
    required: bool = True
    # A string, or a whole number for kind = "integer" (`default = 10`); kept as the text
    # a person would type, which is what the argument's checks read.
    default: str | None = None
    max_length: int = Field(default=128, ge=1, le=4096)

    @field_validator("default", mode="before")
    @classmethod
    def _default_as_typed(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @model_validator(mode="after")
    def _constrained(self) -> ArgSchema:
        if self.kind == "integer" and self.default is not None:
            try:
                number = int(self.default)
            except ValueError:
                raise ValueError(f"default '{self.default}' is not a whole number") from None
            if (self.min is not None and number < self.min) or (
                self.max is not None and number > self.max
            ):
                raise ValueError(f"default {number} is outside min/max")
        if self.kind == "string" and not (self.pattern or self.choices or self.values_from):
            raise ValueError(
                f"argument '{self.name}' needs a pattern, choices or values_from: "
                "an unchecked string argument is not allow-listed"
            )
        if self.kind == "string" and (self.min is not None or self.max is not None):
            raise ValueError("min/max apply to kind = 'integer' only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class ActionConfig(Strict):
    """One allow-listed action: the only kind of thing the bot executes."""

    name: Name
    description: str = ""
    # Never run through a shell: argv[0] is the executable, "{arg}" placeholders are
    # replaced by validated argument values, each as one whole argv element.
    argv: Annotated[list[str], Field(min_length=1)]
    args: list[ArgSchema] = []
    working_dir: Path | None = None
    # The action's whole environment: nothing of the bot's own is inherited.
    env: dict[str, str] = {}
    # Like env, and their values are redacted from output, replies and the audit log.
    secret_env: dict[str, SecretStr] = {}
    timeout: Duration = timedelta(minutes=5)
    # After SIGTERM (timeout, /cancel, shutdown), SIGKILL follows after this long.
    kill_grace: Duration = timedelta(seconds=5)
    max_concurrent: int = Field(default=1, ge=1, le=1000)
    # Actions sharing a lock group never run at the same time (two rollbacks, a rollback
    # and a deploy).
    lock_group: Name | None = None
    risk: Risk = Risk.WRITE
    roles: Annotated[list[Name], Field(min_length=1)]
    # For risk = "high": who may approve (another person than the requester).
    approver_roles: list[Name] = []
    approval_ttl: Duration = timedelta(minutes=15)
    # Bytes of output kept (the tail); the digest covers all of it.
    output_limit: int = Field(default=64_000, ge=1_000, le=10_000_000)

    @model_validator(mode="after")
    def _consistent(self) -> ActionConfig:
        declared = {arg.name for arg in self.args}
        if len(declared) != len(self.args):
            raise ValueError("an argument name is declared twice")
        used = {m for part in self.argv for m in _PLACEHOLDER.findall(part)}
        if unknown := sorted(used - declared):
            raise ValueError(f"argv uses undeclared argument(s): {', '.join(unknown)}")
        if _PLACEHOLDER.search(self.argv[0]):
            raise ValueError("argv[0] (the executable) cannot be a placeholder")
        if self.risk is Risk.HIGH and not self.approver_roles:
            raise ValueError("risk = 'high' needs approver_roles (who may approve)")
        if clash := sorted(set(self.env) & set(self.secret_env)):
            raise ValueError(f"in both env and secret_env: {', '.join(clash)}")
        if short := sorted(k for k, v in self.secret_env.items() if len(v.get_secret_value()) < 4):
            raise ValueError(
                f"secret_env {', '.join(short)}: shorter than 4 characters, so it could "
                "not be redacted from output without garbling it; is it really a secret?"
            )
        return self


class JobsSection(Strict):
    # A command still running after this long is answered with its job id; the result
    # follows in the same thread. Chat platforms want an answer within 3 s.
    ack_after: Duration = timedelta(seconds=2)
    # Progress (the last lines of output) is posted at most this often.
    progress_every: Duration = timedelta(seconds=5)
    progress_lines: int = Field(default=10, ge=1, le=100)
    # On SIGTERM: running jobs get this long to finish, then are cancelled.
    shutdown_grace: Duration = timedelta(seconds=30)
    # How many finished jobs /jobs remembers.
    keep_finished: int = Field(default=50, ge=0, le=10_000)
