"""A fake service for the runbook tests, on a real socket: /version reports what the
deploy script last wrote to its version file, /health is down for a moment after each
deploy (as a restarting service is), then up. A test can freeze the reported version to
make a verification fail."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web


@dataclass
class Golem:
    version_file: Path
    url: str = ""
    frozen_version: str | None = None  # reported whatever is deployed
    restart_s: float = 0.6  # down this long after a deploy
    health_asks: int = 0

    def version(self) -> str:
        if self.frozen_version is not None:
            return self.frozen_version
        return self.version_file.read_text().strip()

    def up(self) -> bool:
        return time.time() - self.version_file.stat().st_mtime >= self.restart_s


@contextlib.asynccontextmanager
async def serve_golem(version_file: Path, first_version: str = "v1.1") -> AsyncIterator[Golem]:
    version_file.write_text(first_version + "\n")  # noqa: ASYNC240 (a test's set-up)
    golem = Golem(version_file)

    async def health(_: web.Request) -> web.Response:
        golem.health_asks += 1
        up = golem.up()
        return web.Response(
            status=200 if up else 503,
            text=json.dumps({"status": "up" if up else "down"}),
            content_type="application/json",
        )

    async def version(_: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps({"version": golem.version()}), content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        golem.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield golem
    finally:
        await runner.cleanup()
