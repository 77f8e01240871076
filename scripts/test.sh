#!/usr/bin/env bash
# The one test command. Installs what is missing, starts Redis when none answers, then runs:
# rustfmt, clippy, the workspace tests (with REDIS_URL set), the fault-injection suite
# (tests/faults), the Python tests (interop, and the
# `tether` module built from bindings/ with maturin) and a short
# smoke run of every fuzz target. Ends with one line `N passed, N failed` over all suites.
#
# Environment:
#   CARGO_TARGET_DIR   build directory (default: $HOME/.cache/tether-target, reused between runs)
#   REDIS_URL          Redis for tests (default: redis://127.0.0.1:6379)
#   TETHER_TEST_POSTGRES_URL  PostgreSQL the records tests create their databases on
#                      (default: postgres://postgres@127.0.0.1:5432; it runs on CI machines too)
#   FUZZ_SECONDS       seconds per fuzz target (default: 10)
#   SKIP_FUZZ=1        skip the fuzz smoke run (local iteration only; CI never sets it)
#   TETHER_ARTIFACTS   where tests keep artifacts such as the web page's screenshots
#                      (default: $CARGO_TARGET_DIR/test-artifacts)
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
export TETHER_ARTIFACTS=${TETHER_ARTIFACTS:-$CARGO_TARGET_DIR/test-artifacts}
venv="$root/.venv"

passed=0
failed=0
failures=()

log() { printf '\n==> %s\n' "$*" >&2; }
pass() { passed=$((passed + ${1:-1})); }
fail() { failed=$((failed + ${2:-1})); failures+=("$1"); }

# ---------------------------------------------------------------------------------------------
# Installation of what is missing
# ---------------------------------------------------------------------------------------------
apt_updated=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if [ $apt_updated -eq 0 ]; then
        $sudo apt-get update -qq >/dev/null 2>&1 || true
        apt_updated=1
    fi
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

log "checking system packages"
command -v redis-server >/dev/null || apt_install redis-server
command -v redis-cli >/dev/null || apt_install redis-tools
command -v log2long >/dev/null || apt_install can-utils
command -v unshare >/dev/null || apt_install util-linux
command -v ip >/dev/null || apt_install iproute2
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
command -v systemd-analyze >/dev/null || apt_install systemd
# The fault-injection suite steps the server's clock with libfaketime.
[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || apt_install libfaketime
# The web page's browser tests (tests/python/test_webui.py) drive Debian's chromium.
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver
export TETHER_REQUIRE_BROWSER=1
# The records store's PostgreSQL runs fail, rather than skip, when PostgreSQL does not answer.
export TETHER_REQUIRE_POSTGRES=1

log "preparing the Python virtualenv ($venv)"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || { echo "cannot create virtualenv" >&2; exit 1; }
fi
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
if [ -f "$req" ] && [ "$(sha256sum "$req" | cut -d' ' -f1)" != "$(cat "$stamp" 2>/dev/null)" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" || { echo "pip install failed" >&2; exit 1; }
    sha256sum "$req" | cut -d' ' -f1 > "$stamp"
fi
export TETHER_PYTHON="$venv/bin/python"

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null 2>&1 || { echo "cannot install cargo-fuzz" >&2; exit 1; }
fi

# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------
redis_hostport=${REDIS_URL#redis://}
redis_hostport=${redis_hostport%%/*}
redis_host=${redis_hostport%%:*}
redis_port=${redis_hostport##*:}
if ! redis-cli -h "$redis_host" -p "$redis_port" ping >/dev/null 2>&1; then
    log "starting redis-server on $redis_host:$redis_port"
    redis-server --daemonize yes --bind "$redis_host" --port "$redis_port" --save "" \
        --appendonly no --logfile "${TMPDIR:-/tmp}/tether-test-redis.log" >/dev/null
    for _ in $(seq 50); do
        redis-cli -h "$redis_host" -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
redis-cli -h "$redis_host" -p "$redis_port" ping >/dev/null 2>&1 || { echo "Redis at $REDIS_URL does not answer" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------
log "cargo fmt --check"
if cargo fmt --all -- --check; then pass; else fail "rustfmt"; fi

log "cargo clippy"
if cargo clippy --workspace --all-targets --locked -- -D warnings; then pass; else fail "clippy"; fi

log "workspace tests"
out=$(mktemp)
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    summary=$(grep -E '^\s*Summary \[' "$out" | tail -n1)
    n_pass=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
    n_fail=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
    n_timeout=$(echo "$summary" | grep -oE '[0-9]+ timed out' | grep -oE '[0-9]+' || echo 0)
    pass "${n_pass:-0}"
    if [ "$status" -ne 0 ]; then
        fail "workspace tests" $(( ${n_fail:-0} + ${n_timeout:-0} > 0 ? ${n_fail:-0} + ${n_timeout:-0} : 1 ))
    fi
    # nextest does not run doctests
    cargo test --workspace --locked --doc 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
else
    cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
fi
n_pass=$(grep -E '^test result:' "$out" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
n_fail=$(grep -E '^test result:' "$out" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
pass "${n_pass:-0}"
if [ "$status" -ne 0 ]; then fail "cargo test" $(( ${n_fail:-0} > 0 ? ${n_fail:-0} : 1 )); fi
rm -f "$out"

# Not part of the workspace run (`test = false` in daemons/tether/Cargo.toml): its own suite,
# bounded in time (each test ~20-40 s of real traffic; the whole run must stay under 4 min).
log "fault-injection suite (tests/faults: Redis restart, full disk, clock step, lossy link)"
out=$(mktemp)
cargo test -p tether --locked --test faults --no-run >/dev/null 2>&1
timeout 240 cargo test -p tether --locked --test faults -- --test-threads=2 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
n_pass=$(grep -E '^test result:' "$out" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
n_fail=$(grep -E '^test result:' "$out" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
pass "${n_pass:-0}"
if [ "$status" -eq 124 ]; then fail "fault-injection suite (over 4 min)"
elif [ "$status" -ne 0 ]; then fail "fault-injection suite" $(( ${n_fail:-0} > 0 ? ${n_fail:-0} : 1 )); fi
rm -f "$out"

log "deploy: systemd unit (systemd-analyze verify) and install script (DESTDIR)"
deploy_tmp=$(mktemp -d)
# verify checks that ExecStart exists: point it at a binary that does. Any message is a failure
# (unknown keys are only warnings with exit code 0).
sed "s|/usr/local/bin/tether|/bin/true|g" deploy/tether-agent.service >"$deploy_tmp/tether-agent.service"
if verify_out=$(systemd-analyze verify "$deploy_tmp/tether-agent.service" 2>&1) && [ -z "$verify_out" ]; then
    echo "systemd-analyze verify tether-agent.service: ok"
    pass
else
    echo "$verify_out"
    fail "systemd unit"
fi
if DESTDIR="$deploy_tmp/root" deploy/install.sh /bin/true >/dev/null \
        && [ -x "$deploy_tmp/root/usr/local/bin/tether" ] \
        && [ -f "$deploy_tmp/root/etc/systemd/system/tether-agent.service" ] \
        && [ "$(stat -c %a "$deploy_tmp/root/etc/tether/agent.env")" = 600 ] \
        && [ -f "$deploy_tmp/root/etc/tether/agent.yaml" ]; then
    echo "deploy/install.sh into DESTDIR: ok"
    pass
else
    fail "install script"
fi
rm -rf "$deploy_tmp"

log "Python interop tests"
log "building the tether Python module (bindings/) into $venv"
if ! VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --quiet --locked \
        --manifest-path bindings/Cargo.toml; then
    fail "build the tether Python module"
fi
if cargo build --locked --bin tether; then
    export TETHER_BIN="$CARGO_TARGET_DIR/debug/tether"
    out=$(mktemp)
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    line=$(grep -E '[0-9]+ (passed|failed)' "$out" | tail -n1)
    n_pass=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
    n_fail=$(echo "$line" | grep -oE '[0-9]+ (failed|error)' | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
    pass "${n_pass:-0}"
    # pytest exits 5 when it collected nothing; that is a failure here too (the suite must exist).
    if [ "$status" -ne 0 ]; then fail "python interop" $(( ${n_fail:-0} > 0 ? ${n_fail:-0} : 1 )); fi
    rm -f "$out"
else
    fail "build tether binary"
fi

if [ "${SKIP_FUZZ:-0}" != 1 ]; then
    log "fuzz smoke run (${FUZZ_SECONDS}s per target)"
    fuzz_target_dir="${CARGO_TARGET_DIR}-fuzz"
    export RUSTC_BOOTSTRAP=1
    if (cd fuzz && cargo fuzz build --target-dir "$fuzz_target_dir" -O >/dev/null); then
        for target in $(cd fuzz && cargo fuzz list); do
            corpus="fuzz/corpus/$target"
            mkdir -p "$corpus"
            work=$(mktemp -d)
            cp -r "$corpus/." "$work/" 2>/dev/null
            if (cd fuzz && cargo fuzz run --target-dir "$fuzz_target_dir" -O "$target" "$work" -- \
                -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 >"$work.log" 2>&1); then
                echo "fuzz $target: ok ($(grep -oE '^#[0-9]+' "$work.log" | tail -n1 | tr -d '#') runs)"
                pass
            else
                tail -n 30 "$work.log"
                fail "fuzz $target"
            fi
            rm -rf "$work" "$work.log"
        done
    else
        fail "fuzz build"
    fi
    unset RUSTC_BOOTSTRAP
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
    echo "failed suites: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
