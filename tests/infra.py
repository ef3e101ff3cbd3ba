"""Where the real test servers are, for tests that need Redis or PostgreSQL.

``bash tests/run.sh`` starts a throwaway Redis and PostgreSQL and exports their
URLs in ``OPSBOT_TEST_REDIS_URL`` and ``OPSBOT_TEST_POSTGRES_URL``. Tests ask for
them through the helpers below, which share one rule for a missing variable:

* on CI (``CI=true``) the test FAILS, because CI must always exercise the real
  servers and a silent skip would hide a broken setup;
* elsewhere the test is skipped with a reason saying how to get the servers.

This is a plain module (not a conftest) so any test can import it::

    from tests.infra import postgres_url, redis_url
"""

from __future__ import annotations

import os

import pytest

REDIS_URL_ENV = "OPSBOT_TEST_REDIS_URL"
POSTGRES_URL_ENV = "OPSBOT_TEST_POSTGRES_URL"


def running_on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_env(name: str) -> str:
    """Return the value of ``name``, or fail (on CI) / skip (elsewhere) if unset."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    reason = f"{name} not set; run tests via bash tests/run.sh"
    if running_on_ci():
        pytest.fail(f"{reason} (CI=true: tests must run against the real servers)", pytrace=False)
    pytest.skip(reason)


def redis_url() -> str:
    """``redis://127.0.0.1:PORT/0`` of the throwaway Redis server."""
    return require_env(REDIS_URL_ENV)


# A [state] section on a port nothing listens on: the bot's Redis is down.
STATE_REDIS_DOWN = '\n[state]\nredis_url = "redis://127.0.0.1:1/0"\n'


def state_redis(**options: str) -> str:
    """A [state] section on the throwaway Redis (several replicas); option values TOML."""
    lines = ["", "[state]", f'redis_url = "{redis_url()}"']
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def postgres_url() -> str:
    """``postgresql://USER@127.0.0.1:PORT/opsbot_test``, as asyncpg and libpq expect it."""
    return require_env(POSTGRES_URL_ENV)


def postgres_sqlalchemy_url() -> str:
    """The same database as :func:`postgres_url`, for SQLAlchemy's asyncpg dialect."""
    url = postgres_url()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"postgres", "postgresql"}:
        pytest.fail(f"{POSTGRES_URL_ENV} is not a postgresql:// URL: {url!r}", pytrace=False)
    return f"postgresql+asyncpg://{rest}"
