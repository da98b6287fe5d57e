"""benchmarks/core_cpu.py (in-process CPU per relayed PEER_UPDATE) runs and
checks its own workload: every frame applied and relayed to FANOUT links."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_cpu_small_run_relays_every_frame():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "core_cpu.py"), "--messages", "60",
         "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "round 1:" in out.stdout and "(180 sends)" in out.stdout
    median = float(out.stdout.split("median ")[1].split(" us")[0])
    assert 0 < median < 100_000
