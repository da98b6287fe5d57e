"""Acknowledged registrations survive kill -9 of the bootstrap server."""

import sqlite3
import threading
import time

import pytest

from conftest import registration

pytestmark = pytest.mark.slow


def test_every_acknowledged_registration_survives_kill_9(bootstrap_factory, tmp_path):
    server = bootstrap_factory("--rate-ip", "1000000/1")
    # Sign everything first: the load threads then only send.
    requests = [registration()[0:3] for _ in range(1000)]
    acked, lock, stop = [], threading.Lock(), threading.Event()

    def sender(chunk):
        for identity, body, sig in chunk:
            if stop.is_set():
                return
            try:
                status, _, _ = server.post_signed("/api/bootstrap/register", body, sig)
            except OSError:
                return  # the server is gone
            if status == 200:
                with lock:
                    acked.append(identity.peer_id)

    threads = [threading.Thread(target=sender, args=(requests[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill9()  # with requests still in flight
    stop.set()
    for t in threads:
        t.join(15)
    assert 150 <= len(acked) < 1000, "the kill did not land while requests were in flight"

    restarted = bootstrap_factory(workdir=server.workdir, db_path=server.db_path)
    status, _, health = restarted.request("GET", "/api/bootstrap/health")
    assert status == 200
    conn = sqlite3.connect(server.db_path)
    stored = {row[0] for row in conn.execute("SELECT peer_id FROM peers")}
    conn.close()
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged registrations were lost"
    assert health["peers"] == len(stored)
