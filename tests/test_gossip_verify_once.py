"""The gossip hot path got faster without checking less: a PEER_UPDATE's one
signature (its record's own, protocol version 2) is verified exactly once, a
replay or a re-wrapped copy of a record already held costs no verification,
and a message whose record signature is wrong (as libsodium sees it) changes
nothing, is charged every time, and does not shadow the genuine copy."""

import msgpack
import pytest

from peernet import identity, records
from peernet.gossip import codec
from peernet.gossip.codec import MessageType as T
from peernet.gossip.core import Penalty

from tests.test_gossip_core import Harness


@pytest.fixture
def verify_calls(monkeypatch):
    """Count calls to the real identity.verify from records (the only caller
    on the gossip path: the core has no signature of its own to check)."""
    calls = []

    def counting(der, signature, data):
        calls.append(bytes(data))
        return identity.verify(der, signature, data)

    monkeypatch.setattr(records, "verify", counting)
    return calls


def fresh(h):
    """An update frame whose record this process has not verified yet."""
    frame = h.update_frame()
    # Building the frame checked the sender's own record, and that result is
    # cached process-wide (a pure function of bytes + signature): forget it,
    # as a separate receiving process would not have it.
    records._record_from_bytes.cache_clear()
    return frame


def test_each_update_is_verified_once_and_replays_and_rewraps_not_at_all(verify_calls):
    h = Harness()
    frame = fresh(h)
    msg = codec.decode(frame)
    verify_calls.clear()
    _, changed = h.feed(frame)
    assert changed
    assert verify_calls == [msg.body["rec"]]  # the record; there is no envelope signature
    verify_calls.clear()
    actions, changed = h.feed(frame)  # the same message again: duplicate filter
    assert not changed and not actions and verify_calls == []
    # The same record in a new envelope (new id and ts): found in the table
    # byte for byte, so nothing to verify, and nothing changes.
    records._record_from_bytes.cache_clear()
    actions, changed = h.feed(h.rewrap(frame))
    assert not changed and not actions and verify_calls == []


def test_bad_record_signature_then_genuine_copy(verify_calls):
    h = Harness()
    good = fresh(h)
    msg = codec.decode(good)
    rsig = bytearray(msg.body["rsig"])
    rsig[10] ^= 4
    # Same id and ts as the genuine message, a flipped bit in the signature.
    bad = h.rewrap(good, id=msg.body["id"], ts=msg.body["ts"], rsig=bytes(rsig))
    for _ in range(2):  # refused, and charged, every time: its id was not kept
        verify_calls.clear()
        actions, changed = h.feed(bad)
        assert not changed and verify_calls == [msg.body["rec"]]
        assert [a.code for a in actions if isinstance(a, Penalty)] == ["bad_signature"]
    _, changed = h.feed(good)
    assert changed


def test_record_changed_under_its_signature_is_refused(verify_calls):
    h = Harness()
    msg = codec.decode(fresh(h))
    body = msgpack.unpackb(msg.body_bytes, raw=False)
    # Another repo name, same length, under the original signature.
    body["rec"] = body["rec"].replace(b'"name":"r', b'"name":"x', 1)
    assert body["rec"] != msg.body["rec"]
    frame = codec.encode(T.PEER_UPDATE, 5, codec.encode_body(T.PEER_UPDATE, body))
    actions, changed = h.feed(frame)
    assert not changed
    assert [a.code for a in actions if isinstance(a, Penalty)] == ["bad_signature"]
