"""The gossip wire format: the one module that encodes and decodes frames.

One WebSocket binary frame carries one message, a msgpack map::

    {"v": 2, "type": <1..6>, "ttl": <0..32>, "body": <bytes>}

``body`` is itself a msgpack map, kept as the exact bytes received: the
message id is ``sha256(body)[:16]``, so no relay can alter a message without
changing its identity.  ``ttl`` sits outside the body because every hop
decrements it.

No envelope carries a signature (protocol version 2; version 1 had an
Ed25519 ``sig`` over the body of PEER_ANNOUNCEMENT and PEER_UPDATE).  What a
push carries that matters, the origin's record, is self-signed (``rsig``,
checked against the record's own public key), and that one signature is the
check: docs/protocol.md ("One signature per push") says why nothing is lost.

:func:`decode` checks everything that can be checked without state or time:
size, structure, exact field sets and types, the protocol version and the TTL
range of the type.  Timestamps, deduplication and record signatures are the
GossipCore's job (in that order, cheapest first).  Every problem raises
:class:`CodecError`; nothing else escapes.
"""

import enum
import hashlib
from typing import Annotated, NamedTuple

import msgpack
import msgspec

from peernet import constants
from peernet.errors import BadRequest


class MessageType(enum.IntEnum):
    HELLO = 1
    PEER_ANNOUNCEMENT = 2
    PEER_REQUEST = 3
    PEER_LIST_RESPONSE = 4
    HEARTBEAT = 5
    PEER_UPDATE = 6


#: Types that carry their origin's self-signed record (``rec`` + ``rsig``),
#: whose signature is the message's only one (there is no envelope signature).
PUSH_TYPES = frozenset({MessageType.PEER_ANNOUNCEMENT, MessageType.PEER_UPDATE})
#: Types relayed beyond one link (deduplicated by message id).
RELAYED_TYPES = frozenset({
    MessageType.PEER_ANNOUNCEMENT, MessageType.PEER_UPDATE,
    MessageType.PEER_REQUEST, MessageType.PEER_LIST_RESPONSE,
})

ID_BYTES = 16
DIGEST_BYTES = 16
BUCKET_HASH_BYTES = 8
SIGNATURE_BYTES = 64
MAX_RECORD_BYTES = 16 * 1024
#: Changes a digest ping may name (HEARTBEAT "recent").
MAX_RECENT = 8


class CodecError(BadRequest):
    """A frame that is not a valid peernet message; ``code`` says why."""

    code = "malformed"


class Message(NamedTuple):
    """A decoded, structurally valid message.  ``id`` is ``message_id(body_bytes)``,
    computed once by :func:`decode` (asked twice per relayed message:
    duplicate check, then add).  Immutable (a named tuple: cheaper to build
    than a frozen dataclass, read the same way)."""

    type: MessageType
    ttl: int
    body: dict
    body_bytes: bytes
    id: bytes
    version: int = constants.PROTOCOL_VERSION


def message_id(body_bytes):
    return hashlib.sha256(body_bytes).digest()[:ID_BYTES]


# -- field checks -----------------------------------------------------------------


def _bin(n=None, max_len=None):
    def check(v):
        if not isinstance(v, bytes):
            return "must be bytes"
        if n is not None and len(v) != n:
            return f"must be {n} bytes"
        if max_len is not None and len(v) > max_len:
            return f"must be at most {max_len} bytes"
    return check


def _int(lo, hi):
    def check(v):
        if type(v) is not int or not lo <= v <= hi:
            return f"must be an integer from {lo} to {hi}"
    return check


def _bool(v):
    if type(v) is not bool:
        return "must be true or false"


def _str(lo, hi):
    def check(v):
        if not isinstance(v, str) or not lo <= len(v) <= hi:
            return f"must be a string of {lo} to {hi} characters"
    return check


def _hex64(v):
    if not isinstance(v, str) or len(v) != 64 or v.strip("0123456789abcdef"):
        return "must be 64 lowercase hex characters"


def _versions(v):
    if not isinstance(v, list) or not 1 <= len(v) <= 8 or any(type(x) is not int or not 0 < x < 256 for x in v):
        return "must be a list of 1 to 8 small integers"


def _records(v):
    if not isinstance(v, list) or len(v) > constants.MAX_RECORDS_PER_RESPONSE:
        return f"must be a list of at most {constants.MAX_RECORDS_PER_RESPONSE} records"
    for item in v:
        if (not isinstance(item, list) or len(item) != 2
                or _bin(max_len=MAX_RECORD_BYTES)(item[0]) or _bin(SIGNATURE_BYTES)(item[1])):
            return "must hold [record bytes, 64-byte signature] pairs"


def _buckets(v):
    if not isinstance(v, dict) or len(v) > constants.DIGEST_BUCKETS:
        return "must map bucket numbers to hashes"
    for k, h in v.items():
        if type(k) is not int or not 0 <= k < constants.DIGEST_BUCKETS or _bin(BUCKET_HASH_BYTES)(h):
            return f"must map bucket numbers (0-{constants.DIGEST_BUCKETS - 1}) to {BUCKET_HASH_BYTES}-byte hashes"


def _recent(v):
    if not isinstance(v, list) or len(v) > MAX_RECENT:
        return f"must be a list of at most {MAX_RECENT} changes"
    for item in v:
        if (not isinstance(item, list) or len(item) != 3 or _bin(32)(item[0])
                or _int(0, 2**53)(item[1]) or _int(0, 2**53)(item[2])):
            return "must hold [peer_id (32 bytes), version, issued_at] triples"


_TS = _int(0, 2**53)
_COMMON = {"id": (_bin(ID_BYTES), True), "ts": (_TS, True)}
_RECORD = {"rec": (_bin(max_len=MAX_RECORD_BYTES), True), "rsig": (_bin(SIGNATURE_BYTES), True)}

#: field -> (check, required) for each message type's body.
BODY_FIELDS = {
    MessageType.HELLO: {
        **_COMMON,
        "versions": (_versions, True),
        "bc": (_bool, True),
        "rec": (_bin(max_len=MAX_RECORD_BYTES), False),
        "rsig": (_bin(SIGNATURE_BYTES), False),
        "repos": (_int(0, 2**31), True),
        "digest": (_bin(DIGEST_BYTES), True),
        "n": (_int(0, 2**31), True),
        "eager": (_bool, False),
    },
    MessageType.PEER_ANNOUNCEMENT: {**_COMMON, **_RECORD},
    MessageType.PEER_UPDATE: {**_COMMON, **_RECORD},
    MessageType.PEER_REQUEST: {
        **_COMMON,
        "repo": (_str(1, 255), False),
        "peer": (_hex64, False),
        "sync": (_buckets, False),
    },
    MessageType.PEER_LIST_RESPONSE: {
        **_COMMON,
        "re": (_bin(ID_BYTES), True),
        "recs": (_records, True),
    },
    MessageType.HEARTBEAT: {
        **_COMMON,
        "digest": (_bin(DIGEST_BYTES), True),
        "n": (_int(0, 2**31), True),
        "load": (_int(0, 100), True),
        "recent": (_recent, False),
        "eager": (_bool, False),
    },
}

_ENVELOPE_KEYS = frozenset({"v", "type", "ttl", "body"})


def _unpack(data, what):
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=False, use_list=True,
            ext_hook=_no_ext, timestamp=0,
        )
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData,
            OverflowError, RecursionError, UnicodeDecodeError) as e:
        raise CodecError(f"the {what} is not valid msgpack ({type(e).__name__})")
    if not isinstance(value, dict):
        raise CodecError(f"the {what} is not a map")
    return value


def _no_ext(code, data):
    raise CodecError("msgpack extension types are not allowed")


def decode(frame):
    """Decode and structurally validate one frame; raise CodecError if bad."""
    if type(frame) is bytes and len(frame) <= constants.MAX_MESSAGE_BYTES:
        message = _decode_fast(frame)
        if message is not None:
            return message
    return _decode_reference(frame)


def _decode_reference(frame):
    """The definition of :func:`decode`: every check spelled out, every error."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise CodecError("a frame must be bytes")
    if len(frame) > constants.MAX_MESSAGE_BYTES:
        raise CodecError(
            f"the frame is {len(frame)} bytes; the limit is {constants.MAX_MESSAGE_BYTES}",
            code="oversized",
        )
    env = _unpack(bytes(frame), "frame")
    # The version first: a version-1 frame (which has a "sig" field) gets
    # the clear answer, not a complaint about its fields.
    version = env.get("v")
    if version != constants.PROTOCOL_VERSION or type(version) is not int:
        raise CodecError(f"unsupported protocol version {str(version)[:20]} "
                         f"(this node speaks {constants.PROTOCOL_VERSION})", code="bad_version")
    if env.keys() != _ENVELOPE_KEYS:
        raise CodecError("the envelope must have exactly the fields v, type, ttl, body")
    mtype = _TYPES.get(env["type"]) if type(env["type"]) is int else None
    if mtype is None:
        raise CodecError(f"unknown message type {str(env['type'])[:20]}", code="unknown_type")
    ttl = env["ttl"]
    if type(ttl) is not int or not 0 <= ttl <= constants.MAX_TTL_BY_TYPE[mtype]:
        raise CodecError(
            f"ttl {str(ttl)[:20]} is out of range for {mtype.name} "
            f"(0-{constants.MAX_TTL_BY_TYPE[mtype]})",
            code="bad_ttl",
        )
    body_bytes = env["body"]
    if not isinstance(body_bytes, bytes):
        raise CodecError("body must be bytes")
    body = _unpack(body_bytes, "body")
    _check_body(mtype, body)
    return Message(mtype, ttl, body, body_bytes, message_id(body_bytes))


_TYPES = {int(t): t for t in MessageType}
_FIELD_NAMES = {t: frozenset(fields) for t, fields in BODY_FIELDS.items()}


def _check_body(mtype, body):
    fields = BODY_FIELDS[mtype]
    unknown = body.keys() - _FIELD_NAMES[mtype]
    if unknown:
        raise CodecError(f"{mtype.name} has unknown fields: {', '.join(sorted(map(str, unknown)))[:100]}")
    for name, (check, required) in fields.items():
        if name not in body:
            if required:
                raise CodecError(f"{mtype.name} is missing the field {name}")
            continue
        problem = check(body[name])
        if problem:
            raise CodecError(f"{mtype.name}.{name} {problem}")
    if mtype is MessageType.HELLO and body["bc"] != ("rec" in body and "rsig" in body):
        raise CodecError("HELLO carries a record exactly when it is from a broadcasting peer")
    if mtype is MessageType.HELLO and not body["bc"] and ("rec" in body or "rsig" in body):
        raise CodecError("a silent peer's HELLO must not carry a record")
    if mtype is MessageType.PEER_REQUEST and sum(k in body for k in ("repo", "peer", "sync")) != 1:
        raise CodecError("PEER_REQUEST asks exactly one of repo, peer or sync")


# -- the fast path ----------------------------------------------------------------
#
# The frequent types (PEER_ANNOUNCEMENT, PEER_UPDATE, HEARTBEAT) in one
# msgspec decode (C) of the envelope and one of the body, each into a Struct
# whose fields, types and bounds are BODY_FIELDS' (unknown fields refused;
# msgspec, like msgpack, keeps the last of duplicate keys).  It only ever
# accepts: anything else (another type, another version, any problem) goes to
# _decode_reference, which decides with its own errors, so every error code,
# message and the version-first rule stay as they are.
# tests/test_codec_fast.py holds the two together on random and broken frames.

_Id = Annotated[bytes, msgspec.Meta(min_length=ID_BYTES, max_length=ID_BYTES)]
_Ts = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**31)]


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    v: int
    type: int
    ttl: int
    body: bytes


class _PushBody(msgspec.Struct, forbid_unknown_fields=True):
    id: _Id
    ts: _Ts
    rec: Annotated[bytes, msgspec.Meta(max_length=MAX_RECORD_BYTES)]
    rsig: Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]


class _HeartbeatBody(msgspec.Struct, forbid_unknown_fields=True):
    id: _Id
    ts: _Ts
    digest: Annotated[bytes, msgspec.Meta(min_length=DIGEST_BYTES, max_length=DIGEST_BYTES)]
    n: _Count
    load: Annotated[int, msgspec.Meta(ge=0, le=100)]
    recent: Annotated[list[tuple[Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)],
                                 _Ts, _Ts]],
                      msgspec.Meta(max_length=MAX_RECENT)] = None
    eager: bool = None  # absent: None; a nil in the frame is refused (not a bool)


def _push_dict(b):
    return {"id": b.id, "ts": b.ts, "rec": b.rec, "rsig": b.rsig}


def _heartbeat_dict(b):
    body = {"id": b.id, "ts": b.ts, "digest": b.digest, "n": b.n, "load": b.load}
    if b.recent is not None:
        body["recent"] = [list(change) for change in b.recent]
    if b.eager is not None:
        body["eager"] = b.eager
    return body


_decode_envelope = msgspec.msgpack.Decoder(_Envelope).decode
_encode_envelope = msgspec.msgpack.Encoder().encode
_push_decoder = msgspec.msgpack.Decoder(_PushBody).decode
#: type number -> (type, max ttl, body decoder, Struct -> body dict)
_FAST = {
    int(MessageType.PEER_ANNOUNCEMENT): (MessageType.PEER_ANNOUNCEMENT,
                                         constants.MAX_TTL_BY_TYPE[MessageType.PEER_ANNOUNCEMENT],
                                         _push_decoder, _push_dict),
    int(MessageType.PEER_UPDATE): (MessageType.PEER_UPDATE,
                                   constants.MAX_TTL_BY_TYPE[MessageType.PEER_UPDATE],
                                   _push_decoder, _push_dict),
    int(MessageType.HEARTBEAT): (MessageType.HEARTBEAT,
                                 constants.MAX_TTL_BY_TYPE[MessageType.HEARTBEAT],
                                 msgspec.msgpack.Decoder(_HeartbeatBody).decode, _heartbeat_dict),
}
#: What a msgspec decode raises on bad input (ValidationError is a DecodeError;
#: invalid UTF-8 in a key is a UnicodeDecodeError, a ValueError).
_FAST_ERRORS = (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError)
_new_message = tuple.__new__
_sha256 = hashlib.sha256


def _decode_fast(frame):
    """The Message if ``frame`` is a valid message of a frequent type, else None."""
    try:
        env = _decode_envelope(frame)
    except _FAST_ERRORS:
        return None
    fast = _FAST.get(env.type)
    if fast is None or env.v != constants.PROTOCOL_VERSION:
        return None
    mtype, max_ttl, decode_body, as_dict = fast
    ttl = env.ttl
    if not 0 <= ttl <= max_ttl:
        return None
    body_bytes = env.body
    try:
        body = as_dict(decode_body(body_bytes))
    except _FAST_ERRORS:
        return None
    return _new_message(Message, (mtype, ttl, body, body_bytes,
                                  _sha256(body_bytes).digest()[:ID_BYTES],
                                  constants.PROTOCOL_VERSION))


# -- encoding ---------------------------------------------------------------------


def encode_body(mtype, body):
    """Encode a body after checking it as decode() would (so we never send junk)."""
    _check_body(_TYPES.get(mtype) or MessageType(mtype), body)  # (an enum call is slow)
    return msgpack.packb(body, use_bin_type=True)


def encode(mtype, ttl, body_bytes):
    """A frame around already-encoded body bytes."""
    # msgspec writes this map byte for byte as msgpack.packb(use_bin_type=True)
    # does (tests/test_codec_fast.py), in a third of the time (no Packer per call).
    frame = _encode_envelope(
        {"v": constants.PROTOCOL_VERSION, "type": int(mtype), "ttl": ttl, "body": body_bytes})
    if len(frame) > constants.MAX_MESSAGE_BYTES:
        raise CodecError("the message would exceed the frame limit", code="oversized")
    return frame


def relay(message, ttl):
    """The frame for forwarding ``message`` with a new TTL (body untouched)."""
    return encode(message.type, ttl, message.body_bytes)
