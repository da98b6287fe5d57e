"""The wire codec: every message type round-trips; every malformed frame is a
CodecError (and nothing else escapes)."""

import os

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import CodecError, MessageType as T

ID = b"i" * 16
GOOD_BODIES = {
    T.HELLO: {"id": ID, "ts": 1, "versions": [1], "bc": False, "repos": 0, "digest": b"d" * 16, "n": 0},
    T.PEER_ANNOUNCEMENT: {"id": ID, "ts": 1, "rec": b"{}", "rsig": b"s" * 64},
    T.PEER_UPDATE: {"id": ID, "ts": 1, "rec": b"{}", "rsig": b"s" * 64},
    T.PEER_REQUEST: {"id": ID, "ts": 1, "repo": "films"},
    T.PEER_LIST_RESPONSE: {"id": ID, "ts": 1, "re": b"r" * 16, "recs": [[b"{}", b"s" * 64]]},
    T.HEARTBEAT: {"id": ID, "ts": 1, "digest": b"d" * 16, "n": 3, "load": 5},
}


V = constants.PROTOCOL_VERSION


def frame(mtype, body=None, ttl=1, **envelope):
    body_bytes = msgpack.packb(body if body is not None else GOOD_BODIES[mtype], use_bin_type=True)
    env = {"v": V, "type": int(mtype), "ttl": ttl, "body": body_bytes}
    env.update(envelope)
    return msgpack.packb(env, use_bin_type=True)


@pytest.mark.parametrize("mtype", list(T))
def test_every_type_round_trips(mtype):
    body = codec.encode_body(mtype, GOOD_BODIES[mtype])
    msg = codec.decode(codec.encode(mtype, 0 if mtype is T.HELLO else 1, body))
    assert msg.type is mtype and msg.body == GOOD_BODIES[mtype] and msg.version == V
    assert msg.id == codec.message_id(body) and len(msg.id) == 16
    relayed = codec.decode(codec.relay(msg, 0))
    assert relayed.ttl == 0 and relayed.body_bytes == msg.body_bytes and relayed.id == msg.id


@pytest.mark.parametrize("mtype, ttl, ok", [
    (T.PEER_UPDATE, 32, True), (T.PEER_UPDATE, 33, False), (T.PEER_ANNOUNCEMENT, 33, False),
    (T.PEER_REQUEST, 16, True), (T.PEER_REQUEST, 17, False), (T.HEARTBEAT, 2, True),
    (T.HEARTBEAT, 3, False), (T.HELLO, 2, False), (T.PEER_UPDATE, -1, False),
    (T.PEER_UPDATE, True, False), (T.PEER_UPDATE, 1.0, False),
])
def test_ttl_range_by_type(mtype, ttl, ok):
    if ok:
        assert codec.decode(frame(mtype, ttl=ttl)).ttl == ttl
    else:
        with pytest.raises(CodecError) as e:
            codec.decode(frame(mtype, ttl=ttl))
        assert e.value.code in ("bad_ttl", "malformed")


BAD_FRAMES = {
    "empty": b"",
    "not msgpack": b"\xc1\xc1",
    "array": msgpack.packb([1, 2, 3]),
    "unknown type 7": frame(T.HEARTBEAT, type=7),
    "unknown type 0": frame(T.HEARTBEAT, type=0),
    "type as string": frame(T.HEARTBEAT, type="HEARTBEAT"),
    "version 3": frame(T.HEARTBEAT, v=V + 1),
    "version as bool": frame(T.HEARTBEAT, v=True),
    "no version": msgpack.packb({"type": 5, "ttl": 1, "body": msgpack.packb(GOOD_BODIES[T.HEARTBEAT])}),
    "extra envelope field": frame(T.HEARTBEAT, extra=1),
    "body not bytes": msgpack.packb({"v": V, "type": 5, "ttl": 1, "body": {"id": ID}}),
    "unknown body field": frame(T.HEARTBEAT, dict(GOOD_BODIES[T.HEARTBEAT], x=1)),
    "missing body field": frame(T.HEARTBEAT, {k: v for k, v in GOOD_BODIES[T.HEARTBEAT].items() if k != "digest"}),
    "wrong field type": frame(T.HEARTBEAT, dict(GOOD_BODIES[T.HEARTBEAT], n="three")),
    "short id": frame(T.HEARTBEAT, dict(GOOD_BODIES[T.HEARTBEAT], id=b"x")),
    "load out of range": frame(T.HEARTBEAT, dict(GOOD_BODIES[T.HEARTBEAT], load=101)),
    # Version 2 has no envelope signature: a "sig" field is an unknown field,
    # whatever the type (version 1 carried one on pushes).
    "envelope signature on a push": frame(T.PEER_UPDATE, sig=b"x" * 64),
    "envelope signature on a heartbeat": frame(T.HEARTBEAT, sig=b"x" * 64),
    "nil envelope signature": frame(T.HEARTBEAT, sig=None),
    "push with a short record signature": frame(T.PEER_UPDATE, dict(GOOD_BODIES[T.PEER_UPDATE], rsig=b"s" * 10)),
    "push without its record signature": frame(T.PEER_UPDATE, {"id": ID, "ts": 1, "rec": b"{}"}),
    "silent hello with record": frame(T.HELLO, dict(GOOD_BODIES[T.HELLO], rec=b"{}", rsig=b"s" * 64), ttl=0),
    "broadcasting hello without record": frame(T.HELLO, dict(GOOD_BODIES[T.HELLO], bc=True), ttl=0),
    "request asking two things": frame(T.PEER_REQUEST, dict(GOOD_BODIES[T.PEER_REQUEST], peer="a" * 64)),
    "request asking nothing": frame(T.PEER_REQUEST, {"id": ID, "ts": 1}),
    "bad bucket number": frame(T.PEER_REQUEST, {"id": ID, "ts": 1, "sync": {256: b"h" * 8}}, ttl=0),
    "too many records": frame(T.PEER_LIST_RESPONSE, dict(
        GOOD_BODIES[T.PEER_LIST_RESPONSE], recs=[[b"{}", b"s" * 64]] * 65)),
    "extension type": msgpack.packb({"v": V, "type": 5, "ttl": 1, "body": msgpack.ExtType(1, b"x")}),
    "oversized": frame(T.HEARTBEAT) + b"\x00" * constants.MAX_MESSAGE_BYTES,
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_malformed_frames_are_codec_errors(name):
    with pytest.raises(CodecError):
        codec.decode(BAD_FRAMES[name])


def test_every_truncation_of_a_valid_frame_is_rejected():
    good = codec.encode(T.PEER_UPDATE, 5, codec.encode_body(T.PEER_UPDATE, GOOD_BODIES[T.PEER_UPDATE]))
    for cut in range(len(good)):
        with pytest.raises(CodecError):
            codec.decode(good[:cut])


def test_encoder_refuses_what_the_decoder_would():
    with pytest.raises(CodecError):
        codec.encode_body(T.HEARTBEAT, {"id": ID})


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_codec_error(data):
    try:
        codec.decode(data)
    except CodecError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.binary(max_size=20), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=20))
def test_arbitrary_msgpack_bodies_never_crash(body):
    for mtype in T:
        data = msgpack.packb({"v": V, "type": int(mtype), "ttl": 0,
                              "body": msgpack.packb(body)})
        try:
            codec.decode(data)
        except CodecError:
            pass


def test_random_garbage_inside_valid_envelope():
    for _ in range(200):
        data = msgpack.packb({"v": V, "type": 5, "ttl": 1, "body": os.urandom(40)})
        with pytest.raises(CodecError):
            codec.decode(data)


def test_a_version_1_frame_is_refused_by_its_version():
    """A peer still on protocol version 1 (envelope signature on pushes) gets
    one clear answer, bad_version naming both versions, not a field error."""
    body = msgpack.packb(GOOD_BODIES[T.PEER_UPDATE], use_bin_type=True)
    old = msgpack.packb({"v": 1, "type": int(T.PEER_UPDATE), "ttl": 5, "body": body,
                         "sig": b"x" * 64}, use_bin_type=True)
    with pytest.raises(CodecError) as e:
        codec.decode(old)
    assert e.value.code == "bad_version"
    assert "unsupported protocol version 1" in str(e.value) and f"speaks {V}" in str(e.value)


def test_pushes_carry_no_envelope_signature():
    body = codec.encode_body(T.PEER_UPDATE, GOOD_BODIES[T.PEER_UPDATE])
    env = msgpack.unpackb(codec.encode(T.PEER_UPDATE, 5, body))
    assert set(env) == {"v", "type", "ttl", "body"} and env["v"] == V == 2
    assert codec.PUSH_TYPES == {T.PEER_ANNOUNCEMENT, T.PEER_UPDATE}
