"""Redis clients shared by the bot's features, one per (URL, timeout), made on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from bot.kernel.errors import DependencyError

if TYPE_CHECKING:
    import redis.asyncio as aioredis


# Calls to the state Redis (leases, locks, the shared modes) give up after this long.
STATE_TIMEOUT_S = 2.0


def redis_error() -> type[Exception]:
    """redis-py's base error, for an ``except`` clause: imported when the clause is first
    checked, so a bot configured without Redis never loads redis (a tenth of a second at
    every start)."""
    from redis.exceptions import RedisError

    return RedisError


class StateRedisUnavailable(DependencyError):
    """The state Redis (``state.redis_url``) could not be asked."""

    def __init__(self, original: BaseException) -> None:
        super().__init__("state Redis", f"unreachable ({original})", original)


class RedisClients:
    def __init__(self) -> None:
        self._clients: dict[tuple[str, float], aioredis.Redis] = {}

    def client(self, url: SecretStr | str, *, timeout: float) -> aioredis.Redis:
        """A client whose every connect and call gives up after ``timeout`` seconds, with
        no retry: an on-call answer must say "unreachable" fast, not retry behind a spinner."""
        import redis.asyncio as aioredis

        plain = url.get_secret_value() if isinstance(url, SecretStr) else url
        key = (plain, timeout)
        client = self._clients.get(key)
        if client is None:
            client = aioredis.Redis.from_url(
                plain,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry_on_timeout=False,
                retry=None,
                decode_responses=True,
                health_check_interval=0,
            )
            self._clients[key] = client
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
