"""The command registry as the pipeline and /help see it."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from bot.kernel.command import CommandSpec, Principal
from bot.pipeline.authorize import Authorizer


class Catalog:
    def __init__(self, specs: Sequence[CommandSpec[Any, Any]], authorizer: Authorizer) -> None:
        self._specs = {spec.name: spec for spec in specs}
        if len(self._specs) != len(specs):
            raise ValueError("two commands share a name")
        self._authorizer = authorizer

    def get(self, name: str) -> CommandSpec[Any, Any] | None:
        return self._specs.get(name)

    def all(self) -> list[CommandSpec[Any, Any]]:
        return list(self._specs.values())

    def visible_to(
        self, principal: Principal | None, channel: str | None
    ) -> list[CommandSpec[Any, Any]]:
        """Only what this person may run here: help never advertises a denial."""
        return [
            spec
            for spec in self._specs.values()
            if self._authorizer.visible(principal, channel, spec)
        ]

    def suggest(self, name: str, principal: Principal | None, channel: str | None) -> str | None:
        names = [spec.name for spec in self.visible_to(principal, channel)]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        return close[0] if close else None
