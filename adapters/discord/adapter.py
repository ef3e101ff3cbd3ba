"""The Discord adapter (discord.py): gateway events in as Messages, Replies out as embeds.

Translation only; every rule (who may run what, approvals, dedup, audit) is the core's.

In:
- slash commands (INTERACTION_CREATE, application command): the typed options go to the
  core as they are (``Message.invocation``), with the text a person would have typed
  (``adapters.discord.sync.command_text``) for the audit log; the interaction is deferred
  at once (Discord wants an answer within 3 s), the reply follows as a followup;
- message commands: ``!health`` (``discord.command_prefix``), ``@opsbot health``, or any
  text in a direct message; answered as a reply to that message;
- button presses (component interactions whose custom id starts with ``opsbot:``): the
  button's command, sent by the person who pressed it. Handled by custom id, not by a
  registered view, so buttons on old messages keep working after a restart.

discord.py runs in the bot's own event loop: ``login`` and ``connect`` (``Client.start``
split in two, to tell a bad token from an unreachable gateway) in a tracked task. It
reconnects and resumes the gateway session and waits out REST rate limits by itself.

``import discord`` below is the library: this module is ``adapters.discord.adapter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiohttp
import discord
import structlog

from adapters.discord.config import DiscordSection
from adapters.discord.render import Outgoing, command_of, render, with_outcome
from adapters.discord.sync import (
    OptionValue,
    command_text,
    invoked,
    login,
    new_client,
    point_at,
    token_of,
)
from bot.kernel.adapter import (
    AdapterError,
    MessageHandler,
    PlatformLimits,
    Rate,
    RetryAfter,
    check_post_attempt,
    keyed_slot,
)
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec
from bot.kernel.errors import DependencyError
from bot.kernel.failures import report_failure
from bot.kernel.message import Location, Message, ParsedCommand
from bot.kernel.reply import Reply

log = structlog.get_logger("opsbot.discord")

PLATFORM = "discord"
# What a REST call can fail with once discord.py has retried what it retries.
SEND_ERRORS = (discord.HTTPException, discord.RateLimited, aiohttp.ClientError, OSError)
MAX_RATELIMIT_WAIT_S = 30.0
POSTED_KEYS = 1000  # messages remembered for edits by key (job progress)


# Discord: 5 messages per 5 s per channel.
LIMITS = PlatformLimits(per_channel=Rate(5, 5.0))


class DiscordAdapter:
    name = PLATFORM
    limits = LIMITS

    def __init__(
        self,
        section: DiscordSection | None,
        commands: Sequence[CommandSpec[Any, Any]],
        clock: Clock,
        *,
        ready_timeout: float = 30.0,
        guild_ready_timeout: float = 2.0,
        stop_grace: float = 10.0,
    ) -> None:
        """``guild_ready_timeout``: how long discord.py waits for more GUILD_CREATEs before
        READY counts as complete (its own default; tests lower it)."""
        self._section = section or DiscordSection()
        self._specs = {spec.name: spec for spec in commands}
        self._clock = clock
        self._ready_timeout = ready_timeout
        self._guild_ready_timeout = guild_ready_timeout
        self._stop_grace = stop_grace
        self._handler: MessageHandler | None = None
        self._client: discord.Client | None = None
        self._gateway: asyncio.Task[None] | None = None
        # From a disconnect until the session is resumed or a new one is READY: discord.py's
        # is_ready() stays true meanwhile.
        self._dropped = False
        self._stopping = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._posted: OrderedDict[str, list[int]] = OrderedDict()
        self._identity = ""

    @property
    def identity(self) -> str:
        """The bot user's name people mention (``@opsbot``), from READY."""
        return self._identity

    async def start(self, handler: MessageHandler) -> None:
        """Logs in, connects the gateway in a background task, returns once READY. On
        failure, or no READY within ``ready_timeout``, closes everything and raises
        AdapterError."""
        token = token_of(self._section)
        point_at(self._section)
        client = self._new_client()
        self._client, self._handler, self._stopping = client, handler, False
        self._dropped = False
        try:
            async with asyncio.timeout(self._ready_timeout):
                await login(client, token, self._section)
                gateway = asyncio.create_task(
                    client.connect(reconnect=True), name="discord-gateway"
                )
                self._gateway = gateway
                await _until_ready(client, gateway)
        except TimeoutError as exc:
            await self._close()
            raise AdapterError(
                f"Discord was not ready within {self._ready_timeout:g} s "
                f"(API {self._section.api_url}, gateway "
                f"{self._section.gateway_url or 'from discord.py'})",
                transient=True,
            ) from exc
        except BaseException:
            await self._close()
            raise
        gateway.add_done_callback(self._gateway_ended)
        user = client.user
        self._identity = f"@{user.name} ({user.id})" if user else ""
        log.info("discord.ready", bot_user=user.id if user else None, guilds=len(client.guilds))

    async def stop(self) -> None:
        """Lets replies in progress finish (up to ``stop_grace``), then disconnects."""
        self._stopping = True
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=self._stop_grace)
            for task in late:
                task.cancel()
        await self._close()

    async def state(self) -> str:
        client, gateway = self._client, self._gateway
        if client is None or gateway is None:
            return "stopped"
        if gateway.done():
            failure = _failure(gateway)
            return (
                f"error: {_gateway_problem(failure) if failure else 'the gateway connection ended'}"
            )
        # discord.py resumes or re-identifies by itself after a drop.
        up = client.is_ready() and not client.is_closed() and not self._dropped
        return "connected" if up else "reconnecting"

    async def post(self, destination: Location, reply: Reply, key: str | None) -> None:
        key = keyed_slot(destination, key)
        client = self._client
        if client is None or client.is_closed():
            raise DependencyError(PLATFORM, "not connected; cannot post")
        channel_id = int(destination.channel_id)
        channel = client.get_partial_messageable(
            channel_id, guild_id=int(destination.workspace) if destination.workspace else None
        )
        reference = (
            discord.MessageReference(
                message_id=int(destination.thread_id),
                channel_id=channel_id,
                fail_if_not_exists=False,
            )
            if destination.thread_id
            else None
        )
        known = self._posted.get(key) if key is not None else None
        try:
            if known:
                ids = await self._edit(channel, known, reply, reference)
            else:
                ids = await self._send(channel, reply, reference)
        except SEND_ERRORS as exc:
            wait = _retry_after(exc)
            if wait is not None:
                # discord.py waited out its buckets and gave up: the outbox pauses the channel.
                raise RetryAfter(wait, f"discord: channel {channel_id} rate limited") from exc
            raise DependencyError(
                PLATFORM, f"posting to channel {channel_id} failed: {exc}", exc
            ) from exc
        if key is not None:
            self._posted[key] = ids
            self._posted.move_to_end(key)
            while len(self._posted) > POSTED_KEYS:
                self._posted.popitem(last=False)

    # -- events -------------------------------------------------------------------------

    def _new_client(self) -> discord.Client:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.message_content = True
        intents.dm_messages = True
        client = new_client(
            intents,
            guild_ready_timeout=self._guild_ready_timeout,
            chunk_guilds_at_startup=False,
            max_messages=None,  # no message cache: everything needed is in each event
            # Replies are embeds and never ping anyone but the person answered.
            allowed_mentions=discord.AllowedMentions.none(),
            # A longer wait than this raises RateLimited instead of holding a post (and
            # the outbox lane behind it) for as long as Discord asks: the outbox pauses
            # the channel and the other channels keep going.
            max_ratelimit_timeout=MAX_RATELIMIT_WAIT_S,
            # A shorter wait is slept out inside discord.py, which then sends again (and
            # retries a 5xx): each request first checks that an outbox post is still this
            # replica's, so one frozen during the wait cannot post what another took over.
            http_trace=_lease_check(),
        )
        _skip_unreadable_events(client)

        @client.event
        async def on_message(message: discord.Message) -> None:
            await self._on_message(message)

        @client.event
        async def on_interaction(interaction: discord.Interaction[discord.Client]) -> None:
            await self._on_interaction(interaction)

        @client.event
        async def on_disconnect() -> None:
            self._dropped = True

        @client.event
        async def on_resumed() -> None:
            self._dropped = False

        @client.event
        async def on_connect() -> None:  # READY: a new session, the first or one after a drop
            self._dropped = False

        @client.event
        async def on_error(event: str, /, *args: Any, **kwargs: Any) -> None:
            # discord.py calls this inside its except block: the exception is at hand.
            exc = sys.exc_info()[1]
            if exc is not None:
                report_failure("discord.event", exc, discord_event=event)

        return client

    async def _on_message(self, message: discord.Message) -> None:
        handler, client = self._handler, self._client
        if handler is None or client is None or self._stopping:
            return
        if message.author.bot or message.webhook_id is not None:
            return  # never answer bots (ourselves included): no loops
        text = self._addressed_text(message, client)
        if text is None:
            return
        with self._tracked():
            incoming = Message(
                location=Location(
                    platform=PLATFORM,
                    channel_id=str(message.channel.id),
                    thread_id=str(message.id),
                    workspace=str(message.guild.id) if message.guild else "",
                ),
                user_id=str(message.author.id),
                text=text,
                event_id=str(message.id),
                received_at=self._clock.now(),
                user_name=message.author.name,
                addressed=True,
                parent_channel_id=_parent_of(message.channel),
                private_replies=message.guild is None,  # a direct message
            )
            reply = await handler(incoming)
            if reply is None:
                return
            reference = message.to_reference(fail_if_not_exists=False)
            try:
                await self._send(message.channel, reply, reference)
            except SEND_ERRORS:
                log.exception("discord.reply_failed", request_id=reply.request_id)

    def _addressed_text(self, message: discord.Message, client: discord.Client) -> str | None:
        """The command text of a message for us; ``None`` for any other message."""
        content = message.content.strip()
        me = client.user
        mentions = (f"<@{me.id}>", f"<@!{me.id}>") if me else ()
        for start in (*mentions, self._section.command_prefix):
            if content.startswith(start):
                return _as_command(content[len(start) :].strip())
        if isinstance(message.channel, discord.DMChannel):  # a direct message is for us
            return _as_command(content)
        return None

    async def _on_interaction(self, interaction: discord.Interaction[discord.Client]) -> None:
        if self._handler is None or self._stopping:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        if interaction.type is discord.InteractionType.application_command:
            with self._tracked():
                await self._on_slash_command(interaction, data)
        elif interaction.type is discord.InteractionType.component:
            custom = data.get("custom_id")
            command = command_of(custom) if isinstance(custom, str) else None
            if command is not None:
                with self._tracked():
                    await self._on_press(interaction, command)

    async def _on_slash_command(
        self, interaction: discord.Interaction[discord.Client], data: dict[str, Any]
    ) -> None:
        if not await _acknowledge(interaction):
            return
        name, options = invoked(data, self._section.umbrella_command)
        values: dict[str, OptionValue] = {
            str(o["name"]): o["value"] for o in options if "value" in o
        }
        spec = self._specs.get(name)
        text = command_text(spec, name, values)
        # Typed options reach the core typed; only /run's free text ("restart web
        # api") is what the person typed, and is read as typed text.
        typed = spec is not None and spec.rest_words is None
        invocation = ParsedCommand(name, options=dict(values), raw_args=text) if typed else None
        reply = await self._handle(interaction, text, thread_id=None, invocation=invocation)
        if reply is None:
            # Nothing to say (throttled silently): end "thinking…". Not a redelivery: its
            # acknowledgement was refused above, Discord takes one answer per interaction.
            with contextlib.suppress(*SEND_ERRORS):
                await interaction.delete_original_response()
            return
        if reply.is_private:
            # The deferred "thinking…" is public and the first follow-up would take its
            # place: remove it, so the refusal is a message of its own, for the asker.
            with contextlib.suppress(*SEND_ERRORS):
                await interaction.delete_original_response()
        await self._follow_up(interaction, reply, ephemeral=reply.is_private)

    async def _on_press(
        self, interaction: discord.Interaction[discord.Client], command: str
    ) -> None:
        """A button press is the presser typing the button's command. A refusal goes to
        the presser alone and leaves the message as it was; anything else marks the
        message with the outcome and removes its buttons."""
        if not await _acknowledge(interaction):
            return
        pressed = interaction.message
        # The conversation the buttons belong to: the message they answered, if any.
        reference = pressed.reference if pressed is not None else None
        thread_id = str(reference.message_id) if reference and reference.message_id else None
        reply = await self._handle(interaction, command, thread_id=thread_id)
        if reply is None:
            return
        if reply.is_failure or reply.is_private:
            await self._follow_up(interaction, reply, ephemeral=True)
            return
        if pressed is not None:
            embeds = with_outcome(pressed.embeds, reply)
            try:
                await interaction.edit_original_response(embeds=embeds, view=None)
            except SEND_ERRORS:
                log.exception("discord.edit_failed", request_id=reply.request_id)
        await self._follow_up(interaction, reply, ephemeral=False)

    async def _handle(
        self,
        interaction: discord.Interaction[discord.Client],
        text: str,
        thread_id: str | None,
        invocation: ParsedCommand | None = None,
    ) -> Reply | None:
        handler = self._handler
        if handler is None:  # stopped meanwhile
            return None
        user = interaction.user
        message = Message(
            location=Location(
                platform=PLATFORM,
                channel_id=str(interaction.channel_id),
                thread_id=thread_id,
                workspace=str(interaction.guild_id) if interaction.guild_id else "",
            ),
            user_id=str(user.id),
            text=text,
            event_id=str(interaction.id),
            received_at=self._clock.now(),
            user_name=user.name,
            addressed=True,
            parent_channel_id=_parent_of(interaction.channel),
            invocation=invocation,
            private_replies=True,  # an interaction's answer can be ephemeral
        )
        return await handler(message)

    # -- sending ------------------------------------------------------------------------

    async def _follow_up(
        self, interaction: discord.Interaction[discord.Client], reply: Reply, *, ephemeral: bool
    ) -> None:
        try:
            for out in render(reply):
                kwargs: dict[str, Any] = {"embeds": out.embeds, "ephemeral": ephemeral}
                if out.view is not None:
                    kwargs["view"] = out.view
                await interaction.followup.send(**kwargs)
        except SEND_ERRORS:
            log.exception("discord.reply_failed", request_id=reply.request_id)

    async def _send(
        self,
        channel: discord.abc.Messageable,
        reply: Reply,
        reference: discord.MessageReference | None,
    ) -> list[int]:
        ids: list[int] = []
        for out in render(reply):
            sent = await channel.send(**_send_kwargs(out, reference if not ids else None))
            ids.append(sent.id)
        return ids

    async def _edit(
        self,
        channel: discord.PartialMessageable,
        known: list[int],
        reply: Reply,
        reference: discord.MessageReference | None,
    ) -> list[int]:
        """Replace what was posted under a key: edit those messages, send any more that
        are needed, delete any left over."""
        ids: list[int] = []
        outgoing = render(reply)
        for i, out in enumerate(outgoing):
            if i < len(known):
                try:
                    await channel.get_partial_message(known[i]).edit(
                        embeds=out.embeds, view=out.view
                    )
                    ids.append(known[i])
                    continue
                except discord.NotFound:
                    pass  # deleted meanwhile: post it again
            sent = await channel.send(**_send_kwargs(out, reference if not ids else None))
            ids.append(sent.id)
        for stale in known[len(outgoing) :]:
            with contextlib.suppress(*SEND_ERRORS):
                await channel.get_partial_message(stale).delete()
        return ids

    # -- lifecycle ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Counts the current event's task as in flight, so stop() lets it finish."""
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._in_flight.discard(task)

    def _gateway_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        failure = _failure(task)
        log.error(
            "discord.gateway_lost",
            error=_gateway_problem(failure) if failure else "the gateway connection ended",
        )

    async def _close(self) -> None:
        self._stopping = True
        client, gateway = self._client, self._gateway
        self._client, self._gateway, self._handler = None, None, None
        if client is not None:
            await client.close()
        if gateway is not None:
            try:
                await gateway
            except (asyncio.CancelledError, Exception) as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    log.warning("discord.gateway_error_on_close", error=repr(exc))


def _skip_unreadable_events(client: discord.Client) -> None:
    """discord.py parses each gateway dispatch inside its connection loop, and a parser
    that raises (a payload without a field it expects: seen with MESSAGE_CREATE) ends the
    loop: ``connect()`` re-raises, and the adapter would stay dead until a restart.
    discord.py has no public hook for it (``on_error`` covers event handlers, not the
    parsers), so each parser in the connection state's table, the one dict the gateway
    looks them up in, is wrapped: a dispatch it cannot read is reported and skipped, and
    the session goes on with the next one."""
    parsers = client._connection.parsers
    for event, parse in list(parsers.items()):
        parsers[event] = functools.partial(_parse_or_skip, event, parse)


def _parse_or_skip(event: str, parse: Callable[[Any], None], data: Any) -> None:
    try:
        parse(data)
    except Exception as exc:
        report_failure("discord.gateway_event", exc, discord_event=event, skipped=True)


def _send_kwargs(out: Outgoing, reference: discord.MessageReference | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"embeds": out.embeds}
    if out.view is not None:
        kwargs["view"] = out.view
    if reference is not None:
        kwargs["reference"] = reference
        kwargs["mention_author"] = False
    return kwargs


async def _acknowledge(interaction: discord.Interaction[discord.Client]) -> bool:
    """Defer at once: Discord shows "interaction failed" after 3 s without an answer.
    False when Discord refuses, i.e. the interaction expired or was already answered (a
    redelivery): then nothing runs, as the person sees no answer to wait for."""
    try:
        await interaction.response.defer()
    except (*SEND_ERRORS, discord.InteractionResponded) as exc:
        log.warning(
            "discord.ack_failed",
            interaction=interaction.id,
            error=f"{type(exc).__name__}: {exc}",
        )
        return False
    return True


def _as_command(text: str) -> str | None:
    if text.startswith("/"):
        return text
    if text[:1].isalpha():
        return f"/{text}"
    return None  # "!!!" or a bare mention is chat, not a command


async def _until_ready(client: discord.Client, gateway: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(client.wait_until_ready(), name="discord-ready")
    try:
        await asyncio.wait({ready, gateway}, return_when="FIRST_COMPLETED")
    finally:
        ready.cancel()
    if gateway.done():
        failure = _failure(gateway)
        if failure is None:
            raise AdapterError("the Discord gateway connection ended before READY", transient=True)
        raise AdapterError(_gateway_problem(failure), transient=_transient(failure)) from failure


def _transient(exc: BaseException) -> bool:
    """Worth trying again: not a refused token or intent, which the same config repeats."""
    if isinstance(exc, discord.PrivilegedIntentsRequired | discord.LoginFailure):
        return False
    return not (isinstance(exc, discord.ConnectionClosed) and exc.code in _REFUSED_CLOSE_CODES)


# The gateway's close codes that refuse the bot's token, shards, version or intents.
_REFUSED_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    if task.cancelled():
        return None
    return task.exception()


def _gateway_problem(exc: BaseException) -> str:
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return (
            "Discord refused the gateway connection: enable the Message Content intent "
            "for this bot (Developer Portal, Bot, Privileged Gateway Intents)"
        )
    if isinstance(exc, discord.ConnectionClosed):
        if exc.code == 4004:
            return "Discord refused the bot token on the gateway (4004 authentication failed)"
        return f"the Discord gateway closed the connection ({exc.code}): {exc.reason}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"cannot reach the Discord gateway: {exc}"
    return f"the Discord gateway failed: {type(exc).__name__}: {exc}"


def _parent_of(channel: object) -> str | None:
    """A thread's parent channel id (channel rules for #ops hold in its threads)."""
    if isinstance(channel, discord.Thread) and channel.parent_id is not None:
        return str(channel.parent_id)
    return None


def _lease_check() -> aiohttp.TraceConfig:
    async def on_request_start(*_: object) -> None:
        check_post_attempt()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace


def _retry_after(exc: BaseException) -> float | None:
    """Seconds Discord asked to wait when it refused for its rate limit (HTTP 429), or
    when discord.py would have waited longer than ``MAX_RATELIMIT_WAIT_S``."""
    if isinstance(exc, discord.RateLimited):
        return float(exc.retry_after)
    if not isinstance(exc, discord.HTTPException) or exc.status != 429:
        return None
    value = exc.response.headers.get("Retry-After", "1") if exc.response is not None else "1"
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0
