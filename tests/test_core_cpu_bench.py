"""benchmarks/core_cpu.py (in-process CPU per relayed PEER_UPDATE) runs and
checks its own workload: every frame applied and relayed to at least FANOUT
links (how many more is the relay policy's business, not this benchmark's)."""

import re
import subprocess
import sys
from pathlib import Path

from peernet import constants

ROOT = Path(__file__).resolve().parent.parent


def test_core_cpu_small_run_relays_every_frame():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "core_cpu.py"), "--messages", "60",
         "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sends = re.search(r"round 1: .* \((\d+) sends\)", out.stdout)
    assert sends is not None, out.stdout
    # 8 ready links, one the frames arrive on: each frame goes to FANOUT to 7 others.
    assert 60 * constants.FANOUT <= int(sends.group(1)) <= 60 * 7, out.stdout
    median = float(out.stdout.split("median ")[1].split(" us")[0])
    assert 0 < median < 100_000
