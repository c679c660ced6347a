"""``flgate console`` end to end: the real server process, driven by a real headless Chromium.

One federation (a relay, site-1 and site-2; a project admin and a member) serves the
module, and two consoles run as ``flgate console`` processes beside it, one with each
admin's kit. In order: the consoles refuse requests without their token (and POSTs
without the token header), refuse to listen beyond loopback unless told by name; the
project admin's browser shows the federation, submits ``jobs/tracking-numpy`` from the
Submit page and follows it live (progress, one chart point per round, the values the
relay keeps, a site's log, the Jobs page's filter); the member's browser is offered
neither abort nor download of the project admin's job, and a forced abort is refused
with the relay's reason while the project admin's browser aborts it and downloads its
archive; with the relay stopped the page says so, and recovers by itself when it is back.
No page may log an error to the browser's console.

Screenshots go to ``test-artifacts/console/`` (``$FLGATE_TEST_ARTIFACTS/console``).
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select

from gateway.control.admin import AdminClient
from gateway.control.site_agent import SLOT_FILE
from gateway.core.identity import AdminRole
from tests.support.browser import Browser, artifacts_dir, chromium
from tests.support.federation import RunningFederation, run_flgate, until_state, wait_online
from tests.support.paths import QUICKSTART, REPO

pytestmark = pytest.mark.e2e

T = TypeVar("T")

SITES = ["site-1", "site-2"]
PROJECT_ADMIN = "admin@test"
MEMBER = "member@test"
TRACKING = REPO / "jobs" / "tracking-numpy"
ROUNDS = 3
URL_LINE = re.compile(r"console on (http://127\.0\.0\.1:(\d+))/\?token=(\S+)")
COOKIE = "flgate_console"
TOKEN_HEADER = "X-Flgate-Token"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MEMBER_REFUSAL = "may abort only the jobs it submitted"


@dataclass
class Console:
    """One ``flgate console`` process and how to reach it."""

    admin: str
    process: subprocess.Popen[bytes]
    out: Path
    base: str
    """``http://127.0.0.1:PORT``"""
    port: int
    token: str

    @property
    def login_url(self) -> str:
        return f"{self.base}/?token={self.token}"


# -- the module's federation and consoles -------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    fed = RunningFederation.create(
        tmp_path_factory.mktemp("fed"),
        SITES,
        admins={PROJECT_ADMIN: AdminRole.PROJECT_ADMIN, MEMBER: AdminRole.MEMBER},
    )
    try:
        fed.start_relay()
        for site in SITES:
            fed.start_site(site)
        _with_admin(fed, lambda admin: wait_online(admin, len(SITES)))
        yield fed
    finally:
        fed.close()


def _start_console(fed: RunningFederation, admin: str) -> Console:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLGATE_")}
    out = fed.root / f"console-{admin}.out"
    argv = [sys.executable, "-m", "gateway.cli", "console", "--kit", str(fed.kit(admin))]
    argv += ["--relay", fed.relay_url, "--listen", "127.0.0.1:0"]
    with out.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = URL_LINE.search(out.read_text(errors="replace"))
        if match:
            base, port, token = match.groups()
            return Console(admin, process, out, base, int(port), token)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    _stop_console(process)
    raise AssertionError(f"flgate console printed no URL line: {out.read_text()[-3000:]}")


def _stop_console(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM to the console's process group; its exit code (None: killed after 30 s)."""
    if process.poll() is not None:
        return process.returncode
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        return None


@pytest.fixture(scope="module")
def consoles(federation: RunningFederation) -> Iterator[dict[str, Console]]:
    """A console per admin (their kits), stopped by SIGTERM afterwards: each must exit 0."""
    started: dict[str, Console] = {}
    try:
        for admin in (PROJECT_ADMIN, MEMBER):
            started[admin] = _start_console(federation, admin)
        yield started
    finally:
        codes = {name: _stop_console(c.process) for name, c in started.items()}
    for name, code in codes.items():
        tail = started[name].out.read_text(errors="replace")[-3000:]
        assert code == 0, f"{name}'s console exited {code} on SIGTERM: {tail}"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """The screenshots' directory, emptied of an earlier run's."""
    path = artifacts_dir("console")
    for old in path.glob("*.png"):
        old.unlink()
    return path


# -- helpers --------------------------------------------------------------------------------


def _with_admin(fed: RunningFederation, call: Callable[[AdminClient], Awaitable[T]]) -> T:
    """``call`` with a fresh project-admin client of the relay (closed afterwards)."""

    async def run() -> T:
        admin = fed.admin()
        try:
            return await call(admin)
        finally:
            await admin.aclose()

    return asyncio.run(run())


async def _full_log(admin: AdminClient, job_id: str, source: str) -> str:
    """A log source of ``job_id`` as the relay keeps it, from its start to its end."""
    data, offset = b"", 0
    while True:
        answer = await admin.logs(job_id, source=source, offset=offset)
        data += answer.data
        if answer.next_offset == offset or not answer.data:
            return data.decode(errors="replace")
        offset = answer.next_offset


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _http(
    console: Console,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """One request to ``console``, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def _login(browser: Browser, console: Console, route: str = "#/federation") -> None:
    """Open the console with its token, then ``route``; wait until it knows who we are."""
    browser.get(console.login_url)

    def named() -> str:
        text = browser.text("#whoami") or ""
        return text if console.admin in text else ""

    whoami = browser.wait_until(named, 30, "#whoami names the admin")
    role = "member" if console.admin == MEMBER else "project[ _]admin"
    shown_role = whoami.replace(console.admin, "")
    assert re.search(role, shown_role, re.IGNORECASE), f"#whoami shows no role: {whoami!r}"
    assert "token=" not in browser.driver.current_url, "the token stayed in the address bar"
    browser.get(f"{console.base}/{route}")


def _assert_no_console_errors(browser: Browser) -> None:
    errors = browser.console_errors()
    assert not errors, f"{browser.label}'s pages logged errors: {errors}"


def _click(browser: Browser, css: str) -> WebElement:
    element = browser.element(css)
    element.click()
    return element


def _fill(element: WebElement, text: str) -> None:
    element.clear()
    element.send_keys(text)


def _state(browser: Browser) -> str:
    return (browser.text("#job-state") or "").strip().lower()


JOB_PAGE_PROBE = """
const out = {state: null, progress: null, max: null, charts: {}};
const state = document.querySelector('#job-state');
if (state) out.state = state.textContent.trim().toLowerCase();
const bar = document.querySelector('progress#job-progress');
if (bar && bar.hasAttribute('value')) { out.progress = bar.value; out.max = bar.max; }
for (const canvas of document.querySelectorAll('canvas[data-chart^="server:"]')) {
  const chart = window.Chart && Chart.getChart(canvas);
  const first = chart && chart.data.datasets[0];
  out.charts[canvas.dataset.chart] = first ? first.data.length : 0;
}
return out;
"""

CHART_DATA = """
const chart = Chart.getChart(arguments[0]);
if (!chart) return null;
const labels = chart.data.labels || [];
return chart.data.datasets.map(ds => ({
  label: String(ds.label),
  points: ds.data.map((p, i) => (p !== null && typeof p === 'object')
    ? [Number(p.x), Number(p.y)] : [Number(labels[i]), Number(p)]),
}));
"""


def _charts(browser: Browser, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every chart whose ``data-chart`` starts with ``prefix``: its datasets as
    ``{"label", "points": [[round, value], ...]}``."""
    found = {}
    for canvas in browser.find_all(f'canvas[data-chart^="{prefix}"]'):
        tag = str(canvas.get_attribute("data-chart"))[len(prefix) :]
        found[tag] = browser.js(CHART_DATA, canvas)
    return found


def _same_points(shown: list[list[float]], kept: list[list[float]]) -> bool:
    """Whether a chart's ``[round, value]`` points are the relay's (values to 1e-12)."""
    return [x for x, _ in shown] == [x for x, _ in kept] and [y for _, y in shown] == pytest.approx(
        [y for _, y in kept], rel=1e-12
    )


def _in_order(seen: list[int], wanted: list[int]) -> bool:
    """Whether ``wanted`` occurs in ``seen`` in this order (not necessarily adjacent)."""
    it = iter(seen)
    return all(any(x == w for x in it) for w in wanted)


def _accept_confirm(browser: Browser) -> None:
    """Accept a confirmation dialog if the page opened one (the contract leaves it free)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            browser.driver.switch_to.alert.accept()
            return
        except NoAlertPresentException:
            time.sleep(0.1)


def _select_filter(browser: Browser, value: str) -> None:
    select = Select(browser.element("select#job-filter"))
    try:
        select.select_by_value(value)
    except Exception:
        select.select_by_visible_text(value)


def _site_shown(browser: Browser, site: str, online: str, transport: str = "") -> bool:
    row = f'tr[data-site="{site}"]'
    return browser.text(f"{row} .online") == online and (
        not transport or browser.text(f"{row} .transport") == transport
    )


def _row_hidden(browser: Browser, job_id: str) -> bool:
    row = browser.find(f'tr[data-job="{job_id}"]')
    return row is None or not row.is_displayed()


# -- the tests --------------------------------------------------------------------------------


def test_the_browser_helper_sees_console_errors(tmp_path: Path, artifacts: Path) -> None:
    """The check every browser test ends with can fail: an error a page logs is seen."""
    with chromium(tmp_path, label="probe", artifacts=artifacts) as browser:
        browser.get("data:text/html,<p id=p>ok</p><script>console.error('probe-error')</script>")
        assert browser.text("#p") == "ok"
        errors = browser.console_errors()
        assert len(errors) == 1 and "probe-error" in errors[0], errors
        with browser.excusing_errors("expected"):
            browser.js("console.error('excused-error')")
        assert len(browser.console_errors()) == 1


def test_only_the_token_opens_the_console(consoles: dict[str, Console]) -> None:
    console = consoles[PROJECT_ADMIN]
    # Without the token, and with a wrong one: refused.
    for path in ("/", "/api/jobs", "/api/me", "/static/console.js"):
        assert _http(console, path).status == 403, path
    wrong = console.token[:-1] + ("A" if console.token[-1] != "A" else "B")
    assert _http(console, f"/?token={wrong}").status == 403
    assert _http(console, "/api/jobs", headers={"Cookie": f"{COOKIE}={wrong}"}).status == 403
    assert _http(console, "/api/jobs", headers={TOKEN_HEADER: wrong}).status == 403

    # With it in the URL: the cookie is set (HttpOnly, SameSite=Strict) and the token leaves
    # the address.
    answer = _http(console, f"/?token={console.token}")
    assert answer.status in (200, 303), answer
    cookies = answer.headers.get_all("Set-Cookie") or []
    ours = [c for c in cookies if c.startswith(f"{COOKIE}={console.token}")]
    assert ours, cookies
    attributes = [a.strip().lower() for a in ours[0].split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes, ours[0]
    assert "path=/" in attributes, ours[0]
    if answer.status == 303:
        location = answer.headers["Location"]
        assert "token" not in urllib.parse.urlsplit(location).query, location

    cookie = {"Cookie": f"{COOKIE}={console.token}"}
    page = _http(console, "/", headers=cookie)
    assert page.status == 200
    assert f'name="flgate-token" content="{console.token}"' in page.body.decode(), page.body[:500]
    jobs = _http(console, "/api/jobs", headers=cookie)
    assert jobs.status == 200 and "jobs" in json.loads(jobs.body), jobs
    assert _http(console, "/api/me", headers={TOKEN_HEADER: console.token}).status == 200

    # A POST needs the header: the cookie alone (any page the admin opens could send it) is
    # refused; with the header the same request reaches the relay (no such job).
    refused = _http(console, "/api/jobs/x/abort", method="POST", headers=cookie)
    assert refused.status == 403, refused
    reached = _http(
        console,
        "/api/jobs/x/abort",
        method="POST",
        headers={**cookie, TOKEN_HEADER: console.token},
    )
    assert reached.status != 403 and "error" in json.loads(reached.body), reached


def test_the_console_listens_beyond_loopback_only_when_told(federation: RunningFederation) -> None:
    helped = run_flgate("console", "--help", timeout=60)
    assert helped.returncode == 0, helped.stderr
    flags = re.findall(r"--allow-network[\w-]*", helped.stdout)
    assert flags, f"flgate console --help names no --allow-network... flag: {helped.stdout}"
    flag = max(flags, key=len)  # the usage line's; help text may wrap it at a hyphen

    refused = run_flgate(
        "console",
        "--kit",
        str(federation.kit(PROJECT_ADMIN)),
        "--relay",
        federation.relay_url,
        "--listen",
        "0.0.0.0:0",
        timeout=60,
    )
    assert refused.returncode == 2, (refused.returncode, refused.stdout, refused.stderr)
    assert flag in refused.stderr, refused.stderr
    assert "0.0.0.0" in refused.stderr and "token" in refused.stderr, refused.stderr


def test_the_project_admin_submits_and_follows_a_job(
    federation: RunningFederation, consoles: dict[str, Console], tmp_path: Path, artifacts: Path
) -> None:
    console = consoles[PROJECT_ADMIN]
    with chromium(tmp_path, label="admin", artifacts=artifacts) as browser:
        # Federation: both sites online over grpcs, the relay's listener.
        _login(browser, console)
        for site in SITES:
            browser.wait_until(
                functools.partial(_site_shown, browser, site, "online", "grpcs"),
                60,
                f"{site} shows online over grpcs",
                describe=functools.partial(browser.text, f'tr[data-site="{site}"]'),
            )
        browser.wait_until(
            lambda: any(
                li.text.startswith("grpcs://") and li.text.endswith(f":{federation.relay_port}")
                for li in browser.find_all("#relay-listeners li")
            ),
            30,
            f"the relay's listener (port {federation.relay_port}) is listed",
            describe=lambda: browser.text("#relay-listeners"),
        )
        browser.screenshot("federation.png")

        # Submit: the tracking job on both sites, 3 rounds.
        _click(browser, "a#nav-submit")
        _fill(browser.element("input#submit-path"), str(TRACKING.resolve()))
        _fill(browser.element("input#submit-sites"), ",".join(SITES))
        _fill(browser.element("input#submit-run-config"), f"num-server-rounds={ROUNDS}")
        _fill(browser.element("input#submit-name"), "console-run")
        browser.screenshot("submit.png")
        _click(browser, "button#submit-button")
        job_id = browser.wait_until(
            lambda: (
                (m := re.search(r"#/job/([\w.-]+)$", browser.driver.current_url)) and m.group(1)
            ),
            120,
            "the page goes to #/job/ID after the submission",
            describe=lambda: browser.text("#submit-error"),
        )
        assert isinstance(job_id, str)

        # Follow it live until it has finished.
        progress: list[int] = []
        counts: dict[str, list[int]] = {}
        states: list[str] = []
        midrun = False

        def finished() -> bool:
            nonlocal midrun
            seen = browser.js(JOB_PAGE_PROBE)
            state = seen["state"] or ""
            if not states or states[-1] != state:
                states.append(state)
            if seen["progress"] is not None and (not progress or progress[-1] != seen["progress"]):
                progress.append(int(seen["progress"]))
            for tag, count in seen["charts"].items():
                series = counts.setdefault(tag, [])
                if not series or series[-1] != count:
                    series.append(int(count))
            if not midrun and "running" in state and progress and progress[-1] >= 1:
                browser.screenshot("job-running.png")
                midrun = True
            return "finished" in state or "failed" in state or "aborted" in state

        browser.wait_until(
            finished,
            180,
            f"job {job_id} is shown as ended",
            describe=lambda: f"states {states}, progress {progress}, chart counts {counts}",
        )
        assert "finished" in _state(browser), (states, browser.text("#job-reason"))
        info = _with_admin(federation, lambda admin: admin.get(job_id))
        assert info.state == "finished", info
        assert states[-1].startswith("finished"), states

        print(f"job {job_id}: states {states}, progress {progress}, chart points {counts}")
        # Progress: every round, in order, never backwards.
        rounds = [p for p in progress if p > 0]
        assert rounds == sorted(rounds), f"progress went backwards: {progress}"
        assert _in_order(rounds, list(range(1, ROUNDS + 1))), f"rounds seen: {progress}"
        assert browser.text("#job-progress-text") == f"round {ROUNDS} of {ROUNDS}"
        assert f"num-server-rounds={ROUNDS}" in (browser.text("#run-config") or "")
        assert browser.text("#job-submitted-by") == PROJECT_ADMIN
        assert all(site in (browser.text("#job-sites") or "") for site in SITES)

        # Charts: one point more per round, and finally what the relay keeps.
        relay = _with_admin(federation, lambda admin: admin.metrics(job_id))
        kept: dict[str, list[list[float]]] = {}
        for point in relay.points:
            kept.setdefault(point.tag, []).append([float(point.step), point.value])
        server_tags = sorted(t for t in kept if t.partition("/")[0] not in SITES)
        client_tags = sorted({t.partition("/")[2] for t in kept if t.partition("/")[0] in SITES})
        assert server_tags and client_tags, sorted(kept)
        assert sorted(counts) == [f"server:{t}" for t in server_tags], counts
        for tag, seen_counts in counts.items():
            grew = [c for c in seen_counts if c > 0]
            assert grew == sorted(grew), f"{tag} lost points: {seen_counts}"
            assert _in_order(grew, list(range(1, ROUNDS + 1))), f"{tag} counts: {seen_counts}"

        # The final charts may redraw once more after the state changed: wait for the last.
        def server_charts_match() -> bool:
            charts = _charts(browser, "server:")
            return sorted(charts) == server_tags and all(
                len(charts[t]) >= 1 and _same_points(charts[t][0]["points"], kept[t])
                for t in server_tags
            )

        browser.wait_until(server_charts_match, 15, "the server charts show the relay's values")

        def site_charts_shown() -> dict[str, list[dict[str, Any]]]:
            found = _charts(browser, "sites:")
            return found if sorted(found) == client_tags else {}

        site_charts = browser.wait_until(
            site_charts_shown,
            15,
            "a chart per client-side tag",
            describe=lambda: sorted(_charts(browser, "sites:")),
        )
        for tag, datasets in site_charts.items():
            assert sorted(d["label"] for d in datasets) == SITES, (tag, datasets)
            for dataset in datasets:
                wanted = kept[f"{dataset['label']}/{tag}"]
                assert _same_points(dataset["points"], wanted), (tag, dataset, wanted)
        browser.screenshot("job.png")

        # A site's log: the page shows what the relay keeps of it; the search filters lines.
        # (Flower colours its levels; the page shows the text without the escape codes.)
        # The relay marks the job finished before site-1 has stopped its SuperNode and shipped
        # the log's last lines ("SuperExec terminated gracefully."); the agent removes the job's
        # slot file only after that last shipment, so the relay's copy is complete once it is gone.
        slot = federation.root / "site-1" / "jobs" / job_id / SLOT_FILE
        assert slot.parent.is_dir(), f"site-1 has no directory for the job: {slot.parent}"
        browser.wait_until(lambda: not slot.exists(), 60, "site-1 stopped the job, its log shipped")
        raw = _with_admin(federation, lambda admin: _full_log(admin, job_id, "site-1"))
        real = ANSI.sub("", raw)
        real_lines = [line for line in real.splitlines() if line.strip()]
        assert real_lines, "the relay keeps no log of site-1 for the job"
        _click(browser, 'button[data-log-source="site-1"]')

        def log_shown() -> str:
            text = str(browser.js("return document.querySelector('pre#log-text').innerText"))
            return text if real_lines[-1].strip() in text else ""

        shown = browser.wait_until(
            log_shown,
            30,
            "pre#log-text shows site-1's log to its last line",
            describe=lambda: (
                f"page ends {(browser.text('pre#log-text') or '')[-400:]!r}; "
                f"the relay's ends {real[-400:]!r} ({len(real)} chars)"
            ),
        )
        for line in shown.splitlines():
            assert not line.strip() or line.strip() in real, f"not in site-1's log: {line!r}"
        word = _a_word_of_some_lines(real_lines)
        browser.driver.find_element("css selector", "input#log-search").send_keys(word.upper())

        def filtered() -> list[str]:
            text = str(browser.js("return document.querySelector('pre#log-text').innerText"))
            lines = [line for line in text.splitlines() if line.strip()]
            return lines if 0 < len(lines) < len(real_lines) else []

        lines = browser.wait_until(filtered, 10, f"the search for {word!r} filters the lines")
        for line in lines:
            assert word.lower() in line.lower(), f"{line!r} does not contain {word!r}"
        matching = [line for line in real_lines if word.lower() in line.lower()]
        assert len(lines) == len(matching), (word, lines, matching)
        browser.js("arguments[0].scrollIntoView()", browser.element("pre#log-text"))
        browser.screenshot("job-logs.png")
        browser.driver.find_element("css selector", "input#log-search").send_keys(
            Keys.CONTROL, "a", Keys.DELETE
        )

        # Jobs: the job is listed as finished; the filter keeps and hides it.
        _click(browser, "a#nav-jobs")
        row = f'tr[data-job="{job_id}"]'
        browser.wait_until(
            lambda: "finished" in (browser.text(f"{row} .state") or ""), 30, "finished row"
        )
        bar = browser.element(f"{row} .progress progress")
        assert (bar.get_attribute("value"), bar.get_attribute("max")) == (str(ROUNDS), str(ROUNDS))
        assert f"round {ROUNDS} of {ROUNDS}" in (browser.text(f"{row} .progress") or "")
        assert browser.text(f"{row} .submitted-by") == PROJECT_ADMIN
        _select_filter(browser, "finished")
        browser.wait_until(lambda: not _row_hidden(browser, job_id), 10, "filter finished keeps")
        browser.screenshot("jobs.png")
        _select_filter(browser, "failed")
        browser.wait_until(lambda: _row_hidden(browser, job_id), 10, "filter failed hides it")
        _select_filter(browser, "all")
        _assert_no_console_errors(browser)


def _a_word_of_some_lines(lines: list[str]) -> str:
    """A word (4+ letters) that some of ``lines`` contain and some do not."""
    counted: dict[str, int] = {}
    for line in lines:
        for word in {w.lower() for w in re.findall(r"[A-Za-z]{4,}", line)}:
            counted[word] = counted.get(word, 0) + 1
    candidates = [w for w, n in counted.items() if 2 <= n <= len(lines) // 2]
    assert candidates, f"no word that only some lines contain: {lines[:20]}"
    return min(candidates, key=lambda w: (abs(counted[w] - len(lines) / 4), w))


def test_a_member_may_not_abort_the_project_admins_job(
    federation: RunningFederation, consoles: dict[str, Console], tmp_path: Path, artifacts: Path
) -> None:
    job = _with_admin(
        federation,
        lambda admin: admin.submit(
            QUICKSTART, sites=SITES, name="long-run", run_config="num-server-rounds=200"
        ),
    )
    job_id = job.job_id
    try:
        with chromium(tmp_path, label="member", artifacts=artifacts) as browser:
            _login(browser, consoles[MEMBER], f"#/job/{job_id}")
            browser.wait_until(
                lambda: "running" in _state(browser), 120, "the member sees the job running"
            )
            assert browser.find("#abort-button") is None
            assert browser.find("#download-button") is None
            member = consoles[MEMBER]
            refused = _http(
                member,
                f"/api/jobs/{job_id}/download",
                headers={"Cookie": f"{COOKIE}={member.token}"},
            )
            assert refused.status == 403, refused
            assert "may download only the jobs it submitted" in json.loads(refused.body)["error"]
            with browser.excusing_errors("the forced abort is refused on purpose"):
                forced = browser.async_js(
                    """
                    const done = arguments[arguments.length - 1];
                    window.flgateConsole.forcePost(arguments[0]).then(
                      r => done({status: r.status, body: r.body}),
                      e => done({thrown: String(e)}));
                    """,
                    f"/api/jobs/{job_id}/abort",
                )
            body = forced.get("body")
            if isinstance(body, str):
                body = json.loads(body)
            assert forced.get("status") == 403, forced
            assert MEMBER_REFUSAL in body["error"], forced
            info = _with_admin(federation, lambda admin: admin.get(job_id))
            assert info.state == "running", info
            browser.screenshot("member-job.png")
            _assert_no_console_errors(browser)

        with chromium(tmp_path, label="admin", artifacts=artifacts) as browser:
            console = consoles[PROJECT_ADMIN]
            _login(browser, console, f"#/job/{job_id}")
            download = browser.element("a#download-button")
            href = str(download.get_attribute("href"))
            _click(browser, "button#abort-button")
            _accept_confirm(browser)
            browser.wait_until(
                lambda: "aborted" in _state(browser),
                90,
                "the page shows the job aborted",
                describe=lambda: browser.text("#action-error"),
            )
            info = _with_admin(federation, lambda admin: until_state(admin, job_id, timeout=60))
            assert info.state == "aborted", info
            assert browser.find("#abort-button") is None, "abort is still offered once it ended"

            target = urllib.parse.urlsplit(href)
            assert target.netloc == f"127.0.0.1:{console.port}", href
            archive = _http(console, target.path, headers={"Cookie": f"{COOKIE}={console.token}"})
            assert archive.status == 200, archive.body[:300]
            assert archive.body.startswith(b"\x1f\x8b"), archive.body[:100]
            _assert_no_console_errors(browser)
    finally:
        _with_admin(federation, lambda admin: _abort_if_running(admin, job_id))


async def _abort_if_running(admin: AdminClient, job_id: str) -> None:
    if (await admin.get(job_id)).state not in ("finished", "failed", "aborted"):
        await admin.abort(job_id)
        await until_state(admin, job_id, timeout=60)


def test_the_page_says_when_the_relay_is_unreachable_and_recovers(
    federation: RunningFederation, consoles: dict[str, Console], tmp_path: Path, artifacts: Path
) -> None:
    with chromium(tmp_path, label="admin-relay", artifacts=artifacts) as browser:
        _login(browser, consoles[PROJECT_ADMIN])
        browser.wait_until(
            functools.partial(_site_shown, browser, "site-1", "online"), 60, "site-1 online"
        )
        assert not browser.shown("#relay-banner")
        _assert_no_console_errors(browser)

        with browser.excusing_errors("the relay is down"):
            federation.stop(federation.relay)
            browser.wait_until(
                lambda: (
                    browser.shown("#relay-banner")
                    and "relay unreachable" in (browser.text("#relay-banner") or "")
                ),
                15,
                "#relay-banner says the relay is unreachable",
            )
            browser.screenshot("relay-down.png")
            federation.start_relay(port=federation.relay_port)
            browser.wait_until(
                lambda: not browser.shown("#relay-banner"), 30, "the banner hides by itself"
            )
        # The rows must be drawn again from the restarted relay's answers, not left as they
        # were: blank their status, and wait until the page writes it again.
        browser.js(
            "document.querySelectorAll('table#sites .online').forEach(c => c.textContent = '?')"
        )
        for site in SITES:
            browser.wait_until(
                functools.partial(_site_shown, browser, site, "online"),
                60,
                f"{site} is shown online again",
            )
        browser.screenshot("relay-back.png")
        _assert_no_console_errors(browser)
