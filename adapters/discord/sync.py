"""Slash commands from the command registry, both ways.

- ``sync_commands`` (the ``opsbot discord-sync`` step, never run on start: Discord rate
  limits command registration) PUTs one chat-input command per registry entry, with a
  typed option per field of its args model: str, int and bool fields become string,
  integer and boolean options, ``Literal`` fields get choices, length and range limits are
  carried over, and required fields are required options.
- ``command_text`` turns an invocation's options back into the text a person would have
  typed (``/rollback v1.2 --dry-run``), so the core parser and binder treat a slash
  command exactly like a typed one.

The discord.py plumbing this step and the adapter share is here too: ``point_at`` (the one
place that tells discord.py which REST API and gateway to use: the configured ones; tests
point both at a local fake), ``new_client``, ``token_of`` and ``login``.
"""

from __future__ import annotations

import enum
import re
import shlex
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from annotated_types import Ge, Le, MaxLen, MinLen
from msgspec import Struct
from pydantic.fields import FieldInfo

from adapters.discord.config import TOKEN_VARIABLES, DiscordSection
from bot.kernel.adapter import AdapterError
from bot.kernel.command import CommandSpec

TOKEN_VARIABLE = TOKEN_VARIABLES["token"]
DESCRIPTION_LIMIT = 100
CHOICES_LIMIT = 25
OPTIONS_LIMIT = 25
# discord.py's own default, kept before anything (a test) points the class elsewhere.
_LIBRARY_GATEWAY = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
# What the core parser reads as an option rather than a word (bot/pipeline/parse.py).
_OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")

OptionValue = str | int | float | bool


class Role(enum.Enum):
    """How a field is filled from typed text (see CommandSpec)."""

    POSITIONAL = "positional"
    NAMED = "named"
    REST = "rest"  # the remaining words, joined
    REST_WORDS = "rest_words"  # the remaining words as typed, options included (/run)


class SlashOption(Struct, frozen=True):
    name: str  # the args-model field it fills
    kind: discord.AppCommandOptionType
    description: str
    required: bool
    role: Role
    choices: tuple[str | int | float, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    min_length: int | None = None
    max_length: int | None = None

    def payload(self) -> dict[str, Any]:
        option: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "type": self.kind.value,
            "required": self.required,
        }
        if self.choices:
            option["choices"] = [{"name": str(c), "value": c} for c in self.choices]
        for key in ("min_value", "max_value", "min_length", "max_length"):
            value = getattr(self, key)
            if value is not None:
                option[key] = value
        return option


def slash_options(spec: CommandSpec[Any, Any]) -> list[SlashOption]:
    """The options of ``spec``'s slash command: positional fields first, in order, then
    the named ones, then the free text; required before optional, as Discord demands."""
    fields = spec.args_model.model_fields
    ordered = [
        *spec.positional,
        *(n for n in fields if n not in spec.positional and n not in (spec.rest, spec.rest_words)),
        *(n for n in (spec.rest, spec.rest_words) if n is not None),
    ]
    options: list[SlashOption] = []
    for name in ordered:
        if name == spec.extra_options or name not in fields:
            continue  # /run's undeclared key=value options travel in its free text
        option = _option(spec, name, fields[name])
        if option is not None:
            options.append(option)
    options.sort(key=lambda o: not o.required)
    return options[:OPTIONS_LIMIT]


def command_payload(spec: CommandSpec[Any, Any]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "type": discord.AppCommandType.chat_input.value,
        "description": _clip(spec.summary, DESCRIPTION_LIMIT),
        "options": [option.payload() for option in slash_options(spec)],
    }


def umbrella_payload(name: str, commands: Sequence[CommandSpec[Any, Any]]) -> dict[str, Any]:
    """One command, each opsbot command a subcommand of it (``/ops rollback tag:v1.2``)."""
    if len(commands) > OPTIONS_LIMIT:
        # Discord's limit on subcommands; groups of groups would hide commands deeper.
        raise AdapterError(
            f"discord.umbrella_command: Discord allows {OPTIONS_LIMIT} subcommands and there "
            f"are {len(commands)} commands; unset umbrella_command to register each alone"
        )
    return {
        "name": name,
        "type": discord.AppCommandType.chat_input.value,
        "description": "opsbot: every command (help lists them)",
        "options": [
            {
                "name": spec.name,
                "type": discord.AppCommandOptionType.subcommand.value,
                "description": _clip(spec.summary, DESCRIPTION_LIMIT),
                "options": [option.payload() for option in slash_options(spec)],
            }
            for spec in commands
        ],
    }


def invoked(data: Mapping[str, Any], umbrella: str | None) -> tuple[str, list[Any]]:
    """The command an interaction runs and its options: under the umbrella, the
    subcommand's (``/ops rollback tag:v1.2`` is ``rollback`` with ``tag``)."""
    name = str(data.get("name", ""))
    options = list(data.get("options") or ())
    if umbrella is not None and name == umbrella:
        sub = next(
            (o for o in options if o.get("type") == discord.AppCommandOptionType.subcommand.value),
            None,
        )
        if sub is None:
            return "help", []
        return str(sub.get("name", "")), list(sub.get("options") or ())
    return name, options


def command_text(
    spec: CommandSpec[Any, Any] | None, name: str, values: Mapping[str, OptionValue]
) -> str:
    """The typed form of a slash command invocation: ``/deny k7m2qx 'wrong tag'``.

    Positional fields are bare words while every earlier one was given and the value
    cannot be mistaken for an option; otherwise ``field=value``, which binds the same
    field by name. Free text for ``rest_words`` goes in as typed (``/run``'s
    ``name=value`` arguments are options there)."""
    words = [f"/{name}"]
    remaining = dict(values)
    if spec is None:  # not in this registry (yet): the core answers "unknown command"
        words.extend(f"{key}={_quote(_text(value))}" for key, value in remaining.items())
        return " ".join(words)
    bare = True
    for field in spec.positional:
        if field not in remaining:
            bare = False
            continue
        word = _text(remaining.pop(field))
        if bare and not _looks_like_option(word):
            words.append(_quote(word))
        else:
            bare = False
            words.append(f"{field}={_quote(word)}")
    rest = remaining.pop(spec.rest, None) if spec.rest is not None else None
    rest_words = remaining.pop(spec.rest_words, None) if spec.rest_words is not None else None
    fields = spec.args_model.model_fields
    for key, value in remaining.items():
        if isinstance(value, bool):
            flag = "--" + key.replace("_", "-")
            if value:
                words.append(flag)
            elif key not in fields or fields[key].get_default() is not False:
                words.append(f"{flag}=false")
        else:
            words.append(f"{key}={_quote(_text(value))}")
    if rest is not None and spec.rest is not None:
        text = _text(rest)
        bare_rest = bare and not _looks_like_option(text)
        words.append(_quote(text) if bare_rest else f"{spec.rest}={_quote(text)}")
    if rest_words is not None:
        words.append(_text(rest_words))
    return " ".join(words)


def point_at(section: DiscordSection) -> None:
    """Send discord.py's REST calls (webhooks and interaction callbacks included) to
    ``section.api_url`` and its gateway connection to ``section.gateway_url``.

    discord.py keeps both on classes, so this holds for the whole process: one Discord
    account per process, as the config allows."""
    discord.http.Route.BASE = section.api_url.rstrip("/")
    gateway = section.gateway_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = (
        yarl.URL(gateway) if gateway else _LIBRARY_GATEWAY
    )


def new_client(intents: discord.Intents, **options: Any) -> discord.Client:
    """A discord.Client, without its warnings about voice support: opsbot never joins a
    voice channel, so PyNaCl and davey are not installed."""
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False
    return discord.Client(intents=intents, **options)


def token_of(section: DiscordSection | None) -> str:
    token = section.token.get_secret_value().strip() if section and section.token else ""
    if not token:
        raise AdapterError(
            f"no Discord bot token: set {TOKEN_VARIABLE} (or discord.token in the config)"
        )
    return token


async def login(client: discord.Client, token: str, section: DiscordSection) -> None:
    """``client.login`` with discord.py's errors turned into one readable AdapterError."""
    try:
        await client.login(token)
    except discord.LoginFailure as exc:
        raise AdapterError(
            f"Discord refused the bot token (401 Unauthorized): check {TOKEN_VARIABLE}"
        ) from exc
    except discord.HTTPException as exc:
        raise AdapterError(
            f"Discord API at {section.api_url} answered {exc.status} on login: {exc.text}",
            transient=exc.status == 429 or exc.status >= 500,
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise AdapterError(
            f"cannot reach the Discord API at {section.api_url}: {exc}", transient=True
        ) from exc


async def sync_commands(
    section: DiscordSection | None, commands: Sequence[CommandSpec[Any, Any]]
) -> str:
    """Register the registry's slash commands: in each of ``discord.sync_guild_ids`` (shown
    at once) or, without any, globally. Returns a one-line summary."""
    token = token_of(section)
    section = section or DiscordSection()
    if section.umbrella_command is not None:
        payload = [umbrella_payload(section.umbrella_command, commands)]
    else:
        payload = [command_payload(spec) for spec in commands]
    point_at(section)
    client = new_client(discord.Intents.none())
    try:
        await login(client, token, section)
        application_id = client.application_id
        if application_id is None:
            raise AdapterError("Discord did not say which application this bot token belongs to")
        try:
            if section.sync_guild_ids:
                for guild_id in section.sync_guild_ids:
                    await client.http.bulk_upsert_guild_commands(
                        application_id, int(guild_id), payload
                    )
            else:
                await client.http.bulk_upsert_global_commands(application_id, payload)
        except discord.HTTPException as exc:
            raise AdapterError(
                f"Discord refused the slash commands ({exc.status}): {exc.text}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AdapterError(f"cannot reach the Discord API at {section.api_url}: {exc}") from exc
    finally:
        await client.close()
    names = " ".join(f"/{p['name']}" for p in payload)
    if section.sync_guild_ids:
        where = f"in guild(s) {', '.join(section.sync_guild_ids)} (shown at once)"
    else:
        where = "globally (Discord may take up to an hour to show them)"
    if section.umbrella_command is not None:
        return f"registered /{section.umbrella_command} with {len(commands)} subcommands {where}"
    return f"registered {len(payload)} slash commands {where}: {names}"


def _option(spec: CommandSpec[Any, Any], name: str, field: FieldInfo) -> SlashOption | None:
    choices: tuple[str | int | float, ...] = ()
    if name == spec.rest_words:
        role, kind = Role.REST_WORDS, discord.AppCommandOptionType.string
    else:
        role = (
            Role.POSITIONAL
            if name in spec.positional
            else Role.REST
            if name == spec.rest
            else Role.NAMED
        )
        typed = _option_type(field.annotation)
        if typed is None:
            return None
        kind, choices = typed
    limits = _limits(field)
    return SlashOption(
        name=name,
        kind=kind,
        description=_describe(name, field, role, kind),
        required=field.is_required(),
        role=role,
        choices=choices,
        min_value=limits.get("ge"),
        max_value=limits.get("le"),
        min_length=_int_or_none(limits.get("min_length")),
        max_length=_int_or_none(limits.get("max_length")),
    )


def _option_type(
    annotation: Any,
) -> tuple[discord.AppCommandOptionType, tuple[str | int | float, ...]] | None:
    """The option type (and choices) of a field's type; ``None`` when no option fits."""
    base = _unwrap(annotation)[0]
    kinds = discord.AppCommandOptionType
    if get_origin(base) is Literal:
        values = get_args(base)
        if all(isinstance(v, str) for v in values):
            return kinds.string, tuple(values)[:CHOICES_LIMIT]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return kinds.integer, tuple(values)[:CHOICES_LIMIT]
        return None
    if isinstance(base, type):
        if issubclass(base, enum.Enum):
            values = tuple(m.value for m in base)
            if all(isinstance(v, str) for v in values):
                return kinds.string, values[:CHOICES_LIMIT]
            return None
        if issubclass(base, bool):
            return kinds.boolean, ()
        if issubclass(base, int):
            return kinds.integer, ()
        if issubclass(base, float):
            return kinds.number, ()
        if issubclass(base, str):
            return kinds.string, ()
    return None


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[X, meta] | None`` -> ``(X, [meta])``."""
    metadata: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            metadata.extend(extra)
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        else:
            return annotation, metadata


def _limits(field: FieldInfo) -> dict[str, int | float]:
    """ge/le and min/max length, from the field and from Annotated inside its type."""
    found: dict[str, int | float] = {}
    pending: list[Any] = [*field.metadata, *_unwrap(field.annotation)[1]]
    while pending:
        item = pending.pop()
        if isinstance(item, FieldInfo):
            pending.extend(item.metadata)
        elif isinstance(item, Ge) and isinstance(item.ge, int | float):
            found["ge"] = item.ge
        elif isinstance(item, Le) and isinstance(item.le, int | float):
            found["le"] = item.le
        elif isinstance(item, MinLen):
            found["min_length"] = item.min_length
        elif isinstance(item, MaxLen):
            found["max_length"] = item.max_length
    return found


def _describe(name: str, field: FieldInfo, role: Role, kind: discord.AppCommandOptionType) -> str:
    if field.description:
        return _clip(field.description, DESCRIPTION_LIMIT)
    if role is Role.REST_WORDS:
        return "further arguments, as you would type them: a b name=value"
    if kind is discord.AppCommandOptionType.boolean:
        text = f"--{name.replace('_', '-')}"
    elif role is Role.REST:
        text = f"{name.replace('_', ' ')} (free text)"
    else:
        text = name.replace("_", " ")
    default = field.get_default()
    if not field.is_required() and default not in (None, "", (), False):
        text += f" (default: {default})"
    return _clip(text, DESCRIPTION_LIMIT)


def _looks_like_option(value: str) -> bool:
    if value.startswith("--"):
        return True
    key, eq, _ = value.partition("=")
    return bool(eq) and _OPTION_KEY.fullmatch(key) is not None


def _text(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quote(value: str) -> str:
    return shlex.quote(value)


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
