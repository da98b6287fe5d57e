"""The README's first command works: the demo runs a real server end to end."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_and_shows_registrations_discover_and_refusals(tmp_path):
    state = tmp_path / "demo-state"
    for run in (1, 2):  # a second run reuses the identities and the database
        out = subprocess.run(
            [sys.executable, "-m", "peernet.demo", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"},
        )
        assert out.returncode == 0, out.stdout + out.stderr
        text = out.stdout
        assert "Traceback" not in text + out.stderr
        assert text.count("verified") == 3, text
        assert text.count("refused") >= 3 and "accepted?!" not in text
        assert "discover now returns alice, bob" in text
        assert "2 live peers" in text
    assert (state / "bootstrap.sqlite").exists()
    assert oct((state / "peer-alice" / "identity" / "node.key").stat().st_mode & 0o777) == "0o600"
