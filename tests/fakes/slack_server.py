"""A fake Slack on 127.0.0.1 for tests and benchmarks: the Web API, response_urls, and
the Socket Mode websocket, recording everything the adapter sends.

    async with FakeSlack() as slack:
        ...config: api_url = slack.api_url, bot_token = slack.bot_token, app_token = ...
        envelope = await slack.send("slash_commands", slack.slash_command("/ops", "health", user=U))
        await slack.wait_ack(envelope)
        posted = await slack.wait_for(lambda: slack.find_message("Health"))

The real slack-bolt / slack_sdk code talks to it exactly as to Slack (see
/work/shared/reference/platforms.md for the protocol facts it imitates).

``enforce_limits()`` turns on Slack's posting limit, off by default: chat.postMessage
gets at most 1 message per second per channel (a thread shares its channel's limit),
with a burst of 3 (Slack: "short bursts >1 allowed", amount undocumented). It is a token
bucket on the fake's own clock (``time.monotonic``): 3 tokens, one back per second. A
post without a token is refused as Slack does: HTTP 429, ``Retry-After`` (whole
seconds until a token is back, at least 1), body ``{"ok": false, "error": "ratelimited"}``;
it is recorded in ``calls`` with status 429, never in ``messages``, and counted in
``rate_limited``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from tests.fakes.limits import TokenBucket

T = TypeVar("T")

TEAM_ID = "T0TEAM0001"
BOT_USER_ID = "U0OPSBOT01"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str
    status: int
    at: float = field(default_factory=time.perf_counter)


@dataclass
class Posted:
    """A message as it stands in a channel (after any chat.update)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None
    via: str  # "chat.postMessage" or "response_url"
    updates: int = 0

    def button(self, label: str) -> dict[str, Any]:
        for block in self.blocks:
            if block.get("type") == "actions":
                for element in block["elements"]:
                    if element["text"]["text"] == label:
                        return dict(element)
        raise KeyError(f"no button {label!r} in message {self.ts}")

    @property
    def has_buttons(self) -> bool:
        return any(block.get("type") == "actions" for block in self.blocks)

    def all_text(self) -> str:
        """The fallback text and every text in the blocks, for assertions."""
        return "\n".join([self.text, *(_block_texts(self.blocks))])


@dataclass
class Response:
    """What the adapter sent to a response_url."""

    url_id: str
    body: dict[str, Any]
    at: float = field(default_factory=time.perf_counter)

    @property
    def ephemeral(self) -> bool:
        return self.body.get("response_type") == "ephemeral"

    def all_text(self) -> str:
        return "\n".join([str(self.body.get("text", "")), *_block_texts(self.body.get("blocks"))])


class FakeSlack:
    def __init__(
        self, *, bot_token: str = "xoxb-fake-bot-token", app_token: str = "xapp-fake-app-token"
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.calls: list[Call] = []
        self.responses: list[Response] = []
        self.messages: dict[tuple[str, str], Posted] = {}
        self.acks: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self.sent_at: dict[str, float] = {}  # envelope id -> when it was sent
        self._ack_futures: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._answer_futures: dict[str, asyncio.Future[Response]] = {}
        self.connections = 0  # websockets accepted so far
        self.rate_limited = 0  # chat.postMessage calls refused by enforce_limits()
        self._per_channel: tuple[float, float] | None = None  # (burst, per second)
        self._buckets: dict[str, TokenBucket] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._transports: dict[int, asyncio.BaseTransport | None] = {}
        self._failures: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._response_urls: dict[str, tuple[str, str | None]] = {}  # id -> (channel, msg ts)
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_post("/response/{url_id}", self._response_url)
        app.router.add_get("/link", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSlack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def config(self, *, mode: str = "socket", signing_secret: str = "", **extra: object) -> str:
        """A [slack] config section pointing at this fake."""
        lines = [
            "\n[slack]",
            f'mode = "{mode}"',
            f'api_url = "{self.api_url}"',
            f'bot_token = "{self.bot_token}"',
        ]
        if mode == "socket":
            lines.append(f'app_token = "{self.app_token}"')
        if signing_secret:
            lines.append(f'signing_secret = "{signing_secret}"')
        lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
        return "\n".join(lines) + "\n"

    # -- scripting ------------------------------------------------------------------

    def enforce_limits(self, *, per_second: float = 1.0, burst: float = 3) -> None:
        """Refuse chat.postMessage beyond ``per_second`` per channel (after a ``burst``)
        with a 429, as Slack does (see the module docstring)."""
        self._per_channel = (burst, per_second)
        self._buckets.clear()

    def fail_next(
        self, method: str, status: int = 429, headers: dict[str, str] | None = None
    ) -> None:
        """The next call of ``method`` gets this HTTP status (429: ``ratelimited``)."""
        self._failures.setdefault(method, []).append((status, headers or {}))

    async def send(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        envelope_id: str | None = None,
        retry_attempt: int | None = None,
    ) -> str:
        """Deliver an envelope (``slash_commands``, ``events_api``, ``interactive``) over the
        newest websocket; returns its envelope id."""
        ws = await self.wait_for(
            lambda: next((w for w in reversed(self._sockets) if not w.closed), None)
        )
        envelope_id = envelope_id or f"env-{next(self._ids)}"
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
        }
        if kind == "events_api":
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = "timeout" if retry_attempt else ""
        self._ack_futures[envelope_id] = asyncio.get_running_loop().create_future()
        self.sent_at[envelope_id] = time.perf_counter()
        await ws.send_str(json.dumps(envelope))
        return envelope_id

    async def drop(self, *, abrupt: bool = False) -> None:
        """Close every websocket, as Slack does on a refresh; ``abrupt``: cut the TCP
        connections without a close frame, as a network outage does."""
        for ws in list(self._sockets):
            if abrupt:
                transport = self._transports.get(id(ws))
                if transport is not None:
                    transport.abort()
            else:
                await ws.close(code=1001, message=b"going away")

    # -- payload builders -------------------------------------------------------------

    def slash_command(
        self,
        command: str,
        text: str = "",
        *,
        user: str,
        channel: str = "C0OPS0001",
        trigger_id: str | None = None,
    ) -> dict[str, Any]:
        return {
            "token": "verification-token",
            "team_id": TEAM_ID,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "ops",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0FAKEAPP1",
            "is_enterprise_install": "false",
            "response_url": self._new_response_url(channel, None),
            "trigger_id": trigger_id or f"{next(self._ids)}.{time.time_ns()}.trigger",
        }

    def mention(
        self,
        text: str,
        *,
        user: str,
        channel: str = "C0OPS0001",
        thread_ts: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        ts = f"{time.time():.6f}"
        event: dict[str, Any] = {
            "type": "app_mention",
            "user": user,
            "text": f"<@{BOT_USER_ID}> {text}",
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "team": TEAM_ID,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return {
            "token": "verification-token",
            "team_id": TEAM_ID,
            "api_app_id": "A0FAKEAPP1",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
        }

    def direct_message(
        self, text: str, *, user: str, channel: str = "D0DIRECT01", **extra: Any
    ) -> dict[str, Any]:
        """A ``message.im`` event: ``text`` sent to the bot in a direct message."""
        ts = f"{time.time():.6f}"
        event: dict[str, Any] = {
            "type": "message",
            "channel_type": "im",
            "user": user,
            "text": text,
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "team": TEAM_ID,
            **extra,
        }
        return {
            "token": "verification-token",
            "team_id": TEAM_ID,
            "api_app_id": "A0FAKEAPP1",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._ids):08d}",
            "event_time": int(time.time()),
        }

    def press(self, message: Posted, label: str, *, user: str) -> dict[str, Any]:
        """A block_actions payload: ``user`` pressed the button ``label`` on ``message``."""
        button = message.button(label)
        return {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": user.lower(),
                "name": user.lower(),
                "team_id": TEAM_ID,
            },
            "api_app_id": "A0FAKEAPP1",
            "token": "verification-token",
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
            },
            "trigger_id": f"{next(self._ids)}.{time.time_ns()}.trigger",
            "team": {"id": TEAM_ID, "domain": "fake"},
            "channel": {"id": message.channel, "name": "ops"},
            "message": {
                "type": "message",
                "ts": message.ts,
                "text": message.text,
                "blocks": message.blocks,
                "bot_id": "B0FAKEBOT1",
                **({"thread_ts": message.thread_ts} if message.thread_ts else {}),
            },
            "response_url": self._new_response_url(message.channel, message.ts),
            "actions": [
                {
                    "action_id": button["action_id"],
                    "block_id": "fake-block",
                    "text": button["text"],
                    "value": button["value"],
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                    **({"style": button["style"]} if "style" in button else {}),
                }
            ],
        }

    # -- waiting and looking ------------------------------------------------------------

    async def wait_for(self, probe: Callable[[], T | None], within: float = 10.0) -> T:
        """The first non-None value of ``probe()``, re-checked whenever the fake records
        something; fails after ``within`` seconds."""
        async with asyncio.timeout(within), self._changed:
            while True:
                found = probe()
                if found is not None:
                    return found
                await self._changed.wait()

    async def wait_ack(self, envelope_id: str, within: float = 5.0) -> dict[str, Any] | None:
        """The payload the adapter acked ``envelope_id`` with (None for an empty ack)."""
        future = self._ack_futures.get(envelope_id)
        if future is None:
            payload, _ = await self.wait_for(lambda: self.acks.get(envelope_id), within)
            return payload
        async with asyncio.timeout(within):
            return await asyncio.shield(future)

    async def wait_connections(self, count: int, within: float = 10.0) -> None:
        await self.wait_for(lambda: True if self.connections >= count else None, within)

    async def wait_answer(self, response_url: str, within: float = 10.0) -> Response:
        """The first answer posted to ``response_url`` (made by :meth:`slash_command`)."""
        url_id = response_url.rsplit("/", 1)[-1]
        found = next((r for r in self.responses if r.url_id == url_id), None)
        if found is not None:
            return found
        future = self._answer_futures.setdefault(url_id, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(within):
            return await asyncio.shield(future)

    def find_message(self, contains: str, *, thread_ts: str | None = None) -> Posted | None:
        """The first message containing ``contains`` (in thread ``thread_ts``, if given)."""
        return next(
            (
                m
                for m in self.messages.values()
                if contains in m.all_text() and (thread_ts is None or m.thread_ts == thread_ts)
            ),
            None,
        )

    def find_response(self, contains: str) -> Response | None:
        return next((r for r in self.responses if contains in r.all_text()), None)

    @property
    def open_sockets(self) -> int:
        return sum(1 for ws in self._sockets if not ws.closed)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # -- handlers -------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token = token or str(params.get("token", ""))
        failures = self._failures.get(method)
        if failures:
            status, headers = failures.pop(0)
            await self._record(Call(method, params, token, status))
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=status, headers=headers
            )
        if method == "chat.postMessage" and token == self.bot_token:
            retry_after = self._throttle(str(params.get("channel", "")))
            if retry_after is not None:
                await self._record(Call(method, params, token, 429))
                return web.json_response(
                    {"ok": False, "error": "ratelimited"},
                    status=429,
                    headers={"Retry-After": str(retry_after)},
                )
        await self._record(Call(method, params, token, 200))
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method == "auth.test":
            return web.json_response(
                {
                    "ok": True,
                    "url": "https://fake.slack.com/",
                    "team": "Fake",
                    "user": "opsbot",
                    "team_id": TEAM_ID,
                    "user_id": BOT_USER_ID,
                    "bot_id": "B0FAKEBOT1",
                    "is_enterprise_install": False,
                }
            )
        if method == "apps.connections.open":
            return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self.port}/link"})
        if method == "chat.postMessage":
            posted = await self._store(
                str(params["channel"]), params, str(params.get("thread_ts") or "") or None, method
            )
            return web.json_response(
                {
                    "ok": True,
                    "channel": posted.channel,
                    "ts": posted.ts,
                    "message": {"ts": posted.ts},
                }
            )
        if method == "chat.update":
            key = (str(params["channel"]), str(params["ts"]))
            existing = self.messages.get(key)
            if existing is None:
                return web.json_response({"ok": False, "error": "message_not_found"})
            await self._edit(existing, params)
            return web.json_response({"ok": True, "channel": key[0], "ts": key[1]})
        return web.json_response({"ok": True})

    async def _response_url(self, request: web.Request) -> web.Response:
        url_id = request.match_info["url_id"]
        body = await request.json()
        response = Response(url_id, body)
        await self._record(response)
        future = self._answer_futures.pop(url_id, None)
        if future is not None and not future.done():
            future.set_result(response)
        channel, original_ts = self._response_urls[url_id]
        if body.get("replace_original") and original_ts:
            await self._edit(self.messages[(channel, original_ts)], body)
        elif body.get("response_type") == "in_channel":
            await self._store(channel, body, None, "response_url")
        return web.Response(text="ok")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        self._transports[id(ws)] = request.transport
        self.connections += 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets),
                "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                "connection_info": {"app_id": "A0FAKEAPP1"},
            }
        )
        await self._notify()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if "envelope_id" in data:
                        envelope_id = data["envelope_id"]
                        self.acks[envelope_id] = (data.get("payload"), time.perf_counter())
                        future = self._ack_futures.pop(envelope_id, None)
                        if future is not None and not future.done():
                            future.set_result(data.get("payload"))
                        await self._notify()
        finally:
            self._sockets.remove(ws)
            self._transports.pop(id(ws), None)
        return ws

    # -- bookkeeping ------------------------------------------------------------------

    def _throttle(self, channel: str) -> int | None:
        """None: the post may go out (its token is taken); else whole seconds to wait."""
        if self._per_channel is None:
            return None
        now = time.monotonic()
        bucket = self._buckets.get(channel)
        if bucket is None:
            burst, rate = self._per_channel
            bucket = self._buckets[channel] = TokenBucket(burst, rate, now)
        wait = bucket.wait(now)
        if wait > 0:
            self.rate_limited += 1
            return max(1, math.ceil(wait))
        bucket.take()
        return None

    def _new_response_url(self, channel: str, message_ts: str | None) -> str:
        url_id = f"r{next(self._ids)}"
        self._response_urls[url_id] = (channel, message_ts)
        return f"http://127.0.0.1:{self.port}/response/{url_id}"

    async def _store(
        self, channel: str, params: dict[str, Any], thread_ts: str | None, via: str
    ) -> Posted:
        ts = f"{int(time.time())}.{next(self._ids):06d}"
        posted = Posted(
            channel,
            ts,
            str(params.get("text", "")),
            list(params.get("blocks") or []),
            thread_ts,
            via,
        )
        self.messages[(channel, ts)] = posted
        await self._notify()
        return posted

    async def _edit(self, posted: Posted, params: dict[str, Any]) -> None:
        posted.text = str(params.get("text", posted.text))
        posted.blocks = list(params.get("blocks") or [])
        posted.updates += 1
        await self._notify()

    async def _record(self, item: Call | Response) -> None:
        if isinstance(item, Call):
            self.calls.append(item)
        else:
            self.responses.append(item)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


async def _params(request: web.Request) -> dict[str, Any]:
    """Web API arguments arrive as JSON or form fields; blocks in a form are JSON text."""
    if request.content_type == "application/json":
        data = await request.json()
        params = dict(data) if isinstance(data, dict) else {}
    else:
        params = dict(await request.post())
    for key in ("blocks", "attachments"):
        if isinstance(params.get(key), str):
            params[key] = json.loads(params[key])
    return params


def _block_texts(blocks: Any) -> list[str]:
    texts: list[str] = []
    for block in blocks or []:
        text = block.get("text")
        if isinstance(text, dict):
            texts.append(str(text.get("text", "")))
        for item in block.get("fields", []) + block.get("elements", []):
            inner = item.get("text")
            texts.append(
                str(inner.get("text", "")) if isinstance(inner, dict) else str(inner or "")
            )
    return texts


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Slack's request-signing headers (v0 HMAC-SHA256 of ``v0:{ts}:{body}``)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": str(signature)}
