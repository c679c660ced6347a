"""A real, headless Chromium driven by Selenium: Debian's ``chromium`` and ``chromedriver``.

Nothing is downloaded: the driver and the browser are the system's (``.ci/run`` installs
the Debian packages), and Selenium Manager stays off (``SE_OFFLINE=1``; it is not needed
when both paths are given). ``chromium()`` yields a :class:`Browser` with a fresh profile
and always quits it, chromedriver with it, and kills any Chromium process of that profile
that outlived the quit.

The browser's console is collected (``goog:loggingPrefs``): ``Browser.console_errors()``
lists the SEVERE entries a test has not excused, so it can assert that a page logged none.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webelement import WebElement

from .paths import REPO
from .procs import processes_touching, wait_until_gone

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
ARTIFACTS_ENV = "FLGATE_TEST_ARTIFACTS"
IGNORED = (re.compile(r"favicon\.ico"),)
"""Console entries that are never errors of the page (Chromium asks for a favicon)."""

T = TypeVar("T")


def artifacts_dir(name: str) -> Path:
    """``test-artifacts/NAME`` at the repository root (``$FLGATE_TEST_ARTIFACTS/NAME`` if
    set), created if missing."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "test-artifacts")
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class LogEntry:
    level: str
    message: str
    url: str
    """The page the browser showed when the entry was collected."""
    excused: str = ""
    """Why the test expected it (empty: it counts as an error of the page)."""


@dataclass
class Browser:
    driver: webdriver.Chrome
    artifacts: Path
    label: str
    """Prefixes the names of screenshots taken on a failed wait."""
    entries: list[LogEntry] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    # -- navigation and scripts -------------------------------------------------------

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def async_js(self, script: str, *args: Any) -> Any:
        """``execute_async_script``: ``script`` calls ``arguments[arguments.length - 1]``."""
        return self.driver.execute_async_script(script, *args)

    def find(self, css: str) -> WebElement | None:
        """The first element matching ``css``, or None."""
        found = self.driver.find_elements("css selector", css)
        return found[0] if found else None

    def find_all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements("css selector", css))

    def element(self, css: str, timeout: float = 30) -> WebElement:
        """The first element matching ``css``, once there is one (``timeout`` s at most)."""
        found = self.wait_until(lambda: self.find(css), timeout, f"{css} is on the page")
        assert found is not None
        return found

    def text(self, css: str) -> str | None:
        """The rendered text of the first element matching ``css`` (None: no such element)."""
        element = self.find(css)
        return None if element is None else str(element.text)

    def shown(self, css: str) -> bool:
        element = self.find(css)
        return element is not None and bool(element.is_displayed())

    # -- waiting --------------------------------------------------------------------

    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout: float,
        what: str,
        *,
        interval: float = 0.2,
        describe: Callable[[], object] | None = None,
    ) -> T:
        """``predicate()``'s first truthy value, polled every ``interval`` s.

        A WebDriver error in ``predicate`` (a stale or missing element while the page
        redraws) counts as "not yet". After ``timeout`` s: a screenshot of the page and an
        AssertionError naming ``what``, the page's URL, the last value or error, and
        ``describe()`` (anything else worth seeing).
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
                last = value
            except WebDriverException as error:
                last = f"{type(error).__name__}: {error.msg or error}"
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        slug = re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-")[:60]
        shot = self.screenshot(f"{self.label}-timeout-{slug}.png")
        extra = ""
        if describe is not None:
            with contextlib.suppress(Exception):
                extra = f"; {describe()}"
        raise AssertionError(
            f"{self.label}: not within {timeout:g} s: {what} (page {self.driver.current_url}, "
            f"last seen {last!r}{extra}; screenshot {shot})"
        )

    # -- artifacts ------------------------------------------------------------------

    def screenshot(self, name: str) -> Path:
        """A PNG of the window into the artifacts directory; prints its path."""
        path = self.artifacts / name
        self.driver.save_screenshot(str(path))
        self.screenshots.append(path)
        print(f"screenshot: {path}")
        return path

    # -- the browser's console --------------------------------------------------------

    def collect_logs(self, excused: str = "") -> list[LogEntry]:
        """Move the browser's new console entries into ``entries`` (marked ``excused``)."""
        url = self.driver.current_url
        fresh = [
            LogEntry(
                level=str(raw.get("level", "")),
                message=str(raw.get("message", "")),
                url=url,
                excused=excused,
            )
            for raw in self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        ]
        self.entries += fresh
        return fresh

    @contextlib.contextmanager
    def excusing_errors(self, why: str) -> Iterator[None]:
        """Console entries logged while the block runs are expected (``why``): kept, but
        not counted by ``console_errors``."""
        self.collect_logs()
        try:
            yield
        finally:
            self.collect_logs(excused=why)

    def console_errors(self) -> list[str]:
        """The SEVERE console entries so far that no block excused (favicon misses aside)."""
        self.collect_logs()
        return [
            f"{e.url}: {e.message}"
            for e in self.entries
            if e.level == "SEVERE"
            and not e.excused
            and not any(p.search(e.message) for p in IGNORED)
        ]


@contextlib.contextmanager
def chromium(profile_root: Path, *, label: str, artifacts: Path) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile under ``profile_root``; quit afterwards
    (chromedriver too), and any process of its profile left over is killed."""
    profile = profile_root / f"chromium-{label}"
    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=CHROMEDRIVER,
        log_output=str(profile_root / f"chromedriver-{label}.log"),
    )
    saved = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "1"  # never let Selenium Manager fetch a driver or a browser
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_script_timeout(30)
        yield Browser(driver=driver, artifacts=artifacts, label=label)
    finally:
        try:
            if driver is not None:
                driver.quit()
            else:
                service.stop()
        finally:
            if saved is None:
                os.environ.pop("SE_OFFLINE", None)
            else:
                os.environ["SE_OFFLINE"] = saved
            _kill_left_over(profile)


def _kill_left_over(profile: Path) -> None:
    """SIGKILL, by pid, the Chromium processes of ``profile`` that outlived the quit."""
    for line in wait_until_gone(lambda: processes_touching(profile), timeout=5):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    left = wait_until_gone(lambda: processes_touching(profile))
    assert not left, f"Chromium processes outlived the test: {left}"
