#!/bin/sh
# A harmless stand-in for the runtime's admin tool: it says what a real one would do.
# A real one would call the runtime's admin API, e.g.:
#   curl -fsS -X POST "http://127.0.0.1:8200/admin/$1${2:+/$2}"
set -eu
case "$1" in
    status) echo "scheduler ok, executor ok, registry ok (demo)" ;;
    restart) echo "Restarting $2 (demo: nothing is changed)"; echo "$2 is back" ;;
    clear-cache) echo "Cache cleared (demo: nothing is changed)" ;;
    reset-store) echo "Resetting the state store (demo: nothing is changed)"; echo "store rebuilt" ;;
    *) echo "unknown tool: $1" >&2; exit 2 ;;
esac
