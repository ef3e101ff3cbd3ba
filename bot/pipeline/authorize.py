"""Authorization: the one place that decides who may run what, before anything runs.

Deny by default. One :class:`Decision` per request, made in two steps the pipeline takes
in order: the command's rule (roles, channels) as soon as the command is known, then,
once the arguments are read, the argument rules and, for an action command, the action's
own rules: its roles (/rollback, /run, /cancel), its approver roles and the requester
rule (/approve, /deny), and whether a second person must approve (high risk while the
policy mode is strict). A runbook (/runbook) is decided the same way: its roles, and one
approval for the whole of it when one of its actions is high risk. A decision names the
rule that matched (a config key path or a built-in rule), so the audit log can answer
"why was this allowed?" after an incident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msgspec import Struct

from bot.features.actions.config import ActionConfig
from bot.features.actions.service import ActionService
from bot.features.policy.config import PolicyMode, PolicySection
from bot.features.policy.switch import PolicySwitch
from bot.features.runbooks.config import RunbookConfig
from bot.features.runbooks.service import RunbookService
from bot.kernel.command import (
    Access,
    ActionRef,
    ActionVerb,
    Args,
    CommandSpec,
    Decision,
    Principal,
    Risk,
)
from bot.kernel.errors import UsageError, UserError
from bot.kernel.regex import LinearRegex, compile_linear
from bot.pipeline.config import ANY_ROLE


class _ArgRule(Struct, frozen=True):
    arg: str
    pattern: LinearRegex
    roles: frozenset[str]
    path: str


class _CommandRule(Struct, frozen=True):
    path: str
    roles: frozenset[str] | None  # None: any known principal
    channels: frozenset[str]
    arg_rules: tuple[_ArgRule, ...]


UNKNOWN_USER_RULE = "deny:unknown-user"
REQUESTER_MAY_NOT_APPROVE = "approval:requester-may-not-approve"
_ANYTHING = compile_linear("(?s).*")


class Authorizer:
    def __init__(
        self,
        policy: PolicySection,
        specs: Sequence[CommandSpec[Any, Any]],
        *,
        actions: ActionService | None = None,
        policy_switch: PolicySwitch | None = None,
        runbooks: RunbookService | None = None,
    ) -> None:
        """``actions`` and ``policy_switch`` let the authorizer decide action commands
        (without them, every action command is denied); ``runbooks``, runbook commands."""
        self._actions = actions
        self._runbooks = runbooks
        self._switch = policy_switch
        admin_roles = frozenset(policy.admin_roles)
        self._rules: dict[str, _CommandRule] = {}
        self._fixed_actions: dict[str, str] = {}
        for spec in specs:
            builtin = tuple(
                _ArgRule(
                    arg, _ANYTHING, admin_roles, f"builtin:{spec.name}.{arg}->policy.admin_roles"
                )
                for arg in spec.admin_args
            )
            configured = policy.commands.get(spec.name)
            if configured is not None:
                path = f"policy.commands.{spec.name}"
                roles = None if ANY_ROLE in configured.roles else frozenset(configured.roles)
                arg_rules = tuple(
                    _ArgRule(
                        a.name, compile_linear(a.pattern), frozenset(a.roles), f"{path}.args[{i}]"
                    )
                    for i, a in enumerate(configured.args)
                )
                self._rules[spec.name] = _CommandRule(
                    path, roles, frozenset(configured.channels), builtin + arg_rules
                )
            elif spec.default_access is Access.ANY_PRINCIPAL:
                self._rules[spec.name] = _CommandRule(
                    "builtin:any-principal", None, frozenset(), builtin
                )
            fixed = _fixed_action(spec)
            if fixed is not None:
                self._fixed_actions[spec.name] = fixed

    # ------------------------------------------------------------------ the decision

    def decide(
        self,
        principal: Principal | None,
        channel: str | None,
        command: str,
        args: dict[str, Any] | None = None,
    ) -> Decision:
        """The command's rule; with ``args``, its argument rules too."""
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

    async def decide_request(
        self,
        principal: Principal,
        channel: str | None,
        spec: CommandSpec[Any, Any],
        args: Args,
        dumped: dict[str, Any] | None,
    ) -> Decision:
        """The final decision, once the arguments are read: the command's rules, then, for
        an action command, the action's. Raises UsageError or UserError when what the
        command names does not exist (an unknown action or approval request)."""
        decision = self.decide(principal, channel, spec.name, dumped)
        if not decision.allowed or spec.acts_on is None:
            return decision
        ref = spec.acts_on(args)
        if ref is None:
            return decision
        return await self._decide_action(principal, ref)

    async def _decide_action(self, principal: Principal, ref: ActionRef) -> Decision:
        actions = self._actions
        if actions is None:
            return Decision(False, "deny:no-actions", "this bot runs no actions")
        if ref.verb is ActionVerb.RUNBOOK:
            return await self._decide_runbook(principal, ref.target)
        if ref.verb is ActionVerb.RUN:
            action = actions.action(ref.target)
            if action is None:
                mine = sorted(a.name for a in self.runnable(principal))
                known = ", ".join(mine) if mine else "none you may run"
                raise UsageError(f"no action '{ref.target}' is configured (actions: {known})")
            decision = self.action_decision(principal, action)
            if decision.allowed and action.risk is Risk.HIGH and await self._strict():
                return Decision(True, decision.rule, needs_approval=True)
            return decision
        if ref.verb is ActionVerb.CANCEL:
            job = actions.jobs.get(ref.target.strip().lower())
            if job is None:  # on another replica, or none: the command finds out which
                return Decision(True, "builtin:cancel-elsewhere")
            return self.action_decision(principal, job.prepared.action, verb="cancel", of=job.id)
        approval_id = ref.target.strip().lower()
        approval = await actions.approvals.get(approval_id)
        if approval is None:
            raise UsageError(f"no approval request '{approval_id}'; /approvals lists those waiting")
        approve = ref.verb is ActionVerb.APPROVE
        runbook_name = RunbookService.approval_of(approval)
        if runbook_name is not None:
            runbook = None if self._runbooks is None else self._runbooks.runbook(runbook_name)
            if runbook is None:
                raise UserError(
                    f"runbook '{runbook_name}' is no longer configured; request "
                    f"{approval.id} cannot run"
                )
            return _approver_decision(
                principal,
                own=approval.requester == principal.name,
                approve=approve,
                roles=runbook.approver_roles,
                path=f"runbooks.{runbook.name}.approver_roles",
                what=f"runbook '{runbook.name}'",
            )
        action = actions.action(approval.action)
        if action is None:
            raise UserError(
                f"action '{approval.action}' is no longer configured; request {approval.id} "
                "cannot run"
            )
        return _approver_decision(
            principal,
            own=approval.requester == principal.name,
            approve=approve,
            roles=action.approver_roles,
            path=f"actions.{action.name}.approver_roles",
            what=f"/{action.name}",
        )

    async def _decide_runbook(self, principal: Principal, name: str) -> Decision:
        runbooks = self._runbooks
        runbook = None if runbooks is None else runbooks.runbook(name)
        if runbooks is None or runbook is None:
            mine = sorted(r.name for r in self.runnable_runbooks(principal))
            known = ", ".join(mine) if mine else "none you may run"
            raise UsageError(f"no runbook '{name}' is configured (runbooks: {known})")
        decision = self.runbook_decision(principal, runbook)
        # One approval for the whole runbook, when any of its actions alone would need one.
        if decision.allowed and runbooks.high_risk(runbook) and await self._strict():
            return Decision(True, decision.rule, needs_approval=True)
        return decision

    def runbook_decision(self, principal: Principal, runbook: RunbookConfig) -> Decision:
        """May ``principal`` run ``runbook``? Its roles decide, as an action's do; its
        action steps run under the runbook's rule, not their own roles."""
        path = f"runbooks.{runbook.name}.roles"
        if principal.roles.isdisjoint(runbook.roles):
            return Decision(
                False,
                path,
                f"runbook '{runbook.name}' needs role {_quoted_one_of(runbook.roles)}"
                f"{_have(principal)}",
            )
        return Decision(True, path)

    def runnable_runbooks(self, principal: Principal) -> list[RunbookConfig]:
        """The runbooks ``principal`` may run (/runbook lists them)."""
        if self._runbooks is None:
            return []
        return [r for r in self._runbooks.runbooks if self.runbook_decision(principal, r).allowed]

    def action_decision(
        self, principal: Principal, action: ActionConfig, *, verb: str = "run", of: str = ""
    ) -> Decision:
        """May ``principal`` run (or, ``verb="cancel"``, stop job ``of`` of) ``action``?
        Whoever may run an action may stop it: at 3 a.m. the requester may be asleep."""
        path = f"actions.{action.name}.roles"
        if principal.roles.isdisjoint(action.roles):
            if verb == "cancel":
                reason = f"cancelling {of} needs a role that may run '{action.name}'"
            else:
                reason = (
                    f"action '{action.name}' needs role {_quoted_one_of(action.roles)}"
                    f"{_have(principal)}"
                )
            return Decision(False, path, reason)
        return Decision(True, path)

    # ------------------------------------------------------------------ what to show

    def runnable(self, principal: Principal) -> list[ActionConfig]:
        """The actions ``principal`` may run (/run lists them, an unknown one names them)."""
        if self._actions is None:
            return []
        return [a for a in self._actions.actions if self.action_decision(principal, a).allowed]

    def visible(
        self, principal: Principal | None, channel: str | None, spec: CommandSpec[Any, Any]
    ) -> bool:
        """Whether /help shows ``spec`` to this person here: its command rule allows them,
        and, for a command bound to one action (/rollback), so does the action's."""
        if not self.decide(principal, channel, spec.name).allowed:
            return False
        fixed = self._fixed_actions.get(spec.name)
        if fixed is None or principal is None or self._actions is None:
            return True
        action = self._actions.action(fixed)
        return action is not None and self.action_decision(principal, action).allowed

    async def _strict(self) -> bool:
        if self._switch is None:
            return True
        return (await self._switch.current()).mode is PolicyMode.STRICT


def _approver_decision(
    principal: Principal,
    *,
    own: bool,
    approve: bool,
    roles: Sequence[str],
    path: str,
    what: str,
) -> Decision:
    """The two-person rule, for an action's or a runbook's approval request: never the
    requester's own yes (they may withdraw it), and only an approver role's."""
    if own and approve:
        return Decision(
            False,
            REQUESTER_MAY_NOT_APPROVE,
            "you requested this; another person with an approver role must approve it",
        )
    if own:
        return Decision(True, "approval:requester-withdraws")
    if principal.roles.isdisjoint(roles):
        verb = "approve" if approve else "deny"
        return Decision(
            False,
            path,
            f"to {verb} {what} you need role {_quoted_one_of(roles)}{_have(principal)}",
        )
    return Decision(True, path)


def _fixed_action(spec: CommandSpec[Any, Any]) -> str | None:
    """The action a command always runs (/rollback), found by asking its ``acts_on`` with
    the arguments' defaults; None for commands whose action is an argument."""
    if spec.acts_on is None:
        return None
    try:
        ref = spec.acts_on(spec.args_model.model_construct())
    except Exception:  # an argument without a default: the action depends on the arguments
        return None
    return ref.target if ref is not None and ref.verb is ActionVerb.RUN else None


def _one_of(names: frozenset[str], prefix: str = "") -> str:
    ordered = sorted(names)
    if len(ordered) == 1:
        return f"{prefix}{ordered[0]}"
    return "one of " + ", ".join(f"{prefix}{n}" for n in ordered)


def _quoted_one_of(roles: Sequence[str]) -> str:
    names = sorted(roles)
    return f"'{names[0]}'" if len(names) == 1 else "one of " + ", ".join(f"'{r}'" for r in names)


def _have(principal: Principal) -> str:
    roles = ", ".join(sorted(principal.roles)) or "none"
    return f" (you have: {roles})"
