"""The Directus app in a real browser: Playwright for Python driving Debian's Chromium
(`/usr/bin/chromium`, installed by scripts/ensure-chromium.sh; Playwright's own browser build
cannot be fetched here). One browser per session; each test gets a fresh page, logged in as
the Directus admin, and a folder of screenshots that is printed when the test fails
(docs/testing.md, "Browser tests")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from devstack.directus import ADMIN_EMAIL, ADMIN_PASSWORD, DirectusServer

# The end-to-end stack (bridge under gunicorn, worker, RideNDine sandbox) that the "request
# refund" button calls: the same fixture as tests/system/test_end_to_end.py.
from tests.system.test_end_to_end import stack  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test, so that its page fixture knows it failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run scripts/ensure-chromium.sh (make pytest does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Shots:
    """Numbered screenshots of one test, in its own folder."""

    def __init__(self, folder: Path, page: Page) -> None:
        self.folder = folder
        self.page = page
        self.count = 0

    def take(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="session")
def screenshots_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser-screenshots")


@pytest.fixture
def admin_page(
    browser: Browser,
    cooco_directus: DirectusServer,
    screenshots_root: Path,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Page, Shots]]:
    """A page logged in to the Directus app as the admin, and its screenshots."""
    folder = screenshots_root / request.node.name
    folder.mkdir()
    context = browser.new_context(
        viewport={"width": 1440, "height": 1000}, locale="en-US", timezone_id="UTC"
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    shots = Shots(folder, page)
    try:
        page.goto(f"{cooco_directus.url}/admin/login")
        page.locator("input[type=email]").fill(ADMIN_EMAIL)
        page.locator("input[type=password]").fill(ADMIN_PASSWORD)
        page.locator("button[type=submit]").click()
        page.wait_for_url("**/admin/content**")
    except Exception:
        _failed(shots, request)
        context.close()
        raise
    yield page, shots
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        _failed(shots, request)
    context.close()


def _failed(shots: Shots, request: pytest.FixtureRequest) -> None:
    try:
        shots.take("failure")
    finally:
        print(f"browser screenshots of {request.node.name}: {shots.folder}")
