"""TorrentEngine: one in-process libtorrent session, seeding and downloading repos.

Threading rules (DESIGN.md §5):

* libtorrent runs its own threads.  Alerts reach the reactor through
  ``set_alert_fd``: libtorrent writes a byte to a pipe the reactor watches
  when its alert queue stops being empty, and the reactor drains the queue; a
  slow safety tick also drains it.  (``set_alert_notify`` with a Python
  callback deadlocks in the 2.1 bindings: libtorrent calls it holding its
  alert mutex, the callback needs the GIL, and a reactor-thread call that
  takes the same mutex holds the GIL; see _AlertPipe.)
* Only libtorrent's asynchronous calls are made on the reactor thread
  (``async_add_torrent``, ``save_resume_data``, ``post_torrent_updates``,
  ``post_status``, ``connect_peer``, ``remove_torrent``).  Creating and
  destroying the session, reading and writing resume files, and
  ``get_peer_info`` (its alert form has no Python converter) run in threads.
* Peers come only from the caller (gossip): DHT, LSD, UPnP, NAT-PMP, PEX and
  third-party STUN are off; uTP is off (TCP is far faster on loopback and LANs).

A torrent in the session is either a *seed* (a local repo, added with
`TorrentEngine.seed`) or a *download* (`TorrentEngine.download`).  Resume data
for every torrent is written to ``state_dir/torrents/`` periodically and at
stop, and loaded at start, so a restart neither re-hashes a seed nor starts a
partial download over.
"""

import errno
import os
import urllib.parse
from dataclasses import dataclass

import libtorrent as lt
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from peernet import constants
from peernet.errors import ConfigError, PeernetError
from peernet.torrent.repo import BLOCK_SIZE, RepoManifest

log = Logger()

# Timings live with the other protocol numbers in peernet/constants.py.
PROGRESS_INTERVAL = constants.TORRENT_PROGRESS_INTERVAL
SAFETY_DRAIN_INTERVAL = constants.TORRENT_SAFETY_DRAIN_INTERVAL
RESUME_SAVE_INTERVAL = constants.TORRENT_RESUME_SAVE_INTERVAL
STALL_TIMEOUT = constants.TORRENT_STALL_TIMEOUT
STOP_SAVE_TIMEOUT = constants.TORRENT_STOP_SAVE_TIMEOUT
#: Longest wait for libtorrent to confirm a finished download is on disk.
FLUSH_TIMEOUT = 10.0

RESUME_SUFFIX = ".resume"
ALERT_MASK = (
    lt.alert.category_t.error_notification
    | lt.alert.category_t.status_notification
    | lt.alert.category_t.storage_notification
    | lt.alert.category_t.peer_notification
    # One alert per 16 KiB block received, naming the peer: the only way to
    # know who sent what once connections close (seeds drop seeds at the end).
    | lt.alert.category_t.block_progress_notification
)

_STATE_NAMES = {
    lt.torrent_status.states.checking_files: "checking_files",
    lt.torrent_status.states.downloading_metadata: "downloading_metadata",
    lt.torrent_status.states.downloading: "downloading",
    lt.torrent_status.states.finished: "finished",
    lt.torrent_status.states.seeding: "seeding",
    lt.torrent_status.states.checking_resume_data: "checking_resume_data",
}


def session_settings(listen_interfaces, inbound=True):
    """The settings pack for a private overlay (see NOTES.md, libtorrent)."""
    settings = {
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "allow_multiple_connections_per_ip": True,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_tcp": bool(inbound),
        "enable_outgoing_tcp": True,
        "listen_interfaces": listen_interfaces if inbound else "",
        "alert_mask": int(ALERT_MASK),
        "alert_queue_size": 100000,
        # Our torrents are few and always active: no queueing of seeds.
        "active_limit": -1,
        "active_seeds": -1,
        "active_downloads": -1,
    }
    if "webtorrent_stun_server" in lt.default_settings():
        settings["webtorrent_stun_server"] = ""  # defaults to a public STUN server
    return settings


def _hexes(info_hashes):
    out = []
    if info_hashes.has_v1():
        out.append(str(info_hashes.v1))
    if info_hashes.has_v2():
        out.append(str(info_hashes.v2))
    return out


def _format_host(host):
    return f"[{host}]" if ":" in host else host


def magnet_uri(manifest, seeders=()):
    """A magnet link for ``manifest`` (a RepoManifest or its summary dict).

    Carries both infohashes (``btih`` for v1 clients such as WebTorrent,
    ``btmh`` for v2), the name, and ``x.pe=host:port`` for each seeder.
    """
    summary = manifest.summary() if isinstance(manifest, RepoManifest) else manifest
    parts = []
    if summary.get("btih"):
        parts.append("xt=urn:btih:" + summary["btih"])
    if summary.get("btmh"):
        parts.append("xt=urn:btmh:1220" + summary["btmh"])
    if not parts:
        raise PeernetError("a magnet link needs a btih or btmh infohash")
    if summary.get("name"):
        parts.append("dn=" + urllib.parse.quote(summary["name"], safe=""))
    for host, port in seeders:
        parts.append(f"x.pe={_format_host(host)}:{int(port)}")
    return "magnet:?" + "&".join(parts)


def torrent_metadata(info):
    """Name, size, file list and infohashes of a libtorrent torrent_info."""
    layout = info.layout()
    name = info.name()
    files = []
    for i in range(layout.num_files()):
        if layout.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        path = layout.file_path(i).replace(os.sep, "/")
        if path.startswith(name + "/"):
            path = path[len(name) + 1:]
        files.append((path, layout.file_size(i)))
    hashes = info.info_hashes()
    return {
        "name": name,
        "size": sum(size for _, size in files),
        "files": files,
        "btih": str(hashes.v1) if hashes.has_v1() else None,
        "btmh": str(hashes.v2) if hashes.has_v2() else None,
    }


class _Outcome:
    """A result many callers may wait for: each `wait()` gets its own Deferred,
    so an unobserved failure is never logged as an unhandled error."""

    def __init__(self):
        self._result = None
        self._waiters = []

    @property
    def fired(self):
        return self._result is not None

    @property
    def succeeded(self):
        return self._result is not None and self._result[0]

    def wait(self):
        d = defer.Deferred()
        if self._result is None:
            self._waiters.append(d)
        else:
            self._fire_one(d)
        return d

    def _fire_one(self, d):
        ok, value = self._result
        if ok:
            d.callback(value)
        else:
            d.errback(Failure(value))

    def succeed(self, value):
        if self._result is None:
            self._result = (True, value)
            self._flush()

    def fail(self, exc):
        if self._result is None:
            self._result = (False, exc)
            self._flush()

    def _flush(self):
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire_one(d)


@dataclass(frozen=True)
class Progress:
    """A download's progress, as given to `Download.on_progress` callbacks."""

    fraction: float  # of the wanted bytes, verified
    rate: int  # payload bytes/s received
    peers: int  # connected peers
    done: int  # verified bytes
    total: int  # wanted bytes (0 before metadata)
    state: str


class _Torrent:
    """Engine-side state of one torrent in the session."""

    def __init__(self, kind, save_path):
        self.kind = kind  # "seed" or "download"
        self.save_path = save_path
        self.handle = None
        self.keys = set()
        self.name = None
        self.added = _Outcome()
        self.removed = _Outcome()
        self.download = None
        self.resume_path = None
        self.resume_waiters = []
        self.states = []
        self.status = None
        self.info = None  # torrent_info once metadata is known
        self.peer_addresses = set()
        self.polling_peers = False
        self.last_write = defer.succeed(None)


class Download:
    """A repo being downloaded.

    * ``metadata`` (Deferred, new each access) fires with the torrent's
      `torrent_metadata` dict once known (at once for a .torrent; from the
      peers via ut_metadata for an infohash or magnet);
    * ``done`` (Deferred, new each access) fires with the repo's directory
      (``save_path/name``) once every piece is downloaded and verified, or
      fails with PeernetError (disk full, stalled, cancelled, ...);
    * ``on_progress(cb)``: ``cb(Progress)`` about every PROGRESS_INTERVAL;
    * ``on_bad_peer(cb)``: ``cb(ip, port, reason)`` once per peer caught
      sending data that failed a hash check (libtorrent also bans it);
    * ``sources``: {(ip, port): payload bytes received from that peer}, counted
      in 16 KiB blocks (so a file's short last block counts as a whole one).
    """

    def __init__(self, engine, torrent, peers, stalled_after):
        self._engine = engine
        self._torrent = torrent
        self.save_path = torrent.save_path
        self.peers = []
        self.stalled_after = stalled_after
        self._metadata = _Outcome()
        self._done = _Outcome()
        self._flushing = None  # the FLUSH_TIMEOUT call while a flush is awaited
        self._progress_cbs = []
        self._bad_peer_cbs = []
        self.progress = None
        self.sources = {}
        self.bad_peers = {}
        self.hashfail_peers = set()
        self.hash_failures = 0
        self.states = torrent.states
        self._last_payload = -1
        self._last_data_at = engine.reactor.seconds()
        self.add_peers(peers)

    # -- public ---------------------------------------------------------------------

    @property
    def metadata(self):
        return self._metadata.wait()

    @property
    def done(self):
        return self._done.wait()

    @property
    def finished(self):
        """True once every piece is downloaded and verified (not on failure)."""
        return self._done.succeeded

    @property
    def name(self):
        return self._torrent.name

    @property
    def infohashes(self):
        return sorted(self._torrent.keys)

    def on_progress(self, callback):
        self._progress_cbs.append(callback)

    def on_bad_peer(self, callback):
        self._bad_peer_cbs.append(callback)

    def add_peers(self, peers):
        """Connect to more seeders (``[(host, port), ...]``); each one is dialled now."""
        for host, port in peers:
            peer = (str(host), int(port))
            if peer not in self.peers:
                self.peers.append(peer)
            self._torrent.peer_addresses.add(peer)
            if self._torrent.handle is not None and self._torrent.handle.is_valid():
                self._torrent.handle.connect_peer(peer)

    def cancel(self, delete_files=False):
        """Stop and remove the download; ``done`` fails with code ``cancelled``."""
        self._fail(PeernetError("the download was cancelled", code="cancelled"))
        return self._engine._remove_torrent(self._torrent, delete_files)

    # -- driven by the engine ---------------------------------------------------------

    def _got_metadata(self, info):
        self._metadata.succeed(torrent_metadata(info))

    def _status(self, st):
        now = self._engine.reactor.seconds()
        if st.total_payload_download != self._last_payload:
            if st.total_payload_download > self._last_payload >= 0:
                self._last_data_at = now
            self._last_payload = st.total_payload_download
        if st.is_finished or st.is_seeding:
            self._last_data_at = now
        self.progress = Progress(
            # Clamped: libtorrent's own progress can exceed 1 while the
            # wanted size is still being worked out.
            fraction=(min(1.0, st.total_wanted_done / st.total_wanted) if st.total_wanted > 0
                      else (1.0 if st.is_finished else 0.0)),
            rate=st.download_payload_rate,
            peers=st.num_peers,
            done=st.total_wanted_done,
            total=st.total_wanted,
            state=_STATE_NAMES.get(st.state, str(st.state)),
        )
        for cb in list(self._progress_cbs):
            cb(self.progress)

    def _check_stalled(self, now):
        if self._done.fired or not self.stalled_after:
            return
        if now - self._last_data_at > self.stalled_after:
            self._fail(PeernetError(
                f"no seeder has sent data for {self.stalled_after:g} s", code="stalled"))
            self._engine._remove_torrent(self._torrent, False)

    def _peer_info(self, peers):
        # num_hashfails counts every peer that contributed a block to a piece
        # that failed, so with several seeders it also names the innocent
        # ones: it is kept for diagnosis only.  libtorrent's smart-ban, which
        # re-downloads and compares blocks, names the culprit (peer_ban_alert,
        # _on_peer_ban), and only that lowers a peer's score.
        self.hashfail_peers = {(p.ip[0], p.ip[1]) for p in peers if p.num_hashfails}

    def _bad_peer(self, ep, reason):
        if ep in self.bad_peers:
            return
        self.bad_peers[ep] = reason
        log.warn("peer {ip}:{port} {reason} for {name}", ip=ep[0], port=ep[1], reason=reason,
                 name=self.name)
        for cb in list(self._bad_peer_cbs):
            cb(ep[0], ep[1], reason)

    def _finished(self):
        """Every wanted piece is downloaded and has passed its hash check.

        libtorrent hashes blocks as they arrive, before its disk threads have
        written them all: the last blocks may still be in flight when it says
        "finished", and reading the files at once (SHA-256 checks) would see
        holes.  So ``done`` waits for a cache flush (a fence behind every
        pending write: cache_flushed_alert), or FLUSH_TIMEOUT at worst.
        """
        if self._done.fired or self._flushing is not None:
            return
        handle = self._torrent.handle
        if handle is None or not handle.is_valid():
            self._complete()
            return
        self._flushing = self._engine.reactor.callLater(FLUSH_TIMEOUT, self._flush_timed_out)
        handle.flush_cache()

    def _flushed(self):
        if self._flushing is None:
            return
        if self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        self._complete()

    def _flush_timed_out(self):
        self._flushing = None
        log.warn("libtorrent did not confirm writing {name} within {t:g} s; "
                 "its files are checked anyway", name=self.name, t=FLUSH_TIMEOUT)
        self._complete()

    def _complete(self):
        self._done.succeed(os.path.join(self.save_path, self._torrent.name))

    def _fail(self, exc):
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        self._metadata.fail(exc)
        self._done.fail(exc)


class Seed:
    """A local repo being seeded."""

    def __init__(self, engine, torrent):
        self._engine = engine
        self._torrent = torrent

    @property
    def name(self):
        return self._torrent.name

    @property
    def save_path(self):
        return self._torrent.save_path

    @property
    def infohashes(self):
        return sorted(self._torrent.keys)

    @property
    def states(self):
        return self._torrent.states

    @property
    def status(self):
        """The last libtorrent torrent_status seen (None before the first update)."""
        return self._torrent.status

    def set_upload_limit(self, rate):
        """Cap this seed's upload in bytes/s (0: no cap)."""
        self._torrent.handle.set_upload_limit(int(rate))

    def remove(self):
        return self._engine._remove_torrent(self._torrent, False)


@implementer(IReadDescriptor)
class _AlertPipe:
    """The read end of the pipe libtorrent signals new alerts on.

    No Python code ever runs on a libtorrent thread: libtorrent only
    write()s one byte to the (non-blocking) write end.
    """

    def __init__(self, on_alerts):
        self._on_alerts = on_alerts
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def fileno(self):
        return self.read_fd

    def doRead(self):
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._on_alerts()

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "libtorrent-alerts"

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def rate_limit_every_peer(session):
    """Put every peer address in libtorrent's global peer class.

    By default libtorrent puts peers on the local network (loopback, 10/8,
    172.16/12, 192.168/16 and their IPv6 kin) in its *local* class, which the
    session's rate limits do not apply to; ``--upload-limit`` is a cap on all
    BitTorrent upload, a LAN neighbour's included."""
    every = lt.ip_filter()
    everyone = 1 << lt.session.global_peer_class_id
    every.add_rule("0.0.0.0", "255.255.255.255", everyone)
    every.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
    session.set_peer_class_filter(every)


class TorrentEngine(Service):
    """A Twisted service owning one libtorrent session.

    ``listen_interfaces`` is libtorrent's syntax (``"127.0.0.11:0"``,
    ``"0.0.0.0:6881,[::]:6881"``).  With ``inbound=False`` (a silent peer) the
    session opens no listening socket at all: it only dials out.
    """

    def __init__(self, reactor, state_dir, *, listen_interfaces=None, inbound=True,
                 settings=None):
        if not inbound and listen_interfaces:
            raise ConfigError("a silent peer (no inbound connections) cannot listen on "
                              f"{listen_interfaces}")
        self.reactor = reactor
        self.state_dir = os.path.abspath(state_dir)
        self.resume_dir = os.path.join(self.state_dir, "torrents")
        self.inbound = inbound
        self.listen_interfaces = (listen_interfaces or "0.0.0.0:0,[::]:0") if inbound else ""
        self._extra_settings = dict(settings or {})
        self._session = None
        self._alert_pipe = None
        self._ready = _Outcome()
        self._listen_port = 0
        self._torrents = {}  # hex infohash (v1 and v2) -> _Torrent
        self._by_handle = {}
        self._pending_adds = []
        self._writes = set()
        self._stopping = False
        self._progress_loop = LoopingCall(self._progress_tick)
        self._drain_loop = LoopingCall(self._drain)
        self._resume_loop = LoopingCall(self.save_all_resume_data, only_if_modified=True)
        self._handlers = {
            lt.add_torrent_alert: self._on_add_torrent,
            lt.listen_succeeded_alert: self._on_listen_succeeded,
            lt.listen_failed_alert: self._on_listen_failed,
            lt.state_update_alert: self._on_state_update,
            lt.state_changed_alert: self._on_state_changed,
            lt.metadata_received_alert: self._on_metadata_received,
            lt.torrent_finished_alert: self._on_torrent_finished,
            lt.cache_flushed_alert: self._on_cache_flushed,
            lt.save_resume_data_alert: self._on_save_resume_data,
            lt.save_resume_data_failed_alert: self._on_save_resume_data_failed,
            lt.hash_failed_alert: self._on_hash_failed,
            lt.peer_ban_alert: self._on_peer_ban,
            lt.block_finished_alert: self._on_block_finished,
            lt.file_error_alert: self._on_file_error,
            lt.torrent_error_alert: self._on_torrent_error,
            lt.torrent_removed_alert: self._on_torrent_removed,
            lt.session_stats_alert: self._on_session_stats,
        }
        self._stats_waiters = []

    def add_settings(self, settings):
        """More session settings, applied at start (e.g. Tor's SOCKS5 proxy, set
        by peernet.tor once tor is ready); only before the service starts."""
        if self.running:
            raise PeernetError("session settings can only be added before the engine starts")
        self._extra_settings.update(settings)

    # -- life cycle -----------------------------------------------------------------

    def startService(self):
        super().startService()
        defer.ensureDeferred(self._start()).addErrback(self._start_failed)

    def _start_failed(self, failure):
        log.failure("torrent engine failed to start", failure)
        self._ready.fail(failure.value)

    @property
    def ready(self):
        """Fires once the session listens and saved torrents are back."""
        return self._ready.wait()

    async def _start(self):
        settings = session_settings(self.listen_interfaces, self.inbound)
        settings.update(self._extra_settings)
        session, saved = await deferToThread(self._open, settings)
        self._session = session
        self._alert_pipe = _AlertPipe(self._drain)
        self.reactor.addReader(self._alert_pipe)
        session.set_alert_fd(self._alert_pipe.write_fd)
        self._drain_loop.start(SAFETY_DRAIN_INTERVAL, now=False)
        self._progress_loop.start(PROGRESS_INTERVAL, now=False)
        self._resume_loop.start(RESUME_SAVE_INTERVAL, now=False)
        self._drain()
        waits = []
        for path, params in saved:
            kind = "seed" if params.flags & lt.torrent_flags.seed_mode or _is_complete(
                params) else "download"
            torrent = _Torrent(kind, params.save_path)
            torrent.resume_path = path
            waits.append(self._add(params, torrent))
        results = await defer.DeferredList(waits, consumeErrors=True)
        for ok, value in results:
            if not ok:
                log.warn("could not restore a saved torrent: {err}", err=value.value)
        if self.inbound and not self._listen_port:
            self._listen_waiter = _Outcome()
            await self._listen_waiter.wait()
        log.info("torrent engine ready: {n} saved torrent(s), listening on {port}",
                 n=len(saved), port=self._listen_port or "nothing (silent)")
        self._ready.succeed(self)

    def _open(self, settings):
        """Thread: create the session and read saved resume files."""
        os.makedirs(self.resume_dir, exist_ok=True)
        session = lt.session(settings)
        rate_limit_every_peer(session)
        saved = []
        for entry in sorted(os.listdir(self.resume_dir)):
            if not entry.endswith(RESUME_SUFFIX):
                continue
            path = os.path.join(self.resume_dir, entry)
            try:
                with open(path, "rb") as f:
                    params = lt.read_resume_data(f.read())
            except Exception as err:  # noqa: BLE001 - a bad file must not stop the peer
                log.warn("ignoring unreadable resume file {path}: {err}", path=path, err=err)
                continue
            saved.append((path, params))
        return session, saved

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        self._stopping = True
        for loop in (self._progress_loop, self._drain_loop, self._resume_loop):
            if loop.running:
                loop.stop()
        if self._session is None:
            return
        for t in self._all_torrents():
            if t.download is not None:
                t.download._fail(PeernetError("the torrent engine stopped", code="stopped"))
        try:
            await self.save_all_resume_data(timeout=STOP_SAVE_TIMEOUT, flush=True)
        except Exception:  # noqa: BLE001
            log.failure("saving resume data at stop failed")
        if self._writes:
            await defer.DeferredList(list(self._writes), consumeErrors=True)
        session, self._session = self._session, None
        self.reactor.removeReader(self._alert_pipe)
        session.pause()
        box = [session]
        del session
        # The session's destructor joins libtorrent's threads: not on the reactor.
        await deferToThread(box.clear)
        self._alert_pipe.close()

    # -- alerts ---------------------------------------------------------------------

    def _drain(self):
        if self._session is None:
            return
        for alert in self._session.pop_alerts():
            handler = self._handlers.get(type(alert))
            if handler is None:
                if alert.category() & lt.alert.category_t.error_notification:
                    log.debug("libtorrent: {msg}", msg=alert.message())
                continue
            try:
                handler(alert)
            except Exception:  # noqa: BLE001 - one bad alert must not stop the rest
                log.failure("handling {alert}", alert=type(alert).__name__)

    def session_counters(self, timeout=2.0):
        """Deferred of libtorrent's session counters ({name: value}, e.g.
        ``net.sent_payload_bytes``), or None when the session is not running.

        For metrics: asked with post_session_stats, answered by an alert, so
        the reactor never waits on libtorrent's network thread.
        """
        if self._session is None or self._stopping:
            return defer.succeed(None)
        d = defer.Deferred()
        self._stats_waiters.append(d)
        if len(self._stats_waiters) == 1:
            self._session.post_session_stats()
        timer = self.reactor.callLater(timeout, self._stats_timeout, d)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _stats_timeout(self, d):
        if d in self._stats_waiters:
            self._stats_waiters.remove(d)
            d.callback(None)

    def _on_session_stats(self, alert):
        waiters, self._stats_waiters = self._stats_waiters, []
        values = dict(alert.values)
        for d in waiters:
            d.callback(values)

    def _torrent_for(self, handle):
        t = self._by_handle.get(handle)
        if t is None and handle.is_valid():
            for key in _hexes(handle.info_hashes()):
                t = self._torrents.get(key)
                if t is not None:
                    break
        return t

    def _on_listen_succeeded(self, alert):
        if alert.socket_type == lt.socket_type_t.tcp and not self._listen_port:
            self._listen_port = alert.port
            waiter = getattr(self, "_listen_waiter", None)
            if waiter is not None:
                waiter.succeed(alert.port)

    def _on_listen_failed(self, alert):
        err = PeernetError(f"libtorrent cannot listen: {alert.message()}", code="listen_failed")
        waiter = getattr(self, "_listen_waiter", None)
        if waiter is not None:
            waiter.fail(err)
        else:
            log.error("{err}", err=err)

    def _on_add_torrent(self, alert):
        params = alert.params
        hashes = params.ti.info_hashes() if params.ti is not None else params.info_hashes
        keys = set(_hexes(hashes))
        torrent = None
        for i, pending in enumerate(self._pending_adds):
            if pending.keys & keys:
                torrent = self._pending_adds.pop(i)
                break
        if torrent is None:
            return
        if alert.error.value():
            torrent.added.fail(PeernetError(
                f"libtorrent refused the torrent: {alert.error.message()}", code="torrent_add"))
            return
        handle = alert.handle
        torrent.handle = handle
        torrent.name = torrent.name or params.name or (
            params.ti.name() if params.ti is not None else None)
        if params.ti is not None:
            torrent.info = params.ti
        self._by_handle[handle] = torrent
        self._index(torrent, keys)
        for peer in torrent.peer_addresses:
            handle.connect_peer(peer)
        torrent.added.succeed(torrent)

    def _index(self, torrent, keys):
        torrent.keys |= set(keys)
        for key in torrent.keys:
            self._torrents[key] = torrent

    def _on_state_changed(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None:
            t.states.append(_STATE_NAMES.get(alert.state, str(alert.state)))
            if t.download is not None and alert.state in (
                    lt.torrent_status.states.finished, lt.torrent_status.states.seeding):
                t.download._finished()

    def _on_state_update(self, alert):
        for st in alert.status:
            t = self._torrent_for(st.handle)
            if t is None:
                continue
            t.status = st
            if t.download is not None:
                t.download._status(st)
                if st.is_finished or st.is_seeding:
                    t.download._finished()

    def _on_metadata_received(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None:
            # The torrent_info comes back with the resume data (asynchronously),
            # which is worth saving now anyway: a restart need not fetch it again.
            alert.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)

    def _on_torrent_finished(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None:
            if t.download is not None:
                t.download._finished()
            alert.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)

    def _on_cache_flushed(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None and t.download is not None:
            t.download._flushed()

    def _on_hash_failed(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None and t.download is not None:
            t.download.hash_failures += 1
            self._poll_peers(t)  # find who: peer_info.num_hashfails

    def _on_block_finished(self, alert):
        t = self._by_handle.get(alert.handle)
        if t is not None and t.download is not None:
            ep = alert.endpoint
            t.download.sources[(ep[0], ep[1])] = (
                t.download.sources.get((ep[0], ep[1]), 0) + BLOCK_SIZE)

    def _on_peer_ban(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None and t.download is not None:
            ep = alert.endpoint if alert.endpoint else alert.ip
            t.download._bad_peer((ep[0], ep[1]), "was banned for sending corrupt data")

    def _poll_peers(self, t):
        """Feed the download a snapshot of its peers.

        peer_info_alert.peer_info has no Python converter in the 2.1 bindings,
        so the (synchronous) get_peer_info runs in a thread instead.
        """
        handle = t.handle
        if handle is None or not handle.is_valid() or t.download is None or t.polling_peers:
            return
        t.polling_peers = True

        def got(peers):
            t.polling_peers = False
            if t.download is not None:
                t.download._peer_info(peers)

        def failed(f):
            t.polling_peers = False
            log.debug("get_peer_info failed: {err}", err=f.getErrorMessage())

        deferToThread(handle.get_peer_info).addCallbacks(got, failed)

    def _on_file_error(self, alert):
        t = self._torrent_for(alert.handle)
        if t is None:
            return
        code = alert.error.value()
        detail = alert.error.message()
        if code == errno.ENOSPC or code == errno.EDQUOT or "space" in detail.lower():
            err = PeernetError(
                f"not enough disk space in {t.save_path} to download {t.name}: {detail}",
                code="disk_full")
        else:
            err = PeernetError(f"disk error on {alert.filename()}: {detail}", code="disk_error")
        self._torrent_failed(t, err)

    def _on_torrent_error(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None and alert.error.value():
            self._torrent_failed(t, PeernetError(
                f"torrent {t.name} stopped on an error: {alert.error.message()}",
                code="torrent_error"))

    def _torrent_failed(self, t, err):
        log.error("{name}: {err}", name=t.name, err=err.message)
        if t.download is not None and not t.download._done.fired:
            t.download._fail(err)
            self._remove_torrent(t, False)

    def _on_torrent_removed(self, alert):
        t = self._by_handle.pop(alert.handle, None)
        if t is None:
            for key in _hexes(alert.info_hashes):
                t = self._torrents.get(key)
                if t is not None:
                    break
        if t is None:
            return
        for key in t.keys:
            if self._torrents.get(key) is t:
                del self._torrents[key]
        t.removed.succeed(None)

    # -- resume data ------------------------------------------------------------------

    def save_all_resume_data(self, only_if_modified=False, timeout=None, flush=False):
        """Ask libtorrent for every torrent's resume data and write it (off-thread).

        Returns a Deferred that fires once each torrent's data is written or
        declined (``only_if_modified``: unchanged torrents are skipped).
        """
        if self._session is None:
            return defer.succeed(None)
        flags = lt.save_resume_flags_t.save_info_dict
        if only_if_modified:
            flags |= lt.save_resume_flags_t.only_if_modified
        if flush:
            flags |= lt.save_resume_flags_t.flush_disk_cache
        waits = []
        for t in self._all_torrents():
            if t.handle is None or not t.handle.is_valid():
                continue
            d = defer.Deferred()
            t.resume_waiters.append(d)
            if timeout:
                d.addTimeout(timeout, self.reactor)
            t.handle.save_resume_data(flags)
            waits.append(d)
        return defer.DeferredList(waits, consumeErrors=True)

    def _on_save_resume_data(self, alert):
        t = self._torrent_for(alert.handle)
        if t is None:
            return
        params = alert.params
        if t.download is not None and params.ti is not None and t.info is None:
            t.info = params.ti
            t.name = params.ti.name()
            self._index(t, _hexes(params.ti.info_hashes()))
        if t.download is not None and t.info is not None:
            t.download._got_metadata(t.info)
        # Resume data would list the peers this torrent knew, a silent
        # downloader's address among them: never write any peer to disk
        # (seeders come from gossip on every start anyway).
        params.peers = []
        params.banned_peers = []
        try:
            data = lt.write_resume_data_buf(params)
        except Exception as err:  # noqa: BLE001
            log.warn("cannot encode resume data for {name}: {err}", name=t.name, err=err)
            self._resume_done(t)
            return
        name = sorted(t.keys, key=len)[0] + RESUME_SUFFIX  # btih when there is one
        path = os.path.join(self.resume_dir, name)
        old, t.resume_path = t.resume_path, path
        stale = old if old != path else None
        # One write at a time per torrent, in the order libtorrent produced them.
        previous = t.last_write
        d = defer.Deferred()
        t.last_write = d
        self._writes.add(d)

        def write(_):
            return deferToThread(_write_atomically, path, data, stale)

        def written(result):
            self._writes.discard(d)
            self._resume_done(t)
            if isinstance(result, Failure):
                log.failure("writing resume data to {path}", result, path=path)
            d.callback(None)

        previous.addBoth(write).addBoth(written)

    def _on_save_resume_data_failed(self, alert):
        t = self._torrent_for(alert.handle)
        if t is not None:
            self._resume_done(t)

    def _resume_done(self, t):
        waiters, t.resume_waiters = t.resume_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    # -- periodic ---------------------------------------------------------------------

    def _progress_tick(self):
        if self._session is None:
            return
        now = self.reactor.seconds()
        active = False
        for t in self._all_torrents():
            dl = t.download
            if dl is None or dl._done.fired:
                continue
            active = True
            self._poll_peers(t)
            dl._check_stalled(now)
        if active:
            self._session.post_torrent_updates()

    def _all_torrents(self):
        seen = []
        for t in self._torrents.values():
            if t not in seen:
                seen.append(t)
        for t in self._pending_adds:
            if t not in seen:
                seen.append(t)
        return seen

    # -- adding and removing ----------------------------------------------------------

    def _add(self, params, torrent):
        """async_add_torrent; the Deferred fires with the _Torrent on add_torrent_alert."""
        params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        params.flags |= lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd
        # No PEX: a silent peer's address must not be passed around by others.
        params.flags |= lt.torrent_flags.disable_pex
        hashes = params.ti.info_hashes() if params.ti is not None else params.info_hashes
        torrent.keys = set(_hexes(hashes))
        if params.ti is not None:
            torrent.info = params.ti
            torrent.name = params.ti.name()
        elif params.name:
            torrent.name = params.name
        self._pending_adds.append(torrent)
        self._session.async_add_torrent(params)
        return torrent.added.wait()

    def _find(self, keys):
        for key in keys:
            t = self._torrents.get(key)
            if t is not None:
                return t
        for t in self._pending_adds:
            if t.keys & set(keys):
                return t
        return None

    def _remove_torrent(self, torrent, delete_files):
        if torrent.handle is None or self._session is None:
            return defer.succeed(None)
        flags = lt.session.delete_files if delete_files else 0
        if torrent.handle.is_valid():
            self._session.remove_torrent(torrent.handle, flags)
        d = torrent.removed.wait()
        if torrent.resume_path:
            path, torrent.resume_path = torrent.resume_path, None
            d.addCallback(lambda _: deferToThread(_unlink_quietly, path))
        return d

    def seed(self, manifest, *, upload_limit=0, check=False):
        """Seed a built repo (`RepoManifest`) from where it lies; Deferred of a `Seed`.

        By default the torrent is added in seed mode: libtorrent trusts the
        files (just hashed by `build_repo`) and verifies each piece the first
        time a peer asks for it, rechecking everything if one fails.  With
        ``check=True`` it hashes every file first instead.  ``upload_limit``
        caps this torrent's upload in bytes/s.
        """
        return defer.ensureDeferred(self._seed(manifest, upload_limit, check))

    async def _seed(self, manifest, upload_limit, check):
        await self.ready
        existing = self._find([manifest.btih, manifest.btmh])
        save_path = os.path.dirname(manifest.root)
        if existing is not None:
            await existing.added.wait()
            if existing.kind == "seed" or existing.save_path == save_path:
                existing.kind = "seed"
                return Seed(self, existing)
            raise PeernetError(f"repo {manifest.name} is already being downloaded to "
                               f"{existing.save_path}", code="conflict")
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(manifest.torrent)
        params.save_path = save_path
        dirname = os.path.basename(manifest.root)
        if dirname != manifest.name:
            layout = params.ti.layout()
            prefix = manifest.name + "/"
            renamed = {}
            for i in range(layout.num_files()):
                path = layout.file_path(i).replace(os.sep, "/")
                if path.startswith(prefix):
                    renamed[i] = os.path.join(dirname, *path[len(prefix):].split("/"))
            params.renamed_files = renamed
        if not check:
            params.flags |= lt.torrent_flags.seed_mode
        if upload_limit:
            params.upload_limit = int(upload_limit)
        torrent = _Torrent("seed", save_path)
        await self._add(params, torrent)
        log.info("seeding {name} ({btih})", name=manifest.name, btih=manifest.btih)
        return Seed(self, torrent)

    def download(self, source, save_path, peers=(), *, stalled_after=STALL_TIMEOUT):
        """Start downloading a repo into ``save_path``; returns a `Download` at once.

        ``source``: the .torrent bytes, a magnet URI, a hex infohash (btih or
        btmh), a `RepoManifest`, or a repo summary dict with ``btih``/``btmh``
        (and ``name``).  ``peers``: seeders as ``[(host, port), ...]``, all
        dialled at once.  If the torrent is already in the session (restored
        at start), the download continues from where it was.
        """
        params = _params_for(source)
        params.save_path = os.path.abspath(save_path)
        hashes = params.ti.info_hashes() if params.ti is not None else params.info_hashes
        keys = _hexes(hashes)
        if not keys:
            raise PeernetError("the download names no infohash", code="bad_request")
        existing = self._find(keys)
        if existing is not None and existing.download is not None and not \
                existing.download._done.fired:
            existing.download.add_peers(peers)
            return existing.download
        torrent = existing or _Torrent("download", params.save_path)
        if existing is not None and existing.save_path != params.save_path:
            finished = existing.download is not None and existing.download.finished
            where = "is already downloaded in" if finished or existing.kind == "seed" \
                else "is already being downloaded to"
            raise PeernetError(f"repo {existing.name} {where} {existing.save_path}; "
                               "use that copy (one repo lives in one place per peer)",
                               code="conflict")
        dl = Download(self, torrent, peers, stalled_after)
        torrent.download = dl
        if params.ti is not None:
            dl._got_metadata(params.ti)
        defer.ensureDeferred(self._start_download(params, torrent, existing)).addErrback(
            lambda f: dl._fail(f.value if isinstance(f.value, PeernetError) else PeernetError(
                f"the download could not start: {f.getErrorMessage()}", code="torrent_add")))
        return dl

    async def _start_download(self, params, torrent, existing):
        await self.ready
        if existing is None:
            await deferToThread(os.makedirs, params.save_path, exist_ok=True)
            # Seeders handed over with the torrent are dialled at once;
            # connect_peer() after the add waits for libtorrent's next tick
            # (up to 500 ms before the first byte).
            given = [tuple(p) for p in params.peers]  # e.g. x.pe of a magnet link
            params.peers = given + [p for p in sorted(torrent.peer_addresses) if p not in given]
            await self._add(params, torrent)
        else:
            await existing.added.wait()
            if existing.info is not None:
                torrent.download._got_metadata(existing.info)
        for peer in torrent.peer_addresses:
            torrent.handle.connect_peer(peer)
        torrent.handle.post_status()  # finished already? state_update_alert tells
        self._session.post_torrent_updates()

    def remove(self, infohash, delete_files=False):
        """Remove the torrent with this btih or btmh; Deferred fires once removed."""
        t = self._find([str(infohash).lower()])
        if t is None:
            return defer.fail(PeernetError(f"no torrent {infohash} here", code="not_found"))
        if t.download is not None:
            t.download._fail(PeernetError("the download was removed", code="cancelled"))
        return self._remove_torrent(t, delete_files)

    def magnet(self, manifest, seeders=()):
        """See `magnet_uri`."""
        return magnet_uri(manifest, seeders)

    def listen_port(self):
        """The TCP port libtorrent listens on (0 for a silent peer or before ready)."""
        return self._listen_port

    def torrents(self):
        """A summary of every torrent in the session, for status pages."""
        out = []
        for t in self._all_torrents():
            st = t.status
            out.append({
                "name": t.name,
                "kind": t.kind,
                "infohashes": sorted(t.keys),
                "save_path": t.save_path,
                "state": _STATE_NAMES.get(st.state, str(st.state)) if st else None,
                "progress": st.progress if st else None,
            })
        return out


def _is_complete(params):
    pieces = params.have_pieces
    return bool(pieces) and all(pieces)


def _params_for(source):
    if isinstance(source, RepoManifest):
        source = source.torrent
    if isinstance(source, (bytes, bytearray)):
        params = lt.add_torrent_params()
        try:
            params.ti = lt.torrent_info(bytes(source))
        except RuntimeError as err:
            raise PeernetError(f"not a valid torrent file: {err}", code="bad_request") from None
        return params
    if isinstance(source, dict):
        source = magnet_uri(source)
    if isinstance(source, str):
        text = source.strip().lower()
        if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text):
            source = magnet_uri({"btih" if len(text) == 40 else "btmh": text})
        if not source.startswith("magnet:"):
            raise PeernetError("a download source must be a torrent, a magnet link or an "
                               "infohash", code="bad_request")
        try:
            return lt.parse_magnet_uri(source)
        except RuntimeError as err:
            raise PeernetError(f"not a valid magnet link: {err}", code="bad_request") from None
    raise PeernetError("a download source must be a torrent, a magnet link or an infohash",
                       code="bad_request")


def _write_atomically(path, data, old=None):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if old:
        _unlink_quietly(old)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
