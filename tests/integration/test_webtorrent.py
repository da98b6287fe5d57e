"""Interop: a stock WebTorrent client (the npm `webtorrent` package run by Node)
downloads a broadcasting peer's repo from the magnet link that the peer's
control API gives out (``x.pe=`` names the seeder), and every file's SHA-256
matches the original.

Node.js and the npm package are installed by scripts/test.sh (see
scripts/install.sh and tests/webtorrent/); when they are missing this test
fails rather than skips.
"""

import hashlib
import os
import re
import shutil
import subprocess
import time

import pytest

from peernet.devnet import DevNet

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_DIR = os.path.join(os.path.dirname(HERE), "webtorrent")
SCRIPT = os.path.join(CLIENT_DIR, "download.mjs")
MiB = 1024 * 1024
DOWNLOAD_TIMEOUT = 120  # seconds, inside download.mjs; the subprocess gets a margin


def make_repo(path):
    """A repo of pseudo-random files in nested folders, odd sizes included."""
    files = {
        "intro.bin": 7 * MiB + 12345,
        "season1/episode1.bin": 9 * MiB,
        "season1/episode2.bin": 5 * MiB + 1,
        "season1/extras/notes.txt": 4321,
        "season2/deep/er/still/episode3.bin": 3 * MiB + 777,
        "empty-ish/one-byte.bin": 1,
    }
    digests = {}
    for rel, size in files.items():
        full = os.path.join(path, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        h = hashlib.sha256()
        with open(full, "wb") as f:
            counter = 0
            left = size
            while left:
                block = hashlib.sha512(f"{rel}/{counter}".encode()).digest() * 2048  # 128 KiB
                block = block[:left]
                f.write(block)
                h.update(block)
                left -= len(block)
                counter += 1
        digests[rel] = h.hexdigest()
    return digests


def sha256_tree(root):
    """{relative path: sha256} for the files under root, BEP 47 pad files left out."""
    got = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel.startswith(".pad/") or "/.pad/" in rel:
                continue
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(MiB), b""):
                    h.update(chunk)
            got[rel] = h.hexdigest()
    return got


def require_webtorrent_client():
    """Fail (not skip) with a clear message when Node or the npm install is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: run the tests with scripts/test.sh, which installs "
                    "Node.js (Debian packages nodejs, npm) and the WebTorrent client")
    if not os.path.isdir(os.path.join(CLIENT_DIR, "node_modules", "webtorrent")):
        pytest.fail("the npm package webtorrent is not installed in tests/webtorrent: run the "
                    "tests with scripts/test.sh, or `npm ci --ignore-scripts` in tests/webtorrent")
    probe = subprocess.run(
        [node, "--input-type=module", "-e",
         "import WebTorrent from 'webtorrent'; console.log(WebTorrent.VERSION)"],
        cwd=CLIENT_DIR, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.fail(f"`import 'webtorrent'` fails in tests/webtorrent:\n{probe.stderr[-3000:]}")
    return node, probe.stdout.strip()


def test_stock_webtorrent_downloads_a_repo_from_its_magnet_link(tmp_path):
    node, version = require_webtorrent_client()
    films = tmp_path / "films"
    expected = make_repo(str(films))
    size = sum(os.path.getsize(films / rel) for rel in expected)

    with DevNet(str(tmp_path / "net"), broadcasting=0, silent=0, bootstrap=False) as net:
        peer = net.add_peer("peer1", broadcast=True, host="127.0.0.10",
                            extra=["--share", f"films={films}"])
        entry = {}

        def shared():
            for repo in peer.api("GET", "repos")["shared"]:
                if repo["name"] == "films" and repo.get("magnet"):
                    entry.update(repo)
                    return True
            return False

        assert net.wait(shared, 60), f"films never listed as shared:\n{peer.log()[-3000:]}"
        magnet = entry["magnet"]
        assert re.match(r"magnet:\?xt=urn:btih:[0-9a-f]{40}&", magnet), magnet
        assert "xt=urn:btmh:1220" in magnet, magnet  # hybrid v1+v2 (WebTorrent speaks v1)
        assert "dn=films" in magnet, magnet
        assert re.search(r"x\.pe=127\.0\.0\.10:\d+", magnet), magnet

        out = tmp_path / "webtorrent"
        start = time.monotonic()
        try:
            run = subprocess.run(
                [node, SCRIPT, magnet, str(out), "--timeout", str(DOWNLOAD_TIMEOUT)],
                cwd=CLIENT_DIR, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                timeout=DOWNLOAD_TIMEOUT + 30)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"download.mjs did not exit in time:\n{exc.stdout}\n{exc.stderr}")
        seconds = time.monotonic() - start
        report = (f"exit {run.returncode}\n--- stdout\n{run.stdout[-4000:]}\n"
                  f"--- stderr\n{run.stderr[-4000:]}\n--- peer log\n{peer.log()[-3000:]}")
        assert run.returncode == 0, report
        assert "done:" in run.stdout, report
        print(f"WebTorrent {version}: {size} bytes in {seconds:.2f} s "
              f"({size / 1e6 / seconds:.1f} MB/s including start-up)")
        print(run.stdout[-2000:])

    got = sha256_tree(str(out / "films"))
    assert got == expected, report
