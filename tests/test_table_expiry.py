"""PeerTable.expire skips its scan while no entry can be due (a lower bound
on the soonest expiry, kept by offer and made exact by each scan), and drops
exactly what a full scan would, whatever the order of offers and calls."""

from hypothesis import given, settings, strategies as st

from peernet.gossip.table import PeerEntry, PeerTable

T0 = 1_800_000_000.0


def _entry(peer, version, issued, lifetime):
    pid = "%02x" % peer * 32
    record = {"peer_id": pid, "version": version, "issued_at": int(issued * 1000),
              "is_broadcasting": True}
    return PeerEntry(pid, record, b"%d/%d/%r" % (peer, version, issued), b"",
                     hash((peer, version, issued)), 0.0, hash((peer, version)), float(lifetime))


steps = st.lists(st.one_of(
    # offer: peer, version, issued (s after T0), lifetime
    st.tuples(st.just("offer"), st.integers(0, 5), st.integers(1, 4),
              st.integers(-20, 60), st.integers(1, 80)),
    # time passes, then the core's expire call
    st.tuples(st.just("expire"), st.integers(0, 40))), max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_expire_drops_exactly_what_a_full_scan_would(ops):
    table, model, now = PeerTable(), {}, T0
    for op in ops:
        if op[0] == "offer":
            _, peer, version, issued, lifetime = op
            e = _entry(peer, version, T0 + issued, lifetime)
            if table.offer(e, now):
                model[e.peer_id] = e
        else:
            now += op[1]
            due = sorted(pid for pid, e in model.items() if e.expires_at <= now)
            assert sorted(table.expire(now)) == due
            for pid in due:
                del model[pid]
        assert {e.peer_id: e for e in table} == model


def test_no_scan_while_nothing_can_be_due():
    table = PeerTable()
    for peer in range(50):
        table.offer(_entry(peer, 1, T0, 100 + peer), T0)
    scanned = []

    class Counting(dict):
        def values(self):
            scanned.append(1)
            return super().values()

    table._entries = Counting(table._entries)
    for t in range(1, 100):  # the first record is due at T0 + 100
        assert table.expire(T0 + t) == []
    assert scanned == []
    assert table.expire(T0 + 100) == ["%02x" % 0 * 32]
    assert len(scanned) == 1
    assert table.expire(T0 + 100.5) == []  # the scan made the bound exact: T0 + 101
    assert len(scanned) == 1
