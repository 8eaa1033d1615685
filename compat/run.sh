#!/usr/bin/env bash
# Runs the E2B SDK compatibility suites (official Python `e2b` and npm `e2b`)
# against a real `airlock serve`. Must run as root. Does not build Airlock:
# build first (cargo build -p airlock) or point AIRLOCK_BIN at a binary.
#
#   compat/run.sh            # both suites
#   compat/run.sh python     # only the Python suite (extra args go to pytest)
#   compat/run.sh js         # only the JS suite
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
export AIRLOCK_BIN="${AIRLOCK_BIN:-$REPO/target/debug/airlock}"

if [ "$(id -u)" -ne 0 ]; then
    echo "compat/run.sh: airlock serve needs root; run as root" >&2
    exit 1
fi
if [ ! -x "$AIRLOCK_BIN" ]; then
    echo "compat/run.sh: $AIRLOCK_BIN not found; build it first (cargo build -p airlock)" >&2
    exit 1
fi

which="${1:-all}"
[ $# -gt 0 ] && shift
case "$which" in
    all) [ $# -eq 0 ] || { echo "compat/run.sh: extra arguments need 'python' or 'js'" >&2; exit 2; } ;;
    python|js) ;;
    *) echo "usage: compat/run.sh [all|python|js] [runner args...]" >&2; exit 2 ;;
esac

status=0

# The JS packages first, for both suites: the Python suite's domain tests
# drive the npm `e2b` too.
echo "== installing JS deps" >&2
(cd compat/js && npm ci --no-audit --no-fund --loglevel=error) || exit 1

if [ "$which" = all ] || [ "$which" = python ]; then
    echo "== installing Python deps" >&2
    python3 -m pip install -q --disable-pip-version-check -r compat/python/requirements.txt || exit 1
    python3 -c 'import e2b, importlib.metadata as m; print("e2b (PyPI)", m.version("e2b"))' >&2
    echo "== Python suite" >&2
    timeout --signal=TERM --kill-after=30 1200 \
        python3 -m pytest -q compat/python "$@" || status=1
    # The oldest SDK line we support (2.45, the first with the behaviours
    # the issues name) on the core suites, in a virtualenv of its own.
    old="${TMPDIR:-/tmp}/airlock-compat-e2b-2.45"
    if [ ! -x "$old/bin/pytest" ]; then
        python3 -m venv "$old" && "$old/bin/pip" install -q --disable-pip-version-check "e2b==2.45.*" pytest pytest-asyncio httpx || exit 1
    fi
    echo "== Python suite, e2b $("$old/bin/python" -c 'import importlib.metadata as m; print(m.version("e2b"))') (core files)" >&2
    (cd compat/python && timeout --signal=TERM --kill-after=30 600 \
        "$old/bin/python" -m pytest -q test_commands.py test_files.py test_sandbox_list.py test_pause_resume.py test_pty.py test_watch.py test_async_sandbox.py) || status=1
fi

if [ "$which" = all ] || [ "$which" = js ]; then
    node -e 'console.error("e2b (npm)", require("./compat/js/node_modules/e2b/package.json").version)'
    echo "== JS suite" >&2
    # one server per test file; files run one at a time
    timeout --signal=TERM --kill-after=30 1200 \
        node --test --test-concurrency=1 compat/js/test/ "$@" || status=1
fi

exit $status
