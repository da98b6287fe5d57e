"""Signed peer records and signed JSON requests.

A *peer record* is what a broadcasting peer says about itself (addresses,
flags, version).  It is signed over its canonical JSON form, so any node can
check it without trusting whoever relayed it::

    {"record": {...}, "signature": "<base64 Ed25519 signature>"}

A *signed request* (bootstrap register/unregister) is a JSON body whose exact
bytes are signed; the signature travels in the ``Peernet-Signature`` header
(base64).  The key is the one named in the body, and ``peer_id`` must equal
the SHA-256 of that key, so only the holder of a peer_id can speak for it.

Schemas come from the bootstrap's OpenAPI document (one place per fact).
"""

import base64
import binascii
import functools
import json
import os
import re
from typing import Annotated, NotRequired, TypedDict

import msgspec
import orjson

from peernet import constants
from peernet.errors import BadRequest, BadSignature, StaleTimestamp
from peernet.identity import peer_id_for, verify
from peernet.schemas import openapi_document, validator

SIGNATURE_HEADER = "Peernet-Signature"


def canonical_json(obj):
    """Deterministic UTF-8 JSON bytes: sorted keys, no whitespace.

    This is the definition of the canonical form.  Text that has no UTF-8
    form (a lone surrogate, which JSON's \\ud800 escape can produce) has no
    canonical form either: BadRequest, not a UnicodeEncodeError.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the JSON holds text with no UTF-8 form (a lone surrogate)")


def _canonical_json_fast(obj):
    """canonical_json for float-free values, about 15 times faster (orjson).

    For str/int/bool/None/list/dict values orjson with sorted keys writes the
    same bytes as canonical_json (tests/test_canonical_fast.py holds the two
    together with hypothesis); what orjson refuses (integers beyond 64 bits,
    lone surrogates) goes to canonical_json, which decides.  Callers pass
    only values parsed with floats refused.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return canonical_json(obj)


def b64encode(data):
    return base64.b64encode(data).decode("ascii")


def b64decode(text, what):
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadRequest(f"{what} is not valid base64")


def new_nonce():
    return os.urandom(16).hex()


# -- peer records ---------------------------------------------------------------


def make_record(identity, addresses, *, is_bootstrap=True, is_broadcasting=True,
                version, issued_at_ms, repos=None, lifetime=None):
    """Build and sign a peer record for ``identity``; returns the signed dict.

    ``lifetime``: seconds the record stays live after ``issued_at`` (whole,
    RECORD_LIFETIME..MAX_RECORD_LIFETIME); None leaves the field out, which
    means RECORD_LIFETIME (docs/protocol.md, "Records").
    """
    record = {
        "peer_id": identity.peer_id,
        "public_key": b64encode(identity.public_key_der),
        "addresses": list(addresses),
        "is_broadcasting": bool(is_broadcasting),
        "is_bootstrap": bool(is_bootstrap),
        "version": int(version),
        "issued_at": int(issued_at_ms),
    }
    if repos:
        record["repos"] = [dict(r) for r in repos]
    if lifetime is not None:
        record["lifetime"] = int(lifetime)
    return {"record": record, "signature": b64encode(identity.sign(canonical_json(record)))}


def check_key_matches(peer_id, public_key_b64):
    """Decode a record's key and check that it hashes to ``peer_id``."""
    bound_peer_id, der, _ = _key_binding(public_key_b64)
    if bound_peer_id != peer_id:
        raise BadSignature("peer_id is not the SHA-256 of public_key")
    return der


# The same key comes back with every refresh and update of its peer: its
# base64 decode and SHA-256 are done once per key (a pure function of the
# text; failures are not cached).  One str argument: lru_cache's cheapest
# key.  ~0.4 KB per entry, so at most ~7 MB.
@functools.lru_cache(maxsize=16384)
def _key_binding(public_key_b64):
    """(peer_id, DER key, whether the text matches the PeerRecord schema's
    public_key pattern) of a base64 key; BadRequest if not base64."""
    der = b64decode(public_key_b64, "public_key")
    return peer_id_for(der), der, _public_key_pattern()(public_key_b64) is not None


@functools.lru_cache(maxsize=None)
def _public_key_pattern():
    # Checked here, once per key: the strict base64 decode accepts a little
    # more than the pattern (excess padding, "AAAA===").
    return re.compile(_pattern(_schema_props("PeerRecord")["public_key"])).search


def verify_signed_record(signed):
    """Validate a signed record's shape, key binding and signature.

    Returns the inner record dict; raises BadRequest/BadSignature otherwise.
    """
    validator("SignedRecord").check(signed)
    record = signed["record"]
    if (type(record["version"]) is not int or type(record["issued_at"]) is not int
            or type(record.get("lifetime", 0)) is not int):
        raise BadRequest("record version, issued_at and lifetime must be whole numbers")
    der = check_key_matches(record["peer_id"], record["public_key"])
    verify(der, b64decode(signed["signature"], "signature"), canonical_json(record))
    return record


def record_from_bytes(record_bytes, signature):
    """Check a record carried as its canonical JSON bytes plus signature.

    Used by gossip, which moves records as bytes.  The bytes must be the
    canonical form (one record, one byte string: digests and ids depend on
    it), signed by the key they name.  Returns the record dict, which callers
    must treat as read-only (it may be shared, see below).
    """
    return _record_from_bytes(bytes(record_bytes), bytes(signature))


# Verification is a pure function of (bytes, signature): caching successful
# results changes no outcome, and saves the Ed25519 verify (~55 us) when the
# same record reaches a process several times (many cores in one simulator;
# in a peer, the duplicate filter and the table catch nearly every repeat
# first).  Every refresh of every peer is new bytes, so a cache this size
# fills in a day on any network and then holds superseded versions: 4096
# records of ~1.4 KB (bytes, signature, dict; measured by tracemalloc) is ~6 MB
# at most, where the 65 536 of before reached ~90 MB.
RECORD_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=RECORD_CACHE_SIZE)
def _record_from_bytes(record_bytes, signature):
    checked = _fast_record_checks(record_bytes)
    if checked is None:
        # Something is off (or merely unusual): the reference checks decide,
        # with their exact errors and codes.
        record = _reference_record_checks(record_bytes)
        der = check_key_matches(record["peer_id"], record["public_key"])
    else:
        record, der = checked
    verify(der, signature, record_bytes)
    return record


def _reference_record_checks(record_bytes):
    """The definition of a well-formed record: JSON with floats refused, the
    OpenAPI PeerRecord schema, the canonical form.  Returns the record dict or
    raises BadRequest (code bad_request, or invalid_body for the schema)."""
    try:
        record = json.loads(record_bytes, parse_float=_refuse_float, parse_constant=_refuse_float)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the record is not valid JSON")
    validator("PeerRecord").check(record)
    if _canonical_json_fast(record) != record_bytes:
        raise BadRequest("the record is not in canonical JSON form")
    return record


# -- the fast record checks -----------------------------------------------------
#
# One msgspec decode (C) into a dict checks the JSON, every type and bound of
# the PeerRecord schema and the nested RepoSummary; Python adds the few checks
# left: addresses' pattern and uniqueness, the canonical form, the key binding.
# It only ever *accepts*: whatever it does not accept goes to the reference
# checks above, so errors are exactly today's.  Accepting is sound because
#   - the canonical re-encode of the decoded dict equals the bytes, so the
#     bytes are one JSON object without unknown fields (a TypedDict decode
#     drops them, so the re-encode would differ), duplicate keys, whitespace,
#     escapes other than the canonical ones or floats, and json.loads reads
#     the same dict from them;
#   - the types, bounds and patterns below are the schema's (numbers and
#     patterns are read from openapi.json; tests/test_record_fast.py holds
#     the schema's text fixed and checks both paths agree on random and
#     broken records);
#   - peer_id's pattern is implied by the binding (it equals a SHA-256
#     hexdigest); public_key's is checked with the binding, once per key.
# JSON Schema's "$" is read as fastjsonschema reads it: end of text (\Z), not
# Python's "end or before a final newline".

_DOLLAR = re.compile(r"(?<!\\)\$")


def _schema_props(name):
    return openapi_document()["components"]["schemas"][name]["properties"]


def _pattern(prop):
    return _DOLLAR.sub(r"\\Z", prop["pattern"])


def _string(prop):
    return Annotated[str, msgspec.Meta(min_length=prop.get("minLength"),
                                       max_length=prop.get("maxLength"),
                                       pattern=_pattern(prop) if "pattern" in prop else None)]


def _integer(prop):
    return Annotated[int, msgspec.Meta(ge=prop.get("minimum"), le=prop.get("maximum"))]


def _optional(annotation):
    return NotRequired[annotation]


def _build_record_decoder():
    rec = _schema_props("PeerRecord")
    repo = _schema_props("RepoSummary")
    repo_fields = {
        "name": _string(repo["name"]),
        "size": _optional(_integer(repo["size"])),
        "files": _optional(_integer(repo["files"])),
        "btih": _optional(_string(repo["btih"])),
        "btmh": _optional(_string(repo["btmh"])),
        "manifest": _optional(_string(repo["manifest"])),
    }
    RepoSummary = TypedDict("RepoSummary", repo_fields)
    record_fields = {
        "peer_id": str,
        "public_key": Annotated[str, msgspec.Meta(max_length=rec["public_key"]["maxLength"])],
        "addresses": Annotated[list[str], msgspec.Meta(
            min_length=rec["addresses"]["minItems"], max_length=rec["addresses"]["maxItems"])],
        "is_broadcasting": bool,
        "is_bootstrap": bool,
        "version": _integer(rec["version"]),
        "issued_at": _integer(rec["issued_at"]),
        "lifetime": _optional(_integer(rec["lifetime"])),
        "repos": _optional(Annotated[list[RepoSummary], msgspec.Meta(
            max_length=rec["repos"]["maxItems"])]),
    }
    PeerRecord = TypedDict("PeerRecord", record_fields)
    address = openapi_document()["components"]["schemas"]["Address"]
    return (msgspec.json.Decoder(PeerRecord).decode, re.compile(_pattern(address)).search,
            address["minLength"], address["maxLength"])


_record_decoder = None


def _fast_record_checks(record_bytes):
    """(record dict, DER key) if the record is certainly well formed and bound
    to its key; None when the reference checks must decide."""
    global _record_decoder
    if _record_decoder is None:
        _record_decoder = _build_record_decoder()
    decode, address_ok, min_len, max_len = _record_decoder
    try:
        record = decode(record_bytes)
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return None  # (ValidationError is a DecodeError; bad UTF-8 a ValueError)
    addresses = record["addresses"]
    for address in addresses:
        if not min_len <= len(address) <= max_len or not address_ok(address):
            return None
    if len(addresses) > 1 and len(set(addresses)) != len(addresses):
        return None
    if _canonical_json_fast(record) != record_bytes:
        return None
    try:
        peer_id, der, pattern_ok = _key_binding(record["public_key"])
    except BadRequest:
        return None
    if peer_id != record["peer_id"] or not pattern_ok:
        return None
    return record, der


# -- signed requests ------------------------------------------------------------


def sign_request(identity, fields):
    """Body bytes and header value for a signed request carrying ``fields``."""
    body = canonical_json(fields)
    return body, b64encode(identity.sign(body))


def open_signed_request(body, signature_header, schema, now):
    """Parse and check a signed request body; return the parsed dict.

    Checks run cheapest first: JSON, schema, timestamp window, key binding,
    and only then the signature.  ``now`` is the receiver's clock in seconds.
    The caller still has to record the nonce (see BootstrapStore).
    """
    try:
        fields = json.loads(body, parse_float=_refuse_float, parse_constant=_refuse_float)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON")
    validator(schema).check(fields)
    check_timestamp(fields["timestamp"], now)
    if not signature_header:
        raise BadSignature(f"the {SIGNATURE_HEADER} header is missing")
    signature = b64decode(signature_header, f"the {SIGNATURE_HEADER} header")
    der = check_key_matches(fields["peer_id"], fields["public_key"])
    verify(der, signature, body)
    return fields


def _refuse_float(text):
    # Signed JSON carries whole numbers only: "1.0" and "1" would sign
    # differently in other languages' canonical forms.
    raise BadRequest(f"numbers must be whole numbers, not {text[:20]}")


def check_timestamp(timestamp_ms, now):
    skew = timestamp_ms / 1000.0 - now
    if abs(skew) > constants.CLOCK_SKEW_SECONDS:
        direction = "in the future" if skew > 0 else "old"
        raise StaleTimestamp(
            f"the timestamp is {abs(skew):.0f} s {direction}; at most "
            f"{constants.CLOCK_SKEW_SECONDS} s of clock difference is accepted"
        )
