# Sourced by scripts/test.sh and scripts/demo.sh (not run on its own).
# Creates the venv and installs peernet into it, editable in "compat" mode so
# that this tree's twisted/plugins/ dropin is found by `twist`.
#   PEERNET_EXTRAS   pip extras to install, e.g. "[test]"
#   PEERNET_APT      Debian packages the caller needs (installed when missing)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

missing_apt=()
for pkg in ${PEERNET_APT:-}; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing_apt+=("$pkg")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Debian packages: ${missing_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
    else
        echo "== error: missing Debian packages ${missing_apt[*]}; install them with: sudo apt-get install ${missing_apt[*]}" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

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
echo "== installing peernet${PEERNET_EXTRAS:-} into $VENV"
pip_install --upgrade pip setuptools wheel
pip_install -e ".${PEERNET_EXTRAS:-}" --config-settings editable_mode=compat
# Regenerate Twisted's plugin cache so `twist bootstrap` is found at once.
"$VENV/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
