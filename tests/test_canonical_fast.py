"""The orjson canonical encoder used on the gossip hot path writes exactly the
bytes of peernet.records.canonical_json (the definition), for every float-free
JSON value: any text (control characters, DEL, U+2028, astral characters, lone
surrogates), any integer size, nesting, and keys that sort differently by
UTF-16 and by code point."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peernet.errors import BadRequest
from peernet.identity import NodeIdentity
from peernet.records import _canonical_json_fast, canonical_json, make_record, record_from_bytes

TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
INTS = st.one_of(st.integers(-2**70, 2**70), st.integers(-300, 300))
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, TEXT),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(TEXT, children, max_size=5)),
    max_leaves=25,
)


def outcome(encode, value):
    try:
        return encode(value)
    except BadRequest:
        return "refused"


@settings(max_examples=1500, deadline=None)
@given(JSON)
def test_fast_encoder_writes_the_canonical_bytes(value):
    assert outcome(_canonical_json_fast, value) == outcome(canonical_json, value)


@pytest.mark.parametrize("text", ["\x00\x01\x1f", "\x7f", "\u2028\u2029", "\"\\/", "\ud800",
                                  "\U0001f600", "\ufeff", "\ue000\U00010000"])
def test_fast_encoder_on_edge_texts(text):
    value = {text: [text], "b" + text: text}
    assert outcome(_canonical_json_fast, value) == outcome(canonical_json, value)


def test_keys_sort_by_code_point_not_utf16():
    value = {"\ue000": 1, "\U00010000": 2, "\uffff": 3, "a": 4, "\x7f": 5}
    assert _canonical_json_fast(value) == canonical_json(value)
    assert list(json.loads(_canonical_json_fast(value))) == ["a", "\x7f", "\ue000", "\uffff",
                                                             "\U00010000"]


def test_record_with_lone_surrogate_is_a_bad_request_not_a_crash():
    node = NodeIdentity.generate()
    signed = make_record(node, ["bittorrent://10.0.0.1:6881"], version=3,
                         issued_at_ms=1_800_000_000_000, repos=[{"name": "films"}])
    record_bytes = canonical_json(signed["record"]).replace(b'"films"', b'"\\ud800"')
    assert json.loads(record_bytes)["repos"][0]["name"] == "\ud800"
    with pytest.raises(BadRequest):
        record_from_bytes(record_bytes, bytes(64))


def test_non_canonical_record_bytes_are_still_refused():
    node = NodeIdentity.generate()
    signed = make_record(node, ["bittorrent://10.0.0.1:6881"], version=3,
                         issued_at_ms=1_800_000_000_000)
    good = canonical_json(signed["record"])
    from peernet.records import b64decode
    sig = b64decode(signed["signature"], "signature")
    record_from_bytes(good, sig)  # the canonical form passes
    spaced = json.dumps(signed["record"], sort_keys=True).encode()
    unsorted = json.dumps(dict(reversed(list(signed["record"].items()))),
                          separators=(",", ":")).encode()
    escaped = good.replace(b"bittorrent", b"\\u0062ittorrent")
    for variant in (spaced, unsorted, escaped):
        assert json.loads(variant) == signed["record"]
        with pytest.raises(BadRequest, match="canonical"):
            record_from_bytes(variant, sig)
