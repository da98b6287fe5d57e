"""A bounded run of the coverage-guided fuzz target for the gossip decoder
(fuzz/fuzz_codec.py, atheris): 20 000 inputs from a seed corpus of one valid
frame per type.  libFuzzer exits non-zero and writes a crash-* file if any
input makes the decoder raise anything but CodecError, or accept a frame that
does not survive a relay unchanged."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(ROOT, "fuzz", "fuzz_codec.py")
RUNS = 20_000


def test_bounded_atheris_run_finds_nothing(tmp_path):
    seeds = tmp_path / "seeds"
    subprocess.run([sys.executable, TARGET, "--write-seeds", str(seeds)], check=True,
                   timeout=60)
    assert len(os.listdir(seeds)) == 6
    proc = subprocess.run(
        [sys.executable, TARGET, f"-runs={RUNS}", "-seed=1", "-max_len=70000",
         f"-artifact_prefix={tmp_path}/", str(seeds)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"Done {RUNS} runs" in out, out[-2000:]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("crash-")]
