"""`python -m build` makes an sdist and a wheel; the installed wheel (not the
source tree) offers `twist bootstrap`, `twist peer` and `peernet`.

setup.cfg must list twisted.plugins by hand; if it did not, the wheel would
hold no dropin and `twist bootstrap` would be an unknown command.  The wheel
goes into a fresh venv; its dependencies are borrowed from the test venv's
site-packages by a .pth line (no download), which does not expose the source
tree: .pth files found there are not processed.
"""

import glob
import json
import os
import re
import site
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def package_data_on_disk():
    """Files the wheel must carry besides modules, found by glob so that a new
    schema (e.g. PostgreSQL's) or web asset is checked without editing this test."""
    out = []
    for pattern in ("peernet/web/static/*", "peernet/bootstrap/schema/*.sql",
                    "peernet/bootstrap/openapi.json"):
        out += [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern))]
    assert any(p.endswith(".sql") for p in out) and any(p.endswith("index.html") for p in out)
    return sorted(out)


def packages_on_disk():
    """Every package directory of the source tree (peernet/**/__init__.py)."""
    return sorted(os.path.relpath(os.path.dirname(p), ROOT)
                  for p in glob.glob(os.path.join(ROOT, "peernet", "**", "__init__.py"),
                                     recursive=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`python -m build`: the sdist, then the wheel built from that sdist (so a
    file missing from the sdist is missing from the wheel too).  No isolation:
    the build tools come from the test venv, nothing is downloaded."""
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "-o", str(dist), ROOT],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [sdist] = list(dist.glob("peernet-*.tar.gz"))
    [wheel] = list(dist.glob("peernet-*.whl"))
    return sdist, wheel


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """The wheel pip-installed (no dependencies, no index) into a fresh venv;
    the dependencies are borrowed from the test venv's site-packages by a .pth
    line (no download), which does not expose the source tree: .pth files
    found there are not processed."""
    _, wheel = built
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    (open(os.path.join(purelib, "zz_test_deps.pth"), "w")
     .write("\n".join(site.getsitepackages()) + "\n"))
    return venv, names, tmp


def test_wheel_contains_plugin_schema_and_openapi(installed):
    _, names, _ = installed
    assert "twisted/plugins/peernet_plugins.py" in names
    assert "twisted/plugins/__init__.py" not in names and "twisted/__init__.py" not in names
    for needed in ("peernet/gossip/core.py", "peernet/peer/tap.py", "peernet/control/api.py",
                   "peernet/bootstrap/openapi.json", "peernet/bootstrap/schema/v1.sql",
                   "peernet/bootstrap/schema/v2.sql", "peernet/bootstrap/schema/upgrade-to-v2.sql"):
        assert needed in names


def test_installed_copy_offers_twist_bootstrap(installed):
    venv, _, tmp = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import peernet; print(peernet.__file__)"],
        cwd=tmp, env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), f"peernet was imported from {where}, not the installed copy"
    twist = [str(venv / "bin" / "python"), "-m", "twisted"]
    out = subprocess.run(twist + ["--help"], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    assert "bootstrap" in out.stdout
    out = subprocess.run(twist + ["bootstrap", "--help"], cwd=tmp, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--listen" in out.stdout and "--federate" in out.stdout
    out = subprocess.run(twist + ["peer", "--help"], cwd=tmp, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--broadcast" in out.stdout and "--bootstrap" in out.stdout
    # And it really serves, with its schema files and OpenAPI document.
    log = tmp / "server.log"
    proc = subprocess.Popen(
        twist + ["--log-format=text", "--log-file", str(log), "bootstrap",
                 "--listen", "tcp:0:interface=127.0.0.1", "--db", str(tmp / "db.sqlite")],
        cwd=tmp, env=env,
    )
    try:
        port = None
        for _ in range(200):
            match = re.search(r"listening on [\d.]+:(\d+)", log.read_text() if log.exists() else "")
            if match:
                port = int(match.group(1))
                break
            time.sleep(0.05)
        assert port, "the installed server did not start"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/bootstrap/health", timeout=10) as r:
            assert json.load(r)["schema_version"] == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/bootstrap/openapi.json", timeout=10) as r:
            assert json.load(r)["openapi"].startswith("3.1")
    finally:
        proc.terminate()
        proc.wait(15)


def test_wheel_and_sdist_carry_every_package_and_data_file(built, installed):
    sdist, _ = built
    _, names, _ = installed
    for package in packages_on_disk():
        assert f"{package}/__init__.py" in names, f"{package} is not in the wheel (setup.cfg packages)"
    for path in package_data_on_disk():
        assert path in names, f"{path} is not in the wheel (setup.cfg package_data)"
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split("/")[0]
        members = {n[len(top) + 1:] for n in t.getnames()}
    for path in package_data_on_disk() + ["twisted/plugins/peernet_plugins.py", "setup.cfg",
                                          "pyproject.toml", "README.md"]:
        assert path in members, f"{path} is not in the sdist (MANIFEST.in)"
    for package in packages_on_disk():
        assert f"{package}/__init__.py" in members
    units = [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "etc", "systemd", "*"))]
    assert units and set(units) <= members
    for guide in ("docs/deployment.md", "docs/troubleshooting.md"):
        assert guide in members


def test_installed_console_scripts_answer_help(installed):
    venv, _, tmp = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run([str(venv / "bin" / "peernet"), "--help"], cwd=tmp, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "search" in out.stdout and "share" in out.stdout, out.stderr
    twist = [str(venv / "bin" / "python"), "-m", "twisted"]
    for command, needed in (("bootstrap", "--metrics"), ("peer", "--metrics")):
        out = subprocess.run(twist + [command, "--help"], cwd=tmp, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and needed in out.stdout, out.stderr
    # The dashboard's files are where the installed code looks for them.
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import os, peernet.web as w; d = os.path.join(os.path.dirname(w.__file__), 'static');"
         "print(sorted(os.listdir(d)))"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "index.html" in out.stdout and "app.js" in out.stdout
