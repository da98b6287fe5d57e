"""The systemd units in etc/systemd/, checked as far as a machine whose PID 1 is
not systemd allows:

* ``systemd-analyze verify`` accepts each unit once its install prefix
  (/opt/peernet/venv) is replaced by this test venv, and refuses it when the
  entry point is missing (so the check has teeth);
* ``systemd-analyze security --offline=true`` scores each unit's exposure below
  MAX_EXPOSURE;
* each unit's ExecStart, expanded as systemd would (Environment= defaults, an
  options file, %S/%i specifiers, $VAR word splitting), names this venv's
  `twist`, parses (``--help``), and really runs under the unit's
  RestrictAddressFamilies= and SystemCallFilter= (seccomp filters built the
  way systemd builds them, see sandbox_families.py): the bootstrap unit serves
  /health and /metrics; the peer units register with it, and on SIGTERM
  unregister and exit cleanly well within TimeoutStopSec=.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from peernet.devnet import stop_process

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = os.path.join(ROOT, "etc", "systemd")
PREFIX = "/opt/peernet/venv"
VENV = sys.prefix
SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_families.py")
#: systemd-analyze security: 0 is best, 10 worst; "OK" is below 4.  Ours are 1.5-1.6.
MAX_EXPOSURE = 2.0
UNIT_NAMES = ["peernet-bootstrap.service", "peernet-peer.service", "peernet-peer@.service"]

def needs_systemd_analyze(test):
    """Not a skip: scripts/test.sh installs systemd, so its absence is a broken setup."""
    def wrapper(*args, **kwargs):
        if shutil.which("systemd-analyze") is None:
            pytest.fail("systemd-analyze is missing (apt-get install systemd; scripts/test.sh "
                        "installs it)", pytrace=False)
        return test(*args, **kwargs)

    import functools

    return functools.wraps(test)(wrapper)


def unit_text(name):
    with open(os.path.join(UNITS, name)) as f:
        return f.read()


def installed_copy(tmp_path, name, prefix=VENV, instance="test"):
    """The unit as it would be installed with peernet in ``prefix``; a template
    is instantiated (systemd-analyze checks instances, not templates)."""
    text = unit_text(name).replace(PREFIX, prefix)
    target = name.replace("@.", f"@{instance}.")
    path = tmp_path / target
    path.write_text(text)
    return path


def directives(text):
    """[(key, value)] of the [Service] section, in order."""
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def exec_start(name, state_root, env_file_lines=(), instance="test"):
    """ExecStart of a unit as an argv, expanded the way systemd does it."""
    text = unit_text(name).replace(PREFIX, VENV)
    env = {}
    items = directives(text)
    for key, value in items:
        if key == "Environment":
            k, _, v = value.partition("=")
            env[k] = v
    for line in env_file_lines:   # what EnvironmentFile= would add
        k, _, v = line.partition("=")
        env[k] = v
    [line] = [v for k, v in items if k == "ExecStart"]
    line = line.replace("%S", str(state_root)).replace("%i", instance)
    argv = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:   # $VAR: split at whitespace, possibly into nothing
            argv.extend(env.get(whole.group(1), "").split())
        else:       # ${VAR}: substituted inside one word
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                               lambda m: env.get(m.group(1), ""), word))
    return argv, dict(items)


def state_dir_of(name, state_root, instance="test"):
    value = dict(directives(unit_text(name)))["StateDirectory"].replace("%i", instance)
    path = os.path.join(state_root, value)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_analyze_verify(tmp_path, name):
    path = installed_copy(tmp_path, name)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert path.name not in out.stderr, out.stderr   # no warnings about our unit either
    # The same unit pointing at an install without `twist` is refused.
    broken = tmp_path / "broken"
    broken.mkdir()
    path = installed_copy(broken, name, prefix=str(tmp_path / "no-such-venv"))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "twist" in out.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_security_exposure(tmp_path, name):
    path = installed_copy(tmp_path, name)
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                          str(path)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    assert float(match.group(1)) < MAX_EXPOSURE, out.stdout


@needs_systemd_analyze
def test_tor_drop_in(tmp_path):
    """etc/systemd/peernet-peer.service.d/tor.conf (a peer on the system tor):
    systemd reads it next to the unit, accepts it without a warning, and the
    exposure stays below MAX_EXPOSURE with the extra group.  The run-time side
    (the unit's sandbox talking to a system tor's control socket) is in
    tests/integration/test_tor_deployment.py."""
    name = "peernet-peer.service"
    drop_in = os.path.join(UNITS, name + ".d", "tor.conf")
    path = installed_copy(tmp_path, name)
    (tmp_path / (name + ".d")).mkdir()
    shutil.copy(drop_in, tmp_path / (name + ".d") / "tor.conf")
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tor.conf" not in out.stderr and name not in out.stderr, out.stderr
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                          str(path)], capture_output=True, text=True, timeout=60)
    # the drop-in was read: the unit now runs with a supplementary group
    assert re.search(r"✗ SupplementaryGroups=", out.stdout), out.stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert match and float(match.group(1)) < MAX_EXPOSURE, out.stdout
    text = open(drop_in).read()
    assert re.search(r"^SupplementaryGroups=debian-tor$", text, re.M)
    # the group that owns /run/tor/control in Debian's tor (tor-service-defaults-torrc:
    # User debian-tor; torrc.example: ControlSocket ... GroupWritable)
    assert "GroupWritable" in open(os.path.join(ROOT, "etc", "tor", "torrc.example")).read()
    assert "AF_UNIX" in dict(directives(unit_text(name)))["RestrictAddressFamilies"].split()


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_unit_basics(name):
    items = directives(unit_text(name))
    keys = dict(items)
    assert keys["Restart"] == "on-failure"
    assert keys["DynamicUser"] == "yes" and keys["StateDirectory"].startswith("peernet-")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert keys[key] == "yes", key
    assert keys["ProtectSystem"] == "strict"
    families = set(keys["RestrictAddressFamilies"].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families <= {"AF_INET", "AF_INET6", "AF_UNIX",
                                                               "AF_NETLINK"}
    assert ("SystemCallFilter", "@system-service") in items
    assert int(keys["TimeoutStopSec"]) >= 30
    assert "--log-format=text" in keys["ExecStart"]
    if "@" in name:
        assert "%i" in keys["StateDirectory"] and "peer-%i.env" in keys["EnvironmentFile"]


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_exec_start_names_the_entry_point_and_parses(tmp_path, name):
    argv, _ = exec_start(name, tmp_path)
    state_dir_of(name, tmp_path)
    assert argv[0] == os.path.join(VENV, "bin", "twist") and os.access(argv[0], os.X_OK)
    assert argv[1:3] == ["--log-format=text", "bootstrap" if "bootstrap" in name else "peer"]
    out = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and ("--db" in out.stdout or "--broadcast" in out.stdout)


def syscall_groups():
    """{"@group": [members]} as this systemd defines them."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def _expand(groups, names):
    out = set()
    for name in names:
        out |= _expand(groups, groups[name]) if name.startswith("@") else {name}
    return out


def allowed_syscalls(name):
    """The system calls a unit's SystemCallFilter= lines leave allowed: the
    allow-lists' union minus the ~deny-lists' union."""
    groups = syscall_groups()
    allow, deny = set(), set()
    for key, value in directives(unit_text(name)):
        if key == "SystemCallFilter":
            if value.startswith("~"):
                deny |= _expand(groups, value[1:].split())
            else:
                allow |= _expand(groups, value.split())
    assert allow, f"{name} has no SystemCallFilter allow-list"
    return sorted(allow - deny)


def start(argv, cwd, log_path, keys, unit, tmp_path):
    """Run a unit's command under its RestrictAddressFamilies=, SystemCallFilter=
    (seccomp, see sandbox_families.py) and, if the unit sets it,
    MemoryDenyWriteExecute=."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (scripts/test.sh installs systemd)", pytrace=False)
    sandbox = [sys.executable, SANDBOX, ",".join(keys["RestrictAddressFamilies"].split())]
    if keys.get("MemoryDenyWriteExecute") == "yes":
        sandbox.append("--mdwe")
    syscalls = tmp_path / (unit + ".syscalls")
    syscalls.write_text("\n".join(allowed_syscalls(unit)))
    sandbox += ["--syscalls", str(syscalls)]
    argv = sandbox + argv
    log = open(log_path, "wb")
    return subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def stop(proc, timeout=15):
    stop_process(proc, timeout=timeout)


def log_match(path, pattern, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text(errors="replace"))
        if match:
            return match
        assert proc.poll() is None, f"exited early:\n{path.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {path}:\n{path.read_text()[-3000:]}")


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def get_json(url):
    import json

    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def test_units_run_and_a_broadcasting_peer_unregisters_on_sigterm(tmp_path):
    """The bootstrap unit's ExecStart serves; peer units (plain and template)
    run inside their RestrictAddressFamilies=, register, and unregister on
    SIGTERM within TimeoutStopSec."""
    procs = []
    try:
        # -- the bootstrap unit, with an options file as an operator writes it
        name = "peernet-bootstrap.service"
        argv, keys = exec_start(name, tmp_path, [
            "PEERNET_BOOTSTRAP_LISTEN=tcp:0:interface=127.0.0.1",
            "PEERNET_BOOTSTRAP_ARGS=--metrics tcp:0:interface=127.0.0.1 --ttl 600"])
        workdir = state_dir_of(name, tmp_path)
        boot_log = tmp_path / "bootstrap.log"
        boot = start(argv, workdir, boot_log, keys, name, tmp_path)
        procs.append(boot)
        port = int(log_match(boot_log, r"listening on 127\.0\.0\.1:(\d+)", boot).group(1))
        mport = int(log_match(boot_log, r"metrics on http://127\.0\.0\.1:(\d+)", boot).group(1))
        health = get_json(f"http://127.0.0.1:{port}/api/bootstrap/health")
        assert health["status"] == "ok" and health["peers"] == 0
        assert os.path.exists(os.path.join(workdir, "bootstrap.sqlite"))
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            assert b"peernet_bootstrap_registrations" in r.read()
        url = f"http://127.0.0.1:{port}"

        # -- two peers from the peer units, both broadcasting
        peers = []
        for name, host in (("peernet-peer.service", "127.0.0.51"),
                           ("peernet-peer@.service", "127.0.0.52")):
            argv, keys = exec_start(name, tmp_path, [
                f"PEERNET_PEER_ARGS=--broadcast --listen tcp:0:interface={host} "
                f"--bootstrap {url}"], instance="alice")
            workdir = state_dir_of(name, tmp_path, instance="alice")
            log_path = tmp_path / (name + ".log")
            proc = start(argv, workdir, log_path, keys, name, tmp_path)
            procs.append(proc)
            peers.append((proc, log_path, keys))
        for proc, log_path, _ in peers:
            # libtorrent listens (it needs AF_NETLINK), the peer registers.
            log_match(log_path, r"torrent engine ready: .* listening on \d+", proc)
            log_match(log_path, r"registered with http://127\.0\.0\.1", proc)
        assert os.path.exists(tmp_path / "peernet-peer-alice" / "control.url")
        wait_for(lambda: get_json(url + "/api/bootstrap/health")["peers"] == 2,
                 "both peers registered")

        for remaining, (proc, log_path, keys) in zip((1, 0), peers):
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(int(keys["TimeoutStopSec"]))
            took = time.monotonic() - started
            # twist re-raises the signal once it has shut down cleanly; systemd
            # counts death by SIGTERM as a clean exit (like status 0).
            assert proc.returncode in (0, -signal.SIGTERM), log_path.read_text()[-3000:]
            assert "Main loop terminated" in log_path.read_text()
            assert took < int(keys["TimeoutStopSec"]) / 2
            assert "unregistered from" in log_path.read_text()
            assert get_json(url + "/api/bootstrap/health")["peers"] == remaining
    finally:
        for proc in reversed(procs):
            stop(proc)
