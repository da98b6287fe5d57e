import json

import pytest
from hypothesis import given, strategies as st

from peernet.errors import BadRequest, BadSignature, StaleTimestamp
from peernet.identity import NodeIdentity
from peernet.records import (
    canonical_json,
    make_record,
    open_signed_request,
    sign_request,
    verify_signed_record,
)

IDENTITY = NodeIdentity.generate()


def test_signed_record_round_trip_and_tamper_detection():
    signed = make_record(IDENTITY, ["wss://127.0.0.1:1/gossip"], version=7, issued_at_ms=1)
    # Survives a trip through ordinary (non-canonical) JSON.
    again = json.loads(json.dumps(signed, indent=3))
    assert verify_signed_record(again)["version"] == 7
    for key, value in [("version", 8), ("addresses", ["wss://10.0.0.1:1/gossip"]),
                       ("is_bootstrap", False)]:
        bad = json.loads(json.dumps(signed))
        bad["record"][key] = value
        with pytest.raises(BadSignature):
            verify_signed_record(bad)


def test_record_claiming_another_peer_id_is_refused():
    other = NodeIdentity.generate()
    signed = make_record(IDENTITY, ["wss://127.0.0.1:1/gossip"], version=1, issued_at_ms=1)
    signed["record"]["peer_id"] = other.peer_id
    with pytest.raises(BadSignature, match="SHA-256"):
        verify_signed_record(signed)


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.booleans()), max_size=6))
def test_canonical_json_is_order_independent(d):
    shuffled = dict(reversed(list(d.items())))
    assert canonical_json(d) == canonical_json(shuffled)
    assert json.loads(canonical_json(d)) == d


def _request(ts_ms):
    signed = make_record(IDENTITY, ["wss://127.0.0.1:1/gossip"], version=1, issued_at_ms=ts_ms)
    fields = {"type": "register", "peer_id": IDENTITY.peer_id,
              "public_key": signed["record"]["public_key"], "signed_record": signed,
              "timestamp": ts_ms, "nonce": "ab" * 16}
    return sign_request(IDENTITY, fields)


def test_signed_request_window_is_30_seconds_both_ways():
    now = 1_800_000_000.0
    for offset in (-30, 0, 30):
        body, sig = _request(int((now + offset) * 1000))
        assert open_signed_request(body, sig, "RegisterRequest", now)["peer_id"] == IDENTITY.peer_id
    for offset in (-31, 31):
        body, sig = _request(int((now + offset) * 1000))
        with pytest.raises(StaleTimestamp):
            open_signed_request(body, sig, "RegisterRequest", now)


def test_signed_request_over_exact_bytes():
    now = 1_800_000_000.0
    body, sig = _request(int(now * 1000))
    spaced = json.dumps(json.loads(body), indent=1).encode()  # same JSON, other bytes
    with pytest.raises(BadSignature):
        open_signed_request(spaced, sig, "RegisterRequest", now)
    with pytest.raises(BadRequest):
        open_signed_request(body, "not base64!", "RegisterRequest", now)


def test_the_verified_record_cache_stays_small_however_many_records_pass():
    """Every refresh is new bytes, so a long-lived peer sees unbounded distinct
    records: the cache of verified ones keeps at most RECORD_CACHE_SIZE, a few
    MB, and still answers a repeat without a second verification."""
    import tracemalloc

    from peernet import records
    from peernet.records import RECORD_CACHE_SIZE, canonical_json, make_record, record_from_bytes

    ident = NodeIdentity.generate()
    records._record_from_bytes.cache_clear()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for v in range(RECORD_CACHE_SIZE + 1500):
            signed = make_record(ident, [f"wss://127.0.0.1:{1000 + v % 60000}/gossip"], version=v + 1,
                                 issued_at_ms=1_800_000_000_000 + v)
            record_from_bytes(canonical_json(signed["record"]),
                              records.b64decode(signed["signature"], "signature"))
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    info = records._record_from_bytes.cache_info()
    assert info.currsize == RECORD_CACHE_SIZE
    assert held < 8 * 1024 * 1024, held
    # the newest is still cached: checking it again verifies nothing
    misses = info.misses
    record_from_bytes(canonical_json(signed["record"]), records.b64decode(signed["signature"], "signature"))
    assert records._record_from_bytes.cache_info().misses == misses
    records._record_from_bytes.cache_clear()
