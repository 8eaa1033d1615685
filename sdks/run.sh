#!/usr/bin/env bash
# Builds and tests the TypeScript packages in sdks/ against real
# `airlock serve` processes that their tests start (as root). The binary is
# $AIRLOCK_BIN (default: the workspace's debug build); this never builds it.
set -uo pipefail
cd "$(dirname "$0")"
export AIRLOCK_BIN="${AIRLOCK_BIN:-$(cd .. && pwd)/target/debug/airlock}"
status=0
for pkg in typescript computesdk; do
    [ -f "$pkg/package.json" ] || continue
    echo "== sdks/$pkg" >&2
    (
        cd "$pkg" &&
            npm ci --no-audit --no-fund --loglevel=error &&
            npm run build &&
            timeout --signal=TERM --kill-after=30 900 npm test
    ) || status=1
done
exit $status
