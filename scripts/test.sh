#!/usr/bin/env bash
# Install everything peernet's tests need on a fresh Debian machine, then run them.
# Usage: ./scripts/test.sh [pytest arguments]    (e.g. -m "not slow" for the fast tests)
set -euo pipefail
cd "$(dirname "$0")/.."

PEERNET_EXTRAS="[test]"
PEERNET_APT="wrk opentracker chromium chromium-driver graphviz postgresql tor curl systemd faketime iproute2"   # benchmark load generator and reference; headless browser (dashboard); dot (peernet graph --svg); twist bootstrap --db postgresql://; private Tor network (tests, benchmarks/tor.py); curl and systemd-analyze (docs/deployment.md walk-through, unit checks); libfaketime (clock-skew chaos test); ip netns (the Tor test's network namespace)
PEERNET_NPM="tests/webtorrent"  # a stock WebTorrent client for the interop test
. scripts/install.sh

echo "== running the tests"
set +e
"$VENV/bin/python" -m pytest -ra "$@"
status=$?
set -e
if [ $status -eq 5 ]; then
    echo "== error: pytest collected no tests" >&2
    exit 1
fi
exit $status
