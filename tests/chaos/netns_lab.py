"""Network namespaces for chaos tests: one namespace per node, one bridge.

Node ``i`` lives in its own network namespace with the address
``10.213.N.(10 + i)/24`` on a veth pair whose other end sits on a bridge in
the test's own namespace; the bridge has ``10.213.N.1``, so the test process
reaches every node's control API directly.  ``N`` is picked per lab among
subnets no interface here uses.

A partition is a set of blackhole routes *inside* the nodes' namespaces:
node a drops every packet to node b's address and vice versa.  Packets are
silently discarded (no RST, no ICMP), as on a cut cable, so open TCP
connections stay open and retransmit; the test's own address (the bridge)
is never blackholed, so control calls keep working.  ``heal()`` removes the
routes.

Needs root (``ip netns``); every ``ip`` call is bounded by a timeout, and the
lab deletes its namespaces (with their veth pairs) and bridge on exit, also
after a failure.
"""

import os
import random
import subprocess

IP_TIMEOUT = 10


def _ip(*args):
    subprocess.run(["ip", *args], check=True, timeout=IP_TIMEOUT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def netns_available():
    """A reason string if namespaces cannot be made here, else None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, timeout=IP_TIMEOUT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return "the ip command (iproute2) cannot list network namespaces"
    return None


def _used_subnets():
    out = subprocess.run(["ip", "-4", "-o", "addr"], check=True, timeout=IP_TIMEOUT,
                         capture_output=True, text=True).stdout
    return {int(part.split(".")[2]) for part in out.split()
            if part.startswith("10.213.") and part.count(".") == 3}


class NetnsLab:
    def __init__(self, n_nodes):
        self.n_nodes = n_nodes
        self.tag = "%04x" % random.randrange(0x10000)
        free = sorted(set(range(1, 255)) - _used_subnets())
        self.subnet = random.choice(free)
        self.bridge = f"pnbr{self.tag}"
        self.gateway = f"10.213.{self.subnet}.1"
        self._made = []     # namespaces made so far (deleted on exit)
        self._routes = []   # (namespace, blackholed address)

    def namespace(self, i):
        return f"pn{self.tag}n{i}"

    def address(self, i):
        return f"10.213.{self.subnet}.{10 + i}"

    def prefix(self, i):
        """Command prefix that runs a process in node i's namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def __enter__(self):
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _build(self):
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.n_nodes):
            ns, outer, inner = self.namespace(i), f"pv{self.tag}{i}", f"pe{self.tag}{i}"
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def partition(self, side_a, side_b):
        """Drop every packet between nodes of ``side_a`` and ``side_b``."""
        for a in side_a:
            for b in side_b:
                for here, there in ((a, b), (b, a)):
                    ns, addr = self.namespace(here), self.address(there)
                    _ip("-n", ns, "route", "add", "blackhole", f"{addr}/32")
                    self._routes.append((ns, addr))

    def reset_connections(self, side_a, side_b):
        """Abort every TCP connection between the sides (``ss -K``, inside
        each namespace), as missed heartbeats end links in a partition that
        outlasts LINK_DEAD_AFTER: what was in flight is lost."""
        for a in side_a:
            for b in side_b:
                for here, there in ((a, b), (b, a)):
                    subprocess.run(
                        ["ip", "netns", "exec", self.namespace(here), "ss", "-K", "-t",
                         "dst", self.address(there)],
                        check=True, timeout=IP_TIMEOUT,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def heal(self):
        while self._routes:
            ns, addr = self._routes.pop()
            _ip("-n", ns, "route", "del", "blackhole", f"{addr}/32")

    def close(self):
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], timeout=IP_TIMEOUT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._made = []
        self._routes = []
        if getattr(self, "_bridge_made", False):
            subprocess.run(["ip", "link", "del", self.bridge], timeout=IP_TIMEOUT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._bridge_made = False
