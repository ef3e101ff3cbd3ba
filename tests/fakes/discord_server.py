"""A fake Discord on 127.0.0.1: the REST API and the gateway websocket discord.py uses.

Real sockets, the real discord.py on the other side (see
/work/shared/reference/platforms.md). Point the bot at it with a ``[discord]`` section
(``api_url = fake.api_url``, ``gateway_url = fake.gateway_url``)::

    async with FakeDiscord() as fake:
        ...
        interaction = await fake.slash("whoami", user=ALICE)
        ack = await fake.ack_of(interaction)
        reply = await fake.first_followup(interaction)

Gateway: HELLO; heartbeat -> ACK; IDENTIFY -> READY + GUILD_CREATE; RESUME -> RESUMED
(or INVALID_SESSION when ``resumable`` is False); ``refuse_message_content`` and
``silent`` imitate an app without the Message Content intent and a gateway that hangs.
Events: ``message`` (MESSAGE_CREATE), ``slash`` and ``press`` (INTERACTION_CREATE type 2
and 3), ``redeliver``. ``ack_of`` and ``first_followup`` wait for an interaction's answers.

REST: users/@me, oauth2/applications/@me, channel messages (POST, PATCH, DELETE),
interaction callbacks (a second answer to one interaction is refused with 40060, as
Discord does), followup webhooks (POST, PATCH, DELETE), command registration (PUT).
Every request is recorded in ``calls``. ``fail_next`` answers the next matching requests
with an error (a 429 carries ``Via`` and ``retry_after``, as Discord's do);
``drop_gateway`` closes the websocket as a network blip would.

JSON answers carry ``Content-Type: application/json`` exactly: discord.py reads anything
else as text.

``enforce_limits()`` turns on Discord's message limit, off by default: POST
/channels/{id}/messages gets at most 5 messages in any 5 seconds per channel (a sliding
window on the fake's own clock, ``time.monotonic``: stricter than Discord's own buckets,
which reset all at once). Every answer to it then carries the headers discord.py's
HTTPClient reads (``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``, ``-Reset-After``,
``-Bucket``). ``Reset``/``Reset-After`` say when the whole window is free again (rounded up
to the millisecond), because discord.py then sets ``remaining`` back to the full limit: a
client that honours them never gets a 429. A message over the limit is refused as
Discord does: HTTP 429 with ``Retry-After`` (whole seconds, at least 1), ``Via`` (without
it discord.py takes the 429 for a Cloudflare ban), ``X-RateLimit-Scope: user`` and
``{"message": "You are being rate limited.", "retry_after": x, "global": false}``, x the
seconds until the oldest message leaves the window; it is recorded in ``calls`` with
status 429, never in ``messages``, and counted in ``rate_limited``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import WSMsgType, web

BOT_ID = "400000000000000001"
APP_ID = "400000000000000001"
GUILD_ID = "300000000000000001"
CHANNEL_ID = "200000000000000001"
THREAD_ID = "200000000000000009"
TOKEN = "fake-discord-token"

_API = "/api/v10"
_EPHEMERAL = 64
_MESSAGE_CONTENT = 1 << 15
_MESSAGES_BUCKET = "f4ke0000c0ffee00messages"  # X-RateLimit-Bucket of channel messages


@dataclass
class Call:
    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    body: Any  # the decoded JSON body, or None
    status: int = 0  # what the fake answered
    response: Any = None  # and the JSON it answered with
    at: float = field(default_factory=time.perf_counter)

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("embeds") or [])

    @property
    def text(self) -> str:
        """Every string in the embeds, joined: what a person would read."""
        parts: list[str] = []
        for embed in self.embeds:
            parts.extend(str(embed.get(k, "")) for k in ("title", "description"))
            for f in embed.get("fields", []):
                parts.extend((str(f.get("name", "")), str(f.get("value", ""))))
            parts.append(str((embed.get("footer") or {}).get("text", "")))
        return "\n".join(p for p in parts if p)

    @property
    def replies_to(self) -> str | None:
        """The id of the message this one answers (message_reference), if any."""
        reference = (self.body or {}).get("message_reference")
        return str(reference["message_id"]) if reference else None

    @property
    def custom_ids(self) -> list[str]:
        return [
            c["custom_id"]
            for row in (self.body or {}).get("components") or []
            for c in row.get("components", [])
            if "custom_id" in c
        ]


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    remaining: int


class SlidingWindow:
    """At most ``count`` admissions in any ``seconds``, per key, on the fake's clock."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count = count
        self.seconds = seconds
        self._times: dict[str, deque[float]] = {}

    def admit(self, key: str) -> tuple[bool, dict[str, str], float]:
        """(admitted, the rate-limit headers, seconds until the next admission)."""
        now = time.monotonic()
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.seconds:
            times.popleft()
        admitted = len(times) < self.count
        if admitted:
            times.append(now)
        free_in = times[-1] + self.seconds - now if times else 0.0  # the whole window
        reset_after = math.ceil(free_in * 1000) / 1000
        headers = {
            "X-RateLimit-Limit": str(self.count),
            "X-RateLimit-Remaining": str(self.count - len(times)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": _MESSAGES_BUCKET,
        }
        return admitted, headers, 0.0 if admitted else times[0] + self.seconds - now


class FakeDiscord:
    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self.bot_id, self.app_id, self.guild_id = BOT_ID, APP_ID, GUILD_ID
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}  # what the bot posted, by id
        self.identifies = 0
        self.resumes = 0
        self.resumable = True  # False: answer RESUME with INVALID_SESSION (re-IDENTIFY)
        # The Message Content intent is not enabled for the app: IDENTIFY is refused (4014).
        self.refuse_message_content = False
        self.silent = False  # never answer IDENTIFY (a gateway that hangs)
        # Answer the next RESUME with a RESUMED whose data discord.py's gateway loop cannot
        # read (null): the library's connection task ends with a TypeError.
        self.garble_next_resumed = False
        self.rate_limited = 0  # channel messages refused by enforce_limits()
        self._window: SlidingWindow | None = None
        self._ids = itertools.count(500_000_000_000_000_001)
        self._seq = 0
        self._session = "fake-session-0"
        self._ws: web.WebSocketResponse | None = None
        self._live = asyncio.Event()  # a session is READY or RESUMED
        self._acked: set[str] = set()
        self._originals: dict[str, str] = {}  # interaction token -> its message (a press)
        self._channels: dict[str, str] = {}  # interaction token -> its channel
        self._failures: list[_Failure] = []
        self.sent_at: dict[str, float] = {}  # event payload id -> when it was dispatched
        self._answers: dict[str, Call] = {}  # "ack:<interaction id>", "followup:<token>"
        self._answer_waiters: dict[str, asyncio.Future[Call]] = {}
        self._waiters: list[tuple[Callable[[Call], bool], asyncio.Future[Call]]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", _API + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{_API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def config(self, *, token: str | None = None, extra: str = "") -> str:
        """A ``[discord]`` section pointing at this fake."""
        return (
            f'\n[discord]\ntoken = "{token or self.token}"\napi_url = "{self.api_url}"\n'
            f'gateway_url = "{self.gateway_url}"\n{extra}'
        )

    # -- what the test does -------------------------------------------------------------

    async def message(
        self,
        content: str,
        *,
        user: str,
        channel: str = CHANNEL_ID,
        guild: bool = True,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """A person's message arrives (MESSAGE_CREATE); returns its payload."""
        payload: dict[str, Any] = {
            "id": message_id or self._new_id(),
            "channel_id": channel,
            "author": _user(user),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [_user(BOT_ID, bot=True)] if f"<@{BOT_ID}>" in content else [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
        }
        if guild:
            payload["guild_id"] = self.guild_id
            payload["member"] = _member(None)
        await self.send_event("MESSAGE_CREATE", payload)
        return payload

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: str,
        channel: str = CHANNEL_ID,
        umbrella: str | None = None,
    ) -> dict[str, Any]:
        """A person runs a slash command (INTERACTION_CREATE type 2); returns the payload.
        ``umbrella``: ``name`` is a subcommand of that command (``/ops rollback``)."""
        values = [
            {"name": k, "type": _option_type(v), "value": v} for k, v in (options or {}).items()
        ]
        if umbrella is not None:
            values = [{"name": name, "type": 1, "options": values}]
            name = umbrella
        data = {"id": self._new_id(), "name": name, "type": 1, "options": values}
        payload = self._interaction(2, data, user=user, channel=channel)
        await self.send_event("INTERACTION_CREATE", payload)
        return payload

    async def press(self, message: dict[str, Any], custom_id: str, *, user: str) -> dict[str, Any]:
        """A person presses a button on a message the bot posted (type 3)."""
        data = {"custom_id": custom_id, "component_type": 2}
        payload = self._interaction(
            3, data, user=user, channel=message["channel_id"], message=message
        )
        await self.send_event("INTERACTION_CREATE", payload)
        return payload

    async def redeliver(self, event: str, payload: dict[str, Any]) -> None:
        await self.send_event(event, payload)

    async def send_event(self, event: str, data: dict[str, Any]) -> float:
        """Dispatch an event on the live session (waiting for one); returns when it was
        sent (time.perf_counter), also kept in ``sent_at`` by the payload's id."""
        async with asyncio.timeout(10):
            await self._live.wait()
        assert self._ws is not None
        self._seq += 1
        frame = json.dumps({"op": 0, "t": event, "s": self._seq, "d": data})
        sent = self.sent_at[str(data.get("id"))] = time.perf_counter()
        await self._ws.send_str(frame)
        return sent

    async def ack_of(self, interaction: dict[str, Any], within: float = 10.0) -> Call:
        """The first successful callback (the acknowledgement) of ``interaction``. Indexed,
        unlike ``wait_call``: the benchmark waits for thousands."""
        return await self._answered(f"ack:{interaction['id']}", within)

    async def first_followup(self, interaction: dict[str, Any], within: float = 10.0) -> Call:
        return await self._answered(f"followup:{interaction['token']}", within)

    async def _answered(self, key: str, within: float) -> Call:
        if key in self._answers:
            return self._answers[key]
        future = self._answer_waiters.setdefault(key, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(within):
            return await future

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        retry_after: float = 0.05,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests whose path (after /api/v10) matches with
        ``status``; a 429 as Discord sends it (Via header, retry_after in the body)."""
        self._failures.append(_Failure(method, re.compile(path_regex), status, retry_after, times))

    def enforce_limits(self, *, count: int = 5, seconds: float = 5.0) -> None:
        """Refuse channel messages beyond ``count`` in any ``seconds`` per channel with a
        429, with discord.py's rate-limit headers on every answer (see the module
        docstring)."""
        self._window = SlidingWindow(count, seconds)

    async def drop_gateway(self) -> None:
        """Close the gateway websocket from the server side, as a network blip would."""
        self._live.clear()
        if self._ws is not None:
            await self._ws.close(code=4000, message=b"fake: dropped")

    async def wait_live(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            await self._live.wait()

    async def wait_call(
        self,
        method: str,
        path_contains: str = "",
        *,
        where: Callable[[Call], bool] | None = None,
        within: float = 10.0,
        status: int | None = 200,
    ) -> Call:
        """The first call (already made or still to come) that matches; fails after
        ``within`` seconds. ``status=None`` matches whatever the fake answered."""

        def match(call: Call) -> bool:
            return (
                call.method == method
                and path_contains in call.path
                and (
                    status is None
                    or call.status == status
                    or (status == 200 and call.status == 204)
                )
                and (where is None or where(call))
            )

        for call in self.calls:
            if match(call):
                return call
        future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        self._waiters.append((match, future))
        try:
            async with asyncio.timeout(within):
                return await future
        finally:
            self._waiters = [(m, f) for m, f in self._waiters if f is not future]

    def calls_to(self, method: str, path_contains: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and path_contains in c.path]

    # -- gateway ------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            op = message.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                await self._identified(ws, message["d"])
            elif op == 6:
                await self._resumed(ws, message["d"])
        if self._ws is ws:
            self._live.clear()
        return ws

    async def _identified(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        if self.refuse_message_content and int(data.get("intents", 0)) & _MESSAGE_CONTENT:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        if self.silent:
            return
        self.identifies += 1
        self._session = f"fake-session-{self.identifies}"
        self._seq = 0
        ready = {
            "v": 10,
            "user": _user(BOT_ID, bot=True),
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": self._session,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.app_id, "flags": 0},
        }
        await self._send(ws, "READY", ready)
        await self._send(ws, "GUILD_CREATE", self._guild())
        self._live.set()

    async def _resumed(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if not self.resumable or data.get("session_id") != self._session:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        self.resumes += 1
        if self.garble_next_resumed:
            self.garble_next_resumed = False
            self._seq += 1
            await ws.send_str(json.dumps({"op": 0, "t": "RESUMED", "s": self._seq, "d": None}))
            return
        await self._send(ws, "RESUMED", {})
        self._live.set()

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))

    def _guild(self) -> dict[str, Any]:
        return {
            "id": self.guild_id,
            "name": "ops guild",
            "icon": None,
            "owner_id": "100000000000000001",
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "system_channel_flags": 0,
            "preferred_locale": "en-US",
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                {
                    "id": self.guild_id,
                    "name": "@everyone",
                    "permissions": "2248473465835073",
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "unavailable": False,
            "large": False,
            "member_count": 5,
            "joined_at": _now(),
            "channels": [
                {
                    "id": CHANNEL_ID,
                    "type": 0,
                    "guild_id": self.guild_id,
                    "name": "ops",
                    "position": 0,
                    "permission_overwrites": [],
                    "parent_id": None,
                    "topic": None,
                    "nsfw": False,
                    "last_message_id": None,
                    "rate_limit_per_user": 0,
                }
            ],
            "threads": [
                {
                    "id": THREAD_ID,
                    "type": 11,
                    "guild_id": self.guild_id,
                    "parent_id": CHANNEL_ID,
                    "owner_id": "100000000000000002",
                    "name": "incident 42",
                    "last_message_id": None,
                    "rate_limit_per_user": 0,
                    "message_count": 1,
                    "member_count": 2,
                    "thread_metadata": {
                        "archived": False,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": _now(),
                        "locked": False,
                    },
                }
            ],
            "members": [_member(BOT_ID, bot=True)],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _interaction(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: str,
        channel: str,
        message: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self._new_id(),
            "application_id": self.app_id,
            "type": kind,
            "token": f"itoken-{self._new_id()}",
            "version": 1,
            "guild_id": self.guild_id,
            "channel_id": channel,
            "channel": {
                "id": channel,
                "type": 11 if channel == THREAD_ID else 0,
                "guild_id": self.guild_id,
            },
            "member": _member(user),
            "data": data,
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": "2248473465835073",
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0,
            "attachment_size_limit": 8 * 1024 * 1024,
        }
        if message is not None:
            payload["message"] = message
            self._originals[payload["token"]] = message["id"]
        self._channels[payload["token"]] = channel
        return payload

    # -- REST ---------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if raw and request.content_type == "application/json":
                body = json.loads(raw)
            elif raw and request.content_type.startswith("multipart/"):
                body = _multipart_json(raw)
        call = Call(request.method, path, dict(request.query), body)
        response = self._failure_for(call) or self._answer(request, call)
        call.status = response.status
        if response.body and response.content_type == "application/json":
            assert isinstance(response.body, bytes)
            call.response = json.loads(response.body)
        self.calls.append(call)
        for match, future in list(self._waiters):
            if not future.done() and match(call):
                future.set_result(call)
        if call.status < 300 and (key := _answer_key(call)) and key not in self._answers:
            self._answers[key] = call
            waiter = self._answer_waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(call)
        return response

    def _failure_for(self, call: Call) -> web.Response | None:
        for failure in self._failures:
            if (
                failure.remaining
                and failure.method == call.method
                and failure.pattern.search(call.path)
            ):
                failure.remaining -= 1
                if failure.status == 429:
                    return _json(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": failure.retry_after,
                            "global": False,
                        },
                        status=429,
                        headers={
                            "Via": "1.1 google",
                            "Retry-After": str(max(1, round(failure.retry_after))),
                        },
                    )
                return _json({"message": "fake failure", "code": 0}, status=failure.status)
        return None

    def _answer(self, request: web.Request, call: Call) -> web.Response:
        # Interaction callbacks and followups are authorised by their token, the rest by
        # the bot token.
        by_token = call.path.startswith(("/interactions/", "/webhooks/"))
        if not by_token and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        body = call.body if call.body is not None else {}
        for method, pattern, answer in self._routes():
            if call.method == method and (m := re.fullmatch(pattern, call.path)):
                return answer(m, body)
        return _json({"message": f"fake: no route {call.method} {call.path}"}, status=404)

    def _routes(
        self,
    ) -> list[tuple[str, str, Callable[[re.Match[str], Any], web.Response]]]:
        def deleted(m: re.Match[str], body: Any) -> web.Response:
            self.messages.pop(m[m.lastindex or 0], None)
            return web.Response(status=204)

        def original(m: re.Match[str]) -> str:
            return self._originals.get(m[2], "") if m[3] == "@original" else m[3]

        return [
            ("GET", r"/users/@me", lambda m, b: _json(_user(BOT_ID, bot=True))),
            ("GET", r"/oauth2/applications/@me", lambda m, b: _json(self._application())),
            ("POST", r"/channels/(\d+)/messages", lambda m, b: self._create(m[1], b)),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", lambda m, b: self._edit(m[2], b)),
            ("DELETE", r"/channels/(\d+)/messages/(\d+)", deleted),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", lambda m, b: self._callback(m[1], b)),
            (
                "POST",
                r"/webhooks/(\d+)/([^/]+)",
                lambda m, b: _json(
                    self._store(self._channels.get(m[2], CHANNEL_ID), b, webhook=True)
                ),
            ),
            (
                "PATCH",
                r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)",
                lambda m, b: self._edit(original(m), b),
            ),
            ("DELETE", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", deleted),
            (
                "PUT",
                r"/applications/(\d+)(?:/guilds/\d+)?/commands",
                lambda m, b: _json(
                    [{**c, "id": self._new_id(), "application_id": m[1], "version": "1"} for c in b]
                ),
            ),
        ]

    def _create(self, channel: str, body: dict[str, Any]) -> web.Response:
        """A channel message, within the channel's limit when limits are enforced."""
        if self._window is None:
            return _json(self._store(channel, body))
        admitted, headers, retry_after = self._window.admit(channel)
        if admitted:
            return _json(self._store(channel, body), headers=headers)
        self.rate_limited += 1
        retry_after = math.ceil(retry_after * 1000) / 1000
        return _json(
            {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
            status=429,
            headers={
                **headers,
                "Retry-After": str(max(1, math.ceil(retry_after))),
                "X-RateLimit-Scope": "user",
                "Via": "1.1 google",
            },
        )

    def _callback(self, interaction_id: str, body: dict[str, Any]) -> web.Response:
        if interaction_id in self._acked:
            return _json(
                {"message": "Interaction has already been acknowledged.", "code": 40060},
                status=400,
            )
        self._acked.add(interaction_id)
        kind = body.get("type")
        return _json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": 2,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(
                        (body.get("data") or {}).get("flags", 0) & _EPHEMERAL
                    ),
                }
            }
        )

    def _store(
        self, channel: str, body: dict[str, Any], *, webhook: bool = False
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": self._new_id(),
            "channel_id": channel,
            "guild_id": self.guild_id,
            "author": _user(BOT_ID, bot=True),
            "content": body.get("content") or "",
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "pinned": False,
            "type": 19 if body.get("message_reference") else 0,
            "flags": body.get("flags", 0),
        }
        if body.get("message_reference"):
            ref = body["message_reference"]
            message["message_reference"] = {
                "type": 0,
                "message_id": str(ref.get("message_id")),
                "channel_id": str(ref.get("channel_id") or channel),
                "guild_id": self.guild_id,
            }
        if webhook:
            message["webhook_id"] = self.app_id
            message["application_id"] = self.app_id
        self.messages[message["id"]] = message
        return message

    def _edit(self, message_id: str, body: dict[str, Any]) -> web.Response:
        message = self.messages.get(message_id)
        if message is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        for key in ("embeds", "components", "content"):
            if key in body:
                message[key] = body[key]
        message["edited_timestamp"] = _now()
        return _json(message)

    def _application(self) -> dict[str, Any]:
        return {
            "id": self.app_id,
            "name": "opsbot",
            "description": "",
            "icon": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": _user("100000000000000001"),
            "verify_key": "0" * 64,
            "flags": 0,
        }

    def _new_id(self) -> str:
        return str(next(self._ids))


def _answer_key(call: Call) -> str | None:
    if call.method != "POST":
        return None
    if m := re.fullmatch(r"/interactions/(\d+)/[^/]+/callback", call.path):
        return f"ack:{m[1]}"
    if m := re.fullmatch(r"/webhooks/\d+/([^/]+)", call.path):
        return f"followup:{m[1]}"
    return None


def _user(user_id: str | None, *, bot: bool = False) -> dict[str, Any]:
    uid = user_id or "0"
    return {
        "id": uid,
        "username": "opsbot" if bot else f"user{uid[-3:]}",
        "discriminator": "0",
        "global_name": None,
        "avatar": None,
        "bot": bot,
    }


def _member(user_id: str | None, *, bot: bool = False) -> dict[str, Any]:
    member: dict[str, Any] = {
        "roles": [],
        "joined_at": _now(),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "permissions": "2248473465835073",
    }
    if user_id is not None:
        member["user"] = _user(user_id, bot=bot)
    return member


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    return 3


def _multipart_json(raw: bytes) -> Any:
    """discord.py sends a body with files as multipart with a payload_json part."""
    marker = b'name="payload_json"'
    start = raw.find(marker)
    if start < 0:
        return None
    start = raw.find(b"\r\n\r\n", start) + 4
    end = raw.find(b"\r\n--", start)
    return json.loads(raw[start:end])


def _json(
    document: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(document).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
