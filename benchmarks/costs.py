#!/usr/bin/env python3
"""Real-process costs of a peernet peer (issue 9, "Real processes on this machine").

Three measurements, every one on real ``twist peer`` processes on loopback:

1. **Memory per gossip connection.**  One broadcasting ``twist peer`` (the
   target).  A helper process opens K = 0, 50, 100, 200 inbound gossip links
   to it with the project's own client code (``peernet.peer.links``
   ``GossipClientFactory`` + ``peernet.tls.MutualTLS``, one throwaway identity
   per link, the same dial as ``GossipService._dial``); each link exchanges
   HELLO (the helper echoes the target's digest, so no sync starts) and then
   stays idle.  The target's VmRSS and Pss (``/proc/PID/smaps_rollup``) are read
   after the links settle; the least-squares slope is bytes per connection.
   The stock inbound cap is ``MAX_INBOUND_LINKS`` = 64 and ``twist peer`` has
   no option for it, so this target is started by a launcher (``costs.py
   _twist``) that sets ``peernet.constants.MAX_INBOUND_LINKS`` before the
   plugin loads and then runs ``twist peer`` unchanged.  A second, stock
   target is measured up to the cap (0, 32, 64) and a 65th link is tried (it
   must be refused).
2. **Memory per table entry.**  N = 0, 1000, 5000, 20000 valid signed records
   (fresh Ed25519 keys, ``peernet.records.make_record``) are written to the
   target's ``STATE_DIR/peers.snapshot`` before it starts; it verifies and
   loads them at start.  One target process per N; RSS slope = bytes per
   entry.  The records carry two ``bittorrent://`` addresses (real length,
   like a real record's gossip + torrent pair) but no gossip address, so the
   target's connection manager dials none of them: the figure is the table,
   not dial state.
3. **CPU per relayed message vs a bare Autobahn echo.**  The target (table
   preloaded with M records, one outbound link to a gossip server run by the
   helper so its connection manager is satisfied, as on a live network, and
   L inbound links from the helper) receives M PEER_UPDATE frames (new
   version of each preloaded record, freshly signed, distinct) on one link at
   a fixed rate; it decodes, checks the timestamp and duplicate filter,
   verifies both signatures, applies, relays each to FANOUT = 3 of its other
   links and sends coalesced digest pings to the rest.  The reference is a
   minimal Autobahn WSS server (same ``MutualTLS`` server setup, same
   Autobahn options via ``peernet.peer.links._set_options``) that receives
   the *same frame bytes* on one link and (a) sends each back (echo), (b)
   sends each to 3 other links (a bare relay: the same fan-out without any
   protocol).  CPU = utime + stime of the measured process from
   ``/proc/PID/stat`` over the injection window, minus its idle rate measured
   just before; divided by M.  The echo and relay runs follow the peer run in
   each round (same frames).  Then one extra peer round runs under py-spy
   (``py-spy`` from the bench extra, sampling the target) to show where the time
   goes; the ratio comes from the unprofiled rounds.

Run with the project's venv::

    .venv/bin/python benchmarks/costs.py            # full, ~3 min
    .venv/bin/python benchmarks/costs.py --quick    # smaller sizes

It writes ``benchmarks/results/costs.json`` and ``.md`` (``--out`` to change).
Every process it starts is stopped by pid; every wait is bounded.
"""

import argparse
import datetime
import hashlib
import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from machine import machine_facts as shared_machine_facts  # shared by every benchmark

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# py-spy (the bench extra) from this venv, else a throwaway venv's; with
# neither, the profiled round is skipped.
PYSPY = os.path.join(os.path.dirname(sys.executable), "py-spy")
if not os.path.exists(PYSPY):
    PYSPY = "/tmp/pyspy-venv/bin/py-spy"
TARGET_HOST = "127.0.0.10"
ECHO_HOST = "127.0.0.20"
SERVER_HOST = "127.0.0.30"  # the helper's gossip server (the target's outbound link)
HELPER_BIND = "127.0.0.40"
RAISED_CAP = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- /proc ----------------------------------------------------------------------------------


def proc_cpu(pid):
    """utime + stime of the process (all threads), seconds."""
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid):
    """(utime, stime) of the process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_ns(pid):
    """Sum of the on-CPU time of every thread (/proc/PID/task/*/schedstat), seconds."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def proc_mem(pid):
    """VmRSS, and Pss / Private_* from smaps_rollup, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("Pss", "Private_Dirty", "Anonymous"):
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def sample_mem(pid, n=3, gap=0.5):
    """Median of n samples of each field."""
    samples = []
    for i in range(n):
        if i:
            time.sleep(gap)
        samples.append(proc_mem(pid))
    return {k: sorted(s[k] for s in samples)[len(samples) // 2] for k in samples[0]}


def slope(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


# -- keys and records ---------------------------------------------------------------------------


class Key:
    """A lightweight identity for signing records (no certificate)."""

    def __init__(self, seed, i):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from peernet.identity import peer_id_for, spki_der

        self.private_key = Ed25519PrivateKey.from_private_bytes(
            hashlib.sha256(f"{seed}:{i}".encode()).digest())
        self.public_key_der = spki_der(self.private_key.public_key())
        self.peer_id = peer_id_for(self.public_key_der)
        self.index = i

    def sign(self, data):
        return self.private_key.sign(data)


def record_addresses(i):
    a, b, c = (i >> 16) & 255, (i >> 8) & 255, i & 255
    return [f"bittorrent://10.{a}.{b}.{c}:6881", f"bittorrent://10.{a}.{b}.{c}:6882"]


def wire_record(key, version, issued_at_ms, addresses=None):
    """(record_bytes, signature) of a fresh signed record for ``key``."""
    from peernet.records import b64decode, canonical_json, make_record

    signed = make_record(key, addresses or record_addresses(key.index), version=version,
                         issued_at_ms=issued_at_ms)
    return canonical_json(signed["record"]), b64decode(signed["signature"], "signature")


def write_snapshot(state_dir, wires):
    import msgpack

    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, "peers.snapshot")
    with open(path, "wb") as f:
        f.write(msgpack.packb([[rb, sig] for rb, sig in wires], use_bin_type=True))
    os.chmod(path, 0o600)
    return path


def free_port(host):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# == helper process: links, injection ===========================================================
# Runs in its own process with a Twisted reactor.  Talks to the orchestrator
# with JSON lines: events on stdout, commands on stdin.


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(msg):
    sys.stderr.write(f"[helper {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class Conn:
    """One helper-side link (client or server side)."""

    def __init__(self, link, gossip, role):
        self.link = link
        self.gossip = gossip  # speaks gossip (HELLO, heartbeats) vs bare echo server
        self.role = role
        self.digest = b"\0" * 16
        self.n = 0
        self.ready = None  # Deferred: fires when usable
        self.hello_sent = False
        self.types = Counter()
        self.frames = 0
        self.lost = False


#: Injected pushes arrive as if 8 hops from their origin: past the flood phase
#: at any table size here, so the target relays them over its eager links (the
#: common case: at 100 000 peers ~96 % of relays happen past the flood phase).
RELAY_TTL = 32 - 8
EAGER_SINKS = 2


class HelperOwner:
    """The ``owner`` that peernet.peer.links calls (client and server side)."""

    def __init__(self, reactor, server_identity=None, server_wire=None):
        self.reactor = reactor
        self.conns = {}  # link id -> Conn
        self.inbound_connections = 0  # GossipServerProtocol counts here
        self.server_identity = server_identity
        self.server_wire = server_wire  # (record_bytes, sig) sent in our server HELLO
        self.server_conns = []
        #: sink links that mark themselves eager in their HELLO (each sink is a
        #: throwaway node dialling the target, so it may): with the target's own
        #: eager outbound link to our server, a relay past the flood phase goes
        #: to 3 links, the fan-out of the bare relay it is compared with.
        self.eager_sinks = EAGER_SINKS

    # server side (the target dials our gossip server)
    def inbound_handshake(self, protocol, tls_peer_id):
        from peernet.peer.links import GossipLink
        from twisted.internet import defer

        link = GossipLink(outbound=False, peer_id=tls_peer_id)
        link.protocol = protocol
        conn = Conn(link, gossip=True, role="server")
        conn.ready = defer.Deferred()
        self.conns[link.id] = conn
        self.server_conns.append(conn)
        return link

    def link_open(self, link):
        link.opened = True
        conn = self.conns.get(link.id)
        if conn is not None and not conn.gossip and not conn.ready.called:
            conn.ready.callback(conn)

    def link_message(self, link, payload, is_binary):
        import msgpack

        conn = self.conns.get(link.id)
        if conn is None:
            return
        conn.frames += 1
        if not conn.gossip:
            return
        env = msgpack.unpackb(payload, raw=False)
        mtype = env["type"]
        conn.types[mtype] += 1
        if mtype in (1, 5):  # HELLO, HEARTBEAT: keep the target's digest
            body = msgpack.unpackb(env["body"], raw=False, strict_map_key=False)
            conn.digest, conn.n = body["digest"], body["n"]
            if mtype == 1 and not conn.hello_sent:
                self.send_hello(conn)
                conn.hello_sent = True
                if not conn.ready.called:
                    conn.ready.callback(conn)

    def link_lost(self, link):
        conn = self.conns.get(link.id)
        if conn is not None:
            conn.lost = True
            if conn.ready is not None and not conn.ready.called:
                conn.ready.errback(RuntimeError("link lost before it was ready"))

    # gossip frames the helper sends
    def send_hello(self, conn):
        from peernet import constants
        from peernet.gossip import codec
        from peernet.gossip.codec import MessageType

        body = {"id": os.urandom(16), "ts": int(time.time() * 1000),
                "versions": [constants.PROTOCOL_VERSION], "bc": False, "repos": 0,
                "digest": conn.digest, "n": conn.n}
        if conn.role == "server" and self.server_wire is not None:
            body["bc"] = True
            body["rec"], body["rsig"] = self.server_wire
        if conn.role == "sink" and conn.gossip and self.eager_sinks > 0:
            self.eager_sinks -= 1
            body["eager"] = True
        conn.link.send(codec.encode(MessageType.HELLO, 0,
                                    codec.encode_body(MessageType.HELLO, body)))

    def heartbeat_all(self):
        from peernet import constants
        from peernet.gossip import codec
        from peernet.gossip.codec import MessageType

        for conn in self.conns.values():
            if conn.gossip and conn.hello_sent and not conn.lost:
                body = codec.encode_body(MessageType.HEARTBEAT, {
                    "id": os.urandom(16), "ts": int(time.time() * 1000),
                    "digest": conn.digest, "n": conn.n, "load": 0})
                conn.link.send(codec.encode(MessageType.HEARTBEAT,
                                            constants.TTL_HEARTBEAT, body))

    # client side: the same dial as GossipService._dial
    def dial(self, host, port, peer_id, path="/gossip", gossip=True, role="sink",
             timeout=15.0):
        from peernet.identity import NodeIdentity
        from peernet.peer.links import GossipClientFactory, GossipLink
        from peernet.tls import MutualTLS
        from twisted.internet import defer
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        url = f"wss://{host}:{port}{path}"
        link = GossipLink(outbound=True, peer_id=peer_id, address=url)
        conn = Conn(link, gossip=gossip, role=role)
        conn.ready = defer.Deferred()
        self.conns[link.id] = conn
        creator = MutualTLS(NodeIdentity.generate(), expected_peer_id=peer_id)
        plain = HostnameEndpoint(self.reactor, host, port, timeout=10,
                                 bindAddress=(HELPER_BIND, 0))
        d = wrapClientTLS(creator, plain).connect(GossipClientFactory(self, link, url))

        def failed(f):
            if not conn.ready.called:
                conn.ready.errback(f)

        d.addErrback(failed)
        return bounded(self.reactor, conn.ready, timeout)

    def close_all(self):
        for conn in self.conns.values():
            if not conn.lost:
                conn.link.abort()


def bounded(reactor, d, seconds):
    d.addTimeout(seconds, reactor)
    return d


def sleep(reactor, seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


async def dial_many(reactor, owner, count, host, port, peer_id, concurrency=16, **kw):
    """Dial ``count`` links, ``concurrency`` at a time; returns (ready, failed)."""
    from twisted.internet import defer

    sem = defer.DeferredSemaphore(concurrency)
    results = await defer.DeferredList(
        [sem.run(owner.dial, host, port, peer_id, **kw) for _ in range(count)],
        consumeErrors=True)
    ok = [r for s, r in results if s]
    return ok, count - len(ok)


async def helper_links(reactor, args):
    """Memory mode: 'open K' on stdin opens links up to K; 'quit' ends."""
    from twisted.internet import task, threads

    owner = HelperOwner(reactor)
    hb = task.LoopingCall(owner.heartbeat_all)
    hb.start(60.0, now=False)
    ready = []
    emit({"event": "ready"})
    while True:
        line = (await threads.deferToThread(sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        cmd, k = line.split()
        want = int(k) - len(ready)
        ok, failed = ([], 0)
        if want > 0:
            ok, failed = await dial_many(reactor, owner, want, args.host, args.port,
                                         args.peer_id)
        ready += ok
        # Links the target refused are closed by now; count the live ones.
        await sleep(reactor, 0.5)
        live = sum(1 for c in ready if not c.lost)
        emit({"event": "opened", "asked": int(k), "ready": live, "failed": failed})
    hb.stop()
    owner.close_all()
    await sleep(reactor, 0.3)


def build_frames(keys, version, ts_ms):
    """One PEER_UPDATE frame per key: new version of its record, freshly signed
    (the record's signature is the push's only one: protocol version 2)."""
    from peernet.gossip import codec
    from peernet.gossip.codec import MessageType

    frames = []
    for key in keys:
        rb, rsig = wire_record(key, version, ts_ms)
        body = codec.encode_body(MessageType.PEER_UPDATE, {
            "id": os.urandom(16), "ts": ts_ms, "rec": rb, "rsig": rsig})
        frames.append(codec.encode(MessageType.PEER_UPDATE, RELAY_TTL, body))
    return frames


async def inject(reactor, injector, frames, rate, done, pid, idle_seconds, timeout,
                 settle=0.3):
    """Send ``frames`` on ``injector`` at ``rate``/s; CPU of ``pid`` per frame."""
    from twisted.internet import task

    c0, n0, t0 = proc_cpu(pid), proc_cpu_ns(pid), time.monotonic()
    await sleep(reactor, idle_seconds)
    c1, n1, t1 = proc_cpu(pid), proc_cpu_ns(pid), time.monotonic()
    idle_rate = (c1 - c0) / (t1 - t0)
    idle_rate_ns = (n1 - n0) / (t1 - t0)
    sent = 0
    start_cpu, start_ns, start = proc_cpu(pid), proc_cpu_ns(pid), time.monotonic()
    start_sys = proc_cpu_split(pid)[1]

    def pump():
        nonlocal sent
        due = min(len(frames), int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            injector.link.send(frames[sent])
            sent += 1
        if sent >= len(frames):
            loop.stop()

    loop = task.LoopingCall(pump)
    loop.clock = reactor
    finished = loop.start(0.005, now=True)
    deadline = start + timeout
    await finished
    send_end = time.monotonic()
    while not done() and time.monotonic() < deadline:
        await sleep(reactor, 0.01)
    complete = done()
    last = time.monotonic()
    await sleep(reactor, settle)
    end_cpu, end_ns, end = proc_cpu(pid), proc_cpu_ns(pid), time.monotonic()
    end_sys = proc_cpu_split(pid)[1]
    busy = (end_cpu - start_cpu) - idle_rate * (end - start)
    busy_ns = (end_ns - start_ns) - idle_rate_ns * (end - start)
    return {"messages": len(frames), "complete": complete, "rate": rate,
            "send_seconds": round(send_end - start, 3),
            "wall_seconds": round(last - start, 3),
            "cpu_seconds": round(end_cpu - start_cpu, 3),
            "idle_cpu_per_s": round(idle_rate, 5),
            "cpu_us_per_msg": busy / len(frames) * 1e6,
            # kernel (system) time alone: socket sends and receives, epoll
            "sys_us_per_msg": (end_sys - start_sys) / len(frames) * 1e6,
            "schedstat_us_per_msg": busy_ns / len(frames) * 1e6}


async def helper_cpu(reactor, args):
    from peernet.identity import NodeIdentity, _self_signed_certificate
    from peernet.peer.links import tls_server_factory
    from peernet.tls import MutualTLS
    from twisted.internet import task
    from twisted.internet.endpoints import serverFromString

    keys = [Key(args.seed, i) for i in range(args.messages)]
    skey = Key(args.seed, "server")
    server_identity = NodeIdentity(skey.private_key, _self_signed_certificate(skey.private_key))
    owner = HelperOwner(reactor, server_identity,
                        server_wire=tuple(bytes.fromhex(x) for x in args.server_wire))
    if args.server_port:
        endpoint = serverFromString(reactor, f"tcp:{args.server_port}:interface={SERVER_HOST}")
        await endpoint.listen(tls_server_factory(MutualTLS(server_identity), owner))
    hb = task.LoopingCall(owner.heartbeat_all)
    hb.start(60.0, now=False)

    # Links: target (1 injector + L-1 sinks) and echo server (2 injectors + L-1 sinks).
    tgt = dict(host=args.target_host, port=args.target_port, peer_id=args.target_peer_id)
    ech = dict(host=args.echo_host, port=args.echo_port, peer_id=args.echo_peer_id)
    t_inj = await owner.dial(**tgt, role="injector")
    t_sinks, failed = await dial_many(reactor, owner, args.links - 1, **tgt)
    e_echo = await owner.dial(**ech, path="/echo", gossip=False, role="injector")
    e_relay = await owner.dial(**ech, path="/relay3", gossip=False, role="injector")
    e_sinks, failed2 = await dial_many(reactor, owner, args.links - 1, **ech, gossip=False)
    if failed or failed2:
        raise RuntimeError(f"{failed} target / {failed2} echo links failed")
    if args.server_port:
        for _ in range(600):
            if any(c.hello_sent and not c.lost for c in owner.server_conns):
                break
            await sleep(reactor, 0.05)
        else:
            raise RuntimeError("the target never dialled the helper's gossip server")
    await sleep(reactor, 1.0)
    target_sinks = t_sinks + [c for c in owner.server_conns if not c.lost]
    log(f"links ready: target {1 + len(t_sinks)} inbound + {len(owner.server_conns)} "
        f"outbound; echo server {len(e_sinks) + 2}")

    def sink_count(conns, mtype=None):
        return sum((c.types[mtype] if mtype else c.frames) for c in conns)

    async def start_spy(pid, output, n):
        """py-spy recording ``pid`` for the round's length; 1 s to attach before frames flow."""
        spy = subprocess.Popen([PYSPY, "record", "--pid", str(pid),
                                "--rate", "200", "--format", "raw", "--output", output,
                                "--duration", str(int(n / args.rate) + 3)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await sleep(reactor, 1.0)
        return spy

    async def stop_spy(spy):
        """Let py-spy write its profile (up to 20 s), then stop it."""
        for _ in range(200):
            if spy.poll() is not None:
                break
            await sleep(reactor, 0.1)
        if spy.poll() is None:
            spy.terminate()

    async def run_round(version, n, profile_to=None):
        frames = build_frames(keys[:n], version, int(time.time() * 1000))
        sizes = sorted(len(f) for f in frames)
        out = {"frame_bytes_median": sizes[len(sizes) // 2]}
        # -- peernet target
        base6, base5 = sink_count(target_sinks, 6), sink_count(target_sinks, 5)
        spy = None
        if profile_to:
            spy = await start_spy(args.target_pid, profile_to, n)
        want = 3 * n
        res = await inject(reactor, t_inj, frames, args.rate,
                           lambda: sink_count(target_sinks, 6) - base6 >= want,
                           args.target_pid, args.idle_seconds, args.timeout)
        res["relayed_frames"] = sink_count(target_sinks, 6) - base6
        res["digest_pings"] = sink_count(target_sinks, 5) - base5
        out["peer"] = res
        if spy is not None:
            await stop_spy(spy)
            spy = await start_spy(args.echo_pid, profile_to.replace("target", "echo"), n)
        # -- bare Autobahn echo (same frames)
        base = e_echo.frames
        res = await inject(reactor, e_echo, frames, args.rate,
                           lambda: e_echo.frames - base >= n,
                           args.echo_pid, args.idle_seconds, args.timeout)
        out["echo"] = res
        if spy is not None:
            await stop_spy(spy)
            return out
        # -- bare Autobahn relay to 3 links (same frames)
        base = sink_count(e_sinks)
        res = await inject(reactor, e_relay, frames, args.rate,
                           lambda: sink_count(e_sinks) - base >= 3 * n,
                           args.echo_pid, args.idle_seconds, args.timeout)
        out["relay3"] = res
        return out

    rounds = []
    version = 2
    log("warm-up round")
    await run_round(version, min(300, args.messages))
    for r in range(args.rounds):
        version += 1
        log(f"round {r + 1}/{args.rounds}")
        rounds.append(await run_round(version, args.messages))
        log(json.dumps({k: round(v["cpu_us_per_msg"], 1) for k, v in rounds[-1].items()
                        if isinstance(v, dict)}))
    profile = None
    if args.profile:
        version += 1
        log("profiled peer round (py-spy)")
        profile = await run_round(version, args.messages, profile_to=args.profile)
    emit({"event": "result", "rounds": rounds, "profiled": profile,
          "target_links": {"inbound": 1 + len(t_sinks),
                           "outbound": sum(1 for c in owner.server_conns if not c.lost)},
          "echo_links": 2 + len(e_sinks)})
    hb.stop()
    owner.close_all()
    await sleep(reactor, 0.3)


def helper_main(argv):
    from twisted.internet import defer, task

    p = argparse.ArgumentParser(prog="costs.py _helper")
    p.add_argument("mode", choices=["links", "cpu"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--peer-id")
    p.add_argument("--target-host")
    p.add_argument("--target-port", type=int)
    p.add_argument("--target-peer-id")
    p.add_argument("--target-pid", type=int)
    p.add_argument("--echo-host")
    p.add_argument("--echo-port", type=int)
    p.add_argument("--echo-peer-id")
    p.add_argument("--echo-pid", type=int)
    p.add_argument("--server-port", type=int, default=0)
    p.add_argument("--server-wire", nargs=2, default=("", ""))
    p.add_argument("--seed", default="costs")
    p.add_argument("--links", type=int, default=8)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=1.5)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--profile")
    args = p.parse_args(argv)
    fn = helper_links if args.mode == "links" else helper_cpu

    def main(reactor):
        return defer.ensureDeferred(fn(reactor, args))

    task.react(main)


# == echo server process ==========================================================================


def echo_main(argv):
    import random

    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from peernet import constants
    from peernet.identity import NodeIdentity
    from peernet.peer.links import SERVER_HEADER, _set_options
    from peernet.tls import MutualTLS

    class EchoProtocol(WebSocketServerProtocol):
        mode = "sink"

        def onConnect(self, request):
            self.mode = {"/echo": "echo", "/relay3": "relay3"}.get(request.path, "sink")
            return constants.WEBSOCKET_SUBPROTOCOL

        def onOpen(self):
            if self.mode == "sink":
                self.factory.sinks.append(self)

        def onMessage(self, payload, isBinary):
            if self.mode == "echo":
                self.sendMessage(payload, isBinary)
            elif self.mode == "relay3":
                for p in random.sample(self.factory.sinks, min(3, len(self.factory.sinks))):
                    p.sendMessage(payload, isBinary)

        def onClose(self, wasClean, code, reason):
            if self in self.factory.sinks:
                self.factory.sinks.remove(self)

    identity = NodeIdentity.generate()
    factory = WebSocketServerFactory(protocols=[constants.WEBSOCKET_SUBPROTOCOL],
                                     server=SERVER_HEADER)
    factory.protocol = EchoProtocol
    factory.sinks = []
    _set_options(factory, server=True)
    tls = TLSMemoryBIOFactory(MutualTLS(identity), False, factory)
    d = serverFromString(reactor, f"tcp:0:interface={argv[0]}").listen(tls)

    def listening(port):
        emit({"port": port.getHost().port, "peer_id": identity.peer_id})

    d.addCallback(listening)
    d.addErrback(lambda f: (sys.stderr.write(str(f)), reactor.stop()))
    reactor.run()


# == twist launcher with a raised inbound cap ===========================================================


def twist_main(argv):
    import peernet.constants as constants

    constants.MAX_INBOUND_LINKS = int(os.environ.get("COSTS_MAX_INBOUND", RAISED_CAP))
    from twisted.application.twist._twist import Twist

    Twist.main(["twist"] + argv)


# == orchestrator ====================================================================================


class Child:
    """A subprocess speaking JSON lines on stdout (read by a thread)."""

    def __init__(self, argv, log_path, stdin=False):
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     cwd=str(REPO))
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.decode("utf-8", "replace"))
        self.lines.put(None)

    def event(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no answer from {self.proc.args[2:4]} in {timeout} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.proc.args[2:4]} exited ({self.proc.wait(5)})")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def send(self, text):
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def helper_argv(*args):
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def start_target(net, name, extra=(), raised_cap=False):
    from peernet import devnet

    saved = devnet.twist_command
    if raised_cap:
        os.environ["COSTS_MAX_INBOUND"] = str(RAISED_CAP)
        devnet.twist_command = lambda: helper_argv("_twist")
    try:
        node = net.add_peer(name, broadcast=True, host=TARGET_HOST, bootstraps=[],
                            extra=list(extra))
    finally:
        devnet.twist_command = saved
    # The record (and so the address) is issued once the torrent engine listens.
    status = wait_status(node, lambda st: st["broadcasting"] and st["addresses"], 30)
    addr = status["addresses"][0]  # wss://HOST:PORT/gossip
    port = int(addr.rsplit(":", 1)[1].split("/")[0])
    return node, port, status["peer_id"]


def wait_status(node, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = node.status()
        if pred(st):
            return st
        time.sleep(0.2)
    raise RuntimeError(f"{node.name}: condition not met in {timeout} s: {node.status()}")


def measure_links(workdir, steps, raised_cap, settle, try_extra=False):
    from peernet.devnet import DevNet

    name = "links-raised" if raised_cap else "links-stock"
    rows = []
    with DevNet(os.path.join(workdir, name), broadcasting=0, silent=0, bootstrap=False) as net:
        node, port, peer_id = start_target(net, "target", raised_cap=raised_cap)
        helper = Child(helper_argv("_helper", "links", "--host", TARGET_HOST, "--port", port,
                                   "--peer-id", peer_id),
                       os.path.join(workdir, f"{name}-helper.log"), stdin=True)
        try:
            helper.event(60)
            time.sleep(settle)
            for k in list(steps) + ([steps[-1] + 1] if try_extra else []):
                helper.send(f"open {k}")
                ev = helper.event(120)
                time.sleep(settle)
                mem = sample_mem(node.pid)
                st = node.status()
                rows.append({"asked": k, "helper_ready": ev["ready"], "failed": ev["failed"],
                             "target_inbound": st["links"]["inbound"], **mem})
                print(f"  {name}: K={k} inbound={st['links']['inbound']} "
                      f"RSS={mem['VmRSS'] / 2**20:.1f} MiB Pss={mem.get('Pss', 0) / 2**20:.1f} MiB",
                      flush=True)
            helper.send("quit")
            helper.proc.wait(15)
        finally:
            helper.stop()
    return rows


def measure_entries(workdir, counts, keys, settle):
    from peernet.devnet import DevNet

    now_ms = int(time.time() * 1000)
    wires = [wire_record(k, 1, now_ms) for k in keys[:max(counts)]]
    rows = []
    for n in counts:
        with DevNet(os.path.join(workdir, f"entries-{n}"), broadcasting=0, silent=0,
                    bootstrap=False) as net:
            state = os.path.join(net.workdir, "target")
            write_snapshot(state, wires[:n])
            snap_bytes = os.path.getsize(os.path.join(state, "peers.snapshot"))
            t0 = time.monotonic()
            node, _, _ = start_target(net, "target")
            st = wait_status(node, lambda s: s["table"]["records"] >= n + 1, 120)
            started = time.monotonic() - t0
            time.sleep(settle)
            mem = sample_mem(node.pid)
            cpu = proc_cpu(node.pid)
            rows.append({"entries": n, "table_records": st["table"]["records"],
                         "snapshot_bytes": snap_bytes, "start_seconds": round(started, 2),
                         "cpu_seconds_at_measure": cpu, **mem})
            print(f"  entries N={n}: table={st['table']['records']} "
                  f"RSS={mem['VmRSS'] / 2**20:.1f} MiB Pss={mem.get('Pss', 0) / 2**20:.1f} MiB "
                  f"(start {started:.1f} s)", flush=True)
    mean_record = sum(len(rb) for rb, _ in wires) / len(wires) if wires else 0
    return rows, mean_record


def pin(pid, cpus):
    """Pin every thread of ``pid`` to ``cpus`` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass


def placement():
    """CPUs for the measured servers and for the helper (the load generator).

    With two CPUs or more, the peer target and the echo server (measured one
    at a time) share one CPU and the helper has the others, so the helper
    never runs on the measured process's CPU and both measured processes see
    the same CPU.  On one CPU, no pinning (None)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def measure_cpu(workdir, keys_seed, messages, rate, rounds, links, profile, pinning=False):
    from peernet.devnet import DevNet

    cpus = placement() if pinning else None
    own_cpus = os.sched_getaffinity(0)

    keys = [Key(keys_seed, i) for i in range(messages)]
    now_ms = int(time.time() * 1000)
    server_key = Key(keys_seed, "server")
    server_port = free_port(SERVER_HOST)
    server_wire = wire_record(server_key, 1, now_ms,
                              addresses=[f"wss://{SERVER_HOST}:{server_port}/gossip"])
    echo = None
    helper = None
    out = {}
    tag = "cpu-pinned" if cpus is not None else "cpu"
    with DevNet(os.path.join(workdir, tag), broadcasting=0, silent=0, bootstrap=False) as net:
        state = os.path.join(net.workdir, "target")
        write_snapshot(state, [wire_record(k, 1, now_ms) for k in keys] + [server_wire])
        try:
            node, port, peer_id = start_target(net, "target", extra=["--links", "1"])
            wait_status(node, lambda s: s["table"]["records"] >= messages + 2, 120)
            echo = Child(helper_argv("_echo", ECHO_HOST), os.path.join(workdir, f"{tag}-echo.log"))
            einfo = echo.event(30)
            if cpus is not None:
                pin(node.pid, cpus[0])
                pin(echo.proc.pid, cpus[0])
                os.sched_setaffinity(0, cpus[1])  # this process, and the helper it starts
            argv = helper_argv(
                "_helper", "cpu", "--target-host", TARGET_HOST, "--target-port", port,
                "--target-peer-id", peer_id, "--target-pid", node.pid,
                "--echo-host", ECHO_HOST, "--echo-port", einfo["port"],
                "--echo-peer-id", einfo["peer_id"], "--echo-pid", echo.proc.pid,
                "--server-port", server_port, "--server-wire", server_wire[0].hex(),
                server_wire[1].hex(), "--seed", keys_seed, "--links", links,
                "--messages", messages, "--rate", rate, "--rounds", rounds)
            if profile:
                argv += ["--profile", profile]
            before = node.status()
            helper = Child(argv, os.path.join(workdir, f"{tag}-helper.log"))
            res = helper.event(60 + rounds * (3 * (messages / rate + 8)) + 120)
            after = node.status()
            helper.proc.wait(20)
            out = {"result": res, "pinned": None if cpus is None else
                   {"measured": sorted(cpus[0]), "helper": sorted(cpus[1])},
                   "target_stats_before": before["stats"],
                   "target_stats_after": after["stats"],
                   "target_links_at_end": after["links"],
                   "target_table": after["table"]["records"]}
        finally:
            os.sched_setaffinity(0, own_cpus)
            if helper is not None:
                helper.stop()
            if echo is not None:
                echo.stop()
    return out


# -- py-spy breakdown -----------------------------------------------------------------------------

def _frame(frame):
    """("Qual.name", "file.py") of a py-spy frame "Qual.name (path/file.py:123)"."""
    name, _, where = frame.partition(" (")
    return name, where.rsplit(":", 1)[0].rsplit("/", 1)[-1]


IDLE_LEAVES = {"EPollReactor.doPoll", "Condition.wait", "Queue.get", "Event.wait",
               "Thread.join", "Thread._wait_for_tstate_lock"}

#: (label, {(qualified name, file)}), innermost match wins.
CATEGORIES = [
    ("Ed25519 verify, 1 per message (libsodium)", {("verify", "identity.py")}),
    ("Autobahn debug-log arguments (hltype/hlval, log level off)", {("hltype", "util.py"),
                                                                   ("hlval", "util.py")}),
    ("record JSON schema (fastjsonschema)", {("SchemaValidator.check", "schemas.py")}),
    ("record JSON parse + canonical re-encode", {("_record_from_bytes", "records.py")}),
    ("codec decode (msgpack + field checks)", {("decode", "codec.py")}),
    ("duplicate filter (Bloom)", {("DuplicateFilter.seen", "core.py"),
                                  ("DuplicateFilter.add", "core.py")}),
    ("table offer + entry build (sha256)", {("PeerTable.offer", "table.py"),
                                            ("entry_from_wire", "table.py")}),
    ("relay: pick links + re-encode", {("GossipCore._pick", "core.py"), ("relay", "codec.py")}),
    ("connection manager (_maintain)", {("GossipService._maintain", "transport.py")}),
    ("core tick: digest pings, heartbeats", {("GossipCore.tick", "core.py"),
                                             ("GossipService._tick", "transport.py")}),
    ("listeners (_emit)", {("GossipService._emit", "transport.py")}),
    ("Autobahn send (sendMessage, or a relay framed once: prepared message)",
     {("WebSocketProtocol.sendMessage", "protocol.py"),
      ("WebSocketProtocol.sendPreparedMessage", "protocol.py"),
      ("prepare_frame", "links.py"), ("GossipLink.send_prepared", "links.py")}),
    ("TLS encrypt + socket write (flush; py-spy also counts sends waiting off-CPU)",
     {("_AggregateSmallWrites.flush", "tls.py"), ("FileDescriptor.doWrite", "abstract.py"),
      ("GossipTLSProtocol.flush_gathered", "links.py"), ("write_now", "links.py")}),
    ("core handlers, _apply, _execute (rest)", {("GossipCore.receive", "core.py"),
                                                ("GossipService._execute", "transport.py")}),
    ("TLS decrypt + Autobahn receive (rest)", {("TLSMemoryBIOProtocol.dataReceived", "tls.py")}),
]


def parse_pyspy(path):
    """Category and inclusive-function shares of the non-idle samples."""
    counts = Counter()
    total = idle = 0
    funcs = Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            try:
                n = int(n)
            except ValueError:
                continue
            frames = [_frame(x) for x in stack.split(";")]
            if frames and frames[-1][0] in IDLE_LEAVES:
                idle += n
                continue
            total += n
            label = "other (reactor loop, timers, logging, threads)"
            for fr in reversed(frames):
                hit = next((lab for lab, keys in CATEGORIES if fr in keys), None)
                if hit:
                    label = hit
                    break
            counts[label] += n
            for key in set(f"{a} ({b})" for a, b in frames):
                funcs[key] += n
    return total, idle, counts, funcs


# -- report -------------------------------------------------------------------------------------------


def machine_facts():
    versions = {}
    for pkg in ("Twisted", "autobahn", "pyOpenSSL", "cryptography", "msgpack", "libtorrent",
                "fastjsonschema", "PyNaCl", "rbloom", "orjson"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        from OpenSSL import SSL

        versions["OpenSSL"] = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:
        pass
    facts = shared_machine_facts()
    facts.update(clk_tck=CLK_TCK, versions=versions)
    return facts


def measure_verify(n=2000):
    """µs per Ed25519 verification of a real ~330-byte record, in this process:
    peernet.identity.verify (libsodium) and cryptography's (OpenSSL) for reference."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from peernet.identity import ED25519_SPKI_PREFIX, verify

    key = Key("verify", 0)
    record_bytes, signature = wire_record(key, 1, int(time.time() * 1000))
    openssl_key = Ed25519PublicKey.from_public_bytes(key.public_key_der[len(ED25519_SPKI_PREFIX):])
    out = {"record_bytes": len(record_bytes)}
    for name, check in (("libsodium", lambda: verify(key.public_key_der, signature, record_bytes)),
                        ("openssl", lambda: openssl_key.verify(signature, record_bytes))):
        out[name] = best_us_per_call(check, n)
    return out


def best_us_per_call(f, n):
    """CPU µs per call of ``f``: the best of 3 runs of ``n`` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            f()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


def measure_checks(n=2000):
    """µs per call, in this process, of the checks every new PEER_UPDATE needs
    besides the signature: codec decode (msgpack, fields, message id) and the
    record's JSON parse + schema + canonical form + key binding (record_from_bytes
    with its cache cleared, minus one verify)."""
    from peernet import records
    from peernet.gossip import codec
    from peernet.identity import verify

    key = Key("checks", 0)
    ts = int(time.time() * 1000)
    frame = build_frames([key], 2, ts)[0]
    record_bytes, signature = wire_record(key, 3, ts)

    def per_call(f):
        return best_us_per_call(f, n)

    def record():
        records._record_from_bytes.cache_clear()
        records.record_from_bytes(record_bytes, signature)

    one_verify = per_call(lambda: verify(key.public_key_der, signature, record_bytes))
    return {"decode": per_call(lambda: codec.decode(frame)),
            "record_checks": max(0.0, per_call(record) - one_verify)}


def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def cpu_summary(cpu):
    """Medians over the rounds of one CPU measurement, and the ratios."""
    rounds = (cpu.get("result") or {}).get("rounds") or []
    if not rounds:
        return None
    per = {m: [r[m]["cpu_us_per_msg"] for r in rounds] for m in ("peer", "echo", "relay3")}
    c = {m: med(v) for m, v in per.items()}
    c["ratio_vs_echo"] = c["peer"] / c["echo"]
    c["ratio_vs_relay3"] = c["peer"] / c["relay3"]
    ns = {m: med([r[m]["schedstat_us_per_msg"] for r in rounds])
          for m in ("peer", "echo", "relay3")}
    c["schedstat"] = dict(ns, ratio_vs_echo=ns["peer"] / ns["echo"],
                          ratio_vs_relay3=ns["peer"] / ns["relay3"])
    c["ratios_by_round"] = [r["peer"]["cpu_us_per_msg"] / r["echo"]["cpu_us_per_msg"]
                            for r in rounds]
    if all("sys_us_per_msg" in r[m] for r in rounds for m in ("peer", "echo", "relay3")):
        c["sys"] = {m: med([r[m]["sys_us_per_msg"] for r in rounds])
                    for m in ("peer", "echo", "relay3")}
    return c


def summarize(report):
    s = {}
    for key in ("links_raised", "links_stock"):
        rows = [r for r in report.get(key) or [] if r["target_inbound"] == r["asked"]]
        if len(rows) >= 2:
            ks = [r["target_inbound"] for r in rows]
            s[key] = {f: slope(ks, [r[f] for r in rows]) for f in ("VmRSS", "Anonymous", "Pss")}
    rows = report.get("entries") or []
    if len(rows) >= 2:
        ns = [r["entries"] for r in rows]
        s["entries"] = {f: slope(ns, [r[f] for r in rows]) for f in ("VmRSS", "Anonymous", "Pss")}
    for key in ("cpu", "cpu_pinned"):
        summary = cpu_summary(report.get(key) or {})
        if summary:
            s[key] = summary
    return s


def markdown(report):
    s = report["summary"]
    m = report["machine"]
    st = report["settings"]
    lines = ["## Real-process costs", ""]
    lines.append(
        f"Measured {report['date']} on {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, Twisted {m['versions']['Twisted']}, "
        f"Autobahn {m['versions']['autobahn']}, pyOpenSSL {m['versions']['pyOpenSSL']} "
        f"({m['versions'].get('OpenSSL', '?')}). Regenerate with `{report['command']}` "
        "(`benchmarks/costs.py`; figures in `benchmarks/results/costs.json`).")
    lines.append("")
    lines.append("| what | measured | how |")
    lines.append("|---|---:|---|")
    if "links_raised" in s:
        ks = ", ".join(str(r["target_inbound"]) for r in report["links_raised"])
        lines.append(f"| memory per gossip connection (target side) | "
                     f"{s['links_raised']['VmRSS'] / 1024:.1f} KiB RSS "
                     f"({s['links_raised']['Anonymous'] / 1024:.1f} KiB anonymous) | slope over K = {ks} "
                     f"idle inbound links (HELLO exchanged), inbound cap raised to {RAISED_CAP} "
                     "by a launcher |")
    if "links_stock" in s:
        ks = ", ".join(str(r["target_inbound"]) for r in report["links_stock"])
        lines.append(f"| same, stock `twist peer` (cap 64) | "
                     f"{s['links_stock']['VmRSS'] / 1024:.1f} KiB RSS "
                     f"({s['links_stock']['Anonymous'] / 1024:.1f} KiB anonymous) | K = {ks} (last: asked "
                     f"{report['links_stock'][-1]['asked']}, got "
                     f"{report['links_stock'][-1]['target_inbound']}) |")
    if "entries" in s:
        ns = ", ".join(str(r["entries"]) for r in report["entries"])
        lines.append(f"| memory per table entry | {s['entries']['VmRSS']:.0f} B RSS "
                     f"({s['entries']['Anonymous']:.0f} B anonymous) | slope over N = {ns} signed records "
                     f"(mean {report['entry_record_bytes']:.0f} B of canonical JSON) loaded "
                     "from the snapshot, one process per N |")
    if "cpu" in s:
        c = s["cpu"]
        verdict = "meets" if c["ratio_vs_echo"] <= 2 else "misses"
        rounds = report["cpu"]["result"]["rounds"]
        fanout = med([r["peer"].get("relayed_frames", 0) / r["peer"]["messages"] for r in rounds])
        pings = med([r["peer"].get("digest_pings", 0) / r["peer"]["messages"] for r in rounds])
        lines.append(f"| CPU per relayed PEER_UPDATE, peernet target | {c['peer']:.0f} µs | "
                     f"median of {st['rounds']} rounds of {st['messages']} frames at "
                     f"{st['rate']:.0f}/s; verify, apply, relay to {fanout:.1f} of "
                     f"{st['links']} links (the frames out, per message), "
                     f"{pings:.2f} digest pings per message |")
        lines.append(f"| CPU per frame, bare Autobahn echo (same frames, same TLS) | "
                     f"{c['echo']:.0f} µs | receive + send back |")
        lines.append(f"| CPU per frame, bare Autobahn relay to 3 links | {c['relay3']:.0f} µs | "
                     "receive + send to 3 other links |")
        lines.append(f"| **ratio peernet / echo (target ≤ 2×)** | **{c['ratio_vs_echo']:.1f}×** | "
                     f"{verdict} the target; per round: "
                     + ", ".join(f"{x:.1f}×" for x in c["ratios_by_round"]) + " |")
        lines.append(f"| ratio peernet / bare relay to 3 | {c['ratio_vs_relay3']:.1f}× | "
                     "same fan-out, no protocol |")
        n = c["schedstat"]
        lines.append(f"| cross-check from per-thread schedstat (ns clock) | "
                     f"{n['peer']:.0f} / {n['echo']:.0f} / {n['relay3']:.0f} µs | "
                     f"peer / echo / relay3: {n['ratio_vs_echo']:.1f}× vs echo, "
                     f"{n['ratio_vs_relay3']:.1f}× vs relay |")
        if "sys" in c:
            k = c["sys"]
            lines.append(f"| of which kernel (system) time | {k['peer']:.0f} / {k['echo']:.0f} / "
                         f"{k['relay3']:.0f} µs | peer / echo / relay3: socket sends and "
                         "receives, epoll (stime over the same window) |")
    if "cpu_pinned" in s:
        c = s["cpu_pinned"]
        pinned = report["cpu_pinned"]["pinned"]
        verdict = "meets" if c["ratio_vs_echo"] <= 2 else "misses"
        lines.append(f"| **same, measured process on a CPU of its own** (peer / echo / relay to 3) | "
                     f"{c['peer']:.0f} / {c['echo']:.0f} / {c['relay3']:.0f} µs | target and "
                     f"echo server pinned to CPU {pinned['measured']}, the helper to "
                     f"{pinned['helper']}; median of {st['rounds']} rounds |")
        lines.append(f"| **ratio peernet / echo, pinned (target ≤ 2×)** | "
                     f"**{c['ratio_vs_echo']:.1f}×** | {verdict} the target; per round: "
                     + ", ".join(f"{x:.1f}×" for x in c["ratios_by_round"])
                     + f"; {c['ratio_vs_relay3']:.1f}× the bare relay to 3 |")
        n = c["schedstat"]
        lines.append(f"| pinned, schedstat cross-check | {n['peer']:.0f} / {n['echo']:.0f} / "
                     f"{n['relay3']:.0f} µs | {n['ratio_vs_echo']:.1f}× vs echo, "
                     f"{n['ratio_vs_relay3']:.1f}× vs relay |")
    lines.append("")
    if report.get("links_raised"):
        lines.append("Memory by connections (target RSS / anonymous, MiB): " + "; ".join(
            f"K={r['target_inbound']}: {r['VmRSS'] / 2**20:.1f} / {r['Anonymous'] / 2**20:.1f}"
            for r in report["links_raised"]) + ".")
        lines.append("")
    if report.get("entries"):
        lines.append("Memory by table size (target RSS / anonymous, MiB; start-up to loaded "
                     "table): " + "; ".join(f"N={r['entries']}: {r['VmRSS'] / 2**20:.1f} / "
                                 f"{r['Anonymous'] / 2**20:.1f} ({r['start_seconds']} s)"
                                 for r in report["entries"]) + ".")
        lines.append("")
    br = report.get("breakdown")
    if br:
        lines.append(f"Where the peernet target's CPU goes (py-spy, {br['samples']} samples of "
                     f"the target during one extra {st['messages']}-frame round; share of "
                     "non-idle samples, and µs per message at the measured median):")
        lines.append("")
        lines.append("| part | share | µs / msg |")
        lines.append("|---|---:|---:|")
        for label, share in br["categories"]:
            lines.append(f"| {label} | {share * 100:.1f} % | "
                         f"{share * s['cpu']['peer']:.0f} |")
        lines.append("")
    br = report.get("breakdown_echo")
    if br:
        lines.append(f"The echo server in the same profiled round ({br['samples']} samples):")
        lines.append("")
        lines.append("| part | share | µs / msg |")
        lines.append("|---|---:|---:|")
        for label, share in br["categories"]:
            lines.append(f"| {label} | {share * 100:.1f} % | "
                         f"{share * s['cpu']['echo']:.0f} |")
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (~1.5 min)")
    p.add_argument("--out", default=str(RESULTS_DIR / "costs"))
    p.add_argument("--skip", action="append", default=[],
                   choices=["links", "stock", "entries", "cpu", "pinned", "profile"])
    p.add_argument("--messages", type=int)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--rounds", type=int)
    p.add_argument("--links", type=int, default=8, help="inbound links of the CPU target")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--render", action="store_true",
                   help="only rewrite <out>.md from an existing <out>.json")
    args = p.parse_args()
    if args.render:
        with open(args.out + ".json") as f:
            report = json.load(f)
        report["summary"] = summarize(report)
        report["notes"] = notes(report)
        with open(args.out + ".json", "w") as f:
            json.dump(report, f, indent=1, default=str)
        md = markdown(report)
        with open(args.out + ".md", "w") as f:
            f.write(md)
        print(md)
        return
    link_steps = [0, 20, 50] if args.quick else [0, 50, 100, 200]
    stock_steps = [0, 32, 64]
    entry_counts = [0, 1000, 5000] if args.quick else [0, 1000, 5000, 20000]
    messages = args.messages or (1000 if args.quick else 3000)
    # 5: one round swings by ±0.3x with the host (docs/costs.md, "Sixth pass")
    rounds = args.rounds or (2 if args.quick else 5)
    settle = 2.0
    workdir = tempfile.mkdtemp(prefix="peernet-costs-")
    cmd = ".venv/bin/python benchmarks/costs.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": cmd, "machine": machine_facts(), "workdir": workdir,
              "settings": {"link_steps": link_steps, "stock_steps": stock_steps,
                           "entry_counts": entry_counts, "messages": messages,
                           "rate": args.rate, "rounds": rounds, "links": args.links,
                           "settle_seconds": settle}}
    seed = f"costs-{os.getpid()}-{time.time()}"
    t_start = time.monotonic()
    print(f"work directory {workdir}", flush=True)
    if "links" not in args.skip:
        print("1. memory per gossip connection", flush=True)
        report["links_raised"] = measure_links(workdir, link_steps, True, settle)
        if "stock" not in args.skip:
            report["links_stock"] = measure_links(workdir, stock_steps, False, settle,
                                                  try_extra=True)
    if "entries" not in args.skip:
        print("2. memory per table entry (generating records)", flush=True)
        keys = [Key(seed, i) for i in range(max(entry_counts))]
        report["entries"], report["entry_record_bytes"] = measure_entries(
            workdir, entry_counts, keys, settle)
    profile = None
    if "cpu" not in args.skip:
        print("3. CPU per relayed message vs Autobahn echo", flush=True)
        if "profile" not in args.skip and os.path.exists(PYSPY):
            profile = os.path.join(workdir, "target.pyspy.txt")
        report["cpu"] = measure_cpu(workdir, seed + "-cpu", messages, args.rate, rounds,
                                    args.links, profile)
        if "pinned" not in args.skip and placement() is not None:
            print("3b. the same with the measured process on a CPU of its own", flush=True)
            report["cpu_pinned"] = measure_cpu(workdir, seed + "-cpu-pinned", messages,
                                               args.rate, rounds, args.links, None,
                                               pinning=True)
        report["verify_us"] = measure_verify()
        report["checks_us"] = measure_checks()
    report["summary"] = summarize(report)
    eprof = profile and profile.replace("target", "echo")
    if eprof and os.path.exists(eprof):
        total, idle, counts, funcs = parse_pyspy(eprof)
        report["breakdown_echo"] = {
            "samples": total, "idle_samples": idle,
            "categories": [(k, v / total) for k, v in counts.most_common()],
            "top_inclusive": [(k, v / total) for k, v in funcs.most_common(40)]}
    if profile and os.path.exists(profile):
        total, idle, counts, funcs = parse_pyspy(profile)
        report["breakdown"] = {
            "samples": total, "idle_samples": idle,
            "categories": [(k, v / total) for k, v in counts.most_common()],
            "top_inclusive": [(k, v / total) for k, v in funcs.most_common(60)],
        }
    report["elapsed_seconds"] = round(time.monotonic() - t_start, 1)
    report["notes"] = notes(report)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    md = markdown(report)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print()
    print(md)
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def notes(report):
    out = [
        "Targets are real `twist peer --broadcast` processes (peernet/devnet.py); links are "
        "dialled by a separate helper process with `peernet.peer.links.GossipClientFactory` "
        "and `peernet.tls.MutualTLS` (a throwaway identity per link), each exchanging HELLO.",
        "CPU is utime + stime of the whole measured process (all threads, so libtorrent's "
        "too) from /proc/PID/stat over the injection window, minus the idle rate measured "
        "during the 1.5 s before it; the helper's own CPU is not counted.",
        "The CPU target has one outbound link (--links 1, to a gossip server in the helper "
        "whose record is in its table) so that its connection manager, as on a live "
        "network, has all the links it wants; the injected records carry no gossip address.",
        "Memory: RSS and anonymous memory (smaps_rollup) are given; Pss is in the JSON but "
        "not used, since it moves with the other processes sharing the same libraries.",
        "Stock cap: a stock `twist peer` accepted 64 inbound links and refused the 65th "
        "(MAX_INBOUND_LINKS, no command-line option), so K = 100 and 200 use a launcher "
        "(`costs.py _twist`) that raises peernet.constants.MAX_INBOUND_LINKS before the "
        "plugin loads; the product code runs unchanged.",
    ]
    c = (report.get("summary") or {}).get("cpu")
    cp = (report.get("summary") or {}).get("cpu_pinned")
    if c and cp:
        out.append(
            "Two placements of the one measurement. Unpinned, the kernel places the processes: "
            "on loopback it tends to wake the measured server on the CPU the helper just sent "
            "from, so a message finds warm caches and needs no wakeup across CPUs; the echo's "
            "fixed cost per message is then at its lowest, and the ratio at its highest "
            f"({c['echo']:.0f} µs echo, {c['ratio_vs_echo']:.1f}×). Pinned (target and echo "
            "server on one CPU, the helper on the other), every message crosses CPUs, as frames "
            "from other machines do: the echo costs more per message "
            f"({cp['echo']:.0f} µs) and peernet's own work weighs less in the ratio "
            f"({cp['ratio_vs_echo']:.1f}×). Neither placement is the one truth; the target is "
            "judged on each.")
    br = report.get("breakdown")
    if c and br:
        verify = next((v for k, v in br["categories"] if k.startswith("Ed25519")), 0)
        out.append(
            f"Ed25519 in the profile: ~{verify * c['peer']:.0f} µs of the {c['peer']:.0f} µs "
            "per message go to the one verification (the record's self-signature; protocol "
            "version 2 has no envelope signature, docs/protocol.md).")
    if c and "sys" in c:
        k = c["sys"]
        out.append(
            f"Kernel time is {k['peer']:.0f} µs of the peer's {c['peer']:.0f} µs per message "
            f"(echo {k['echo']:.0f}, relay to 3 {k['relay3']:.0f}): the rest is user space, "
            "mostly the Python interpreter. py-spy samples a thread that waits inside a socket "
            "send as busy, so its 'socket write' share is larger than the CPU the sends cost.")
    v = report.get("verify_us")
    ch = report.get("checks_us")
    if c and v and ch:
        one = v["libsodium"]
        floor = c["relay3"] + one + ch["decode"] + ch["record_checks"]
        glue = c["peer"] - floor
        room = 2 * c["echo"] - floor
        out.append(
            f"The floor: a bare Ed25519 verify of a {v['record_bytes']}-byte record takes "
            f"{one:.0f} µs here (libsodium; OpenSSL through cryptography: {v['openssl']:.0f} µs), "
            f"{one / c['echo']:.2f}x the echo ({c['echo']:.0f} µs) on its own. The same fan-out "
            f"with no protocol at all (bare relay to 3, {c['relay3']:.0f} µs), plus that one "
            f"verification, plus the checks no new record may skip, measured in one process "
            f"(codec decode {ch['decode']:.0f} µs; record JSON parse, schema, canonical form and "
            f"key binding {ch['record_checks']:.0f} µs), is {floor:.0f} µs = "
            f"{floor / c['echo']:.2f}x the echo. "
            + (f"That leaves {room:.0f} µs under 2x for everything else peernet does per "
               f"message in Python (table, relay choice, digest pings, duplicate filter, the "
               f"transport's actions and meters, Autobahn's per-message callbacks beyond the "
               f"bare relay's), which takes {glue:.0f} µs here."
               if room > 0 else
               f"That is over 2x before anything else peernet does per message "
               f"({glue:.0f} µs here).")
            + f" Against the bare relay to 3 (same fan-out) peernet is "
            f"{c['ratio_vs_relay3']:.1f}x.")
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_helper":
        helper_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_echo":
        echo_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_twist":
        twist_main(sys.argv[2:])
    else:
        main()
