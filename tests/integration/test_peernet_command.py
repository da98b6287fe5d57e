"""The `peernet` command line against a real network (bootstrap + a broadcasting
peer + a silent peer, all `twist` processes): the installed console script is
run as a subprocess, like a person or a script would.

Checks content, not just exit statuses: tables name the right peers, --json
parses, a download's SHA-256s match the originals, broadcast off/on reaches the
bootstrap server, graph is DOT naming this node; and every error is one line
with its documented exit status (3 no peer, 4 wrong token, 2 usage, 5 not found).
"""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import wait_for as _wait_for
from peernet.devnet import DevNet

pytestmark = pytest.mark.slow

PEERNET = os.path.join(os.path.dirname(sys.executable), "peernet")
WAIT = 20  # seconds, for anything the network has to propagate


def run(*args, cwd=None, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k not in ("PEERNET_STATE_DIR", "COLUMNS")}
    env.update(env_extra or {})
    return subprocess.run([PEERNET, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def on(node, *args, **kw):
    """`peernet --state-dir NODE ARGS...`"""
    return run("--state-dir", node.state_dir, *args, **kw)


def ok(out):
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    return out.stdout


def one_line_error(out, status):
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("peernet: error: "), lines[0]
    return lines[0]






def make_tree(root):
    """A small directory with a subdirectory; {relpath: sha256}."""
    files = {"readme.txt": b"peernet command line test\n",
             "data/a.bin": hashlib.sha256(b"a").digest() * 20000,  # 640 KB
             "data/b.bin": os.urandom(300_000)}
    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with DevNet(str(tmp_path_factory.mktemp("cli") / "net"), broadcasting=1, silent=1) as net:
        net.peer, net.quiet = net.broadcasters[0], net.silent[0]
        net.peer_id, net.quiet_id = net.peer.peer_id(), net.quiet.peer_id()
        wait_for(lambda: net.bootstrap.health()["peers"] == 1, "the peer registers")
        wait_for(lambda: any(p["peer_id"] == net.peer_id for p in net.quiet.peers()),
                 "the silent peer learns the broadcasting one")
        wait_for(lambda: net.peer.status()["bootstrap"].get(net.bootstrap.url) == "registered",
                 "status shows the registration")
        yield net


def test_status_peers_repos(net, tmp_path):
    text = ok(on(net.peer, "status"))
    assert net.peer_id in text and "broadcasting" in text
    assert net.bootstrap.url in text and "registered" in text
    assert net.peer.host in text  # its published address
    status = json.loads(ok(on(net.quiet, "status", "--json")))  # --json after the command
    assert status["peer_id"] == net.quiet_id and status["broadcasting"] is False
    assert status["links"]["outbound"] >= 1
    assert "silent" in ok(on(net.quiet, "status"))

    text = ok(on(net.quiet, "peers"))
    assert net.peer_id[:16] in text and net.peer.host in text and net.quiet_id[:16] not in text
    peers = json.loads(ok(on(net.quiet, "--json", "peers", "--sort", "last-seen",
                             "--filter", net.peer.host)))["peers"]
    assert [p["peer_id"] for p in peers] == [net.peer_id]
    score = peers[0]["score"]  # the score object of GET /api/peers
    assert set(score) == {"total", "availability", "performance", "penalties", "refused_until"}
    # The table's score column: total, then availability and performance in percent.
    wide = ok(on(net.quiet, "peers", env_extra={"COLUMNS": "200"}))
    assert re.search(r"\b\d+\.\d \(a \d+ %, p \d+ %\)", wide), wide
    assert json.loads(ok(on(net.quiet, "--json", "peers", "--filter", "no-such-peer")))["peers"] == []
    one_line_error(on(net.quiet, "peers", "--sort", "age"), 2)

    repos = json.loads(ok(on(net.peer, "--json", "repos")))
    assert set(repos) == {"shared", "known"}
    ok(on(net.quiet, "repos"))

    # The default state directory: $PEERNET_STATE_DIR, else ./peernet-state.
    env = {"PEERNET_STATE_DIR": net.peer.state_dir}
    assert json.loads(ok(run("--json", "status", env_extra=env)))["peer_id"] == net.peer_id
    os.symlink(net.quiet.state_dir, tmp_path / "peernet-state")
    assert json.loads(ok(run("--json", "status", cwd=tmp_path)))["peer_id"] == net.quiet_id


def test_share_search_get_end_to_end(net, tmp_path):
    expected = make_tree(tmp_path / "src")
    # Relative paths are the command's (not the peer's) working directory.
    out = on(net.peer, "share", "cli-docs", "src", cwd=tmp_path)
    text = ok(out)
    shared = json.loads(ok(on(net.peer, "--json", "repos")))["shared"]
    [repo] = [r for r in shared if r["name"] == "cli-docs"]
    assert repo["files"] == 3 and repo["path"] == str(tmp_path / "src")
    assert repo["btih"] in text and repo["manifest"] in text
    assert "magnet:?xt=urn:btih:" + repo["btih"] in text
    one_line_error(on(net.peer, "share", "cli-docs", "src", cwd=tmp_path), 1)  # already shared
    one_line_error(on(net.quiet, "share", "x", "src", cwd=tmp_path), 1)  # silent: cannot share
    one_line_error(on(net.peer, "share", "y", "no-such-dir", cwd=tmp_path), 5)

    wait_for(lambda: any(r["name"] == "cli-docs" for p in net.quiet.peers() for r in p["repos"]),
             "the silent peer sees the repo")
    found = json.loads(ok(on(net.quiet, "--json", "search", "cli-docs")))["results"]
    assert [r["record"]["peer_id"] for r in found] == [net.peer_id]
    text = ok(on(net.quiet, "search", "cli-docs", "--network"))
    assert net.peer_id[:16] in text and repo["btih"] in text
    text = ok(on(net.quiet, "repos"))
    assert "cli-docs" in text and repo["btih"] in text

    out = on(net.quiet, "get", "cli-docs", "downloads", cwd=tmp_path, timeout=90)
    text = ok(out)
    root = tmp_path / "downloads" / "cli-docs"
    for rel, digest in expected.items():
        with open(root / rel, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, rel
        assert f"{digest}  {rel}" in text  # sha256sum format
    assert "3 files" in text and str(root) in text

    ok(on(net.peer, "unshare", "cli-docs"))
    one_line_error(on(net.peer, "unshare", "cli-docs"), 5)
    assert os.path.exists(tmp_path / "src" / "readme.txt")  # unshare deletes nothing


def test_get_of_a_repo_nobody_has_exits_5(net, tmp_path):
    line = one_line_error(on(net.quiet, "get", "no-such-repo", str(tmp_path)), 5)
    assert "no-such-repo" in line
    assert not os.listdir(tmp_path)


def test_graph_is_dot_of_the_local_view(net, tmp_path):
    dot = ok(on(net.quiet, "graph"))
    assert dot.startswith("digraph peernet {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    assert net.quiet_id[:12] in dot and net.peer_id[:12] in dot
    assert "silent" in dot and "outbound link" in dot
    view = json.loads(ok(on(net.quiet, "--json", "graph")))
    assert view["self"]["peer_id"] == net.quiet_id
    assert [p["peer_id"] for p in view["peers"]] == [net.peer_id]
    svg = tmp_path / "net.svg"
    out = on(net.quiet, "graph", "--svg", str(svg))
    if shutil.which("dot"):
        ok(out)
        assert "<svg" in svg.read_text() and net.peer_id[:12] in svg.read_text()
    else:
        assert "graphviz" in one_line_error(out, 1)
        assert not svg.exists()


def test_errors_are_one_line_with_meaningful_exit_statuses(net, tmp_path):
    # No peer: no state directory, no control.url, or a stale one (connection refused).
    assert "no peer is running" in one_line_error(run("--state-dir", str(tmp_path / "nope"),
                                                      "status"), 3)
    stale = tmp_path / "stale"
    stale.mkdir()
    assert "no peer is running" in one_line_error(run("--state-dir", str(stale), "peers"), 3)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (stale / "control.url").write_text(f"http://127.0.0.1:{port}\n")
    (stale / "control.token").write_text("whatever\n")
    line = one_line_error(run("--state-dir", str(stale), "status"), 3)
    assert "no peer is running" in line and "refused" in line

    # Wrong token: the real control.url, a corrupt token.
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(os.path.join(net.peer.state_dir, "control.url"), bad / "control.url")
    (bad / "control.token").write_text("not-the-token\n")
    line = one_line_error(run("--state-dir", str(bad), "status"), 4)
    assert "token" in line

    # Usage errors.
    for args in (["frobnicate"], ["get"], ["share", "name-only"], ["broadcast", "maybe"],
                 ["status", "--no-such-option"], []):
        one_line_error(run("--state-dir", net.peer.state_dir, *args), 2)
    assert "usage:" in run("--help").stdout


def test_broadcast_off_and_on(net):
    """Last: it changes the broadcasting peer's identity on the network."""
    text = ok(on(net.peer, "broadcast", "off"))
    assert "off" in text
    assert json.loads(ok(on(net.peer, "--json", "status")))["broadcasting"] is False
    assert "silent" in ok(on(net.peer, "status"))
    wait_for(lambda: net.bootstrap.health()["peers"] == 0, "the bootstrap server forgets the peer")

    assert json.loads(ok(on(net.peer, "--json", "broadcast", "on"))) == {"broadcasting": True}
    status = json.loads(ok(on(net.peer, "--json", "status")))
    assert status["broadcasting"] is True and status["peer_id"] == net.peer_id
    assert any(re.match(r"wss://127\.0\.0\.10:\d+/gossip", a) for a in status["addresses"])
    wait_for(lambda: net.bootstrap.health()["peers"] == 1, "the peer registers again")


def wait_for(predicate, what, timeout=WAIT):
    _wait_for(predicate, what, timeout)
