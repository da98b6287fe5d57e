"""An installed wheel (not the source tree) offers `twist bootstrap`.

setup.cfg must list twisted.plugins by hand; if it did not, the wheel would
hold no dropin and `twist bootstrap` would be an unknown command.  The wheel
goes into a fresh venv; its dependencies are borrowed from the test venv's
site-packages by a .pth line (no download), which does not expose the source
tree: .pth files found there are not processed.
"""

import json
import os
import re
import site
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("installed")
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), ROOT],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = list(wheels.glob("peernet-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(purelib)  # a wheel of pure Python installs by unpacking
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
