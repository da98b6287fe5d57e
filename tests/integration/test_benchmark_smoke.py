"""The bootstrap benchmark runs end to end (quick mode) and measures real rates."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(not (shutil.which("wrk") and shutil.which("opentracker")),
                    reason="needs Debian wrk and opentracker (scripts/test.sh installs them)")
def test_bootstrap_load_quick(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bootstrap_load.py"), "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "bootstrap_load.json").read_text())
    rates = {}
    for row in result["results"]:
        rates.setdefault(row["endpoint"].split(" (")[0], []).append(row["rps"])
    for name in ("opentracker GET /announce", "peernet GET discover", "peernet POST register"):
        assert name in rates and min(rates[name]) > 100, (name, rates)
    assert (tmp_path / "bootstrap_load.md").exists()
