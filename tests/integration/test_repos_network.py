"""Repos as torrents on a real network: bootstrap + 3 broadcasting peers sharing
repos + a silent peer that finds "who has X" and downloads X from two seeders at
once, verified file by file; a restart resumes a partial download."""

import hashlib
import os
import shutil
import time

import pytest

from conftest import make_repo
from peernet.devnet import DevNet
from peernet.records import verify_signed_record

pytestmark = pytest.mark.slow
MiB = 1024 * 1024


def wait_job(peer, job_id, states, timeout):
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = next(j for j in peer.api("GET", "downloads")["downloads"] if j["id"] == job_id)
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"download {job_id} still {job and job['state']} after {timeout} s")


def test_silent_peer_downloads_from_two_seeders_and_verifies(tmp_path):
    films = tmp_path / "films"
    expected = make_repo(films, "films", [24 * MiB, 3 * MiB, 1234])
    copy = tmp_path / "copy" / "films"
    shutil.copytree(films, copy)  # a second seeder with the same content
    docs = tmp_path / "docs"
    make_repo(docs, "docs", [4096])
    with DevNet(str(tmp_path / "net"), broadcasting=0, silent=0) as net:
        # Seeders capped at 4 MiB/s each, so the download needs both.
        limit = ["--upload-limit", "4096"]
        a = net.add_peer("peer1", broadcast=True, host="127.0.0.10",
                         extra=["--share", f"films={films}"] + limit)
        b = net.add_peer("peer2", broadcast=True, host="127.0.0.11",
                         extra=["--share", f"films={copy}"] + limit)
        c = net.add_peer("peer3", broadcast=True, host="127.0.0.12",
                         extra=["--share", f"docs={docs}"])
        silent = net.add_peer("silent1", broadcast=False, host="127.0.0.77")
        assert net.wait(lambda: sum(
            1 for p in silent.peers() for r in p["repos"] if r["name"] == "films") == 2, 30)

        # "Who has films?" over the network: both seeders answer, records verify.
        found = silent.search(repo="films", network_only=True)
        owners = {verify_signed_record(r)["peer_id"] for r in found}
        assert owners == {a.peer_id(), b.peer_id()}
        [summary] = {tuple(sorted(r.items())) for x in found for r in x["record"]["repos"]}
        summary = dict(summary)
        assert summary["files"] == 3 and summary["size"] == 24 * MiB + 3 * MiB + 1234

        dest = tmp_path / "downloads"
        job = silent.api("POST", "get", {"repo": "films", "dest": str(dest)})
        assert job["seeders"] == 2
        job = wait_job(silent, job["id"], ("done", "failed"), 60)
        assert job["state"] == "done", job
        assert job["sources"] == 2, "the download did not use both seeders"
        got = {f["path"]: f["sha256"] for f in job["files"]}
        assert got == expected
        for rel, digest in expected.items():
            with open(dest / "films" / rel, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest

        # Unsharing sends a PEER_UPDATE: the repo disappears from other tables.
        c.api("POST", "unshare", {"name": "docs"})
        assert net.wait(lambda: not any(
            r["name"] == "docs" for p in silent.peers() for r in p["repos"]), 10) is not None
        # Bad input to the control API: clear errors, nothing changes.
        for body, code in [({"name": "films", "path": str(films)}, "repo_exists"),
                           ({"name": "x", "path": str(tmp_path / "missing")}, "repo_missing")]:
            with pytest.raises(RuntimeError) as e:
                a.api("POST", "share", body)
            assert code in str(e.value)
        assert [r["name"] for r in a.api("GET", "repos")["shared"]] == ["films"]
        with pytest.raises(RuntimeError, match="no_seeders"):
            silent.api("POST", "get", {"repo": "nobody-has-this"})

        # No trace of the silent downloader in the seeders' logs or state
        # (stopped first, so resume data and snapshots are on disk).
        a.stop()
        b.stop()
        assert any(n.endswith(".resume") for n in os.listdir(os.path.join(a.state_dir, "torrents")))
        for seeder in (a, b):
            blobs = [seeder.log().encode()]
            for root, _, names in os.walk(seeder.state_dir):
                for name in names:
                    with open(os.path.join(root, name), "rb") as f:
                        blobs.append(f.read())
            for blob in blobs:
                assert b"127.0.0.77" not in blob and bytes([127, 0, 0, 77]) not in blob


def test_restart_resumes_a_partial_download(tmp_path):
    data = tmp_path / "big"
    expected = make_repo(data, "big", [40 * MiB])
    with DevNet(str(tmp_path / "net"), broadcasting=0, silent=0) as net:
        seeder = net.add_peer("peer1", broadcast=True, host="127.0.0.10",
                              extra=["--share", f"big={data}", "--upload-limit", "8192"])
        silent = net.add_peer("silent1", broadcast=False, host="127.0.0.77")
        assert net.wait(lambda: any(p["repos"] for p in silent.peers()), 30)
        job = silent.api("POST", "get", {"repo": "big"})
        assert net.wait(lambda: wait_job(silent, job["id"], ("downloading", "done"), 5)
                        ["progress"] >= 0.25, 30) is not None
        silent.stop()  # clean stop: resume data written
        silent.start()
        assert net.wait(lambda: any(p["repos"] for p in silent.peers()), 30)
        job = silent.api("POST", "get", {"repo": "big"})
        # It continues from where it stopped instead of starting over: the
        # first progress it reports is already past what was done before.
        first = None
        deadline = time.monotonic() + 15
        while first is None and time.monotonic() < deadline:
            seen = next(j for j in silent.api("GET", "downloads")["downloads"]
                        if j["id"] == job["id"])
            if seen["progress"] > 0 or seen["state"] == "done":
                first = seen["progress"]
            time.sleep(0.05)
        assert first is not None and first >= 0.2, first
        job = wait_job(silent, job["id"], ("done", "failed"), 60)
        assert job["state"] == "done", job
        assert {f["path"]: f["sha256"] for f in job["files"]} == expected
        assert seeder.running()
