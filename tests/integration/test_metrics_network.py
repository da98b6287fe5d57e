"""--metrics on real processes: a bootstrap server, two broadcasting peers (one
sharing a repo) and a silent peer that downloads it, each scraped over HTTP
and parsed with prometheus_client's parser; then a broadcasting peer is
stopped with SIGTERM and the bootstrap's figures show it unregistered.

Also: `twist --log-format=json` prints one JSON event per line with the
structured fields (the port of a listening line is a field, not only text).
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from peernet.devnet import BootstrapNode, DevNet, PeerNode, stop_process, twist_command
from pg_fixture import PostgresCluster

pytestmark = pytest.mark.slow
METRICS = ["--metrics", "tcp:0:interface=127.0.0.1"]


def scrape(node):
    port = int(node.wait_for_log(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as r:
        assert r.status == 200
        text = r.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found, text


def get(found, name, **labels):
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_metric(node, predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        found, text = scrape(node)
        if predicate(found):
            return found, text
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.name}: {what} not seen in {timeout} s")
        time.sleep(0.3)


def test_metrics_move_on_a_real_network(tmp_path):
    repo = tmp_path / "data"
    repo.mkdir()
    size = 3 * 1024 * 1024
    (repo / "blob.bin").write_bytes(os.urandom(size))
    boot = BootstrapNode(str(tmp_path / "boot"), extra=METRICS)
    try:
        boot.start()
        with DevNet(str(tmp_path / "net"), broadcasting=0, silent=0, bootstrap=False) as net:
            urls = [boot.url]
            seeder = net.add_peer("peer1", broadcast=True, host="127.0.0.40", bootstraps=urls,
                                  extra=METRICS + ["--share", f"data={repo}"])
            other = net.add_peer("peer2", broadcast=True, host="127.0.0.41", bootstraps=urls,
                                 extra=METRICS)
            silent = net.add_peer("silent1", broadcast=False, host="127.0.0.87",
                                  bootstraps=urls, extra=METRICS)
            silent_id = silent.peer_id()

            found, _ = wait_metric(boot, lambda f: get(
                f, "peernet_bootstrap_registrations", kind="all") == 2, "2 registrations")
            assert get(found, "peernet_bootstrap_requests_total", endpoint="register", code="200") >= 2
            assert get(found, "peernet_bootstrap_requests_total", endpoint="discover", code="200") >= 1
            assert get(found, "peernet_bootstrap_request_duration_seconds_count",
                       endpoint="register") >= 2
            assert get(found, "peernet_bootstrap_store_up") == 1

            assert net.wait(lambda: any(r["name"] == "data" for p in silent.peers()
                                        for r in p["repos"]), 30) is not None
            job = silent.api("POST", "get", {"repo": "data", "dest": str(tmp_path / "dl")})
            deadline = time.monotonic() + 60
            while True:
                state = next(j for j in silent.api("GET", "downloads")["downloads"]
                             if j["id"] == job["id"])["state"]
                if state in ("done", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert state == "done"

            found, silent_text = wait_metric(silent, lambda f: get(
                f, "peernet_torrent_payload_bytes_total", direction="down") >= size,
                "the downloaded bytes")
            assert get(found, "peernet_broadcasting") == 0
            assert get(found, "peernet_gossip_links", direction="outbound",
                       remote="broadcasting") >= 1
            assert get(found, "peernet_gossip_links", direction="inbound", remote="silent") == 0
            assert get(found, "peernet_table_records", state="live") >= 2
            assert get(found, "peernet_gossip_messages_total", type="HELLO", direction="out") >= 1
            assert get(found, "peernet_gossip_bytes_total", type="HELLO", direction="in") > 0
            assert get(found, "peernet_torrents", kind="download") == 1
            assert get(found, "peernet_peer_bootstrap_servers", state="unregistered") == 1
            assert get(found, "peernet_peer_bootstrap_servers", state="registered") == 0

            found, seeder_text = wait_metric(seeder, lambda f: get(
                f, "peernet_torrent_payload_bytes_total", direction="up") >= size,
                "the uploaded bytes")
            assert get(found, "peernet_broadcasting") == 1
            assert get(found, "peernet_torrents", kind="seed") == 1
            assert get(found, "peernet_peer_bootstrap_servers", state="registered") == 1
            assert get(found, "peernet_peer_bootstrap_servers", state="failing") == 0
            inbound = sum(get(found, "peernet_gossip_links", direction="inbound", remote=r)
                          for r in ("broadcasting", "silent"))
            assert inbound >= 1
            assert sum(get(found, "peernet_gossip_messages_total", type=t, direction="in")
                       for t in ("HELLO", "HEARTBEAT", "PEER_ANNOUNCEMENT", "PEER_LIST_RESPONSE",
                                 "PEER_REQUEST", "PEER_UPDATE")) >= 1

            # Privacy: the silent peer shows up nowhere but in counts.
            _, other_text = scrape(other)
            _, boot_text = scrape(boot)
            for text in (seeder_text, other_text, boot_text):
                assert silent_id not in text and "127.0.0.87" not in text

            # SIGTERM to a broadcasting peer: it unregisters before exiting.
            other.stop(signal.SIGTERM)
            assert other.proc.returncode in (0, -signal.SIGTERM)   # twist re-raises it
            assert "unregistered from" in other.log()
            found, _ = wait_metric(boot, lambda f: get(
                f, "peernet_bootstrap_registrations", kind="all") == 1, "the unregistration")
            assert get(found, "peernet_bootstrap_requests_total", endpoint="unregister",
                       code="200") == 1
            assert boot.health()["peers"] == 1
    finally:
        boot.stop()


@pytest.fixture
def postgres_db():
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster.create_database()
    finally:
        cluster.destroy()


def test_bootstrap_metrics_with_a_postgresql_store(tmp_path, postgres_db):
    """The registration figures come from the store's own counts, so they work
    for the shared PostgreSQL store as for SQLite."""
    boot = BootstrapNode(str(tmp_path / "boot"), db_path=postgres_db, extra=METRICS)
    peer = None
    try:
        boot.start()
        peer = PeerNode(str(tmp_path / "net"), "alice", broadcast=True, host="127.0.0.44",
                        bootstraps=[boot.url]).start()
        found, _ = wait_metric(boot, lambda f: get(
            f, "peernet_bootstrap_registrations", kind="all") == 1, "the registration")
        assert get(found, "peernet_bootstrap_store_up") == 1
        assert get(found, "peernet_bootstrap_requests_total", endpoint="register", code="200") >= 1
        peer.stop()
        wait_metric(boot, lambda f: get(f, "peernet_bootstrap_registrations", kind="all") == 0,
                    "the unregistration")
    finally:
        if peer is not None:
            peer.stop()
        boot.stop()


def json_events(path):
    events = []
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            line = line.strip(b"\x1e").strip()   # twist prefixes records with RS
            if line:
                events.append(json.loads(line))
    return events


def run_json(tmp_path, name, args, wanted, timeout=30, while_running=None):
    log = tmp_path / f"{name}.json"
    proc = subprocess.Popen(twist_command() + ["--log-format=json", "--log-file", str(log)] + args,
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists():
                events = json_events(log)
                if all(any(w(e) for e in events) for w in wanted):
                    if while_running is not None:
                        while_running(events)
                    return events
            assert proc.poll() is None, f"{name} exited"
            time.sleep(0.1)
        raise AssertionError(f"{name}: expected events not logged:\n{log.read_text()[-2000:]}")
    finally:
        stop_process(proc)


def test_json_logs_carry_structured_fields(tmp_path):
    def listening(e):
        return e.get("log_format") == "listening on {address}" and isinstance(e.get("port"), int)

    def serving(events):
        # It is serving what it says, on the port the field gives.
        api = next(e for e in events if listening(e))
        with urllib.request.urlopen(f"http://127.0.0.1:{api['port']}/api/bootstrap/health",
                                    timeout=10) as r:
            assert json.load(r)["status"] == "ok"

    events = run_json(tmp_path, "bootstrap", [
        "bootstrap", "--listen", "tcp:0:interface=127.0.0.1", "--db", str(tmp_path / "b.sqlite"),
        "--metrics", "tcp:0:interface=127.0.0.1"],
        [listening, lambda e: "metrics on" in e.get("log_format", "")], while_running=serving)
    api = next(e for e in events if listening(e))
    assert api["port"] > 0 and api["address"] == f"127.0.0.1:{api['port']}"
    assert api["log_namespace"] == "peernet.cli" and api["log_level"]["name"] == "info"
    metrics = next(e for e in events if "metrics on" in e.get("log_format", ""))
    assert isinstance(metrics["port"], int) and metrics["port"] != api["port"]

    events = run_json(tmp_path, "peer", [
        "peer", "--state-dir", str(tmp_path / "state"), "--broadcast",
        "--listen", "tcp:0:interface=127.0.0.42"],
        [lambda e: e.get("log_format") == "gossip listening on port {port}",
         lambda e: e.get("log_format") == "control API on http://{host}:{port}"])
    gossip = next(e for e in events if e.get("log_format") == "gossip listening on port {port}")
    assert isinstance(gossip["port"], int) and gossip["port"] > 0
    control = next(e for e in events if e.get("log_format") == "control API on http://{host}:{port}")
    assert control["host"] == "127.0.0.1" and isinstance(control["port"], int)
    with open(tmp_path / "state" / "control.url") as f:
        assert f.read().strip() == f"http://127.0.0.1:{control['port']}"
    assert not re.search(r"Traceback", (tmp_path / "peer.json").read_text())


def test_bad_metrics_endpoint_is_one_line(tmp_path):
    for command in (["bootstrap", "--db", str(tmp_path / "b.sqlite")],
                    ["peer", "--state-dir", str(tmp_path / "s")]):
        out = subprocess.run(twist_command() + command + ["--metrics", "foo:1"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert out.stderr.strip() == (f"twist {command[0]}: error: bad endpoint 'foo:1': "
                                      "Unknown endpoint type: 'foo'")
    # A port in use: one line, exit status 1, at once (no thread left behind
    # to keep a dying process alive).
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (["bootstrap", "--listen", "tcp:0:interface=127.0.0.1",
                         "--db", str(tmp_path / "b.sqlite")],
                        ["peer", "--state-dir", str(tmp_path / "s"), "--broadcast",
                         "--listen", "tcp:0:interface=127.0.0.45"]):
            out = subprocess.run(
                twist_command() + command + ["--metrics", f"tcp:{port}:interface=127.0.0.1"],
                cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert out.returncode == 1
            assert (f"twist {command[0]}: error: cannot listen on tcp:{port}:interface=127.0.0.1:"
                    in out.stderr)
            assert "Traceback" not in out.stderr + out.stdout
