"""Config of the probes feature: the services /health and /version ask, and the HTTP
request options (method, headers, body, auth, expected status) that services and checks
share.

A secret (a header value, a password, a token, a database URL) is written
``{ env = "OPSBOT_…" }`` and read from that environment variable at start-up: the
loader passes the environment in the validation context (``context={"env": …}``), and
a variable that is not set is a config error naming the key and the variable. Only
``OPSBOT_`` variables may be named, so the bot never reads the rest of its environment.
"""

from __future__ import annotations

import base64
import enum
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    model_validator,
)

from bot.features.probes.request import HttpRequest
from bot.kernel.settings import Duration, HttpUrl, Name, Port, Strict

ENV_NAME = re.compile(r"^OPSBOT_[A-Z0-9_]{1,64}$")


def _from_env(value: Any, info: ValidationInfo) -> Any:
    """``{ env = "OPSBOT_X" }`` becomes the variable's value, as a SecretStr."""
    if not isinstance(value, dict):
        return value
    if set(value) != {"env"} or not isinstance(value["env"], str):
        raise ValueError('a secret is written { env = "OPSBOT_…" } (an environment variable)')
    name = value["env"]
    if not ENV_NAME.match(name):
        raise ValueError(
            f"environment variable '{name}' must start with OPSBOT_ (A-Z, 0-9, _): "
            "the bot reads no other variables"
        )
    env = (info.context or {}).get("env") or {}
    found = env.get(name)
    if not found:
        raise ValueError(f"environment variable {name} is not set")
    return SecretStr(found)


def _only_from_env(value: Any) -> Any:
    if not isinstance(value, dict | SecretStr):
        raise ValueError('must come from the environment: { env = "OPSBOT_…" }')
    return value


# A secret that may only come from the environment (passwords, tokens).
EnvSecret = Annotated[SecretStr, BeforeValidator(_from_env), BeforeValidator(_only_from_env)]
# A value written in the file or taken from the environment (a URL that may carry a
# password); a secret either way.
SecretValue = Annotated[SecretStr, BeforeValidator(_from_env)]
# A header value: plain text in the file (Accept: application/json), or a secret from
# the environment; only the latter are redacted.
HeaderValue = Annotated[
    Annotated[str, StringConstraints(max_length=4096)] | SecretStr,
    Field(union_mode="left_to_right"),
    BeforeValidator(_from_env),
]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")]
# Headers that are credentials whatever their value: never written in the file.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
# Headers the request sets itself.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "x-request-id"})
MAX_REQUEST_BODY = 64 * 1024


class Method(enum.StrEnum):
    # No DELETE: a probe run on a schedule must not be able to remove things.
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    OPTIONS = "OPTIONS"


class BasicAuth(Strict):
    kind: Literal["basic"]
    user: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^:]*$")]
    password: EnvSecret


class BearerAuth(Strict):
    kind: Literal["bearer"]
    token: EnvSecret


Auth = Annotated[BasicAuth | BearerAuth, Field(discriminator="kind")]
Status = Annotated[int, Field(ge=100, le=599)]


class HttpOptions(Strict):
    """How an HTTP probe asks: ``[[services]]`` of kind http and the HTTP checks."""

    method: Method = Method.GET
    headers: dict[HeaderName, HeaderValue] = {}
    body: Annotated[str, StringConstraints(max_length=MAX_REQUEST_BODY)] | None = None
    auth: Auth | None = None
    # The statuses that count as an answer; default any 2xx. A 3xx listed here is not
    # followed.
    expect_status: Annotated[list[Status], Field(min_length=1, max_length=20)] | None = None

    @model_validator(mode="after")
    def _headers_fit(self) -> HttpOptions:
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in _OWN_HEADERS:
                raise ValueError(f"headers.{name}: set by the bot itself")
            if lower in _CREDENTIAL_HEADERS and not isinstance(value, SecretStr):
                raise ValueError(
                    f'headers.{name}: a credential: {{ env = "OPSBOT_…" }}, or use auth'
                )
            if lower == "authorization" and self.auth is not None:
                raise ValueError(f"headers.{name} and auth: set one of them")
        if self.body is not None and self.method in (Method.GET, Method.HEAD):
            raise ValueError(f"a body needs POST, PUT or PATCH, not {self.method}")
        return self

    def http_request(self) -> HttpRequest:
        headers = [
            (name, value.get_secret_value() if isinstance(value, SecretStr) else value)
            for name, value in self.headers.items()
        ]
        if isinstance(self.auth, BasicAuth):
            pair = f"{self.auth.user}:{self.auth.password.get_secret_value()}".encode()
            headers.append(("Authorization", "Basic " + base64.b64encode(pair).decode("ascii")))
        elif isinstance(self.auth, BearerAuth):
            headers.append(("Authorization", "Bearer " + self.auth.token.get_secret_value()))
        return HttpRequest(
            method=self.method.value,
            headers=tuple(headers),
            body=self.body.encode() if self.body is not None else None,
            expect_status=frozenset(self.expect_status or ()),
        )

    def secrets(self) -> list[str]:
        """Values to redact wherever they might appear."""
        found = [v.get_secret_value() for v in self.headers.values() if isinstance(v, SecretStr)]
        if isinstance(self.auth, BasicAuth):
            found.append(self.auth.password.get_secret_value())
            found.append(self.http_request().headers[-1][1].removeprefix("Basic "))
        elif isinstance(self.auth, BearerAuth):
            found.append(self.auth.token.get_secret_value())
        return found


def _redis_url(value: SecretStr) -> SecretStr:
    if not re.match(r"^(redis|rediss|unix)://", value.get_secret_value()):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


def _postgres_url(value: SecretStr) -> SecretStr:
    if not re.match(r"^postgres(ql)?(\+asyncpg)?://", value.get_secret_value()):
        raise ValueError("must start with postgresql:// (or postgresql+asyncpg://)")
    return value


RedisSecretUrl = Annotated[SecretValue, AfterValidator(_redis_url)]
PostgresSecretUrl = Annotated[SecretValue, AfterValidator(_postgres_url)]
Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,253}$")]


def url_secrets(url: SecretStr | None) -> list[str]:
    """The password in a URL, to be redacted (as for ``[[queues]]`` and the audit database)."""
    if url is None:
        return []
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url.get_secret_value()).password
    except ValueError:
        return []
    return [password] if password else []


class ResponseShape(enum.StrEnum):
    AUTO = "auto"
    HTTP = "http"
    JSON = "json"


class ServiceKind(enum.StrEnum):
    HTTP = "http"  # health_url answers (the default)
    TCP = "tcp"  # host:port accepts a connection
    REDIS = "redis"  # redis_url answers PING
    POSTGRES = "postgres"  # database_url answers SELECT 1


_SERVICE_NEEDS = {
    ServiceKind.HTTP: ("health_url",),
    ServiceKind.TCP: ("host", "port"),
    ServiceKind.REDIS: ("redis_url",),
    ServiceKind.POSTGRES: ("database_url",),
}
_HTTP_ONLY = ("version_url", "shape", *HttpOptions.model_fields)


class Service(HttpOptions):
    name: Name
    kind: ServiceKind = ServiceKind.HTTP
    health_url: HttpUrl | None = None
    version_url: HttpUrl | None = None
    host: Host | None = None
    port: Port | None = None
    redis_url: RedisSecretUrl | None = None
    database_url: PostgresSecretUrl | None = None
    timeout: Duration = timedelta(seconds=3)
    shape: ResponseShape = ResponseShape.AUTO

    @model_validator(mode="after")
    def _fits_kind(self) -> Service:
        for key in _SERVICE_NEEDS[self.kind]:
            if getattr(self, key) is None:
                raise ValueError(f"kind '{self.kind}' needs '{key}'")
        given = self.model_fields_set
        other = {k for kind, keys in _SERVICE_NEEDS.items() if kind is not self.kind for k in keys}
        if self.kind is not ServiceKind.HTTP:
            other |= set(_HTTP_ONLY)
        for key in sorted(other & given):
            raise ValueError(f"'{key}' does not apply to kind '{self.kind}'")
        return self

    def secrets(self) -> list[str]:
        return [*super().secrets(), *url_secrets(self.redis_url), *url_secrets(self.database_url)]
