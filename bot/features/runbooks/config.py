"""Config of the runbooks feature: ``[[runbooks]]``, each a list of steps.

Step values are templates over the runbook's own arguments only (``"{tag}"``), filled in
once the arguments are checked; nothing goes through a shell. Names of actions,
services, checks and channels are checked against their sections in ``references.py``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from bot.features.actions.config import ArgSchema
from bot.kernel.settings import Duration, Name, Strict

PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# Filled in by the runbook itself, for the texts of post steps.
BUILTIN_PLACEHOLDERS = frozenset({"runbook", "request_id", "failure"})
# The marker an approval request for a runbook carries in its ``action`` column.
APPROVAL_MARKER = "runbook:"


class WaitFor(Strict):
    """Poll a service's health until it is in ``state``, for at most ``within``."""

    health: Name
    state: Literal["up", "degraded", "down"] = "up"
    within: Duration = timedelta(minutes=2)
    every: Duration = timedelta(seconds=3)


class Verify(Strict):
    """One check of the outcome: a service's version equals a value, or a check is OK."""

    version: Name | None = None
    equals: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    check: Name | None = None

    @model_validator(mode="after")
    def _one(self) -> Verify:
        if (self.version is None) == (self.check is None):
            raise ValueError("verify needs exactly one of version (with equals) or check")
        if self.version is not None and self.equals is None:
            raise ValueError("verify.version needs equals (the version it must report)")
        if self.check is not None and self.equals is not None:
            raise ValueError("verify.equals goes with version, not check")
        return self


class Post(Strict):
    """A message to channels (names from [channels]): paging the incident channel."""

    channels: Annotated[list[Name], Field(min_length=1)]
    text: Annotated[str, Field(min_length=1, max_length=2000)]


class Step(Strict):
    """Exactly one of ``action`` (with ``args``), ``wait``, ``verify``, ``post``."""

    action: Name | None = None
    args: dict[str, Annotated[str, Field(max_length=200)]] = {}
    wait: WaitFor | None = None
    verify: Verify | None = None
    post: Post | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("action", "wait", "verify", "post") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a step is exactly one of action, wait, verify or post"
                + (f" (this one has {', '.join(kinds)})" if kinds else "")
            )
        if self.args and self.action is None:
            raise ValueError("args go with an action step")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("action", "wait", "verify", "post") if getattr(self, k) is not None)

    def templates(self) -> list[str]:
        """The texts placeholders are filled into."""
        if self.action is not None:
            return list(self.args.values())
        if self.verify is not None and self.verify.equals is not None:
            return [self.verify.equals]
        if self.post is not None:
            return [self.post.text]
        return []


class RunbookConfig(Strict):
    name: Name
    summary: str = ""
    roles: Annotated[list[Name], Field(min_length=1)]
    # Who may approve a runbook with a high-risk action step (another person than the
    # requester); required then (references.py), as for a high-risk action.
    approver_roles: list[Name] = []
    approval_ttl: Duration = timedelta(minutes=15)
    args: list[ArgSchema] = []
    steps: Annotated[list[Step], Field(min_length=1, max_length=50)]
    on_failure: Annotated[list[Step], Field(max_length=20)] = []

    @model_validator(mode="after")
    def _placeholders(self) -> RunbookConfig:
        declared = {arg.name for arg in self.args}
        if len(declared) != len(self.args):
            raise ValueError("an argument name is declared twice")
        for section, steps in (("steps", self.steps), ("on_failure", self.on_failure)):
            for i, step in enumerate(steps):
                allowed = declared | (BUILTIN_PLACEHOLDERS if step.post is not None else set())
                used = {m for text in step.templates() for m in PLACEHOLDER.findall(text)}
                if unknown := sorted(used - allowed):
                    raise ValueError(
                        f"{section}[{i}] uses {', '.join('{' + u + '}' for u in unknown)}, "
                        f"which is not an argument of the runbook "
                        f"(arguments: {', '.join(sorted(declared)) or 'none'})"
                    )
        return self
