"""The web status page in a real headless browser (Debian's chromium through chromedriver, driven by
Selenium) against the B2BUA as a subprocess and sipp gateways.

What the operator sees is read from the page's DOM (the rows it rendered, the texts it shows);
where calls went, from the gateways' sipp logs; refusals, from the B2BUA's log. Screenshots of
every test land in its workdir; with ``B2BUA_SCREENSHOTS=<folder>`` they are copied there too
(that is how ``docs/images/status-page*.png`` are made).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from .configs import ListEntry, write_list_file
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, Caller, Gateway, wait_until
from .test_ops import ADMIN_TOKEN, READ_TOKEN, Node, start_node

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: flags for chromium as root in a container, and no traffic of its own (updates, sync, QUIC)
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-extensions", "--disable-default-apps", "--disable-dev-shm-usage",
    "--disable-features=Translate,OptimizationHints,MediaRouter", "--window-size=1280,900",
)
#: probing fast enough to see a gateway go down within a few seconds
PROBING = {"ping_interval": 0.5, "ping_timeout": 0.3, "probing_threshold": 2, "inactive_threshold": 2,
           "ping_latency_stats": True}
#: operator text in a destination's attributes: the page must show it as text
HOSTILE_ATTRS = "desc=<script>window.pwned=1</script><img_src=x_onerror=window.pwned=2>;weight=1"


# -- the browser and the page ------------------------------------------------------------------------


@pytest.fixture
def browser(workdir: Path) -> Iterator[webdriver.Chrome]:
    """A headless chromium with a fresh profile in the workdir; a missing browser fails the test."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: scripts/setup.sh --test installs chromium and chromium-driver",
                        pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={workdir / 'chromium-profile'}"):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class StatusPage:
    """The page as the operator sees it, through the browser."""

    def __init__(self, driver: webdriver.Chrome, node: Node, workdir: Path) -> None:
        self.driver, self.node, self.workdir = driver, node, workdir
        self.url = f"http://127.0.0.1:{node.http_port}/"

    def open(self) -> None:
        self.driver.get(self.url)  # redirected to /status
        wait_until(lambda: self.driver.current_url.endswith("/status") and self.visible("login"), 10,
                   what="the sign-in form")

    def visible(self, element_id: str) -> bool:
        return bool(self.driver.execute_script(
            "const e = document.getElementById(arguments[0]); return e !== null && !e.hidden;", element_id))

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def sign_in(self, token: str) -> None:
        field = self.driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()

    def rows(self) -> dict[str, dict[str, Any]]:
        """Each gateway row by URI (a URI in two sets: the last), with its set, state letters, cells by
        column and action buttons."""
        rows = self.driver.execute_script("""
            return Array.from(document.querySelectorAll("#sets tr[data-uri]")).map((tr) => ({
              uri: tr.dataset.uri, set: tr.dataset.set, state: tr.dataset.state,
              cells: Object.fromEntries(Array.from(tr.cells).map((td) => [td.dataset.label, td.innerText.trim()])),
              attrs: (tr.querySelector(".attrs") || {}).textContent || "",
              actions: Array.from(tr.querySelectorAll("button[data-action]")).map((b) => b.dataset.action),
            }));""")
        return {row["uri"]: row for row in rows}

    def wait_rows(self, what: str, predicate: Any, timeout: float = 15) -> dict[str, dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}

        def check() -> bool:
            seen.clear()
            seen.update(self.rows())
            return bool(predicate(seen))

        try:
            wait_until(check, timeout, interval=0.2, what=what)
        except Exception:
            self.screenshot(f"failed-{what.replace(' ', '-')[:40]}")
            raise AssertionError(f"{what}: the page shows {json.dumps(seen, indent=1)}") from None
        return seen

    def press(self, uri: str, action: str, *, confirm: bool = True) -> str:
        """Click ``action`` on ``uri``'s row, accept (or dismiss) the confirmation; its question."""
        return self._click(f"#sets tr[data-uri='{uri}'] button[data-action='{action}']", confirm)

    def press_node(self, action: str) -> str:
        """Click the node's ``action`` button, accept the confirmation; its question."""
        return self._click(f"#node-actions button[data-action='{action}']")

    def _click(self, selector: str, confirm: bool = True) -> str:
        for _ in range(20):  # the page redraws every 2 s: a button found may be gone a moment later
            try:
                self.driver.find_element(By.CSS_SELECTOR, selector).click()
                break
            except StaleElementReferenceException:
                time.sleep(0.05)
        else:
            raise AssertionError(f"could not click {selector}")
        alert = self.driver.switch_to.alert
        question = str(alert.text)
        if confirm:
            alert.accept()
        else:
            alert.dismiss()
        return question

    def screenshot(self, name: str) -> Path:
        """A PNG of the page as laid out, cut below its content (at most 1400 CSS pixels tall)."""
        path = self.workdir / f"{name}.png"
        width, height = self.driver.execute_script(
            "return [window.innerWidth, Math.min(document.body.scrollHeight + 8, 1400)]")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        target = os.environ.get("B2BUA_SCREENSHOTS")
        if target:
            shutil.copy(path, Path(target) / path.name)
        return path

    def fetch_status(self, path: str, token: str | None, method: str = "GET", body: str | None = None) -> int:
        """The HTTP status the browser gets for ``path`` from the page's own origin."""
        return int(self.driver.execute_async_script("""
            const [path, token, method, body, done] = arguments;
            const headers = {"Content-Type": "application/json"};
            if (token) headers.Authorization = "Bearer " + token;
            fetch(path, {method, headers, body: body || undefined}).then((r) => done(r.status), () => done(0));
            """, path, token, method, body))


def start_web_node(b2bua_factory: B2buaFactory, workdir: Path, addresses: AddressAllocator,
                   entries: list[ListEntry], **config: Any) -> Node:
    return start_node(b2bua_factory, workdir, addresses.next(), entries, algorithm="round-robin",
                      failover={"failover_codes": ["5xx", "408"]}, **config)


def invites(*gateways: Gateway) -> list[int]:
    return [gw.count("INVITE") for gw in gateways]


# -- the tests -------------------------------------------------------------------------------------


def test_the_page_follows_probing_and_disable_stops_calls(
        browser: webdriver.Chrome, gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
        caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    dying, disabled, kept = (gateway_factory("answer", name=n) for n in ("gw-dying", "gw-disabled", "gw-kept"))
    node = start_web_node(b2bua_factory, workdir, addresses, [
        ListEntry(1, dying.uri, attrs="duid=carrier-a"), ListEntry(1, disabled.uri, attrs="duid=carrier-b"),
        ListEntry(1, kept.uri, attrs="duid=carrier-c")], dispatcher=PROBING)
    page = StatusPage(browser, node, workdir)
    page.open()

    # a wrong token: the page says so, the B2BUA answered 401 and logged it
    page.sign_in("not-the-token")
    wait_until(lambda: page.visible("login-error"), 10, what="the sign-in error")
    assert "refused (HTTP 401)" in page.text("login-error")
    node.process.wait_for_log("HTTP 401 Unauthorized: wrong token (GET /status/data)")

    page.sign_in(ADMIN_TOKEN)
    rows = page.wait_rows("three gateways up", lambda r: len(r) == 3 and all(v["state"] == "AP" for v in r.values()))
    assert {v["set"] for v in rows.values()} == {"1"}
    assert rows[dying.uri]["actions"] == ["disable", "drain"]
    assert rows[dying.uri]["cells"]["Latency"].endswith(" ms")  # keepalives answered: a round-trip time
    assert rows[kept.uri]["attrs"] == "duid=carrier-c"
    assert page.text("node-state") == "up"

    # calls spread over the three, and the counters on the page follow
    result = caller.run_calls(node.ip, node.port, n=6, rate=20, call_duration_ms=50)
    assert result.final_codes == [200] * 6, result.describe()
    assert invites(dying, disabled, kept) == [2, 2, 2]
    page.wait_rows("two answered calls each", lambda r: all(v["cells"]["Answered"] == "2" for v in r.values()))

    # the gateway stops answering (its sipp is gone): probing marks it down, the page shows it
    dying.stop(grace=0.2)
    rows = page.wait_rows("the stopped gateway down", lambda r: r[dying.uri]["state"] == "IP")
    assert rows[dying.uri]["actions"] == ["enable", "disable"] and rows[kept.uri]["state"] == "AP"

    # "Disable" on a gateway that answers: cancelled, nothing happens; confirmed, no new call goes there
    page.press(disabled.uri, "disable", confirm=False)
    time.sleep(2.5)  # a refresh later
    assert page.rows()[disabled.uri]["state"] == "AP" and "set_state" not in node.process.log_text()
    question = page.press(disabled.uri, "disable")
    assert question.startswith(f"Disable {disabled.uri} (set 1)?")
    page.wait_rows("the disabled gateway DX", lambda r: r[disabled.uri]["state"] == "DX")
    wait_until(lambda: "Ok. Dispatcher state updated." in page.text("message"), 10, what="the action's answer")
    assert "set_state d" in node.process.log_text()
    before = invites(disabled, kept)
    result = caller.run_calls(node.ip, node.port, n=4, rate=20, call_duration_ms=50)
    assert result.final_codes == [200] * 4, result.describe()
    assert invites(disabled, kept) == [before[0], before[1] + 4]
    rows = page.wait_rows("six answered calls on the kept gateway", lambda r: r[kept.uri]["cells"]["Answered"] == "6")
    assert rows[disabled.uri]["actions"] == ["enable"]
    page.screenshot("status-page")

    # "Enable" brings it back; a call goes there again
    page.press(disabled.uri, "enable")
    page.wait_rows("the gateway enabled", lambda r: r[disabled.uri]["state"] == "AP")
    result = caller.run_calls(node.ip, node.port, n=2, rate=20, call_duration_ms=50)
    assert result.final_codes == [200] * 2, result.describe()
    assert invites(disabled)[0] > before[0]


def test_a_read_token_reads_and_cannot_act(
        browser: webdriver.Chrome, gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
        workdir: Path, addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    node = start_web_node(b2bua_factory, workdir, addresses, [ListEntry(1, gw.uri, attrs=HOSTILE_ATTRS)])
    page = StatusPage(browser, node, workdir)
    page.open()
    page.sign_in(READ_TOKEN)
    rows = page.wait_rows("the gateway", lambda r: gw.uri in r)
    assert rows[gw.uri]["state"] == "AX" and rows[gw.uri]["actions"] == []
    assert "read-only" in page.text("updated")
    # operator text is text: shown as written, nothing of it ran or became an element
    assert rows[gw.uri]["attrs"] == HOSTILE_ATTRS
    injected = browser.execute_script(
        "return [window.pwned, document.querySelectorAll('#sets script, #sets img').length]")
    assert injected == [None, 0]
    # the page's own origin passes the Origin check; the read token still may not act
    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "dispatcher.set_state", "params": ["d", 1, gw.uri]})
    assert page.fetch_status("/rpc", READ_TOKEN, "POST", call) == 401
    assert page.fetch_status("/status/data", None) == 401
    assert page.fetch_status("/rpc", ADMIN_TOKEN, "POST", call) == 200
    log = node.process.log_text()
    assert "HTTP 401 Unauthorized: wrong token (POST /rpc)" in log
    assert "HTTP 401 Unauthorized: no token: send 'Authorization: Bearer <token>' (GET /status/data)" in log
    # signing out forgets the token: reloading the page asks for it again
    browser.find_element(By.ID, "logout").click()
    browser.refresh()
    wait_until(lambda: page.visible("login"), 10, what="the sign-in form after signing out")
    assert browser.execute_script("return sessionStorage.length") == 0


def test_the_page_fits_a_phone(
        browser: webdriver.Chrome, gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller,
        workdir: Path, addresses: AddressAllocator) -> None:
    gateways = [gateway_factory("answer") for _ in range(2)]
    node = start_web_node(b2bua_factory, workdir, addresses, [ListEntry(1, gw.uri) for gw in gateways]
                          + [ListEntry(2, gateways[0].uri, attrs="duid=carrier-a;weight=50")])
    assert caller.run_calls(node.ip, node.port, n=2, rate=20, call_duration_ms=50).final_codes == [200, 200]
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    page = StatusPage(browser, node, workdir)
    page.open()
    page.sign_in(ADMIN_TOKEN)
    page.wait_rows("both sets", lambda r: len(browser.find_elements(By.CSS_SELECTOR, "#sets section.set")) == 2)
    widths = browser.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth, document.body.scrollWidth]")
    assert widths[0] == 390 and max(widths[1:]) <= 390, f"horizontal scroll: {widths}"
    # every gateway's URI and buttons are inside the viewport
    overflow = browser.execute_script("""
        return Array.from(document.querySelectorAll("#sets .uri, #sets button"))
          .map((e) => e.getBoundingClientRect()).filter((r) => r.left < 0 || r.right > window.innerWidth).length;""")
    assert overflow == 0
    page.screenshot("status-page-phone")

    # the maintenance actions work at this size too: drain a gateway (of set 1 only), then the node, and back
    page.press(gateways[1].uri, "drain")
    page.wait_rows("the drained gateway", lambda r: r[gateways[1].uri]["state"] == "DX"
                   and r[gateways[1].uri]["actions"] == ["enable"])
    wait_until(lambda: page.text("message").endswith(": Ok. No calls in progress."), 10, what="the drain's answer")
    page.press_node("node-drain")
    wait_until(lambda: page.text("node-state") == "draining", 10, what="the node draining")
    assert node.health() == (503, {"status": "draining", "calls": 0, "max_calls": 200})
    page.press_node("node-undrain")
    wait_until(lambda: page.text("node-state") == "up", 10, what="the node up again")
    assert page.text("message") == "Undrain node: Ok. The node is up."
    page.press(gateways[1].uri, "enable")
    page.wait_rows("the gateway enabled", lambda r: r[gateways[1].uri]["state"] == "AX")


def test_the_data_stays_consistent_while_reloads_run(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    fillers = [ListEntry(2, f"sip:10.9.{i // 200}.{i % 200 + 1}:5060") for i in range(400)]
    lists = {"long": [ListEntry(1, gw.uri), *fillers], "short": [ListEntry(1, gw.uri), *fillers[:150]]}
    node = start_web_node(b2bua_factory, workdir, addresses, lists["long"])
    uris = {name: {e.uri for e in entries if e.setid == 2} for name, entries in lists.items()}
    reloads: list[str] = []

    def reload_back_and_forth() -> None:
        for name in ("short", "long") * 4:
            write_list_file(workdir, lists[name])
            node.process.rpc("dispatcher.reload", timeout=60)
            reloads.append(name)

    reloader = threading.Thread(target=reload_back_and_forth, name="reloader")
    calls = caller.start_calls(node.ip, node.port, n=20, rate=5, call_duration_ms=20)
    reloader.start()
    seen: set[str] = set()
    attempts = 0
    try:
        deadline = time.monotonic() + 60
        while (reloader.is_alive() or calls.returncode is None) and time.monotonic() < deadline:
            results = status_data(node)
            listed = {t["DEST"]["URI"] for r in results["dispatcher.list"]["RECORDS"] if r["SET"]["ID"] == 2
                      for t in r["SET"]["TARGETS"]}
            counted = {d["uri"] for s in results["dispatcher.stats"]["sets"] if s["setid"] == 2
                       for d in s["destinations"]}
            for what, got in (("dispatcher.list", listed), ("dispatcher.stats", counted)):
                match = [name for name, expected in uris.items() if got == expected]
                assert match, f"{what} in /status/data had {len(got)} destinations of set 2: neither list"
                seen.add(match[0])
            now = next(d["attempts"] for s in results["dispatcher.stats"]["sets"] for d in s["destinations"]
                       if d["uri"] == gw.uri)
            assert now >= attempts, f"attempts went back from {attempts} to {now}"
            attempts = now
    finally:
        reloader.join(90)
    assert calls.wait().final_codes == [200] * 20
    assert seen == {"long", "short"} and len(reloads) == 8


def status_data(node: Node) -> dict[str, Any]:
    """``/status/data``'s results by method (each must have succeeded)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=15)
    try:
        conn.request("GET", "/status/data", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    doc = json.loads(body)
    by_method = {doc["methods"][item["id"] - 1]: item for item in doc["results"]}
    for method, item in by_method.items():
        assert "result" in item, f"{method}: {item}"
    return {method: item["result"] for method, item in by_method.items()}

