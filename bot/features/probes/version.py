"""Reading the deployed version of HTTP services, behind the `/version` chat command.

Accepted answers (2xx only):

* JSON: the first non-empty string or number found at `version`,
  `build.version`, `app.version`, `git.commit.id` (Spring Boot actuator
  `/info`) or `git.commit` (a string); a bare JSON string also counts.
* `text/plain` (or no content type): the first non-empty line.

The version is cleaned to one printable line of at most 80 characters.
Like health probes, these never raise except on cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import httpx
import structlog
from msgspec import Struct

from bot.features.probes.health import (
    MAX_BODY_BYTES,
    Fetched,
    clean_text,
    describe_failure,
    elapsed_ms,
    fetch,
    parse_json,
)

__all__ = ["VersionResult", "fetch_all_versions", "fetch_version"]

_log = structlog.get_logger(__name__)

_VERSION_PATHS: tuple[tuple[str, ...], ...] = (
    ("version",),
    ("build", "version"),
    ("app", "version"),
    ("git", "commit", "id"),
    ("git", "commit"),
)


class VersionResult(Struct, frozen=True):
    service: str
    version: str | None
    http_status: int | None
    latency_ms: float
    detail: str


def _lookup(document: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(document, Mapping):
            return None
        document = document.get(key)
    return document


def _as_version(value: object) -> str | None:
    # bool is an int subclass, and `"version": true` is not a version.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return clean_text(value) or None


def _version_from_document(document: object) -> str | None:
    if isinstance(document, str):
        return _as_version(document)
    for path in _VERSION_PATHS:
        if (version := _as_version(_lookup(document, path))) is not None:
            return version
    return None


def _decode(fetched: Fetched) -> str:
    try:
        return fetched.body.decode(fetched.charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know
        return fetched.body.decode("utf-8", errors="replace")


def _version_from_text(fetched: Fetched) -> tuple[str | None, str]:
    for line in _decode(fetched).splitlines():
        if version := clean_text(line):
            return version, "ok"
    return None, "empty body"


def _version_from_json(fetched: Fetched) -> tuple[str | None, str] | None:
    """The answer if the body is JSON; None to fall back to the text rules."""
    if not (fetched.declares_json or fetched.looks_like_json_object()):
        return None
    if fetched.body_truncated:
        return None, f"body larger than {MAX_BODY_BYTES // 1024} KiB"
    parsed, document = parse_json(fetched.body)
    if not parsed:
        return (None, "invalid JSON body") if fetched.declares_json else None
    version = _version_from_document(document)
    return (version, "ok") if version is not None else (None, "no version field in JSON body")


def read_version(fetched: Fetched) -> tuple[str | None, str]:
    """(version, detail) for a final response."""
    if not fetched.is_success:
        return None, f"HTTP {fetched.status}"
    if (answer := _version_from_json(fetched)) is not None:
        return answer
    if fetched.media_type in ("", "text/plain"):
        return _version_from_text(fetched)
    return None, f"unsupported content type {clean_text(fetched.media_type)}"


async def fetch_version(
    client: httpx.AsyncClient,
    service: str,
    url: str,
    timeout_s: float,
    *,
    request_id: str,
) -> VersionResult:
    """Read one service's version; never raises except on cancellation."""
    started = time.perf_counter()
    try:
        fetched = await fetch(
            client, url, request_id=request_id, timeout_s=timeout_s, read_body=True
        )
        version, detail = read_version(fetched)
    except Exception as exc:
        detail = describe_failure(exc, timeout_s)
        _log.debug(
            "version_probe_failed",
            service=service,
            request_id=request_id,
            detail=detail,
            error_type=type(exc).__name__,
        )
        return VersionResult(service, None, None, elapsed_ms(started), detail)
    return VersionResult(service, version, fetched.status, elapsed_ms(started), detail)


async def fetch_all_versions(
    client: httpx.AsyncClient,
    targets: Sequence[tuple[str, str, float]],
    *,
    request_id: str,
) -> list[VersionResult]:
    """Read all versions concurrently; `targets` are (service, url, timeout_s).

    Results are in the order of `targets`.
    """
    return list(
        await asyncio.gather(
            *(
                fetch_version(client, service, url, timeout_s, request_id=request_id)
                for service, url, timeout_s in targets
            )
        )
    )
