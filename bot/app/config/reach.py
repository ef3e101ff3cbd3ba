"""Where `opsbot run` could post nothing: heartbeats, checks, alert routes and witness
channels whose channels have ids only on platforms this config does not connect to.

Not an error (a console demo posts to `console:` ids; a platform section may be added
later), but said by ``check-config`` and logged by ``opsbot run`` at start: otherwise the
first sign is a heartbeat that never came.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.app.config.models import Config


def chat_platforms(config: Config) -> list[str]:
    """The platforms `opsbot run` connects to with this config."""
    sections = {"slack": config.slack, "telegram": config.telegram, "discord": config.discord}
    return [name for name, section in sections.items() if section is not None and section.enabled]


def nowhere_to_post(config: Config) -> list[str]:
    """One line per place whose posts no adapter of `opsbot run` could deliver."""
    platforms = set(chat_platforms(config))
    running = ", ".join(sorted(platforms)) or "no chat platform"
    found: list[str] = []

    def check(path: str, channels: Sequence[str]) -> None:
        ids = [i for name in channels for i in config.channels[name].ids]
        if not channels or any(i.partition(":")[0] in platforms for i in ids):
            return
        on = sorted({i.partition(":")[0] for i in ids}) or ["none"]
        found.append(
            f"{path}: nowhere to post: channel(s) {', '.join(channels)} have ids only on "
            f"{', '.join(on)}, and this config runs {running}"
        )

    for i, heartbeat in enumerate(config.heartbeat):
        check(f"heartbeat[{i}] ({heartbeat.name})", heartbeat.channels)
    for i, check_config in enumerate(config.checks):
        if check_config.channels:
            check(f"checks[{i}] ({check_config.name})", check_config.channels)
    if config.alerts is not None:
        check("alerts.default_channels", config.alerts.default_channels)
        for i, route in enumerate(config.alerts.routes):
            check(f"alerts.routes[{i}]", route.channels)
    check("audit.witness_channels", config.audit.witness_channels)
    return found
