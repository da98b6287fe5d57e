"""Two real `twist bootstrap --db postgresql://...` processes sharing one real
PostgreSQL cluster (started by the test, stopped by pid): what one accepts the
other serves, replay protection and email binding hold across them, bad URLs
are one-line errors, and a database outage gives JSON 503s, not tracebacks,
until the server is back."""

import json
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import TWIST, registration, unregistration, wait_for
from pg_fixture import PostgresCluster, postgres_cluster  # noqa: F401  (fixture)
from peernet.bootstrap import pgstore

pytestmark = pytest.mark.slow

REGISTER = "/api/bootstrap/register"
UNREGISTER = "/api/bootstrap/unregister"
DISCOVER = "/api/bootstrap/discover?limit=100"
HEALTH = "/api/bootstrap/health"
#: The design bound is one NOTIFY plus one SELECT (milliseconds); slack for CI.
PROPAGATION_LIMIT = 5.0


def discovered(server, source=None):
    status, _, reply = server.request("GET", DISCOVER, source=source)
    assert status == 200, reply
    return {p["record"]["peer_id"] for p in reply["peers"]}


def timed(predicate, what, timeout=PROPAGATION_LIMIT):
    start = time.monotonic()
    wait_for(predicate, what, timeout=timeout)
    return time.monotonic() - start


@pytest.fixture
def pair(postgres_cluster, bootstrap_factory):
    url = postgres_cluster.create_database("twist")
    a = bootstrap_factory(db_path=url)
    b = bootstrap_factory(db_path=url)
    return a, b, url


def test_what_one_process_accepts_the_other_serves(pair):
    a, b, _ = pair
    identity, body, sig = registration()
    status, _, reply = a.post_signed(REGISTER, body, sig)
    assert status == 200, reply
    took = timed(lambda: identity.peer_id in discovered(b), "B serves A's registration")
    print(f"register at A -> discover at B: {took * 1000:.0f} ms")
    assert b.health()["peers"] == 1 and b.health()["schema_version"] == 2

    # The same signed request replayed at the other process is refused.
    status, _, reply = b.post_signed(REGISTER, body, sig)
    assert status == 409 and reply["error"]["code"] == "replayed_nonce", reply

    body, sig = unregistration(identity)
    status, _, reply = a.post_signed(UNREGISTER, body, sig)
    assert status == 200 and reply["removed"] is True, reply
    took = timed(lambda: identity.peer_id not in discovered(b), "B drops the peer")
    print(f"unregister at A -> gone at B: {took * 1000:.0f} ms")
    status, _, reply = b.post_signed(UNREGISTER, body, sig)
    assert status == 409 and reply["error"]["code"] == "replayed_nonce", reply


def test_one_email_registered_through_both_at_once_binds_once(pair):
    a, b, _ = pair
    for round_ in range(5):
        email = f"race{round_}@example.org"
        requests = [registration(email=email), registration(email=email)]
        answers = [None, None]

        def post(i, server):
            _, body, sig = requests[i]
            answers[i] = server.post_signed(REGISTER, body, sig)

        threads = [threading.Thread(target=post, args=(i, s)) for i, s in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        statuses = sorted(answer[0] for answer in answers)
        assert statuses == [200, 409], answers
        loser = [answer[2] for answer in answers if answer[0] == 409][0]
        assert loser["error"]["code"] == "email_bound"
    assert a.health()["emails"] == 5 and b.health()["peers"] == 5


def test_discover_callers_are_stored_nowhere(pair):
    a, b, url = pair
    identity, body, sig = registration()
    assert a.post_signed(REGISTER, body, sig)[0] == 200
    wait_for(lambda: identity.peer_id in discovered(b), "B serves A's registration")
    for server in (a, b):
        for _ in range(3):
            discovered(server, source="127.0.0.77")
    dump = []
    with psycopg.connect(url) as conn:
        for (table,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"):
            dump.append(json.dumps(conn.execute(f'SELECT * FROM "{table}"').fetchall(),
                                   default=str))
    a.stop()
    b.stop()
    for blob in dump + [a.log(), b.log()]:
        assert "127.0.0.77" not in blob


@pytest.mark.parametrize("make_url, words", [
    (lambda c: "postgresql://peernet@127.0.0.1:1/x", "Connection refused"),
    (lambda c: c.url("no_such_db"), 'database "no_such_db" does not exist'),
    (lambda c: f"postgresql://peernet@127.0.0.1:{c.port}:5/x", "malformed"),
    (lambda c: "postgresql://peernet@127.0.0.1/x?bogus=1", "malformed"),
])
def test_bad_db_url_is_one_line_and_non_zero(tmp_path, postgres_cluster, make_url, words):
    out = subprocess.run([TWIST, "bootstrap", "--db", make_url(postgres_cluster),
                          "--listen", "tcp:0:interface=127.0.0.1"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("twist bootstrap: error: --db") and words in lines[0], lines
    assert "Traceback" not in out.stdout + out.stderr


def test_database_outage_gives_json_503_and_service_resumes(bootstrap_factory):
    cluster = PostgresCluster()
    try:
        cluster.start()
        # Retries below are many register calls from one address.
        server = bootstrap_factory("--rate-ip", "10000/60",
                                   db_path=cluster.create_database("outage"))
        identity, body, sig = registration()
        assert server.post_signed(REGISTER, body, sig)[0] == 200

        cluster.stop()
        _, body, sig = registration()
        status, headers, reply = server.post_signed(REGISTER, body, sig)
        assert status == 503 and headers["content-type"] == "application/json", reply
        assert reply["error"]["code"] == "database_unavailable"
        status, _, reply = server.request("GET", HEALTH)
        assert status == 503 and reply["error"]["code"] == "database_unavailable"
        # discover keeps answering from memory until its freshness runs out,
        # then refuses rather than serve peers that may have left since.
        def refused():
            status, _, reply = server.request("GET", DISCOVER)
            return status == 503 and reply["error"]["code"] == "database_unavailable"
        wait_for(refused, "discover refuses a stale index",
                 timeout=pgstore.STALE_AFTER_SECONDS + PROPAGATION_LIMIT)

        cluster.start()  # same port and data
        again, body, sig = registration()
        answers = []

        def registered():
            answers.append(server.post_signed(REGISTER, body, sig))
            assert answers[-1][0] in (200, 503), answers[-1]  # never a 500
            return answers[-1][0] == 200

        wait_for(registered, "register works again after the database is back", timeout=30)
        def both_served():
            status, _, reply = server.request("GET", DISCOVER)
            assert status in (200, 503), reply
            return status == 200 and {p["record"]["peer_id"] for p in reply["peers"]} == {
                identity.peer_id, again.peer_id}

        wait_for(both_served, "discover serves both peers again", timeout=30)
        assert server.health()["peers"] == 2
        assert server.proc.poll() is None
        assert "Traceback" not in server.log()
    finally:
        cluster.destroy()
