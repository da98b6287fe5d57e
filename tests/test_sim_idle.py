"""Idle traffic model (issue 9): a refresh is a push and nothing else, and the
refresh interval keeps the per-link idle bytes flat in N."""

import random

from peernet import constants
from peernet.schemas import openapi_document
from peernet.sim import experiments as E
from peernet.sim import lite


def test_a_refresh_in_the_lite_model_is_pushes_only():
    adj = lite.random_adjacency(1000, constants.TARGET_LINKS, random.Random(0))
    res = lite.simulate(adj, 0, lite.Variant.refresh(), seed=0, horizon=20,
                        stop_when_covered=False)
    assert set(res.sent_by_kind) == {"push"}
    # the push alone (flood phase, then the eager mesh) reaches everyone on a
    # lossless network; where frames are lost, the rest keep an older copy
    assert res.coverage == 1.0
    # An update on the same graph also pings and asks, and costs more.
    upd = lite.simulate(adj, 0, lite.Variant.peernet(), seed=0, horizon=20)
    assert upd.bytes_total > res.bytes_total and "heartbeat" in upd.sent_by_kind


def test_idle_traffic_per_link_stays_under_the_target_and_flat_in_n():
    sizes = lite.frame_sizes()
    r = E.lite_refreshes(1000, spreads=6)
    per_refresh = r["bytes_per_peer_per_refresh"]["median"]
    rows = [E.idle_model(n, per_refresh, r["miss_run"], 16.0, sizes)
            for n in (1000, 10_000, 100_000)]
    for row in rows:
        assert row["per_link"] < 100, row
        assert row["refreshes_per_s"] == 1 / constants.REFRESH_SECONDS_PER_PEER
    assert abs(rows[0]["refreshes_per_link"] - rows[-1]["refreshes_per_link"]) < 1e-9
    # The old fixed 30-min interval at 100 000 peers: far over the target.
    old = 100_000 / constants.RECORD_REFRESH_INTERVAL * per_refresh * 2 / 16
    assert old > 100 * 100


def test_the_record_schema_bounds_the_lifetime_with_the_constants():
    prop = openapi_document()["components"]["schemas"]["PeerRecord"]["properties"]["lifetime"]
    assert prop["minimum"] == constants.RECORD_LIFETIME
    assert prop["maximum"] == constants.MAX_RECORD_LIFETIME
    assert "lifetime" not in openapi_document()["components"]["schemas"]["PeerRecord"]["required"]
