"""`peernet`: the command line for a running peer, over its local control API.

    peernet [--state-dir DIR] [--json] COMMAND ...

It reads ``control.url`` and ``control.token`` from the peer's state directory
(default: $PEERNET_STATE_DIR, else ``peernet-state`` in the current directory,
the same default as ``twist peer``) and makes plain blocking HTTP calls with
the standard library: no reactor, no network access beyond loopback.

Exit statuses (see docs/cli.md): 0 ok, 1 the operation failed, 2 usage error,
3 no peer running / cannot connect, 4 wrong token, 5 not found, 130 interrupted.
Every error is one sentence on stderr, never a traceback.
"""

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode, urlsplit

PROG = "peernet"
DEFAULT_STATE_DIR = "peernet-state"
STATE_DIR_ENV = "PEERNET_STATE_DIR"
TOKEN_FILE = "control.token"  # as peernet.control.api (not imported: keep start-up light)
URL_FILE = "control.url"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_PEER = 3
EXIT_BAD_TOKEN = 4
EXIT_NOT_FOUND = 5
EXIT_INTERRUPTED = 130

#: API error codes that mean "not found" (exit 5) even when not answered 404.
NOT_FOUND_CODES = {"no_seeders", "no_such_repo", "no_such_download", "repo_missing", "not_found"}

POLL_INTERVAL = 0.2
CALL_TIMEOUT = 30.0
SHARE_TIMEOUT = 24 * 3600.0  # hashing a large directory takes as long as it takes
SEARCH_TIMEOUT = 5


class CommandError(Exception):
    """Stops the command: ``str()`` is one sentence for a person."""

    def __init__(self, message, status=EXIT_FAILED, code=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


# -- talking to the peer ------------------------------------------------------------------


class ControlClient:
    """Blocking JSON calls to a peer's control API."""

    def __init__(self, state_dir):
        self.state_dir = os.path.abspath(state_dir)
        self.url = self._read_url()
        self.token = self._read_token()
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port

    def _start_hint(self):
        return f"start one with: twist peer --state-dir {self.state_dir}"

    def _read_url(self):
        if not os.path.isdir(self.state_dir):
            raise CommandError(
                f"no peer is running: the state directory {self.state_dir} does not exist "
                f"(give --state-dir, or {self._start_hint()})", EXIT_NO_PEER)
        path = os.path.join(self.state_dir, URL_FILE)
        try:
            with open(path) as f:
                url = f.read().strip()
        except FileNotFoundError:
            raise CommandError(
                f"no peer is running with the state directory {self.state_dir} "
                f"(it has no {URL_FILE}); {self._start_hint()}", EXIT_NO_PEER) from None
        except OSError as e:
            raise CommandError(f"cannot read {path}: {e.strerror}", EXIT_NO_PEER) from None
        try:
            parts = urlsplit(url)
            ok = parts.scheme == "http" and parts.hostname and parts.port
        except ValueError:
            ok = False
        if not ok:
            raise CommandError(f"{path} does not hold an http://HOST:PORT address; "
                               f"restart the peer to rewrite it", EXIT_NO_PEER)
        return url.rstrip("/")

    def _read_token(self):
        path = os.path.join(self.state_dir, TOKEN_FILE)
        try:
            with open(path) as f:
                token = f.read().strip()
        except OSError as e:
            raise CommandError(f"cannot read the control token {path}: {e.strerror}",
                               EXIT_BAD_TOKEN) from None
        if not token:
            raise CommandError(f"the control token file {path} is empty; restart the peer "
                               f"to write a new one", EXIT_BAD_TOKEN)
        return token

    def call(self, method, path, body=None, timeout=CALL_TIMEOUT):
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, "/api/" + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except ConnectionRefusedError:
            raise CommandError(
                f"no peer is running at {self.url} (connection refused; {URL_FILE} in "
                f"{self.state_dir} is left from an earlier run): {self._start_hint()}",
                EXIT_NO_PEER) from None
        except (socket.timeout, TimeoutError):
            raise CommandError(f"the peer at {self.url} did not answer within {timeout:g} s",
                               EXIT_FAILED) from None
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise CommandError(f"cannot talk to the peer at {self.url}: {reason}",
                               EXIT_NO_PEER) from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            raise CommandError(f"the peer at {self.url} answered {resp.status} with something "
                               f"that is not JSON; is it a peernet control API?") from None
        if resp.status == 401:
            raise CommandError(
                f"the peer at {self.url} refused the token in "
                f"{os.path.join(self.state_dir, TOKEN_FILE)} (wrong token: is --state-dir the "
                f"directory of the peer that wrote {URL_FILE}?)", EXIT_BAD_TOKEN)
        if resp.status >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            message = error.get("message") or f"the peer answered HTTP {resp.status}"
            code = error.get("code")
            status = EXIT_NOT_FOUND if resp.status == 404 or code in NOT_FOUND_CODES \
                else EXIT_FAILED
            raise CommandError(message, status, code)
        return answer


# -- output helpers -------------------------------------------------------------------------


def _consoles():
    from rich.console import Console

    def make(stderr):
        stream = sys.stderr if stderr else sys.stdout
        width = None
        if not stream.isatty() and "COLUMNS" not in os.environ:
            width = 160  # pipes and logs: keep hashes and ids on one line
        return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)

    return make(False), make(True)


def human_size(n):
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def human_age(ms, now=None):
    if not isinstance(ms, (int, float)):
        return "?"
    seconds = max(0.0, (now or time.time()) - ms / 1000)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def short(peer_id, n=12):
    return peer_id[:n] if isinstance(peer_id, str) else "?"


def spinner(err, text):
    """A spinner on a terminal; nothing in pipes and logs (no stray blank lines)."""
    if not err.is_terminal:
        return contextlib.nullcontext()
    return err.status(text)


def print_json(obj):
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# -- commands -------------------------------------------------------------------------------


def cmd_status(client, args, out, err):
    status = client.call("GET", "status")
    if args.json:
        print_json(status)
        return EXIT_OK
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("peer id", status.get("peer_id", "?"))
    table.add_row("mode", "broadcasting" if status.get("broadcasting") else
                  "silent (not published anywhere)")
    if status.get("addresses"):
        table.add_row("addresses", "\n".join(status["addresses"]))
    links = status.get("links", {})
    table.add_row("links", f"{links.get('outbound', 0)} outbound, {links.get('inbound', 0)} inbound")
    t = status.get("table", {})
    table.add_row("peer table", f"{t.get('records', 0)} records, "
                                f"{t.get('broadcasting', 0)} broadcasting")
    for url, result in sorted((status.get("bootstrap") or {}).items()):
        table.add_row("bootstrap", f"{url}: {result}")
    s = status.get("stats", {})
    table.add_row("messages", f"{s.get('received', 0)} received, {s.get('sent', 0)} sent, "
                              f"{s.get('invalid', 0)} invalid, {s.get('duplicates', 0)} duplicates")
    table.add_row("control API", client.url)
    out.print(table)
    return EXIT_OK


def score_total(peer):
    """The total of a peer's score: an object ``{"total", "availability",
    "performance", "penalties", "refused_until"}``, or a bare number from a
    peer that predates it."""
    score = peer.get("score")
    if isinstance(score, dict):
        score = score.get("total")
    return score if isinstance(score, (int, float)) else 0.0


def score_text(peer, now):
    """The score column: total, then availability / performance in percent,
    penalties and a running refusal when there are any."""
    score = peer.get("score")
    text = f"{score_total(peer):.1f}"
    if not isinstance(score, dict):
        return text
    if isinstance(score.get("availability"), (int, float)) and \
            isinstance(score.get("performance"), (int, float)):
        text += f" (a {100 * score['availability']:.0f} %, p {100 * score['performance']:.0f} %)"
    if score.get("penalties"):
        text += f"\npenalties -{score['penalties']:.1f}"
    until = score.get("refused_until")
    if isinstance(until, (int, float)) and until > now:
        text += f"\nrefused for {until - now:.0f} s"
    return text


PEER_SORTS = {
    "score": lambda p: (-score_total(p), p.get("peer_id", "")),
    "last-seen": lambda p: (-(p.get("issued_at") or 0), p.get("peer_id", "")),
    "repos": lambda p: (-len(p.get("repos") or ()), -score_total(p), p.get("peer_id", "")),
}


def peer_matches(peer, text):
    text = text.lower()
    haystack = [peer.get("peer_id", "")] + list(peer.get("addresses") or ()) + \
        [r.get("name", "") for r in peer.get("repos") or ()]
    return any(text in str(h).lower() for h in haystack)


def cmd_peers(client, args, out, err):
    # The peer sorts and filters (GET /api/peers?sort=...&filter=...); the same
    # again here costs nothing and keeps the order with a peer that predates them.
    query = {"sort": args.sort}
    if args.filter:
        query["filter"] = args.filter
    peers = client.call("GET", "peers?" + urlencode(query)).get("peers", [])
    if args.filter:
        peers = [p for p in peers if peer_matches(p, args.filter)]
    peers.sort(key=PEER_SORTS[args.sort])
    if args.json:
        print_json({"peers": peers})
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"{len(peers)} known peers" + (f" matching {args.filter!r}"
                                                      if args.filter else ""),
                  title_justify="left")
    table.add_column("peer id", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("state")
    table.add_column("addresses")
    table.add_column("repos")
    table.add_column("last record", no_wrap=True)
    now = time.time()
    for p in peers:
        repos = ", ".join(r.get("name", "?") for r in p.get("repos") or ()) or "-"
        table.add_row(short(p.get("peer_id"), 16), score_text(p, now),
                      "broadcasting" if p.get("broadcasting") else "gone (tombstone)",
                      "\n".join(p.get("addresses") or ()) or "-", repos,
                      human_age(p.get("issued_at"), now))
    out.print(table)
    return EXIT_OK


def cmd_repos(client, args, out, err):
    repos = client.call("GET", "repos")
    if args.json:
        print_json(repos)
        return EXIT_OK
    from rich.table import Table

    shared = Table(title="Shared by this peer", title_justify="left")
    for col in ("name", "files", "size", "btih", "path"):
        shared.add_column(col, no_wrap=col in ("btih",),
                          justify="right" if col in ("files", "size") else "left")
    for r in repos.get("shared", []):
        shared.add_row(r.get("name", "?"), str(r.get("files", "?")), human_size(r.get("size")),
                       r.get("btih") or "-", r.get("path") or "-")
    known = Table(title="Known in the network (local peer table)", title_justify="left")
    for col in ("name", "files", "size", "seeders", "btih"):
        known.add_column(col, no_wrap=col == "btih",
                         justify="right" if col in ("files", "size", "seeders") else "left")
    for r in sorted(repos.get("known", []), key=lambda r: (r.get("name", ""), -r.get("seeders", 0))):
        known.add_row(r.get("name", "?"), str(r.get("files", "?")), human_size(r.get("size")),
                      str(r.get("seeders", "?")), r.get("btih") or "-")
    if repos.get("shared"):
        out.print(shared)
    else:
        out.print("This peer shares no repos (peernet share NAME PATH).")
    if repos.get("known"):
        out.print(known)
    else:
        out.print("No repos known in the network yet.")
    return EXIT_OK


def cmd_search(client, args, out, err):
    body = {"repo": args.name, "network_only": args.network, "timeout": SEARCH_TIMEOUT}
    with spinner(err, f"Searching for {args.name!r}" +
                    (" in the network" if args.network else "") + " ..."):
        results = client.call("POST", "search", body, timeout=SEARCH_TIMEOUT + 15)["results"]
    if args.json:
        print_json({"results": results})
    else:
        from rich.table import Table

        table = Table(title=f"{len(results)} peers share {args.name!r}", title_justify="left")
        table.add_column("peer id", no_wrap=True)
        table.add_column("addresses")
        table.add_column("files", justify="right")
        table.add_column("size", justify="right")
        table.add_column("btih", no_wrap=True)
        for result in results:
            record = result.get("record", {})
            for repo in record.get("repos", []):
                if repo.get("name") != args.name:
                    continue
                table.add_row(short(record.get("peer_id"), 16),
                              "\n".join(record.get("addresses", [])) or "-",
                              str(repo.get("files", "?")), human_size(repo.get("size")),
                              repo.get("btih") or "-")
        if results:
            out.print(table)
    if not results:
        raise CommandError(f"nobody in reach shares a repo named {args.name!r}",
                           EXIT_NOT_FOUND, "no_seeders")
    return EXIT_OK


def _repo_size(client, job):
    """Total size of the repo a job downloads, from the table (None if unknown)."""
    try:
        known = client.call("GET", "repos").get("known", [])
    except CommandError:
        return None
    for repo in known:
        if repo.get("btih") == job.get("btih") and repo.get("name") == job.get("name"):
            return repo.get("size")
    return None


def _job(client, job_id):
    for job in client.call("GET", "downloads").get("downloads", []):
        if job.get("id") == job_id:
            return job
    raise CommandError(f"download {job_id} disappeared from the peer (was it restarted?)")


def cmd_get(client, args, out, err):
    body = {"infohash": args.name} if args.infohash else {"repo": args.name}
    if args.dest:
        body["dest"] = os.path.abspath(args.dest)  # the peer's cwd is not ours
    with spinner(err, f"Looking for seeders of {args.name!r} ..."):
        job = client.call("POST", "get", body, timeout=SEARCH_TIMEOUT + 25)
    try:
        job = _follow(client, job, args, err)
    except KeyboardInterrupt:
        try:
            client.call("POST", "cancel", {"id": job["id"]}, timeout=10)
            err.print(f"Download of {job.get('name')!r} cancelled.")
        except CommandError:
            pass
        raise
    if args.json:
        print_json(job)
    if job.get("state") != "done":
        raise CommandError(job.get("error") or f"the download ended {job.get('state')}")
    if not args.json:
        root = os.path.join(job.get("dest") or "", job.get("name") or "")
        files = job.get("files") or []
        size = sum(f.get("size", 0) for f in files)
        out.print(f"Downloaded {job.get('name')} to {root}: {len(files)} files, "
                  f"{human_size(size)}, every SHA-256 checked against the seeders' signed "
                  f"manifest.", soft_wrap=True)
        # sha256sum format: `cd ROOT && peernet get ... | sha256sum -c` style checks work.
        for f in files:
            out.print(f"{f.get('sha256')}  {f.get('path')}", markup=False)
    return EXIT_OK


def _follow(client, job, args, err):
    """Poll the job until it ends, with a progress bar unless --json."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn,
                               TextColumn, TimeRemainingColumn)

    size = _repo_size(client, job)
    total = size if size else 100
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn()]
    if size:
        columns.append(DownloadColumn(binary_units=True))
    columns += [TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}")]
    progress = Progress(*columns, console=err, disable=args.json, transient=False)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    with progress:
        task = progress.add_task(job.get("name") or args.name, total=total, rate="", detail="")
        while True:
            fraction = float(job.get("progress") or 0)
            state = job.get("state")
            detail = state
            if state == "downloading":
                detail = f"from {job.get('sources', 0)}/{job.get('seeders', 0)} seeders"
            elif state == "verifying":
                detail = "checking SHA-256s"
            rate = job.get("rate") or 0
            progress.update(task, completed=fraction * total, detail=detail,
                            rate=f"{human_size(rate)}/s" if rate else "")
            if state in ("done", "failed", "cancelled"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                client.call("POST", "cancel", {"id": job["id"]}, timeout=10)
                raise CommandError(f"the download did not finish within {args.timeout:g} s "
                                   f"and was cancelled")
            time.sleep(POLL_INTERVAL)
            job = _job(client, job["id"])


class EventStream:
    """The peer's server-sent events (GET /api/events), read in a thread:
    ``on_event(kind, data)`` for each event (called in that thread)."""

    def __init__(self, client, on_event):
        self.client = client
        self.on_event = on_event
        self.conn = None
        self.thread = None

    def open(self):
        """True if the stream is open and being read; False if it cannot be."""
        conn = http.client.HTTPConnection(self.client.host, self.client.port,
                                          timeout=CALL_TIMEOUT)
        try:
            conn.request("GET", "/api/events", headers={
                "Authorization": f"Bearer {self.client.token}", "Accept": "text/event-stream"})
            resp = conn.getresponse()
            ctype = resp.getheader("Content-Type") or ""
            if resp.status != 200 or not ctype.startswith("text/event-stream"):
                conn.close()
                return False
            if conn.sock is not None:
                conn.sock.settimeout(None)  # events come when they come
        except (OSError, http.client.HTTPException):
            conn.close()
            return False
        self.conn = conn
        self.thread = threading.Thread(target=self._read, args=(resp,), daemon=True,
                                       name="peernet-events")
        self.thread.start()
        return True

    def _read(self, resp):
        kind, data = None, []
        try:
            while True:
                line = resp.readline()
                if not line:
                    return
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        try:
                            value = json.loads("\n".join(data))
                        except ValueError:
                            value = None
                        if value is not None:
                            self.on_event(kind or "message", value)
                    kind, data = None, []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:][1:] if line[5:].startswith(" ") else line[5:])
        except Exception:  # closed under us, or the peer went away: the bar just stops
            return

    def close(self):
        if self.conn is None:
            return
        sock = self.conn.sock
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.thread is not None:
            self.thread.join(2)
        self.conn.close()


def _share_with_progress(client, args, path, err):
    """POST share while a bar shows the files hashed, driven by the peer's
    ``share`` events; a spinner when the event stream cannot be opened."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn)

    body = {"name": args.name, "path": path}
    disabled = args.json or not err.is_terminal
    hashing = f"Hashing {path}"
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("files"), TimeElapsedColumn(),
                        console=err, disable=disabled, transient=True)
    task = progress.add_task(hashing, total=None)

    def on_event(kind, event):
        if kind != "share" or not isinstance(event, dict) or event.get("name") != args.name:
            return
        done, total = event.get("files_done"), event.get("files_total")
        state = event.get("state")
        description = {"hashing": hashing, "seeding": f"Seeding {args.name}",
                       "shared": f"Shared {args.name}",
                       "failed": f"Failed to share {args.name}"}.get(state, hashing)
        progress.update(task, description=description,
                        total=total if isinstance(total, int) else None,
                        completed=done if isinstance(done, int) else 0)

    stream = None if disabled else EventStream(client, on_event)
    if stream is None or not stream.open():
        if not disabled:
            progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                TimeElapsedColumn(), console=err, transient=True)
            progress.add_task(f"{hashing} (SHA-256 of every file, then the torrent) ...",
                              total=None)
        stream = None
    try:
        with progress:
            return client.call("POST", "share", body, timeout=SHARE_TIMEOUT)["shared"]
    finally:
        if stream is not None:
            stream.close()


def cmd_share(client, args, out, err):
    path = os.path.abspath(args.path)  # the peer's cwd is not ours
    if not os.path.exists(path):
        raise CommandError(f"{path} does not exist", EXIT_NOT_FOUND, "repo_missing")
    if not os.path.isdir(path):
        raise CommandError(f"{path} is not a directory; share a directory", EXIT_FAILED)
    summary = _share_with_progress(client, args, path, err)
    shared = {}
    try:
        for repo in client.call("GET", "repos").get("shared", []):
            if repo.get("name") == args.name:
                shared = repo
    except CommandError:
        pass
    summary = dict(shared, **summary)
    if args.json:
        print_json({"shared": summary})
        return EXIT_OK
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False,
                  title=f"Sharing {args.name}", title_justify="left")
    table.add_column(style="bold", no_wrap=True, min_width=9)
    table.add_column(no_wrap=True)
    table.add_row("path", summary.get("path") or path)
    table.add_row("files", str(summary.get("files", "?")))
    table.add_row("size", f"{human_size(summary.get('size'))} ({summary.get('size', '?')} bytes)")
    table.add_row("btih (v1)", summary.get("btih") or "-")
    table.add_row("btmh (v2)", summary.get("btmh") or "-")
    table.add_row("manifest", summary.get("manifest") or "-")
    out.print(table)
    # On its own line, unwrapped, so that it can be copied whole.
    out.print("magnet:", summary.get("magnet") or "- (none: this node is silent)",
              soft_wrap=True, markup=False)
    return EXIT_OK


def cmd_unshare(client, args, out, err):
    summary = client.call("POST", "unshare", {"name": args.name})["unshared"]
    if args.json:
        print_json({"unshared": summary})
    else:
        out.print(f"Stopped sharing {summary.get('name', args.name)} "
                  f"(btih {summary.get('btih', '?')}); its files were not touched.")
    return EXIT_OK


def cmd_broadcast(client, args, out, err):
    on = args.state == "on"
    with spinner(err, "Turning broadcasting " + args.state + " ..."):
        answer = client.call("POST", "broadcast", {"on": on})
    if args.json:
        print_json(answer)
    elif answer.get("broadcasting"):
        out.print("Broadcasting is on: this node publishes a signed record with its address, "
                  "registers with the bootstrap servers and accepts gossip links.", soft_wrap=True)
    else:
        out.print("Broadcasting is off: this node is silent; it published a tombstone, left the "
                  "bootstrap servers and only dials out.", soft_wrap=True)
    if answer.get("broadcasting") != on:
        raise CommandError(f"the peer is still {'broadcasting' if not on else 'silent'}")
    return EXIT_OK


# -- graph ----------------------------------------------------------------------------------


def _dot_quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def network_view(status, peers):
    """The local view as plain data: this node, its links, known broadcasting peers."""
    me = status.get("peer_id", "")
    links = status.get("links", {}) or {}
    known = [p for p in peers if p.get("broadcasting") and p.get("peer_id") != me]
    return {
        "self": {"peer_id": me, "broadcasting": bool(status.get("broadcasting")),
                 "addresses": status.get("addresses", [])},
        "links": {"outbound": links.get("outbound", 0), "inbound": links.get("inbound", 0),
                  # Forward compatible: a peer that names its outbound neighbours.
                  "outbound_peers": list(links.get("outbound_peers") or [])},
        "peers": [{"peer_id": p.get("peer_id"), "addresses": p.get("addresses", []),
                   "repos": [r.get("name") for r in p.get("repos") or ()],
                   "score": score_total(p)} for p in known],
    }


def to_dot(view):
    me = view["self"]
    linked = set(view["links"]["outbound_peers"])
    lines = [
        "digraph peernet {",
        f"  graph [label={_dot_quote('local view of ' + short(me['peer_id']))}, labelloc=t, "
        "rankdir=LR, fontname=Helvetica];",
        "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=Helvetica];",
        "  edge [fontname=Helvetica, fontsize=10];",
    ]
    mode = "broadcasting" if me["broadcasting"] else "silent"
    label = f"this node\n{short(me['peer_id'])}\n{mode}"
    if me["addresses"]:
        label += "\n" + "\n".join(me["addresses"])
    lines.append(f"  {_dot_quote('self')} [label={_dot_quote(label)}, fillcolor=\"#cfe8ff\", "
                 "penwidth=2];")
    for p in view["peers"]:
        label = short(p["peer_id"])
        if p["addresses"]:
            label += "\n" + "\n".join(p["addresses"])
        if p["repos"]:
            label += "\nrepos: " + ", ".join(p["repos"])
        lines.append(f"  {_dot_quote(p['peer_id'])} [label={_dot_quote(label)}];")
        if p["peer_id"] in linked:
            lines.append(f"  {_dot_quote('self')} -> {_dot_quote(p['peer_id'])} "
                         "[label=\"link\", penwidth=2];")
        else:
            lines.append(f"  {_dot_quote('self')} -> {_dot_quote(p['peer_id'])} "
                         "[style=dashed, color=gray, label=\"known\"];")
    unnamed_out = view["links"]["outbound"] - len(linked)
    if unnamed_out > 0:
        lines.append(f"  \"outbound\" [label={_dot_quote(f'{unnamed_out} outbound links')}, "
                     "shape=ellipse];")
        lines.append("  \"self\" -> \"outbound\" [penwidth=2];")
    if view["links"]["inbound"] > 0:
        text = f"{view['links']['inbound']} inbound links\n(anonymous)"
        lines.append(f"  \"inbound\" [label={_dot_quote(text)}, shape=ellipse, "
                     "style=\"dashed\"];")
        lines.append("  \"inbound\" -> \"self\" [penwidth=2];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def cmd_graph(client, args, out, err):
    status = client.call("GET", "status")
    peers = client.call("GET", "peers").get("peers", [])
    view = network_view(status, peers)
    if args.json:
        print_json(view)
        return EXIT_OK
    dot = to_dot(view)
    if not args.svg:
        sys.stdout.write(dot)
        return EXIT_OK
    binary = shutil.which("dot")
    if binary is None:
        raise CommandError("rendering SVG needs Graphviz's `dot`, which is not installed; "
                           "install graphviz (Debian: apt install graphviz) or run "
                           "`peernet graph` for the DOT text")
    try:
        run = subprocess.run([binary, "-Tsvg", "-o", args.svg], input=dot, text=True,
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CommandError(f"Graphviz's dot failed: {e}") from None
    if run.returncode != 0:
        detail = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise CommandError(f"Graphviz's dot failed to write {args.svg}: {detail}")
    err.print(f"Wrote {args.svg}.")
    return EXIT_OK


# -- argument parsing -------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit 2."""

    def error(self, message):
        sys.stderr.write(f"{PROG}: error: {message} (see '{PROG} --help')\n")
        raise SystemExit(EXIT_USAGE)


def build_parser():
    # --state-dir and --json are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"the peer's state directory (default: ${STATE_DIR_ENV}, "
                             f"else ./{DEFAULT_STATE_DIR}, as `twist peer`)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON (for scripts) instead of tables")

    parser = Parser(prog=PROG, parents=[common],
                    description="Talk to a running peernet peer through its local control API.",
                    epilog="Exit statuses: 0 ok, 1 operation failed, 2 usage error, 3 no peer "
                           "running, 4 wrong token, 5 not found.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name, handler, help):
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    add("status", cmd_status, "this node: identity, mode, links, table, bootstrap results")
    p = add("peers", cmd_peers, "the peer table (broadcasting peers this node knows)")
    p.add_argument("--sort", choices=sorted(PEER_SORTS), default="score",
                   help="order (default: score)")
    p.add_argument("--filter", metavar="TEXT",
                   help="only peers whose id, an address or a repo name contains TEXT")
    add("repos", cmd_repos, "repos shared here and repos known in the network")
    p = add("search", cmd_search, "find the peers that share a repo")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--network", action="store_true",
                   help="ask the network even when the local table knows seeders")
    p = add("get", cmd_get, "download a repo, verify it, print the files' SHA-256")
    p.add_argument("name", metavar="NAME")
    p.add_argument("dest", metavar="DEST", nargs="?",
                   help="directory to download into (default: the peer's downloads directory)")
    p.add_argument("--infohash", action="store_true",
                   help="NAME is a BitTorrent infohash (40 or 64 hex), not a repo name")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="cancel the download if it has not finished by then (default: none)")
    p = add("share", cmd_share, "share a directory as a repo (hashes it first)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("path", metavar="PATH")
    p = add("unshare", cmd_unshare, "stop sharing a repo (its files are not touched)")
    p.add_argument("name", metavar="NAME")
    p = add("broadcast", cmd_broadcast, "turn broadcasting on or off at run time")
    p.add_argument("state", choices=["on", "off"])
    p = add("graph", cmd_graph, "the local view of the network as Graphviz DOT")
    p.add_argument("--svg", metavar="FILE", help="render to an SVG file with Graphviz's dot")
    return parser


def main(argv=None):
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # argparse (usage errors, --help)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `peernet peers | head`: not an error; silence the flush at exit.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except CommandError as e:
        _error(e.message)
        return e.status
    except Exception as e:  # a bug: still one line, and a way to see the traceback
        if os.environ.get("PEERNET_DEBUG"):
            import traceback

            traceback.print_exc()
        _error(f"internal error ({type(e).__name__}: {e}); set PEERNET_DEBUG=1 for details")
        return EXIT_FAILED


def _error(message):
    try:
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        _error(f"give a command (see '{PROG} --help')")
        return EXIT_USAGE
    args.json = getattr(args, "json", False)
    state_dir = getattr(args, "state_dir", None) or os.environ.get(STATE_DIR_ENV) \
        or DEFAULT_STATE_DIR
    client = ControlClient(state_dir)
    out, err = _consoles()
    status = args.handler(client, args, out, err)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
