"""codec.decode's fast path (msgspec Structs for PEER_ANNOUNCEMENT, PEER_UPDATE
and HEARTBEAT) agrees with the reference decoder (codec._decode_reference: the
spelled-out checks) on every frame: the same Message, or the same error code
and message.  The fast path only accepts; what it does not accept goes to the
reference, so it must never accept what the reference refuses, and should
accept every valid frame of its types."""

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import CodecError, MessageType as T

FAST_TYPES = {int(T.PEER_ANNOUNCEMENT), int(T.PEER_UPDATE), int(T.HEARTBEAT)}


def typed(value):
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [type(value).__name__] + [typed(v) for v in value]
    return (type(value).__name__, value)


def outcome(decode, frame):
    try:
        m = decode(frame)
    except CodecError as e:
        assert type(e) is CodecError and "\n" not in str(e)
        return ("refused", e.code, str(e))
    return (m.type, type(m.type), m.ttl, typed(m.body), m.body_bytes, m.id, m.version)


def agree(frame):
    ref = outcome(codec._decode_reference, frame)
    assert outcome(codec.decode, frame) == ref
    fast = codec._decode_fast(frame) if isinstance(frame, bytes) else None
    if ref[0] == "refused":
        assert fast is None
    elif int(ref[0]) in FAST_TYPES:
        assert fast is not None, frame  # every valid frame of the fast types is fast
    return ref


ODD = st.sampled_from([None, True, False, 1.0, -1, 0, 2**53, 2**53 + 1, 2**31, 2**31 + 1, 101,
                       2**64 - 1, -2**63, "x", "", b"", b"\x00" * 15, b"\x00" * 16,
                       b"\x00" * 17, b"\x00" * 32, b"\x00" * 63, b"\x00" * 64, [], {}, [1, 2, 3],
                       msgpack.ExtType(1, b"x")])
BIN = st.one_of(st.binary(max_size=70), st.sampled_from([os.urandom(16), os.urandom(64),
                                                          os.urandom(32)]))
RECENT_ITEM = st.one_of(
    st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**53), st.integers(0, 2**53)),
    st.lists(st.one_of(ODD, BIN, st.integers(-2, 2**53 + 2)), max_size=4))


@st.composite
def bodies(draw, mtype):
    body = {"id": os.urandom(16), "ts": draw(st.integers(0, 2**53))}
    if mtype in (T.PEER_ANNOUNCEMENT, T.PEER_UPDATE):
        body["rec"] = draw(st.binary(max_size=300))
        body["rsig"] = os.urandom(64)
    elif mtype == T.HEARTBEAT:
        body.update(digest=os.urandom(16), n=draw(st.integers(0, 2**31)),
                    load=draw(st.integers(0, 100)))
        if draw(st.booleans()):
            body["recent"] = draw(st.lists(RECENT_ITEM, max_size=9))
    else:
        body["other"] = 1
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["set", "drop", "add"]))
        name = draw(st.sampled_from(["id", "ts", "rec", "rsig", "digest", "n", "load", "recent"]))
        if kind == "set":
            body[name] = draw(st.one_of(ODD, BIN))
        elif kind == "drop":
            body.pop(name, None)
        else:
            body[draw(st.sampled_from(["x", "sig", 1, b"id"]))] = draw(ODD)
    return body


def pack(value, bin_type):
    try:
        return msgpack.packb(value, use_bin_type=bin_type)
    except (TypeError, ValueError, OverflowError):
        return msgpack.packb(None)


@st.composite
def frames(draw):
    mtype = draw(st.sampled_from([T.PEER_UPDATE, T.PEER_ANNOUNCEMENT, T.HEARTBEAT, T.HELLO,
                                  T.PEER_REQUEST]))
    bin_type = draw(st.integers(0, 9)) > 0
    body = pack(draw(bodies(mtype)), bin_type)
    env = {"v": constants.PROTOCOL_VERSION, "type": int(mtype),
           "ttl": draw(st.integers(0, constants.MAX_TTL_BY_TYPE[mtype])), "body": body}
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["set", "drop", "add"]))
        name = draw(st.sampled_from(["v", "type", "ttl", "body"]))
        if kind == "set":
            env[name] = draw(st.one_of(ODD, st.integers(-1, 40), st.sampled_from([1, 2, 3])))
        elif kind == "drop":
            env.pop(name, None)
        else:
            env[draw(st.sampled_from(["sig", "x", 0]))] = draw(ODD)
    frame = pack(env, bin_type)
    cut = draw(st.sampled_from(["none", "none", "none", "truncate", "append", "flip"]))
    if cut == "truncate" and frame:
        frame = frame[:draw(st.integers(0, len(frame) - 1))]
    elif cut == "append":
        frame += draw(st.binary(min_size=1, max_size=3))
    elif cut == "flip" and frame:
        i = draw(st.integers(0, len(frame) - 1))
        frame = frame[:i] + bytes([frame[i] ^ draw(st.integers(1, 255))]) + frame[i + 1:]
    return frame


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_fast_decode_agrees_with_the_reference(frame):
    agree(frame)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_fast_decode_agrees_on_junk(frame):
    agree(frame)


def _frame(mtype, body, ttl=3, **env):
    fields = {"v": constants.PROTOCOL_VERSION, "type": int(mtype), "ttl": ttl,
              "body": msgpack.packb(body, use_bin_type=True), **env}
    return msgpack.packb(fields, use_bin_type=True)


PUSH = {"id": bytes(16), "ts": 5, "rec": b"{}", "rsig": bytes(64)}
BEAT = {"id": bytes(16), "ts": 5, "digest": bytes(16), "n": 3, "load": 7,
        "recent": [[bytes(32), 1, 2]]}


def test_valid_frames_of_the_frequent_types_take_the_fast_path():
    for mtype, body in ((T.PEER_UPDATE, PUSH), (T.PEER_ANNOUNCEMENT, PUSH), (T.HEARTBEAT, BEAT),
                        (T.HEARTBEAT, {k: v for k, v in BEAT.items() if k != "recent"})):
        frame = _frame(mtype, body, ttl=constants.MAX_TTL_BY_TYPE[mtype])
        m = codec._decode_fast(frame)
        assert m is not None and m.type is mtype and m.body == body
        assert m.id == codec.message_id(m.body_bytes) and m == codec._decode_reference(frame)
        assert type(m.body.get("recent", [[]])[0]) is list


@pytest.mark.parametrize("frame,code", [
    (_frame(T.PEER_UPDATE, PUSH, v=1, sig=bytes(64)), "bad_version"),   # version first
    (_frame(T.PEER_UPDATE, PUSH, ttl=33), "bad_ttl"),
    (_frame(T.PEER_UPDATE, PUSH, x=1), "malformed"),
    (_frame(T.PEER_UPDATE, {**PUSH, "ts": True}), "malformed"),
    (_frame(T.PEER_UPDATE, {**PUSH, "rsig": bytes(63)}), "malformed"),
    (_frame(T.HEARTBEAT, {**BEAT, "load": 101}, ttl=1), "malformed"),
    (_frame(T.HEARTBEAT, {**BEAT, "recent": [[bytes(32), 1, 2]] * 9}, ttl=1), "malformed"),
    (_frame(T.HEARTBEAT, BEAT, ttl=3), "bad_ttl"),
    (_frame(T.PEER_UPDATE, PUSH) + b"\x00", "malformed"),
])
def test_refusals_keep_their_codes(frame, code):
    assert codec._decode_fast(frame) is None
    assert agree(frame)[:2] == ("refused", code)
    with pytest.raises(CodecError) as info:
        codec.decode(frame)
    assert info.value.code == code


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(T)), st.integers(0, 40),
       st.one_of(st.binary(max_size=300), st.sampled_from([b"x" * 255, b"x" * 256, b"x" * 65535,
                                                           b"x" * 65536])))
def test_encode_writes_what_msgpack_writes(mtype, ttl, body):
    expected = msgpack.packb({"v": constants.PROTOCOL_VERSION, "type": int(mtype), "ttl": ttl,
                              "body": body}, use_bin_type=True)
    if len(expected) > constants.MAX_MESSAGE_BYTES:
        with pytest.raises(CodecError):
            codec.encode(mtype, ttl, body)
    else:
        assert codec.encode(mtype, ttl, body) == expected


def test_heartbeat_eager_flag_fast_and_reference_agree():
    import os

    import msgpack

    for value, ok in ((True, True), (False, True), (None, False), (1, False), ("yes", False)):
        body = {"id": os.urandom(16), "ts": 1, "digest": os.urandom(16), "n": 1, "load": 0,
                "eager": value}
        frame = msgpack.packb({"v": 2, "type": 5, "ttl": 1,
                               "body": msgpack.packb(body, use_bin_type=True)}, use_bin_type=True)
        fast = codec._decode_fast(frame)
        if ok:
            assert fast is not None and fast.body["eager"] is value
            assert codec.decode(frame).body["eager"] is value
        else:
            assert fast is None
            with pytest.raises(codec.CodecError):
                codec.decode(frame)
