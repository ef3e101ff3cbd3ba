"""The contract every chat command implements: a typed spec and one handler signature.

    class AuditDeps(Struct, frozen=True):  # the services this command uses, nothing else
        audit: AuditTrail
        clock: Clock

    async def run(request: Request, args: AuditArgs, deps: AuditDeps) -> Reply

Arguments are declared as a pydantic model; ``positional`` names the fields the
bare words fill, in order, and ``rest`` the field that takes whatever words remain.
``needs`` names the dependency class: the application builds one per command from the
services it declares (``bot.app.services``), so a command's dependencies are readable
from its signature and a test builds it with only those parts.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from msgspec import Struct
from pydantic import BaseModel, ConfigDict, ValidationError

from bot.kernel.errors import UsageError
from bot.kernel.message import OptionValue, ParsedCommand
from bot.kernel.text import storable

if TYPE_CHECKING:
    from bot.kernel.message import Message
    from bot.kernel.reply import Reply


class Principal(Struct, frozen=True):
    """A person as the config names them, with their roles expanded."""

    name: str
    roles: frozenset[str]
    platform_ids: tuple[str, ...]


class ActionVerb(enum.StrEnum):
    RUN = "run"  # target: the action's name
    APPROVE = "approve"  # target: the approval request's id
    DENY = "deny"  # target: the approval request's id
    CANCEL = "cancel"  # target: the job's id
    RUNBOOK = "runbook"  # target: the runbook's name


class ActionRef(Struct, frozen=True):
    """What an action command acts on, for the authorizer to resolve and decide."""

    verb: ActionVerb
    target: str


class Decision(Struct, frozen=True):
    """The authorizer's one answer for a request: allowed or not, the rule that decided
    (a config key path or a built-in rule, recorded in the audit log), why not, and
    whether a second person must approve before an action runs."""

    allowed: bool
    rule: str
    reason: str = ""
    needs_approval: bool = False


class Request(Struct, frozen=True):
    """What a command handler is told about the request: who asked, where, the id every
    audit entry, log line and reply of this request carries, and what was decided."""

    request_id: str
    message: Message
    principal: Principal
    channel: str | None  # the configured channel name, None outside configured channels
    decision: Decision


class Risk(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    HIGH = "high"


class Access(enum.StrEnum):
    """Who may run a command that the policy section does not mention."""

    NOBODY = "nobody"  # deny by default: only a policy rule grants it
    ANY_PRINCIPAL = "any-principal"  # any known person, e.g. /help and /whoami


class Args(BaseModel):
    """Base of argument models: frozen, and unknown options are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class NoArgs(Args):
    pass


ArgsT = TypeVar("ArgsT", bound=Args)
DepsT = TypeVar("DepsT")


class NoDeps(Struct, frozen=True):
    """For a command that needs no service (``/whoami``)."""


class CommandSpec(Struct, Generic[ArgsT, DepsT], frozen=True):
    name: str
    summary: str
    usage: str
    args_model: type[ArgsT]
    run: Callable[[Request, ArgsT, DepsT], Awaitable[Reply]]
    needs: type[DepsT]
    positional: tuple[str, ...] = ()
    rest: str | None = None
    risk: Risk = Risk.READ
    default_access: Access = Access.NOBODY
    # Arguments that need one of policy.admin_roles whenever given (``/policy off``).
    admin_args: tuple[str, ...] = ()
    # The field that takes the remaining words as a tuple (each word kept whole) instead
    # of ``rest``'s joined string; and the dict field that takes key=value options the
    # model does not declare. Both for /run, whose arguments depend on the action.
    rest_words: str | None = None
    extra_options: str | None = None
    # For action commands: what the bound arguments act on, so the authorizer decides the
    # action's roles, approver roles, the requester rule and the need for approval too.
    acts_on: Callable[[ArgsT], ActionRef | None] | None = None

    def bind(self, parsed: ParsedCommand) -> ArgsT:
        """Fill the args model from the parsed words; any mismatch is a UsageError."""
        if not parsed.positionals and not parsed.options and not self.args_model.model_fields:
            # Nothing to validate; args are frozen, so one instance serves every call.
            return cast(ArgsT, _empty_args(self.args_model))
        values: dict[str, Any] = {}
        words = list(parsed.positionals)
        for field_name in self.positional:
            if not words:
                break
            values[field_name] = words.pop(0)
        if words:
            if self.rest_words is not None:
                values[self.rest_words] = tuple(words)
            elif self.rest is None:
                raise UsageError(f"unexpected argument '{words[0]}'", self.usage)
            else:
                values[self.rest] = " ".join(words)
        fields = self.args_model.model_fields
        extra: dict[str, OptionValue] = {}
        for key, value in parsed.options.items():
            if self.extra_options is not None and key not in fields:
                extra[key] = value
                continue
            if key not in fields or key in values:
                reason = "given twice" if key in values else "unknown option"
                raise UsageError(f"{reason} '{key}'", self.usage)
            values[key] = value
        if extra:
            assert self.extra_options is not None
            values[self.extra_options] = extra
        try:
            # A lone surrogate is no character a person typed; escaped, it reaches the
            # command and its error message as text (pydantic cannot even report it).
            return self.args_model.model_validate(_storable(values))
        except ValidationError as exc:
            raise UsageError(_first_problem(exc), self.usage) from exc


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_storable(v) for v in value)
    return value


@functools.cache
def _empty_args(model: type[ArgsT]) -> ArgsT:
    return model()


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"missing argument '{where}'"
    return f"bad value for '{where}': {message}" if where else message
