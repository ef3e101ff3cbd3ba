"""The one exception tree of opsbot.

    OpsbotError
    ├── UserError              the person can fix it; its message is shown as-is
    │   ├── UsageError         bad arguments; carries the command's usage line
    │   ├── UnknownCommand     no such command (with a suggestion)
    │   ├── Denied             authorization refused; carries the matched rule
    │   └── Throttled          too many commands from one person
    ├── ConfigError            the configuration is invalid; one line per problem
    └── InternalError          our fault or a dependency's; the user sees a generic
        │                      line with the request id, the log keeps `original`
        └── DependencyError    a named dependency (service, database, platform) failed

Vendor exceptions are wrapped at the boundary with ``raise InternalError(...) from exc``.
"""

from __future__ import annotations

from collections.abc import Iterator


class OpsbotError(Exception):
    """Base of every error opsbot raises on purpose."""


class UserError(OpsbotError):
    """An error the person who typed the command can act on."""


class UsageError(UserError):
    def __init__(self, reason: str, usage: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.usage = usage

    def __str__(self) -> str:
        return f"{self.reason}. Usage: {self.usage}" if self.usage else self.reason


class UnknownCommand(UserError):
    def __init__(self, name: str, suggestion: str | None = None) -> None:
        hint = f" Did you mean /{suggestion}?" if suggestion else " Try /help."
        super().__init__(f"Unknown command /{name}.{hint}")
        self.name = name


class Denied(UserError):
    def __init__(self, reason: str, rule: str) -> None:
        super().__init__(reason)
        self.rule = rule


class Throttled(UserError):
    pass


class ConfigError(OpsbotError):
    """The configuration is invalid. ``problems`` holds one 'key.path: reason' line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class InternalError(OpsbotError):
    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original


class DependencyError(InternalError):
    def __init__(
        self, dependency: str, message: str, original: BaseException | None = None
    ) -> None:
        super().__init__(f"{dependency}: {message}", original)
        self.dependency = dependency


def exception_causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything behind it: causes, contexts and the members of exception
    groups (httpx wraps httpcore wraps anyio, which may group several connect attempts'
    OSErrors; redis-py wraps socket errors), each once."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
