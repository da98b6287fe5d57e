"""RepoService: a peer's shared repos and its downloads.

* share(name, path): hash the directory off the reactor thread, build the
  hybrid torrent, seed it, then publish the repo summary in our signed record
  (a PEER_UPDATE).  A failure at any step undoes the earlier ones: nothing is
  half-published.  The built manifest is cached in the state directory, so a
  restart re-seeds without re-hashing when the files have not changed.
* get(name or infohash): find seeders in the local table (instant) or ask the
  network (PEER_REQUEST), download from all of them at once, then check every
  file's SHA-256 against the manifest digest in the seeders' signed records
  before calling the download good.  Seeders caught sending bad data, or
  whose record disagrees with what they serve, lose score; seeders are handed
  to libtorrent best score first (refused ones last), and each seeder's
  transfer rate of a good download counts towards its score.
"""

import hashlib
import itertools
import json
import os
import time
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from peernet.errors import BadRequest, Conflict, NotFound, PeernetError
from peernet.records import b64decode, b64encode
from peernet.torrent.repo import RepoFile, RepoManifest, _walk, build_repo, manifest_digest

log = Logger()
SHARES_FILE = "shares.json"


def torrent_address(host, port):
    return f"bittorrent://{host}:{port}"


def parse_torrent_address(address):
    """(host, port) of a ``bittorrent://HOST:PORT`` address, or None.

    HOST may be an IP address, a DNS name or a Tor ``<56 chars>.onion`` name.
    """
    try:
        parts = urlsplit(address)
        port = parts.port
    except (ValueError, TypeError, AttributeError):
        return None
    if parts.scheme != "bittorrent" or not parts.hostname or not port:
        return None
    return parts.hostname, port


def is_onion_host(host):
    return host.lower().endswith(".onion")


# -- manifest cache (blocking helpers, run in threads) ---------------------------------


def _stat_keys(root, files):
    keys = []
    for f in files:
        st = os.stat(os.path.join(root, *f.path.split("/")))
        keys.append([f.path, st.st_size, st.st_mtime_ns])
    return keys


def _save_cache(path, manifest):
    data = {
        "name": manifest.name, "root": manifest.root,
        "files": [list(f) for f in manifest.files], "total_size": manifest.total_size,
        "manifest": manifest.manifest, "torrent": b64encode(manifest.torrent),
        "btih": manifest.btih, "btmh": manifest.btmh,
        "stat": _stat_keys(manifest.root, manifest.files),
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


#: At most this many hashing progress reports a second (the last file always reports).
PROGRESS_INTERVAL = 0.1


def _count_files(root):
    """How many files build_repo will hash (a cheap directory walk; None if unreadable)."""
    try:
        return len(_walk(root)[0])
    except Exception:
        return None


def _load_or_build(cache_path, path, name, on_progress=None):
    """The cached manifest if the directory is unchanged; otherwise hash again.

    ``on_progress(files_done, files_total)`` (called in this thread; total may
    be None) reports the hashing, at most every PROGRESS_INTERVAL seconds.
    """
    root = os.path.abspath(path)
    try:
        with open(cache_path) as f:
            data = json.load(f)
        files = tuple(RepoFile(*row) for row in data["files"])
        if data["root"] == root and data["name"] == name and \
                _stat_keys(root, files) == data["stat"]:
            return RepoManifest(
                name=name, root=root, files=files, total_size=data["total_size"],
                manifest=data["manifest"], torrent=b64decode(data["torrent"], "torrent"),
                btih=data["btih"], btmh=data["btmh"]), False
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if on_progress is None:
        return build_repo(root, name), True
    total = _count_files(root) if os.path.isdir(root) else None
    state = {"done": 0, "last": 0.0}
    on_progress(0, total)

    def hashed(rel):
        state["done"] += 1
        now = time.monotonic()
        if state["done"] == total or now - state["last"] >= PROGRESS_INTERVAL:
            state["last"] = now
            on_progress(state["done"], total)

    manifest = build_repo(root, name, on_file_hashed=hashed)
    if state["done"] != total:  # the count was off (files came or went): the real one
        on_progress(state["done"], manifest.file_count)
    return manifest, True


def hash_files(root, paths):
    """[(path, size, sha256)] of the files under ``root`` (blocking)."""
    out = []
    for rel in paths:
        h = hashlib.sha256()
        size = 0
        with open(os.path.join(root, *rel.split("/")), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        out.append((rel, size, h.hexdigest()))
    return out


class DownloadJob:
    """What the control API shows about one download."""

    _ids = itertools.count(1)

    def __init__(self, summary, dest, seeders):
        self.id = next(self._ids)
        self.summary = summary
        self.dest = dest
        self.seeders = seeders  # {(host, port): peer_id}, best score first
        self.started_at = None
        self.state = "starting"
        self.progress = 0.0
        self.rate = 0
        self.error = None
        self.files = None
        self.download = None
        #: fires with the job when it ends (done, failed or cancelled)
        self.finished = defer.Deferred()

    def as_json(self):
        return {
            "id": self.id, "name": self.summary["name"], "btih": self.summary.get("btih"),
            "btmh": self.summary.get("btmh"), "dest": self.dest, "state": self.state,
            "progress": round(self.progress, 4), "rate": self.rate, "error": self.error,
            "seeders": len(self.seeders),
            "sources": len([a for a, n in (self.download.sources.items() if self.download else ())
                            if n > 0]),
            "files": [{"path": p, "size": s, "sha256": h} for p, s, h in self.files or ()],
        }


class RepoService(Service):
    def __init__(self, reactor, gossip, engine, state_dir, downloads_dir, initial_shares=None):
        self.reactor = reactor
        self.gossip = gossip
        self.engine = engine
        self.state_dir = state_dir
        self.cache_dir = os.path.join(state_dir, "repos")
        self.downloads_dir = downloads_dir
        self.shares = {}  # name -> (manifest, seed)
        self._pending = set()  # names being shared right now
        self.jobs = {}
        self.listeners = []  # callables(job) on download progress/state
        #: callables(dict) on share progress: {"name", "files_done", "files_total"
        #: (None if unknown), "state": "hashing"|"seeding"|"shared"|"failed"}
        #: ("error" when failed, "summary" when shared)
        self.share_listeners = []
        self.initial_shares = dict(initial_shares or {})
        #: None, or (with Tor) ``callable(host)`` -> Deferred of an IP address
        #: libtorrent can dial for ``host`` (peernet.tor maps .onion names).
        #: Without it, onion seeders are skipped: only Tor reaches them.
        self.map_host = None

    # -- life cycle -------------------------------------------------------------

    def startService(self):
        super().startService()
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        wanted = self._load_shares()
        wanted.update(self.initial_shares)  # --share wins over what was saved
        for name, path in wanted.items():
            d = self.share(name, path, persist=name in self.initial_shares)
            d.addErrback(lambda f, n=name: log.warn(
                "could not share {name} again: {error}", name=n, error=f.getErrorMessage()))

    def _load_shares(self):
        try:
            with open(os.path.join(self.state_dir, SHARES_FILE)) as f:
                data = json.load(f)
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_shares(self):
        data = {name: m.root for name, (m, _) in self.shares.items()}
        return deferToThread(_write_json, os.path.join(self.state_dir, SHARES_FILE), data)

    # -- sharing ----------------------------------------------------------------------

    def share(self, name, path, persist=True):
        """Share ``path`` as repo ``name``; Deferred of its summary."""
        return defer.ensureDeferred(self._share(name, path, persist))

    async def _share(self, name, path, persist):
        if name in self.shares or name in self._pending:
            raise Conflict(f"a repo named {name!r} is already shared; unshare it first",
                           code="repo_exists")
        self._pending.add(name)
        seed = None
        progress = {"name": name, "files_done": 0, "files_total": None, "state": "hashing"}

        def report(**changes):
            progress.update(changes)
            self._notify_share(dict(progress))

        def from_thread(done, total):
            self.reactor.callFromThread(report, files_done=done, files_total=total)

        try:
            cache = os.path.join(self.cache_dir, hashlib.sha256(name.encode()).hexdigest() + ".json")
            manifest, built = await deferToThread(_load_or_build, cache, path, name, from_thread)
            report(state="seeding", files_done=manifest.file_count,
                   files_total=manifest.file_count)
            seed = await self.engine.seed(manifest)
            if built:
                await deferToThread(_save_cache, cache, manifest)
            self.shares[name] = (manifest, seed)
            self._publish()
            if persist:
                await self._save_shares()
        except BaseException as e:
            self.shares.pop(name, None)
            if seed is not None:
                await defer.maybeDeferred(seed.remove).addErrback(lambda _: None)
                self._publish()
            report(state="failed", error=str(e) or type(e).__name__)
            raise
        finally:
            self._pending.discard(name)
        log.info("sharing {name} ({files} files, {size} bytes){how}", name=name,
                 files=manifest.file_count, size=manifest.total_size,
                 how="" if built else ", unchanged since last run")
        report(state="shared", summary=manifest.summary())
        return manifest.summary()

    def _notify_share(self, event):
        for listener in list(self.share_listeners):
            try:
                listener(event)
            except Exception:
                log.failure("a share listener raised")

    def unshare(self, name):
        return defer.ensureDeferred(self._unshare(name))

    async def _unshare(self, name):
        if name not in self.shares:
            raise NotFound(f"no shared repo is named {name!r}", code="no_such_repo")
        manifest, seed = self.shares.pop(name)
        self._publish()
        await seed.remove()
        await self._save_shares()
        return manifest.summary()

    def magnet(self, manifest):
        """A magnet link for a shared repo, naming this peer's BitTorrent
        address(es) as seeders (``x.pe``), or None when silent."""
        seeders = [parse_torrent_address(a) for a in self.gossip.core.own.record["addresses"]] \
            if self.gossip.core.broadcasting and self.gossip.core.own else []
        seeders = [s for s in seeders if s]
        return self.engine.magnet(manifest, seeders) if seeders else None

    def _publish(self):
        """Put the current repo summaries in our record (a PEER_UPDATE when broadcasting)."""
        self.gossip.set_repos([m.summary() for m, _ in self.shares.values()])

    # -- finding ------------------------------------------------------------------------

    def known_repos(self):
        """Repos in the local table: one row per (name, manifest) with its seeders."""
        now = self.reactor.seconds()
        rows = {}
        for entry in self.gossip.core.table.live_broadcasting():
            if entry.expires_at <= now:
                continue
            for repo in entry.record.get("repos", ()):
                key = (repo["name"], repo.get("manifest"), repo.get("btih"))
                row = rows.setdefault(key, {"repo": repo, "seeders": []})
                row["seeders"].append(entry.peer_id)
        return [dict(r["repo"], seeders=len(r["seeders"])) for r in rows.values()]

    def _sources(self, records, name=None, infohash=None):
        """(summary, {(host, port): peer_id}) of the best-supported copy of the repo."""
        groups = {}
        for record in records:
            addresses = [parse_torrent_address(a) for a in record.get("addresses", ())]
            addresses = [a for a in addresses
                         if a and (self.map_host is not None or not is_onion_host(a[0]))]
            for repo in record.get("repos", ()):
                if name is not None and repo["name"] != name:
                    continue
                if infohash is not None and infohash not in (repo.get("btih"), repo.get("btmh")):
                    continue
                if not (repo.get("btih") or repo.get("btmh")) or not addresses:
                    continue
                key = (repo["name"], repo.get("btih"), repo.get("btmh"), repo.get("manifest"))
                group = groups.setdefault(key, (repo, {}))
                for address in addresses:
                    group[1][address] = record["peer_id"]
        if not groups:
            return None, {}
        # Several copies under one name: take the one most seeders agree on,
        # then the one whose seeders score best.
        score = self.gossip.planner.score
        summary, seeders = max(groups.values(), key=lambda g: (
            len(set(g[1].values())), sum(score(p) for p in set(g[1].values()))))
        # libtorrent dials them in this order: best score first, a peer in
        # its cool-off last (still a source if nobody else has the repo).
        refused = self.gossip.planner.is_refused
        order = sorted(seeders.items(), key=lambda item: (refused(item[1]), -score(item[1])))
        return summary, dict(order)

    async def find(self, name=None, infohash=None, timeout=5.0):
        local = [e.record for e in self.gossip.core.table.live_broadcasting()]
        summary, seeders = self._sources(local, name, infohash)
        if summary is None and name is not None:
            found = await self.gossip.search(repo=name, timeout=timeout, local=False)
            summary, seeders = self._sources([r["record"] for r in found], name, infohash)
        return summary, seeders

    # -- downloading ---------------------------------------------------------------------

    def get(self, name=None, infohash=None, dest=None, timeout=5.0):
        """Start a download; Deferred of its DownloadJob (running)."""
        if (name is None) == (infohash is None):
            raise BadRequest("give a repo name or an infohash")
        return defer.ensureDeferred(self._get(name, infohash, dest, timeout))

    async def _get(self, name, infohash, dest, timeout):
        summary, seeders = await self.find(name, infohash, timeout)
        if summary is None:
            raise NotFound(f"nobody in reach shares {name or infohash}", code="no_seeders")
        dest = os.path.abspath(dest or self.downloads_dir)
        why = []
        seeders = await self._dialable(seeders, why)
        if not seeders:
            raise NotFound(f"no seeder of {name or infohash} can be reached: "
                           f"{why[-1] if why else 'tor mapped none of them'}",
                           code="no_seeders")
        job = DownloadJob(summary, dest, seeders)
        job.started_at = self.reactor.seconds()
        self.jobs[job.id] = job
        job.download = self.engine.download(summary, dest, peers=list(seeders))
        job.state = "downloading"
        job.download.on_progress(lambda p: self._progress(job, p))
        job.download.on_bad_peer(lambda ip, port, reason: self._bad_peer(job, (ip, port), reason))
        defer.ensureDeferred(self._finish(job))
        self._notify(job)
        return job

    async def _dialable(self, seeders, why=None):
        """``seeders`` keyed by addresses libtorrent can dial (``map_host``);
        the reason of each seeder left out is appended to ``why``."""
        if self.map_host is None:
            return seeders
        out = {}
        for (host, port), peer_id in seeders.items():
            try:
                ip = await self.map_host(host)
            except PeernetError as e:
                log.warn("cannot reach seeder {host}: {error}", host=host, error=str(e))
                if why is not None:
                    why.append(str(e))
                continue
            out[(ip, port)] = peer_id
        return out

    def _progress(self, job, progress):
        job.progress = progress.fraction
        job.rate = progress.rate
        self._notify(job)

    def _score_transfers(self, job):
        """Each seeder's mean payload rate over the download, for its score."""
        elapsed = max(self.reactor.seconds() - job.started_at, 1e-3)
        scores = self.gossip.planner.scores
        for address, nbytes in job.download.sources.items():
            peer_id = job.seeders.get(address)
            if peer_id is not None and nbytes > 0:
                scores.transfer(peer_id, nbytes, elapsed)

    def _bad_peer(self, job, address, reason):
        peer_id = job.seeders.get(address)
        log.warn("a seeder of {name} sent bad data ({reason}); its score drops",
                 name=job.summary["name"], reason=reason)
        if peer_id is not None:
            self.gossip.planner.record_bad_data(peer_id)

    async def _finish(self, job):
        try:
            root = await job.download.done
            metadata = await job.download.metadata
            job.state = "verifying"
            self._notify(job)
            paths = [p for p, _ in metadata["files"]]
            # Make sure every block libtorrent holds is on disk before hashing
            # (a correct download must never be called bad, nor its seeders).
            await self.engine.save_all_resume_data(flush=True, timeout=30)
            files = await deferToThread(hash_files, root, paths)
            expected = job.summary.get("manifest")
            if expected and manifest_digest(files) != expected:
                # One more look after a second flush before blaming anyone.
                await self.engine.save_all_resume_data(flush=True, timeout=30)
                files = await deferToThread(hash_files, root, paths)
            if expected and manifest_digest(files) != expected:
                for peer_id in set(job.seeders.values()):
                    self.gossip.planner.record_bad_data(peer_id, "bad_manifest")
                raise PeernetError(
                    "the downloaded files do not match the manifest in the seeders' signed "
                    "records; the data is not trusted", code="bad_manifest")
            job.files = files
            self._score_transfers(job)
            job.state = "done"
            job.progress = 1.0
            log.info("downloaded {name}: {n} files verified", name=job.summary["name"], n=len(files))
        except PeernetError as e:
            if job.state != "cancelled":
                job.state, job.error = "failed", str(e)
        except Exception as e:  # a bug: still a clean state for the user
            log.failure("download {id} failed unexpectedly", id=job.id)
            job.state, job.error = "failed", f"internal error: {e}"
        self._notify(job)
        # Fires with the job in every case; job.state says how it ended.
        job.finished.callback(job)

    def cancel(self, job_id):
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no download has id {job_id}", code="no_such_download")
        if job.state in ("done", "failed"):
            return defer.succeed(job)
        d = job.download.cancel()
        job.state = "cancelled"
        self._notify(job)
        return d.addCallback(lambda _: job)

    def _notify(self, job):
        for listener in list(self.listeners):
            try:
                listener(job)
            except Exception:
                log.failure("a download listener raised")


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)

