#!/usr/bin/env bash
# Install what the scale report needs on a fresh Debian machine, then regenerate
# it: the real-process runs (convergence against Serf at 30 and 100 peers, memory
# and CPU costs), every simulation, docs/benchmarks.md and its plots (~20 min).
# Usage: ./scripts/bench.sh [report.py arguments]   (e.g. --max-n 10000)
set -euo pipefail
cd "$(dirname "$0")/.."

PEERNET_EXTRAS="[bench]"   # matplotlib and numpy (plots), py-spy (where the CPU goes)
PEERNET_APT="serf"         # the convergence benchmark's reference
. scripts/install.sh

echo "== regenerating the report (benchmarks/report.py --real --run)"
exec "$VENV/bin/python" benchmarks/report.py --real --run "$@"
