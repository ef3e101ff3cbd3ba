"""An action with its values checked, as the argument checks make it and the runner runs
it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from bot.features.actions.config import ActionConfig


# A dataclass: its environment (secrets) is kept out of its repr with field(repr=False).
@dataclass(frozen=True, slots=True)
class PreparedAction:
    """An action with checked values, ready to run exactly as shown to people."""

    action: ActionConfig
    # Checked values by argument name, in declaration order, defaults filled in;
    # optional arguments without a default that were not given are absent.
    values: dict[str, str]
    # argv[0] absolute; an element whose placeholder names an absent optional argument
    # is left out.
    argv: tuple[str, ...]
    working_dir: Path
    # The whole environment of the process, secrets included: kept out of the repr.
    env: dict[str, str] = field(repr=False)

    def describe(self) -> str:
        """``rollback tag=v1.2`` for chat and the audit trail."""
        parts = [f"{name}={shlex.quote(value)}" for name, value in self.values.items()]
        return " ".join([self.action.name, *parts])
