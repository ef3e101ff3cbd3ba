"""The Slack adapter: slack-bolt's AsyncApp over Socket Mode (the default) or HTTP.

Translation only. Slash commands (``/health``), mentions (``@opsbot health``, answered
in the thread) and direct messages become Messages; Replies go back as Block Kit
(``adapters/slack/render.py``). Every request is acknowledged at once (Slack wants it
within 3 s) and answered from a task the adapter tracks and finishes on ``stop()``.

A button press sends the button's command as a Message from the person who pressed it,
so policy, the two-person rule and the audit apply exactly as if they had typed it.

Redeliveries: ``Message.event_id`` is the same for every delivery of one event (the
Events API event id, a slash command's trigger_id, a button's action_ts and presser),
so the core's dedup runs a mutating command once however often Slack retries.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import structlog
from aiohttp import web
from msgspec import Struct
from pydantic import SecretStr
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack.config import TOKEN_VARIABLES, SlackSection
from adapters.slack.render import ACTION_PREFIX, SlackMessage, outcome_blocks, render
from bot.kernel.adapter import (
    AdapterError,
    MessageHandler,
    PlatformLimits,
    Rate,
    Refused,
    check_post_attempt,
    keyed_slot,
)
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec
from bot.kernel.failures import failure_line, report_failure
from bot.kernel.message import Location, Message
from bot.kernel.reply import Reply, Status

log = structlog.get_logger("opsbot.slack")

PLATFORM = "slack"
# Usage mistakes and refusals go to the person who typed the slash command only.
_KEYED_MESSAGES = 1000  # posts remembered for later edits (job progress), oldest dropped
_CONNECT_TIMEOUT = 15.0
# Seconds per Web API call: an unreachable Slack must not hold up the bot's start for long.
_API_TIMEOUT = 10
SIGNATURE_WINDOW_S = 300  # slack_sdk's SignatureVerifier: 5 minutes either way
_T = TypeVar("_T")


# Slack: "1 message per second per channel", short bursts tolerated.
LIMITS = PlatformLimits(per_channel=Rate(1, 1.0))


class SlackAdapter:
    name = PLATFORM
    limits = LIMITS

    def __init__(
        self,
        section: SlackSection | None,
        commands: Sequence[CommandSpec[Any, Any]],
        clock: Clock,
        *,
        ping_interval: float = 10.0,
        stop_grace: float = 10.0,
        refused: Refused | None = None,
    ) -> None:
        """No I/O here: ``start()`` connects. ``ping_interval`` is how often Socket Mode
        checks its websocket (and so how soon it notices a silent drop); ``stop_grace``
        how long ``stop()`` waits for answers in flight before cancelling them;
        ``refused`` is told why each HTTP request Bolt's signature check refused was
        refused."""
        self._section: SlackSection = section or SlackSection()
        # The slash commands this app answers: the umbrella and those listed on their own.
        self._commands = tuple(
            sorted(
                {self._section.umbrella_command}
                | ({spec.name for spec in commands} & set(self._section.slash_commands))
            )
        )
        self._clock = clock
        self._ping_interval = ping_interval
        self._refused = refused
        self._stop_grace = stop_grace
        self._handler: MessageHandler | None = None
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keyed: OrderedDict[str, tuple[str, str]] = OrderedDict()  # key -> (channel, ts)
        self._bot_user_id = ""
        self._bot_user_name = ""
        self.http_port: int | None = None  # the bound port in HTTP mode (config may say 0)

    @property
    def identity(self) -> str:
        """The bot user people mention, from auth.test: ``@opsbot (U0BOT0001)``."""
        if not self._bot_user_id:
            return ""
        return f"@{self._bot_user_name or '?'} ({self._bot_user_id})"

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, handler: MessageHandler) -> None:
        section = self._section
        http_mode = section.mode == "http"
        bot_token = _secret(section.bot_token, "bot_token")
        app_token = "" if http_mode else _secret(section.app_token, "app_token", "Socket Mode")
        signing_secret = (
            _secret(section.signing_secret, "signing_secret", "HTTP mode") if http_mode else ""
        )
        self._handler = handler
        # slack_sdk applies its own timeout only to sessions it makes: this one carries it.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_API_TIMEOUT), trace_configs=[_lease_check()]
        )
        try:
            client = AsyncWebClient(
                token=bot_token,
                base_url=section.api_url,
                session=self._session,
                timeout=_API_TIMEOUT,
                retry_handlers=_retry_handlers(),
            )
            self._client = client
            auth = await self._api("auth.test", client.auth_test())
            self._bot_user_id = str(auth.get("user_id") or "")
            self._bot_user_name = str(auth.get("user") or "")
            app = self._build_app(client, signing_secret)
            if http_mode:
                await self._serve_http(app)
            else:
                await self._connect_socket(app, app_token)
        except BaseException:
            await self._shutdown()
            raise
        log.info(
            "slack.connected",
            mode=section.mode,
            team=auth.get("team_id"),
            bot_user=self._bot_user_id,
            http_port=self.http_port,
        )

    async def stop(self) -> None:
        """Stop taking requests, let the answers in flight finish (up to ``stop_grace``),
        then close the connections."""
        await self._shutdown()
        log.info("slack.stopped")

    async def _shutdown(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close_async()  # type: ignore[no-untyped-call]  # untyped in bolt
            client = socket.client
            pending = [
                f
                for f in (
                    client.message_processor,
                    client.current_session_monitor,
                    client.message_receiver,
                )
                if f is not None
            ]
            await asyncio.gather(*pending, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self._stop_grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("slack.answers_cancelled", count=len(late))
                await asyncio.gather(*late, return_exceptions=True)
        self._handler = None
        self._client = None
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _build_app(self, client: AsyncWebClient, signing_secret: str) -> AsyncApp:
        # process_before_response: Bolt awaits the listener, which acks and hands the work
        # to a tracked task at once, so the ack goes out without Bolt's polling loop.
        http_mode = self._section.mode == "http"
        app = AsyncApp(
            name="opsbot",
            client=client,
            signing_secret=signing_secret,
            process_before_response=True,
            # Signatures, ssl_check and url_verification exist only over HTTP; the
            # workflow-function and assistant helpers are not used. Fewer middleware,
            # faster acks.
            request_verification_enabled=http_mode,
            ssl_check_enabled=http_mode,
            url_verification_enabled=http_mode,
            attaching_function_token_enabled=False,
            attaching_conversation_kwargs_enabled=False,
            ignoring_self_assistant_message_events_enabled=False,
        )
        if app.oauth_flow is not None:
            # Bolt reads SLACK_CLIENT_ID / SLACK_CLIENT_SECRET from the environment itself
            # and then ignores the bot token (multi-workspace OAuth): refuse, plainly.
            raise AdapterError(
                "slack: SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are set in the environment, "
                "which puts slack-bolt in OAuth mode and ignores the bot token; unset them"
            )
        names = "|".join(re.escape(name) for name in self._commands)
        app.command(re.compile(rf"^/(?:{names})$"))(self._on_command)
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_direct_message)
        app.action(re.compile(rf"^{ACTION_PREFIX}\d+$"))(self._on_button)
        return app

    async def _connect_socket(self, app: AsyncApp, app_token: str) -> None:
        socket = AsyncSocketModeHandler(
            app, app_token=app_token, web_client=app.client, ping_interval=self._ping_interval
        )
        self._socket = socket
        # Asked here rather than inside connect(), which retries a refused token forever.
        socket.client.wss_uri = await self._api(
            "apps.connections.open", socket.client.issue_new_wss_url()
        )
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await socket.connect_async()  # type: ignore[no-untyped-call]  # untyped in bolt
        except TimeoutError as exc:
            raise AdapterError(
                f"slack: Socket Mode websocket did not connect within {_CONNECT_TIMEOUT:.0f} s",
                transient=True,
            ) from exc

    async def _serve_http(self, app: AsyncApp) -> None:
        section = self._section
        # Bolt's own aiohttp app: request signatures (and their 5-minute window) are
        # checked by its middleware before any listener runs. Its refusal (401, the only
        # one Bolt answers without a verification token) is then told, with the reason.
        web_app = app.web_app(path=section.http_path, port=section.http_port)
        web_app.middlewares.append(self._count_refusals)
        runner = web.AppRunner(
            web_app,
            access_log=None,
            shutdown_timeout=min(self._stop_grace, 5.0),
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, section.http_host, section.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise AdapterError(
                f"slack: cannot listen on {section.http_host}:{section.http_port} "
                f"({exc.strerror or exc})"
            ) from exc
        address = runner.addresses[0]
        self.http_port = int(address[1])

    @web.middleware
    async def _count_refusals(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if refusal_reason(request.headers, 0) == "bad_timestamp":
            # Bolt's check would raise on it: a 500 and an error with a traceback in the
            # log, for each such request. Refused here, as Bolt refuses the others.
            if self._refused is not None:
                self._refused("bad_timestamp")
            return web.json_response({"error": "invalid request"}, status=401)
        response = await handler(request)
        if response.status == 401 and self._refused is not None:
            self._refused(refusal_reason(request.headers, time.time()))
        return response

    # -- incoming -------------------------------------------------------------------
    # Bolt passes listener arguments by parameter name: these must be called ack and body.

    async def _on_command(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        message = command_message(body, self._clock.now(), umbrella=self._section.umbrella_command)
        if message is not None:
            response_url = _text(body, "response_url")
            self._spawn(self._answer_command(message, response_url), message.event_id)

    async def _on_mention(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        message = event_message(body, self._bot_user_id, self._clock.now(), mention=True)
        if message is not None:
            self._spawn(self._answer_in_thread(message), message.event_id)

    async def _on_direct_message(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        message = event_message(body, self._bot_user_id, self._clock.now(), mention=False)
        if message is not None:
            self._spawn(self._answer_in_thread(message), message.event_id)

    async def _on_button(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        press = button_press(body, self._clock.now())
        if press is not None:
            self._spawn(self._answer_button(press), press.message.event_id)

    def _spawn(self, work: Coroutine[Any, Any, None], event_id: str) -> None:
        task = asyncio.create_task(self._guarded(work, event_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Coroutine[Any, Any, None], event_id: str) -> None:
        try:
            await work
        except AdapterError as exc:
            log.warning("slack.answer_failed", event_id=event_id, error=str(exc))
        except Exception as exc:
            report_failure("slack.answer", exc, event_id=event_id)

    async def _ask(self, message: Message) -> Reply | None:
        handler = self._handler
        if handler is None:
            return None
        try:
            return await handler(message)
        except Exception as exc:
            # The pipeline answers its own failures; this is a bug, not a user error.
            request_id = report_failure("slack.handler", exc, event_id=message.event_id)
            return Reply(
                title=failure_line("Answering this", request_id),
                status=Status.ERROR,
                request_id=request_id,
            )

    # -- answering ------------------------------------------------------------------

    async def _answer_command(self, message: Message, response_url: str) -> None:
        reply = await self._ask(message)
        if reply is None:
            return
        if response_url:
            private = reply.is_private
            await self._respond(response_url, reply, "ephemeral" if private else "in_channel")
        else:
            await self._send(message.channel_id, message.thread_id, reply)

    async def _answer_in_thread(self, message: Message) -> None:
        reply = await self._ask(message)
        if reply is None:
            return
        if reply.is_private and not _is_direct(message.channel_id):
            await self._send_ephemeral(message, reply)
        else:
            await self._send(message.channel_id, message.thread_id, reply)

    async def _answer_button(self, press: ButtonPress) -> None:
        reply = await self._ask(press.message)
        if reply is None:
            return
        if reply.is_failure or reply.is_private:
            # Only the presser sees why; the message and its buttons stay for others.
            await self._respond(press.response_url, reply, "ephemeral")
            return
        blocks = outcome_blocks(press.original_blocks, reply)
        client = self._require_client()
        try:
            await self._api(
                "chat.update",
                client.chat_update(
                    channel=press.channel_id,
                    ts=press.message_ts,
                    text=press.original_text,
                    blocks=blocks,
                ),
            )
        except AdapterError as exc:
            # An ephemeral message, or one sent through a response_url: that URL can still
            # replace it.
            log.info("slack.update_via_response_url", error=str(exc))
            await self._webhook(
                press.response_url,
                {"replace_original": True, "text": press.original_text, "blocks": blocks},
            )
        try:
            await self._send(press.channel_id, press.thread_ts, reply)
        except AdapterError as exc:
            # The bot may not be in a channel where its slash command was answered.
            log.info("slack.reply_via_response_url", error=str(exc))
            await self._respond(press.response_url, reply, "in_channel")

    async def _send(self, channel: str, thread_ts: str | None, reply: Reply) -> str:
        """chat.postMessage each part of ``reply``; the ts of the first."""
        client = self._require_client()
        first = ""
        for part in render(reply):
            response = await self._api(
                "chat.postMessage",
                client.chat_postMessage(channel=channel, thread_ts=thread_ts, **part.payload()),
            )
            first = first or str(response.get("ts") or "")
        return first

    async def _send_ephemeral(self, message: Message, reply: Reply) -> None:
        """chat.postEphemeral: a refusal in a channel, seen by the person it answers."""
        client = self._require_client()
        for part in render(reply):
            await self._api(
                "chat.postEphemeral",
                client.chat_postEphemeral(
                    channel=message.channel_id,
                    user=message.user_id,
                    thread_ts=message.thread_id,
                    **part.payload(),
                ),
            )

    async def _respond(self, response_url: str, reply: Reply, response_type: str) -> None:
        for part in render(reply):
            await self._webhook(
                response_url,
                {"response_type": response_type, "replace_original": False, **part.payload()},
            )

    async def _webhook(self, response_url: str, body: dict[str, Any]) -> None:
        if not response_url:
            raise AdapterError("slack: no response_url to answer through")
        webhook = AsyncWebhookClient(
            url=response_url,
            timeout=_API_TIMEOUT,
            session=self._session,
            retry_handlers=_retry_handlers(),
        )
        response = await self._call("response_url", webhook.send_dict(body))
        if response.status_code >= 300:
            raise AdapterError(
                f"slack: response_url refused the answer: {response.status_code} {response.body}"
            )

    # -- outbound -------------------------------------------------------------------

    async def state(self) -> str:
        if self._client is None:
            return "stopped"
        if self._socket is not None:
            # The Socket Mode client reconnects by itself; say so while it does.
            return "connected" if await self._socket.client.is_connected() else "reconnecting"
        return "connected" if self._runner is not None else "stopped"

    async def post(self, destination: Location, reply: Reply, key: str | None) -> None:
        """chat.postMessage to the destination's channel and thread; a later post with the
        same ``key`` edits that message (chat.update) instead of adding one."""
        key = keyed_slot(destination, key)
        client = self._require_client()
        known = self._keyed.get(key) if key is not None else None
        if known is not None and key is not None:
            channel, ts = known
            parts = render(reply)
            try:
                await self._api(
                    "chat.update", client.chat_update(channel=channel, ts=ts, **parts[0].payload())
                )
            except AdapterError as exc:
                if exc.retry_after is not None:
                    raise  # the same edit, after the pause: a new message would be a copy
                log.info("slack.keyed_update_failed", key=key, error=str(exc))
            else:
                self._keyed.move_to_end(key)
                await self._post_parts(destination, parts[1:])
                return
        ts = await self._send(destination.channel_id, destination.thread_id, reply)
        if key is not None and ts:
            self._keyed[key] = (destination.channel_id, ts)
            self._keyed.move_to_end(key)
            while len(self._keyed) > _KEYED_MESSAGES:
                self._keyed.popitem(last=False)

    async def _post_parts(self, destination: Location, parts: Sequence[SlackMessage]) -> None:
        client = self._require_client()
        for part in parts:
            await self._api(
                "chat.postMessage",
                client.chat_postMessage(
                    channel=destination.channel_id,
                    thread_ts=destination.thread_id,
                    **part.payload(),
                ),
            )

    # -- vendor errors stop here ----------------------------------------------------

    def _require_client(self) -> AsyncWebClient:
        if self._client is None:
            raise AdapterError("slack: the adapter is not started")
        return self._client

    async def _api(self, method: str, call: Awaitable[_T]) -> _T:
        """Await one Web API call; Slack's refusals and network failures become
        AdapterError, with Slack's error code."""
        try:
            return await call
        except SlackApiError as exc:
            status = getattr(exc.response, "status_code", 200)
            raise AdapterError(
                f"slack: {method} failed: {_error_code(exc)}",
                retry_after=_retry_after(exc),
                transient=status >= 500,  # invalid_auth and the like are answered 200
            ) from exc
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AdapterError(
                f"slack: {method} failed: cannot reach {self._section.api_url} "
                f"({type(exc).__name__}: {exc})",
                transient=True,
            ) from exc

    async def _call(self, what: str, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AdapterError(f"slack: {what} failed ({type(exc).__name__}: {exc})") from exc


# -- payloads -> Messages (pure functions) ----------------------------------------------


class ButtonPress(Struct, frozen=True):
    message: Message  # the button's command, from the presser
    label: str
    channel_id: str
    message_ts: str  # the message carrying the button
    thread_ts: str  # the thread the answer goes to
    original_text: str
    original_blocks: tuple[Mapping[str, Any], ...]
    response_url: str


def command_message(
    body: Mapping[str, Any], now: datetime, *, umbrella: str = "ops"
) -> Message | None:
    """A slash command: ``/rollback`` with text ``v1.2`` becomes ``/rollback v1.2``; the
    umbrella ``/ops`` with text ``rollback v1.2`` too (``/ops`` alone is ``/help``)."""
    command, user = _text(body, "command"), _text(body, "user_id")
    channel = _text(body, "channel_id")
    if not (command and user and channel):
        log.warning("slack.command_malformed", keys=sorted(body))
        return None
    return Message(
        location=Location(platform=PLATFORM, channel_id=channel, workspace=_text(body, "team_id")),
        user_id=user,
        text=_command_text(command, plain_text(_text(body, "text")), umbrella),
        event_id=_text(body, "trigger_id") or f"command-{secrets.token_hex(8)}",
        received_at=now,
        user_name=_text(body, "user_name"),
        addressed=True,
        private_replies=True,  # answered ephemeral through the response_url
    )


def _command_text(command: str, text: str, umbrella: str) -> str:
    if command == f"/{umbrella}":
        words = text.strip()
        return f"/{words.removeprefix('/')}" if words else "/help"
    return f"{command} {text}".strip()


def event_message(
    body: Mapping[str, Any], bot_user_id: str, now: datetime, *, mention: bool
) -> Message | None:
    """An ``app_mention`` (answered in its thread) or a direct message (``mention`` False;
    other message events, edits and bots' messages are not for the bot)."""
    event = body.get("event")
    if not isinstance(event, Mapping):
        return None
    if not mention and (
        event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id")
    ):
        return None
    user, channel, ts = _text(event, "user"), _text(event, "channel"), _text(event, "ts")
    if not (user and channel):
        return None
    text = plain_text(strip_mention(_text(event, "text"), bot_user_id))
    thread = _text(event, "thread_ts") or (ts if mention else "")
    return Message(
        location=Location(
            platform=PLATFORM,
            channel_id=channel,
            thread_id=thread or None,
            workspace=_text(body, "team_id") or _text(event, "team"),
        ),
        user_id=user,
        text=text,
        event_id=_text(body, "event_id") or f"event-{channel}-{ts}",
        received_at=now,
        addressed=True,
        private_replies=True,  # ephemeral messages, or a direct message
    )


def _is_direct(channel_id: str) -> bool:
    # Slack's ids say the kind: D… is a direct message, where every reply is private.
    return channel_id.startswith("D")


def button_press(body: Mapping[str, Any], now: datetime) -> ButtonPress | None:
    user = body.get("user")
    actions = body.get("actions")
    container = body.get("container")
    if not (
        isinstance(user, Mapping)
        and isinstance(actions, list)
        and actions
        and isinstance(actions[0], Mapping)
        and isinstance(container, Mapping)
    ):
        return None
    action = actions[0]
    user_id, command = _text(user, "id"), _text(action, "value")
    channel = _text(container, "channel_id")
    message_ts = _text(container, "message_ts")
    if not (user_id and command and channel and message_ts):
        return None
    original = body.get("message")
    original = original if isinstance(original, Mapping) else {}
    blocks = original.get("blocks")
    label = action.get("text")
    team = body.get("team")
    thread_ts = _text(original, "thread_ts") or _text(container, "thread_ts") or message_ts
    message = Message(
        location=Location(
            platform=PLATFORM,
            channel_id=channel,
            thread_id=thread_ts,
            workspace=_text(team, "id") if isinstance(team, Mapping) else _text(user, "team_id"),
        ),
        user_id=user_id,
        text=command,
        event_id=f"action-{_text(action, 'action_ts') or _text(body, 'trigger_id')}-{user_id}",
        received_at=now,
        user_name=_text(user, "username") or _text(user, "name"),
        addressed=True,
        private_replies=True,  # a refusal goes to the presser alone (ephemeral)
    )
    return ButtonPress(
        message=message,
        label=_text(label, "text") if isinstance(label, Mapping) else command,
        channel_id=channel,
        message_ts=message_ts,
        thread_ts=thread_ts,
        original_text=_text(original, "text"),
        original_blocks=tuple(b for b in blocks if isinstance(b, Mapping))
        if isinstance(blocks, list)
        else (),
        response_url=_text(body, "response_url"),
    )


_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_LINK = re.compile(r"<([^<>|]+)(?:\|([^<>]*))?>")


def strip_mention(text: str, bot_user_id: str) -> str:
    """``<@UBOT> health`` -> ``health``: the bot's own mentions go; others stay."""
    if bot_user_id:
        return _MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text).strip()
    return _MENTION.sub("", text, count=1).strip()


def plain_text(text: str) -> str:
    """Slack's markup back to what was typed: ``<https://x|x>`` -> ``https://x``,
    ``&amp;`` -> ``&``. User and channel references keep their ``<@U…>`` form."""

    def link(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.startswith(("@", "#", "!")):
            return match.group(0)
        return target.removeprefix("mailto:")

    if "<" not in text and "&" not in text:
        return text
    unlinked = _LINK.sub(link, text)
    return unlinked.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def refusal_reason(headers: Mapping[str, str], now: float) -> str:
    """Why Bolt's signature check refused a request, from what it checked (the headers
    and the 5-minute window; a signature present and in time was simply wrong)."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    if not timestamp or not headers.get("X-Slack-Signature"):
        return "missing_headers"
    try:
        sent = int(timestamp)
    except ValueError:
        return "bad_timestamp"
    return "stale_timestamp" if abs(now - sent) > SIGNATURE_WINDOW_S else "bad_signature"


def _retry_after(exc: SlackApiError) -> float | None:
    """Seconds Slack asked to wait, when it refused for its rate limit (HTTP 429, after
    the SDK's own retries ran out)."""
    response = exc.response
    if getattr(response, "status_code", None) != 429:
        return None
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("retry-after") or "1"
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def _text(mapping: Any, key: str) -> str:
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return value if isinstance(value, str) else ""


def _secret(value: SecretStr | None, key: str, needed_for: str = "") -> str:
    secret = value.get_secret_value().strip() if value is not None else ""
    if not secret:
        variable = TOKEN_VARIABLES[key]
        why = f"; {needed_for} needs it" if needed_for else ""
        raise AdapterError(f"slack: {variable} is not set (or [slack] {key}){why}")
    return secret


def _error_code(exc: SlackApiError) -> str:
    response = exc.response
    error = response.get("error") if response is not None else None
    return str(error or exc)


def _lease_check() -> aiohttp.TraceConfig:
    """Every request on the adapter's session, slack-sdk's own retries included (it sleeps
    out a 429 and sends again), first checks that an outbox post is still this replica's:
    one frozen during the sleep must not post what another replica took over."""

    async def on_request_start(*_: object) -> None:
        check_post_attempt()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace


def _retry_handlers() -> list[AsyncRetryHandler]:
    # Connection resets once; a 429 up to twice, after its Retry-After.
    return [AsyncConnectionErrorRetryHandler(), AsyncRateLimitErrorRetryHandler(max_retry_count=2)]
