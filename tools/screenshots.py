"""Screenshots of the dashboard's main pages for docs/dashboard.md, taken in headless Chromium
from the same seeded, token-protected app the browser tests drive.

    python -m tools.screenshots [--out docs/screenshots]     (or: make screenshots)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from tests.service.conftest import TOKEN
from tests.service.live import MISSING_CHROMIUM, chromium_path, live_dashboard

VIEWPORT = {"width": 1280, "height": 800}


def _shoot(page: Page, out: Path, name: str, *, full_page: bool = True) -> None:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path}")


@contextlib.contextmanager
def _inside(directory: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args(argv)
    executable = chromium_path()
    if executable is None:
        print(MISSING_CHROMIUM, file=sys.stderr)
        return 1
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="d365ct-screenshots-") as workdir,
        # A relative store path, as in a real d365ct.toml: no path of this machine on a picture.
        _inside(workdir),
        live_dashboard(Path()) as live,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        context = browser.new_context(base_url=live.base_url, viewport=VIEWPORT)
        page = context.new_page()

        page.goto("/")
        _shoot(page, out, "login")
        page.get_by_label("Service token").fill(TOKEN)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/")
        _shoot(page, out, "overview")

        page.goto("/jobs")
        _shoot(page, out, "jobs")
        page.goto("/jobs/orders-usmf-1")
        _shoot(page, out, "job")

        page.goto("/errors")
        orders_error = live.seeded.errors[0]
        page.locator(f"#error-{orders_error.id} details").first.evaluate("d => d.open = true")
        _shoot(page, out, "errors")
        row = page.locator(f"#error-{live.intake_error.id}")
        row.get_by_role("button", name="Replay").click()
        row.locator(".badge", has_text="replayed").wait_for()
        _shoot(page, out, "errors-replayed")

        page.goto("/reports")
        page.get_by_role("link", name=live.seeded.report_id).click()
        page.wait_for_url("**/reports/*")
        _shoot(page, out, "report")

        page.goto("/config")
        _shoot(page, out, "config", full_page=False)  # the top; every section follows
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
