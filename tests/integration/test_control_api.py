"""The peer's control API against docs/control-openapi.json, on a real network
(bootstrap + two broadcasting peers, one sharing a generated directory, + a
silent peer): every endpoint's JSON answers, success and errors, match the
document's response schemas; GET /api/peers sorts and filters (and `peernet
peers` uses it); sharing a directory streams `share` progress events on
GET /api/events, which drive `peernet share`'s progress bar.
"""

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
from urllib.parse import urlencode, urlsplit

import pytest
from openapi_spec_validator import validate

from conftest import wait_for as _wait_for
from openapi_check import check_schema, response_schema
from peernet.devnet import DevNet

pytestmark = pytest.mark.slow

DOC_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "control-openapi.json")
PEERNET = os.path.join(os.path.dirname(sys.executable), "peernet")
WAIT = 30


# -- checking answers against docs/control-openapi.json ------------------------------------


def control_document():
    with open(DOC_PATH) as f:
        return json.load(f)


def _check(schema, value, what):
    check_schema(schema, value, what, control_document(), "docs/control-openapi.json")


def assert_matches_openapi(path, method, status, body):
    _check(response_schema(path, method, status, control_document()), body,
           f"{method} {path} {status}")


def assert_matches_schema(name, value):
    _check({"$ref": f"#/components/schemas/{name}"}, value, name)


# -- calling the API ----------------------------------------------------------------------------


def call(node, method, path, body=None, *, token=True, headers=None, raw=None, query=None):
    """(status, JSON answer) of ``method /api/path``; checked against the document."""
    parts = urlsplit(node.control_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {node.token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    url = "/api/" + path + ("?" + urlencode(query) if query else "")
    try:
        conn.request(method, url, body=data, headers=sent)
        resp = conn.getresponse()
        answer = json.loads(resp.read() or b"null")
    finally:
        conn.close()
    assert resp.getheader("Content-Type") == "application/json"
    operations = control_document()["paths"].get("/api/" + path, {})
    if method.lower() in operations:
        assert_matches_openapi("/api/" + path, method, resp.status, answer)
    else:  # no such endpoint or method: still the documented error body
        assert resp.status in (404, 405)
        assert_matches_schema("Error", answer)
    return resp.status, answer


def ok(node, method, path, body=None, **kw):
    status, answer = call(node, method, path, body, **kw)
    assert status == 200, (method, path, status, answer)
    return answer


def error(node, method, path, body=None, *, status, code=None, **kw):
    got, answer = call(node, method, path, body, **kw)
    assert got == status, (method, path, got, answer)
    if code is not None:
        assert answer["error"]["code"] == code, answer
    return answer


class Events:
    """GET /api/events read in a thread: [(kind, data)]."""

    def __init__(self, node):
        parts = urlsplit(node.control_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.conn.request("GET", "/api/events",
                          headers={"Authorization": f"Bearer {node.token}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type") == "text/event-stream"
        self.events = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        kind = None
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    return
                line = line.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))
        except Exception:  # closed by close()
            return

    def of(self, kind, name=None):
        return [d for k, d in list(self.events)
                if k == kind and (name is None or d.get("name") == name)]

    def close(self):
        try:
            self.conn.sock.shutdown(2)
        except OSError:
            pass
        self.thread.join(5)
        self.conn.close()




def make_files(root, n, prefix="file"):
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        sub = os.path.join(root, f"d{i % 3}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{prefix}{i}.bin"), "wb") as f:
            f.write(hashlib.sha256(f"{prefix}/{i}".encode()).digest() * (50 + i))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    base = tmp_path_factory.mktemp("control")
    films = base / "films"
    make_files(films, 4, "film")
    with DevNet(str(base / "net"), broadcasting=0, silent=0) as net:
        net.films = str(films)
        net.base = base
        net.seeder = net.add_peer("peer1", broadcast=True, host="127.0.0.10",
                                  extra=["--share", f"films={films}"])
        net.other = net.add_peer("peer2", broadcast=True, host="127.0.0.11")
        net.quiet = net.add_peer("silent1", broadcast=False, host="127.0.0.77")
        net.seeder_id, net.other_id = net.seeder.peer_id(), net.other.peer_id()
        wait_for(lambda: {p["peer_id"] for p in net.quiet.peers()} >= {net.seeder_id, net.other_id}
                 and any(r["name"] == "films" for p in net.quiet.peers() for r in p["repos"]),
                 "the silent peer learns both broadcasting peers and films")
        yield net


def test_document_is_valid_openapi():
    doc = control_document()
    validate(doc)
    from peernet.control.api import ControlAPI

    for name, methods in ControlAPI.routes.items():
        for method in methods:
            assert method.lower() in doc["paths"][f"/api/{name}"], (method, name)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerToken"]["scheme"] == "bearer"
    assert schemes["sessionCookie"]["in"] == "cookie"
    assert doc["paths"]["/api/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]


def test_every_endpoint_matches_the_document(net, tmp_path):
    seeder, quiet = net.seeder, net.quiet

    # status
    status = ok(seeder, "GET", "status")
    assert status["peer_id"] == net.seeder_id and status["broadcasting"]
    # Abuse counters: nobody misbehaved in this network.
    counters = ("penalties", "cut_offs", "flood_dropped", "relay_dropped", "refused_peers")
    assert {k: status["stats"][k] for k in counters} == dict.fromkeys(counters, 0)
    assert ok(quiet, "GET", "status")["broadcasting"] is False
    error(seeder, "GET", "status", token=False, status=401, code="bad_token")
    error(seeder, "GET", "status", token=False, headers={"Authorization": "Bearer nope"},
          status=401, code="bad_token")
    error(seeder, "POST", "status", {}, status=405)
    error(seeder, "GET", "no-such-endpoint", status=404)

    # peers
    peers = ok(quiet, "GET", "peers")["peers"]
    assert {net.seeder_id, net.other_id} <= {p["peer_id"] for p in peers}
    error(quiet, "GET", "peers", query={"sort": "age"}, status=400, code="bad_sort")

    # search
    found = ok(quiet, "POST", "search", {"repo": "films", "timeout": 3})["results"]
    assert [r["record"]["peer_id"] for r in found] == [net.seeder_id]
    error(quiet, "POST", "search", {"repo": "films", "peer": "x"}, status=400)
    error(quiet, "POST", "search", {"repo": "films", "timeout": 99}, status=400)
    error(quiet, "POST", "search", raw=b"not json", status=400)
    error(quiet, "POST", "search", {"repo": "films"}, status=415,
          headers={"Content-Type": "text/plain"})

    # broadcast (already on: no change)
    assert ok(seeder, "POST", "broadcast", {"on": True}) == {"broadcasting": True}
    error(seeder, "POST", "broadcast", {"on": "yes"}, status=400)

    # repos
    repos = ok(seeder, "GET", "repos")
    [films] = repos["shared"]
    assert films["name"] == "films" and films["files"] == 4 and films["path"] == net.films
    assert films["magnet"].startswith("magnet:")
    known = ok(quiet, "GET", "repos")
    assert known["shared"] == [] and [r["name"] for r in known["known"]] == ["films"]
    summary = {k: films[k] for k in ("name", "size", "files", "btih", "btmh", "manifest")}
    version = ok(seeder, "POST", "repos", {"repos": [summary]})["version"]
    assert version >= 1
    error(quiet, "POST", "repos", {"repos": [summary]}, status=400, code="not_broadcasting")
    error(seeder, "POST", "repos", {"repos": "films"}, status=400)
    error(seeder, "POST", "repos", {"repos": [{"name": "a/b"}]}, status=400)

    # share / unshare
    small = tmp_path / "small"
    make_files(small, 3, "small")
    shared = ok(seeder, "POST", "share", {"name": "small", "path": str(small)})["shared"]
    assert shared["files"] == 3
    error(seeder, "POST", "share", {"name": "small", "path": str(small)}, status=409,
          code="repo_exists")
    error(quiet, "POST", "share", {"name": "x", "path": str(small)}, status=400,
          code="not_broadcasting")
    error(seeder, "POST", "share", {"name": "x"}, status=400)
    error(seeder, "POST", "share", {"name": "gone", "path": str(tmp_path / "missing")},
          status=400, code="repo_missing")
    assert ok(seeder, "POST", "unshare", {"name": "small"})["unshared"]["name"] == "small"
    error(seeder, "POST", "unshare", {"name": "small"}, status=404, code="no_such_repo")
    error(seeder, "POST", "unshare", {}, status=400)

    # get / downloads / cancel
    dest = tmp_path / "downloads"
    job = ok(quiet, "POST", "get", {"repo": "films", "dest": str(dest)})
    assert job["name"] == "films" and job["seeders"] == 1
    wait_for(lambda: next(j for j in ok(quiet, "GET", "downloads")["downloads"]
                          if j["id"] == job["id"])["state"] == "done", "films downloads")
    done = next(j for j in ok(quiet, "GET", "downloads")["downloads"] if j["id"] == job["id"])
    assert len(done["files"]) == 4
    error(quiet, "POST", "get", {"repo": "films", "infohash": "0" * 40}, status=400)
    error(quiet, "POST", "get", {"infohash": "0" * 40}, status=404, code="no_seeders")
    error(quiet, "POST", "downloads", {}, status=405)
    assert ok(quiet, "POST", "cancel", {"id": job["id"]})["state"] == "done"
    error(quiet, "POST", "cancel", {"id": 99999}, status=404, code="no_such_download")
    error(quiet, "POST", "cancel", {"id": "1"}, status=400)

    # events: a stream for the token holder only
    events = Events(seeder)
    events.close()
    error(seeder, "GET", "events", token=False, status=401, code="bad_token")


def test_dashboard_cookie_and_csrf(net):
    parts = urlsplit(net.seeder.control_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/login?" + urlencode({"token": net.seeder.token}))
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 303
    cookie = resp.getheader("Set-Cookie").split(";")[0]
    assert cookie.startswith("peernet_session=")
    assert ok(net.seeder, "GET", "status", token=False,
              headers={"Cookie": cookie})["peer_id"] == net.seeder_id
    error(net.seeder, "POST", "broadcast", {"on": True}, token=False,
          headers={"Cookie": cookie}, status=403, code="csrf")
    assert ok(net.seeder, "POST", "broadcast", {"on": True}, token=False,
              headers={"Cookie": cookie, "X-Peernet": "1"}) == {"broadcasting": True}


def test_headers_that_are_not_utf8_get_4xx(net):
    # Twisted's getHeader decodes as UTF-8; a garbled header once made a 500.
    error(net.seeder, "POST", "broadcast", raw=b'{"on": true}',
          headers={"Content-Type": b"application/\xffjson"}, status=415)
    error(net.seeder, "GET", "status", token=False,
          headers={"Authorization": b"Bearer \xff\xfe"}, status=401)
    parts = urlsplit(net.seeder.control_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/logout", headers={"X-Peernet": b"\xff"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 403
    assert ok(net.seeder, "GET", "status")["peer_id"] == net.seeder_id


def test_peers_sort_and_filter(net):
    quiet = net.quiet

    def ids(**query):
        return [p["peer_id"] for p in ok(quiet, "GET", "peers", query=query)["peers"]]

    peers = ok(quiet, "GET", "peers")["peers"]
    for p in peers:  # the score object (docs/protocol.md, Scoring)
        assert set(p["score"]) == {"total", "availability", "performance", "penalties",
                                   "refused_until"}
        assert 0 <= p["score"]["availability"] <= 1 and 0 <= p["score"]["performance"] <= 1
        assert p["score"]["penalties"] == 0 and p["score"]["refused_until"] is None
    by_score = [p["peer_id"] for p in sorted(peers, key=lambda p: (-p["score"]["total"],
                                                                   p["peer_id"]))]
    assert ids() == ids(sort="score") == by_score
    newest = ok(quiet, "GET", "peers", query={"sort": "last-seen"})["peers"]
    assert [p["issued_at"] for p in newest] == sorted((p["issued_at"] for p in peers),
                                                      reverse=True)
    most = ok(quiet, "GET", "peers", query={"sort": "repos"})["peers"]
    assert [len(p["repos"]) for p in most] == sorted((len(p["repos"]) for p in peers),
                                                     reverse=True)
    assert most[0]["peer_id"] == net.seeder_id  # the only one with a repo

    assert ids(filter="FILMS") == [net.seeder_id]  # a repo name, any case
    assert ids(filter=net.other.host) == [net.other_id]  # an address
    assert ids(filter=net.other_id[:10].upper()) == [net.other_id]  # the peer id
    assert ids(filter="no-such-thing") == []
    assert set(ids(filter="127.0.0.1", sort="repos")) == {net.seeder_id, net.other_id}
    error(quiet, "GET", "peers", query={"sort": "name"}, status=400, code="bad_sort")

    # `peernet peers` asks the peer to sort and filter: the same answers.
    def cli(*args):
        env = {k: v for k, v in os.environ.items() if k not in ("PEERNET_STATE_DIR", "COLUMNS")}
        out = subprocess.run([PEERNET, "--state-dir", quiet.state_dir, "--json", "peers", *args],
                             capture_output=True, text=True, timeout=60, env=env,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        return [p["peer_id"] for p in json.loads(out.stdout)["peers"]]

    assert cli("--sort", "repos") == ids(sort="repos")
    assert cli("--filter", "films") == [net.seeder_id]
    assert cli("--sort", "last-seen", "--filter", net.other.host) == [net.other_id]


def test_share_progress_events(net, tmp_path):
    many = tmp_path / "many"
    make_files(many, 20, "many")
    events = Events(net.seeder)
    try:
        shared = ok(net.seeder, "POST", "share", {"name": "many", "path": str(many)})["shared"]
        assert shared["files"] == 20
        wait_for(lambda: any(e["state"] == "shared" for e in events.of("share", "many")),
                 "the shared event")
        share = events.of("share", "many")
        for event in share:
            assert_matches_schema("ShareEvent", event)
        states = [e["state"] for e in share]
        assert states[0] == "hashing" and states[-1] == "shared", states
        assert "failed" not in states
        hashing = [e for e in share if e["state"] == "hashing"]
        assert hashing[-1]["files_done"] == hashing[-1]["files_total"] == 20
        done = [e["files_done"] for e in hashing]
        assert done == sorted(done)
        first_full = next(i for i, e in enumerate(share) if e["files_done"] == 20)
        assert first_full < states.index("shared")
        assert share[-1]["summary"]["btih"] == shared["btih"]

        # A failure is reported too.
        error(net.seeder, "POST", "share", {"name": "nothing", "path": str(tmp_path / "nope")},
              status=400, code="repo_missing")
        wait_for(lambda: [e["state"] for e in events.of("share", "nothing")][-1:] == ["failed"],
                 "the failed event")
    finally:
        events.close()
    ok(net.seeder, "POST", "unshare", {"name": "many"})


def test_peernet_share_progress_bar(net, tmp_path):
    """On a terminal, `peernet share` draws a bar of files hashed from the events."""
    bar = tmp_path / "bar"
    make_files(bar, 20, "bar")
    env = {k: v for k, v in os.environ.items() if k not in ("PEERNET_STATE_DIR", "COLUMNS")}
    env.update(TTY_COMPATIBLE="1", COLUMNS="120")
    out = subprocess.run([PEERNET, "--state-dir", net.seeder.state_dir, "share", "bar", str(bar)],
                         capture_output=True, text=True, timeout=60, env=env,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "Sharing bar" in out.stdout
    assert "files" in out.stderr and "/20" in out.stderr, out.stderr
    ok(net.seeder, "POST", "unshare", {"name": "bar"})


def wait_for(predicate, what, timeout=WAIT):
    _wait_for(predicate, what, timeout)
