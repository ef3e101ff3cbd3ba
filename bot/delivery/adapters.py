"""The board of chat adapters: each one's state as /status and /ready report it, and
which platforms can be posted to now."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from msgspec import Struct, field

from bot.kernel.text import storable

if TYPE_CHECKING:
    from bot.kernel.metrics import GaugeLike


class AdapterBoard(Struct):
    """Each adapter's state as /status and /ready report it; ``connected``, when given,
    is set to 1 or 0 with each state seen (``opsbot_adapter_connected{platform}``)."""

    connected: GaugeLike | None = None

    states: dict[str, str] = field(default_factory=dict)
    # Who the bot is on each platform it connected to ("@opsbot_bot"), for /status.
    identities: dict[str, str] = field(default_factory=dict)
    _probes: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)
    _connected_once: set[str] = field(default_factory=set)

    def set(self, adapter: str, state: str) -> None:
        # A state carries the platform's own words, which may hold what no JSON body
        # (/ready) or chat reply (/status) can take.
        state = storable(state)
        self.states[adapter] = state
        is_connected = state == "connected"
        if is_connected:
            self._connected_once.add(adapter)
        if self.connected is not None:
            self.connected.labels(adapter).set(1 if is_connected else 0)

    def has_connected(self, adapter: str) -> bool:
        """Whether the adapter was connected at some point since the bot started."""
        return adapter in self._connected_once

    def named(self, adapter: str, identity: str) -> None:
        if identity:
            self.identities[adapter] = storable(identity)

    def watch(self, adapter: str, probe: Callable[[], Awaitable[str]]) -> None:
        """Ask ``probe`` for the adapter's state whenever the states are read."""
        self._probes[adapter] = probe

    def unwatch(self, adapter: str) -> None:
        self._probes.pop(adapter, None)

    async def refresh(self) -> dict[str, str]:
        for adapter, probe in list(self._probes.items()):
            try:
                state = await probe()
            except Exception as exc:
                state = f"error: {type(exc).__name__}: {exc}"
            self.set(adapter, state)
        return dict(self.states)

    def serves(self, platform: str) -> bool:
        """Is an adapter for ``platform`` part of this process, connected or on its way
        (starting, reconnecting: the outbox keeps its posts until it is); one that failed
        for good, or none at all, is skipped rather than queued forever."""
        state = self.states.get(platform)
        return state is not None and not state.startswith("error")
