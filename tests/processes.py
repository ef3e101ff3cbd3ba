"""Running the real ``opsbot`` command as a separate process, as a newcomer or a script would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any OPSBOT_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBOT_")}
    env.update(extra)
    return env


def run_opsbot(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=clean_env() if env is None else env,
        check=False,
    )


async def spawn_console(
    config: Path, *, stdout: int = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """A real interactive ``opsbot console --config config`` with stdin as a pipe."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        "--config",
        str(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=stdout,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
        env=clean_env(),
    )
