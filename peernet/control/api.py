"""The peer's local control API (JSON over HTTP on loopback, token required).

A first set of endpoints for scripts and tests; the `peernet` command line and
the dashboard build on it.  Every call needs ``Authorization: Bearer TOKEN``,
where TOKEN is in ``<state-dir>/control.token`` (mode 0600), or the
dashboard's session cookie (set by ``/login``, see peernet.web); a POST
authenticated by that cookie must also carry ``X-Peernet: 1`` (a cross-site
form cannot send a custom header: CSRF protection).  Nothing served
here ever names an inbound link's address or a silent peer: the peer list
holds only self-signed broadcasting records, and links are opaque ids.
"""

import hashlib
import hmac
import json
import os
import secrets

from peernet.errors import BadRequest, PeernetError
from peernet.jsonapi import STREAMING, JSONAPI, header as request_header, query_arguments
from peernet.schemas import validator as schema_validator

TOKEN_FILE = "control.token"
URL_FILE = "control.url"
#: The dashboard's session cookie (HttpOnly, SameSite=Strict; see peernet.web).
SESSION_COOKIE = b"peernet_session"
#: The header a cookie-authenticated POST must carry (CSRF protection).
CSRF_HEADER = "X-Peernet"


class BadToken(PeernetError):
    code = "bad_token"
    http_status = 401


class CSRFRefused(PeernetError):
    code = "csrf"
    http_status = 403


def load_or_create_token(state_dir):
    path = os.path.join(state_dir, TOKEN_FILE)
    try:
        with open(path) as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def score_total(peer):
    """The total of a peer's ``score`` object (0 if absent)."""
    score = peer.get("score")
    if isinstance(score, dict):
        score = score.get("total")
    return score if isinstance(score, (int, float)) else 0.0


#: GET /api/peers?sort=...: the orders the peer table can be sorted in.
PEER_SORTS = {
    "score": lambda p: (-score_total(p), p.get("peer_id", "")),
    # last-seen: the newest record first (issued_at, ms).
    "last-seen": lambda p: (-(p.get("issued_at") or 0), p.get("peer_id", "")),
    "repos": lambda p: (-len(p.get("repos") or ()), -score_total(p), p.get("peer_id", "")),
}


def peer_matches(peer, text):
    """GET /api/peers?filter=TEXT: TEXT is in the peer id, an address or a
    repo name (case-insensitive)."""
    text = text.lower()
    haystack = [peer.get("peer_id", "")] + list(peer.get("addresses") or ()) + \
        [r.get("name", "") for r in peer.get("repos") or ()]
    return any(text in str(h).lower() for h in haystack)


class ControlAPI(JSONAPI):
    prefix = "/api/"
    routes = {
        "status": ("GET",),
        "peers": ("GET",),
        "search": ("POST",),
        "broadcast": ("POST",),
        "repos": ("GET", "POST"),
        "events": ("GET",),
        "share": ("POST",),
        "unshare": ("POST",),
        "get": ("POST",),
        "downloads": ("GET",),
        "cancel": ("POST",),
    }

    def __init__(self, reactor, gossip, token, *, announcer=None, repos=None):
        super().__init__()
        self.reactor = reactor
        self.gossip = gossip
        self.token = token.encode()
        self.announcer = announcer
        self.repos = repos

    def check_token(self, given):
        """True if ``given`` (str or bytes) is the control token (constant time)."""
        if isinstance(given, str):
            given = given.strip().encode("utf-8", "replace")
        return hmac.compare_digest(given, self.token)

    def session_value(self):
        """The dashboard cookie's value: derived from the token, so the cookie
        never holds the token itself; it stays valid as long as the token."""
        return hmac.new(self.token, b"peernet dashboard session v1",
                        hashlib.sha256).hexdigest().encode()

    def has_session(self, request):
        given = request.getCookie(SESSION_COOKIE) or b""
        return hmac.compare_digest(given, self.session_value())

    def authorize(self, request):
        header = request_header(request, "Authorization")
        given = header[7:].strip().encode() if header.startswith("Bearer ") else b""
        if hmac.compare_digest(given, self.token):
            return
        if not header and self.has_session(request):
            if request.method != b"GET" and request_header(request, CSRF_HEADER) != "1":
                raise CSRFRefused(f"a request authenticated by the dashboard cookie must "
                                  f"carry the header {CSRF_HEADER}: 1")
            return
        raise BadToken("missing or wrong token (see control.token in the state directory)")

    def handle_status(self, request):
        core = self.gossip.core
        links = self.gossip.links_info()
        return 200, {
            "peer_id": core.identity.peer_id,
            "broadcasting": core.broadcasting,
            "addresses": core.own.record["addresses"] if core.broadcasting and core.own else [],
            "links": {"outbound": sum(1 for l in links if l["outbound"] and l["open"]),
                      "inbound": sum(1 for l in links if not l["outbound"] and l["open"])},
            # The broadcasting peers this node dialed (the dashboard's map);
            # inbound links stay anonymous.
            "outbound_peers": sorted({l["peer_id"] for l in links
                                      if l["outbound"] and l["open"] and l["peer_id"]}),
            "table": {"records": len(core.table),
                      "broadcasting": len(core.table.live_broadcasting()),
                      "digest": core.table.digest().hex()},
            "bootstrap": dict(self.announcer.last_results) if self.announcer else {},
            "stats": {"received": core.stats.received, "sent": core.stats.sent,
                      "invalid": core.stats.invalid, "duplicates": core.stats.duplicates,
                      # Abuse counters (no identities: inbound links may be silent peers).
                      "penalties": self.gossip.penalties_total,
                      "cut_offs": self.gossip.cut_offs_total,
                      "flood_dropped": self.gossip.flood_dropped_total,
                      "relay_dropped": self.gossip.relay_dropped_total,
                      "refused_peers": self.gossip.scores.refused_count()},
        }

    def handle_peers(self, request):
        now = self.reactor.seconds()
        peers = []
        for entry in self.gossip.core.table:
            if entry.expires_at <= now:
                continue
            peers.append({
                "peer_id": entry.peer_id,
                "addresses": entry.record["addresses"],
                "broadcasting": not entry.is_tombstone,
                "version": entry.record["version"],
                "issued_at": entry.record["issued_at"],
                "repos": entry.record.get("repos", []),
                # Table entries are broadcasting records only: a silent
                # peer (scored, if at all, under an anonymous link key) never
                # appears here.
                "score": self.gossip.peer_score(entry.peer_id),
            })
        args = query_arguments(request)
        sort = (args.get("sort") or ["score"])[-1]
        if sort not in PEER_SORTS:
            raise BadRequest(f"sort must be one of {', '.join(sorted(PEER_SORTS))}",
                             code="bad_sort")
        text = (args.get("filter") or [""])[-1]
        if text:
            peers = [p for p in peers if peer_matches(p, text)]
        peers.sort(key=PEER_SORTS[sort])
        return 200, {"peers": peers}

    async def handle_search(self, request, body):
        query = _json_object(body)
        repo, peer = query.get("repo"), query.get("peer")
        if (repo is None) == (peer is None) or not isinstance(repo or peer, str):
            raise BadRequest('give exactly one of "repo" or "peer" (a string)')
        timeout = query.get("timeout", 5)
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise BadRequest("timeout must be a number of seconds from 0 to 60")
        network_only = query.get("network_only", False)
        if not isinstance(network_only, bool):
            raise BadRequest("network_only must be true or false")
        results = await self.gossip.search(repo=repo, peer=peer, timeout=timeout,
                                           local=not network_only)
        return 200, {"results": results}

    def handle_repos(self, request, body=None):
        """GET: repos shared here and known in the table.  POST: publish this
        list of repo summaries in our record as is (a PEER_UPDATE; low level,
        for tests and tools: `share` is what users want)."""
        if body is None:
            shared = []
            if self.repos is not None:
                shared = [dict(m.summary(), path=m.root, magnet=self.repos.magnet(m))
                          for m, _ in self.repos.shares.values()]
            known = self.repos.known_repos() if self.repos is not None else []
            return 200, {"shared": shared, "known": known}
        query = _json_object(body)
        repos = query.get("repos")
        validator = schema_validator("RepoSummary")
        if not isinstance(repos, list) or len(repos) > 64:
            raise BadRequest('give {"repos": [{"name": ...}, ...]} (at most 64)')
        for repo in repos:
            validator.check(repo)
        if not self.gossip.core.broadcasting:
            raise BadRequest("this node is silent: turn broadcasting on to publish repos",
                             code="not_broadcasting")
        self.gossip.set_repos(repos)
        return 200, {"version": self.gossip.core.own.record["version"]}

    async def handle_share(self, request, body):
        query = _json_object(body)
        name, path = query.get("name"), query.get("path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise BadRequest('give {"name": ..., "path": ...}')
        if not self.gossip.core.broadcasting:
            raise BadRequest("this node is silent: turn broadcasting on to share repos",
                             code="not_broadcasting")
        return 200, {"shared": await self._repos().share(name, path)}

    async def handle_unshare(self, request, body):
        name = _json_object(body).get("name")
        if not isinstance(name, str):
            raise BadRequest('give {"name": ...}')
        return 200, {"unshared": await self._repos().unshare(name)}

    async def handle_get(self, request, body):
        query = _json_object(body)
        name, infohash, dest = query.get("repo"), query.get("infohash"), query.get("dest")
        if (name is None) == (infohash is None) or not isinstance(name or infohash, str):
            raise BadRequest('give exactly one of "repo" or "infohash" (a string)')
        if dest is not None and not isinstance(dest, str):
            raise BadRequest("dest must be a directory path")
        job = await self._repos().get(name=name, infohash=infohash, dest=dest)
        return 200, job.as_json()

    def handle_downloads(self, request):
        return 200, {"downloads": [j.as_json() for j in self._repos().jobs.values()]}

    async def handle_cancel(self, request, body):
        job_id = _json_object(body).get("id")
        if type(job_id) is not int:
            raise BadRequest('give {"id": N}')
        job = await self._repos().cancel(job_id)
        return 200, job.as_json()

    def _repos(self):
        if self.repos is None:
            raise BadRequest("this node does not share or download repos", code="no_repos")
        return self.repos

    def handle_events(self, request):
        """Server-sent events: one ``table`` event per table change, as JSON
        ``{"kind", "peer_id", "version", "t"}`` (t: this node's clock); one
        ``download`` event per download progress or state change (a job, as
        GET /api/downloads); one ``share`` event per share progress step:
        ``{"name", "files_done", "files_total", "state"}`` with state
        hashing, seeding, shared or failed (see RepoService.share_listeners)."""
        request.setHeader("Content-Type", "text/event-stream")
        request.setHeader("Cache-Control", "no-store")
        request.write(b": peernet events\n\n")

        def send(change):
            entry = self.gossip.core.table.get(change.peer_id)
            event = {"kind": change.kind, "peer_id": change.peer_id,
                     "version": entry.record["version"] if entry else None,
                     "t": self.reactor.seconds()}
            request.write(b"event: table\ndata: " + json.dumps(event).encode() + b"\n\n")

        def send_download(job):
            request.write(b"event: download\ndata: " + json.dumps(job.as_json()).encode() + b"\n\n")

        def send_share(event):
            request.write(b"event: share\ndata: " + json.dumps(event).encode() + b"\n\n")

        self.gossip.add_listener(send)
        if self.repos is not None:
            self.repos.listeners.append(send_download)
            self.repos.share_listeners.append(send_share)

        def gone(_):
            self.gossip.remove_listener(send)
            if self.repos is not None:
                if send_download in self.repos.listeners:
                    self.repos.listeners.remove(send_download)
                if send_share in self.repos.share_listeners:
                    self.repos.share_listeners.remove(send_share)

        request.notifyFinish().addBoth(gone)
        return STREAMING

    async def handle_broadcast(self, request, body):
        query = _json_object(body)
        if not isinstance(query.get("on"), bool):
            raise BadRequest('give {"on": true} or {"on": false}')
        await self.gossip.set_broadcast(query["on"])
        return 200, {"broadcasting": self.gossip.core.broadcasting}


def _json_object(body):
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON")
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    return value

