#!/usr/bin/env bash
# Run the peernet demo on this machine (installs what it needs first).
# Usage: ./scripts/demo.sh [--state-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/install.sh >/dev/null
exec "$VENV/bin/python" -m peernet.demo "$@"
