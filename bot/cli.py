"""The ``opsbot`` command line: console, run, check-config.

The only place that exits the process; everything below raises typed errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bot import __version__
from bot.config import load_config, read_environment
from bot.config.models import Config
from bot.errors import ConfigError, OpsbotError
from bot.reply import Reply, Status

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = read_environment(os.environ)
    try:
        if args.action == "check-config":
            return _check_config(args, env)
        config, source = _load(args, env)
        if args.action == "console":
            return asyncio.run(_console(args, config, source))
        return asyncio.run(_serve(config, source))
    except ConfigError as exc:
        print(f"opsbot: invalid config {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OpsbotError as exc:
        print(f"opsbot: {exc}", file=sys.stderr)
        return EXIT_SOFTWARE
    except KeyboardInterrupt:
        return 130


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
    console.add_argument("--verbose", action="store_true", help="log at the configured level")

    run = sub.add_parser("run", help="start the configured chat adapters and the HTTP server")
    _config_option(run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument(
        "file", nargs="?", type=Path, help="config file (default: --config/OPSBOT_CONFIG)"
    )
    _config_option(check)
    return parser


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
    return 0


def _configure_logging(config: Config, *, quiet: bool) -> None:
    from bot.logs import configure_logging

    level = (
        "warning" if quiet and config.bot.log_level in ("debug", "info") else config.bot.log_level
    )
    configure_logging(level, config.bot.log_format)


async def _console(args: argparse.Namespace, config: Config, source: str) -> int:
    from adapters.console import ConsoleAdapter
    from bot.runtime import Bot
    from commands import COMMANDS

    _configure_logging(config, quiet=not args.verbose)
    principal = args.principal or config.console.principal or "operator"
    bot = Bot(config, COMMANDS, config_source=source)
    console = ConsoleAdapter(principal, args.channel or config.console.channel, bot.clock)
    await bot.start(serve_http=False if args.no_http else None)
    try:
        await console.start(bot.handle)
        bot.adapters.set("console", "connected")
        if args.command is not None:
            reply = await console.send(args.command)
            return _print_reply(reply)
        print(
            f"opsbot {__version__} console as '{principal}' ({source}). /help lists commands; "
            "Ctrl-D quits."
        )
        await console.repl(_read_line, print)
        return 0
    finally:
        await console.stop()
        await bot.stop()


def _print_reply(reply: Reply | None) -> int:
    from bot.render import render_text

    if reply is None:
        return 0
    print(render_text(reply))
    return EXIT_CODES[reply.status]


async def _read_line() -> str | None:
    prompt = "opsbot> " if sys.stdin.isatty() else ""
    try:
        return await asyncio.to_thread(input, prompt)
    except EOFError:
        return None


async def _serve(config: Config, source: str) -> int:
    import structlog

    from bot.runtime import Bot
    from commands import COMMANDS

    _configure_logging(config, quiet=False)
    log = structlog.get_logger("opsbot")
    bot = Bot(config, COMMANDS, config_source=source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bot.start()
    port = bot.http_server.bound_port if bot.http_server else None
    log.info("opsbot.started", version=__version__, config=source, http_port=port)
    if not bot.adapters.states:
        log.warning("opsbot.no_adapters", hint="no chat adapter is configured; serving HTTP only")
    await stop.wait()
    log.info("opsbot.stopping")
    await bot.stop()
    log.info("opsbot.stopped")
    return 0
