"""Small pieces every benchmark script shares: output paths, SIGTERM, progress, results files."""

import json
import os
import signal
import socket
import time
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit


def dist_version(name):
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def out_stem(out):
    """``--out`` without a ``.json``/``.md`` suffix: both files are written next to each other."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".json", ".md") else out


def raise_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so ``finally`` blocks stop every process the run started."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)


def say(msg):
    """Progress line, flushed at once (the scripts often run with stdout in a pipe)."""
    print(msg, flush=True)


def write_results(stem, report, markdown, indent=1):
    """Write ``stem``.json (the report) and ``stem``.md; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=indent) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


#: docs/costs.md: costs.py's table (benchmarks/results/costs.md) down to this
#: heading, the hand-written history of the measurements from it on.
COSTS_HISTORY = "### Before and after the hot-path work"


def splice_costs(measured, doc):
    """docs/costs.md's text with its measured part replaced by ``measured``
    (costs.py's markdown, which ``report.py`` copies in on every render); the history
    from COSTS_HISTORY on is kept as it is."""
    measured = measured.rstrip("\n") + "\n"
    at = doc.find(COSTS_HISTORY)
    return measured if at < 0 else measured + "\n" + doc[at:]


def open_event_stream(node, timeout=10.0):
    """Connect to ``node``'s ``/api/events`` and read past the 200 header.

    Returns ``(sock, rest)``: the connected socket (still with ``timeout``) and the bytes already
    read after the header, which belong to the first events.
    """
    parts = urlsplit(node.control_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.sendall((f"GET /api/events HTTP/1.0\r\nHost: {parts.hostname}\r\n"
                  f"Authorization: Bearer {node.token}\r\n"
                  "Accept: text/event-stream\r\n\r\n").encode())
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.name}: no events stream header")
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"{node.name}: events stream closed: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"{node.name}: events stream: {status!r}")
    return sock, rest


def cpu_seconds(pid):
    """utime+stime of a process in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
