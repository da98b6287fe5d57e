"""A record dated ahead of the clock-skew window is refused by the table, on
every path that fills it (gossip, search answers, snapshots): otherwise a
record issued in 2100 would never expire anywhere."""

from peernet import constants
from peernet.gossip.table import PeerTable, entry_from_wire
from peernet.identity import NodeIdentity
from peernet.records import b64decode, canonical_json, make_record

NOW = 1_800_000_000.0


def entry(identity, issued_at, version=1):
    signed = make_record(identity, ["wss://127.0.0.5:8701/gossip"], version=version,
                         issued_at_ms=int(issued_at * 1000))
    return entry_from_wire(canonical_json(signed["record"]),
                           b64decode(signed["signature"], "signature"))


def test_records_ahead_of_the_window_are_refused(tmp_path):
    me = NodeIdentity.generate()
    table = PeerTable()
    far = entry(me, NOW + 100 * 365 * 86400)
    assert table.offer(far, NOW) is None
    assert me.peer_id not in table
    just_outside = entry(me, NOW + constants.CLOCK_SKEW_SECONDS + 1)
    assert table.offer(just_outside, NOW) is None
    inside = entry(me, NOW + constants.CLOCK_SKEW_SECONDS - 1)
    assert table.offer(inside, NOW) == "added"
    # A future-dated newer version does not replace the good one either.
    assert table.offer(entry(me, NOW + 3600, version=2), NOW) is None
    assert table.get(me.peer_id).record["version"] == 1


def test_a_snapshot_does_not_bring_a_future_record_back():
    me = NodeIdentity.generate()
    table = PeerTable()
    assert table.offer(entry(me, NOW), NOW) == "added"
    data = table.snapshot_bytes()
    # Loaded on a machine whose clock is an hour behind: the record is "from the future".
    assert PeerTable().load_snapshot_bytes(data, NOW - 3600) == 0
    assert PeerTable().load_snapshot_bytes(data, NOW + 1) == 1
