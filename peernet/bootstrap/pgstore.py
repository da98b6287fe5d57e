"""PostgresStore: the bootstrap store on PostgreSQL, shared by several
``twist bootstrap --db postgresql://...`` processes (or hosts) behind a load
balancer.

It runs BootstrapStore's transaction code unchanged (see store.py): the rules
that must hold across processes (a nonce is used once, one peer per email,
record versions only go up) are primary keys and atomic ``ON CONFLICT``
statements, so they hold however requests are spread over the processes.

Database calls run on a small pool of worker threads, each with its own
connection (the reactor thread never waits on PostgreSQL).  A call that
finds its connection broken (the server restarted) reconnects and retries once
if nothing was committed yet; otherwise the request gets ``503 unavailable``
and nothing was applied.  A deadlock or serialization failure is retried.

**Cross-process index.**  ``discover`` is answered from each process's memory
(LiveIndex), so every write announces the changed peer_id with
``pg_notify`` inside its transaction (PostgreSQL delivers it at commit, in
commit order).  Each process keeps one extra connection LISTENing; a
notification from another process makes it re-read those peers' rows and
update its index.  A (re)connected listener first reloads the whole index, so
nothing missed while it was away survives.  The listener proves it is alive
with a round trip every HEARTBEAT_SECONDS; PostgreSQL sends pending
notifications before answering it, so after each heartbeat every change
committed before it was sent has reached this process.  If the index cannot be
proven fresh within STALE_AFTER_SECONDS (listener down, database unreachable),
``discover`` answers 503 rather than serving peers that may have unregistered
since.  Bound: a change is visible everywhere after one NOTIFY delivery plus
one indexed SELECT (milliseconds on a LAN); never is an index older than
STALE_AFTER_SECONDS + one round trip served.

Index updates from other processes must not undo this process's own newer
writes (its worker threads and the reactor are not in lock step), so a
fetched row for a peer with a local write in flight, or finished after the
fetch started, is discarded and fetched again.
"""

import os
import threading
from collections import Counter

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from peernet.bootstrap.store import (SCHEMA_VERSION, BootstrapStore, _split_sql,
                                     migration_scripts, schema_text)
from peernet.errors import ConfigError, ServiceUnavailable

log = Logger()

POOL_SIZE = 4
CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 10_000
HEARTBEAT_SECONDS = 1.0
STALE_AFTER_SECONDS = 5.0
RECONNECT_SECONDS = 1.0
CHANNEL = "peernet_bootstrap"
#: pg_advisory_xact_lock keys (any fixed bigints, one per purpose).
LOCK_KEYS = {"schema": 0x7065_6572_6E65_7401, "bootstrap_nodes": 0x7065_6572_6E65_7402}
UNAVAILABLE = "the database is unavailable; nothing was changed, try again later"


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "--db postgresql:// needs the psycopg package: pip install 'peernet[postgresql]'"
        )
    return psycopg


def redact(url):
    """The URL without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{hostpart}"


def check_url(url):
    """Parse a PostgreSQL URL now; ConfigError in one line if it is malformed."""
    psycopg = _psycopg()
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise ConfigError(f"--db: malformed PostgreSQL URL {redact(url)}: {_first_line(e)}")
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"--db: malformed PostgreSQL URL {redact(url)}: bad port {port!r}")
    return params


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    # libpq prefixes and multi-line hints: keep the sentence that says what failed.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text


class _Connection:
    """A psycopg connection that takes the ``?`` placeholders store.py writes."""

    _translated = {}

    def __init__(self, raw):
        self.raw = raw
        self.commit_sent = False

    def execute(self, sql, params=()):
        query = self._translated.get(sql)
        if query is None:
            query = self._translated[sql] = sql.replace("%", "%%").replace("?", "%s")
        if sql == "COMMIT":
            self.commit_sent = True
        return self.raw.execute(query, params)

    def close(self):
        self.raw.close()


def connect(url):
    """A new autocommit connection with peernet's timeouts; psycopg errors pass."""
    psycopg = _psycopg()
    kwargs = {"autocommit": True, "application_name": "peernet-bootstrap"}
    params = check_url(url)
    if "connect_timeout" not in params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if "keepalives" not in params:
        # Notice a dead server behind a silent network within seconds.
        kwargs.update(keepalives=1, keepalives_idle=5, keepalives_interval=2,
                      keepalives_count=3)
    raw = psycopg.connect(url, **kwargs)
    raw.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    return _Connection(raw)


def database_version(conn):
    """The schema version of the current schema (search_path), 0 if empty."""
    has = conn.execute("SELECT to_regclass('version') IS NOT NULL").fetchone()[0]
    if not has:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()[0]
        if tables:
            raise ConfigError(
                "the database is not a peernet bootstrap database (its schema has other "
                "tables; use an empty database, or another schema with "
                "?options=-csearch_path%3Dpeernet)"
            )
        return 0
    return conn.execute("SELECT version FROM version").fetchone()[0]


def create_or_upgrade(conn, target=SCHEMA_VERSION):
    """Bring the database to schema ``target`` in one transaction; the old version.

    An advisory lock makes processes that start together take turns: the
    first creates or upgrades, the others then find it done.
    """
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_KEYS["schema"],))
        old = database_version(conn)
        for name in migration_scripts(old, target, prefix="postgresql-"):
            _run_script(conn, schema_text(name))
        conn.execute("COMMIT")
    except BaseException:
        _quiet_rollback(conn)
        raise
    return old


def _run_script(conn, script):
    for statement in _split_sql(script):
        conn.raw.execute(statement)


def _quiet_rollback(conn):
    try:
        conn.execute("ROLLBACK")
    except Exception:
        pass


def prepare(url):
    """Check ``--db postgresql://...`` before the reactor runs: connect, create
    or upgrade the schema.  Every failure is a one-line ConfigError."""
    psycopg = _psycopg()
    check_url(url)
    try:
        conn = connect(url)
    except psycopg.Error as e:
        raise ConfigError(f"--db: cannot connect to {redact(url)}: {_connect_reason(e)}")
    try:
        old = create_or_upgrade(conn)
    except psycopg.Error as e:
        raise ConfigError(f"--db: cannot use {redact(url)}: {_first_line(e)}")
    finally:
        conn.close()
    return old


def _connect_reason(error):
    text = _first_line(error)
    # "connection failed: connection to server at "h", port p failed: FATAL:  ..."
    for marker in ("failed: FATAL:", "FATAL:"):
        if marker in text:
            return text.split(marker, 1)[1].strip()
    return text.removeprefix("connection failed: ")


class PostgresStore(BootstrapStore):
    """BootstrapStore on PostgreSQL; see the module docstring."""

    BEGIN = "BEGIN"
    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, reactor, url, *, pool_size=POOL_SIZE, **kw):
        super().__init__(reactor, "postgresql", **kw)
        self.path = redact(url)
        self.url = url
        self._psycopg = _psycopg()
        from twisted.python.threadpool import ThreadPool

        self._pool = ThreadPool(minthreads=1, maxthreads=pool_size,
                                name="peernet-bootstrap-postgres")
        self._local = threading.local()
        self._connections = []
        self._connections_lock = threading.Lock()
        self._origin = os.urandom(8).hex()
        self._stopping = threading.Event()
        self._listener = None
        self._down_reason = None
        # Freshness of the memory index (reactor thread only).
        self._synced = False
        self._fresh_until = 0.0
        self._first_sync = Deferred()
        self._first_sync_done = False
        # Index refresh state (reactor thread only).
        self._dirty = set()
        self._held = set()  # changed elsewhere, re-read when our own write ends
        self._nodes_dirty = False
        self._fetching = False
        self._retry = None
        self._pending = Counter()
        self._finished = {}
        self._write_seq = 0
        self._watching = 0

    # -- life cycle -------------------------------------------------------------

    def open(self):
        """Create or upgrade the schema, start listening, load the index; the
        Deferred fires once the index is loaded."""
        self._pool.start()
        d = Deferred()

        def attempt():
            if self._stopping.is_set():
                return
            schema = self._db(create_or_upgrade)

            def unavailable(failure):
                # The server went away since `prepare` checked it: wait for it.
                failure.trap(ServiceUnavailable)
                self._retry = self.reactor.callLater(RECONNECT_SECONDS, attempt)

            schema.addCallbacks(lambda old: d.callback(old), unavailable)
            schema.addErrback(d.errback)

        attempt()
        d.addCallback(self._schema_ready)
        return d

    def _schema_ready(self, old):
        if old and old != SCHEMA_VERSION:
            log.info("database {url} upgraded from schema {old} to {new}",
                     url=self.path, old=old, new=SCHEMA_VERSION)
        self._listener = threading.Thread(target=self._listen_loop,
                                          name="peernet-bootstrap-listen", daemon=True)
        self._listener.start()
        return self._first_sync

    def close(self):
        """Stop the listener and the workers, close every connection; Deferred."""
        self._stopping.set()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if not self._pool.started:
            return _wait_thread(self.reactor, self._listener)
        d = _wait_thread(self.reactor, self._listener)

        def stop_pool(_):
            self._pool.stop()
            with self._connections_lock:
                connections, self._connections = self._connections, []
            for conn in connections:
                try:
                    conn.close()
                except Exception:
                    pass

        return d.addCallback(stop_pool)

    # -- database calls on the worker threads -----------------------------------

    def _db(self, fn, *args):
        return self._call(self._run, fn, args)

    def _thread_connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.raw.closed:
            conn = None
        fresh = conn is None
        if fresh:
            conn = connect(self.url)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        conn.commit_sent = False
        return conn, fresh

    def _drop_thread_connection(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._connections_lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            try:
                conn.close()
            except Exception:
                pass

    def _run(self, fn, args):
        psycopg = self._psycopg
        for attempt in range(4):
            try:
                conn, fresh = self._thread_connection()
            except psycopg.Error as e:
                self._report_down(e)
                raise ServiceUnavailable(UNAVAILABLE, code="database_unavailable")
            try:
                result = fn(conn, *args)
            except psycopg.errors.TransactionRollback:
                continue  # deadlock or serialization failure: all rolled back; again
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                self._drop_thread_connection()
                if not fresh and not conn.commit_sent and attempt == 0:
                    continue  # a connection left broken by a server restart
                self._report_down(e)
                raise ServiceUnavailable(UNAVAILABLE, code="database_unavailable")
            self._report_up()
            return result
        raise ServiceUnavailable("the database is too busy; try again", code="database_busy")

    def _rollback(self, conn):
        try:
            conn.execute("ROLLBACK")
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError):
            pass  # the connection is gone, and the transaction with it

    def _report_down(self, error):
        reason = _first_line(error)
        if self._down_reason is None:
            self._down_reason = reason
            self.reactor.callFromThread(
                log.warn, "database {url} unavailable: {reason}", url=self.path, reason=reason)

    def _report_up(self):
        if self._down_reason is not None:
            self._down_reason = None
            self.reactor.callFromThread(log.info, "database {url} available again", url=self.path)

    # -- hooks from BootstrapStore's transactions --------------------------------

    def _lock(self, conn, name):
        conn.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_KEYS[name],))

    def _changed(self, conn, kind, key):
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, f"{self._origin} {kind} {key}"))

    def _schema_version(self, conn):
        return database_version(conn)

    def _write_started(self, peer_id):
        self._pending[peer_id] += 1

    def _write_finished(self, peer_id):
        self._pending[peer_id] -= 1
        if self._pending[peer_id] <= 0:
            del self._pending[peer_id]
            if peer_id in self._held:
                self._held.discard(peer_id)
                self._dirty.add(peer_id)
                self.reactor.callLater(0, self._fetch)
        if self._watching:
            self._write_seq += 1
            self._finished[peer_id] = self._write_seq

    def _overtaken(self, peer_id, since):
        """True if a row read since ``since`` may be older than this process's
        own write for peer_id; the peer is then queued for another read (once
        its local write in flight, if any, has ended)."""
        if peer_id in self._pending:
            self._held.add(peer_id)
            return True
        if self._finished.get(peer_id, -1) > since:
            self._dirty.add(peer_id)
            return True
        return False

    def _watch(self):
        self._watching += 1
        return self._write_seq

    def _unwatch(self):
        self._watching -= 1
        if not self._watching:
            self._finished.clear()

    def sweep(self, now):
        """As BootstrapStore.sweep; while the database is away, 0 (the outage is
        logged once, not every minute with a traceback; the next sweep catches up)."""
        d = super().sweep(now)

        def unavailable(failure):
            failure.trap(ServiceUnavailable)
            return 0

        return d.addErrback(unavailable)

    # -- reads ------------------------------------------------------------------

    def discover(self, limit, now, bootstrap_only=True, exclude=None):
        """As BootstrapStore.discover while the index is proven fresh.  When it
        is not: a registrant's sample (``exclude`` set: the registration has
        already committed, so failing now would make the client retry a done
        request) is empty, and a discover request gets 503."""
        if self.reactor.seconds() >= self._fresh_until:
            if exclude is not None:
                return []
            raise ServiceUnavailable(
                "this server cannot reach its database, so its list of peers may be out "
                "of date; ask another bootstrap server or try again later",
                code="database_unavailable",
            )
        return super().discover(limit, now, bootstrap_only, exclude)

    @property
    def index_fresh(self):
        """True while discover answers (the index is proven recent)."""
        return self.reactor.seconds() < self._fresh_until

    # -- the listener thread ----------------------------------------------------

    def _listen_loop(self):
        psycopg = self._psycopg
        post = self.reactor.callFromThread
        while not self._stopping.is_set():
            conn = None
            try:
                conn = connect(self.url)
                conn.execute(f"LISTEN {CHANNEL}")
                post(self._listener_up)
                while not self._stopping.is_set():
                    # Yields each notification as it arrives, then returns at
                    # the timeout (psycopg keeps those that arrive during the
                    # heartbeat for the next call).
                    for notification in conn.raw.notifies(timeout=HEARTBEAT_SECONDS):
                        post(self._notified, notification.payload)
                    sent = self.reactor.seconds()
                    conn.execute("SELECT 1")
                    post(self._heartbeat, sent)
            except (psycopg.Error, ConfigError) as e:
                if not self._stopping.is_set():
                    post(self._listener_down, _first_line(e))
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
            self._stopping.wait(RECONNECT_SECONDS)

    # -- index maintenance (reactor thread) -------------------------------------

    def _listener_up(self):
        # Anything may have changed while nobody listened: reload all.
        self._synced = False
        self._reload()

    def _listener_down(self, reason):
        self._synced = False
        log.warn("database {url}: lost the change feed ({reason}); reconnecting",
                 url=self.path, reason=reason)

    def _heartbeat(self, sent):
        if self._synced:
            self._fresh_until = max(self._fresh_until, sent + STALE_AFTER_SECONDS)

    def _notified(self, payload):
        origin, _, rest = payload.partition(" ")
        if origin == self._origin:
            return  # this process already applied its own write
        kind, _, key = rest.partition(" ")
        if kind == "peer":
            self._dirty.add(key)
        elif kind == "nodes":
            self._nodes_dirty = True
        self._fetch()

    def _reload(self):
        if self._stopping.is_set():
            return None
        started = self.reactor.seconds()
        since = self._watch()
        d = self._db(self._load_index_on, started)

        def loaded(result):
            peers, nodes = result
            seen = set()
            for peer_id, record, signature, is_bootstrap, expires_at in peers:
                seen.add(peer_id)
                if not self._overtaken(peer_id, since):
                    self.live.put(peer_id, record, signature, bool(is_bootstrap), expires_at)
            for peer_id in [p for p in self.live.peer_ids() if p not in seen]:
                if not self._overtaken(peer_id, since):
                    self.live.remove(peer_id)
            self.nodes = nodes
            self._synced = True
            self._fresh_until = max(self._fresh_until, started + STALE_AFTER_SECONDS)
            if not self._first_sync_done:
                self._first_sync_done = True
                self._first_sync.callback(None)
            self._fetch()

        def failed(failure):
            failure.trap(ServiceUnavailable)
            self._schedule_retry(self._reload)

        d.addCallbacks(loaded, failed)
        d.addBoth(lambda _: self._unwatch())
        return d

    def _fetch(self):
        """Re-read the rows of the peers other processes changed."""
        if self._fetching or not (self._dirty or self._nodes_dirty) or self._stopping.is_set():
            return
        self._fetching = True
        ids, self._dirty = sorted(self._dirty), set()
        nodes, self._nodes_dirty = self._nodes_dirty, False
        since = self._watch()
        d = self._db(self._fetch_rows, ids, nodes)

        def fetched(result):
            rows, node_list = result
            for peer_id in ids:
                if self._overtaken(peer_id, since):
                    pass
                elif peer_id in rows:
                    record, signature, is_bootstrap, expires_at = rows[peer_id]
                    self.live.put(peer_id, record, signature, bool(is_bootstrap), expires_at)
                else:
                    self.live.remove(peer_id)
            if node_list is not None:
                self.nodes = node_list

        def failed(failure):
            failure.trap(ServiceUnavailable)
            self._dirty.update(ids)
            self._nodes_dirty = self._nodes_dirty or nodes
            # Changes are waiting that this process cannot see: the index is no
            # longer proven fresh until a full reload succeeds.
            self._synced = False
            self._schedule_retry(self._reload)

        def done(_):
            self._fetching = False
            self._unwatch()
            self._fetch()

        d.addCallbacks(fetched, failed)
        d.addBoth(done)
        d.addErrback(lambda f: log.failure("index refresh failed", f))

    def _fetch_rows(self, conn, ids, nodes):
        rows = {}
        if ids:
            for peer_id, record, signature, is_bootstrap, expires_at in conn.execute(
                "SELECT peer_id, record, signature, is_bootstrap, expires_at FROM peers"
                " WHERE peer_id = ANY(?)", (ids,)
            ):
                rows[peer_id] = (record, signature, is_bootstrap, expires_at)
        return rows, (self._bootstrap_nodes_on(conn) if nodes else None)

    def _schedule_retry(self, fn):
        if self._stopping.is_set() or (self._retry is not None and self._retry.active()):
            return
        self._retry = self.reactor.callLater(RECONNECT_SECONDS, fn)


def _wait_thread(reactor, thread, timeout=10.0):
    """A Deferred that fires once ``thread`` has ended (polled, never blocking)."""
    d = Deferred()
    deadline = reactor.seconds() + timeout

    def check():
        if thread is None or not thread.is_alive() or reactor.seconds() > deadline:
            d.callback(None)
        else:
            reactor.callLater(0.05, check)

    check()
    return d
