"""The web dashboard in a real headless Chromium (selenium) against a real network:
bootstrap + two broadcasting peers (one sharing "films") + a silent peer.

Logs in (form and /login?token= URL), flips the broadcast toggle and watches the
bootstrap server forget and re-learn the peer, browses and sorts the peer table,
searches the network for "films", downloads it and sees the progress reach 100 %
and the verified SHA-256s without a page reload (server-sent events), and saves
the screenshots the README shows (docs/img/dashboard-*.png).

Chromium and chromedriver come from Debian (`apt-get install chromium
chromium-driver`; scripts/test.sh installs them): without them this test fails.
"""

import os
import shutil
import time

import pytest

from conftest import make_repo, wait_for as _wait_for
from peernet.devnet import DevNet

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMG_DIR = os.path.join(ROOT, "docs", "img")
MiB = 1024 * 1024
WAIT = 30  # seconds: the bound of every wait in the browser


@pytest.fixture
def browser(tmp_path):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail("the dashboard test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; scripts/test.sh installs them): "
                    f"chromium={chromium}, chromedriver={chromedriver}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the dashboard test needs selenium 4 (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-gpu",
                "--window-size=1360,1100", "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def test_dashboard_in_a_real_browser(tmp_path, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def until(condition, what):
        try:
            # A navigation (the login form posts, then redirects) can make an
            # element reference stale between two polls: poll again.
            return WebDriverWait(browser, WAIT, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException,)
                                 ).until(lambda d: condition())
        except Exception as e:
            raise AssertionError(f"timed out after {WAIT} s waiting until {what}") from e

    def find(selector):
        return browser.find_element(By.CSS_SELECTOR, selector)

    def finds(selector):
        return browser.find_elements(By.CSS_SELECTOR, selector)

    # The table re-renders on live events: read it in one script, never through
    # element references that a re-render may make stale.
    def column(selector, attribute=None):
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map(e => arguments[1] ? e.getAttribute(arguments[1]) : e.textContent)",
            selector, attribute)

    def row_ids():
        return column("#peer-rows tr.peer-row", "data-peer-id")

    def text(selector):
        return browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''",
            selector)

    def shot(selector, name):
        element = find(selector)
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
        time.sleep(0.3)  # let the CSS transitions end
        element.screenshot(os.path.join(IMG_DIR, f"dashboard-{name}.png"))

    def ready():
        return browser.execute_script(
            "return document.body && document.body.getAttribute('data-ready')") == "1"

    os.makedirs(IMG_DIR, exist_ok=True)
    films = tmp_path / "films"
    expected = make_repo(films, "films", [6 * MiB, 1234, 2 * MiB], stem="reel", subdir="extras")
    with DevNet(str(tmp_path / "net"), broadcasting=0, silent=0) as net:
        seeder = net.add_peer("peer1", broadcast=True, host="127.0.0.10",
                              # 4 MiB/s: the 8 MiB take ~2 s, progress events
                              # every 0.5 s (the cap holds on loopback since the
                              # engine puts local peers in the global peer class)
                              extra=["--share", f"films={films}", "--upload-limit", "4096"])
        other = net.add_peer("peer2", broadcast=True, host="127.0.0.11")
        silent = net.add_peer("silent1", broadcast=False, host="127.0.0.77")
        seeder_id, other_id = seeder.peer_id(), other.peer_id()
        wait_for(lambda: net.bootstrap.health()["peers"] == 2, "both broadcasting peers register")

        # -- log in with the form: a wrong token is refused with a clear message ----------
        browser.get(other.control_url + "/")
        until(lambda: finds("#login-form"), "the login form shows")
        find("#token").send_keys("not-the-token")
        find("#login-button").click()
        until(lambda: "not right" in text("#login-message"), "a wrong token is refused")
        assert other.token not in browser.page_source
        find("#token").send_keys(other.token)
        find("#login-button").click()
        until(ready, "the dashboard loads after logging in")
        assert other.token not in browser.page_source
        cookies = {c["name"]: c for c in browser.get_cookies()}
        session = cookies["peernet_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert other.token not in session["value"]
        assert browser.execute_script("return document.cookie") == ""

        # -- the broadcast toggle changes the bootstrap server's state ---------------------
        toggle = find("#broadcast-toggle")
        until(lambda: toggle.get_attribute("aria-checked") == "true", "the toggle shows on")
        assert "address" in text("#broadcast-card") and "peer ID" in text("#broadcast-card")
        toggle.click()
        until(lambda: toggle.get_attribute("aria-checked") == "false", "the toggle shows off")
        wait_for(lambda: net.bootstrap.health()["peers"] == 1, "the bootstrap server forgets the peer")
        assert other.status()["broadcasting"] is False
        assert "silent" in text("#mode-pill")
        toggle.click()
        until(lambda: toggle.get_attribute("aria-checked") == "true", "the toggle shows on again")
        wait_for(lambda: net.bootstrap.health()["peers"] == 2, "the peer registers again")
        assert other.status()["broadcasting"] is True

        # -- the silent peer's dashboard, logged in by URL --------------------------------
        browser.delete_all_cookies()
        browser.get(f"{silent.control_url}/login?token={silent.token}")
        until(ready, "the silent peer's dashboard loads")
        assert "/login" not in browser.current_url, "the token stays in the address bar"
        browser.execute_script("window.__no_reload = 42")

        # Peer table: both broadcasting peers (the other one with its new record).
        until(lambda: {seeder_id, other_id} <= set(row_ids()),
              "the peer table shows both broadcasting peers")
        until(lambda: len(finds("#map .peer")) >= 2, "the map shows the broadcasting peers")
        until(lambda: finds("#map .peer.linked"), "the map shows the silent peer's gossip link")
        until(lambda: text("#stat-out") not in ("", "–", "0"), "the overview shows a link")
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.3)
        browser.save_screenshot(os.path.join(IMG_DIR, "dashboard-overview.png"))

        find('th button[data-sort="repos"]').click()  # most repos first
        assert row_ids()[0] == seeder_id
        find('th button[data-sort="repos"]').click()  # fewest first
        assert row_ids()[0] == other_id
        find('th button[data-sort="issued_at"]').click()  # newest record first
        seen = [int(ms) for ms in column("#peer-rows td.seen", "data-ms")]
        assert seen == sorted(seen, reverse=True) and len(seen) == 2
        assert row_ids()[0] == other_id, "peer2 re-published last"
        find('th button[data-sort="score"]').click()
        scores = [float(c) for c in column("#peer-rows td.score", "data-total")]
        assert scores == sorted(scores, reverse=True) and len(scores) == 2
        # The cell shows the total; its title the parts of the score.
        shown = [float(c) for c in column("#peer-rows td.score")]
        assert all(abs(a - b) <= 0.051 for a, b in zip(shown, scores)) and len(shown) == 2
        assert all("availability" in t and "performance" in t
                   for t in column("#peer-rows td.score", "title"))
        find("#peer-filter").send_keys("films")
        until(lambda: row_ids() == [seeder_id], "the filter keeps the peer sharing films")
        find("#peer-filter").clear()
        find("#peer-filter").send_keys(other_id[:12])
        until(lambda: row_ids() == [other_id], "the filter finds a peer by its ID")
        find("#peer-filter").clear()
        find("#peer-filter").send_keys("127.0.0.10")
        until(lambda: row_ids() == [seeder_id], "the filter finds a peer by its address")
        find("#peer-filter").clear()
        find("#peer-filter").send_keys("x", Keys.BACKSPACE)  # an input event, empty filter
        until(lambda: len(row_ids()) == 2, "an empty filter shows every peer")
        find('th button[data-sort="repos"]').click()
        shot("#peers-card", "peers")

        # -- search the network, download, live progress to 100 % ------------------------
        find("#search-input").send_keys("films")
        find("#search-button").click()
        until(lambda: finds('#search-results li[data-repo="films"]'), "a search result shows")
        result = find('#search-results li[data-repo="films"]')
        assert "3 files" in result.text and "shared by 1 peer" in result.text
        assert seeder_id[:10] in result.text
        percents = []

        def done():
            item = finds("#downloads li.download")
            if not item:
                return False
            # the state first: when it says done, the percentage read after
            # it is the final one (the page may update between the two reads)
            state = text("#downloads li.download .state")
            pct = text("#downloads li.download .pct")
            if pct and (not percents or percents[-1] != pct):
                percents.append(pct)
            return state == "done"

        result.find_element(By.CSS_SELECTOR, ".download-button").click()
        until(done, "the download is done")
        assert text("#downloads li.download .pct") == "100 %", percents
        assert percents[-1] == "100 %" and len(percents) >= 2, percents  # live, not just the end
        shown = dict(zip(column("#downloads li.download .files .path"),
                         column("#downloads li.download .files .sha256")))
        assert shown == expected
        assert "null" not in text("#downloads") and "undefined" not in text("#downloads")
        assert browser.execute_script("return window.__no_reload") == 42, "the page reloaded"
        [job] = silent.api("GET", "downloads")["downloads"]
        assert job["state"] == "done" and job["progress"] == 1.0
        shot("#search-download", "download")

        # A POST with the cookie but without the CSRF header is refused.
        status = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/api/broadcast', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                     body: '{"on": true}'}).then(r => done(r.status));""")
        assert status == 403
        assert silent.status()["broadcasting"] is False

        # Logging out ends the session: the login form is back.
        find("#logout").click()
        until(lambda: finds("#login-form"), "the login form shows after logging out")

    for name in ("overview", "peers", "download"):
        path = os.path.join(IMG_DIR, f"dashboard-{name}.png")
        assert os.path.getsize(path) > 10_000, path
    for node in net.peers:
        assert "Traceback" not in node.log(), node.name


def wait_for(predicate, what, timeout=WAIT):
    _wait_for(predicate, what, timeout)
