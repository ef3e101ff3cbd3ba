"""Who is who: platform ids -> principals (with expanded roles), channel ids -> names."""

from __future__ import annotations

from collections.abc import Mapping

from bot.delivery.config import ChannelGroup
from bot.kernel.command import Principal
from bot.pipeline.config import Identity, Role


class Directory:
    def __init__(
        self,
        identities: Mapping[str, Identity],
        roles: Mapping[str, Role],
        channels: Mapping[str, ChannelGroup],
    ) -> None:
        self._by_platform_id: dict[str, Principal] = {}
        for name, identity in identities.items():
            principal = Principal(
                name=name,
                roles=_expand(identity.roles, roles),
                platform_ids=tuple(identity.ids),
            )
            for platform_id in identity.ids:
                self._by_platform_id[platform_id] = principal
        self._channel_names = {
            channel_id: name for name, group in channels.items() for channel_id in group.ids
        }

    def principal_for(self, qualified_user_id: str) -> Principal | None:
        return self._by_platform_id.get(qualified_user_id)

    def channel_name(self, qualified_channel_id: str, parent: str | None = None) -> str | None:
        """The configured name of a channel, or of the channel a thread (``parent``) is in."""
        name = self._channel_names.get(qualified_channel_id)
        if name is None and parent is not None:
            return self._channel_names.get(parent)
        return name


def _expand(roles: list[str], definitions: Mapping[str, Role]) -> frozenset[str]:
    """A role's ``includes`` are granted with it, transitively."""
    granted: set[str] = set()
    stack = list(roles)
    while stack:
        role = stack.pop()
        if role in granted:
            continue
        granted.add(role)
        definition = definitions.get(role)
        if definition is not None:
            stack.extend(definition.includes)
    return frozenset(granted)
