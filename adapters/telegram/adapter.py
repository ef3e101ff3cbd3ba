"""The Telegram adapter (python-telegram-bot 22): updates in, HTML replies out.

Translation only; every rule lives in the core.

In
    A command (entity ``bot_command`` at offset 0) in a private chat or a group becomes a
    Message with text ``/cmd args`` and ``addressed=True``. The adapter decides addressing,
    because PTB knows the bot's username (from getMe) and the core only knows ``[bot] name``:
    ``/cmd@<our username>`` is stripped to ``/cmd``, ``/cmd@other_bot`` is ignored. Plain
    text counts only in private chats. ``/start`` (what a client sends when someone opens a
    chat with the bot) is passed on as ``/help``; a menu name Telegram made us change
    (``slow_deploy``) is mapped back to the registry's (``slow-deploy``).

    ids: ``user_id`` = from.id, ``channel_id`` = chat.id, ``event_id`` = update_id (stable
    when Telegram delivers the same update again), ``thread_id`` = the command's
    message_id, so the answer replies to it. In a forum topic ``thread_id`` is
    ``"<message_id>:<message_thread_id>"`` (``encode_thread``/``decode_thread``), so posts
    land in the same topic.

Buttons
    An approval request's buttons are an inline keyboard. ``callback_data`` is the button's
    command when it fits in 64 bytes ("/approve k7m2qx" does), else ``k:<key>`` into a
    bounded map (lost on restart: such a button then says to type the command). A press is
    answered (answerCallbackQuery) every time, and becomes a Message from the presser with
    ``event_id`` = callback_query.id, through the whole pipeline. A failure reply is shown
    to the presser alone as an alert and the message is left as it was; otherwise the
    message gets the outcome appended and loses its keyboard, and the reply is sent as a
    reply to it.

Out
    HTML (adapters/telegram/render.py), split at 4096 characters. ``post(destination,
    reply, key)`` replies to ``destination.thread_id``; a key seen before edits that
    message instead (editMessageText; a bounded map of key -> message). Sends go through
    PTB's AIORateLimiter (30 msg/s overall, 20 msg/min per group) with retries on
    RetryAfter (429); for an outbox post each attempt first checks that the outbox still
    holds the message (adapters/telegram/limiter.py).

Connection
    Long polling by default (PTB's updater retries a failed getUpdates with back-off), or a
    webhook server (``mode = "webhook"``) that answers 403 to a request without the secret
    token. ``start`` returns once connected; a missing or refused token is an AdapterError,
    an unreachable Bot API a transient one (the bot tries again until it answers).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from msgspec import Struct
from telegram import (
    Bot,
    CallbackQuery,
    LinkPreviewOptions,
    MaybeInaccessibleMessage,
    ReplyParameters,
    Update,
)
from telegram import Message as TgMessage
from telegram.constants import ChatType, MessageEntityType, ParseMode
from telegram.error import BadRequest, InvalidToken, TelegramError
from telegram.ext import Application, ContextTypes, TypeHandler

from adapters.telegram.commands import (
    apply_commands,
    command_aliases,
    refused_token_error,
    require_token,
    scrub,
)
from adapters.telegram.config import TOKEN_VARIABLES, TelegramSection
from adapters.telegram.limiter import LeaseCheckingRateLimiter
from adapters.telegram.polling import PollRequest
from adapters.telegram.render import (
    TEXT_LIMIT,
    alert_text,
    keyboard,
    outcome,
    render_html,
    utf16_len,
)
from bot.kernel.adapter import AdapterError, MessageHandler, PlatformLimits, Rate, keyed_slot
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec
from bot.kernel.errors import DependencyError
from bot.kernel.failures import report_failure
from bot.kernel.message import Location, Message
from bot.kernel.reply import Reply

log = structlog.get_logger("opsbot.telegram")

PLATFORM = "telegram"
_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
_CONCURRENT_UPDATES = 256  # updates handled at once (PTB's default for "concurrent")
# Connections for Bot API calls: plenty for Telegram's 30 msg/s, and cheaper under a burst
# than PTB's 256 (httpcore scans every pooled connection per request; bench/adapter_telegram).
_POOL = 8
_POOL_WAIT = 30.0  # seconds a call may wait for a free connection
_REMEMBERED = 1024  # post keys and long button commands kept in memory
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_SECRET_VARIABLE = TOKEN_VARIABLES["webhook_secret"]
_NOT_MODIFIED = "message is not modified"

App = Application[Any, Any, Any, Any, Any, Any]


class RateLimits(Struct, frozen=True):
    """Outbound limits (Telegram's published ones by default); 0 turns a limit off."""

    overall_per_second: float = 30
    group_per_minute: float = 20
    max_retries: int = 3  # after a 429 RetryAfter, waiting what Telegram asks each time


def encode_thread(message_id: int, topic: int | None) -> str:
    return f"{message_id}:{topic}" if topic is not None else str(message_id)


def decode_thread(thread_id: str | None) -> tuple[int | None, int | None]:
    """(message to reply to, forum topic) from a Message.thread_id we made."""
    if not thread_id:
        return None, None
    message, _, topic = thread_id.partition(":")
    try:
        return int(message), int(topic) if topic else None
    except ValueError:
        return None, None


def _is_group_chat(location: Location) -> bool:
    """Telegram gives group and supergroup chats negative ids."""
    return location.channel_id.startswith("-")


# Telegram Bot API FAQ: 1 msg/s per chat, 20 msg/min per group, 30 msg/s overall.
LIMITS = PlatformLimits(
    per_channel=Rate(1, 1.0),
    per_group=Rate(20, 60.0),
    overall=Rate(30, 1.0),
    is_group=_is_group_chat,
)


class TelegramAdapter:
    name = PLATFORM
    limits = LIMITS

    def __init__(
        self,
        section: TelegramSection | None,
        commands: Sequence[CommandSpec[Any, Any]],
        clock: Clock,
        *,
        limits: RateLimits | None = None,
        poll_timeout: float = 20.0,
        answer_within: float = 8.0,
    ) -> None:
        """No I/O here. ``poll_timeout``: seconds one getUpdates long poll may wait.
        ``answer_within``: how long a button press waits for its reply before the press is
        answered anyway (the presser's spinner stops; the reply then comes as a message)."""
        self._section = section or TelegramSection()
        self._commands = list(commands)
        self._aliases = command_aliases(commands)
        self._clock = clock
        self._limits = limits or RateLimits()
        self._poll_timeout = poll_timeout
        self._answer_within = answer_within
        self._app: App | None = None
        self._polls: PollRequest | None = None
        self._handler: MessageHandler | None = None
        self._token = ""
        self._username = ""
        self._keyed: OrderedDict[str, tuple[int | str, int]] = OrderedDict()
        self._long_buttons: OrderedDict[str, str] = OrderedDict()

    @property
    def username(self) -> str:
        """The bot's @username, from getMe (empty before start)."""
        return self._username

    @property
    def identity(self) -> str:
        # Groups address commands to it: /status@<username>.
        return f"@{self._username}" if self._username else ""

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, handler: MessageHandler) -> None:
        section = self._section
        token = require_token(section)
        webhook = self._webhook_settings() if section.mode == "webhook" else None
        self._token = token
        self._polls = polls = PollRequest()
        app: App = (
            Application.builder()
            .token(token)
            .base_url(section.api_url)
            .base_file_url(section.file_url)
            .get_updates_request(polls)
            .rate_limiter(
                LeaseCheckingRateLimiter(
                    overall_max_rate=self._limits.overall_per_second,
                    group_max_rate=self._limits.group_per_minute,
                    max_retries=self._limits.max_retries,
                )
            )
            .concurrent_updates(_CONCURRENT_UPDATES)
            .connection_pool_size(_POOL)
            .pool_timeout(_POOL_WAIT)
            .job_queue(None)
            .build()
        )
        app.add_handler(TypeHandler(Update, self._on_update))
        app.add_error_handler(self._on_error)
        try:
            await app.initialize()  # getMe
        except InvalidToken as exc:
            await app.bot.shutdown()
            raise refused_token_error() from exc
        except TelegramError as exc:  # unreachable, timed out, 5xx, 429: the bot tries again
            await app.bot.shutdown()
            raise AdapterError(
                f"cannot reach the Telegram Bot API at {section.api_url}: {scrub(exc, token)}",
                transient=True,
            ) from exc
        except BaseException:  # cancelled (the bot stopped): leave nothing open
            await app.bot.shutdown()
            raise
        self._username = app.bot.username
        self._handler = handler
        if section.set_commands_on_start:
            try:
                await apply_commands(app.bot, self._commands)
            except TelegramError as exc:  # the menu is a convenience: keep serving
                log.warning("telegram.set_commands_failed", error=scrub(exc, token))
        self._app = app  # before the first update can arrive
        try:
            await app.start()
            updater = app.updater
            assert updater is not None  # the builder makes one
            if webhook is None:
                await updater.start_polling(
                    timeout=timedelta(seconds=self._poll_timeout),
                    allowed_updates=_UPDATES,
                    error_callback=self._on_poll_error,
                )
            else:
                url, secret = webhook
                await updater.start_webhook(
                    listen=section.webhook_host,
                    port=section.webhook_port,
                    url_path=section.webhook_path,
                    webhook_url=url,
                    secret_token=secret,
                    allowed_updates=_UPDATES,
                )
        except BaseException as exc:
            self._app = None
            await self._close(app)
            if not isinstance(exc, TelegramError | OSError):
                raise
            raise AdapterError(
                f"Telegram {section.mode} did not start: {scrub(exc, token)}",
                # A network error, or Telegram busy; not a port we may not listen on.
                transient=isinstance(exc, TelegramError) and not isinstance(exc, InvalidToken),
            ) from exc
        log.info("telegram.connected", username=self._username, mode=section.mode)

    async def stop(self) -> None:
        """Stop fetching, finish the updates in hand (their replies too), disconnect."""
        app = self._app
        if app is not None:
            await self._close(app)  # the updates in hand still reply through self._app
        self._app = None
        self._handler = None

    @staticmethod
    async def _close(app: App) -> None:
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()

    def _webhook_settings(self) -> tuple[str, str]:
        section = self._section
        if section.webhook_url is None:
            raise AdapterError(
                "Telegram webhook mode needs [telegram] webhook_url: the public https:// URL "
                "Telegram posts updates to"
            )
        secret = section.webhook_secret.get_secret_value() if section.webhook_secret else ""
        if not secret:
            raise AdapterError(
                f"Telegram webhook mode needs a secret: set {_SECRET_VARIABLE} (or "
                "webhook_secret in [telegram]); without it anyone could post updates"
            )
        if not _SECRET.fullmatch(secret):
            raise AdapterError(
                f"{_SECRET_VARIABLE} must be 1-256 characters of A-Z, a-z, 0-9, _ and -"
            )
        return section.webhook_url, secret

    # -- in -------------------------------------------------------------------------------

    async def _on_update(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            if update.callback_query is not None:
                await self._on_press(update.callback_query)
            elif update.message is not None:
                await self._on_message(update.message, update.update_id)
        except TelegramError as exc:  # no rights in that chat, chat gone, retries used up
            log.warning("telegram.reply_failed", update_id=update.update_id, error=self._scrub(exc))
        except Exception as exc:
            report_failure("telegram.update", exc, update_id=update.update_id)

    async def _on_message(self, tg: TgMessage, update_id: int) -> None:
        handler = self._handler
        user = tg.from_user
        if handler is None or user is None or tg.text is None:
            return
        text = self._command_text(tg)
        if text is None:
            return
        topic = tg.message_thread_id if tg.is_topic_message else None
        message = Message(
            location=Location(
                platform=PLATFORM,
                channel_id=str(tg.chat.id),
                thread_id=encode_thread(tg.message_id, topic),
            ),
            user_id=str(user.id),
            text=text,
            event_id=str(update_id),
            received_at=self._clock.now(),
            user_name=user.username or user.full_name,
            addressed=True,
            private_replies=tg.chat.type == ChatType.PRIVATE,
        )
        reply = await handler(message)
        if reply is not None:
            await self._send(tg.chat.id, reply, reply_to=tg.message_id, topic=topic)

    def _command_text(self, tg: TgMessage) -> str | None:
        """The text the core should parse, or None when the message is not for us."""
        text = tg.text or ""
        private = tg.chat.type == ChatType.PRIVATE
        entity = tg.entities[0] if tg.entities else None
        if entity is None or entity.type != MessageEntityType.BOT_COMMAND or entity.offset != 0:
            return text if private else None
        head = tg.parse_entity(entity)  # "/rollback@opsbot_bot"
        rest = text[len(head) :]
        name, _, target = head[1:].partition("@")
        if target and target.lower() != self._username.lower():
            return None  # /cmd@other_bot
        name = name.lower()
        if name == "start" and private:
            return "/help"  # a deep-link payload after /start is not a command argument
        return f"/{self._aliases.get(name, name)}{rest}"

    async def _on_press(self, query: CallbackQuery) -> None:
        handler = self._handler
        origin = query.message
        command = self._button_command(query.data)
        if handler is None or origin is None or command is None:
            await self._answer(
                query, "This button no longer works; type the command instead.", alert=True
            )
            return
        topic = _topic(origin)
        user = query.from_user
        message = Message(
            location=Location(
                platform=PLATFORM,
                channel_id=str(origin.chat.id),
                thread_id=encode_thread(origin.message_id, topic),
            ),
            user_id=str(user.id),
            text=command,
            event_id=query.id,
            received_at=self._clock.now(),
            user_name=user.username or user.full_name,
            addressed=True,
            private_replies=True,  # a refusal is a callback alert, for the presser alone
        )
        answered = False
        try:
            task = asyncio.ensure_future(handler(message))
            done, _ = await asyncio.wait({task}, timeout=self._answer_within)
            if not done:  # long work: stop the spinner now, the reply follows as a message
                answered = await self._answer(query)
            reply = await task
            if reply is None:
                return
            private = reply.is_failure or reply.is_private
            if private and not answered:
                # Shown to the presser alone; the message and its buttons stay for others.
                answered = await self._answer(query, alert_text(reply), alert=True)
                return
            if not private:
                answered = answered or await self._answer(query)
                await self._mark_done(origin, reply)
            await self._send(origin.chat.id, reply, reply_to=origin.message_id, topic=topic)
        finally:
            if not answered:
                await self._answer(query)

    def _button_command(self, data: str | None) -> str | None:
        if data is None:
            return None
        if data.startswith("/"):
            return data
        return self._long_buttons.get(data)

    def _callback_data(self, command: str) -> str:
        if len(command.encode()) <= 64:
            return command
        key = f"k:{secrets.token_urlsafe(12)}"
        _remember(self._long_buttons, key, command)
        return key

    async def _answer(
        self, query: CallbackQuery, text: str | None = None, alert: bool = False
    ) -> bool:
        """answerCallbackQuery; True once tried (a failure is logged, never raised)."""
        try:
            await self._bot().answer_callback_query(query.id, text=text, show_alert=alert)
        except TelegramError as exc:
            log.warning("telegram.answer_failed", error=self._scrub(exc))
        return True

    async def _mark_done(self, origin: MaybeInaccessibleMessage, reply: Reply) -> None:
        """Append the outcome to the message whose button was pressed; drop its keyboard."""
        bot = self._bot()
        chat, message_id = origin.chat.id, origin.message_id
        try:
            if isinstance(origin, TgMessage) and origin.text:
                added, visible = outcome(reply)
                text = f"{origin.text_html}\n\n{added}"
                if utf16_len(f"{origin.text}\n\n{visible}") <= TEXT_LIMIT:
                    await bot.edit_message_text(
                        text,
                        chat_id=chat,
                        message_id=message_id,
                        parse_mode=ParseMode.HTML,
                        link_preview_options=LinkPreviewOptions(is_disabled=True),
                    )
                    return
            await bot.edit_message_reply_markup(chat_id=chat, message_id=message_id)
        except TelegramError as exc:  # too old to edit, deleted: the reply still goes out
            log.warning("telegram.edit_failed", chat=chat, error=self._scrub(exc))

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        error = context.error
        log.error(
            "telegram.handler_error",
            error=self._scrub(error) if error else "",
            update_id=update.update_id if isinstance(update, Update) else None,
        )

    def _on_poll_error(self, error: TelegramError) -> None:
        # PTB retries getUpdates with back-off (1 s, then x1.5 up to 30 s); say so once each.
        log.warning("telegram.poll_failed", error=self._scrub(error), retrying=True)

    # -- out ------------------------------------------------------------------------------

    async def state(self) -> str:
        app = self._app
        if app is None or app.updater is None:
            return "stopped"
        if not app.updater.running:
            return "error: polling or the webhook stopped"
        failure = self._polls.failure if self._polls is not None else None
        if failure is not None:
            # PTB tries again by itself: not an error for the keeper to restart over.
            return f"reconnecting: getUpdates failed: {self._scrub(failure)}"
        return "connected"

    async def post(self, destination: Location, reply: Reply, key: str | None) -> None:
        key = keyed_slot(destination, key)
        chat = _chat_id(destination.channel_id)
        reply_to, topic = decode_thread(destination.thread_id)
        try:
            known = self._keyed.get(key) if key is not None else None
            if known is not None and known[0] == chat and await self._edit(known[1], chat, reply):
                return
            sent = await self._send(chat, reply, reply_to=reply_to, topic=topic)
        except TelegramError as exc:
            raise DependencyError(
                "Telegram Bot API", f"posting to chat {chat} failed: {self._scrub(exc)}", exc
            ) from exc
        if key is not None and sent:
            _remember(self._keyed, key, (chat, sent[0]))

    async def _edit(self, message_id: int, chat: int | str, reply: Reply) -> bool:
        """Replace a keyed message; False when it is gone (post a new one instead)."""
        chunks = render_html(reply)
        markup = keyboard(reply.buttons, self._callback_data) if len(chunks) == 1 else None
        try:
            await self._bot().edit_message_text(
                chunks[0],
                chat_id=chat,
                message_id=message_id,
                parse_mode=ParseMode.HTML,
                reply_markup=markup,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        except BadRequest as exc:
            if _NOT_MODIFIED not in str(exc).lower():
                log.info("telegram.edit_fell_back", chat=chat, error=self._scrub(exc))
                return False
        if len(chunks) > 1:  # rare: progress is a few lines; the overflow follows
            await self._send_chunks(chat, chunks[1:], reply, reply_to=message_id, topic=None)
        return True

    async def _send(
        self, chat: int | str, reply: Reply, *, reply_to: int | None, topic: int | None
    ) -> list[int]:
        return await self._send_chunks(
            chat, render_html(reply), reply, reply_to=reply_to, topic=topic
        )

    async def _send_chunks(
        self,
        chat: int | str,
        chunks: Sequence[str],
        reply: Reply,
        *,
        reply_to: int | None,
        topic: int | None,
    ) -> list[int]:
        """Send each chunk as a reply to ``reply_to``; the keyboard goes on the last one."""
        bot = self._bot()
        markup = keyboard(reply.buttons, self._callback_data)
        parameters = (
            ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
        )
        sent: list[int] = []
        for i, chunk in enumerate(chunks):
            message = await bot.send_message(
                chat,
                chunk,
                parse_mode=ParseMode.HTML,
                reply_parameters=parameters,
                message_thread_id=topic,
                reply_markup=markup if i == len(chunks) - 1 else None,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
            sent.append(message.message_id)
        return sent

    def _scrub(self, error: BaseException | str) -> str:
        return scrub(error, self._token)

    def _bot(self) -> Bot:
        app = self._app
        if app is None:
            raise AdapterError("the Telegram adapter is not running")
        bot: Bot = app.bot
        return bot


def _topic(origin: MaybeInaccessibleMessage) -> int | None:
    if isinstance(origin, TgMessage) and origin.is_topic_message:
        return origin.message_thread_id
    return None


def _chat_id(channel_id: str) -> int | str:
    try:
        return int(channel_id)
    except ValueError:
        return channel_id  # "@channelusername"


def _remember(store: OrderedDict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > _REMEMBERED:
        store.popitem(last=False)
