"""The gossip hot path got faster without checking less: each PEER_UPDATE's two
signatures (record and envelope) are verified exactly once, a replay costs no
verification, and a message whose envelope or record signature is wrong (as
libsodium sees it) changes nothing and does not shadow the genuine copy."""

import msgpack
import pytest

from peernet import identity, records
from peernet.gossip import codec, core as core_module
from peernet.gossip.codec import MessageType as T
from peernet.gossip.core import Penalty

from tests.test_gossip_core import Harness


@pytest.fixture
def verify_calls(monkeypatch):
    """Count calls to the real identity.verify from records and the core."""
    calls = []

    def counting(der, signature, data):
        calls.append(bytes(data))
        return identity.verify(der, signature, data)

    monkeypatch.setattr(records, "verify", counting)
    monkeypatch.setattr(core_module, "verify", counting)
    return calls


def test_each_update_is_verified_twice_once_per_signature_and_replays_not_at_all(verify_calls):
    h = Harness()
    frame = h.update_frame()
    msg = codec.decode(frame)
    # Building the frame checked the sender's own record, and that result is
    # cached process-wide (a pure function of bytes + signature): forget it,
    # as a separate receiving process would not have it.
    records._record_from_bytes.cache_clear()
    verify_calls.clear()
    _, changed = h.feed(frame)
    assert changed
    assert sorted(verify_calls) == sorted([msg.body["rec"], msg.body_bytes])
    verify_calls.clear()
    actions, changed = h.feed(frame)  # the same message again: duplicate filter
    assert not changed and not actions and verify_calls == []


def test_bad_envelope_signature_then_genuine_copy(verify_calls):
    h = Harness()
    good = h.update_frame()
    msg = codec.decode(good)
    bad_sig = bytearray(msg.sig)
    bad_sig[10] ^= 4
    actions, changed = h.feed(codec.encode(T.PEER_UPDATE, 5, msg.body_bytes, bytes(bad_sig)))
    assert not changed
    assert [a.code for a in actions if isinstance(a, Penalty)] == ["bad_signature"]
    _, changed = h.feed(good)
    assert changed


def test_bad_record_signature_is_refused(verify_calls):
    h = Harness()
    msg = codec.decode(h.update_frame())
    body = msgpack.unpackb(msg.body_bytes, raw=False)
    rsig = bytearray(body["rsig"])
    rsig[0] ^= 1
    body["rsig"] = bytes(rsig)
    body_bytes = codec.encode_body(T.PEER_UPDATE, body)
    frame = codec.encode(T.PEER_UPDATE, 5, body_bytes, h.other.sign(body_bytes))
    actions, changed = h.feed(frame)
    assert not changed
    assert [a.code for a in actions if isinstance(a, Penalty)] == ["bad_signature"]
