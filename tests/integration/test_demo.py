"""The README's first command works: the demo runs a real network end to end."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_a_network_and_the_silent_peer_finds_the_repo(tmp_path):
    state = tmp_path / "demo-state"
    for run in (1, 2):  # a second run reuses identities, snapshots and the database
        out = subprocess.run(
            [sys.executable, "-m", "peernet.demo", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "160"},
        )
        text = out.stdout + out.stderr
        assert out.returncode == 0, text
        assert "Traceback" not in text
        assert "every peer holds it" in text
        assert "verified" in text and "films" in text
        assert "downloads 'films' over BitTorrent: done" in text
        # The checksums printed are those of the files the peer shares.
        import hashlib

        for rel in ("README.txt", "clips/intro.bin", "clips/outro.bin"):
            data = (state / "shared" / "films" / rel).read_bytes()
            assert hashlib.sha256(data).hexdigest() in text
        assert "never the silent peer" in text and "bootstrap now lists 0 peers" in text
        assert "databases: none" in text
    assert oct((state / "peer1" / "identity" / "node.key").stat().st_mode & 0o777) == "0o600"
    assert (state / "peer1" / "peers.snapshot").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left processes running"
