#!/usr/bin/env bash
# The project's one test command: `bash tests/run.sh [pytest args...]`.
#
# Works on a bare Debian 12 machine with python3.11 and a clean clone: installs
# redis-server/postgresql if missing, builds .venv, lints, type-checks, then runs
# pytest against a throwaway Redis and PostgreSQL that live only as long as this
# script. Pytest paths are relative to the repository root (the script cd's there).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD
VENV=$REPO_ROOT/.venv
PYTHON=${PYTHON:-python3}
# initdb is told to create this superuser, so the test URL never depends on
# which OS account happens to run the server.
PG_SUPERUSER=postgres
PG_DATABASE=opsbot_test

STEP="setup"
WORK_DIR=""
REDIS_PIDFILE=""
PG_BIN=""
PG_DATA=""
PG_OS_USER=""
CREATED_POLICY_RC_D=0
PYTEST_PID=""

log() { printf '%s\n' "$*"; }
die() { printf 'tests/run.sh: ERROR: %s\n' "$*" >&2; exit 1; }
step() {
    STEP=$1
    printf '\n== %s ==\n' "$1"
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        # -n: CI has no stdin, so a password prompt would hang rather than fail.
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "need root to run '$*' (not root and sudo is not installed); install redis-server and postgresql yourself or rerun as root"
    fi
}

# PostgreSQL refuses to run as root, so as root we hand the cluster to an
# unprivileged account; as a normal user we simply run it as ourselves.
as_pg() {
    if [[ $PG_OS_USER == "$(id -un)" ]]; then
        "$@"
    else
        runuser -u "$PG_OS_USER" -- "$@"
    fi
}

# shellcheck disable=SC2317  # only called from the EXIT trap
stop_servers() {
    if [[ -n $PG_DATA && -f $PG_DATA/postmaster.pid ]]; then
        # immediate: the data is thrown away, so skip the shutdown checkpoint.
        (cd "$WORK_DIR" && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 20 stop) \
            >/dev/null 2>&1 || {
            local pid
            pid=$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
            [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
        }
    fi
    if [[ -n $REDIS_PIDFILE && -f $REDIS_PIDFILE ]]; then
        local pid i
        pid=$(cat "$REDIS_PIDFILE" 2>/dev/null || true)
        if [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; then
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
}

# shellcheck disable=SC2317  # runs as the EXIT trap
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $PYTEST_PID ]] && kill -0 "$PYTEST_PID" 2>/dev/null; then
        kill -TERM "$PYTEST_PID" 2>/dev/null
        wait "$PYTEST_PID" 2>/dev/null
    fi
    stop_servers
    if [[ $CREATED_POLICY_RC_D -eq 1 ]]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    [[ -n $WORK_DIR ]] && rm -rf "$WORK_DIR"
    echo
    if [[ $rc -eq 0 ]]; then
        log "tests/run.sh: PASSED (ruff, ruff format, mypy, lint-imports, pytest) in ${SECONDS}s"
    else
        log "tests/run.sh: FAILED at step '$STEP' (exit $rc) after ${SECONDS}s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tail_log() {
    local file=$1
    if [[ -f $file ]]; then
        echo "---- last lines of $file ----" >&2
        tail -n 40 "$file" >&2
        echo "----" >&2
    fi
}

find_pg_bin() {
    local dir
    # Newest major version wins if several are installed.
    dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    if [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
    fi
}

# ---------------------------------------------------------------------------
step "system packages"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[[ -n $(find_pg_bin) ]] || missing+=(postgresql)
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install python3.11 (or set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); opsbot needs Python >= 3.11"
# Debian splits ensurepip out of python3; without it `python3 -m venv` fails.
if [[ ! -x $VENV/bin/python ]] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
    # We start our own throwaway servers; keep the packages' default services
    # from starting (and holding ports/CPU) by denying service starts during
    # the install, the same way Debian's container images do.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        CREATED_POLICY_RC_D=1
    fi
    apt_log=$(mktemp "${TMPDIR:-/tmp}/opsbot-apt.XXXXXX")
    if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}"; } >"$apt_log" 2>&1; then
        tail_log "$apt_log"
        rm -f "$apt_log"
        die "apt-get install ${missing[*]} failed"
    fi
    rm -f "$apt_log"
    if [[ $CREATED_POLICY_RC_D -eq 1 ]]; then
        as_root rm -f /usr/sbin/policy-rc.d
        CREATED_POLICY_RC_D=0
    fi
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after install"
    [[ -n $(find_pg_bin) ]] || die "PostgreSQL server binaries still not found after install"
else
    log "redis-server and PostgreSQL already installed"
fi
PG_BIN=$(find_pg_bin)
REDIS_SERVER=$(command -v redis-server)
log "redis: $("$REDIS_SERVER" --version | head -n1)"
log "postgres: $("$PG_BIN/postgres" --version)"

# ---------------------------------------------------------------------------
step "virtualenv"
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    log "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv --clear "$VENV"
fi
# pip is the slow part of a rerun; the dependency set only changes with pyproject.toml.
# -qq: errors only (warnings about local pip config are noise here).
stamp=$VENV/.opsbot-dev-installed
if [[ -f $stamp && $stamp -nt pyproject.toml ]]; then
    log "dependencies up to date (stamp newer than pyproject.toml)"
else
    log "pip install -e '.[dev]'"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install -qq -e '.[dev]'
    touch "$stamp"
fi
export VIRTUAL_ENV=$VENV
export PATH=$VENV/bin:$PATH

# ---------------------------------------------------------------------------
# Cheap static checks first: a lint error should not cost a server start-up.
step "ruff check"
ruff check .

step "ruff format --check"
ruff format --check .

step "mypy"
mypy

step "lint-imports"
# The layers and the independence of features and platforms (docs/architecture.md).
lint-imports --no-cache

# ---------------------------------------------------------------------------
step "start throwaway redis + postgres"
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/opsbot-test.XXXXXX")
# The unprivileged PostgreSQL account must be able to reach its subdirectory.
chmod 0711 "$WORK_DIR"

# Ask the kernel for two free ports with both sockets open at once, so the two
# servers cannot be handed the same one. (There is a small window between
# closing them and the servers binding; a clash fails loudly below.)
ports=$(python - <<'EOF'
import socket

socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
) || die "could not pick free ports on 127.0.0.1"
read -r REDIS_PORT PG_PORT <<<"$ports"

# Redis: no RDB/AOF persistence, everything inside WORK_DIR.
mkdir "$WORK_DIR/redis"
REDIS_PIDFILE=$WORK_DIR/redis/redis.pid
REDIS_LOG=$WORK_DIR/redis/redis.log
"$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --save '' --appendonly no --dir "$WORK_DIR/redis" \
    --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" \
    || { tail_log "$REDIS_LOG"; die "redis-server failed to start on port $REDIS_PORT"; }

# PostgreSQL: pick the account that will own the cluster.
if [[ $EUID -ne 0 ]]; then
    PG_OS_USER=$(id -un)
elif id -u postgres >/dev/null 2>&1; then
    PG_OS_USER=postgres
elif id -u opsbot-test >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        opsbot-test >/dev/null 2>&1; then
    PG_OS_USER=opsbot-test
else
    PG_OS_USER=nobody
fi
PG_DIR=$WORK_DIR/pg
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/postgres.log
mkdir "$PG_DIR"
[[ $PG_OS_USER == "$(id -un)" ]] || chown "$PG_OS_USER" "$PG_DIR"
as_pg test -w "$PG_DIR" || die "user $PG_OS_USER cannot write to $PG_DIR (is ${TMPDIR:-/tmp} traversable?)"
log "postgres runs as OS user '$PG_OS_USER', superuser '$PG_SUPERUSER'"

# cd: the unprivileged account may not be allowed into the repository.
(cd "$PG_DIR" && as_pg "$PG_BIN/initdb" -D "$PG_DATA" --username="$PG_SUPERUSER" \
    --auth=trust --encoding=UTF8 --no-locale --no-sync) >"$WORK_DIR/initdb.log" 2>&1 \
    || { tail_log "$WORK_DIR/initdb.log"; die "initdb failed"; }
# Durability is pointless for a cluster deleted on exit; turning it off makes
# DDL-heavy tests noticeably faster.
cat >>"$PG_DATA/postgresql.conf" <<EOF

# --- throwaway test cluster (tests/run.sh) ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
(cd "$PG_DIR" && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start) >/dev/null \
    || { tail_log "$PG_LOG"; die "PostgreSQL failed to start on port $PG_PORT"; }

# Bounded wait for both servers to answer on TCP, as the tests will connect.
redis_ping() {
    python - "$REDIS_PORT" <<'EOF'
import socket
import sys

with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
EOF
}
for ((i = 0; ; i++)); do
    redis_ping 2>/dev/null && break
    ((i < 100)) || { tail_log "$REDIS_LOG"; die "redis did not answer PING on 127.0.0.1:$REDIS_PORT within 10s"; }
    sleep 0.1
done
for ((i = 0; ; i++)); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    ((i < 100)) || { tail_log "$PG_LOG"; die "PostgreSQL not accepting connections on 127.0.0.1:$PG_PORT within 10s"; }
    sleep 0.1
done
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" "$PG_DATABASE" \
    || { tail_log "$PG_LOG"; die "createdb $PG_DATABASE failed"; }

export OPSBOT_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export OPSBOT_TEST_POSTGRES_URL="postgresql://$PG_SUPERUSER@127.0.0.1:$PG_PORT/$PG_DATABASE"
log "OPSBOT_TEST_REDIS_URL=$OPSBOT_TEST_REDIS_URL"
log "OPSBOT_TEST_POSTGRES_URL=$OPSBOT_TEST_POSTGRES_URL"

# ---------------------------------------------------------------------------
step "pytest"
# `python -m` puts the repo root on sys.path, so tests can `import tests.infra`.
# Run it in the background and `wait`, so a TERM/INT sent to this script is
# handled at once (bash defers traps until a foreground child exits) and the
# servers are stopped promptly; `<&0` keeps stdin usable for --pdb.
rc=0
python -m pytest "$@" <&0 &
PYTEST_PID=$!
wait "$PYTEST_PID" || rc=$?
PYTEST_PID=""
case $rc in
    0) ;;
    # A run that checks nothing must never look green.
    5) printf 'tests/run.sh: ERROR: pytest collected no tests: failing (exit 5)\n' >&2 ;;
    4) printf 'tests/run.sh: ERROR: pytest usage error (exit 4): a path given does not exist or an option is wrong\n' >&2 ;;
esac
exit "$rc"
