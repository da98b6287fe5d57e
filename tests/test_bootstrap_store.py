"""BootstrapStore on real SQLite files and on a real PostgreSQL server (the
same cases run against both): schema versions, expiry, sweeps, rules.
PostgreSQL-only cases (schema equality, several processes) are in
test_bootstrap_pgstore.py."""

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from peernet.bootstrap import store as store_module
from peernet.bootstrap.store import BootstrapStore, CodeIssued, Registered, Registration
from peernet.errors import BadRequest, ConfigError, Conflict, ReplayedNonce
from pg_fixture import postgres_cluster  # noqa: F401  (fixture)


def schema_of(path):
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        return objects, store_module.database_version(conn)
    finally:
        conn.close()


def test_fresh_database_equals_upgraded_database(tmp_path):
    fresh, old = tmp_path / "fresh.sqlite", tmp_path / "old.sqlite"
    conn = sqlite3.connect(fresh)
    assert store_module.create_or_upgrade(conn) == 0
    conn.close()
    # A database made by the first release, with data in it, then upgraded.
    conn = sqlite3.connect(old, isolation_level=None)
    store_module.create_or_upgrade(conn, target=1)
    conn.execute("INSERT INTO emails VALUES ('a@example.org', 'p', 0, 1.0)")
    assert store_module.database_version(conn) == 1
    assert store_module.create_or_upgrade(conn) == 1
    assert conn.execute("SELECT email FROM emails").fetchall() == [("a@example.org",)]
    conn.close()
    assert schema_of(fresh) == schema_of(old)
    assert schema_of(fresh)[1] == store_module.SCHEMA_VERSION


def test_newer_or_foreign_database_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "new.sqlite", isolation_level=None)
    store_module.create_or_upgrade(conn)
    conn.execute("UPDATE version SET version = 99")
    with pytest.raises(ConfigError, match="newer"):
        store_module.create_or_upgrade(conn)
    conn.close()
    conn = sqlite3.connect(tmp_path / "other.sqlite")
    conn.execute("CREATE TABLE something (x)")
    with pytest.raises(ConfigError, match="not a peernet bootstrap database"):
        store_module.create_or_upgrade(conn)
    conn.close()


def reg(peer_id="a" * 64, version=1, email=None, code=None, nonce=None, bootstrap=True):
    return Registration(
        peer_id=peer_id, record_json='{"peer_id":"%s"}' % peer_id, signature="c2ln",
        version=version, is_bootstrap=bootstrap, email=email, email_code=code,
        nonce=nonce or __import__("os").urandom(16).hex(),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request, tmp_path):
    """``await make_store(**kw)``: a new opened store on this test's database
    (the same database on every call); every one is closed after the test."""
    if request.param == "sqlite":
        target, cls = tmp_path / "db.sqlite", BootstrapStore
    else:
        from peernet.bootstrap.pgstore import PostgresStore

        target, cls = request.getfixturevalue("postgres_cluster").create_database(), PostgresStore
    opened = []

    async def make(**kw):
        s = cls(reactor, target, **kw)
        opened.append(s)  # before open(): a failed open still stops its threads
        await s.open()
        return s

    yield make
    for s in opened:
        pytest_twisted.blockon(s.close())


@pytest.fixture
def store(make_store):
    return pytest_twisted.blockon(ensureDeferred(make_store(ttl=3600)))


@pytest_twisted.ensureDeferred
async def test_expired_rows_are_invisible_at_once_and_swept(store):
    t0 = 1_000_000.0
    result = await store.register(reg(), t0)
    assert isinstance(result, Registered) and result.expires_at == t0 + 3600
    assert len(store.discover(16, t0 + 3599)) == 1
    assert store.discover(16, t0 + 3600) == []  # invisible the moment it expires
    assert (await store.counts(t0 + 3600))["peers"] == 0
    deleted = await store.sweep(t0 + 3600)
    assert deleted >= 2  # the peer row and its nonce
    assert store.discover(16, t0) == []  # really gone, not just hidden


@pytest_twisted.ensureDeferred
async def test_memory_index_is_rebuilt_from_the_database(make_store):
    t0 = reactor.seconds()  # open() loads the peers live at the reactor's time
    s = await make_store()
    await s.register(reg(peer_id="a" * 64), t0)
    await s.register(reg(peer_id="b" * 64, bootstrap=False), t0)
    await s.unregister("a" * 64, "u" * 32, False, t0)
    await s.register(reg(peer_id="c" * 64), t0)
    await s.close()
    again = await make_store()
    import json as _json

    live = sorted(_json.loads(x)["record"]["peer_id"] for x in again.discover(16, t0, bootstrap_only=False))
    assert live == ["b" * 64, "c" * 64]
    assert [_json.loads(x)["record"]["peer_id"] for x in again.discover(16, t0)] == ["c" * 64]


def test_live_index_samples_uniformly_and_skips_expired():
    from collections import Counter

    from peernet.bootstrap.store import LiveIndex

    index = LiveIndex()
    for i in range(50):
        index.put(f"{i:064x}", '{"peer_id":"%064x"}' % i, "c2ln", True, 100.0 if i < 10 else 1000.0)
    counts = Counter()
    for _ in range(400):
        got = index.sample(5, 50.0, True)
        assert len(got) == 5 and len(set(got)) == 5
        counts.update(got)
    assert len(counts) == 50  # every peer gets picked
    late = index.sample(100, 500.0, True)  # the first 10 have expired
    assert len(late) == 40 and all('"%064x"' % i not in "".join(late) for i in range(10))
    index.expire(500.0)
    assert len(index) == 40


@pytest_twisted.ensureDeferred
async def test_nonce_is_single_use_until_swept(store):
    t0 = 5_000.0
    await store.register(reg(nonce="n" * 32), t0)
    with pytest.raises(ReplayedNonce):
        await store.register(reg(nonce="n" * 32), t0 + 10)
    await store.sweep(t0 + 3600 + 120)


@pytest_twisted.ensureDeferred
async def test_refused_write_leaves_no_trace(store, tmp_path):
    t0 = 10_000.0
    await store.register(reg(version=3, email="x@example.org"), t0)
    before = await store.counts(t0)
    with pytest.raises(Conflict):
        await store.register(reg(version=2, nonce="m" * 32), t0)
    with pytest.raises(Conflict):
        await store.register(reg(peer_id="b" * 64, email="x@example.org"), t0)
    assert await store.counts(t0) == before
    # The refused requests' nonces were not consumed either.
    await store.register(reg(version=3, nonce="m" * 32), t0)


@pytest_twisted.ensureDeferred
async def test_email_code_flow(make_store):
    s = await make_store(email_verification=True)
    if True:
        t0 = 1000.0
        issued = await s.register(reg(email="v@example.org"), t0)
        assert isinstance(issued, CodeIssued) and len(issued.code) == 8
        assert (await s.counts(t0))["peers"] == 0  # nothing about the peer yet
        wrong = "%08d" % ((int(issued.code) + 1) % 10**8)
        with pytest.raises(BadRequest, match="wrong"):
            await s.register(reg(email="v@example.org", code=wrong), t0)
        with pytest.raises(BadRequest):  # another peer cannot use the code
            await s.register(reg(peer_id="c" * 64, email="v@example.org", code=issued.code), t0)
        done = await s.register(reg(email="v@example.org", code=issued.code), t0)
        assert isinstance(done, Registered)
        assert (await s.counts(t0))["emails"] == 1


@pytest_twisted.ensureDeferred
async def test_email_code_attempts_are_limited(make_store):
    s = await make_store(email_verification=True)
    if True:
        issued = await s.register(reg(email="w@example.org"), 0.0)
        wrong = "%08d" % ((int(issued.code) + 1) % 10**8)
        for _ in range(store_module.MAX_EMAIL_CODE_ATTEMPTS):
            with pytest.raises(BadRequest, match="wrong"):
                await s.register(reg(email="w@example.org", code=wrong), 1.0)
        with pytest.raises(BadRequest, match="too many"):
            await s.register(reg(email="w@example.org", code=issued.code), 1.0)


@pytest_twisted.ensureDeferred
async def test_versions_only_go_up_and_large_versions_fit(store):
    t0 = reactor.seconds()
    big = 2**53  # the largest record version the protocol allows
    await store.register(reg(version=big - 1), t0)
    await store.register(reg(version=big), t0)
    with pytest.raises(Conflict, match="older"):
        await store.register(reg(version=big - 1), t0)
    await store.register(reg(version=big), t0)  # an equal version renews
    assert (await store.counts(t0))["peers"] == 1


@pytest_twisted.ensureDeferred
async def test_email_binding_released_only_by_its_key(store):
    t0 = reactor.seconds()
    await store.register(reg(peer_id="a" * 64, email="r@example.org"), t0)
    with pytest.raises(Conflict, match="bound"):
        await store.register(reg(peer_id="b" * 64, email="r@example.org"), t0)
    assert await store.unregister("b" * 64, "x" * 32, True, t0) == (False, False)
    assert await store.unregister("a" * 64, "y" * 32, True, t0) == (True, True)
    await store.register(reg(peer_id="b" * 64, email="r@example.org"), t0)
    assert store.discover(16, t0) and (await store.counts(t0))["emails"] == 1


@pytest_twisted.ensureDeferred
async def test_bootstrap_nodes_replace_their_source(store):
    t0 = reactor.seconds()
    await store.set_bootstrap_nodes(["https://b.example", "https://a.example"], "config", t0)
    assert store.bootstrap_nodes() == ["https://a.example", "https://b.example"]
    await store.set_bootstrap_nodes(["https://c.example", "https://a.example"], "config", t0)
    assert store.bootstrap_nodes() == ["https://a.example", "https://c.example"]
    assert (await store.counts(t0))["bootstrap_servers"] == 2
