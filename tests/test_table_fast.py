"""entry_from_wire's trimmed build keeps every value: the identity hash is the
sha256 of its documented bytes (digests are compared between nodes, so it must
never change), and the entry's fields are what they were."""

import hashlib

from peernet import constants
from peernet.gossip.table import PeerEntry, entry_from_wire, identity_hash, record_hash
from peernet.identity import NodeIdentity
from peernet.records import b64decode, canonical_json, make_record


def reference_identity_hash(record):
    kind = b"live" if record["is_broadcasting"] else b"tombstone"
    data = b"peernet-record-identity\0%s\0%d\0%s" % (
        record["peer_id"].encode("ascii"), record["version"], kind)
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "big")


def test_identity_hash_is_the_documented_sha256():
    for version in (0, 1, 7, 2**53):
        for live in (True, False):
            record = {"peer_id": "ab" * 32, "version": version, "is_broadcasting": live}
            assert identity_hash(record) == reference_identity_hash(record)
    # A fixed value, so a change of definition cannot slip through both sides.
    assert identity_hash({"peer_id": "0" * 64, "version": 1, "is_broadcasting": True}) == GOLDEN


#: identity_hash of that record as computed by main at 9b592ca (before this change).
GOLDEN = 0x0e8a2511cab6ea2c5d7172bb14702db6


def test_entry_from_wire_fields():
    node = NodeIdentity.generate()
    signed = make_record(node, ["wss://127.0.0.1:1/gossip"], version=4,
                         issued_at_ms=1_800_000_000_000, lifetime=9000)
    record_bytes = canonical_json(signed["record"])
    sig = b64decode(signed["signature"], "signature")
    entry = entry_from_wire(record_bytes, sig, 12.5)
    assert isinstance(entry, PeerEntry) and not hasattr(entry, "__dict__")
    assert (entry.peer_id, entry.record, entry.record_bytes, entry.signature) == (
        node.peer_id, signed["record"], record_bytes, sig)
    assert entry.hash == record_hash(record_bytes)
    assert entry.received_at == 12.5 and entry.lifetime == 9000.0
    assert entry.ident == reference_identity_hash(signed["record"])
    assert entry_from_wire(record_bytes, sig, 1.0, record_hash=5).hash == 5
    signed = make_record(node, ["wss://127.0.0.1:1/gossip"], version=5,
                         issued_at_ms=1_800_000_000_000)
    entry = entry_from_wire(canonical_json(signed["record"]),
                            b64decode(signed["signature"], "signature"))
    assert entry.lifetime == float(constants.RECORD_LIFETIME)
