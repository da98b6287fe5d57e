# Sourced by scripts/test.sh and scripts/demo.sh (not run on its own).
# Creates the venv and installs peernet into it, editable in "compat" mode so
# that this tree's twisted/plugins/ dropin is found by `twist`.
#   PEERNET_EXTRAS   pip extras to install, e.g. "[test]"
#   PEERNET_APT      Debian packages the caller needs (installed when missing)
#   PEERNET_NPM      folders (with a package.json) whose npm packages the caller
#                    needs; Node.js and npm are installed first when missing
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

missing_apt=()
for pkg in ${PEERNET_APT:-}; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing_apt+=("$pkg")
done
# Node.js and npm by command, not by Debian package: a machine may have them
# from elsewhere (NodeSource's nodejs bundles npm and conflicts with Debian's).
if [ -n "${PEERNET_NPM:-}" ]; then
    command -v node >/dev/null 2>&1 || missing_apt+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing_apt+=(npm)
fi
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

# npm packages, from the npm registry only: `npm ci` from the committed
# package-lock.json, with install scripts off (one of WebTorrent's dependencies
# has a preinstall script that aborts npm; the native modules it needs ship
# prebuilt in their packages).  Skipped when node_modules matches a stamp of
# the package files.
for dir in ${PEERNET_NPM:-}; do
    stamp="$dir/node_modules/.peernet-install-stamp"
    want=$(cd "$dir" && find . -path ./node_modules -prune -o -type f \
               \( -name 'package*.json' -o -path './stub-*' \) -print | LC_ALL=C sort |
               xargs sha256sum | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        continue
    fi
    echo "== installing npm packages in $dir (node $(node --version), npm $(npm --version))"
    npm_cmd=(npm install)
    [ -f "$dir/package-lock.json" ] && npm_cmd=(npm ci)
    log=$(mktemp)
    if ! (cd "$dir" && "${npm_cmd[@]}" --ignore-scripts --no-audit --no-fund) >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "== error: ${npm_cmd[*]} failed in $dir" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" >"$stamp"
done

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
