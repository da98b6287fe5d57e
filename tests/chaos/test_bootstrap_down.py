"""Chaos: every bootstrap server down.

A converged network (eight broadcasting peers and one silent peer on
loopback) loses its only bootstrap server to kill -9.  What must hold:

- gossip goes on: a later update still reaches every running peer, the silent
  one included, within UPDATE_DEADLINE;
- a peer stopped and restarted while the bootstrap is still dead rejoins from
  its own snapshot (peers.snapshot in its state directory): it dials peers it
  knew, sees fresh updates, and everyone sees its new record.

The defence under test is that the bootstrap server is only an entry point:
gossip links, the table and the snapshot carry the network without it.
"""

import os
import re
import time

import pytest

from gossip_checks import UPDATE_DEADLINE, publish_and_measure, wait_converged
from peernet.devnet import DevNet

pytestmark = pytest.mark.slow

N_BROADCASTING = 8
REJOIN_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def net_no_bootstrap(tmp_path_factory):
    """A converged network whose only bootstrap server has been killed -9."""
    with DevNet(tmp_path_factory.mktemp("nobootstrap"), broadcasting=N_BROADCASTING,
                silent=1, workers=8) as devnet:
        wait_converged(devnet)
        devnet.bootstrap.kill9()
        assert not devnet.bootstrap.running()
        yield devnet


def test_gossip_goes_on_after_the_bootstrap_is_killed(net_no_bootstrap):
    net = net_no_bootstrap
    assert not net.bootstrap.running()
    with pytest.raises(OSError):
        net.bootstrap.health(timeout=2)
    origin = net.broadcasters[1]
    watchers = [p for p in net.running_peers() if p is not origin]
    assert len(watchers) == N_BROADCASTING  # the silent peer included
    elapsed, _, _ = publish_and_measure(origin, watchers, net)
    print(f"update without bootstrap reached {len(watchers)} peers in {elapsed:.3f} s")
    assert elapsed < UPDATE_DEADLINE, f"update took {elapsed:.2f} s"


def test_restart_from_snapshot_rejoins_with_every_bootstrap_down(net_no_bootstrap):
    net = net_no_bootstrap
    assert not net.bootstrap.running()
    wait_converged(net)
    peer = net.broadcasters[4]
    peer_id = peer.peer_id()
    others = [p for p in net.running_peers() if p is not peer]
    other_ids = {p.peer_id() for p in others if p.broadcast}
    snapshot = os.path.join(peer.state_dir, "peers.snapshot")
    stopped_at = time.time()

    peer.stop()  # SIGTERM: a clean shutdown writes the snapshot
    assert not peer.running()
    assert os.path.getmtime(snapshot) >= stopped_at - 1
    data = open(snapshot, "rb").read()
    assert all(pid.encode() in data for pid in other_ids), "snapshot lacks some peers"

    peer.start()  # same state directory, the bootstrap still dead
    assert net.bootstrap.running() is False
    assert peer.peer_id() == peer_id
    assert re.search(r"loaded \d+ peer records from the snapshot", peer.log(since_start=True))

    def rejoined():
        return peer.status()["links"]["outbound"] >= 1

    waited = net.wait(rejoined, REJOIN_TIMEOUT)
    assert waited is not None, peer.log(since_start=True)[-3000:]
    print(f"restarted from its snapshot, linked again {waited:.2f} s after its start")
    assert other_ids <= {e["peer_id"] for e in peer.peers() if e["broadcasting"]}

    # it sees a fresh update from another peer ...
    elapsed, _, _ = publish_and_measure(net.broadcasters[0], [peer], net, deadline=10)
    assert elapsed < 10
    # ... and everyone sees its own new record (new address after the restart)
    new_address = peer.status()["addresses"]
    elapsed, _, _ = publish_and_measure(peer, others, net, deadline=10)
    assert elapsed < 10
    for p in others:
        entry = next(e for e in p.peers() if e["peer_id"] == peer_id)
        assert entry["addresses"] == new_address
