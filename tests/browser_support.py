"""The browser the console's tests drive: Debian's Chromium through Playwright, one per test
session, and a page per test on the started system that fails its test on any uncaught script
error. `tests/conftest.py` makes `browser` and `page` every test module's fixtures. A page as
rendered, with the console's script and no system behind it (`served`). And what a screen reader
would be told by a page (`read_once`): each message once, by the focus or by the page's live region,
#announcer, never both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

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
    await listen(context)
    p = await context.new_page()
    yield p
    await context.close()
    # The pages work without their script, so a script that fails to load fails no other check.
    assert not errors, f"the console's script failed: {errors}"


STATIC = Path(__file__).resolve().parents[1] / "services/console/static"


@asynccontextmanager
async def served(
    browser: Browser, html: str, answers: Mapping[str, Mapping[str, Any]] | None = None
) -> AsyncIterator[Page]:
    """A page showing `html` (a console page as its template rendered it) with the console's own
    script and stylesheet, and no system behind it: what the browser and the script make of the
    markup, for states the started system cannot easily be put in (its record away). `answers`:
    what some addresses answer instead (by the end of their path, e.g. a live stream's), from the
    first load on; every other address answers the same page. Fails on an uncaught script error,
    as `page` does."""
    context = await browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    errors = script_errors(context)
    await listen(context)

    async def answer(route: Route) -> None:
        url = route.request.url
        static = STATIC / url.rsplit("/", 1)[-1]
        given = next((a for path, a in (answers or {}).items() if url.split("?")[0].endswith(path)), None)
        if given is not None:
            await route.fulfill(**given)
        elif "/console/static/" in url and static.is_file():
            await route.fulfill(path=static)
        else:
            await route.fulfill(body=html, content_type="text/html; charset=utf-8")

    await context.route("**/*", answer)
    p = await context.new_page()
    await p.goto("http://console.test/console/")
    try:
        yield p
    finally:
        await context.close()
    assert not errors, f"the console's script failed: {errors}"


def script_errors(context: BrowserContext) -> list[str]:
    """The uncaught errors of the scripts of every page `context` opens, as they come."""
    errors: list[str] = []
    context.on("weberror", lambda e: errors.append(str(e.error)))
    return errors


# Every page of the context keeps what its #announcer said since it loaded (window.__said), each
# text as it was set: one said and then replaced by the next (智能提示 after a restored draft) was
# said all the same.
LISTEN = """document.addEventListener("DOMContentLoaded", () => {
  window.__said = [];
  const announcer = document.getElementById("announcer");
  if (!announcer) return;
  new MutationObserver(() => {
    const words = announcer.textContent.trim();
    if (words) window.__said.push(words);
  }).observe(announcer, { childList: true, characterData: true, subtree: true });
});"""

# What a screen reader says of the page: what the focus is on (its name: the elements naming it,
# its label or, for one without, its text; a field's value; its description), and what #announcer
# said since the page loaded.
SPOKEN = """() => {
  const text = (el) => (el ? el.textContent : "");
  const ids = (el, name) =>
    (el.getAttribute(name) || "").split(/\\s+/).filter(Boolean).map((id) => document.getElementById(id));
  const focused = document.activeElement;
  const parts = [];
  if (focused && focused !== document.body) {
    const field = ["INPUT", "TEXTAREA", "SELECT"].includes(focused.tagName);
    let name = ids(focused, "aria-labelledby").map(text);
    if (!name.length && focused.getAttribute("aria-label")) name = [focused.getAttribute("aria-label")];
    if (!name.length) name = field ? [...focused.labels].map(text) : [text(focused)];
    parts.push(...name);
    if (field && focused.type !== "password" && focused.tagName !== "SELECT") parts.push(focused.value);
    parts.push(...ids(focused, "aria-describedby").map(text));
  }
  const clean = (words) => words.replace(/\\s+/g, " ").trim();
  return { focus: clean(parts.join(" ")), announced: window.__said ? clean(window.__said.join(" ")) : null };
}"""


async def listen(context: BrowserContext) -> None:
    """Keep what each page of `context` announces (LISTEN), for `read_once`."""
    await context.add_init_script(LISTEN)


async def read_once(page: Page, words: str, by: Literal["focus", "announcer"]) -> dict[str, Any]:
    """`words` reach a screen reader once, `by` the focus or the announcer, not both (a message
    that took the focus and was announced as well was read twice). Asked once the page has said
    what it came back to say (the announcer's data-state); what was spoken is returned."""
    await expect(page.locator("#announcer")).to_have_attribute("data-state", "said")
    spoken = await page.evaluate(SPOKEN)
    assert spoken["announced"] is not None, "the page's context does not listen: call listen(context)"
    times = {way: spoken[way].count(words) for way in ("focus", "announced")}
    wanted = {"focus": 1, "announced": 0} if by == "focus" else {"focus": 0, "announced": 1}
    assert times == wanted, (words, spoken)
    return spoken
