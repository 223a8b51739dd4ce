# shellcheck shell=bash
# Helpers shared by scripts/test and scripts/dev. Source it, don't run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Safe under `set -euo pipefail`. Everything it creates lives under
# $ROOT/target (git-ignored) or in a mktemp directory that the stop_* helpers
# remove again.

# Repo root = parent of the directory holding this file.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="$ROOT/target/tools"
VENV_DIR="$TOOLS_DIR/venv"
NODE_DIR="$ROOT/shared/tests/node"
# pip's and npm's download caches live under target/ like everything else
# (not in ~/.cache or ~/.npm), so `rm -rf target` forgets every download.
export PIP_CACHE_DIR="$TOOLS_DIR/cache/pip"
export npm_config_cache="$TOOLS_DIR/cache/npm"
# The HS256 secret of local development's Supabase tokens (scripts/dev,
# scripts/demo, the committed events/ and the tests sign with it).
DEV_SUPABASE_JWT_SECRET=local-dev-supabase-jwt-secret-at-least-32-chars

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Rust toolchain, which these scripts use and do not install (rustup's),
# checked first: otherwise its absence shows minutes later, after the
# services and the LiveKit build, as a failed migration or format step.
# Arguments: the cargo subcommands a script needs besides build (fmt, clippy).
ensure_rust_tools() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo is not on PATH: install Rust with rustup (https://rustup.rs), then open a new shell or run: . \"\$HOME/.cargo/env\""
    local subcommand
    for subcommand in "$@"; do
        cargo "$subcommand" --version >/dev/null 2>&1 ||
            die "cargo $subcommand is missing: rustup component add $subcommand"
    done
    command -v cc >/dev/null 2>&1 ||
        die "no C compiler (cc) for the crates that compile C: install one (Debian: apt-get install build-essential)"
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# listening PORT: whether something accepts TCP connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# udp_taken PORT: whether a UDP socket is bound to PORT (on any address:
# binding the wildcard fails then, as LiveKit's own bind would).
udp_taken() {
    ! python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))' "$1" 2>/dev/null
}

# Builds and tools made by another user (a run as root, then one as yourself,
# or the other way round) are theirs: say so at once, rather than fail on a
# lock file or cargo's target/debug with no reason given, or (as root) leave
# files in them that their owner can no longer replace. The Node packages too:
# `npm ci` must delete node_modules, and another user's it cannot (after
# `sudo scripts/test`, removing target/ alone left shared/tests/node's).
_check_owners() {
    local path others=()
    for path in "$ROOT/target" "$NODE_DIR/node_modules" "$ROOT/bench/node/node_modules"; do
        if [ -e "$path" ] && [ ! -O "$path" ]; then
            others+=("${path#"$ROOT"/}/ ($(stat -c %U "$path"))")
        fi
    done
    if [ "${#others[@]}" -gt 0 ]; then
        die "another user's files in $ROOT: $(printf '%s, ' "${others[@]}" | sed 's/, $//'); run as that user, or remove them and run again"
    fi
}
_check_owners

# The Lambda functions, one per line: a package per functions/<name>, its
# binary of the same name.
lambda_functions() {
    local dir
    for dir in "$ROOT"/functions/*/; do
        if [ -f "$dir/Cargo.toml" ]; then basename "$dir"; fi
    done
}

# wait_or_kill PID [NAME]: after the caller asked PID to stop, wait up to 5 s
# for it to exit, then SIGKILL it, so a stop never hangs the script. With
# NAME, only while PID is still that program: the daemons (postgres,
# pgbouncer) are not this shell's children, so their pid can be given to
# another process once they exit.
wait_or_kill() {
    local pid=$1 name=${2:-} _
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    if [ -n "$name" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
}

# kill_tree PID [SIGNAL]: PID and everything it started (cargo and its rustc,
# the test binaries, the LiveKit servers and SDK participants they run), with
# SIGTERM unless SIGNAL. The whole tree is listed first and PID signalled
# first, so a shell does not go on to its next command when its children die.
# Lists the tree with pgrep (ensure_process_tools); without it, PID only.
kill_tree() {
    local pids
    read -ra pids <<<"$(tree_of "$1")"
    kill -"${2:-TERM}" "${pids[@]}" 2>/dev/null || true
}

# tree_of PID: PID and every process under it, parents first.
tree_of() {
    local pid pids=("$1") i=0
    while [ "$i" -lt "${#pids[@]}" ]; do
        for pid in $(pgrep -P "${pids[$i]}" 2>/dev/null || true); do pids+=("$pid"); done
        i=$((i + 1))
    done
    echo "${pids[@]}"
}

# stop_tree PID: kill_tree's TERM, then up to 5 s for every process of the
# tree (as listed before the TERM: children whose parent exits are moved
# under init, where the tree no longer finds them) to exit, then SIGKILL for
# what is left. LiveKit's server can ignore TERM (stop_livekit), and a test
# binary's participants outlive it otherwise.
stop_tree() {
    local pids _
    read -ra pids <<<"$(tree_of "$1")"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
        # True while any of them is still there.
        kill -0 "${pids[@]}" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

file_hash() { sha256sum "$1" | cut -d' ' -f1; }

# Run "$@" while holding an exclusive lock on $TOOLS_DIR/$1.lock, so two
# scripts started at the same time don't both pip/npm install into the same
# directory. flock is util-linux; without it we just run unlocked.
#
# Stops the script when COMMAND fails. Its own `die` only ends the locked
# subshell, and callers run under `step`'s `||`, where `set -e` is off: a
# status returned here would be dropped and a failed install reported as ok.
with_lock() {
    local name=$1 rc=0
    shift
    mkdir -p "$TOOLS_DIR"
    if command -v flock >/dev/null 2>&1; then
        (
            # Another script's install (a venv, npm ci, go install) can take
            # minutes: say what is awaited, or the wait looks like a hang.
            flock -n 9 || {
                log "waiting: another script is setting up $name ($TOOLS_DIR/$name.lock)"
                flock 9
            }
            "$@"
        ) 9>"$TOOLS_DIR/$name.lock" || rc=$?
    else
        "$@" || rc=$?
    fi
    [ "$rc" -eq 0 ] || die "setting up $name failed (exit $rc; the reason is above)"
}

# ---------------------------------------------------------------------------
# Python tools: moto_server, cfn-lint, cargo-lambda (scripts/requirements-dev.txt)
# ---------------------------------------------------------------------------

_install_python_tools() {
    local req="$ROOT/scripts/requirements-dev.txt"
    local constraints="$ROOT/scripts/requirements-dev.lock"
    local stamp="$VENV_DIR/.requirements-dev.sha256"
    # A venv whose interpreter vanished (python upgraded/removed), or one left
    # half-built without pip (python3-venv missing, an interrupted run), is
    # rebuilt rather than failing the same way on every run.
    if [ -d "$VENV_DIR" ] && ! "$VENV_DIR/bin/python" -m pip --version >/dev/null 2>&1; then
        log "python venv at $VENV_DIR is broken or half-built; recreating it"
        rm -rf "$VENV_DIR"
    fi
    # A venv's scripts name its interpreter by absolute path: a target/
    # restored into another checkout would keep a pip that runs and tools
    # (moto_server, cfn-lint, sam) that fail with "bad interpreter". Its pip
    # script, run as such, says which venv it runs in; its first line alone
    # would not (a path with a space, or too long for a shebang, gets a
    # two-line /bin/sh launcher instead).
    if [ -d "$VENV_DIR" ]; then
        case "$("$VENV_DIR/bin/pip" --version 2>/dev/null)" in
        *" from $VENV_DIR/lib/"*) ;;
        *)
            log "python venv at $VENV_DIR was made at another path; recreating it"
            rm -rf "$VENV_DIR"
            ;;
        esac
    fi
    if [ ! -d "$VENV_DIR" ]; then
        log "creating python venv at $VENV_DIR"
        if ! python3 -m venv "$VENV_DIR"; then
            rm -rf "$VENV_DIR"
            die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
        fi
    fi
    # The stamp names the interpreter too: a new python gets its packages anew.
    local want
    want="$(file_hash "$req") $(file_hash "$constraints") $("$VENV_DIR/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        log "installing python dev tools from scripts/requirements-dev.txt"
        # pip leaves its unpacked downloads (100 MB and more) in TMPDIR when
        # it finishes; a scratch directory of our own is removed whatever
        # pip leaves in it.
        # An install cut short (Ctrl-C) left its scratch directory; this
        # runs under the tools' lock, so none is in use by another run.
        rm -rf "$TOOLS_DIR"/pip-tmp.*
        local pip_tmp
        pip_tmp="$(mktemp -d "$TOOLS_DIR/pip-tmp.XXXXXX")"
        if ! TMPDIR="$pip_tmp" "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -r "$req" -c "$constraints"; then
            rm -rf "$pip_tmp"
            die "pip install -r scripts/requirements-dev.txt -c scripts/requirements-dev.lock failed (see above)"
        fi
        rm -rf "$pip_tmp"
        printf '%s\n' "$want" >"$stamp"
    fi
}

ensure_python_tools() {
    with_lock python _install_python_tools
    case ":$PATH:" in
        *":$VENV_DIR/bin:"*) ;;
        *) export PATH="$VENV_DIR/bin:$PATH" ;;
    esac
}

# ---------------------------------------------------------------------------
# Node tools: livekit-server-sdk for shared/tests/node/verify-livekit-token.mjs
# ---------------------------------------------------------------------------

_install_node_tools() {
    local lock="$NODE_DIR/package-lock.json"
    # The stamp lives inside node_modules so deleting node_modules also
    # forgets the stamp; `npm ci` wipes node_modules before installing.
    local stamp="$NODE_DIR/node_modules/.package-lock.sha256"
    local want
    want="$(file_hash "$lock")"
    if [ ! -d "$NODE_DIR/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        log "installing node test tools in shared/tests/node (npm ci)"
        (cd "$NODE_DIR" && npm ci --no-audit --no-fund --no-update-notifier --loglevel=error) ||
            die "npm ci in shared/tests/node failed (see above)"
        printf '%s\n' "$want" >"$stamp"
    fi
}

ensure_node_tools() {
    command -v npm >/dev/null 2>&1 || die "npm not found (node >= 20 is needed for shared/tests/node)"
    with_lock node _install_node_tools
}

# ---------------------------------------------------------------------------
# scripts/dev's pid file (DEV_STATE_DIR/dev.pid: "pid start-time")
# ---------------------------------------------------------------------------

# proc_started PID: the process's start time (since boot, from /proc), empty
# when there is none: with its pid it names the process, where a pid alone
# may since have been given to another.
proc_started() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    stat="${stat##*) }" # past "pid (comm) ": the fields from the third on
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- $stat
    echo "${20:-}"
}

# running_dev PID_FILE: prints the pid of the scripts/dev that PID_FILE names
# and succeeds while that one is still running (not this shell). The pid is
# noted with its start time, so a pid the system has since given to another
# process is no instance, and an instance is one however it was started
# (./dev, bash dev).
running_dev() {
    local pid started
    [ -f "$1" ] || return 1
    read -r pid started <"$1" || true
    if [ -n "${pid:-}" ] && [ "$pid" != "$$" ] && [ -n "${started:-}" ] &&
        [ "$(proc_started "$pid")" = "$started" ]; then
        printf '%s\n' "$pid"
        return 0
    fi
    return 1
}

# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------

# Print a TCP port that is free on 127.0.0.1 right now. (Someone else can
# still grab it before we bind it; the start_* helpers retry for that.)
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster, trust auth (but see password_login), superuser "postgres"
# ---------------------------------------------------------------------------

# Directory holding initdb/pg_ctl: from PATH, else the newest
# /usr/lib/postgresql/<version>/bin that has both (postgresql-client-<version>
# alone makes that bin/ too, with psql and no server). Prints nothing and fails
# if not found.
find_pg_bindir() {
    local initdb dir
    # Resolve symlinks: /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb,
    # and only the real directory also has pg_isready next to it.
    if initdb="$(command -v initdb 2>/dev/null)" && [ -n "$initdb" ]; then
        dir="$(dirname "$(readlink -f "$initdb")")"
        if [ -x "$dir/pg_ctl" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

# The server binaries refuse to run as root, so as root run them as the
# `postgres` OS user. `cd /` because that user may not be allowed into our
# current directory (e.g. /root), which makes postgres complain.
_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Free space, in GB, of the filesystem holding target/ (the repository's, on
# a fresh clone without one).
free_disk_gb() {
    local kb place="$ROOT/target"
    [ -d "$place" ] || place=$ROOT
    kb="$(df -Pk "$place" 2>/dev/null | awk 'NR == 2 { print $4 }')"
    printf '%s\n' "$(( ${kb:-0} / 1024 / 1024 ))"
}

# The debug build cache only grows: a change of features, profile or
# dependency versions leaves the old artifacts beside the new ones, and CI
# keeps target/ from run to run. Past TARGET_DEBUG_LIMIT_GB (default 20) it is
# dropped and rebuilt: a disk that fills up during a build stops the tests'
# Postgres, which cannot write its WAL, and every test after it fails to
# connect. Warns when little space is left even so.
prune_build_cache() {
    local dir="$ROOT/target/debug" limit_gb=${TARGET_DEBUG_LIMIT_GB:-20} used_kb used_gb free_gb
    if [ -d "$dir" ]; then
        # du still prints its total when a file vanishes under it (a build
        # running beside this one) and exits non-zero: keep the total.
        used_kb="$(du -sk "$dir" 2>/dev/null | cut -f1)" || true
        used_gb="$(( ${used_kb:-0} / 1024 / 1024 ))"
        local dev_pid
        if [ "$used_gb" -ge "$limit_gb" ] && dev_pid="$(running_dev "$ROOT/target/dev.pid")"; then
            # Its `cargo lambda watch` runs from there: removing it would
            # break the running backend, so it waits for a run without one.
            log "target/debug holds ${used_gb} GB (limit ${limit_gb} GB): kept while scripts/dev (pid $dev_pid) runs from it"
        elif [ "$used_gb" -ge "$limit_gb" ]; then
            log "target/debug holds ${used_gb} GB (limit ${limit_gb} GB): removing it, this run rebuilds it"
            rm -rf "$dir"
        else
            log "target/debug holds ${used_gb} GB (limit ${limit_gb} GB)"
        fi
    fi
    free_gb="$(free_disk_gb)"
    log "free disk: ${free_gb} GB"
    if [ "$free_gb" -lt 6 ]; then
        log "warning: less than 6 GB free; a fresh build of the workspace and its tests writes about 4 GB (a full disk stops the tests' Postgres)"
    fi
}

_pg_log_tail() {
    if [ -n "${PG_DIR:-}" ] && [ -f "$PG_DIR/postgres.log" ]; then
        log "---- last lines of $PG_DIR/postgres.log ----"
        tail -n 30 "$PG_DIR/postgres.log" >&2 || true
        log "--------------------------------------------"
    fi
}

# start_postgres DIR
#   DIR/data         the cluster (initdb needs an empty directory of its own)
#   DIR/postgres.log server log
#   DIR/.s.PGSQL.*   unix socket
# Listens on 127.0.0.1:$PG_PORT. Exports PG_PORT, PG_DIR, PG_BINDIR.
# Any previous content of DIR is deleted.
start_postgres() {
    local dir=${1:?usage: start_postgres DIR}
    local bindir
    bindir="$(find_pg_bindir)" ||
        die "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
    if is_root; then
        id postgres >/dev/null 2>&1 ||
            die "running as root but there is no 'postgres' OS user to run the server as"
    fi

    rm -rf "$dir"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"

    if is_root; then
        chown postgres: "$dir"
        # The postgres user needs to traverse every parent of DIR. If it
        # can't (DIR under /root, say), use a directory under /tmp instead
        # (/tmp itself: root's TMPDIR may be as unreachable as DIR).
        if ! runuser -u postgres -- test -w "$dir"; then
            log "note: user postgres cannot reach $dir; using a directory under /tmp instead"
            rmdir "$dir"
            dir="$(mktemp -d /tmp/pg.XXXXXX)"
            chmod 755 "$dir"
            chown postgres: "$dir"
        fi
    fi
    export PG_DIR="$dir" PG_BINDIR="$bindir"

    # Unix socket paths are limited to ~107 bytes; fall back to a short
    # private directory under /tmp (a TMPDIR may be deep too) when DIR is too
    # deep. (We connect over TCP anyway.) It is named in DIR, so that a
    # stop_postgres in another process (postgres-cluster destroy) removes it.
    local sockdir="$dir"
    if [ ${#sockdir} -gt 80 ]; then
        sockdir="$(mktemp -d /tmp/pgsock.XXXXXX)"
        if is_root; then chown postgres: "$sockdir"; fi
        printf '%s\n' "$sockdir" >"$dir/sockdir"
        PG_SOCKDIR_EXTRA="$sockdir"
    fi

    if ! _pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        die "initdb failed"
    fi

    # Members of the role password_login (created by the tests that need it)
    # must give a SCRAM password, so credential rotation can be tested; every
    # other role is trusted. pg_hba.conf is read top down: this line goes first.
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    # (Callers run this under `cmd || rc=$?`, where `set -e` is off: every
    # step below that can fail says so itself.)
    _pg bash -c 'set -e
        f="$1/data/pg_hba.conf"
        { printf "host all +password_login 127.0.0.1/32 scram-sha-256\n"; cat "$f"; } >"$f.new"
        mv "$f.new" "$f"' _ "$dir" || die "could not write $dir/data/pg_hba.conf"

    # TLS, so tests can prove that `sslmode=require` and a pinned CA work: a
    # throwaway CA and a server certificate it signs for localhost/127.0.0.1.
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    if ! _pg bash -c '
        set -e
        cd "$1"
        openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout ca.key -out ca.crt -days 7 -subj "/CN=throwaway test CA"
        openssl req -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout data/server.key -out server.csr -subj /CN=localhost
        printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out data/server.crt -days 7 -extfile server.ext
        chmod 600 data/server.key' _ "$dir" >"$dir/openssl.log" 2>&1; then
        cat "$dir/openssl.log" >&2
        die "openssl could not make the test server certificate"
    fi
    export PG_CA_CERT="$dir/ca.crt"
    # The pooler's TLS for clients uses the same certificate (start_pgbouncer).
    export PG_SERVER_CERT="$dir/data/server.crt" PG_SERVER_KEY="$dir/data/server.key"

    # Settings go into postgresql.conf rather than `pg_ctl -o` so paths with
    # spaces need no shell-in-shell quoting. Durability is off for the tests
    # (the cluster is thrown away at exit); PG_DURABLE=1 keeps production's
    # (fsync, synchronous_commit, full_page_writes on), for benchmarks.
    local esc_sockdir=${sockdir//\'/\'\'} durability=off
    if [ "${PG_DURABLE:-0}" = 1 ]; then durability=on; fi
    cat >>"$dir/data/postgresql.conf" <<EOF || die "could not write $dir/data/postgresql.conf"

# --- added by scripts/lib.sh start_postgres (throwaway cluster) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$esc_sockdir'
max_connections = 300
fsync = $durability
synchronous_commit = $durability
full_page_writes = $durability
ssl = on
EOF

    # A free port can be taken between free_port and the bind: retry.
    local attempt port
    for attempt in 1 2 3; do
        port="$(free_port)"
        printf "port = %s\n" "$port" >>"$dir/data/postgresql.conf" || # last one wins
            die "could not write $dir/data/postgresql.conf"
        if _pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
            start >/dev/null; then
            # pg_ctl -w returned, so the server is accepting connections.
            # Double-check over TCP where pg_isready is available.
            if [ -x "$bindir/pg_isready" ] &&
                ! "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -t 10; then
                _pg_log_tail
                # Stopped here: the caller's clean-up may not know of it yet.
                _pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
                die "postgres started but does not answer on 127.0.0.1:$port"
            fi
            export PG_PORT="$port"
            log "postgres ready on 127.0.0.1:$PG_PORT (data in $PG_DIR)"
            return 0
        fi
        if ! grep -q 'could not bind\|Address already in use' "$dir/postgres.log" 2>/dev/null; then
            break # not a port clash: retrying won't help
        fi
        log "postgres: port $port was taken, retrying ($attempt/3)"
    done
    _pg_log_tail
    die "could not start postgres (log: $dir/postgres.log)"
}

# Stop the cluster started by start_postgres and delete its directory.
# Idempotent; meant for a `trap ... EXIT`.
stop_postgres() {
    if [ -n "${PG_DIR:-}" ]; then
        local pid=""
        if [ -f "$PG_DIR/data/postmaster.pid" ]; then
            pid="$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null || true)"
        fi
        # A pid file left by a reboot or a crash may name a pid now another
        # process's: pg_ctl would signal it whatever it is. Only a postmaster
        # running in this data directory is stopped. Its cwd is read as its
        # own user (_pg): root without CAP_SYS_PTRACE (a container's default)
        # may not read another user's.
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] &&
            [ "$(_pg readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(readlink -f "$PG_DIR/data")" ]; then
            _pg "${PG_BINDIR:-$(find_pg_bindir)}/pg_ctl" -D "$PG_DIR/data" -m immediate \
                -w -t 30 stop >/dev/null 2>&1 || true
            # pg_ctl returns once the pid file is gone, a moment before the
            # postmaster has exited: wait for it (and insist if it hangs).
            wait_or_kill "$pid" postgres
        fi
        if [ -z "${PG_SOCKDIR_EXTRA:-}" ] && [ -f "$PG_DIR/sockdir" ]; then
            PG_SOCKDIR_EXTRA="$(cat "$PG_DIR/sockdir")"
        fi
        rm -rf "$PG_DIR"
    fi
    if [ -n "${PG_SOCKDIR_EXTRA:-}" ]; then rm -rf "$PG_SOCKDIR_EXTRA"; fi
    unset PG_DIR PG_PORT PG_SOCKDIR_EXTRA
}

# ---------------------------------------------------------------------------
# PgBouncer in transaction mode in front of start_postgres's cluster, the way
# Supabase's pooler (port 6543) behaves -- needs start_postgres first
# ---------------------------------------------------------------------------

# Path of the pgbouncer binary: PATH first, then /usr/sbin (Debian puts it
# there, and /usr/sbin is not on every non-root PATH). Fails if not found.
find_pgbouncer() {
    local bin
    if bin="$(command -v pgbouncer 2>/dev/null)" && [ -n "$bin" ]; then
        printf '%s\n' "$bin"
    elif [ -x /usr/sbin/pgbouncer ]; then
        printf '%s\n' /usr/sbin/pgbouncer
    else
        return 1
    fi
}

# Installs Debian's `pgbouncer` package when the binary is missing: directly as
# root, else through passwordless sudo, else fails naming the package. Used as
# it is: Debian 12 ships 1.18, which has no prepared-statement support in
# transaction mode at all -- the condition the tests prove the app survives.
# ensure_debian_package CHECK PACKAGE: when CHECK (a command) fails, install
# the Debian PACKAGE (as root, or with passwordless sudo), then CHECK again.
ensure_debian_package() {
    local check=$1 package=$2
    # shellcheck disable=SC2086 # CHECK may be a command with its arguments
    $check >/dev/null && return 0
    local sudo=()
    if ! is_root; then
        sudo -n true >/dev/null 2>&1 ||
            die "$package is missing and this is not root (no passwordless sudo): apt-get install $package"
        sudo=(sudo -n)
    fi
    log "$package not found; installing the Debian package '$package'"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        die "apt-get update failed while installing the package '$package'"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null ||
        die "apt-get install $package failed"
    # shellcheck disable=SC2086
    $check >/dev/null || die "the package '$package' is installed but $check still finds nothing"
}

ensure_pgbouncer() { ensure_debian_package find_pgbouncer pgbouncer; }
ensure_postgres() { ensure_debian_package find_pg_bindir postgresql; }
# pgrep lists a process tree to stop it (kill_tree), curl asks the local API
# (scripts/check-dev); both are on most machines, not on all.
ensure_process_tools() {
    ensure_debian_package "command -v pgrep" procps
    ensure_debian_package "command -v curl" curl
}

_pgbouncer_log_tail() {
    if [ -n "${PGBOUNCER_DIR:-}" ] && [ -f "$PGBOUNCER_DIR/pgbouncer.log" ]; then
        log "---- last lines of $PGBOUNCER_DIR/pgbouncer.log ----"
        tail -n 30 "$PGBOUNCER_DIR/pgbouncer.log" >&2 || true
        log "----------------------------------------------------"
    fi
}

# start_pgbouncer
# PgBouncer on 127.0.0.1:$PGBOUNCER_PORT, pool_mode = transaction, trust auth
# for user "postgres", every database of 127.0.0.1:$PG_PORT (the `*` wildcard,
# so the per-test databases work too). Config, log and pid file live in a
# mktemp directory that stop_pgbouncer removes. Exports PGBOUNCER_PORT,
# PGBOUNCER_DIR.
start_pgbouncer() {
    [ -n "${PG_PORT:-}" ] || die "start_pgbouncer needs PG_PORT: call start_postgres first"
    local bin
    bin="$(find_pgbouncer)" || die "pgbouncer not found: call ensure_pgbouncer first"

    # pgbouncer refuses to run as root, so as root it runs as `postgres` (as
    # the server does), which must be able to read and write this directory:
    # under /tmp itself, since root's TMPDIR may be out of its reach.
    local dir
    if is_root; then
        dir="$(mktemp -d /tmp/pgbouncer.XXXXXX)"
        chmod 755 "$dir"
        chown postgres: "$dir"
    else
        dir="$(mktemp -d "${TMPDIR:-/tmp}/pgbouncer.XXXXXX")"
    fi
    export PGBOUNCER_DIR="$dir"

    # postgres for the tests' own checks, live_api (migration 0006) for the app.
    printf '"postgres" ""\n"live_api" ""\n' >"$dir/userlist.txt"

    local psql=psql
    if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/psql" ]; then psql="$PG_BINDIR/psql"; fi
    command -v "$psql" >/dev/null || die "psql not found (Debian: apt-get install postgresql-client)"

    # The tests prove the app survives a transaction-mode pooler that keeps no
    # named prepared statements, as Supabase's did and 1.18 (Debian 12) does.
    # From 1.21 pgbouncer can keep them (max_prepared_statements; 200 by
    # default from 1.24), so a newer one is told not to; 1.18 refuses the
    # setting, so it is written only where it exists.
    local version major minor prepared_statements=""
    version="$("$bin" --version 2>/dev/null | sed -n 's/^PgBouncer \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1)"
    [ -n "$version" ] || die "cannot read the version of $bin"
    read -r major minor <<<"$version"
    if [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 21 ]; }; then
        prepared_statements="max_prepared_statements = 0"
    fi

    # TLS for the clients that ask for it (as Supabase's pooler offers it),
    # with the cluster's certificate, readable by the user the pooler runs as;
    # plain TCP for the others.
    local client_tls=""
    if [ -n "${PG_SERVER_CERT:-}" ] && [ -n "${PG_SERVER_KEY:-}" ]; then
        client_tls="client_tls_sslmode = allow
client_tls_cert_file = $PG_SERVER_CERT
client_tls_key_file = $PG_SERVER_KEY"
    fi

    local attempt port
    for attempt in 1 2 3; do
        port="$(free_port)"
        # tokio-postgres's startup packet carries client_encoding, user,
        # database and application_name (and `options` only when the URL sets
        # it): pgbouncer 1.18 tracks client_encoding and application_name
        # itself, so no ignore_startup_parameters is needed. psql sends
        # nothing more either.
        cat >"$dir/pgbouncer.ini" <<EOF
; written by scripts/lib.sh start_pgbouncer (throwaway)
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
; no unix socket: everything connects over TCP
unix_socket_dir =
pool_mode = transaction
auth_type = trust
auth_file = $dir/userlist.txt
max_client_conn = 500
; Fewer server connections per database than the tests have clients, so
; statements from different clients really share server connections.
default_pool_size = 10
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
$prepared_statements
$client_tls
EOF
        if is_root; then chown postgres: "$dir"/*; fi

        rm -f "$dir/pgbouncer.pid"
        # -d: daemonize once the config is loaded; its own log goes to
        # pgbouncer.log (which must not exist yet as root's file, or the
        # daemon cannot open it), anything before that to start.out.
        if ! _pg "$bin" -d -q "$dir/pgbouncer.ini" >"$dir/start.out" 2>&1; then
            cat "$dir/start.out" >&2
            break
        fi
        local pid deadline=$((SECONDS + 15))
        while [ "$SECONDS" -lt "$deadline" ]; do
            # Gone already (the pid file is written after the fork)? Stop waiting.
            pid="$(cat "$dir/pgbouncer.pid" 2>/dev/null || true)"
            if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            # A login through pgbouncer waits for a server connection: bound it.
            if PGCONNECT_TIMEOUT=3 "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
                -c 'select 1' >/dev/null 2>&1; then
                export PGBOUNCER_PORT="$port"
                log "pgbouncer ready on 127.0.0.1:$PGBOUNCER_PORT (pool_mode = transaction, in front of postgres on $PG_PORT)"
                return 0
            fi
            sleep 0.1
        done
        _stop_pgbouncer_process
        if ! grep -q 'Address already in use' "$dir/pgbouncer.log" 2>/dev/null; then
            break # not a port clash: retrying won't help
        fi
        log "pgbouncer: port $port was taken, retrying ($attempt/3)"
    done
    _pgbouncer_log_tail
    die "could not start pgbouncer (log: $dir/pgbouncer.log)"
}

# Stops the daemon whose pid is in $PGBOUNCER_DIR/pgbouncer.pid and waits for it.
_stop_pgbouncer_process() {
    local pid
    pid="$(cat "${PGBOUNCER_DIR:-/nonexistent}/pgbouncer.pid" 2>/dev/null || true)"
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true # SIGTERM: immediate shutdown
        wait_or_kill "$pid" pgbouncer
    fi
}

# Idempotent; meant for a `trap ... EXIT`.
stop_pgbouncer() {
    if [ -n "${PGBOUNCER_DIR:-}" ]; then
        _stop_pgbouncer_process
        rm -rf "$PGBOUNCER_DIR"
    fi
    unset PGBOUNCER_DIR PGBOUNCER_PORT
}

# ---------------------------------------------------------------------------
# moto: local AWS endpoint (Secrets Manager) -- needs ensure_python_tools
# ---------------------------------------------------------------------------

# Succeeds once something answers HTTP on $1 (any status code counts).
_http_answers() {
    python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass  # an HTTP error status is still an HTTP answer
except Exception:
    sys.exit(1)
EOF
}

# start_moto [LOGFILE]
# Exports MOTO_PID, MOTO_ENDPOINT=http://127.0.0.1:PORT, MOTO_LOG.
start_moto() {
    command -v moto_server >/dev/null 2>&1 ||
        die "moto_server not found: call ensure_python_tools first"
    local logfile=${1:-}
    if [ -z "$logfile" ]; then
        logfile="$(mktemp "${TMPDIR:-/tmp}/moto.XXXXXX.log")"
        MOTO_LOG_IS_TEMP=1
    fi
    export MOTO_LOG="$logfile"

    local attempt port
    for attempt in 1 2 3; do
        port="$(free_port)"
        moto_server -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
        MOTO_PID=$!
        for _ in $(seq 1 150); do # up to ~30 s: the first import is slow
            if ! kill -0 "$MOTO_PID" 2>/dev/null; then
                break # died (port taken?): try another port
            fi
            if _http_answers "http://127.0.0.1:$port/"; then
                export MOTO_PID MOTO_ENDPOINT="http://127.0.0.1:$port"
                log "moto ready on $MOTO_ENDPOINT (pid $MOTO_PID)"
                return 0
            fi
            sleep 0.2
        done
        stop_moto_process
        log "moto did not come up on port $port (attempt $attempt/3)"
    done
    log "---- last lines of $logfile ----"
    tail -n 30 "$logfile" >&2 || true
    die "could not start moto_server"
}

stop_moto_process() {
    if [ -n "${MOTO_PID:-}" ]; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    unset MOTO_PID
}

# Idempotent; meant for a `trap ... EXIT`.
stop_moto() {
    stop_moto_process
    if [ -n "${MOTO_LOG_IS_TEMP:-}" ] && [ -n "${MOTO_LOG:-}" ]; then rm -f "$MOTO_LOG"; fi
    unset MOTO_ENDPOINT MOTO_LOG MOTO_LOG_IS_TEMP
}

# ---------------------------------------------------------------------------
# LiveKit's server, built from the Go module proxy (single node, no Redis)
# ---------------------------------------------------------------------------

# The version everything here is tested against. v1.13.5's go.mod has no
# `replace` lines (v1.13.0 and v1.13.1 have), so `go install` accepts it; it
# needs Go >= 1.26.
LIVEKIT_SERVER_MODULE=github.com/livekit/livekit-server/cmd/server
LIVEKIT_SERVER_VERSION=v1.13.5
LIVEKIT_SERVER_BIN="$TOOLS_DIR/livekit-$LIVEKIT_SERVER_VERSION/bin/server"

_install_livekit_server() {
    if [ -x "$LIVEKIT_SERVER_BIN" ] && "$LIVEKIT_SERVER_BIN" --version 2>/dev/null | grep -q "${LIVEKIT_SERVER_VERSION#v}"; then
        return 0
    fi
    command -v go >/dev/null 2>&1 ||
        die "go not found: LiveKit's server ($LIVEKIT_SERVER_MODULE@$LIVEKIT_SERVER_VERSION) is built with 'go install' (Go >= 1.26)"
    log "building LiveKit's server: go install $LIVEKIT_SERVER_MODULE@$LIVEKIT_SERVER_VERSION (once; a few minutes on a fresh machine)"
    local bindir
    bindir="$(dirname "$LIVEKIT_SERVER_BIN")"
    mkdir -p "$bindir"
    # Go's module and build caches live under target/ too (nothing cached
    # elsewhere; -modcacherw so `rm -rf target` can delete them). GOTOOLCHAIN=
    # local: never download another Go, the machine's must do. Modules come
    # from the module proxy (checked against the checksum database), never
    # straight from their repositories: "direct" (and "off") entries of
    # GOPROXY are dropped, proxies of the machine's own kept, and with none
    # left the public proxy is used.
    # GOPATH (the checksum database's cache) and the config directory (Go's
    # telemetry counters) go there as well; the user's own Go settings are
    # still read from where they keep them.
    local goproxy
    local -a goenv=(
        GOENV="${GOENV:-${XDG_CONFIG_HOME:-$HOME/.config}/go/env}"
        GOPATH="$TOOLS_DIR/go/path" XDG_CONFIG_HOME="$TOOLS_DIR/go/config"
    )
    goproxy="$(env "${goenv[@]}" go env GOPROXY 2>/dev/null | tr ',|' '\n\n' | grep -vxE 'direct|off|' | paste -sd, - || true)"
    [ -n "$goproxy" ] || goproxy=https://proxy.golang.org
    if ! env "${goenv[@]}" GOBIN="$bindir" GOMODCACHE="$TOOLS_DIR/go/mod" GOCACHE="$TOOLS_DIR/go/cache" \
        GOFLAGS="-mod=mod -modcacherw" GOTOOLCHAIN=local GOPROXY="$goproxy" \
        go install "$LIVEKIT_SERVER_MODULE@$LIVEKIT_SERVER_VERSION"; then
        die "go install $LIVEKIT_SERVER_MODULE@$LIVEKIT_SERVER_VERSION failed (see above); the LiveKit tests cannot run without it"
    fi
    "$LIVEKIT_SERVER_BIN" --version >/dev/null 2>&1 ||
        die "the LiveKit server built at $LIVEKIT_SERVER_BIN does not run"
    # Only another version's build would read Go's caches again, and that
    # fetches what it needs: they are a gigabyte and 3,500 directories under
    # target/ (CI's cache, an editor's file watchers).
    # A failed build keeps them for the next attempt.
    rm -rf "$TOOLS_DIR/go"
}

ensure_livekit_server() {
    with_lock livekit _install_livekit_server
    export LIVEKIT_SERVER_BIN
}

# Print a UDP port that is free on 127.0.0.1 right now.
free_udp_port() {
    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# write_livekit_config FILE API_KEY API_SECRET WEBHOOK_URL [DEPARTURE_TIMEOUT]
# A single-node LiveKit on loopback: signalling and RoomService on a free TCP
# port (printed; LIVEKIT_LISTEN_PORT picks one), ICE over one free UDP port and one
# free TCP port (LIVEKIT_RTC_UDP_PORT and LIVEKIT_RTC_TCP_PORT pick them), the
# node IP 127.0.0.1 (no STUN lookup of a public address;
# LIVEKIT_NODE_IP=<LAN address> binds every interface and announces it for
# media), rooms
# only through CreateRoom (auto_create: false), and webhooks signed with
# API_KEY sent to WEBHOOK_URL.
write_livekit_config() {
    local file=${1:?usage: write_livekit_config FILE KEY SECRET WEBHOOK_URL}
    local key=${2:?} secret=${3:?} webhook=${4:?} departure=${5:-20}
    local port rtc_tcp rtc_udp node_ip=${LIVEKIT_NODE_IP:-127.0.0.1} bind=127.0.0.1
    port="${LIVEKIT_LISTEN_PORT:-$(free_port)}"
    rtc_tcp="${LIVEKIT_RTC_TCP_PORT:-$(free_port)}"
    rtc_udp="${LIVEKIT_RTC_UDP_PORT:-$(free_udp_port)}"
    if [ "$node_ip" != 127.0.0.1 ]; then bind=0.0.0.0; fi
    cat >"$file" <<EOT
# written by scripts/lib.sh write_livekit_config
port: $port
bind_addresses: [$bind]
rtc:
  node_ip: $node_ip
  use_external_ip: false
  tcp_port: $rtc_tcp
  udp_port: $rtc_udp
keys:
  $key: $secret
room:
  auto_create: false
  departure_timeout: $departure
webhook:
  api_key: $key
  urls:
    - $webhook
# As the README's livekit.yaml: a data track needs only canPublishData,
# which viewers have, and no room rule of ours governs it.
enable_data_tracks: false
logging:
  level: ${LIVEKIT_LOG_LEVEL:-info}
EOT
    printf '%s\n' "$port"
}

# wait_for_livekit PORT PID: until its HTTP endpoint answers (or it died).
wait_for_livekit() {
    local port=$1 pid=$2 _
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || return 1
        if _http_answers "http://127.0.0.1:$port/"; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# start_livekit DIR API_KEY API_SECRET WEBHOOK_URL
# Runs the server in the background (config and log in DIR). Exports
# LIVEKIT_PORT, LIVEKIT_PID, LIVEKIT_DIR. Needs ensure_livekit_server first.
# A port that was free when picked can be taken before the server binds it:
# a server that exits with "address already in use" is started again on new
# ports (three attempts), unless the port it lost is LIVEKIT_LISTEN_PORT,
# which was asked for and stays; any other failure stops the script.
start_livekit() {
    local dir=${1:?usage: start_livekit DIR KEY SECRET WEBHOOK_URL}
    mkdir -p "$dir"
    local port attempt
    for attempt in 1 2 3; do
        port="$(write_livekit_config "$dir/livekit.yaml" "${2:?}" "${3:?}" "${4:?}" "${LIVEKIT_DEPARTURE_TIMEOUT:-20}")"
        "$LIVEKIT_SERVER_BIN" --config "$dir/livekit.yaml" >"$dir/livekit.log" 2>&1 &
        LIVEKIT_PID=$!
        wait_for_livekit "$port" "$LIVEKIT_PID" && break
        stop_livekit
        if [ "$attempt" -lt 3 ] && grep -q "address already in use" "$dir/livekit.log" &&
            { [ -z "${LIVEKIT_LISTEN_PORT:-}" ] ||
                ! grep "address already in use" "$dir/livekit.log" | grep -q ":$LIVEKIT_LISTEN_PORT[^0-9]"; }; then
            log "LiveKit's server lost a port it was given (attempt $attempt); starting it again"
            continue
        fi
        log "---- last lines of $dir/livekit.log ----"
        tail -n 30 "$dir/livekit.log" >&2 || true
        die "LiveKit's server did not start on 127.0.0.1:$port"
    done
    export LIVEKIT_PORT=$port LIVEKIT_PID LIVEKIT_DIR=$dir
    log "LiveKit $LIVEKIT_SERVER_VERSION ready on ws://127.0.0.1:$port (webhooks to $4; log $dir/livekit.log)"
}

# Idempotent; meant for a `trap ... EXIT`.
# A server that ignores SIGTERM for 5 s (stuck closing rooms) is killed, so a
# stop never hangs the script that calls it.
stop_livekit() {
    if [ -n "${LIVEKIT_PID:-}" ]; then
        # A paused server (scripts/bench pauses it) acts on SIGTERM only once continued.
        kill -CONT "$LIVEKIT_PID" 2>/dev/null || true
        kill "$LIVEKIT_PID" 2>/dev/null || true
        wait_or_kill "$LIVEKIT_PID"
        wait "$LIVEKIT_PID" 2>/dev/null || true
    fi
    unset LIVEKIT_PID
}
