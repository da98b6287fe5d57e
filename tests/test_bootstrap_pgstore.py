"""PostgresStore on a real PostgreSQL cluster: the schema (fresh equals
upgraded), and several stores sharing one database as several bootstrap
processes do (each store has its own connections and change listener):
index propagation, replay protection and email binding across them, and an
outage of the server.  The cases every store must pass are in
test_bootstrap_store.py (run against SQLite and PostgreSQL)."""

import json
import os
import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import DeferredList, ensureDeferred

from peernet.bootstrap import pgstore
from peernet.bootstrap.pgstore import PostgresStore
from peernet.bootstrap.store import Registered, Registration
from peernet.errors import ConfigError, Conflict, ReplayedNonce, ServiceUnavailable
from pg_fixture import PostgresCluster, postgres_cluster, postgres_url  # noqa: F401



#: How long a change may take to reach another store here; the design bound
#: is one NOTIFY plus one SELECT (milliseconds), the slack is for a loaded CI.
PROPAGATION_LIMIT = 5.0


def reg(peer_id, *, version=1, email=None, nonce=None, bootstrap=True):
    return Registration(
        peer_id=peer_id, record_json='{"peer_id":"%s","version":%d}' % (peer_id, version),
        signature="c2ln",
        version=version, is_bootstrap=bootstrap, email=email, email_code=None,
        nonce=nonce or os.urandom(16).hex(),
    )


def peer_ids(store):
    return sorted(json.loads(x)["record"]["peer_id"]
                  for x in store.discover(100, reactor.seconds(), bootstrap_only=False))


async def until(predicate, what, timeout=PROPAGATION_LIMIT):
    """Seconds until predicate() held (polled on the reactor every 5 ms)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await task.deferLater(reactor, 0.005, lambda: None)
    return time.monotonic() - start


# -- schema ---------------------------------------------------------------------


def schema_of(url):
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
            " column_default FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position").fetchall()
        indexes = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' ORDER BY indexname").fetchall()
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            " ORDER BY conname").fetchall()
        version = conn.execute("SELECT version FROM version").fetchone()[0]
    return columns, indexes, constraints, version


def connection(url):
    return pgstore.connect(url)


def test_fresh_database_equals_upgraded_database(postgres_cluster):
    fresh, old = postgres_cluster.create_database(), postgres_cluster.create_database()
    conn = connection(fresh)
    assert pgstore.create_or_upgrade(conn) == 0
    conn.close()
    # A database made by the first release, with data in it, then upgraded.
    conn = connection(old)
    assert pgstore.create_or_upgrade(conn, target=1) == 0
    conn.execute("INSERT INTO emails VALUES ('a@example.org', 'p', 0, 1.0)")
    assert pgstore.database_version(conn) == 1
    assert pgstore.create_or_upgrade(conn) == 1
    assert pgstore.create_or_upgrade(conn) == 2  # idempotent
    assert conn.execute("SELECT email FROM emails").fetchall() == [("a@example.org",)]
    conn.close()
    fresh_schema = schema_of(fresh)
    assert fresh_schema == schema_of(old)
    assert fresh_schema[3] == 2
    tables = {row[0] for row in fresh_schema[0]}
    assert tables == {"version", "peers", "bootstrap_nodes", "emails", "nonces", "email_codes"}
    # Times keep sub-second precision and versions reach 2**53 (REAL and
    # INTEGER would be 4 bytes in PostgreSQL).
    types = {(t, c): d for t, c, _, d, _, _ in fresh_schema[0]}
    assert types[("peers", "expires_at")] == "double precision"
    assert types[("peers", "version")] == "bigint"


def test_newer_or_foreign_database_is_refused(postgres_cluster):
    url = postgres_cluster.create_database()
    conn = connection(url)
    pgstore.create_or_upgrade(conn)
    conn.execute("UPDATE version SET version = 99")
    with pytest.raises(ConfigError, match="newer"):
        pgstore.create_or_upgrade(conn)
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        pgstore.prepare(url)
    other = postgres_cluster.create_database()
    conn = connection(other)
    conn.execute("CREATE TABLE something (x integer)")
    conn.close()
    with pytest.raises(ConfigError, match="not a peernet bootstrap database"):
        pgstore.prepare(other)
    # Another schema of the same database is fine (search_path in the URL).
    conn = connection(other)
    conn.execute("CREATE SCHEMA peernet")
    conn.close()
    assert pgstore.prepare(other + "?options=-csearch_path%3Dpeernet") == 0


def test_processes_starting_together_create_the_schema_once(postgres_cluster):
    import threading

    url = postgres_cluster.create_database()
    results, errors = [], []

    def prepare():
        try:
            results.append(pgstore.prepare(url))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(results) == [0, 2, 2, 2]


@pytest.mark.parametrize("url, message", [
    ("postgresql://peernet@127.0.0.1:1/x", "Connection refused"),
    ("postgresql://peernet@127.0.0.1:abc/x", "bad port"),
    ("postgresql://h/db?nonsense=1", "invalid URI query parameter"),
    ("postgresql://[::1/db", "malformed"),
])
def test_bad_urls_are_one_line_errors(url, message):
    with pytest.raises(ConfigError, match=message) as info:
        pgstore.prepare(url)
    assert "\n" not in str(info.value)


def test_wrong_database_and_password_are_named_without_the_password(postgres_cluster):
    with pytest.raises(ConfigError, match='database "nope" does not exist'):
        pgstore.prepare(postgres_cluster.url("nope"))
    url = f"postgresql://ghost:s3cret@127.0.0.1:{postgres_cluster.port}/postgres"
    with pytest.raises(ConfigError) as info:
        pgstore.prepare(url)
    assert "s3cret" not in str(info.value) and 'role "ghost"' in str(info.value)


# -- several stores on one database ----------------------------------------------


@pytest.fixture
def pair(postgres_url):
    """Two opened stores on one database: two bootstrap processes' stores."""
    stores = []

    async def make():
        for _ in range(2):
            s = PostgresStore(reactor, postgres_url, ttl=3600)
            stores.append(s)
            await s.open()
        return stores

    yield pytest_twisted.blockon(ensureDeferred(make()))
    for s in stores:
        pytest_twisted.blockon(s.close())


@pytest_twisted.ensureDeferred
async def test_registration_at_one_is_discovered_at_the_other(pair):
    a, b = pair
    now = reactor.seconds()
    pid = "a" * 64
    assert isinstance(await a.register(reg(pid), now), Registered)
    assert peer_ids(a) == [pid]  # at once where it was made
    took = await until(lambda: peer_ids(b) == [pid], "B sees A's registration")
    print(f"register at A -> discover at B: {took * 1000:.1f} ms")
    await a.unregister(pid, os.urandom(16).hex(), False, now)
    took = await until(lambda: peer_ids(b) == [], "B drops A's unregistered peer")
    print(f"unregister at A -> gone at B: {took * 1000:.1f} ms")
    # A newer version registered at B replaces the record at A too.
    await b.register(reg(pid, version=5), now)
    await until(lambda: peer_ids(a) == [pid], "A sees B's registration")
    with pytest.raises(Conflict, match="older"):
        await a.register(reg(pid, version=4), now)


@pytest_twisted.ensureDeferred
async def test_federation_list_reaches_the_other(pair):
    a, b = pair
    await a.set_bootstrap_nodes(["https://other.example"], "config", reactor.seconds())
    await until(lambda: b.bootstrap_nodes() == ["https://other.example"],
                "B learns A's bootstrap server list")


@pytest_twisted.ensureDeferred
async def test_nonce_used_at_one_is_refused_at_the_other(pair):
    a, b = pair
    now = reactor.seconds()
    nonce = "n" * 32
    await a.register(reg("a" * 64, nonce=nonce), now)
    with pytest.raises(ReplayedNonce):
        await b.register(reg("a" * 64, nonce=nonce), now)
    with pytest.raises(ReplayedNonce):
        await b.unregister("a" * 64, nonce, False, now)
    # The same nonce sent to both at the same moment: exactly one accepts it.
    twin = "t" * 32
    results = await DeferredList(
        [a.register(reg("b" * 64, nonce=twin), now), b.register(reg("b" * 64, nonce=twin), now)],
        consumeErrors=True)
    outcomes = sorted(ok for ok, _ in results)
    assert outcomes == [False, True]
    assert [r.value for ok, r in results if not ok][0].__class__ is ReplayedNonce


@pytest_twisted.ensureDeferred
async def test_concurrent_registrations_of_one_email_exactly_one_wins(pair):
    a, b = pair
    now = reactor.seconds()
    for round_ in range(15):
        email = f"race{round_}@example.org"
        first, second = f"{round_:02d}" + "a" * 62, f"{round_:02d}" + "b" * 62
        results = await DeferredList(
            [a.register(reg(first, email=email), now), b.register(reg(second, email=email), now)],
            consumeErrors=True)
        won = [ok for ok, _ in results]
        assert sorted(won) == [False, True], (round_, results)
        loser = [r for ok, r in results if not ok][0]
        assert loser.check(Conflict) and loser.value.code == "email_bound"
        winner = first if won[0] else second
        # The database agrees with the answers: one binding, the winner's.
        rows = await a._db(lambda c: c.execute(
            "SELECT peer_id FROM emails WHERE email = ?", (email,)).fetchall())
        assert rows == [(winner,)]
    # Losers left nothing behind: 15 peers live, 15 bindings.
    counts = await b.counts(now)
    assert counts["peers"] == 15 and counts["emails"] == 15


def served_versions(store):
    return {json.loads(x)["record"]["peer_id"]: json.loads(x)["record"]["version"]
            for x in store.discover(100, reactor.seconds(), bootstrap_only=False)}


@pytest_twisted.ensureDeferred
async def test_racing_versions_end_with_the_newest_everywhere(pair):
    a, b = pair
    pid = "v" * 64
    for round_ in range(10):
        low, high = 2 * round_ + 1, 2 * round_ + 2
        results = await DeferredList(
            [a.register(reg(pid, version=low), reactor.seconds()),
             b.register(reg(pid, version=high), reactor.seconds())],
            consumeErrors=True)
        assert results[1][0], results  # the newer version is never refused
        if not results[0][0]:
            assert results[0][1].value.code == "stale_record"
        rows = await a._db(lambda c: c.execute(
            "SELECT version FROM peers WHERE peer_id = ?", (pid,)).fetchall())
        assert rows == [(high,)]
        await until(lambda: served_versions(a) == {pid: high} == served_versions(b),
                    f"both serve version {high}")


@pytest_twisted.ensureDeferred
async def test_remote_change_never_undoes_a_local_write_in_flight(pair):
    a, b = pair
    pid = "g" * 64
    b._write_started(pid)  # as if B were writing this peer right now
    await a.register(reg(pid, version=7), reactor.seconds())
    # B hears of it, fetches the row, and holds it back for a re-read.
    await until(lambda: pid in b._held, "B holds the fetched row back")
    await task.deferLater(reactor, 0.2, lambda: None)
    assert pid not in served_versions(b) and pid in b._held and not b._fetching
    b._write_finished(pid)  # the local write ended: now B reads the row again
    await until(lambda: served_versions(b) == {pid: 7}, "B applies the re-read row")


@pytest_twisted.ensureDeferred
async def test_discover_callers_leave_nothing_in_the_database(pair):
    a, b = pair
    now = reactor.seconds()
    await a.register(reg("a" * 64), now)
    await until(lambda: peer_ids(b) == ["a" * 64], "B sees A's registration")

    def snapshot(conn):
        rows = {}
        for table in ("peers", "nonces", "emails", "email_codes", "bootstrap_nodes", "version"):
            rows[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        return rows

    before = await a._db(snapshot)
    for _ in range(50):
        b.discover(16, reactor.seconds())
        a.discover(16, reactor.seconds(), bootstrap_only=False)
    assert await a._db(snapshot) == before


# -- outage ------------------------------------------------------------------------


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, to stop and start again."""
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.destroy()


@pytest_twisted.ensureDeferred
async def test_outage_gives_unavailable_then_recovers(own_cluster):
    url = own_cluster.create_database()
    a, b = PostgresStore(reactor, url), PostgresStore(reactor, url)
    try:
        await a.open()
        await b.open()
        now = reactor.seconds()
        await a.register(reg("a" * 64), now)
        await until(lambda: peer_ids(b) == ["a" * 64], "B sees A's registration")

        own_cluster.stop()
        with pytest.raises(ServiceUnavailable) as info:
            await a.register(reg("b" * 64), reactor.seconds())
        assert info.value.http_status == 503 and info.value.code == "database_unavailable"
        with pytest.raises(ServiceUnavailable):
            await b.counts(reactor.seconds())
        assert await b.sweep(reactor.seconds()) == 0  # skipped quietly, not an error
        # discover is served from memory until freshness can no longer be
        # proven, then refused (it might hand out peers gone since).
        took = await until(lambda: not b.index_fresh, "B refuses stale discover",
                           timeout=pgstore.STALE_AFTER_SECONDS + PROPAGATION_LIMIT)
        assert took <= pgstore.STALE_AFTER_SECONDS + PROPAGATION_LIMIT
        with pytest.raises(ServiceUnavailable):
            b.discover(16, reactor.seconds())

        own_cluster.start()  # same port, same data
        deadline = time.monotonic() + 30
        while True:
            try:
                await a.register(reg("b" * 64), reactor.seconds())
                break
            except ServiceUnavailable:
                assert time.monotonic() < deadline, "no recovery after the restart"
                await task.deferLater(reactor, 0.2, lambda: None)
        await until(lambda: b.index_fresh and peer_ids(b) == ["a" * 64, "b" * 64],
                    "B serves discover again with both peers",
                    timeout=pgstore.RECONNECT_SECONDS * 3 + PROPAGATION_LIMIT)
        assert (await b.counts(reactor.seconds()))["peers"] == 2
    finally:
        await a.close()
        await b.close()
