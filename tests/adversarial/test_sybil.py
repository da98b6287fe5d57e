"""Mass Sybil registrations against a real `twist bootstrap` (default limits:
60 register/unregister requests per minute per IP, 10 registrations per hour
per email, one active peer_id per email) while a real network uses it.

Each registration is genuine-looking: a fresh Ed25519 key, a correctly signed
record and request.  The defences bound what an attacker gets in: at most the
per-IP budget from one address, exactly one peer_id for one email.  The
honest peers stay registered and keep 100 % delivery; the bootstrap neither
crashes nor grows without bound.
"""

import http.client
import time

import pytest

from peernet.devnet import DevNet
from peernet.identity import NodeIdentity
from peernet.records import make_record, new_nonce, sign_request

from adversary import Watch, assert_delivered, publish

pytestmark = pytest.mark.slow

RATE_IP = 60          # twist bootstrap's default --rate-ip 60/60
SYBILS_FROM_ONE_IP = 300
SYBILS_FOR_ONE_EMAIL = 40
ATTACKER_IP = "127.0.0.66"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sybil")
    with DevNet(workdir, broadcasting=3, silent=1) as devnet:
        assert devnet.wait(devnet.converged, 60, interval=0.2) is not None
        yield devnet


def register(bootstrap, identity, source, email=None):
    now = int(time.time() * 1000)
    signed = make_record(identity, [f"wss://{source}:8701/gossip"], version=now,
                         issued_at_ms=now)
    fields = {"type": "register", "peer_id": identity.peer_id,
              "public_key": signed["record"]["public_key"], "signed_record": signed,
              "timestamp": now, "nonce": new_nonce()}
    if email is not None:
        fields["email"] = email
    body, sig = sign_request(identity, fields)
    conn = http.client.HTTPConnection(bootstrap.host, bootstrap.port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("POST", "/api/bootstrap/register", body,
                     {"Content-Type": "application/json", "Peernet-Signature": sig})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def honest_registered(net):
    return all(set(p.status()["bootstrap"].values()) == {"registered"} for p in net.broadcasters)


def test_mass_registrations_from_one_address_are_capped(net):
    watch = Watch(net)
    before = net.bootstrap.health()["peers"]
    started = time.monotonic()
    statuses = [register(net.bootstrap, NodeIdentity.generate(), ATTACKER_IP)
                for _ in range(SYBILS_FROM_ONE_IP)]
    elapsed = time.monotonic() - started
    accepted = statuses.count(200)
    # The bucket refills at RATE_IP per minute while the attack runs.
    assert accepted <= RATE_IP + int(elapsed * RATE_IP / 60) + 1, (accepted, elapsed)
    assert accepted >= RATE_IP // 2  # the first ones were fine: the limit did the work
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert net.bootstrap.health()["peers"] <= before + accepted
    # The honest peers are unaffected (they register from their own addresses).
    assert honest_registered(net)
    assert_delivered(net, publish(net.broadcasters[0]))
    growth = watch.assert_healthy()
    print(f"\nsybil one IP: {accepted}/{SYBILS_FROM_ONE_IP} accepted in {elapsed:.1f} s; "
          f"RSS growth KiB {growth}")


def test_mass_registrations_for_one_email_bind_one_peer(net):
    watch = Watch(net)
    emails_before = net.bootstrap.health()["emails"]
    statuses = []
    for i in range(SYBILS_FOR_ONE_EMAIL):
        # From a different address each, so only the email rules apply.
        source = f"127.0.1.{10 + i}"
        statuses.append(register(net.bootstrap, NodeIdentity.generate(), source,
                                 email="Sybil@Example.org" if i % 2 else "sybil@example.org"))
    assert statuses[0] == 200 and statuses.count(200) == 1, statuses
    assert set(statuses[1:]) <= {409, 429}, statuses
    assert net.bootstrap.health()["emails"] == emails_before + 1
    assert honest_registered(net)
    assert_delivered(net, publish(net.broadcasters[1]))
    growth = watch.assert_healthy()
    print(f"\nsybil one email: {statuses.count(200)}/{SYBILS_FOR_ONE_EMAIL} accepted; "
          f"statuses {sorted(set(statuses))}; RSS growth KiB {growth}")
