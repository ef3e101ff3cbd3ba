"""A fake Telegram Bot API on 127.0.0.1 (aiohttp, real sockets) for tests and the bench.

    async with FakeTelegram() as tg:
        # [telegram] token = tg.token, api_url = tg.api_url, file_url = tg.file_url
        update = tg.command("/health", user=111111111, chat=-1001000000001)
        call = await tg.wait_call("sendMessage", replying_to=update)

Serves ``POST /bot<token>/<method>`` as PTB sends it (form fields, non-string values
JSON-encoded): getMe, deleteWebhook, setWebhook, getUpdates (long poll, offsets confirm),
sendMessage, editMessageText, editMessageReplyMarkup, answerCallbackQuery, setMyCommands,
sendChatAction. Every call is recorded (``calls``). Like Telegram it refuses a wrong
token (401), HTML it cannot parse and text over 4096 characters (400), callback_data over
64 bytes and alerts over 200 characters (400). ``fail_next`` injects failures (a 429 with
``retry_after``, a 502, a dropped connection); ``redeliver`` hands out an update again
whatever the offset, as Telegram does when it was not confirmed.

``enforce_limits()`` turns on the Bot API FAQ's limits for sendMessage, off by default:
1 message per second per chat (a burst of 3 allowed: "short bursts" are, amount
undocumented), 20 per minute per group chat (a negative chat id or an @name, on top) and
30 per second overall. Each is a token bucket on the fake's own clock
(``time.monotonic``) holding its count (3, 20, 30) and refilling at its rate (the model
PTB's AIORateLimiter uses). A message goes out only when every bucket it falls under has
a token; otherwise it is refused as Telegram does (HTTP 429, ``Too Many Requests: retry
after N`` with ``parameters.retry_after`` = N, whole seconds until every bucket has a
token again, at least 1), recorded in ``calls`` with status 429, never stored as a
message, and counted in ``rate_limited``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.limits import TokenBucket

TOKEN = "123456:TEST-fake-token"
BOT_ID = 7000000001
BOT_USERNAME = "opsbot_test_bot"
NAMES = {111111111: "alice", 222222222: "bob", 333333333: "carol", 444444444: "dave"}

# Parameters Telegram takes as plain strings (PTB sends those without JSON encoding).
_STRINGS = frozenset(
    {"text", "parse_mode", "callback_query_id", "url", "secret_token", "language_code"}
)
_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "code": "code",
    "pre": "pre",
    "a": "text_link",
    "tg-spoiler": "spoiler",
    "blockquote": "blockquote",
}
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(\s[^<>]*)?>")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_COMMAND = re.compile(r"[a-z0-9_]{1,32}")


class BadHtml(ValueError):
    pass


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode, strictly: text and entities (UTF-16 offsets)."""
    out: list[str] = []
    entities: list[dict[str, Any]] = []
    stack: list[tuple[str, int, str]] = []
    pos = 0  # UTF-16 units
    i = 0
    while i < len(source):
        ch = source[i]
        if ch == "<":
            m = _TAG.match(source, i)
            if m is None or m.group(2).lower() not in _TAGS:
                raise BadHtml(f"Can't parse entities: unsupported start tag at byte offset {i}")
            name = m.group(2).lower()
            if m.group(1):
                if not stack or stack[-1][0] != name:
                    raise BadHtml(f"Can't parse entities: unmatched end tag at byte offset {i}")
                _, start, attrs = stack.pop()
                if pos > start:
                    entity: dict[str, Any] = {
                        "type": _TAGS[name],
                        "offset": start,
                        "length": pos - start,
                    }
                    href = re.search(r'href="([^"]*)"', attrs)
                    if name == "a" and href:
                        entity["url"] = html.unescape(href.group(1))
                    entities.append(entity)
            else:
                stack.append((name, pos, m.group(3) or ""))
            i = m.end()
            continue
        if ch == ">":
            raise BadHtml(f"Can't parse entities: unexpected '>' at byte offset {i}")
        if ch == "&":
            m = _ENTITY.match(source, i)
            if m is None:
                raise BadHtml(f"Can't parse entities: unescaped '&' at byte offset {i}")
            ch = html.unescape(m.group(0))
            i = m.end()
        else:
            i += 1
        out.append(ch)
        pos += len(ch.encode("utf-16-le")) // 2
    if stack:
        raise BadHtml(f"Can't parse entities: can't find end tag for <{stack[-1][0]}>")
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def user(user_id: int) -> dict[str, Any]:
    name = NAMES.get(user_id, f"user{user_id}")
    return {"id": user_id, "is_bot": False, "first_name": name.title(), "username": name}


def chat(chat_id: int, *, forum: bool = False) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": NAMES.get(chat_id, "user")}
    return {"id": chat_id, "type": "supergroup", "title": f"chat {chat_id}", "is_forum": forum}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int
    at: float  # time.perf_counter() when it arrived

    @property
    def reply_to(self) -> int | None:
        parameters = self.params.get("reply_parameters")
        if isinstance(parameters, dict):
            return int(parameters["message_id"])
        value = self.params.get("reply_to_message_id")
        return int(value) if value is not None else None

    @property
    def text(self) -> str:
        """The visible text of a sendMessage/editMessageText (HTML parsed)."""
        raw = str(self.params.get("text", ""))
        return parse_html(raw)[0] if self.params.get("parse_mode") == "HTML" else raw


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    drop: bool = False


@dataclass
class FakeTelegram:
    token: str = TOKEN
    username: str = BOT_USERNAME
    long_poll: float = 0.5  # the most a getUpdates waits, whatever timeout it asks
    calls: list[Call] = field(default_factory=list)
    commands: list[dict[str, str]] = field(default_factory=list)  # the last setMyCommands
    webhook: dict[str, Any] | None = None
    handed_at: dict[int, float] = field(default_factory=dict)  # update_id -> given out
    on_call: Callable[[Call], None] | None = None  # the bench's hook
    rate_limited: int = 0  # sendMessage calls refused by enforce_limits()
    listen_port: int = 0  # a fixed port, for a test that configures the bot before it runs

    def __post_init__(self) -> None:
        self._limiter: _Limiter | None = None
        self._pending: list[dict[str, Any]] = []
        self._forced: list[dict[str, Any]] = []
        self._failures: dict[str, list[_Failure]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._update_ids = itertools.count(100000001)
        self._message_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = self.listen_port

    # -- server ----------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._serve)
        # handler_cancellation: a client that gives up a long poll ends its handler.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.listen_port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True  # pending long polls answer at once
        self._wake()
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/bot"

    @property
    def file_url(self) -> str:
        return f"{self.url}/file/bot"

    def config(self, **extra: Any) -> str:
        """A [telegram] section pointing at this fake."""
        lines = [
            "[telegram]",
            f'token = "{self.token}"',
            f'api_url = "{self.api_url}"',
            f'file_url = "{self.file_url}"',
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
        return "\n" + "\n".join(lines) + "\n"

    # -- what the tests drive --------------------------------------------------------------

    def command(
        self,
        text: str,
        *,
        user_id: int,
        chat_id: int | None = None,
        topic: int | None = None,
        queue: bool = True,
    ) -> dict[str, Any]:
        """A text message update (a bot_command entity when it starts with '/')."""
        where = chat_id if chat_id is not None else user_id
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat(where, forum=topic is not None),
            "from": user(user_id),
            "text": text,
        }
        if text.startswith("/"):
            head = text.split(maxsplit=1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(head)}]
        if topic is not None:
            message["message_thread_id"] = topic
            message["is_topic_message"] = True
        self._messages[(where, message["message_id"])] = message
        update = {"update_id": next(self._update_ids), "message": message}
        if queue:
            self.queue(update)
        return update

    def press(self, message: dict[str, Any], data: str, *, user_id: int) -> dict[str, Any]:
        """A callback_query update: ``user_id`` pressed the button ``data`` on ``message``
        (as the bot sent it, e.g. ``tg.message_of(call)``)."""
        current = self._messages.get((message["chat"]["id"], message["message_id"]), message)
        update = {
            "update_id": next(self._update_ids),
            "callback_query": {
                "id": f"cbq{next(self._callback_ids):012d}",
                "from": user(user_id),
                "chat_instance": "ci-1",
                "message": current,
                "data": data,
            },
        }
        self.queue(update)
        return update

    def queue(self, update: dict[str, Any]) -> None:
        self._pending.append(update)
        self._wake()

    def redeliver(self, update: dict[str, Any]) -> None:
        """Hand ``update`` out again, even if its id was confirmed."""
        self._forced.append(update)
        self._wake()

    def fail_next(
        self,
        method: str,
        status: int = 502,
        *,
        retry_after: int | None = None,
        drop: bool = False,
        times: int = 1,
        description: str = "Bad Gateway",
    ) -> None:
        """The next ``times`` calls of ``method`` fail: HTTP ``status`` (429 whenever
        ``retry_after`` is given), or the connection is dropped without an answer."""
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            status = 429
            body = {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {retry_after}",
                "parameters": {"retry_after": retry_after},
            }
        failures = self._failures.setdefault(method, [])
        failures.extend(_Failure(status, body, drop) for _ in range(times))

    def enforce_limits(self, limits: Limits | None = None) -> None:
        """Refuse sendMessage beyond Telegram's limits (``Limits()``: the FAQ's) with a
        429, as Telegram does (see the module docstring)."""
        self._limiter = _Limiter(limits or Limits())

    def calls_of(self, method: str, *, ok: bool = True) -> list[Call]:
        return [c for c in self.calls if c.method == method and (c.status == 200 or not ok)]

    def message_of(self, call: Call) -> dict[str, Any]:
        """The message a sendMessage call created, as it is now (edits applied)."""
        chat_id, message_id = call.params["chat_id"], call.params["_message_id"]
        return self._messages[(int(chat_id), message_id)]

    async def wait_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        replying_to: dict[str, Any] | None = None,
        within: float = 10.0,
    ) -> Call:
        """The first successful ``method`` call (old or new) that matches."""

        def matches(call: Call) -> bool:
            if call.method != method or call.status != 200:
                return False
            if replying_to is not None and call.reply_to != message_id(replying_to):
                return False
            return predicate is None or predicate(call)

        async with asyncio.timeout(within):
            while True:
                changed = self._changed
                for call in self.calls:
                    if matches(call):
                        return call
                await changed.wait()

    # -- the API ---------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = _decode(await request.post())
        if request.match_info["token"] != self.token:
            return self._record(method, params, 401, {"description": "Unauthorized"})
        failures = self._failures.get(method)
        if failures:
            failure = failures.pop(0)
            self._record(method, params, 0 if failure.drop else failure.status, failure.body)
            if failure.drop:
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError  # aiohttp stops handling the closed request
            return web.json_response(failure.body, status=failure.status)
        if method == "sendMessage" and self._limiter is not None:
            retry_after = self._limiter.admit(str(params.get("chat_id", "")))
            if retry_after is not None:
                self.rate_limited += 1
                return self._record(
                    method,
                    params,
                    429,
                    {
                        "description": f"Too Many Requests: retry after {retry_after}",
                        "parameters": {"retry_after": retry_after},
                    },
                )
        if method == "getUpdates":
            result: Any = await self._get_updates(params)
        else:
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                return self._record(method, params, 404, {"description": "Not Found"})
            try:
                result = handler(params)
            except _ApiError as exc:
                return self._record(method, params, 400, {"description": str(exc)})
        self._record(method, params, 200)
        return web.json_response({"ok": True, "result": result})

    def _record(
        self, method: str, params: dict[str, Any], status: int, body: dict[str, Any] | None = None
    ) -> web.Response:
        call = Call(method, params, status, time.perf_counter())
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        self._wake()
        document = {"ok": False, "error_code": status, **(body or {})}
        return web.json_response(document, status=status)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        wait = min(float(params.get("timeout") or 0), self.long_poll)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
            ready = (self._forced + self._pending)[:limit]
            remaining = deadline - asyncio.get_running_loop().time()
            if ready or remaining <= 0 or self._closing:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
        forced = [u for u in ready if any(u is f for f in self._forced)]
        self._forced = [f for f in self._forced if not any(f is u for u in forced)]
        now = time.perf_counter()
        for update in ready:
            self.handed_at.setdefault(update["update_id"], now)
        return ready

    def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Ops Bot",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = params
        return True

    def _api_sendChatAction(self, params: dict[str, Any]) -> bool:
        return True

    def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands") or []
        for entry in commands:
            description = entry.get("description", "")
            if not _COMMAND.fullmatch(entry.get("command", "")) or not 1 <= len(description) <= 256:
                raise _ApiError("Bad Request: BOT_COMMAND_INVALID")
        if len(commands) > 100:
            raise _ApiError("Bad Request: too many commands")
        self.commands = commands
        return True

    def _api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        if len(str(params.get("text") or "")) > 200:
            raise _ApiError("Bad Request: MESSAGE_TOO_LONG")
        return True

    def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        text, entities = self._text(params)
        reply_to = Call("sendMessage", params, 200, 0).reply_to
        parameters = params.get("reply_parameters") or {}
        if (
            reply_to is not None
            and (chat_id, reply_to) not in self._messages
            and not parameters.get("allow_sending_without_reply")
        ):
            raise _ApiError("Bad Request: message to be replied not found")
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat(chat_id),
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Ops Bot"},
            "text": text,
        }
        if entities:
            message["entities"] = entities
        if params.get("message_thread_id") is not None:
            message["message_thread_id"] = params["message_thread_id"]
            message["is_topic_message"] = True
        self._set_markup(message, params)
        self._messages[(chat_id, message["message_id"])] = message
        params["_message_id"] = message["message_id"]
        return message

    def _api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._existing(params)
        text, entities = self._text(params)
        if text == message["text"] and params.get("reply_markup") == message.get("reply_markup"):
            raise _ApiError("Bad Request: message is not modified: specified new message content")
        message["text"] = text
        message["entities"] = entities
        self._set_markup(message, params)
        return message

    def _api_editMessageReplyMarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._existing(params)
        self._set_markup(message, params)
        return message

    def _existing(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (int(params["chat_id"]), int(params["message_id"]))
        if key not in self._messages:
            raise _ApiError("Bad Request: message to edit not found")
        return self._messages[key]

    @staticmethod
    def _text(params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        raw = str(params.get("text", ""))
        try:
            text, entities = parse_html(raw) if params.get("parse_mode") == "HTML" else (raw, [])
        except BadHtml as exc:
            raise _ApiError(f"Bad Request: {exc}") from exc
        if not text.strip():
            raise _ApiError("Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            raise _ApiError("Bad Request: message is too long")
        return text, entities

    @staticmethod
    def _set_markup(message: dict[str, Any], params: dict[str, Any]) -> None:
        markup = params.get("reply_markup")
        if markup is None:
            message.pop("reply_markup", None)  # an edit without a keyboard removes it
            return
        for row in markup.get("inline_keyboard", []):
            for button in row:
                if len(button.get("callback_data", "").encode()) > 64:
                    raise _ApiError("Bad Request: BUTTON_DATA_INVALID")
        message["reply_markup"] = markup


class _ApiError(Exception):
    pass


@dataclass(frozen=True)
class Limits:
    """Telegram's sendMessage limits as (count, seconds): burst and pace of each bucket."""

    per_chat: tuple[float, float] = (3, 3.0)  # 1/s with a burst of 3
    per_group: tuple[float, float] = (20, 60.0)
    overall: tuple[float, float] = (30, 1.0)


class _Limiter:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def admit(self, chat_id: str) -> int | None:
        """None: the message may go out (a token is taken from each of its buckets);
        else the whole seconds to wait."""
        now = time.monotonic()
        names = [("overall", ""), ("chat", chat_id)]
        if chat_id.startswith(("-", "@")):
            names.append(("group", chat_id))
        buckets = [self._bucket(name, now) for name in names]
        wait = max(bucket.wait(now) for bucket in buckets)
        if wait > 0:
            return max(1, math.ceil(wait))
        for bucket in buckets:
            bucket.take()
        return None

    def _bucket(self, name: tuple[str, str], now: float) -> TokenBucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            count, seconds = {
                "overall": self.limits.overall,
                "chat": self.limits.per_chat,
                "group": self.limits.per_group,
            }[name[0]]
            bucket = self._buckets[name] = TokenBucket(count, count / seconds, now)
        return bucket


def _decode(form: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in form.items():
        if key in _STRINGS or not isinstance(value, str):
            params[key] = value
            continue
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def message_id(update: dict[str, Any]) -> int:
    message = update.get("message") or update["callback_query"]["message"]
    return int(message["message_id"])


async def post_webhook(url: str, update: dict[str, Any], secret: str | None) -> int:
    """POST ``update`` the way Telegram does; the HTTP status the bot answered."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=json.dumps(update), headers=headers) as response,
    ):
        await response.read()
        return response.status
