"""The fast record checks (one msgspec decode + a few Python checks) agree with
the reference checks (json.loads with floats refused + the OpenAPI PeerRecord
schema via fastjsonschema + the canonical form + the key binding) on every
record: valid ones, and broken ones of every kind the schema and the canonical
form refuse.  The fast path may only accept what the reference accepts (it
never refuses on its own: the reference decides then, with its own error), and
it should accept everything the reference accepts (or it would cost twice)."""

import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peernet import records
from peernet.errors import BadRequest, PeernetError
from peernet.identity import NodeIdentity
from peernet.records import (b64decode, b64encode, canonical_json, check_key_matches,
                             make_record, record_from_bytes)
from peernet.schemas import openapi_document

IDS = [NodeIdentity.generate() for _ in range(3)]

# The schema text the fast checks mirror (records._build_record_decoder).  If
# this test fails the schema changed: update the mirror, then this hash.
MIRRORED = ("PeerRecord", "Address", "RepoSummary")
MIRRORED_SHA256 = "5a973f8379edb987b0aad9dd53bf920f3076a7cb9bf230dba4bbddf6c3ce80f8"


def _schema_text():
    schemas = openapi_document()["components"]["schemas"]
    return json.dumps({n: schemas[n] for n in MIRRORED}, sort_keys=True).encode()


def test_the_mirrored_schema_is_the_one_the_fast_checks_were_written_for():
    assert hashlib.sha256(_schema_text()).hexdigest() == MIRRORED_SHA256


def reference(record_bytes):
    """The reference verdict: the record dict, or the refusal's code."""
    try:
        record = records._reference_record_checks(record_bytes)
        check_key_matches(record["peer_id"], record["public_key"])
        return record
    except PeernetError as e:
        return ("refused", e.code)


def fast(record_bytes):
    checked = records._fast_record_checks(record_bytes)
    return None if checked is None else checked[0]


def typed(value):
    """A value with its types spelled out (True == 1 in Python, not in JSON)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def agree(record_bytes):
    ref = reference(record_bytes)
    got = fast(record_bytes)
    if isinstance(ref, tuple):
        assert got is None, (record_bytes, ref)
    else:
        assert got is not None, record_bytes
        assert typed(got) == typed(ref)
    # The public entry point: same verdict, same code as the reference (a
    # well-formed record then fails on the dummy signature).
    records._record_from_bytes.cache_clear()
    with pytest.raises(BadRequest) as info:
        record_from_bytes(record_bytes, bytes(64))
    assert info.value.code == (ref[1] if isinstance(ref, tuple) else "bad_signature")
    assert "\n" not in str(info.value)
    return ref


# -- records ------------------------------------------------------------------------

TRICKY_TEXT = st.sampled_from([
    "", "x", "a\n", "wss://127.0.0.1:1/gossip\n", "a/b", "a\\b", "\x00", "\x1f", "\x7f",
    "é", "\u2028", "\U0001f600", "\ud800", '"', "films ", " films", "a" * 255, "a" * 256,
    "0" * 40, "0" * 64, "A" * 64, "0" * 63, "0" * 41,
])
TRICKY_INT = st.sampled_from([
    -1, 0, 1, 7199, 7200, 2592000, 2592001, 2**53, 2**53 + 1, 2**63, 2**64 + 5, 2**70, -2**70,
])
TRICKY = st.one_of(TRICKY_TEXT, TRICKY_INT, st.booleans(), st.none(),
                   st.lists(TRICKY_TEXT, max_size=3), st.just({}), st.just({"name": "x"}))

ADDRESS = st.one_of(
    st.sampled_from(["wss://127.0.0.1:8701/gossip", "bittorrent://10.0.0.1:6881",
                     "a+b.c-d://x", "A://x", "1a://x", "wss://", "wss:// x", "wss://x y",
                     "wss://x\n", "wss://x\t", "wss://\u00a0", "wss://é", "ws s://x",
                     "wss://" + "x" * 249, "wss://" + "x" * 250]),
    st.from_regex(r"\A[a-z][a-z0-9+.-]{0,5}://[^\s]{1,12}\Z"),
    st.text(max_size=12),
)
HEX40 = st.from_regex(r"\A[0-9a-f]{40}\Z")
HEX64 = st.from_regex(r"\A[0-9a-f]{64}\Z")
REPO = st.fixed_dictionaries(
    {"name": st.one_of(st.text(min_size=1, max_size=12), TRICKY_TEXT)},
    optional={"size": st.one_of(st.integers(0, 2**40), TRICKY_INT),
              "files": st.one_of(st.integers(0, 1000), TRICKY_INT),
              "btih": st.one_of(HEX40, TRICKY_TEXT), "btmh": st.one_of(HEX64, TRICKY_TEXT),
              "manifest": st.one_of(HEX64, TRICKY_TEXT)})

FIELDS = ["peer_id", "public_key", "addresses", "is_broadcasting", "is_bootstrap", "version",
          "issued_at", "lifetime", "repos"]


@st.composite
def record_dicts(draw):
    ident = draw(st.sampled_from(IDS))
    record = {
        "peer_id": ident.peer_id,
        "public_key": b64encode(ident.public_key_der),
        "addresses": draw(st.lists(ADDRESS, max_size=4)),
        "is_broadcasting": draw(st.booleans()),
        "is_bootstrap": draw(st.booleans()),
        "version": draw(st.one_of(st.integers(0, 2**53), TRICKY_INT)),
        "issued_at": draw(st.one_of(st.integers(0, 2**53), TRICKY_INT)),
    }
    if draw(st.booleans()):
        record["lifetime"] = draw(st.one_of(st.integers(7200, 2592000), TRICKY_INT))
    if draw(st.booleans()):
        record["repos"] = draw(st.lists(REPO, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        record["addresses"] = record["addresses"] + record["addresses"][:1]  # duplicates
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["set", "drop", "add", "other_key", "odd_key"]))
        name = draw(st.sampled_from(FIELDS))
        if kind == "set":
            record[name] = draw(TRICKY)
        elif kind == "drop":
            record.pop(name, None)
        elif kind == "add":
            record[draw(st.sampled_from(["x", "sig", "Peer_id", ""]))] = draw(TRICKY)
        elif kind == "other_key":
            other = draw(st.sampled_from(IDS))
            record["public_key"] = b64encode(other.public_key_der)
        else:  # any bytes as the "key", bound to peer_id, with odd padding or none
            der = draw(st.binary(max_size=48))
            record["public_key"] = b64encode(der).rstrip("=") + draw(
                st.sampled_from(["", "=", "==", "===", "\n", "A"]))
            record["peer_id"] = hashlib.sha256(der).hexdigest()
    return record


VALID_ADDRESS = st.from_regex(r"\A[a-z][a-z0-9+.-]{0,5}://[^\s]{1,12}\Z")
VALID_REPO = st.fixed_dictionaries(
    {"name": st.from_regex(r"\A[^/\\\x00-\x1f]{1,12}\Z")},
    optional={"size": st.integers(0, 2**70), "files": st.integers(0, 1000), "btih": HEX40,
              "btmh": HEX64, "manifest": HEX64})


@st.composite
def valid_record_dicts(draw):
    ident = draw(st.sampled_from(IDS))
    live = draw(st.booleans())
    record = {
        "peer_id": ident.peer_id,
        "public_key": b64encode(ident.public_key_der),
        "addresses": draw(st.lists(VALID_ADDRESS, max_size=16, unique=True)),
        "is_broadcasting": live,
        "is_bootstrap": draw(st.booleans()),
        "version": draw(st.integers(0, 2**53)),
        "issued_at": draw(st.integers(0, 2**53)),
    }
    if draw(st.booleans()):
        record["lifetime"] = draw(st.integers(7200, 2592000))
    if draw(st.booleans()):
        record["repos"] = draw(st.lists(VALID_REPO, max_size=4))
    return record


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_record_dicts())
def test_valid_records_are_accepted_by_both(record):
    assert not isinstance(agree(serialize(record)), tuple)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_record_dicts(), st.binary(max_size=48),
       st.sampled_from(["", "=", "==", "===", "====", "\n", "A", " "]))
def test_agree_on_records_with_odd_keys(record, der, padding):
    record["public_key"] = b64encode(der).rstrip("=") + padding
    record["peer_id"] = hashlib.sha256(der).hexdigest()
    agree(serialize(record))


def serialize(record):
    try:
        return canonical_json(record)
    except BadRequest:  # a lone surrogate: only JSON's \\ud800 escape can carry it
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


MUTATIONS = [
    (b":1,", b":1.0,"), (b":0,", b":0.0,"), (b":1,", b":1e0,"), (b":1,", b":true,"),
    (b'"version":', b'"version":-0,"x":'), (b'"version":', b'"version":1e3,"x":'),
    (b'"version":', b'"version":NaN,"x":'), (b'"issued_at":', b'"issued_at":Infinity,"y":'),
    (b",", b", "), (b"{", b"{ "), (b"}", b"}\n"), (b":", b": "),
    (b'"is_bootstrap":true', b'"is_bootstrap":1'), (b'"is_bootstrap":false', b'"is_bootstrap":0'),
    (b'"version"', b'"\\u0076ersion"'), (b"/", b"\\/"), (b"wss", b"\\u0077ss"),
    (b'"addresses":[', b'"addresses":["wss://x","wss://x",'),
    (b'"addresses":[', b'"addresses":["wss://x\\n",'),
    (b'"addresses":[', b'"addresses":["wss://\\ud800",'),
    (b'"peer_id":"', b'"peer_id":"\\u0030'),
    (b'"is_bootstrap"', b'"is_bootstrap":true,"is_bootstrap"'),
    (b'"version":', b'"version":99999999999999999999999999,"v":'),
    (b'"version":', b'"versio":'), (b'"public_key":"', b'"public_key":"\\n'),
    (b'=",', b'=\\n",'), (b'=",', b'===",'), (b'=",', b'====",'), (b'=",', b'",'),
    (b"}", b"}}"), (b"{", b"[{"), (b'"', b"'"),
]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_dicts())
def test_fast_and_reference_checks_agree_on_records(record):
    agree(serialize(record))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_dicts(), st.sampled_from(MUTATIONS), st.integers(0, 5))
def test_fast_and_reference_checks_agree_on_mutated_bytes(record, mutation, skip):
    data = serialize(record)
    old, new = mutation
    at = -1
    for _ in range(skip + 1):
        nxt = data.find(old, at + 1)
        if nxt < 0:
            break
        at = nxt
    if at >= 0:
        data = data[:at] + new + data[at + len(old):]
    agree(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_fast_and_reference_checks_agree_on_junk(data):
    agree(data)


def _good(ident=None, **kw):
    ident = ident or IDS[0]
    signed = make_record(ident, kw.pop("addresses", ["wss://127.0.0.1:8701/gossip"]),
                         version=kw.pop("version", 3), issued_at_ms=1_800_000_000_000, **kw)
    return canonical_json(signed["record"]), b64decode(signed["signature"], "signature")


def test_valid_records_pass_the_fast_path_and_verify():
    for kw in ({}, {"lifetime": 7200}, {"lifetime": 2592000},
               {"repos": [{"name": "films", "size": 2**70, "files": 0, "btih": "0" * 40,
                           "btmh": "a" * 64, "manifest": "f" * 64}]},
               {"addresses": []}, {"version": 2**53}):
        record_bytes, sig = _good(**kw)
        assert fast(record_bytes) is not None, kw
        records._record_from_bytes.cache_clear()
        assert record_from_bytes(record_bytes, sig) == json.loads(record_bytes)


@pytest.mark.parametrize("old,new,code", [
    (b'"version":3', b'"version":3.0', "bad_request"),        # floats: refused by the parse
    (b'"version":3', b'"version":1e3', "bad_request"),
    (b'"version":3', b'"version":NaN', "bad_request"),
    (b'"version":3', b'"version":true', "invalid_body"),      # schema
    (b'"version":3', b'"version":9007199254740993', "invalid_body"),
    (b'"version":3', b'"version":3,"x":1', "invalid_body"),   # unknown field
    (b'"is_bootstrap":true,', b"", "invalid_body"),            # missing field
    (b'gossip"', b'gossip\\n"', "invalid_body"),               # "$" is end of text
    (b'"addresses":["wss://127.0.0.1:8701/gossip"]',
     b'"addresses":["wss://127.0.0.1:8701/gossip","wss://127.0.0.1:8701/gossip"]', "invalid_body"),
    (b'"version":3', b'"version": 3', "bad_request"),          # not canonical
    (b"gossip", b"\\u0067ossip", "bad_request"),
    (b'"version":3', b'"version":3,"version":3', "bad_request"),
])
def test_broken_records_keep_their_error_codes(old, new, code):
    record_bytes, sig = _good()
    assert old in record_bytes
    broken = record_bytes.replace(old, new, 1)
    assert fast(broken) is None
    assert agree(broken) == ("refused", code)
    records._record_from_bytes.cache_clear()
    with pytest.raises(BadRequest) as info:
        record_from_bytes(broken, sig)
    assert info.value.code == code


def test_excess_padding_the_strict_base64_decode_takes_is_still_refused():
    # a2b_base64(strict_mode=True) decodes "AAAA===" (a whole quartet, then
    # padding); the schema's pattern allows at most two "=".  A key whose DER
    # length is a multiple of 3 has no padding of its own.
    der = bytes(range(45))
    record = json.loads(_good()[0])
    record["public_key"] = b64encode(der) + "==="
    record["peer_id"] = hashlib.sha256(der).hexdigest()
    assert records._key_binding(record["public_key"])[:2] == (record["peer_id"], der)
    assert fast(canonical_json(record)) is None
    assert agree(canonical_json(record)) == ("refused", "invalid_body")


def test_a_record_naming_another_key_is_a_bad_signature():
    record = json.loads(_good()[0])
    record["public_key"] = b64encode(IDS[1].public_key_der)
    assert agree(canonical_json(record)) == ("refused", "bad_signature")


def test_key_binding_is_computed_once_per_key():
    records._key_binding.cache_clear()
    record_bytes, sig = _good(IDS[2])
    for version in range(3, 6):
        record_bytes, sig = _good(IDS[2], version=version)
        records._record_from_bytes.cache_clear()
        record_from_bytes(record_bytes, sig)
    info = records._key_binding.cache_info()
    assert info.misses == 1 and info.hits == 2
    with pytest.raises(BadRequest):
        check_key_matches(IDS[2].peer_id, "not base64!")
    assert check_key_matches(IDS[2].peer_id, b64encode(IDS[2].public_key_der)) == \
        IDS[2].public_key_der
