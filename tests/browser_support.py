"""The browser the console's tests drive: Debian's Chromium through Playwright, one per test
session, and a page per test on the started system that fails its test on any uncaught script
error. `tests/conftest.py` makes `browser` and `page` every test module's fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

if TYPE_CHECKING:  # the conftest imports this module's fixtures
    from tests.conftest import System

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    if not CHROMIUM.exists():
        # Never skip: the console's tests are how we know it works. `make test` installs it.
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    return str(CHROMIUM)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Browser, system: System) -> AsyncIterator[Page]:
    context = await browser.new_context(
        base_url=system.base_url, locale="zh-CN", viewport={"width": 1280, "height": 900}
    )
    errors = script_errors(context)
    p = await context.new_page()
    yield p
    await context.close()
    # The pages work without their script, so a script that fails to load fails no other check.
    assert not errors, f"the console's script failed: {errors}"


def script_errors(context: BrowserContext) -> list[str]:
    """The uncaught errors of the scripts of every page `context` opens, as they come."""
    errors: list[str] = []
    context.on("weberror", lambda e: errors.append(str(e.error)))
    return errors
