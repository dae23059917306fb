"""Take docs/dashboard.png: the dashboard of a busy demo town, in headless chromium.

    python tools/dashboard_screenshot.py [OUT.png]

Builds the town `tt demo` builds (a throwaway directory on the embedded managed Valkey, alice
and bob spawned on the built-in ``scripted`` preset doing the demo's tasks), adds what a busy
town also has (an agent that only attached, a failed, a cancelled, a running and a backlog
task, a few questions and answers), starts `tt dashboard`, opens a task's thread and takes
the picture with Debian's chromium through Playwright.  Everything is removed afterwards.
Needs the dev extras (playwright) and /usr/bin/chromium.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from tinytown.config import TownPaths, init_town
from tinytown.demo import AGENTS, TASKS, _clean_up
from tinytown.models import AgentState
from tinytown.town import Town

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent


async def busy_town(paths: TownPaths) -> int:
    """Fill the town; returns the number of the task whose thread the picture shows."""
    town = await Town.open(paths.root)
    try:
        for name, role in AGENTS:
            await town.spawn_agent(name, cli="scripted", role=role)
        after = await town.last_event_id()
        tasks = [await town.assign(TASKS[i], agent=AGENTS[i % 2][0]) for i in range(len(TASKS))]
        last = after
        with anyio.fail_after(120):
            while not all([(await town.get_task(t.id)).state.is_final for t in tasks]):
                events = await town.wait_events(last, 5.0)
                last = events[-1].id if events else last
        await town.register_agent("carol", cli="claude", role="reviewer")
        await town.send("carol", "alice", "Is the calculator's division exact or floored?", kind="query")
        await town.send("alice", "carol", "Exact: 1000 / 8 gave 125.0, see task #5.")
        review = await town.assign("review the calculator's results", agent="carol", tags=["review"])
        await town.receive("carol", timeout_s=0)  # with the task message: the task runs
        await town.update_agent("carol", current_task=review.id, state=AgentState.WORKING)
        broken = await town.assign("compute 1 / 0", agent="carol", priority="high")
        await town.fail_task(broken.id, "division by zero: refusing to guess", by="carol")
        dropped = await town.assign("port the calculator to COBOL", agent="bob", priority="low")
        await town.cancel_task(dropped.id, "not worth it", by="conductor")
        changelog = await town.assign("write a changelog entry for the demo", tags=["docs"],
                                      depends_on=[review.id])
        await town.assign("publish the release", agent="carol", depends_on=[review.id, changelog.id])
        await town.assign("count the words of the README", tags=["chore"], priority="high")
        await town.send("conductor", "all", "Nice work everyone: the demo tasks are done.")
        return tasks[0].number or 1
    finally:
        await town.close()


def shoot(paths: TownPaths, shown: int, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYTOWN_", "REDIS_URL"))}
    argv = [sys.executable, "-m", "tinytown.cli.main", "--town", str(paths.root), "dashboard", "--port", "0"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rpartition(" at ")[2].strip()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 1200}, device_scale_factor=1)
            page.goto(url)
            expect(page.locator("#live")).to_have_text("live", timeout=30_000)
            page.locator(f"#board .card[data-number='{shown}']").click()
            expect(page.locator("#detail-title")).to_have_text(f"Task #{shown}", timeout=30_000)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "dashboard.png"
    for var in ("REDIS_URL", "TINYTOWN_TOWN", "TINYTOWN_AGENT"):
        os.environ.pop(var, None)
    paths = TownPaths(Path(tempfile.mkdtemp(prefix="tt-dashboard-shot-")))
    try:
        init_town(paths.root, name="demo")
        shown = anyio.run(busy_town, paths)
        shoot(paths, shown, out)
    finally:
        _clean_up(paths, keep=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
