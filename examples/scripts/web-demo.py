#!/usr/bin/env python3
"""A stand-in "web" service for the rollback runbook demo (examples/demo.sh starts it):
on 127.0.0.1:8099, /health answers up and /version the tag rollback-demo.sh last wrote.
Standard library only; it stops by itself after an hour."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
# Beside this script (git ignores it): rollback-demo.sh writes the tag there.
VERSION_FILE = Path(__file__).resolve().parent / ".web-demo-version"


def version() -> str:
    try:
        return VERSION_FILE.read_text().strip() or "v1.3"
    except OSError:
        return "v1.3"  # never rolled back: the newest tag of scripts/list-tags.sh


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body = {"status": "up"}
        elif self.path == "/version":
            body = {"version": version()}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the console is the demo


if __name__ == "__main__":
    try:
        server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    except OSError as exc:
        sys.exit(f"web-demo: cannot listen on 127.0.0.1:{PORT}: {exc.strerror}")
    threading.Timer(3600, server.shutdown).start()
    server.serve_forever()
