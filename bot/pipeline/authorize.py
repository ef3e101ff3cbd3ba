"""Authorization: deny by default, decided before dispatch, and always explainable.

A decision names the rule that matched (a config key path or a built-in rule), so
the audit log can answer "why was this allowed?" after an incident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.app.config.models import Config
from bot.app.config.references import ANY_ROLE
from bot.kernel.command import Access, CommandSpec
from bot.pipeline.identify import Principal


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _ArgRule:
    arg: str
    pattern: re.Pattern[str]
    roles: frozenset[str]
    path: str


@dataclass(frozen=True, slots=True)
class _CommandRule:
    path: str
    roles: frozenset[str] | None  # None: any known principal
    channels: frozenset[str]
    arg_rules: tuple[_ArgRule, ...]


UNKNOWN_USER_RULE = "deny:unknown-user"
_ANYTHING = re.compile(".*", re.DOTALL)


class Authorizer:
    def __init__(self, config: Config, specs: list[CommandSpec[Any]]) -> None:
        admin_roles = frozenset(config.policy.admin_roles)
        self._rules: dict[str, _CommandRule] = {}
        for spec in specs:
            builtin = tuple(
                _ArgRule(
                    arg, _ANYTHING, admin_roles, f"builtin:{spec.name}.{arg}->policy.admin_roles"
                )
                for arg in spec.admin_args
            )
            configured = config.policy.commands.get(spec.name)
            if configured is not None:
                path = f"policy.commands.{spec.name}"
                roles = None if ANY_ROLE in configured.roles else frozenset(configured.roles)
                arg_rules = tuple(
                    _ArgRule(a.name, re.compile(a.pattern), frozenset(a.roles), f"{path}.args[{i}]")
                    for i, a in enumerate(configured.args)
                )
                self._rules[spec.name] = _CommandRule(
                    path, roles, frozenset(configured.channels), builtin + arg_rules
                )
            elif spec.default_access is Access.ANY_PRINCIPAL:
                self._rules[spec.name] = _CommandRule(
                    "builtin:any-principal", None, frozenset(), builtin
                )

    def decide(
        self,
        principal: Principal | None,
        channel: str | None,
        command: str,
        args: dict[str, Any] | None = None,
    ) -> Decision:
        """Decide for a command; with ``args`` None only the command-level rule is checked."""
        if principal is None:
            return Decision(False, UNKNOWN_USER_RULE, "I don't know you")
        rule = self._rules.get(command)
        if rule is None:
            return Decision(
                False, "deny:no-rule", f"no policy rule allows /{command} (deny by default)"
            )
        if rule.roles is not None and rule.roles.isdisjoint(principal.roles):
            return Decision(
                False, rule.path, f"/{command} needs role {_one_of(rule.roles)}{_have(principal)}"
            )
        if rule.channels and channel not in rule.channels:
            return Decision(
                False, rule.path, f"/{command} is only allowed in {_one_of(rule.channels, '#')}"
            )
        matched = rule.path
        for arg_rule in rule.arg_rules if args else ():
            value = (args or {}).get(arg_rule.arg)
            if value is None or value is False or not arg_rule.pattern.search(str(value)):
                continue
            if arg_rule.roles.isdisjoint(principal.roles):
                return Decision(
                    False,
                    arg_rule.path,
                    f"/{command} {arg_rule.arg}={value} needs role "
                    f"{_one_of(arg_rule.roles)}{_have(principal)}",
                )
            matched = arg_rule.path
        return Decision(True, matched)


def _one_of(names: frozenset[str], prefix: str = "") -> str:
    ordered = sorted(names)
    if len(ordered) == 1:
        return f"{prefix}{ordered[0]}"
    return "one of " + ", ".join(f"{prefix}{n}" for n in ordered)


def _have(principal: Principal) -> str:
    roles = ", ".join(sorted(principal.roles)) or "none"
    return f" (you have: {roles})"
