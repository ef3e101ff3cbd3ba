"""The ``opsbot`` command line: console, run, check-config, db, audit, outbox.

The only place that exits the process; everything below raises typed errors.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.app.config import load_config, read_environment
from bot.app.config.models import Config
from bot.kernel.errors import ConfigError, OpsbotError
from bot.kernel.reply import Reply, Status
from bot.kernel.version import __version__

# sysexits-style codes, so scripts can tell a denial from a down service.
EXIT_CODES = {
    Status.OK: 0,
    Status.INFO: 0,
    Status.WARNING: 1,
    Status.ERROR: 2,
    Status.USAGE: 64,
    Status.DENIED: 77,
}
EXIT_CONFIG = 78
EXIT_SOFTWARE = 70
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69  # the running bot cannot be reached (--connect)


def _exit_for(status: str, default: int = 0) -> int:
    try:
        return EXIT_CODES[Status(status)]
    except ValueError:
        return default


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = read_environment(os.environ)
    try:
        if args.action == "check-config":
            return _check_config(args, env)
        config, source = _load(args, env)
        if args.action == "console":
            return asyncio.run(_console(args, config, source))
        if args.action in ("db", "audit"):
            return asyncio.run(_audit_database(args, config))
        if args.action == "outbox":
            return asyncio.run(_outbox(args, config))
        if args.action in _PLATFORM_STEPS:
            return asyncio.run(_platform_step(args.action, config))
        return asyncio.run(_serve(config, source))
    except ConfigError as exc:
        print(f"opsbot: invalid config {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OpsbotError as exc:
        print(f"opsbot: {exc}", file=sys.stderr)
        return EXIT_SOFTWARE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `opsbot audit export | head`: the reader left. Python flushes stdout again at
        # exit, so point it at /dev/null or that flush fails with a second traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opsbot", description="ChatOps bot for on-call engineers")
    parser.add_argument("--version", action="version", version=f"opsbot {__version__}")
    sub = parser.add_subparsers(dest="action", required=True)

    console = sub.add_parser("console", help="talk to the bot in this terminal (no tokens needed)")
    _config_option(console)
    console.add_argument(
        "--as", dest="principal", help="identity to act as (default: console.principal)"
    )
    console.add_argument("--channel", help="console channel id (default: console.channel)")
    console.add_argument("-c", "--command", help="run one command, print the reply and exit")
    console.add_argument("--no-http", action="store_true", help="do not start the HTTP server")
    console.add_argument(
        "--connect",
        metavar="URL",
        help="send commands to the opsbot run serving URL (e.g. http://127.0.0.1:8080) "
        "instead of starting a bot here; needs OPSBOT_CONSOLE_TOKEN",
    )
    console.add_argument("--verbose", action="store_true", help="log at the configured level")

    run = sub.add_parser("run", help="start the configured chat adapters and the HTTP server")
    _config_option(run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument(
        "file", nargs="?", type=Path, help="config file (default: --config/OPSBOT_CONFIG)"
    )
    _config_option(check)
    _db_parsers(sub)
    _audit_parsers(sub)
    outbox_help = "list the bot's queued outbound messages (or, with --dead, its dead letters)"
    outbox = sub.add_parser("outbox", help=outbox_help, description=outbox_help)
    _config_option(outbox)
    outbox.add_argument(
        "--dead", action="store_true", help="messages given up on after the last retry"
    )
    for name, help_text in _PLATFORM_STEPS.items():
        _config_option(sub.add_parser(name, help=help_text, description=help_text))
    return parser


# Explicit set-up steps, run once per install or command change, never on every start.
_PLATFORM_STEPS = {
    "slack-manifest": "print the Slack app manifest (slash commands, scopes, Socket Mode) "
    "generated from the command registry; paste it at api.slack.com/apps",
    "discord-sync": "register the slash commands with Discord (per guild in "
    "discord.sync_guild_ids, else globally); run after adding or changing commands",
    "telegram-commands": "set the Telegram command menu (setMyCommands) from the registry",
}


async def _platform_step(step: str, config: Config) -> int:
    from commands import COMMANDS

    if step == "slack-manifest":
        import json

        from adapters.slack.manifest import manifest

        print(json.dumps(manifest(config.slack, config.bot.name, COMMANDS), indent=2))
        return 0
    if step == "discord-sync":
        from adapters.discord.sync import sync_commands

        print(await sync_commands(config.discord, COMMANDS))
        return 0
    from adapters.telegram.commands import set_commands

    print(await set_commands(config.telegram, COMMANDS))
    return 0


def _db_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="migrate or check the audit database schema")
    db_sub = db.add_subparsers(dest="db_action", required=True)
    upgrade_help = "apply the audit database migrations (creates the embedded SQLite file)"
    upgrade = db_sub.add_parser("upgrade", help=upgrade_help, description=upgrade_help)
    _config_option(upgrade)
    check_help = (
        "exit 0 if the schema is this opsbot's, 1 if it needs `opsbot db upgrade` "
        "(or is newer), 70 if the database cannot be read"
    )
    check = db_sub.add_parser("check", help=check_help, description=check_help)
    _config_option(check)


def _audit_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="read, export and verify the audit log")
    audit_sub = audit.add_subparsers(dest="audit_action", required=True)
    tail = audit_sub.add_parser("tail", help="the newest entries, oldest first")
    _config_option(tail)
    tail.add_argument(
        "-n",
        dest="count",
        type=_count,
        default=None,
        help="how many entries (default: 20; with --request, all of them)",
    )
    tail.add_argument(
        "--request",
        metavar="ID",
        type=_request_id,
        help="only the entries of this request (a command, its approval, runbook steps, "
        "and its jobs: ID:<job id>)",
    )
    tail.add_argument(
        "--follow",
        action="store_true",
        help="keep printing new entries; SIGINT/SIGTERM stops it (exit 0)",
    )
    export = audit_sub.add_parser(
        "export", help="every entry since a time, in chain order, as JSON lines or CSV"
    )
    _config_option(export)
    export.add_argument(
        "--since",
        required=True,
        type=_since,
        help="a duration back from now (24h, 7d, 90m) or an ISO-8601 time (naive means UTC)",
    )
    export.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl", help="(default: jsonl)"
    )
    export.add_argument("--output", type=Path, help="file to write (default: stdout)")
    verify_help = (
        "check everything the audit table holds: exit 0 if intact, 1 if a row was edited, "
        "deleted, added or reordered, the head or anchor does not match, a key is missing, "
        "or a witnessed point is gone (the first bad seq is named), 70 if the database "
        "cannot be read"
    )
    verify = audit_sub.add_parser("verify", help=verify_help, description=verify_help)
    _config_option(verify)
    verify.add_argument(
        "--key-file",
        dest="key_files",
        type=Path,
        action="append",
        default=[],
        help="an earlier audit key, for rows written before a rotation (repeatable); "
        "the configured key ([audit] key / key_file, OPSBOT_AUDIT_KEY) is used as well",
    )
    verify.add_argument(
        "--witness",
        type=Path,
        help="a witness file ([audit] witness_path): every (seq, hash) in it must still be "
        "in the chain, which finds a truncation or a rewrite even by a key holder",
    )


MAX_TAIL = 100_000  # entries `audit tail -n` prints at most (export is for more)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, not {text!r}")
    if len(text) > 6 or int(text) > MAX_TAIL:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_TAIL} (use `opsbot audit export` for more), not {text}"
        )
    return int(text)


def _request_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"not a request id: {text!r}")
    return text


def _since(text: str) -> datetime:
    from bot.app.cli_audit import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="config file (default: $OPSBOT_CONFIG)")


def _config_path(args: argparse.Namespace, env: dict[str, str]) -> Path | None:
    explicit: Path | None = getattr(args, "file", None) or args.config
    if explicit is None and "OPSBOT_CONFIG" in env:
        explicit = Path(env["OPSBOT_CONFIG"])
    return explicit


def _load(args: argparse.Namespace, env: dict[str, str]) -> tuple[Config, str]:
    from commands import COMMANDS

    return load_config(_config_path(args, env), env, [spec.name for spec in COMMANDS])


def _check_config(args: argparse.Namespace, env: dict[str, str]) -> int:
    config, source = _load(args, env)
    print(
        f"{source}: ok ({len(config.identities)} identities, {len(config.roles)} roles, "
        f"{len(config.channels)} channels, {len(config.services)} services, "
        f"{len(config.policy.commands)} command rules)"
    )
    from bot.app.config.reach import nowhere_to_post

    for line in nowhere_to_post(config):
        print(f"warning: {line}")
    return 0


def _configure_logging(config: Config, *, quiet: bool) -> None:
    from bot.app.logs import configure_logging

    level = (
        "warning" if quiet and config.bot.log_level in ("debug", "info") else config.bot.log_level
    )
    from bot.app.storage import database_url
    from bot.audit.redact import secrets_in_url

    # The database password must not reach a log line, even inside a driver's error text.
    configure_logging(level, config.bot.log_format, secrets=secrets_in_url(database_url(config)))


async def _audit_database(args: argparse.Namespace, config: Config) -> int:
    from bot.app import cli_audit

    # stdout carries the data (an export may be piped); logs go to stderr, warnings only.
    _configure_logging(config, quiet=True)
    if args.action == "db":
        if args.db_action == "upgrade":
            return await cli_audit.db_upgrade(config)
        return await cli_audit.db_check(config)
    if args.audit_action == "tail":
        return await cli_audit.audit_tail(
            config, args.count, follow=args.follow, request=args.request
        )
    if args.audit_action == "export":
        return await cli_audit.audit_export(config, args.since, args.format, args.output)
    return await cli_audit.audit_verify(config, key_files=args.key_files, witness=args.witness)


async def _outbox(args: argparse.Namespace, config: Config) -> int:
    from bot.app.cli_outbox import outbox_list

    _configure_logging(config, quiet=True)
    return await outbox_list(config, dead=args.dead)


async def _console(args: argparse.Namespace, config: Config, source: str) -> int:
    if args.connect:
        return await _connected_console(args, config)
    from adapters.console.adapter import ConsoleAdapter
    from bot.app.runtime import Bot
    from commands import COMMANDS

    _configure_logging(config, quiet=not args.verbose)
    principal = args.principal or config.console.principal or "operator"
    if "replica_id" not in config.bot.model_fields_set:
        # A console next to a running bot on the same host must not close that bot's
        # unfinished commands as interrupted when it starts: it is a replica of its own.
        bot_section = config.bot.model_copy(
            update={"replica_id": config.bot.replica_id + "-console"}
        )
        config = config.model_copy(update={"bot": bot_section})
    serve_http = config.http.enabled and not args.no_http
    bot = Bot(config, COMMANDS, config_source=source, export_metrics=serve_http)
    console = ConsoleAdapter(
        principal, args.channel or config.console.channel, bot.clock, write=_print_now
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGTERM: stop reading, let running jobs finish within jobs.shutdown_grace, cancel
    # the rest (bot.stop() does that), as `opsbot run` does.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await bot.start(serve_http=serve_http, defer_scheduled=True)
    await bot.start_on_demand()
    try:
        await console.start(bot.handle)
        bot.outbox.register("console", console.post, console.limits)
        bot.adapters.set("console", "connected")
        if args.command is not None:
            reply = await console.send(args.command)
            code = _print_reply(reply)
            # A job answered with its id: its result is what the caller waits for.
            # Runbooks first: a runbook starts jobs as it goes, and waits for each.
            await _until(stop, bot.runbooks.wait_idle())
            await _until(stop, bot.jobs.wait_idle())
            await _until(stop, _drained(bot))
            if console.posted and reply is not None and reply.status is Status.INFO:
                code = EXIT_CODES[console.posted[-1][1].status]
            return code
        print(
            f"opsbot {__version__} console as '{principal}' ({source}). /help lists commands; "
            "Ctrl-D quits."
        )
        session = asyncio.ensure_future(
            console.repl(_until_stopped(stop, _stdin_reader(loop)), _print_now)
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done():
                # SIGTERM while a command runs: no more reading and no new job, but the
                # person sees its answer if it comes as soon as a job's acknowledgement
                # would; the jobs' own grace starts after that (bot.stop()).
                bot.jobs.stop_accepting()
                jobs = config.jobs
                answer_within = min(jobs.ack_after, jobs.shutdown_grace).total_seconds()
                await asyncio.wait({session}, timeout=answer_within)
        finally:  # Ctrl-C included: nothing is read or run while the bot stops
            await _cancel(session, stopped)
        return 0
    finally:
        await console.stop()
        await bot.stop()


async def _drained(bot: Any) -> None:
    """The job's result is queued in the outbox: wait (briefly) until it is printed."""
    await bot.outbox.drain(5.0)


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or ``stop`` is set, whichever comes first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel(task, stopper)


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _until_stopped(
    stop: asyncio.Event, read_line: Callable[[], Awaitable[str | None]]
) -> Callable[[], Awaitable[str | None]]:
    """``read_line``, ending the input (None) once ``stop`` is set."""

    async def read_or_stop() -> str | None:
        if stop.is_set():
            return None
        line = asyncio.ensure_future(read_line())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({line, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not line.done():
                line.cancel()
        return None if line.cancelled() else line.result()

    return read_or_stop


def _print_now(text: str) -> None:
    print(text, flush=True)


def _print_reply(reply: Reply | None) -> int:
    from bot.kernel.render import render_text

    if reply is None:
        return 0
    print(render_text(reply))
    return EXIT_CODES[reply.status]


def _stdin_reader(loop: asyncio.AbstractEventLoop) -> Callable[[], Awaitable[str | None]]:
    """Lines from stdin, read by a daemon thread with os.read: a thread blocked in input()
    would keep the process alive after SIGTERM (asyncio.to_thread's does), and one blocked
    inside sys.stdin's buffer makes interpreter shutdown abort on that buffer's lock."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    interactive = sys.stdin.isatty()

    def read() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(sys.stdin.fileno(), 65536)
            except OSError:
                chunk = b""
            if not chunk:
                if pending:
                    loop.call_soon_threadsafe(lines.put_nowait, pending.decode(errors="replace"))
                loop.call_soon_threadsafe(lines.put_nowait, None)
                return
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                loop.call_soon_threadsafe(lines.put_nowait, line.decode(errors="replace"))

    async def read_line() -> str | None:
        if interactive:
            print("opsbot> ", end="", flush=True)
        return await lines.get()

    threading.Thread(target=read, name="console-stdin", daemon=True).start()
    return read_line


async def _connected_console(args: argparse.Namespace, config: Config) -> int:
    """A terminal as a client of the running bot: its identity, policy and audit."""
    from bot.app.remote_console import RemoteConsole, RemoteError

    token = config.console.token
    if token is None:
        print(
            "opsbot: --connect needs the console token: set OPSBOT_CONSOLE_TOKEN", file=sys.stderr
        )
        return EXIT_CONFIG
    if args.principal or args.channel:
        print(
            "opsbot: --as and --channel do not go with --connect: the running bot's "
            "[console] section says who a connected console is",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        async with RemoteConsole(args.connect, token.get_secret_value()) as remote:
            if args.command is not None:
                status, text, posted = await remote.send(args.command)
                if text:
                    print(text, flush=True)
                code = _exit_for(status)
                # As the local console: a job answered with its id ends with its result.
                while True:
                    posts, posted, running = await remote.posts(posted, wait=2.0)
                    for post_status, post in posts:
                        print(post, flush=True)
                        if status == "info":
                            code = _exit_for(post_status, code)
                    if not posts and not running:
                        return code
            loop = asyncio.get_running_loop()
            read = _stdin_reader(loop)
            print(f"opsbot console connected to {args.connect}. Ctrl-D quits.", flush=True)
            posted = 0
            while (line := await read()) is not None:
                if line.strip() in ("/quit", "/exit", "quit", "exit"):
                    break
                if not line.strip():
                    continue
                _, text, posted = await remote.send(line)
                if text:
                    print(text, flush=True)
                posts, posted, _ = await remote.posts(posted, wait=0.0)
                for _, post in posts:
                    print(post, flush=True)
            return 0
    except RemoteError as exc:
        print(f"opsbot: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


async def _serve(config: Config, source: str) -> int:
    import structlog

    from bot.app.adapters import build_adapters
    from bot.app.runtime import Bot
    from commands import COMMANDS

    _configure_logging(config, quiet=False)
    log = structlog.get_logger("opsbot")
    bot = Bot(config, COMMANDS, config_source=source, export_metrics=config.http.enabled)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bot.start(defer_scheduled=True)
    adapters = build_adapters(config, COMMANDS, bot.clock, bot.metrics)
    if bot.remote_console is not None:
        adapters.append(bot.remote_console)  # served on the HTTP server (--connect)
    await bot.attach(adapters)
    await bot.start_scheduled()
    # Everything made while starting lives as long as the process: move it out of the
    # collector's sight, so the first full collection does not stall commands in flight
    # for tens of milliseconds.
    gc.collect()
    gc.freeze()
    port = bot.http_server.bound_port if bot.http_server else None
    log.info(
        "opsbot.started",
        version=__version__,
        config=source,
        http_port=port,
        adapters=bot.adapters.states,
    )
    if not bot.adapters.states:
        log.warning("opsbot.no_adapters", hint="no chat adapter is configured; serving HTTP only")
    from bot.app.config.reach import nowhere_to_post

    for line in nowhere_to_post(config):
        log.warning("config.nowhere_to_post", problem=line)
    await stop.wait()
    log.info("opsbot.stopping")
    await bot.stop()
    log.info("opsbot.stopped")
    return 0
