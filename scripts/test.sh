#!/usr/bin/env bash
# Install everything peernet's tests need on a fresh Debian machine, then run them.
# Usage: ./scripts/test.sh [pytest arguments]     (e.g. -m "not slow" for the fast tests)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Debian packages: wrk and opentracker for the benchmark smoke test.
need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v opentracker >/dev/null 2>&1 || need_apt+=(opentracker)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Debian packages: ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "== warning: missing ${need_apt[*]} (install them with apt-get as root); the benchmark smoke test will fail" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "== installing peernet and its test dependencies into $VENV"
pip_install() {
    local log
    log=$(mktemp)
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
        grep -v '^WARNING: Location' "$log" >&2
        rm -f "$log"
        echo "== error: pip install $* failed" >&2
        exit 1
    fi
    rm -f "$log"
}
pip_install --upgrade pip setuptools wheel
# compat mode puts the source tree on sys.path, so twisted/plugins/ is found.
pip_install -e '.[test]' --config-settings editable_mode=compat
# Regenerate Twisted's plugin cache so `twist bootstrap` is found at once.
"$VENV/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

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
