"""Checks that span sections: roles that exist, ids claimed twice, known commands."""

from __future__ import annotations

from collections.abc import Callable, Collection

from bot.app.config.models import Config
from bot.kernel.command import Risk

ANY_ROLE = "*"


def reference_problems(config: Config, command_names: Collection[str]) -> list[str]:
    problems: list[str] = []
    roles = set(config.roles)

    def need_role(path: str, role: str, allow_any: bool = False) -> None:
        if allow_any and role == ANY_ROLE:
            return
        if role not in roles:
            known = ", ".join(sorted(roles)) or "none defined"
            problems.append(f"{path}: unknown role '{role}' (roles: {known})")

    def need_channel(path: str, channel: str) -> None:
        if channel not in config.channels:
            known = ", ".join(sorted(config.channels)) or "none defined"
            problems.append(f"{path}: unknown channel '{channel}' (channels: {known})")

    if config.slack is not None:
        for i, name in enumerate(config.slack.slash_commands):
            if name not in command_names:
                problems.append(f"slack.slash_commands[{i}]: unknown command '{name}'")
    # Only when [console] names a channel: `opsbot run` configs need no console.
    console_id = f"console:{config.console.channel}"
    console_named = "channel" in config.console.model_fields_set
    if console_named and not any(console_id in g.ids for g in config.channels.values()):
        problems.append(
            f"console.channel: '{config.console.channel}' is in no [channels] group "
            f'(add "{console_id}" to the ids of one, e.g. [channels.ops])'
        )
    for i, channel in enumerate(config.audit.witness_channels):
        need_channel(f"audit.witness_channels[{i}]", channel)

    for name, definition in config.roles.items():
        for i, included in enumerate(definition.includes):
            need_role(f"roles.{name}.includes[{i}]", included)
    problems.extend(_role_cycles(config))

    for name, identity in config.identities.items():
        for i, role in enumerate(identity.roles):
            need_role(f"identities.{name}.roles[{i}]", role)
    ids_of_people = {name: identity.ids for name, identity in config.identities.items()}
    problems.extend(_claimed_twice("identities", ids_of_people, "already belongs to"))
    ids_of_channels = {name: group.ids for name, group in config.channels.items()}
    problems.extend(_claimed_twice("channels", ids_of_channels, "is already in channel"))

    seen_services: set[str] = set()
    for i, service in enumerate(config.services):
        if service.name in seen_services:
            problems.append(f"services[{i}].name: duplicate service name '{service.name}'")
        seen_services.add(service.name)

    named = {
        "queues": [q.name for q in config.queues],
        "actions": [a.name for a in config.actions],
        "heartbeat": [h.name for h in config.heartbeat],
        "checks": [c.name for c in config.checks],
        "runbooks": [r.name for r in config.runbooks],
    }
    for section, names in named.items():
        for i, name in enumerate(names):
            if name in names[:i]:
                problems.append(f"{section}[{i}].name: duplicate name '{name}'")
    for i, action in enumerate(config.actions):
        for j, role in enumerate(action.roles):
            need_role(f"actions[{i}].roles[{j}]", role)
        for j, role in enumerate(action.approver_roles):
            need_role(f"actions[{i}].approver_roles[{j}]", role)

    for i, beat in enumerate(config.heartbeat):
        for j, channel in enumerate(beat.channels):
            if channel not in config.channels:
                known = ", ".join(sorted(config.channels)) or "none defined"
                problems.append(
                    f"heartbeat[{i}].channels[{j}]: unknown channel '{channel}' (channels: {known})"
                )

    services = {s.name for s in config.services}
    queues = {q.name for q in config.queues}
    for i, check in enumerate(config.checks):
        if check.service is not None and check.service not in services:
            known = ", ".join(sorted(services)) or "none defined"
            problems.append(
                f"checks[{i}].service: unknown service '{check.service}' (services: {known})"
            )
        if check.queue is not None and check.queue not in queues:
            known = ", ".join(sorted(queues)) or "none defined"
            problems.append(f"checks[{i}].queue: unknown queue '{check.queue}' (queues: {known})")
        for j, channel in enumerate(check.channels):
            need_channel(f"checks[{i}].channels[{j}]", channel)

    alerts = config.alerts
    if alerts is not None:
        for i, route in enumerate(alerts.routes):
            for j, channel in enumerate(route.channels):
                need_channel(f"alerts.routes[{i}].channels[{j}]", channel)
        for j, channel in enumerate(alerts.default_channels):
            need_channel(f"alerts.default_channels[{j}]", channel)

    for i, role in enumerate(config.policy.admin_roles):
        need_role(f"policy.admin_roles[{i}]", role)
    for command, rule in config.policy.commands.items():
        path = f"policy.commands.{command}"
        if command not in command_names:
            problems.append(
                f"{path}: unknown command (commands: {', '.join(sorted(command_names))})"
            )
        for i, role in enumerate(rule.roles):
            need_role(f"{path}.roles[{i}]", role, allow_any=True)
        for i, channel in enumerate(rule.channels):
            if channel not in config.channels:
                problems.append(f"{path}.channels[{i}]: unknown channel '{channel}'")
        for j, arg_rule in enumerate(rule.args):
            for i, role in enumerate(arg_rule.roles):
                need_role(f"{path}.args[{j}].roles[{i}]", role)

    problems.extend(_runbook_problems(config, need_role, need_channel))

    principal = config.console.principal
    if principal is not None and principal not in config.identities:
        problems.append(f"console.principal: unknown identity '{principal}'")
    return problems


def _runbook_problems(
    config: Config,
    need_role: Callable[[str, str], None],
    need_channel: Callable[[str, str], None],
) -> list[str]:
    """Every name a runbook's steps use names something configured: an action (with
    arguments it declares), a service (with a version_url to verify), a check, a channel."""
    problems: list[str] = []
    services = {s.name: s for s in config.services}
    checks = {c.name for c in config.checks}
    for i, runbook in enumerate(config.runbooks):
        path = f"runbooks[{i}]"
        for j, role in enumerate(runbook.roles):
            need_role(f"{path}.roles[{j}]", role)
        for j, role in enumerate(runbook.approver_roles):
            need_role(f"{path}.approver_roles[{j}]", role)
        high_risk = False
        for section, steps in (("steps", runbook.steps), ("on_failure", runbook.on_failure)):
            for j, step in enumerate(steps):
                at = f"{path}.{section}[{j}]"
                if step.action is not None:
                    action = config.action(step.action)
                    if action is None:
                        known = ", ".join(a.name for a in config.actions) or "none defined"
                        problems.append(
                            f"{at}.action: unknown action '{step.action}' (actions: {known})"
                        )
                        continue
                    high_risk = high_risk or action.risk is Risk.HIGH
                    declared = {a.name for a in action.args}
                    for name in step.args:
                        if name not in declared:
                            problems.append(
                                f"{at}.args.{name}: action '{action.name}' has no argument "
                                f"'{name}' (arguments: {', '.join(sorted(declared)) or 'none'})"
                            )
                service: str | None = step.wait.health if step.wait else None
                if step.verify is not None:
                    service = step.verify.version
                key = "wait.health" if step.wait else "verify.version"
                if service is not None and service not in services:
                    known = ", ".join(sorted(services)) or "none defined"
                    problems.append(f"{at}.{key}: unknown service '{service}' (services: {known})")
                elif service is not None and step.verify and services[service].version_url is None:
                    problems.append(
                        f"{at}.verify.version: service '{service}' has no version_url to read "
                        "its version from"
                    )
                check = step.verify.check if step.verify else None
                if check is not None and check not in checks:
                    known = ", ".join(sorted(checks)) or "none defined"
                    problems.append(f"{at}.verify.check: unknown check '{check}' (checks: {known})")
                for k, channel in enumerate(step.post.channels if step.post else ()):
                    need_channel(f"{at}.post.channels[{k}]", channel)
        if high_risk and not runbook.approver_roles:
            problems.append(
                f"{path}.approver_roles: a step runs a high-risk action, so the runbook needs "
                "approver_roles (who may approve it)"
            )
    return problems


def _claimed_twice(section: str, ids_by_owner: dict[str, list[str]], clash: str) -> list[str]:
    """An id may map to one owner only; a second claim would make lookups ambiguous."""
    problems: list[str] = []
    owners: dict[str, str] = {}
    for name, ids in ids_by_owner.items():
        for i, platform_id in enumerate(ids):
            if platform_id in owners:
                problems.append(
                    f"{section}.{name}.ids[{i}]: '{platform_id}' {clash} '{owners[platform_id]}'"
                )
            owners.setdefault(platform_id, name)
    return problems


def _role_cycles(config: Config) -> list[str]:
    problems: list[str] = []
    for start in config.roles:
        stack, seen = list(config.roles[start].includes), set[str]()
        while stack:
            role = stack.pop()
            if role == start:
                problems.append(f"roles.{start}.includes: role includes itself through a cycle")
                break
            if role in seen or role not in config.roles:
                continue
            seen.add(role)
            stack.extend(config.roles[role].includes)
    return problems
