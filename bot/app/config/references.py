"""Checks that span sections: roles that exist, ids claimed twice, known commands."""

from __future__ import annotations

from collections.abc import Collection

from bot.app.config.models import Config

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

    principal = config.console.principal
    if principal is not None and principal not in config.identities:
        problems.append(f"console.principal: unknown identity '{principal}'")
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
