#!/usr/bin/env python3
"""Tor benchmark: what peernet's traffic costs through Tor, against direct loopback.

Everything runs on a private Tor network on 127.0.0.1 (``peernet.tor.testnet``:
3 directory authorities + 2 relays) started by this script (its cold-start time
is reported), or an already running one (``--network FILE`` with the JSON of
``PrivateTorNetwork.description()``, as the smoke test does).  Two client tors
join it: *host* publishes one v3 onion service for the two servers below,
*visitor* is the SOCKS proxy of the measuring side.  Both halves of each
comparison run in the same run, on the same machine, one after the other.

(a) Gossip round trip: an Autobahn WebSocket over peernet's mutual TLS
    (``peernet.tls.MutualTLS``, Ed25519 certificates, client pinning the
    server's peer_id) echoing a 400-byte binary frame, one in flight; direct to
    127.0.0.1 vs through the visitor's SOCKS port to the onion service (six
    hops: three on each side of the rendezvous).  Median and p95 RTT, their
    ratio, and the connection set-up time (TLS + WebSocket; through Tor also
    the rendezvous).

(b) Repo download: a repo of one random file (50 MB; ``--quick``: 5 MB) built
    with ``peernet.torrent.repo.build_repo`` (hybrid torrent), seeded by a
    libtorrent session with the engine's settings
    (``peernet.torrent.engine.session_settings``) listening on loopback; a fresh
    libtorrent session downloads it directly vs through Tor (SOCKS5 proxy at the
    visitor, the .onion mapped to a virtual IP with MAPADDRESS, since libtorrent
    dials IP endpoints only).  MB/s from adding the torrent to torrent_finished,
    the ratio, and the SHA-256 of the downloaded file checked against the repo.

Run with the project's venv::

    .venv/bin/python benchmarks/tor.py             # 300 round trips, 50 MB
    .venv/bin/python benchmarks/tor.py --quick     # 40 round trips, 5 MB

It writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/tor``,
``tor-quick`` with ``--quick``).  Exit code 0 when every figure was measured
and every download verified, 1 otherwise (what was measured is still written).
Needs the Debian package ``tor``; every tor it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import dist_version, out_stem, raise_on_sigterm, say, write_results  # noqa: E402
from machine import machine_facts  # noqa: E402  (shared by every benchmark)

FRAME_BYTES = 400
WARMUP = 5
ONION_GOSSIP_PORT = 443
ONION_TORRENT_PORT = 6881
CONNECT_ATTEMPTS = 8
CONNECT_TIMEOUT = 60.0
FRAME_TIMEOUT = 30.0
CLIENT_TIMEOUT = 120.0


def percentile(xs, q):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def summarize_rtts(rtts):
    return {
        "n": len(rtts),
        "median_ms": round(statistics.median(rtts) * 1000, 3),
        "p95_ms": round(percentile(rtts, 95) * 1000, 3),
        "min_ms": round(min(rtts) * 1000, 3),
        "max_ms": round(max(rtts) * 1000, 3),
    }


# ==========================================================================
# (a) WebSocket over mutual TLS: echo server and a one-in-flight client
# ==========================================================================

def _ws_classes():
    from autobahn.twisted.websocket import (
        WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
        WebSocketServerProtocol)
    from twisted.internet import defer

    from peernet import constants

    class EchoServer(WebSocketServerProtocol):
        def onConnect(self, request):
            return constants.WEBSOCKET_SUBPROTOCOL

        def onMessage(self, payload, isBinary):
            self.sendMessage(payload, isBinary)

    class EchoClient(WebSocketClientProtocol):
        waiting = None

        def onOpen(self):
            # With TLS 1.3 connect() fires before the server accepted our
            # certificate; onOpen means the handshake and upgrade really passed.
            self.factory.opened.callback(self)

        def onMessage(self, payload, isBinary):
            d, self.waiting = self.waiting, None
            if d is not None:
                d.callback(payload)

        def onClose(self, wasClean, code, reason):
            if not self.factory.opened.called:
                self.factory.opened.errback(ConnectionError(f"closed before open: {reason}"))
            d, self.waiting = self.waiting, None
            if d is not None:
                d.errback(ConnectionError(f"closed: {reason}"))

        def echo(self, payload):
            self.waiting = defer.Deferred()
            self.sendMessage(payload, isBinary=True)
            return self.waiting

    def server_factory():
        f = WebSocketServerFactory(protocols=[constants.WEBSOCKET_SUBPROTOCOL])
        f.protocol = EchoServer
        return f

    def client_factory():
        f = WebSocketClientFactory("wss://127.0.0.1/gossip",
                                   protocols=[constants.WEBSOCKET_SUBPROTOCOL])
        f.protocol = EchoClient
        f.opened = defer.Deferred()
        return f

    return server_factory, client_factory


async def open_echo_client(reactor, endpoint_factory, tls, client_factory, log):
    """Connect (retrying: an onion descriptor may not be fetchable yet) and open."""
    from twisted.internet import task
    from twisted.internet.endpoints import wrapClientTLS

    last = None
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        factory = client_factory()
        t0 = time.perf_counter()
        try:
            await wrapClientTLS(tls, endpoint_factory()).connect(factory).addTimeout(
                CONNECT_TIMEOUT, reactor)
            proto = await factory.opened.addTimeout(CONNECT_TIMEOUT, reactor)
            return proto, time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - retried, then reported
            last = e
            log(f"   connect attempt {attempt} failed: {e!r}")
            await task.deferLater(reactor, 1.0, lambda: None)
    raise RuntimeError(f"no WebSocket connection after {CONNECT_ATTEMPTS} attempts: {last!r}")


async def measure_rtts(reactor, proto, rounds):
    payload = os.urandom(FRAME_BYTES)
    rtts = []
    for i in range(WARMUP + rounds):
        t0 = time.perf_counter()
        echoed = await proto.echo(payload).addTimeout(FRAME_TIMEOUT, reactor)
        dt = time.perf_counter() - t0
        if echoed != payload:
            raise RuntimeError("the echo differs from the frame sent")
        if i >= WARMUP:
            rtts.append(dt)
    proto.sendClose()
    return rtts


# ==========================================================================
# (b) libtorrent seeder and downloader
# ==========================================================================

def make_repo(root, size):
    """A directory with one random file of ``size`` bytes, built as a peernet repo."""
    from peernet.torrent.repo import build_repo

    repo_dir = os.path.join(root, "torbench")
    os.makedirs(repo_dir, exist_ok=True)
    with open(os.path.join(repo_dir, "payload.bin"), "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return build_repo(repo_dir)


def _flags(lt, params, seed):
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    params.flags |= (lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd
                     | lt.torrent_flags.disable_pex)
    if seed:
        params.flags |= lt.torrent_flags.seed_mode


class Seeder:
    """A libtorrent session seeding the repo on 127.0.0.1 (engine settings)."""

    def __init__(self, manifest):
        import libtorrent as lt

        from peernet.torrent.engine import session_settings

        self.lt = lt
        self.session = lt.session(session_settings("127.0.0.1:0"))
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(manifest.torrent)
        params.save_path = os.path.dirname(manifest.root)
        _flags(lt, params, seed=True)
        self.session.add_torrent(params)
        self.port = None
        self._halt = threading.Event()
        deadline = time.monotonic() + 20
        while self.port is None and time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            for a in self.session.pop_alerts():
                if (isinstance(a, lt.listen_succeeded_alert)
                        and a.socket_type == lt.socket_type_t.tcp):
                    self.port = a.port
                elif isinstance(a, lt.listen_failed_alert):
                    raise RuntimeError(f"seeder cannot listen: {a.message()}")
        if self.port is None:
            raise RuntimeError("seeder: no listen_succeeded_alert in 20 s")
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self):
        while not self._halt.is_set():
            self.session.wait_for_alert(200)
            self.session.pop_alerts()

    def stop(self):
        self._halt.set()
        self._thread.join(5)
        self.session.pause()


def download(manifest, dest, peer, proxy=None, timeout=300.0):
    """Blocking: download the repo from ``peer`` into ``dest``; figures and verdict."""
    import libtorrent as lt

    from peernet.torrent.engine import session_settings

    settings = session_settings("", inbound=False)
    if proxy is not None:
        settings.update({
            "proxy_type": int(lt.proxy_type_t.socks5),
            "proxy_hostname": proxy[0],
            "proxy_port": int(proxy[1]),
            "proxy_hostnames": True,
            "proxy_peer_connections": True,
            "proxy_tracker_connections": True,
        })
    ses = lt.session(settings)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(manifest.torrent)
    params.save_path = dest
    _flags(lt, params, seed=False)
    os.makedirs(dest, exist_ok=True)
    t0 = time.monotonic()
    handle = ses.add_torrent(params)
    handle.connect_peer(peer)
    first_block = finished = None
    errors = []
    deadline = t0 + timeout
    while finished is None and not errors and time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.block_finished_alert) and first_block is None:
                first_block = time.monotonic()
            elif isinstance(a, lt.torrent_finished_alert):
                finished = time.monotonic()
            elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                errors.append(a.message())
    st = handle.status()
    out = {"bytes": manifest.total_size, "payload_down": st.total_payload_download,
           "errors": errors}
    if finished is None:
        out["errors"].append(f"not finished after {timeout:.0f} s "
                             f"({st.total_wanted_done} of {st.total_wanted} bytes)")
        ses.pause()
        return out
    # Make sure every block is on disk before hashing it.
    handle.flush_cache()
    flush_deadline = time.monotonic() + 10
    flushed = False
    while not flushed and time.monotonic() < flush_deadline:
        ses.wait_for_alert(100)
        flushed = any(isinstance(a, lt.cache_flushed_alert) for a in ses.pop_alerts())
    ses.pause()
    seconds = finished - t0
    out.update(seconds=round(seconds, 3),
               first_byte_s=round(first_block - t0, 3) if first_block else None,
               mb_per_s=round(manifest.total_size / seconds / 1e6, 2))
    if first_block and finished > first_block:
        # the data phase alone: without connection set-up and libtorrent's tick
        out["data_mb_per_s"] = round(manifest.total_size / (finished - first_block) / 1e6, 2)
    wanted = {f.path: f.sha256 for f in manifest.files}
    ok = True
    for rel, sha in wanted.items():
        h = hashlib.sha256()
        with open(os.path.join(dest, manifest.name, rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        ok = ok and h.hexdigest() == sha
    out["sha256_ok"] = ok
    if not ok:
        out["errors"].append("SHA-256 of the downloaded file differs from the repo's")
    return out


# ==========================================================================
# the run
# ==========================================================================

async def measure(reactor, host, visitor, args, workdir, log):
    """Both comparisons; returns the report's "gossip" and "download" parts."""
    import txtorcon
    from twisted.internet import threads
    from twisted.internet.endpoints import (
        TCP4ClientEndpoint, TCP4ServerEndpoint, clientFromString)
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from peernet.identity import NodeIdentity
    from peernet.tls import MutualTLS

    result = {"gossip": None, "download": None}
    server_factory, client_factory = _ws_classes()
    server_id, client_id = NodeIdentity.generate(), NodeIdentity.generate()
    ws_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        TLSMemoryBIOFactory(MutualTLS(server_id), False, server_factory()))
    ws_local = ws_port.getHost().port

    log("== repo for the download")
    manifest = await threads.deferToThread(make_repo, os.path.join(workdir, "seed"),
                                           args.size_mb * 1000 * 1000)
    seeder = Seeder(manifest)
    try:
        log(f"== onion service on {host.name} for 127.0.0.1:{ws_local} (gossip) and "
            f"127.0.0.1:{seeder.port} (torrent)")
        tor_host = await txtorcon.connect(reactor, clientFromString(reactor, host.control_endpoint))
        t0 = time.perf_counter()
        onion = await tor_host.create_onion_service(
            ports=[(ONION_GOSSIP_PORT, f"127.0.0.1:{ws_local}"),
                   (ONION_TORRENT_PORT, f"127.0.0.1:{seeder.port}")],
            version=3, await_all_uploads=True).addTimeout(120, reactor)
        publish_s = time.perf_counter() - t0
        log(f"   {onion.hostname} published in {publish_s:.1f} s")

        # (a) gossip round trips
        socks = TCP4ClientEndpoint(reactor, "127.0.0.1", visitor.socks_port)
        pinned = MutualTLS(client_id, expected_peer_id=server_id.peer_id)
        gossip = {"frame_bytes": FRAME_BYTES, "rounds": args.rounds,
                  "onion_publish_s": round(publish_s, 2)}
        for label, endpoint in (
                ("direct", lambda: TCP4ClientEndpoint(reactor, "127.0.0.1", ws_local)),
                ("tor", lambda: txtorcon.TorClientEndpoint(
                    onion.hostname, ONION_GOSSIP_PORT, socks_endpoint=socks))):
            log(f"== gossip round trip, {label}: {args.rounds} x {FRAME_BYTES}-byte frames")
            proto, setup_s = await open_echo_client(reactor, endpoint, pinned, client_factory, log)
            rtts = await measure_rtts(reactor, proto, args.rounds)
            gossip[label] = dict(summarize_rtts(rtts), setup_ms=round(setup_s * 1000, 1))
            log(f"   median {gossip[label]['median_ms']} ms, p95 {gossip[label]['p95_ms']} ms, "
                f"set-up {gossip[label]['setup_ms']} ms")
        gossip["ratio_median"] = round(gossip["tor"]["median_ms"] / gossip["direct"]["median_ms"], 1)
        gossip["ratio_p95"] = round(gossip["tor"]["p95_ms"] / gossip["direct"]["p95_ms"], 1)
        result["gossip"] = gossip

        # (b) repo download
        tor_visitor = await txtorcon.connect(
            reactor, clientFromString(reactor, visitor.control_endpoint))
        reply = await tor_visitor.protocol.queue_command(f"MAPADDRESS 0.0.0.0={onion.hostname}")
        virtual_ip = reply.strip().split("=", 1)[0].strip()
        dl = {"size_mb": args.size_mb, "files": manifest.file_count, "virtual_ip": virtual_ip}
        for label, peer, proxy in (
                ("direct", ("127.0.0.1", seeder.port), None),
                ("tor", (virtual_ip, ONION_TORRENT_PORT), ("127.0.0.1", visitor.socks_port))):
            log(f"== repo download, {label}: {args.size_mb} MB from {peer[0]}:{peer[1]}")
            dest = os.path.join(workdir, f"get-{label}")
            shutil.rmtree(dest, ignore_errors=True)
            dl[label] = await threads.deferToThread(
                download, manifest, dest, peer, proxy, args.download_timeout)
            shutil.rmtree(dest, ignore_errors=True)
            log(f"   {dl[label]}")
        if dl["direct"].get("mb_per_s") and dl["tor"].get("mb_per_s"):
            dl["ratio"] = round(dl["direct"]["mb_per_s"] / dl["tor"]["mb_per_s"], 1)
        result["download"] = dl
        await tor_visitor.protocol.quit()
        await tor_host.protocol.quit()
    finally:
        seeder.stop()
        await ws_port.stopListening()
    return result


def run_reactor(coro_fn):
    """Run ``coro_fn(reactor)`` to completion on the global reactor; return or raise."""
    from twisted.internet import defer, reactor

    box = {}

    def go():
        d = defer.ensureDeferred(coro_fn(reactor))

        def done(value):
            box["value"] = value
            reactor.stop()

        def failed(failure):
            box["failure"] = failure
            reactor.stop()

        d.addCallbacks(done, failed)

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    if "failure" in box:
        box["failure"].raiseException()
    return box.get("value")


def versions():
    import subprocess

    tor = subprocess.run(["tor", "--version"], capture_output=True, text=True, timeout=20)
    import libtorrent as lt
    first = (tor.stdout.splitlines() or ["?"])[0]
    return {"tor": first.replace("Tor version", "").strip().rstrip("."),
            "libtorrent": lt.__version__, "txtorcon": dist_version("txtorcon"),
            "twisted": dist_version("twisted"), "autobahn": dist_version("autobahn")}


def _fmt(v, unit=""):
    return "n/a" if v is None else f"{v}{unit}"


def markdown_report(report):
    g, d, net = report.get("gossip") or {}, report.get("download") or {}, report["network"]
    lines = [
        "# Tor results",
        "",
        f"{report['date']}, mode {report['mode']}, wall time {report.get('wall_s')} s.  "
        f"Written by `benchmarks/tor.py`; private Tor network on 127.0.0.1 "
        f"({net.get('relays')} relays, 3 of them directory authorities, "
        f"`peernet.tor.testnet`), tor {report['versions'].get('tor')}.",
        "",
        f"Network cold start (processes started to a probe client bootstrapped 100 %): "
        f"{_fmt(net.get('ready_after_s'), ' s')}"
        + (" (started by the caller)" if net.get("attached") else "") + "; "
        f"two client tors bootstrapped in {_fmt(net.get('clients_ready_s'), ' s')}; "
        f"onion service published (all descriptors uploaded) in "
        f"{_fmt(g.get('onion_publish_s'), ' s')}.",
        "",
        f"## Gossip round trip ({g.get('frame_bytes', FRAME_BYTES)}-byte binary frame, "
        "WebSocket over mutual TLS 1.3, one in flight)",
        "",
        "| path | n | median ms | p95 ms | min ms | max ms | connection set-up ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name in (("direct", "direct loopback"), ("tor", "Tor, onion service")):
        r = g.get(label)
        if r:
            lines.append(f"| {name} | {r['n']} | {r['median_ms']} | {r['p95_ms']} | "
                         f"{r['min_ms']} | {r['max_ms']} | {r['setup_ms']} |")
    lines += ["", f"Tor / direct: median x{_fmt(g.get('ratio_median'))}, "
                  f"p95 x{_fmt(g.get('ratio_p95'))}.", ""]
    lines += [
        f"## Repo download ({d.get('size_mb', '?')} MB, one file, hybrid torrent, "
        "libtorrent with the engine's settings)",
        "",
        "| path | seconds | MB/s | first block s | MB/s after the first block | SHA-256 |",
        "|---|---|---|---|---|---|",
    ]
    for label, name in (("direct", "direct loopback"),
                        ("tor", "Tor: SOCKS5 proxy to the onion service")):
        r = d.get(label)
        if r:
            lines.append(f"| {name} | {_fmt(r.get('seconds'))} | {_fmt(r.get('mb_per_s'))} | "
                         f"{_fmt(r.get('first_byte_s'))} | {_fmt(r.get('data_mb_per_s'))} | "
                         f"{'verified' if r.get('sha256_ok') else 'FAILED'} |")
    lines += ["", f"Direct / Tor (MB/s): x{_fmt(d.get('ratio'))}.", ""]
    if report["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    m = report["machine"]
    lines += ["## Machine", "",
              f"{m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, kernel {m['kernel']}, "
              f"Python {m['python']}, load average before {m['loadavg_before']}.  "
              f"Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
              ""]
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description="peernet over Tor vs direct loopback")
    ap.add_argument("--quick", action="store_true", help="40 round trips, 5 MB")
    ap.add_argument("--rounds", type=int, default=300, help="round trips (default 300)")
    ap.add_argument("--size-mb", type=int, default=50, help="repo size in MB (default 50)")
    ap.add_argument("--network", help="JSON file of a running network's description() "
                                      "(default: start a private Tor network here)")
    ap.add_argument("--workdir", help="keep tor logs and data here (default: a temp dir)")
    ap.add_argument("--download-timeout", type=float, default=300.0)
    ap.add_argument("--out", help="output path without suffix "
                                  "(default benchmarks/results/tor, tor-quick with --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.size_mb = 40, 5
    if not 1 <= args.rounds <= 100000:
        ap.error("--rounds must be 1..100000")
    if not 1 <= args.size_mb <= 10000:
        ap.error("--size-mb must be 1..10000")
    args.out = out_stem(args.out or RESULTS_DIR / ("tor-quick" if args.quick else "tor"))
    return args


def main(argv=None):
    args = parse_args(argv)
    from peernet.tor.testnet import PrivateTorNetwork, TorNetworkError

    raise_on_sigterm()

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": {"rounds": args.rounds, "size_mb": args.size_mb,
                     "frame_bytes": FRAME_BYTES},
        "machine": machine_facts(),
        "versions": versions(),
        "network": {}, "gossip": None, "download": None, "errors": {},
    }
    workdir = args.workdir or tempfile.mkdtemp(prefix="peernet-torbench-")
    os.makedirs(workdir, exist_ok=True)
    t_start = time.monotonic()
    network = None
    try:
        if args.network:
            with open(args.network) as f:
                description = json.load(f)
            network = PrivateTorNetwork.attach(description, os.path.join(workdir, "tor"))
            report["network"].update(attached=True, relays=len(description.get("relays", ())))
        else:
            say("== private Tor network (3 authorities + 2 relays)")
            network = PrivateTorNetwork(os.path.join(workdir, "tor"))
            network.start()
            report["network"]["relays"] = len(network.authorities + network.relays)
        report["network"]["ready_after_s"] = (
            round(network.ready_after, 1) if network.ready_after else None)
        say(f"   ready after {report['network']['ready_after_s']} s")
        t0 = time.monotonic()
        host = network.start_client("bench-host", wait=False)
        visitor = network.start_client("bench-visitor", wait=False)
        host.wait_ready(CLIENT_TIMEOUT)
        visitor.wait_ready(CLIENT_TIMEOUT)
        report["network"]["clients_ready_s"] = round(time.monotonic() - t0, 1)
        say(f"   client tors ready after {report['network']['clients_ready_s']} s")
        report.update(run_reactor(lambda reactor: measure(reactor, host, visitor, args,
                                                          workdir, say)))
    except KeyboardInterrupt:
        print("interrupted (every started tor was stopped); nothing written", file=sys.stderr)
        return 130
    except TorNetworkError as exc:
        report["errors"]["network"] = str(exc)
        traceback.print_exc()
    except Exception as exc:  # noqa: BLE001 - reported in the result file
        report["errors"]["run"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        if network is not None:
            network.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    for label in ("direct", "tor"):
        r = (report.get("download") or {}).get(label) or {}
        if r.get("errors"):
            report["errors"][f"download {label}"] = "; ".join(r["errors"])
    complete = (report.get("gossip") and report["gossip"].get("ratio_median")
                and report.get("download") and report["download"].get("ratio"))
    if not complete and not report["errors"]:
        report["errors"]["run"] = "some figures are missing"

    json_path, md_path = write_results(args.out, report, markdown_report(report))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
