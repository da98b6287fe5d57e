"""The bootstrap API against a real `twist bootstrap` process on loopback."""

import json
import os
import sqlite3

import pytest

from conftest import now_ms, registration, unregistration
from openapi_check import assert_matches_openapi
from peernet.identity import NodeIdentity
from peernet.records import verify_signed_record

pytestmark = pytest.mark.slow

REGISTER = "/api/bootstrap/register"
UNREGISTER = "/api/bootstrap/unregister"
DISCOVER = "/api/bootstrap/discover"
HEALTH = "/api/bootstrap/health"


def db_rows(server):
    """Row counts of every table, read straight from the SQLite file."""
    conn = sqlite3.connect(server.db_path)
    try:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("peers", "emails", "nonces", "email_codes", "bootstrap_nodes")
        }
    finally:
        conn.close()


def register(server, **kw):
    identity, body, sig = registration(**kw)
    status, headers, reply = server.post_signed(REGISTER, body, sig)
    return identity, status, reply


def discover(server, query=""):
    status, _, body = server.request("GET", DISCOVER + query)
    assert_matches_openapi(DISCOVER, "get", status, body)
    return status, body


def test_register_then_discover_returns_verifiable_record(bootstrap_server):
    identity, status, reply = register(bootstrap_server, addresses=["wss://127.0.0.5:8701/gossip"])
    assert status == 200, reply
    assert_matches_openapi(REGISTER, "post", status, reply)
    assert reply["peer_id"] == identity.peer_id
    assert reply["peers"] == []  # nobody else yet, and never yourself
    status, body = discover(bootstrap_server)
    assert status == 200
    [entry] = body["peers"]
    record = verify_signed_record(entry)
    assert record["peer_id"] == identity.peer_id
    assert record["addresses"] == ["wss://127.0.0.5:8701/gossip"]


def test_register_answers_expiry_hint_and_other_peers(bootstrap_factory):
    server = bootstrap_factory("--ttl", "3600", "--federate", "https://b2.example.net",
                               "--federate", "http://127.0.0.9:8600")
    others = [register(server)[0].peer_id for _ in range(3)]
    before = now_ms() / 1000
    identity, status, reply = register(server)
    assert status == 200
    assert before + 3590 < reply["expires_at"] < before + 3610
    hints = {reply["reannounce_after"]}
    assert 0.42 * 3600 <= reply["reannounce_after"] <= 0.5 * 3600
    assert sorted(reply["bootstrap_servers"]) == ["http://127.0.0.9:8600", "https://b2.example.net"]
    assert sorted(verify_signed_record(p)["peer_id"] for p in reply["peers"]) == sorted(others)
    for _ in range(4):
        hints.add(register(server, identity=identity)[2]["reannounce_after"])
    assert len(hints) > 1, "the reannounce hint has no jitter"
    _, body = discover(server)
    assert sorted(body["bootstrap_servers"]) == ["http://127.0.0.9:8600", "https://b2.example.net"]


def test_discover_samples_at_random_and_only_bootstrap_capable_peers(bootstrap_server):
    capable = {register(bootstrap_server)[0].peer_id for _ in range(12)}
    plain = register(bootstrap_server, is_bootstrap=False)[0].peer_id
    seen = set()
    for _ in range(25):
        status, body = discover(bootstrap_server, "?limit=3")
        assert status == 200 and len(body["peers"]) == 3
        seen.update(verify_signed_record(p)["peer_id"] for p in body["peers"])
    assert plain not in seen
    assert len(seen) >= 9, "discover does not sample at random"
    assert seen <= capable
    status, body = discover(bootstrap_server)
    assert len(body["peers"]) == 12  # default limit 16 > 12 live


@pytest.mark.parametrize("query", ["?limit=0", "?limit=101", "?limit=abc", "?limit=1&limit=2", "?limit=-1"])
def test_discover_rejects_bad_limit(bootstrap_server, query):
    status, body = discover(bootstrap_server, query)
    assert status == 400 and body["error"]["code"] == "bad_limit"


def test_silent_peer_registration_is_refused_and_nothing_written(bootstrap_server):
    before = db_rows(bootstrap_server)
    _, status, reply = register(bootstrap_server, is_broadcasting=False, email="s@example.org")
    assert status == 400 and reply["error"]["code"] == "not_broadcasting"
    assert_matches_openapi(REGISTER, "post", status, reply)
    assert db_rows(bootstrap_server) == before


def test_unregister_removes_at_once_and_needs_the_key(bootstrap_server):
    identity, status, _ = register(bootstrap_server)
    assert status == 200
    # Somebody else signing an unregister for this peer_id is refused.
    impostor = NodeIdentity.generate()
    body, sig = unregistration(impostor)
    forged = json.loads(body)
    forged["peer_id"] = identity.peer_id
    forged_body = json.dumps(forged).encode()
    status, _, reply = bootstrap_server.post_signed(UNREGISTER, forged_body, impostor_sig(impostor, forged_body))
    assert status == 401 and reply["error"]["code"] == "bad_signature"
    assert len(discover(bootstrap_server)[1]["peers"]) == 1
    body, sig = unregistration(identity)
    status, _, reply = bootstrap_server.post_signed(UNREGISTER, body, sig)
    assert status == 200, reply
    assert_matches_openapi(UNREGISTER, "post", status, reply)
    assert reply["removed"] is True
    assert discover(bootstrap_server)[1]["peers"] == []
    assert db_rows(bootstrap_server)["peers"] == 0


def impostor_sig(identity, body):
    import base64

    return base64.b64encode(identity.sign(body)).decode()


def test_record_versions_never_go_backwards(bootstrap_server):
    identity, status, _ = register(bootstrap_server, version=5)
    assert status == 200
    _, status, reply = register(bootstrap_server, identity=identity, version=4)
    assert status == 409 and reply["error"]["code"] == "stale_record"
    _, status, _ = register(bootstrap_server, identity=identity, version=5)
    assert status == 200
    [entry] = discover(bootstrap_server)[1]["peers"]
    assert entry["record"]["version"] == 5


def test_one_peer_per_email_first_come_and_release(bootstrap_server):
    alice, status, _ = register(bootstrap_server, email="Owner@Example.org")
    assert status == 200
    before = db_rows(bootstrap_server)
    _, status, reply = register(bootstrap_server, email="owner@example.org")
    assert status == 409 and reply["error"]["code"] == "email_bound"
    assert db_rows(bootstrap_server) == before
    # The binding outlives an unregister that does not release it...
    body, sig = unregistration(alice)
    assert bootstrap_server.post_signed(UNREGISTER, body, sig)[0] == 200
    assert register(bootstrap_server, email="owner@example.org")[1] == 409
    # ...and only the bound key releases it.
    body, sig = unregistration(alice, release_email=True)
    status, _, reply = bootstrap_server.post_signed(UNREGISTER, body, sig)
    assert status == 200 and reply["email_released"] is True
    assert register(bootstrap_server, email="owner@example.org")[1] == 200


def test_per_ip_and_per_email_rate_limits(bootstrap_factory):
    server = bootstrap_factory("--rate-ip", "4/60", "--rate-email", "2/3600")
    identity = NodeIdentity.generate()
    assert register(server, identity=identity, email="r@example.org")[1] == 200
    assert register(server, identity=identity, email="r@example.org")[1] == 200
    _, status, reply = register(server, identity=identity, email="r@example.org")
    assert status == 429 and reply["error"]["code"] == "rate_limited"
    assert register(server)[1] == 200  # 4th request from this IP
    identity_b, body, sig = registration()
    status, headers, reply = server.post_signed(REGISTER, body, sig)
    assert status == 429 and headers.get("retry-after")
    assert_matches_openapi(REGISTER, "post", status, reply)
    # Another source address has its own budget.
    status, _, _ = server.post_signed(REGISTER, body, sig, source="127.0.0.2")
    assert status == 200
    # Discover is never limited per caller (no caller state at all).
    for _ in range(10):
        assert discover(server)[0] == 200


# -- bad input --------------------------------------------------------------------


def _bad_inputs():
    """(name, function(server) -> (method, path, body, headers, expected status))."""
    def signed(**kw):
        _, body, sig = registration(**kw)
        return body, sig

    def json_headers(sig=None):
        h = {"Content-Type": "application/json"}
        if sig:
            h["Peernet-Signature"] = sig
        return h

    def signed_h(**kw):
        body, sig = signed(**kw)
        return body, json_headers(sig)

    def resign(mutate):
        identity, body, _ = registration()
        fields = json.loads(body)
        mutate(fields)
        new_body = json.dumps(fields).encode()
        return new_body, json_headers(impostor_sig(identity, new_body))

    cases = {
        "not json": lambda: ("POST", REGISTER, b"{nope", json_headers("AAAA"), 400),
        "json array": lambda: ("POST", REGISTER, b"[1,2]", json_headers("AAAA"), 400),
        "not utf-8": lambda: ("POST", REGISTER, b"\xff\xfe{}", json_headers("AAAA"), 400),
        "empty body": lambda: ("POST", REGISTER, b"", json_headers("AAAA"), 400),
        "wrong type": lambda: ("POST", REGISTER, *resign(lambda f: f.update(timestamp="soon")), 400),
        "missing field": lambda: ("POST", REGISTER, *resign(lambda f: f.pop("nonce")), 400),
        "unknown field": lambda: ("POST", REGISTER, *resign(lambda f: f.update(admin=True)), 400),
        "unknown record field": lambda: ("POST", REGISTER, *resign(
            lambda f: f["signed_record"]["record"].update(extra=1)), 400),
        "bad address": lambda: ("POST", REGISTER, *resign(
            lambda f: f["signed_record"]["record"].update(addresses=["not a url"])), 400),
        "too many addresses": lambda: ("POST", REGISTER, *resign(
            lambda f: f["signed_record"]["record"].update(
                addresses=[f"wss://127.0.0.1:{p}/g" for p in range(1000, 1017)])), 400),
        "over 64 KiB": lambda: ("POST", REGISTER, b"{" + b" " * (64 * 1024) + b"}", json_headers("AAAA"), 413),
        "content type not utf-8": lambda: ("POST", REGISTER, signed()[0], {"Content-Type": b"application/\xffjson", "Peernet-Signature": signed()[1]}, 415),
        "wrong content type": lambda: ("POST", REGISTER, signed()[0], {"Content-Type": "text/plain", "Peernet-Signature": signed()[1]}, 415),
        "missing signature": lambda: ("POST", REGISTER, signed()[0], json_headers(), 401),
        "signature not base64": lambda: ("POST", REGISTER, signed()[0], json_headers("***"), 400),
        "signature of other body": lambda: ("POST", REGISTER, signed()[0], json_headers(signed()[1]), 401),
        "tampered record": lambda: ("POST", REGISTER, *resign(
            lambda f: f["signed_record"]["record"].update(addresses=["wss://10.9.9.9:1/gossip"])), 401),
        "key does not match peer_id": lambda: ("POST", REGISTER, *resign(
            lambda f: f.update(peer_id="0" * 64)), 401),
        "record of another peer": lambda: _other_peer_record(json_headers),
        "stale timestamp": lambda: ("POST", REGISTER, *signed_h(timestamp=now_ms() - 31_000), 400),
        "future timestamp": lambda: ("POST", REGISTER, *signed_h(timestamp=now_ms() + 31_000), 400),
        "float number": lambda: ("POST", REGISTER, *resign(lambda f: f.update(timestamp=f["timestamp"] + 0.5)), 400),
        "non-ascii email": lambda: ("POST", REGISTER, *signed_h(email="jos\u00e9@example.org"), 400),
        "unknown path": lambda: ("GET", "/api/bootstrap/nothing", None, {}, 404),
        "root path": lambda: ("GET", "/", None, {}, 404),
        "wrong method": lambda: ("PUT", REGISTER, b"{}", json_headers(), 405),
        "get on register": lambda: ("GET", REGISTER, None, {}, 405),
        "post on discover": lambda: ("POST", DISCOVER, b"{}", json_headers(), 405),
        "bad unregister": lambda: ("POST", UNREGISTER, *resign(lambda f: f.update(type="unregister")), 400),
    }
    return cases


def _other_peer_record(json_headers):
    # A valid record of peer A inside a request correctly signed by peer B.
    a, a_body, _ = registration()
    b = NodeIdentity.generate()
    fields = json.loads(a_body)
    fields["peer_id"] = b.peer_id
    import base64

    fields["public_key"] = base64.b64encode(b.public_key_der).decode()
    body = json.dumps(fields).encode()
    return "POST", REGISTER, body, json_headers(impostor_sig(b, body)), 400


BAD = _bad_inputs()


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_gets_4xx_json_and_writes_nothing(bootstrap_server, name):
    register(bootstrap_server, email="keep@example.org")  # state that must survive
    before = db_rows(bootstrap_server)
    method, path, body, headers, expected = BAD[name]()
    status, resp_headers, reply = bootstrap_server.request(method, path, body, headers)
    assert status == expected, (name, status, reply)
    assert resp_headers["content-type"] == "application/json"
    assert set(reply) == {"error"} and set(reply["error"]) == {"code", "message"}
    assert "Traceback" not in json.dumps(reply)
    if path in (REGISTER, UNREGISTER) and method == "POST":
        assert_matches_openapi(path, "post", status, reply)
    assert db_rows(bootstrap_server) == before
    status, _, health = bootstrap_server.request("GET", HEALTH)
    assert status == 200 and health["peers"] == 1
    assert "Traceback" not in bootstrap_server.log()


def test_replayed_request_is_refused(bootstrap_server):
    identity, body, sig = registration()
    assert bootstrap_server.post_signed(REGISTER, body, sig)[0] == 200
    before = db_rows(bootstrap_server)
    status, _, reply = bootstrap_server.post_signed(REGISTER, body, sig)
    assert status == 409 and reply["error"]["code"] == "replayed_nonce"
    assert db_rows(bootstrap_server) == before
    body, sig = unregistration(identity)
    assert bootstrap_server.post_signed(UNREGISTER, body, sig)[0] == 200
    status, _, reply = bootstrap_server.post_signed(UNREGISTER, body, sig)
    assert status == 409 and reply["error"]["code"] == "replayed_nonce"


def test_health_and_openapi_document(bootstrap_server):
    status, _, health = bootstrap_server.request("GET", HEALTH)
    assert status == 200
    assert_matches_openapi(HEALTH, "get", status, health)
    assert health["schema_version"] == 2
    status, _, doc = bootstrap_server.request("GET", "/api/bootstrap/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "..", "..", "docs", "bootstrap-openapi.json")) as f:
        assert json.load(f) == doc, "docs/bootstrap-openapi.json differs from the served document"
    from openapi_spec_validator import validate

    validate(doc)


def test_no_trace_of_callers_in_log_or_database(bootstrap_server):
    """discover stores nothing about the caller; register stores no IP."""
    for _ in range(3):
        status, _, _ = bootstrap_server.request("GET", DISCOVER, source="127.0.0.77")
        assert status == 200
    identity, body, sig = registration()
    assert bootstrap_server.post_signed(REGISTER, body, sig, source="127.0.0.78")[0] == 200
    bootstrap_server.request("GET", "/nope", source="127.0.0.79")
    bootstrap_server.stop()  # flush the log and checkpoint the WAL
    blobs = [bootstrap_server.log().encode()]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(bootstrap_server.db_path + suffix):
            with open(bootstrap_server.db_path + suffix, "rb") as f:
                blobs.append(f.read())
    for blob in blobs:
        for address in (b"127.0.0.77", b"127.0.0.78", b"127.0.0.79"):
            assert address not in blob


def test_mail_server_down_leaves_nothing_pending(bootstrap_factory):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    server = bootstrap_factory("--smtp", f"smtp://127.0.0.1:{closed_port}")
    _, status, reply = register(server, email="down@example.org")
    assert status == 503 and reply["error"]["code"] == "unavailable", reply
    assert_matches_openapi(REGISTER, "post", status, reply)
    rows = db_rows(server)
    assert rows["peers"] == 0 and rows["email_codes"] == 0 and rows["emails"] == 0
