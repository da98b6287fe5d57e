"""BootstrapStore: the bootstrap server's SQLite database.

Every call runs on one dedicated worker thread that owns the only sqlite3
connection, so the reactor thread never touches SQLite and writes are
serialised without locks.  The database runs in WAL mode with
``synchronous=FULL``: a write is on disk before its Deferred fires, so an
acknowledged registration survives ``kill -9`` (and a power cut).

Each write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``); any error
rolls it back, so a refused request leaves nothing behind.

Schema: ``schema/vN.sql`` creates version N from nothing and
``schema/upgrade-to-vN.sql`` moves N-1 to N.  A fresh database and an upgraded
one are identical (tested).

The transaction bodies (``_register``, ``_unregister``, ...) take the
connection as their first argument and use only SQL that SQLite and
PostgreSQL both accept (``?`` placeholders, ``ON CONFLICT``), so the PostgreSQL
store (``pgstore.PostgresStore``) runs the very same code; the few differences
are class attributes and hooks here (``BEGIN``, ``FOR_UPDATE``, ``_lock``,
``_changed``).  Every rule that must hold across processes sharing one
database is an atomic statement or a constraint, not a read-then-write:
nonces and email bindings are ``INSERT ... ON CONFLICT DO NOTHING`` on a
primary key, and a stale record version loses in the upsert's ``WHERE``.
"""

import hashlib
import hmac
import os
import random
import re
import secrets
import sqlite3
from dataclasses import dataclass
from importlib import resources

from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from peernet import constants
from peernet.errors import BadRequest, Conflict, ConfigError, ReplayedNonce

SCHEMA_VERSION = 2
MAX_EMAIL_CODE_ATTEMPTS = 5

log = Logger()


def is_postgres_url(db):
    """``--db`` names a PostgreSQL server (pgstore) rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def schema_text(name):
    return resources.files("peernet.bootstrap").joinpath("schema", name).read_text("utf-8")


def _connect(path):
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def database_version(conn):
    has = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='version'"
    ).fetchone()[0]
    if not has:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise ConfigError("the database file is not a peernet bootstrap database")
        return 0
    return conn.execute("SELECT version FROM version").fetchone()[0]


def migration_scripts(old, target, prefix=""):
    """The schema files (named ``{prefix}v{target}.sql`` and
    ``{prefix}upgrade-to-v{n}.sql``) that take a database from version ``old``
    (0: empty) to ``target``, in order; a ConfigError if ``old`` is newer."""
    if old > target:
        raise ConfigError(
            f"the database has schema version {old}, newer than this peernet "
            f"({target}); upgrade peernet"
        )
    if old == 0:
        return [f"{prefix}v{target}.sql"]
    return [f"{prefix}upgrade-to-v{version}.sql" for version in range(old + 1, target + 1)]


def create_or_upgrade(conn, target=SCHEMA_VERSION):
    """Bring the open database to schema ``target``; return the old version."""
    old = database_version(conn)
    scripts = migration_scripts(old, target)
    if not scripts:
        return old
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in scripts:
            _run_script(conn, schema_text(name))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old


def _run_script(conn, script):
    # sqlite3.executescript() would COMMIT first; run statement by statement so
    # the whole migration stays in one transaction.
    for statement in _split_sql(script):
        conn.execute(statement)


def _split_sql(script):
    script = re.sub(r"--[^\n]*", "", script)
    return [s.strip() for s in script.split(";") if s.strip()]


@dataclass(frozen=True)
class Registration:
    """A verified registration, ready to store."""

    peer_id: str
    record_json: str
    signature: str
    version: int
    is_bootstrap: bool
    email: "str | None"
    email_code: "str | None"
    nonce: str


@dataclass(frozen=True)
class Registered:
    expires_at: float


@dataclass(frozen=True)
class CodeIssued:
    """An email code was created (to be mailed); nothing about the peer is stored."""

    email: str
    code: str


class BootstrapStore:
    """Asynchronous access to the bootstrap database; see the module docstring."""

    #: How a write transaction starts (SQLite: take the write lock at once).
    BEGIN = "BEGIN IMMEDIATE"
    #: Row lock for read-modify-write (SQLite's write lock already serialises).
    FOR_UPDATE = ""

    def __init__(self, reactor, path, *, ttl=constants.BOOTSTRAP_DEFAULT_TTL,
                 email_verification=False):
        self.reactor = reactor
        self.path = os.fspath(path)
        self.ttl = ttl
        self.email_verification = email_verification
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="peernet-bootstrap-db")
        self._conn = None
        #: Live peers mirrored in memory (reads never touch SQLite); updated
        #: on the reactor thread after each write commits.
        self.live = LiveIndex()
        self.nodes = []

    # -- life cycle -------------------------------------------------------------

    def open(self):
        """Start the worker thread, create or upgrade the schema, and load the
        in-memory index of live peers; Deferred."""
        self._pool.start()
        d = self._call(self._open)
        d.addCallback(lambda _: self._call(self._load_index, self.reactor.seconds()))
        d.addCallback(self._index_loaded)
        return d

    def _load_index(self, now):
        return self._load_index_on(self._conn, now)

    def _load_index_on(self, conn, now):
        peers = conn.execute(
            "SELECT peer_id, record, signature, is_bootstrap, expires_at FROM peers"
            " WHERE expires_at > ?", (now,)).fetchall()
        nodes = self._bootstrap_nodes_on(conn)
        return peers, nodes

    def _index_loaded(self, result):
        peers, nodes = result
        for peer_id, record, signature, is_bootstrap, expires_at in peers:
            self.live.put(peer_id, record, signature, bool(is_bootstrap), expires_at)
        self.nodes = nodes

    def _open(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigError(f"the directory of the database {self.path} does not exist")
        try:
            self._conn = _connect(self.path)
            old = create_or_upgrade(self._conn)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"cannot open the database {self.path}: {e}")
        if old and old != SCHEMA_VERSION:
            log.info("database {path} upgraded from schema {old} to {new}",
                     path=self.path, old=old, new=SCHEMA_VERSION)
        return old

    def close(self):
        """Close the connection and stop the worker thread; Deferred."""
        if not self._pool.started:
            return succeed(None)
        d = self._call(self._close)
        d.addBoth(lambda r: (self._pool.stop(), r)[1])
        return d

    def _close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _call(self, fn, *args):
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def _db(self, fn, *args):
        """Run ``fn(conn, *args)`` on the worker thread; Deferred of its result."""
        return self._call(lambda: fn(self._conn, *args))

    def _write(self, body, *args):
        """Run ``body(conn, *args)`` as one transaction; Deferred of its result."""
        return self._db(self._transaction, body, *args)

    def _transaction(self, conn, body, *args):
        conn.execute(self.BEGIN)
        try:
            result = body(conn, *args)
            conn.execute("COMMIT")
        except _CommitThenRaise as e:
            conn.execute("COMMIT")
            raise e.error
        except BaseException:
            self._rollback(conn)
            raise
        return result

    def _rollback(self, conn):
        conn.execute("ROLLBACK")

    # -- hooks for a database shared by several processes (see pgstore) ---------

    def _lock(self, conn, name):
        """Serialise transactions named ``name`` (SQLite: already serial)."""

    def _changed(self, conn, kind, key):
        """A committed transaction changed peer ``key`` (kind "peer") or the
        bootstrap server list (kind "nodes"); other processes may care."""

    def _write_started(self, peer_id):
        pass

    def _write_finished(self, peer_id):
        pass

    def _tracked(self, peer_id, d, on_commit):
        """Apply ``on_commit`` to the memory index when the write commits."""
        self._write_started(peer_id)
        d.addCallback(on_commit)

        def finished(result):
            self._write_finished(peer_id)
            return result

        return d.addBoth(finished)

    # -- writes -----------------------------------------------------------------

    def register(self, reg, now):
        """Store a verified registration. Deferred of Registered or CodeIssued.

        Raises (as a failure) ReplayedNonce, Conflict (stale version, email
        bound to another peer) or BadRequest (wrong or expired email code).
        """
        d = self._write(self._register, reg, now)

        def committed(outcome):
            if isinstance(outcome, Registered):
                self.live.put(reg.peer_id, reg.record_json, reg.signature,
                              reg.is_bootstrap, outcome.expires_at)
            return outcome

        return self._tracked(reg.peer_id, d, committed)

    def _register(self, conn, reg, now):
        self._use_nonce(conn, reg.nonce, now)
        row = conn.execute(
            "SELECT version FROM peers WHERE peer_id = ? AND expires_at > ?",
            (reg.peer_id, now),
        ).fetchone()
        if row is not None and row[0] > reg.version:
            raise _stale(reg.version, row[0])
        outcome = None
        if reg.email is not None:
            outcome = self._bind_email(conn, reg, now)
        if outcome is None:
            expires_at = now + self.ttl
            # The WHERE makes "versions only go up" atomic: a concurrent
            # registration of a newer version through another process wins
            # even if it committed after the SELECT above.
            stored = conn.execute(
                "INSERT INTO peers (peer_id, record, signature, version, is_bootstrap,"
                " is_broadcasting, email, registered_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET record = excluded.record,"
                " signature = excluded.signature, version = excluded.version,"
                " is_bootstrap = excluded.is_bootstrap, email = excluded.email,"
                " registered_at = excluded.registered_at, expires_at = excluded.expires_at"
                " WHERE peers.version <= excluded.version OR peers.expires_at <= ?",
                (reg.peer_id, reg.record_json, reg.signature, reg.version,
                 int(reg.is_bootstrap), reg.email, now, expires_at, now),
            ).rowcount
            if stored != 1:
                row = conn.execute(
                    "SELECT version FROM peers WHERE peer_id = ?", (reg.peer_id,)
                ).fetchone()
                raise _stale(reg.version, row[0] if row else reg.version)
            self._changed(conn, "peer", reg.peer_id)
            outcome = Registered(expires_at)
        return outcome

    def _use_nonce(self, conn, nonce, now):
        # A primary-key insert: atomic whether one process or many share the
        # database (a concurrent twin waits for the first to commit, then loses).
        used = conn.execute(
            "INSERT INTO nonces (nonce, expires_at) VALUES (?, ?)"
            " ON CONFLICT (nonce) DO NOTHING",
            (nonce, now + constants.NONCE_RETENTION_SECONDS),
        ).rowcount
        if used != 1:
            raise ReplayedNonce("this nonce was already used; sign a new request")

    def _bind_email(self, conn, reg, now):
        """Apply the one-peer-per-email rule; None means "go on and register"."""
        bound = conn.execute(
            "SELECT peer_id FROM emails WHERE email = ?", (reg.email,)
        ).fetchone()
        if bound is not None:
            _check_binding(bound[0], reg.peer_id)
            return None
        if not self.email_verification:
            self._insert_binding(conn, reg, 0, now)
            return None
        if reg.email_code is None:
            code = f"{secrets.randbelow(10**8):08d}"
            conn.execute(
                "INSERT INTO email_codes (email, peer_id, code_hash, attempts, expires_at)"
                " VALUES (?, ?, ?, 0, ?) ON CONFLICT (email) DO UPDATE SET"
                " peer_id = excluded.peer_id, code_hash = excluded.code_hash,"
                " attempts = 0, expires_at = excluded.expires_at",
                (reg.email, reg.peer_id, _code_hash(reg.peer_id, code),
                 now + constants.EMAIL_CODE_TTL_SECONDS),
            )
            return CodeIssued(reg.email, code)
        pending = conn.execute(
            "SELECT peer_id, code_hash, attempts FROM email_codes"
            " WHERE email = ? AND expires_at > ?" + self.FOR_UPDATE,
            (reg.email, now),
        ).fetchone()
        if pending is None or pending[0] != reg.peer_id:
            raise BadRequest(
                "no verification code is pending for this email and peer; register "
                "without email_code to get one",
                code="no_pending_code",
            )
        if pending[2] >= MAX_EMAIL_CODE_ATTEMPTS:
            raise BadRequest(
                "too many wrong codes; register without email_code to get a new one",
                code="too_many_attempts",
            )
        if not hmac.compare_digest(pending[1], _code_hash(reg.peer_id, reg.email_code)):
            conn.execute(
                "UPDATE email_codes SET attempts = attempts + 1 WHERE email = ?",
                (reg.email,),
            )
            # The attempt counter must persist although the request fails.
            raise _CommitThenRaise(BadRequest("the email code is wrong", code="bad_email_code"))
        conn.execute("DELETE FROM email_codes WHERE email = ?", (reg.email,))
        self._insert_binding(conn, reg, 1, now)
        return None

    def _insert_binding(self, conn, reg, verified, now):
        # Two registrations of one email racing through two processes both
        # find it unbound; the primary key lets exactly one insert win.
        inserted = conn.execute(
            "INSERT INTO emails (email, peer_id, verified, bound_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (email) DO NOTHING",
            (reg.email, reg.peer_id, verified, now),
        ).rowcount
        if inserted != 1:
            bound = conn.execute(
                "SELECT peer_id FROM emails WHERE email = ?", (reg.email,)
            ).fetchone()
            _check_binding(bound[0] if bound else None, reg.peer_id)

    def drop_email_code(self, email, peer_id):
        """Forget a pending email code (it could not be sent). Deferred."""
        return self._write(self._drop_email_code, email, peer_id)

    def _drop_email_code(self, conn, email, peer_id):
        conn.execute(
            "DELETE FROM email_codes WHERE email = ? AND peer_id = ?", (email, peer_id)
        )

    def unregister(self, peer_id, nonce, release_email, now):
        """Remove a peer at once. Deferred of (removed, email_released)."""
        d = self._write(self._unregister, peer_id, nonce, release_email, now)

        def committed(result):
            self.live.remove(peer_id)
            return result

        return self._tracked(peer_id, d, committed)

    def _unregister(self, conn, peer_id, nonce, release_email, now):
        self._use_nonce(conn, nonce, now)
        removed = conn.execute(
            "DELETE FROM peers WHERE peer_id = ? AND expires_at > ?", (peer_id, now)
        ).rowcount
        # An expired row is invisible, but it still goes now.
        conn.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
        released = 0
        if release_email:
            released = conn.execute(
                "DELETE FROM emails WHERE peer_id = ?", (peer_id,)
            ).rowcount
        self._changed(conn, "peer", peer_id)
        return bool(removed), bool(released)

    def set_bootstrap_nodes(self, urls, source, now):
        """Make the ``source`` rows of bootstrap_nodes exactly ``urls``."""
        d = self._write(self._set_bootstrap_nodes, list(urls), source, now)
        d.addCallback(lambda _: self._db(self._bootstrap_nodes_on))
        d.addCallback(lambda nodes: setattr(self, "nodes", nodes))
        return d

    def _set_bootstrap_nodes(self, conn, urls, source, now):
        # Processes sharing a database start together and all rewrite this list.
        self._lock(conn, "bootstrap_nodes")
        conn.execute("DELETE FROM bootstrap_nodes WHERE source = ?", (source,))
        for url in urls:
            conn.execute(
                "INSERT INTO bootstrap_nodes (url, source, added_at) VALUES (?, ?, ?)"
                " ON CONFLICT (url) DO UPDATE SET source = excluded.source,"
                " added_at = excluded.added_at",
                (url, source, now),
            )
        self._changed(conn, "nodes", source)

    def sweep(self, now):
        """Delete expired peers, nonces and codes. Deferred of rows deleted."""
        self.live.expire(now)
        return self._write(self._sweep, now)

    def _sweep(self, conn, now):
        n = conn.execute("DELETE FROM peers WHERE expires_at <= ?", (now,)).rowcount
        n += conn.execute("DELETE FROM nonces WHERE expires_at <= ?", (now,)).rowcount
        n += conn.execute("DELETE FROM email_codes WHERE expires_at <= ?", (now,)).rowcount
        return n

    # -- reads ------------------------------------------------------------------

    def discover(self, limit, now, bootstrap_only=True, exclude=None):
        """A random sample of live peers' signed-record JSON strings (from
        memory: no database access, no thread hop)."""
        return self.live.sample(limit, now, bootstrap_only, exclude)

    def bootstrap_nodes(self):
        return list(self.nodes)

    def _bootstrap_nodes_on(self, conn):
        return [r[0] for r in conn.execute("SELECT url FROM bootstrap_nodes ORDER BY url")]

    def counts(self, now):
        """Deferred of a dict of live counts for /health."""
        return self._db(self._counts, now)

    def _schema_version(self, conn):
        return database_version(conn)

    def _counts(self, c, now):
        return {
            "peers": c.execute("SELECT count(*) FROM peers WHERE expires_at > ?", (now,)).fetchone()[0],
            "bootstrap_peers": c.execute(
                "SELECT count(*) FROM peers WHERE expires_at > ? AND is_bootstrap = 1", (now,)
            ).fetchone()[0],
            "bootstrap_servers": c.execute("SELECT count(*) FROM bootstrap_nodes").fetchone()[0],
            "emails": c.execute("SELECT count(*) FROM emails").fetchone()[0],
            "schema_version": self._schema_version(c),
        }


def _stale(version, registered):
    return Conflict(
        f"record version {version} is older than the registered version {registered}",
        code="stale_record",
    )


def _check_binding(bound_peer_id, peer_id):
    if bound_peer_id != peer_id:
        raise Conflict(
            "this email is bound to another peer; only that peer's key can release it",
            code="email_bound",
        )


class _CommitThenRaise(Exception):
    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def _code_hash(peer_id, code):
    return hashlib.sha256(f"{peer_id}:{code}".encode()).hexdigest()


class LiveIndex:
    """Live registrations in memory, for O(limit) random sampling.

    Two arrays (all peers, bootstrap-capable peers) with swap-remove, so a
    sample costs ``limit`` random picks whatever the table size.  Expired
    entries are skipped when met and dropped by expire().
    """

    def __init__(self):
        self._entries = {}  # peer_id -> (signed_json, is_bootstrap, expires_at)
        self._pools = {True: _Pool(), False: _Pool()}  # bootstrap_only -> pool

    def __len__(self):
        return len(self._entries)

    def peer_ids(self):
        return list(self._entries)

    def put(self, peer_id, record_json, signature, is_bootstrap, expires_at):
        self.remove(peer_id)
        signed = f'{{"record":{record_json},"signature":"{signature}"}}'
        self._entries[peer_id] = (signed, is_bootstrap, expires_at)
        self._pools[False].add(peer_id)
        if is_bootstrap:
            self._pools[True].add(peer_id)

    def remove(self, peer_id):
        if self._entries.pop(peer_id, None) is not None:
            self._pools[False].discard(peer_id)
            self._pools[True].discard(peer_id)

    def expire(self, now):
        for peer_id in [p for p, (_, _, exp) in self._entries.items() if exp <= now]:
            self.remove(peer_id)

    def sample(self, limit, now, bootstrap_only, exclude=None):
        pool = self._pools[bool(bootstrap_only)]
        out = []
        for peer_id in pool.sample(limit + 1 if exclude else limit):
            signed, _, expires_at = self._entries[peer_id]
            if expires_at > now and peer_id != exclude:
                out.append(signed)
        if len(out) < limit and len(out) < len(pool):
            # Expired entries were in the way (rare: the sweep runs every
            # minute); fall back to a full scan.
            out = [self._entries[p][0] for p in pool.items
                   if self._entries[p][2] > now and p != exclude]
            secrets.SystemRandom().shuffle(out)
        return out[:limit]


class _Pool:
    # A fast PRNG reseeded from the OS every RESEED samples: SystemRandom
    # (one getrandom() call per number) cost 12 % of a discover request, and
    # frequent reseeding keeps the sample sequence unpredictable to callers.
    RESEED = 1000

    def __init__(self):
        self.items = []
        self._where = {}
        self._rng = random.Random(os.urandom(32))
        self._draws = 0

    def __len__(self):
        return len(self.items)

    def add(self, key):
        self._where[key] = len(self.items)
        self.items.append(key)

    def discard(self, key):
        i = self._where.pop(key, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self._where[last] = i

    def sample(self, k):
        self._draws += 1
        if self._draws >= self.RESEED:
            self._draws = 0
            self._rng.seed(os.urandom(32))
        if k >= len(self.items):
            out = list(self.items)
            self._rng.shuffle(out)
            return out
        return self._rng.sample(self.items, k)
