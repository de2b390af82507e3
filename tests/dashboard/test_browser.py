"""The dashboard end to end in headless Chromium: `codeyard up` (which starts the dashboard),
scripted workers and `codeyard run --approve-plan`, all real processes; a person signs in with
the token, finds the run, approves its plan with the button, and watches the graph turn green
without reloading. The screenshot is kept as tests/artifacts/dashboard.png. And the run page
in Chromium against a dashboard served in the test, which refuses the page's first stream."""

from __future__ import annotations

import asyncio
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from codeyard.bus import Bus
from codeyard.coordinator.service import Coordinator
from codeyard.dashboard.server import Dashboard, Unavailable, serving
from codeyard.dashboard.service import sign_in_url
from codeyard.report.graph_svg import STATE_COLOURS
from codeyard.schemas import Approve, TaskSpec, TaskState
from tests.cli.test_run import codeyard_up, repo
from tests.coordinator.harness import ask
from tests.coordinator.test_control_api import coordinator
from tests.dashboard.test_server import TOKEN, submit_waiting_plan

__all__ = ["codeyard_up", "coordinator", "repo"]  # fixtures, shared with other tests

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard.png"
MERGED = STATE_COLOURS[TaskState.MERGED]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (CHROMIUM.exists() or shutil.which("chromium")) or not CHROMEDRIVER.exists():
    pytest.skip(
        "headless Chromium needs Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver; scripts/install.sh does it as root)",
        allow_module_level=True,
    )

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@contextmanager
def chromium() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # --no-sandbox: Chromium's own sandbox cannot start as root in a container
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()  # the browser and chromedriver with it


def answers(url: str, token: str) -> str:
    """The page at `url` (bearer token), or "" while the dashboard is not there yet."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


async def wait_for_page(url: str, token: str, containing: str, timeout: float = 60) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while containing not in (page := await asyncio.to_thread(answers, url, token)):
        assert loop.time() < deadline, f"{url} never showed {containing!r}: {page[-500:]}"
        await asyncio.sleep(0.5)
    return page


def approve_in_the_browser(base: str, token: str, run_id: str, tasks: int) -> None:
    with chromium() as browser:
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        # the printed link: its script posts the token in its fragment, traded for a cookie
        browser.get(sign_in_url(base, token))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#runs"))
        assert "token" not in browser.current_url
        run_link = browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{run_id}"] a')
        run_link.click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#graph g.node"))
        nodes = browser.find_elements(By.CSS_SELECTOR, "#graph g.node")
        assert len(nodes) == tasks
        assert {node.get_attribute("data-state") for node in nodes} == {"planned"}
        wait.until(lambda b: b.find_element(By.ID, "live").text == "live")
        graph_tab = browser.current_window_handle

        browser.switch_to.new_window("tab")  # the graph stays open in its own tab
        browser.get(f"{base}/approvals")
        row = browser.find_element(By.CSS_SELECTOR, "#approvals tr.approval")
        assert "plan" in row.text
        row.find_element(By.CSS_SELECTOR, "button.approve").click()
        wait.until(lambda b: b.find_elements(By.ID, "none"))  # nothing waits any more

        browser.switch_to.window(graph_tab)  # not reloaded: only the events can change it

        def all_merged(driver: WebDriver) -> bool:
            rects = driver.find_elements(By.CSS_SELECTOR, "#graph g.node rect")
            return len(rects) == tasks and all(r.get_attribute("fill") == MERGED for r in rects)

        wait.until(all_merged)
        badge = browser.find_element(By.CSS_SELECTOR, "#run-state .state")
        wait.until(lambda _: badge.text == "done")
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACT))


async def test_a_person_approves_the_plan_and_watches_the_graph_turn_merged(
    codeyard_up: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{codeyard_up['CODEYARD_DASHBOARD_PORT']}"
    token = codeyard_up["CODEYARD_DASHBOARD_TOKEN"]
    plan = tmp_path / "plan.json"
    tasks = [
        TaskSpec(id="a", title="models"),
        TaskSpec(id="b", title="api <script>alert(1)</script>", deps=["a"]),
        TaskSpec(id="c", title="docs", deps=["a"]),
    ]
    plan.write_bytes(msgspec.json.encode(tasks))
    args = ("add an api", "--repo", str(repo), "--plan", str(plan), "--run-id", "web1")
    following = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "codeyard", "run", *args, "--approve-plan"),
        env=codeyard_up,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_page(f"{base}/approvals", token, "web1")  # the plan waits for a person
        await asyncio.to_thread(approve_in_the_browser, base, token, "web1", len(tasks))
        output, _ = await asyncio.wait_for(following.communicate(), 60)
    finally:
        if following.returncode is None:
            following.kill()
            await following.wait()
    assert following.returncode == 0, output.decode()
    assert "run web1 done: 3/3 tasks merged" in output.decode()
    assert ARTIFACT.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@asynccontextmanager
async def chromium_in_a_thread() -> AsyncIterator[WebDriver]:
    """`chromium()`, started and quit in a thread: that takes seconds, which on the event loop
    would stall the dashboard and the coordinator this process serves (it lost its lease)."""
    manager = chromium()
    browser = await asyncio.to_thread(manager.__enter__)
    try:
        yield browser
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


class RefusesTheFirstStreams(Dashboard):
    """Answers the page's first `refusals` requests for the run's events 503, as while no
    coordinator answers (a restart), from when the test has had a look at the page
    (`refuse`); holds the next one until the test has looked again (`serve`)."""

    def __init__(self, bus: Bus, refusals: int) -> None:
        super().__init__(bus, TOKEN)
        self.refusals = refusals
        self.refuse = asyncio.Event()
        self.asked_again = asyncio.Event()
        self.serve = asyncio.Event()
        self.streams = 0

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.streams += 1
        await self.refuse.wait()
        if self.streams <= self.refusals:
            raise Unavailable("no coordinator answered")
        self.asked_again.set()
        await self.serve.wait()
        return await super().events(request)


# Every text the live indicator shows from now on (WebDriver's scripts are not the page's,
# which its Content-Security-Policy restricts).
RECORD_LIVE_TEXTS = """
window.liveTexts = [];
const live = document.getElementById("live");
new MutationObserver(function () { window.liveTexts.push(live.textContent); })
  .observe(live, {childList: true, characterData: true, subtree: true});
"""


def live_texts(browser: WebDriver) -> list[str]:
    return list(browser.execute_script("return window.liveTexts;"))


def wait_for(browser: WebDriver, shown: Callable[[WebDriver], bool]) -> None:
    WebDriverWait(browser, 60, poll_frequency=0.2).until(shown)


def live_text(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "live").text)


def task_state(browser: WebDriver, task_id: str) -> str:
    node = browser.find_element(By.CSS_SELECTOR, f'#graph g.node[data-task="{task_id}"]')
    return str(node.get_attribute("data-state"))


async def test_the_run_page_retries_refused_streams_less_and_less_often_and_goes_live(
    bus: Bus, coordinator: Coordinator
) -> None:
    """EventSource gives up for good on an answer other than 200: the page stayed at
    "reconnecting…" and never moved again."""
    approval_id = await submit_waiting_plan(bus, "r1")
    dashboard = RefusesTheFirstStreams(bus, refusals=2)
    async with chromium_in_a_thread() as browser, serving(dashboard, "127.0.0.1", 0) as base:
        await asyncio.to_thread(browser.get, f"{base}/runs/r1?token={TOKEN}")
        await asyncio.to_thread(browser.execute_script, RECORD_LIVE_TEXTS)
        dashboard.refuse.set()
        try:
            await asyncio.wait_for(dashboard.asked_again.wait(), 30)  # it retries in 1 s, 2 s
        except TimeoutError:
            shown = await asyncio.to_thread(live_texts, browser)
            pytest.fail(f"the page never asked for the events again; it showed {shown}")
        assert await asyncio.to_thread(live_texts, browser) == [
            "offline: retrying in 1 s",
            "reconnecting…",
            "offline: retrying in 2 s",
            "reconnecting…",
        ]
        dashboard.serve.set()
        await asyncio.to_thread(wait_for, browser, lambda b: live_text(b) == "live")
        assert await asyncio.to_thread(task_state, browser, "x") == "planned"

        await ask(bus, "approve", Approve(approval_id=approval_id))
        # not reloaded: only the stream can change it
        await asyncio.to_thread(wait_for, browser, lambda b: task_state(b, "x") == "coding")
