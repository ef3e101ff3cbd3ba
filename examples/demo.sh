#!/usr/bin/env bash
# The console demo on a fresh machine: builds .venv on first use, then opens the
# opsbot console with examples/opsbot.toml (no chat tokens, no database server), beside
# a demo "web" service on 127.0.0.1:8099 for the rollback runbook.
#   bash examples/demo.sh                 interactive; type /help
#   bash examples/demo.sh -c /health      one command, then exit
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ! -x .venv/bin/opsbot ]]; then
    echo "first run: installing opsbot into .venv (about 20 s)" >&2
    python3 -m venv .venv || { echo "python3 -m venv failed: apt-get install python3-venv" >&2; exit 1; }
    .venv/bin/pip install -qq -e . 2>&1 | grep -v "^WARNING: Location" >&2 || true
    [[ -x .venv/bin/opsbot ]] || { echo "installing opsbot failed; see the pip output above" >&2; exit 1; }
fi
# The "web" service the rollback runbook waits for and verifies (/runbook rollback v1.2).
python3 examples/scripts/web-demo.py 8099 2>/dev/null &
web_demo=$!
trap 'kill "$web_demo" 2>/dev/null || true' EXIT
.venv/bin/opsbot console --config examples/opsbot.toml "$@"
