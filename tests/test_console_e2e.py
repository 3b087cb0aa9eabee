"""The web console end to end, in Debian's Chromium (headless, driven by Playwright), against the
system started as real processes. Each flow takes a screenshot of its pages and checks the page with
axe-core (WCAG 2 AA). The README shows them: `SCREENSHOTS_DIR=docs/screenshots` refreshes those;
without it none is taken (a full-page screenshot costs about half a second, and nobody looks at
them), so a test run leaves the source tree as it found it."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image, ImageDraw
from playwright.async_api import Browser, Locator, Page, expect

from services.console import present
from services.console.lookup import BAD_LINK, EXPIRED_LINK
from services.console.views import KNOWLEDGE_DONE, LIST_FILTERS
from services.notifier.surveys import CALL_ANSWER_REQUIRED
from services.records.knowledge import KnowledgeService
from services.records.service import Records
from services.router.workflow import REQUIRED
from shared import topics
from shared.auth import issue_token, revoke_token
from shared.city import City, KnowledgeEntry
from shared.events import AppealClassified
from shared.lookup_link import day_number, link_key, params, ticket_url
from shared.privacy import REMOVED
from shared.settings import Settings
from tests.browser_support import listen, read_once, served
from tests.conftest import System, days_since, eventually, local_today
from tests.router_factory import classified
from tests.test_console_units import (
    DEPARTMENTS_TICKET,
    access_html,
    department_html,
    form_page,
    patrol_html,
    privacy_html,
    render_ticket,
    staff,
    tickets_html,
)
from tests.test_intake_wechat import openid as wechat_user
from tests.test_pipeline_e2e import outbox_for
from tests.test_records_trend import appeal_events
from tests.test_wechat_survey import surveyed_in_wechat

pytestmark = pytest.mark.integration

SHOTS = Path(os.environ["SCREENSHOTS_DIR"]) if os.environ.get("SCREENSHOTS_DIR") else None
# Resolved, or already surveyed: the notifier sends the survey as soon as it hears of the
# resolution, which on a busy machine can be before the page shows the status.
RESOLVED = re.compile(r"^(已办结|回访中)$")
HOSTILE = '<script>window.__pwned = 1</script><b id="bold">粗体</b><img src=x onerror="window.__pwned=2">'


def new_phone() -> str:
    return "139" + "".join(random.choices("0123456789", k=8))


async def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    """The page as the README shows it, when SCREENSHOTS_DIR asks for the README's screenshots."""
    if SHOTS is not None:
        await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's WCAG 2 A/AA violations on the page (axe's script ships in a PyPI package)."""
    import axe_playwright_python

    script = (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text(encoding="utf-8")
    await page.evaluate(script)
    # Only the violations: axe then leaves out the passing checks' nodes, and they do not cross to
    # the test either (a third less time per page, measured).
    violations = await page.evaluate(
        """async () => (await axe.run(document, {
            runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}, resultTypes: ['violations'],
        })).violations"""
    )
    return [{"id": v["id"], "nodes": [n["html"] for n in v["nodes"]][:3]} for v in violations]


async def accessible(page: Page) -> None:
    violations = await axe_violations(page)
    assert violations == [], json.dumps(violations, ensure_ascii=False, indent=1)


async def fits_a_phone(page: Page) -> None:
    """The page, shown 360 px wide, needs no sideways scrolling; then back to the desktop's width."""
    desktop = page.viewport_size
    await page.set_viewport_size({"width": 360, "height": 740})
    width = await page.evaluate("document.documentElement.scrollWidth")
    if desktop is not None:
        await page.set_viewport_size(desktop)
    assert width <= 360, f"{page.url} is {width} px wide on a 360 px screen"


async def sign_in(page: Page, token: str) -> None:
    await page.goto("/console/signin")
    await expect(page.locator("#token")).to_be_focused()
    # Into the focused field as a paste would put it (a token is pasted, not typed): one message to
    # the browser, where typing sends three for each of its 43 characters.
    await page.keyboard.insert_text(token)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")


async def admin_api(system: System, redis) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=system.base_url,
        timeout=30,
        headers={"Authorization": f"Bearer {await issue_token(redis, 'admin')}"},
    )


async def ticket_when(client: httpx.AsyncClient, no: str, ok) -> dict:
    async def probe():
        r = await client.get(f"/api/v1/tickets/{no}")
        return r.json() if r.status_code == 200 and ok(r.json()) else None

    return await eventually(probe, timeout=60)


async def surveyed(client: httpx.AsyncClient, redis, text: str, phone: str, address: str) -> tuple[str, dict]:
    """An appeal its department resolved, whose survey is out (回访中): its number and the ticket."""
    no = await submit(client, text, phone, address)
    ticket = await ticket_when(client, no, lambda t: t["status"] == "assigned")
    dept = {"Authorization": f"Bearer {await issue_token(redis, 'department', ticket['department']['id'])}"}
    r = await client.post(
        f"/api/v1/tickets/{no}/resolve", json={"note": "已更换灯泡，恢复照明"}, headers=dept
    )
    assert r.status_code == 200, r.text
    return no, await ticket_when(client, no, lambda t: t["status"] == "surveyed")


async def submit(client: httpx.AsyncClient, text: str, phone: str, address: str = "") -> str:
    r = await client.post(
        "/api/v1/appeals",
        json={"channel": "hotline", "caller_phone": phone, "text": text, "address": address},
    )
    assert r.status_code == 201, r.text
    return r.json()["ticket_no"]


# --- signing in ---------------------------------------------------------------------------------


async def classified_streetlight(settings: Settings, city: City, grid: str | None) -> str:
    """A street light's appeal, classified already (confident) in `grid`, sent for the router to
    route by its rule; its number, of a day long past so that today's counter stays."""
    no = f"20001203-{random.randint(900000, 999999)}"
    event = classified(city, "city.facility.streetlight", grid, no=no, at=datetime.now(UTC), confidence=0.95)
    await send_classified(settings, [event])
    return no


async def send_classified(settings: Settings, events: Sequence[AppealClassified]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:  # classified already: the router takes them from here
        for event in events:
            await producer.send_and_wait(
                topics.APPEAL_CLASSIFIED, event.to_bytes(), key=event.ticket_no.encode()
            )
    finally:
        await producer.stop()


async def test_a_link_styled_as_a_secondary_button_looks_like_one(browser: Browser):
    """取消 beside the red 确认删除 (an erasure's preview) and 清空条件 beside 查询 are links: they must
    look secondary, as the secondary buttons do, not like the filled main action. The stylesheet
    alone, in a blank page: no system needed."""
    css = (Path(__file__).parent.parent / "services/console/static/console.css").read_text(encoding="utf-8")
    p = await browser.new_page()
    try:
        await p.set_content(
            '<button class="secondary" id="b">取消</button>'
            '<a class="button secondary" href="#" id="a">取消</a>'
            '<a class="button" href="#" id="main">查询</a>'
        )
        await p.add_style_tag(content=css)
        look = "e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).color]"
        button, link, main = [await p.eval_on_selector(f"#{i}", look) for i in ("b", "a", "main")]
        assert link == button == ["rgb(255, 255, 255)", "rgb(11, 79, 138)"]
        assert main != link
    finally:
        await p.close()


async def test_the_knowledge_list_fits_a_phone_screen(browser: Browser):
    """A department out in the street checks an answer on its phone: at 360 px the list's rows
    become small cards instead of a table wider than the screen. The page's list as the console
    renders it, with the stylesheet, in a blank page: no system needed."""
    from types import SimpleNamespace

    from services.console.views import templates

    entry = {
        "id": "kb-1",
        "question": "社保卡丢了怎么补办？需要带什么材料，去哪里办理，多长时间能拿到新卡",
        "category_names": ["社会保障", "社保卡", "补办挂失"],
        "department_name": "区人力资源和社会保障局",
        "reviewed": "2026-11-30",
        "review_due": True,
    }
    principal = SimpleNamespace(role="department", is_admin=False, department="hr", operator=None, grid=None)
    html = templates.get_template("knowledge.html").render(
        request=None, s=SimpleNamespace(principal=principal, csrf="x"), entries=[entry] * 3, total=3,
        review_days=180, values={}, errors={}, notice=None, page_no=1, pages=1, query="", done="",
        category_choices=[], department_choices=[],
    )  # fmt: skip
    table = re.search(r'<table class="[^"]*" id="knowledge-list">.*?</table>', html, re.S)
    assert table is not None
    css = (Path(__file__).parent.parent / "services/console/static/console.css").read_text(encoding="utf-8")
    p = await browser.new_page(viewport={"width": 360, "height": 740})
    try:
        await p.set_content(f"<main>{table[0]}</main>")
        await p.add_style_tag(content=css)
        assert await p.evaluate("document.documentElement.scrollWidth") <= 360
        label = "e => getComputedStyle(e, '::before').content"
        assert await p.eval_on_selector("#entry-kb-1 td:nth-child(2)", label) == '"分类："'
    finally:
        await p.close()


async def on_a_phone(browser: Browser, html: str, width: int = 360, height: int = 740) -> Page:
    """A console page as rendered, with the stylesheet, 360 px wide in a blank page: no system."""
    css = (Path(__file__).parent.parent / "services/console/static/console.css").read_text(encoding="utf-8")
    p = await browser.new_page(viewport={"width": width, "height": height})
    await p.set_content(html)
    await p.add_style_tag(content=css)
    return p


def desk_session() -> Any:
    from types import SimpleNamespace

    principal = SimpleNamespace(role="admin", is_admin=True, department=None, operator=None, grid=None)
    return SimpleNamespace(principal=principal, csrf="x")


def dashboard_html() -> str:
    """The dashboard as rendered for a week: the figures, the rankings, an overdue ticket."""
    from urllib.parse import urlencode

    from services.console.views import DIMENSION_NAMES, templates
    from shared.city import load_city

    group = {
        "group": "urban_mgmt", "name": "区城市管理委员会", "assigned": 1234, "answered": 321,
        "response_rate": 0.987, "resolution_rate": 0.912, "satisfaction_rate": 0.876, "score": 93.2,
        "urged": 12, "verified": 3, "verification_failed": 1, "mediated": 2, "mediation_agreed": 1,
        "answered_by_phone": 4, "ranked": True,
    }  # fmt: skip
    late = {
        "ticket_no": "20261201-000001", "urges": 2, "department_name": "区城市管理委员会",
        "left": "已超期1天2小时", "category_label": "城市管理/市政设施/路灯故障",
    }  # fmt: skip
    return templates.get_template("dashboard.html").render(
        request=None, s=desk_session(), start="2033-07-04", end="2033-07-10", error="",
        tables={d: [group, group] for d in DIMENSION_NAMES}, dimension_names=DIMENSION_NAMES,
        overall={**group, "direct_answer_rate": 0.1, "handled_on_spot": 1},
        map=present.grid_map(load_city(), {}),
        trend=None, trend_by="category", trend_error="趋势暂不可用", top_categories=[], top_max=0,
        overdue=[late], overdue_total=1, overdue_link="/console/tickets?overdue=true", urlencode=urlencode,
        bases=present.rate_bases(group), min_answers=3, tickets_link=present.tickets_link,
        figure_lists=present.figure_lists(load_city(), "2033-07-04", "2033-07-10"),
    )  # fmt: skip


async def test_the_dashboard_fits_a_phone_screen_its_rankings_scrolling_in_their_own_box(browser: Browser):
    """The manager opens the dashboard on a phone: the rankings (twelve figures a row, compared down
    the columns) scroll sideways in their own box, which the keyboard can reach, and the page does
    not; the overdue tickets stack into cards as the ticket lists do; each top card is a link to its
    tickets, named by its figure and the list it opens, reached by the keyboard."""
    html = dashboard_html()
    p = await on_a_phone(browser, html)
    try:
        assert await p.evaluate("document.documentElement.scrollWidth") <= 360
        # 解决率 opens the period's tickets sent back by an answer (重办): a link a screen reader
        # names by the figure and the list, which the keyboard reaches from the card before it ("/"
        # escaped: Playwright passes the pattern on between slashes).
        named = r"^解决率\s*91\.2%\s*（0\/321）\s*查看本期重办过的工单$"  # its base too
        solved = p.get_by_role("link", name=re.compile(named))
        period = "from=2033-07-04&to=2033-07-10"
        await expect(solved).to_have_attribute("href", f"/console/tickets?reopened=true&{period}")
        await p.locator("#opens-response_rate").focus()
        await p.keyboard.press("Tab")
        await expect(solved).to_be_focused()
        cards = p.locator("#figures > a.figure")
        await expect(cards).to_have_count(7)
        for i in range(7):  # each card a link of its own that opens the ticket list of the period
            assert (await cards.nth(i).get_attribute("href") or "").endswith(period)
        await accessible(p)
        box = p.locator("#rank-department").locator("xpath=..")
        assert await box.get_attribute("tabindex") == "0"
        assert await box.get_attribute("aria-labelledby") == "rank-department-title"
        assert await box.evaluate("e => e.scrollWidth > e.clientWidth")  # it scrolls, not the page
        # Its headings on one line each: a long one wrapped into a tall band above every row.
        lines = await p.eval_on_selector(
            "#rank-department th",
            "th => th.getBoundingClientRect().height / parseFloat(getComputedStyle(th).lineHeight)",
        )
        assert lines < 2, f"the ranking's headings take {lines:.1f} lines"
        await shot(p, "dashboard-phone-ranking")
        label = "e => getComputedStyle(e, '::before').content"
        assert await p.eval_on_selector("#overdue td:nth-child(2)", label) == '"承办单位："'
    finally:
        await p.close()


async def test_a_map_on_a_phone_scrolls_in_its_own_box_with_the_tickets_grid_in_view(browser: Browser):
    """A map squeezed into a phone's width had its grids' names 5 px high. There it keeps a width
    they read at and scrolls sideways in its own box, named as the map is and reached by the
    keyboard; the page does not scroll. On a ticket's page the ticket's grid, drawn furthest right
    here, is scrolled into view."""
    from services.console.views import templates
    from shared.city import load_city

    city = load_city()
    east = max(present.grid_map(city, {})["shapes"], key=lambda g: g["cx"])["grid"]
    html = templates.get_template("_map.html").render(
        map=present.grid_map(city, {east: 1}), map_id="ticket-map", map_title="事发网格位置", map_centre=east
    )
    page = f"<main><div class='columns'><section class='card'><h2>位置</h2>{html}</section></div></main>"
    head = "<html lang='zh-CN'><head><title>工单</title></head>"
    p = await on_a_phone(browser, f"{head}<body>{page}</body></html>")
    try:
        script = Path(__file__).parent.parent / "services/console/static/console.js"
        await p.add_script_tag(content=script.read_text(encoding="utf-8"))
        assert await p.evaluate("document.documentElement.scrollWidth") <= 360
        frame = p.get_by_role("region", name="事发网格位置")
        assert await frame.get_attribute("tabindex") == "0"
        assert await frame.evaluate("e => e.scrollWidth > e.clientWidth")  # it scrolls, not the page
        size = "m => m.getBoundingClientRect().width / m.viewBox.baseVal.width * 11"  # drawn at 11
        names = await p.eval_on_selector(".map", size)
        assert names >= 10, f"the grids' names are {names:.1f} px high"
        shown = await frame.evaluate(
            """(f, grid) => {
                const a = f.getBoundingClientRect();
                const b = f.querySelector(`g[data-grid="${grid}"]`).getBoundingClientRect();
                return a.left <= b.left + b.width / 2 && b.left + b.width / 2 <= a.right && f.scrollLeft > 0;
            }""",
            east,
        )
        assert shown, "the ticket's grid is off the side of the map's box"
        await accessible(p)
    finally:
        await p.close()


async def test_the_dashboards_figures_are_its_first_screen_on_a_phone(browser: Browser):
    """On a phone (390 x 844) the figures come right after the heading and the period: the first
    card starts on the first screen, and the three rates and the score, what managers are judged
    on, are whole on it (a date a line and a card or two a row put the score a screen down). On a
    desktop the cards keep their row."""
    html = dashboard_html()
    card = "e => { const r = e.getBoundingClientRect(); return [r.top, r.bottom, r.left]; }"
    p = await on_a_phone(browser, html, 390, 844)
    try:
        assert await p.evaluate("document.documentElement.scrollWidth") <= 390
        # Nothing between the period and the figures, in the page's order as on the screen.
        assert await p.eval_on_selector("form.period", "f => f.nextElementSibling.id") == "figures"
        form_bottom = await p.eval_on_selector("form.period", "f => f.getBoundingClientRect().bottom")
        first_top, _, _ = await p.eval_on_selector("#figures > a.figure", card)
        assert form_bottom <= first_top < form_bottom + 40
        assert first_top < 844, f"the first card starts {first_top:.0f} px down, below the first screen"
        for key in ("response_rate", "resolution_rate", "satisfaction_rate", "score"):
            _, bottom, _ = await p.eval_on_selector(f"#opens-{key}", card)
            assert bottom <= 844, f"{key} ends {bottom:.0f} px down, past the first screen (844)"
        # The two dates on one line: the period takes a line or two, not a screen.
        dates = [
            await p.eval_on_selector(f"#{d}", "e => e.getBoundingClientRect().top") for d in ("from", "to")
        ]
        assert dates[0] == dates[1]
        await shot(p, "dashboard-phone")
    finally:
        await p.close()
    desktop = await browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        await desktop.set_content(html)
        css = Path(__file__).parent.parent / "services/console/static/console.css"
        await desktop.add_style_tag(content=css.read_text(encoding="utf-8"))
        tops = [
            (await desktop.eval_on_selector(f"#opens-{key}", card))[0]
            for key in ("response_rate", "resolution_rate", "satisfaction_rate", "score")
        ]
        assert len(set(tops)) == 1, f"the cards left their row on a desktop: {tops}"
        assert await desktop.eval_on_selector("#figures", "e => getComputedStyle(e).display") == "flex"
    finally:
        await desktop.close()


async def test_the_privacy_page_fits_a_phone_screen(browser: Browser):
    """The erasure's preview and the audit trail, on a phone: each row a small card (table.stack)."""
    from services.console.views import templates

    entry = {
        "at_local": "2026-12-01 10:00", "action_name": "删除个人信息", "actor": "admin:3f9a6c2e1b7d",
        "subject_prefix": "a1b2c3d4", "found_by": "ticket_no", "ticket_no": "20261201-000001", "tickets": 3,
        "reason": "居民申请删除个人信息",
    }  # fmt: skip
    ticket = {
        "ticket_no": "20261201-000001", "received": "2026-12-01 10:00", "channel_name": "12345热线",
        "status_name": "已办结", "category_label": "城市管理/市政设施/路灯故障",
    }  # fmt: skip
    preview = {
        "by": "phone",
        "count": 1,
        "contact": {"kind": "phone", "masked": "139****5678"},
        "tickets": [ticket],
    }
    for shown in (None, preview):
        html = templates.get_template("privacy.html").render(
            request=None, s=desk_session(), page_no=1, pages=1, role_names={"admin": "派单中心"},
            values={"by": "phone", "phone": "13912345678", "reason": "居民申请删除个人信息"}, errors={},
            preview=shown, erased=None, audit=[entry] * 3, audit_notice="",
        )  # fmt: skip
        p = await on_a_phone(browser, html)
        try:
            assert await p.evaluate("document.documentElement.scrollWidth") <= 360
            label = "e => getComputedStyle(e, '::before').content"
            assert await p.eval_on_selector("#audit-list td:nth-child(3)", label) == '"操作人："'
            if shown:
                assert await p.eval_on_selector("#preview-tickets td:nth-child(5)", label) == '"分类："'
        finally:
            await p.close()


ROW = {
    "status": "assigned", "status_name": "已派单", "urgent": False, "urges": 0, "overdue": False,
    "late": False, "flags": [], "category_label": "城市管理/市政设施/路灯故障",
    "title": "幸福里小区门口的路灯一直不亮", "text": "幸福里小区门口的路灯一直不亮", "address": "",
    "place": "和平街道/幸福里社区/第一网格", "department_name": "区城市管理委员会",
    "channel_name": "12345热线", "due_label": "签收时限", "left": "剩1天",
    "received": "2026-12-01 10:00", "resolve_due": "2026-12-05 10:00",
}  # fmt: skip


def listed(n: int) -> list[dict[str, Any]]:
    """Rows of a ticket list (and of a department's queue) as the console shows them."""
    return [ROW | {"ticket_no": f"20261201-00000{i}"} for i in range(1, n + 1)]


@pytest.mark.parametrize("shown", ["tickets", "grid", "department"])
async def test_a_lists_filters_fold_on_a_phone_so_its_first_screen_shows_tickets(
    browser: Browser, city, shown
):
    """On a phone (390×844) the filters (a dozen fields for the desk) filled the first screen: they
    fold under 筛选（已选N项）, which says how many are set and opens them from the keyboard, and
    the first ticket is on the first screen. Open on a desktop; open on a phone too when a filter
    came back refused, its field focused. As rendered, with the console's script and stylesheet."""
    from tests.test_console_units import staff

    box, field = ("#queue-filter-box", "分类") if shown == "department" else ("#ticket-filter-box", "关键词")
    if shown == "tickets":  # the sort narrows nothing: not counted
        chosen = dict.fromkeys(LIST_FILTERS, "") | {"status": "assigned", "q": "路灯", "sort": "ticket_no"}
        query = {k: v for k, v in chosen.items() if v}
        html = tickets_html(city, rows=listed(5), total=5, filters=chosen, query=query)
    elif shown == "grid":
        html = tickets_html(city, s=staff("grid_worker"), rows=listed(5), total=5)
    else:
        queue = {"rows": listed(5), "total": 5, "to_accept": ["20261201-000001"]}
        html = department_html(filters={"overdue": "1"}, **queue)
    said = {"tickets": "筛选（已选2项）", "grid": "筛选（未选条件）", "department": "筛选（已选1项）"}[shown]
    # The queue's live stream, which has nothing to say here (and retries in a minute): answered so
    # from the first load, or the script, finding no stream, may take the browser to sign in.
    stream = {"content_type": "text/event-stream", "body": "retry: 60000\n\n"}
    async with served(browser, html, {"/console/department/live": stream}) as p:
        await p.set_viewport_size({"width": 390, "height": 844})
        await p.goto("http://console.test/console/")  # folded as the page loads, as on a phone
        summary = p.locator(f"{box} > summary")
        await expect(summary).to_have_text(said)
        await expect(p.get_by_label(field, exact=True)).to_be_hidden()
        first = await p.locator("a[href='/console/tickets/20261201-000001']").bounding_box()
        assert first is not None
        assert first["y"] + first["height"] <= 844, "the first ticket is below the first screen"
        assert await p.evaluate("document.documentElement.scrollWidth") <= 390
        await touch_sized(p, f"{box} > summary")
        await accessible(p)
        await shot(p, f"filters-folded-{shown}-mobile", full_page=False)
        # The keyboard opens them (a disclosure: its state is read out), each field by its label.
        await summary.focus()
        await p.keyboard.press("Enter")
        await expect(p.locator(box)).to_have_attribute("open", "")
        await expect(p.get_by_label(field, exact=True)).to_be_visible()
        await p.get_by_label(field, exact=True).focus()
        await accessible(p)
        # On a desktop they are open as they always were.
        await p.set_viewport_size({"width": 1280, "height": 900})
        await p.goto("http://console.test/console/")
        await expect(p.get_by_label(field, exact=True)).to_be_visible()
    if shown == "tickets":  # a refused filter comes back open on a phone, its field focused
        refused = tickets_html(city, errors={"q": "搜索词至少两个字"}, rows=listed(2), total=2)
        async with served(browser, refused) as p:
            await p.set_viewport_size({"width": 390, "height": 844})
            await p.goto("http://console.test/console/")
            await expect(p.get_by_label("关键词", exact=True)).to_be_focused()
            await expect(p.locator("#f-q-error")).to_be_visible()


# What a page could not read (its record or Redis away), as its template renders it: no system to
# put in that state, so the page is shown as rendered, with the console's script.
AWAY = "工单档案库（PostgreSQL）暂时无法访问，请稍后重试；受理诉求不受影响"
BUSY = "系统繁忙，请稍后重试"


# What a page sends, by the browser's own validation or not: a form refused beside its field sends
# nothing; a form the browser's bubble stopped would not reach the script's reason either.
def questions_called_off(p: Page) -> list[str]:
    """The confirm questions the page asks from now on, each called off (dismissed)."""
    asked: list[str] = []

    async def call_off(dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    p.on("dialog", call_off)
    return asked


async def posts_of(p: Page) -> list[str]:
    sent: list[str] = []
    p.on("request", lambda r: sent.append(r.url) if r.method == "POST" else None)
    return sent


async def asked_beside(p: Page, field: str, words: str, error: str) -> None:
    """`words` shown beside `field` (as `error`, where the server shows it), the field focused,
    marked invalid and described by them, read once, by the focus; and no `required` left for the
    browser's bubble (in the browser's language) to refuse the form with before the script."""
    await expect(p.locator(f"#{error}")).to_have_text(words)
    await expect(p.locator(field)).to_be_focused()
    await expect(p.locator(field)).to_have_attribute("aria-invalid", "true")
    await expect(p.locator(field)).to_have_attribute("aria-describedby", re.compile(rf"\b{error}\b"))
    await read_once(p, words, by="focus")
    assert await p.locator(field).evaluate("f => !f.required && f.form.checkValidity()")


@pytest.mark.parametrize("form", ["return", "redispatch"])
async def test_a_tickets_choice_left_unchosen_is_asked_for_beside_it_not_by_the_browsers_bubble(
    browser: Browser, city, form
):
    """退单 without its 退单理由, 改派 without the department: the select was `required`, so Chromium
    refused the form with its own bubble ("Please select an item in the list.", in the browser's
    language) before the script could ask. Now asked for beside the field in the API's own words
    (REQUIRED), the field focused, before the question "不能撤回" and with nothing sent; chosen,
    the mark goes and the question is asked."""
    if form == "return":
        html = render_ticket(
            city, DEPARTMENTS_TICKET, role="department", department="urban_mgmt", handles=True
        )
        field, choice, question = "#return-reason", "duplicate", "确定退单吗"
    else:
        html = render_ticket(city, DEPARTMENTS_TICKET, role="admin")
        field, choice, question = "#redispatch-department", "power", "确定改派吗"
    words = REQUIRED[f"{form}.{field.split('-')[1]}"]
    async with served(browser, html) as p:
        asked = questions_called_off(p)
        sent = await posts_of(p)
        await expect(p.locator(field)).to_have_attribute("aria-required", "true")
        await p.locator(f"#{form}").click()
        await asked_beside(p, field, words, f"{field[1:]}-error")
        assert (asked, sent) == ([], [])
        # From the keyboard as well: Enter on the button is the same submit.
        await p.locator(f"#{form}").focus()
        await p.keyboard.press("Enter")
        await expect(p.locator(field)).to_be_focused()
        await expect(p.locator(f"{field}-error")).to_have_count(1)
        assert (asked, sent) == ([], [])
        await p.locator(field).select_option(choice)
        if form == "redispatch":
            await p.locator("#redispatch-reason").fill("属地有误，应由供电公司处理")
        await p.locator(f"#{form}").click()

        async def questioned() -> bool:
            return len(asked) == 1

        await eventually(questioned, timeout=10)
        assert question in asked[0]
        await expect(p.locator(f"{field}-error")).to_have_count(0)
        assert await p.locator(field).get_attribute("aria-invalid") is None
        assert sent == []  # called off


def survey_html(**context: Any) -> str:
    """The lookup page of a ticket waiting for its rating, its survey's form offered."""
    from services.console.lookup import COMMENT_MAX, RATINGS
    from services.console.views import templates

    found = {"ticket_no": "20260302-000002", "status": "已办结，待您评价", "steps": []}
    return templates.get_template("lookup.html").render(
        request=None, s=None, csrf="x", errors={}, found=found, ratings=RATINGS, comment_max=COMMENT_MAX,
        values={"ticket_no": "20260302-000002", "last4": "5678"}, rate=True,
        **({"answer_values": {}, "answer_errors": {}} | context),
    )  # fmt: skip


async def test_a_residents_survey_left_unanswered_is_asked_for_beside_each_question(browser: Browser):
    """The survey's radios were `required`: Chromium refused the form with its own bubble ("Please
    select one of these options.", in the browser's language). Now each question is asked for in
    the console's words (those the server refuses with) under it, the first one's first answer
    focused, nothing sent; answered, the form goes. Refused by the server (without the script):
    the same place."""
    from services.console.lookup import ANSWER_REQUIRED

    async with served(browser, survey_html()) as p:
        sent = await posts_of(p)
        form = p.locator("#survey-form")
        for group in ("您对办理结果是否满意", "问题是否已解决"):
            await expect(form.get_by_role("radiogroup", name=group)).to_have_attribute(
                "aria-required", "true"
            )
        await p.locator("#survey-submit").click()
        rating = form.get_by_label("满意", exact=True)
        await asked_beside(p, "input[name=rating][value='1']", ANSWER_REQUIRED["rating"], "rating-error")
        # Each question left unanswered is marked, as the ticket's forms mark each field; the first
        # takes the focus.
        await expect(p.locator("#solved-error")).to_have_text(ANSWER_REQUIRED["solved"])
        assert sent == []
        await accessible(p)
        # The reason is under the question, not inside an answer's label (it would name the answer).
        assert await p.locator("#rating-error").evaluate("e => e.previousElementSibling.tagName") == "LEGEND"
        await form.get_by_label("不满意").check()
        await p.locator("#survey-submit").click()
        await asked_beside(p, "input[name=solved][value='yes']", ANSWER_REQUIRED["solved"], "solved-error")
        await expect(p.locator("#rating-error")).to_have_count(0)
        assert await rating.get_attribute("aria-invalid") is None
        assert sent == []
        await form.get_by_label("未解决").check()
        await p.locator("#survey-submit").click()

        async def posted() -> bool:
            return len(sent) == 1

        await eventually(posted, timeout=10)
        assert sent[0].endswith("/console/lookup/survey")
    # The server's refusal (the script off, or the page posted otherwise): the same words, beside
    # the question, its first answer focused and described by them.
    refused = survey_html(
        answer_values={"solved": "yes"}, answer_errors={"rating": ANSWER_REQUIRED["rating"]}
    )
    async with served(browser, refused) as p:
        await asked_beside(p, "input[name=rating][value='1']", ANSWER_REQUIRED["rating"], "rating-error")
        await accessible(p)


def callback_html(**context: Any) -> str:
    """An operator's call-back page (电话回访), the answer's form offered."""
    from services.console.views import templates
    from shared.tickets import RATING_NAMES

    call = {"survey_id": "s1", "ticket_no": "20261201-000001", "phone": "13900000000", "attempts": 0,
            "category_names": [], "text": "路灯不亮", "resolution_note": "已更换灯泡"}  # fmt: skip
    return templates.get_template("callback.html").render(
        request=None, s=staff("operator"), call=call, ratings=RATING_NAMES,
        answer_wanted=CALL_ANSWER_REQUIRED, **({"values": {}, "error": "", "error_field": None} | context),
    )  # fmt: skip


def radios_form(city, form: str, refused: str = "") -> dict[str, Any]:
    """The page of a form whose choice is a group of radios, where it is, what it is asked for with,
    how it is answered and the question then asked; `refused`: as the server refused it."""
    if form == "verify":  # 现场核查: the grid's worker says whether the resolution holds
        errors = {"verify": {"solved": refused}} if refused else {}
        resolved = {**DEPARTMENTS_TICKET, "status": "resolved"}
        html = render_ticket(city, resolved, role="grid_worker", can_verify=True, errors=errors)
        return {
            "html": html,
            "group": "核查结果",
            "field": "#verify-solved",
            "error": "verify-solved-error",
            "words": REQUIRED["verify.solved"],
            "others": {},
            "submit": "#verify",
            "choose": {"#verify-unsolved": True, "#verify-note": "地砖仍然松动"},
            "question": "确定核查未解决吗",
        }
    if form == "mediation":  # 人民调解: the committee records how the mediation ended
        errors = {"resolve": {"mediation": refused}} if refused else {}
        held = {
            **DEPARTMENTS_TICKET,
            "status": "accepted",
            "department": {"id": "mediation_s01", "name": "和平街道人民调解委员会"},
        }
        html = render_ticket(
            city,
            held,
            role="department",
            department="mediation_s01",
            handles=True,
            is_committee=True,
            errors=errors,
        )
        return {
            "html": html,
            "group": "调解结果",
            "field": "#resolve-agreed",
            "error": "resolve-mediation-error",
            "words": REQUIRED["resolve.mediation"],
            "others": {"#resolve-note-error": REQUIRED["resolve.note"]},
            "submit": "#resolve",
            "question": "确定办结吗",
            "choose": {"#resolve-not-agreed": True, "#resolve-note": "双方未能达成一致，已告知可向法院起诉"},
        }
    # 电话回访: the operator records the resident's answer, both questions (one sentence for either)
    html = callback_html(error=refused, error_field="rating") if refused else callback_html()
    return {
        "html": html,
        "group": "市民评价",
        "field": "input[name=rating][value='1']",
        "error": "rating-error",
        "words": CALL_ANSWER_REQUIRED["rating"],
        "others": {"#solved-error": CALL_ANSWER_REQUIRED["solved"]},
        "submit": "#record-answer",
        "question": "确定记录吗",
        "choose": {"input[name=rating][value='3']": True, "input[name=solved][value='no']": True},
    }


@pytest.mark.parametrize("form", ["verify", "mediation", "callback"])
async def test_a_choice_of_radios_left_unchosen_is_asked_for_beside_it_not_by_the_browsers_bubble(
    browser: Browser, city, form
):
    """A grid worker's 核查结果, a mediator's 调解结果 and an operator's record of a call-back (市民
    评价, 问题是否解决) were radios marked `required`: Chromium refused the form with its own bubble
    ("Please select one of these options.", in the browser's language) before the script could
    ask. Now asked for under the question in the words the server refuses with, its first radio
    focused, before any question "确定…吗" and with nothing sent; chosen, the mark goes and the
    question is asked. Refused by the server (without the script): the same words, the same place."""
    shown = radios_form(city, form)
    field, error, words = shown["field"], shown["error"], shown["words"]
    async with served(browser, shown["html"]) as p:
        asked = questions_called_off(p)
        sent = await posts_of(p)
        group = p.get_by_role("radiogroup", name=shown["group"])
        await expect(group).to_have_attribute("aria-required", "true")
        assert await group.locator("input[type=radio]").evaluate_all("rs => rs.every(r => !r.required)")
        await p.locator(shown["submit"]).click()
        await asked_beside(p, field, words, error)
        for other, said in shown["others"].items():  # every field at fault marked; the first focused
            await expect(p.locator(other)).to_have_text(said)
        # The reason is under the question, not inside an answer's label (it would name the answer).
        assert await p.locator(f"#{error}").evaluate("e => e.previousElementSibling.tagName") == "LEGEND"
        assert (asked, sent) == ([], [])
        await accessible(p)
        # From the keyboard as well: Enter on the button is the same submit.
        await p.locator(shown["submit"]).focus()
        await p.keyboard.press("Enter")
        await expect(p.locator(field)).to_be_focused()
        await expect(p.locator(f"#{error}")).to_have_count(1)
        assert (asked, sent) == ([], [])
        for where, what in shown["choose"].items():
            if what is True:
                await p.locator(where).check()
            else:
                await p.locator(where).fill(what)
        await p.locator(shown["submit"]).click()

        async def questioned() -> bool:
            return len(asked) == 1

        await eventually(questioned, timeout=10)
        assert shown["question"] in asked[0]
        await expect(p.locator(f"#{error}")).to_have_count(0)
        for other in shown["others"]:
            await expect(p.locator(other)).to_have_count(0)
        assert await p.locator(field).get_attribute("aria-invalid") is None
        assert sent == []  # called off
    # The server's refusal (the script off, or the page posted otherwise): the same words under
    # the question, its first answer focused and described by them.
    async with served(browser, radios_form(city, form, refused=words)["html"]) as p:
        await asked_beside(p, field, words, error)
        assert await p.locator(f"#{error}").evaluate("e => e.previousElementSibling.tagName") == "LEGEND"
        await accessible(p)


@pytest.mark.parametrize(
    ("shown", "said", "focused"),
    [
        # Part of the page away, the rest there to use: told by the announcer, the focus left alone.
        ("access", {"announcer": [BUSY, AWAY]}, None),
        ("privacy", {"announcer": [AWAY]}, "#phone"),
        ("patrol", {"announcer": [AWAY]}, None),
        # The list the page is for away: the reason takes the focus.
        ("tickets", {"focus": [AWAY]}, "#list-notice"),
    ],
)
async def test_a_list_that_could_not_be_read_is_said_once(browser: Browser, city, shown, said, focused):
    """Such a notice was an alert already on the page when it loaded, which a screen reader does not
    read out (a live region reads what changes in it), and nothing took the focus to it."""
    html = {
        "access": lambda: access_html(list_notice=BUSY, audit_notice=AWAY),
        "privacy": lambda: privacy_html(values={"by": "phone"}, audit_notice=AWAY),
        "patrol": lambda: patrol_html(to_verify=None, to_verify_error=AWAY),
        "tickets": lambda: tickets_html(city, notice=AWAY),
    }[shown]()
    async with served(browser, html) as p:
        for by, words in said.items():
            for w in words:
                await read_once(p, w, by=by)
        if focused:
            await expect(p.locator(focused)).to_be_focused()
        else:
            assert await p.evaluate("document.activeElement === document.body")


async def test_a_step_that_cannot_be_undone_asks_for_what_it_needs_before_it_asks_to_confirm(
    browser: Browser, city
):
    """退单 for 诉求分类有误 without its 说明, 办结 without its note: refused beside the field in the
    server's words before the question "不能撤回" is asked, so no one confirms a step that the server
    would then refuse. Once filled in, the question is asked (called off here) and the mark goes."""
    html = render_ticket(city, DEPARTMENTS_TICKET, role="department", department="urban_mgmt", handles=True)
    async with served(browser, html) as p:
        asked = questions_called_off(p)

        async def questions(n: int) -> None:
            async def reached() -> bool:
                return len(asked) >= n

            await eventually(reached, timeout=10)

        # Another reason needs no 说明: the question is asked at once.
        await p.locator("#return-reason").select_option("duplicate")
        await p.locator("#return").click()
        await questions(1)
        await expect(p.locator("#return-note-error")).to_have_count(0)
        await p.locator("#return-reason").select_option("wrong_category")
        await p.locator("#return-note").fill("  ")
        await p.locator("#return").click()
        note = p.locator("#return-note")
        await expect(p.locator("#return-note-error")).to_have_text(REQUIRED["return.note"])
        await expect(note).to_be_focused()
        await expect(note).to_have_attribute("aria-invalid", "true")
        await expect(note).to_have_attribute("aria-describedby", "return-note-error")
        await read_once(p, REQUIRED["return.note"], by="focus")
        assert len(asked) == 1  # not asked again
        await note.fill("实际是井盖缺失，不是路灯")
        await p.locator("#return").click()
        await questions(2)
        assert "确定退单吗" in asked[-1]
        await expect(p.locator("#return-note-error")).to_have_count(0)
        assert await note.get_attribute("aria-invalid") is None
        # 办结 without a note: the same, in its own words.
        await p.locator("#resolve").click()
        await expect(p.locator("#resolve-note-error")).to_have_text(REQUIRED["resolve.note"])
        await expect(p.locator("#resolve-note")).to_be_focused()
        assert len(asked) == 2


@pytest.mark.parametrize(
    ("shown", "refused"),
    [
        ("operator", {"caller_phone": "请填写来电号码"}),
        ("operator", {"caller_phone": "来电号码不符合要求，请检查后重新填写", "text": "请填写诉求内容"}),
        ("patrol", {"text": "问题描述太短（2字），请至少写5个字说明问题"}),
        ("patrol", {"text": "请填写问题描述", "caller_phone": "反映群众电话不符合要求，请检查后重新填写"}),
        ("privacy", {"phone": "请填写居民来电号码"}),
        ("privacy", {"phone": "居民来电号码不符合要求，请检查后重新填写", "reason": "请填写删除原因"}),
        ("access", {"days": "有效天数不符合要求，请检查后重新填写"}),
        ("access", {"role": "请填写角色", "days": "有效天数不符合要求，请检查后重新填写"}),
    ],
)
async def test_a_refused_fields_reason_is_read_once_with_the_field(browser: Browser, shown, refused):
    """The form comes back with the first field at fault focused, read with the reason that describes
    it, which the announcer does not say again; a second field's reason, which the focus does not
    read, is said by the announcer, once. As rendered, with the console's script."""
    html = {
        "operator": lambda: form_page("operator.html", "operator", refused),
        "patrol": lambda: patrol_html(errors=refused),
        "privacy": lambda: privacy_html(values={"by": "phone"}, errors=refused),
        "access": lambda: access_html(errors=refused),
    }[shown]()
    (first, reason), *others = refused.items()
    async with served(browser, html) as p:
        await expect(p.locator(f"#{first}")).to_be_focused()
        described = await p.locator(f"#{first}").get_attribute("aria-describedby") or ""
        assert f"{first}-error" in described.split()
        await read_once(p, reason, by="focus")
        for _, words in others:
            await read_once(p, words, by="announcer")


async def test_a_patrol_reports_refused_position_is_read_once_where_the_focus_is(browser: Browser):
    """The position, in hidden fields, has no field to go back to: its reason takes the focus, read
    there alone. Locating again drops it, the status saying how that went (here, a page of no
    secure origin, that the position may not be read)."""
    refused = "当前位置不在本市范围内，请重新定位或按所属网格上报"
    html = patrol_html(values={"lng": "120.000000", "lat": "30.000000"}, errors={"location": refused})
    async with served(browser, html) as p:
        await expect(p.locator("#location-error")).to_be_focused()
        await read_once(p, refused, by="focus")
        await expect(p.locator("#location-state")).to_contain_text("已定位：东经120.0000，北纬30.0000")
        await p.locator("#locate").click()
        await expect(p.locator("#location-state")).to_contain_text("未获准读取位置")
        await expect(p.locator("#location-error")).to_have_count(0)


async def test_sign_in_roles_sign_out_and_bad_sessions(page: Page, redis):
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/console/signin$"))
    await accessible(page)
    await shot(page, "signin")

    await sign_in(page, "not-a-token")
    await expect(page.locator("#token-error")).to_contain_text("登录凭证无效")
    await expect(page.locator("#token")).to_be_focused()
    # Read with the field it describes, which keeps the focus: not announced again.
    await read_once(page, "登录凭证无效或已吊销，请向管理员重新申领", by="focus")

    await sign_in(page, await issue_token(redis, "operator", operator="op07"))
    await expect(page).to_have_url(re.compile(r"/console/operator$"))
    cookie = next(c for c in await page.context.cookies() if c["name"] == "appeals_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"

    # Another role's page: 403, in Chinese.
    response = await page.goto("/console/desk")
    assert response is not None
    assert response.status == 403
    await expect(page.locator("h1")).to_have_text("无权访问")
    # A form's address opened again from the address bar: a page in Chinese with the menu, not JSON.
    response = await page.goto("/console/operator/appeals")
    assert response is not None
    assert response.status == 404
    await expect(page.locator("h1")).to_have_text("页面不存在")
    await expect(page.get_by_role("navigation", name="主导航")).to_be_visible()
    await read_once(page, "没有这个页面", by="focus")  # all the page says: the focus is on it

    # A form without the session's CSRF token is refused.
    r = await page.request.post(
        "/console/operator/appeals", form={"text": "路灯坏了很久没人修", "csrf": "forged"}
    )
    assert r.status == 403

    # A revoked token ends its session at the next page.
    token = await issue_token(redis, "department", "water")
    await sign_in(page, token)
    await expect(page).to_have_url(re.compile(r"/console/department$"))
    await revoke_token(redis, token)
    await page.goto("/console/department")
    await expect(page).to_have_url(re.compile(r"/console/signin$"))
    # ... and the sign-in page says why, read with the field the focus is on; once: not again.
    ended = "您的登录凭证已被吊销或已过期，请联系派单中心重新签发"
    await expect(page.locator("#session-ended")).to_have_text(ended)
    await expect(page.locator("#token")).to_be_focused()
    await expect(page.locator("#token")).to_have_attribute("aria-describedby", "session-ended")
    await read_once(page, ended, by="focus")
    await page.reload()
    await expect(page.locator("#session-ended")).to_have_count(0)

    # Sign out: the session is gone, pages go to sign-in.
    await sign_in(page, await issue_token(redis, "operator", operator="op07"))
    await page.goto("/console/operator")
    await page.get_by_role("button", name="退出登录").click()
    await expect(page).to_have_url(re.compile(r"/console/signin$"))
    await expect(page.locator("#session-ended")).to_have_count(0)  # signed out: nothing ended it
    await page.goto("/console/operator")
    await expect(page).to_have_url(re.compile(r"/console/signin$"))

    # A made-up session cookie is no session.
    await page.context.add_cookies([{**cookie, "value": "forged-session-id"}])
    await page.goto("/console/department")
    await expect(page).to_have_url(re.compile(r"/console/signin$"))


# --- the hotline operator ----------------------------------------------------------------------


async def test_operator_takes_a_call_with_the_keyboard_only(page: Page, redis, system: System, system_city):
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await sign_in(page, await issue_token(redis, "operator", operator="op01"))
    phone_field = page.locator("#caller_phone")
    await expect(phone_field).to_be_focused()
    await expect(page.locator("#intake-keys")).to_contain_text("Ctrl+回车 提交")
    await expect(page.locator("#text-hint")).to_have_text("回车换行，Ctrl+回车提交")
    await accessible(page)
    keyboard = page.keyboard
    # Enter in a one-line field goes on to the next field: no half-typed call is sent.
    await keyboard.type(new_phone())
    await keyboard.press("Enter")
    await expect(page.locator("#caller_name")).to_be_focused()
    await keyboard.type("王先生")
    await keyboard.press("Tab")
    await expect(page.locator("#address")).to_be_focused()
    await keyboard.type("阳光花园3号楼")
    await keyboard.press("Enter")
    await expect(page.locator("#text")).to_be_focused()
    assert page.url.endswith("/console/operator")  # nothing was submitted
    await keyboard.type("阳光花园3号楼门口的路灯坏了一个星期，晚上很黑")
    # The preview appears while typing: category, grid, department; the typing goes on where it was.
    await expect(page.locator("#pv-department")).not_to_be_empty(timeout=60_000)
    await expect(page.locator("#pv-grid")).to_contain_text(system_city.grids["s01c01g01"].grid.name)
    await expect(page.locator("#text")).to_be_focused()
    await keyboard.type("，老人出门不方便")
    await expect(page.locator("#text")).to_have_value(re.compile("晚上很黑，老人出门不方便$"))
    # Enter in 诉求内容 is a new line, as in any text box: a stray one sends no half-typed appeal.
    await keyboard.press("Enter")
    await keyboard.type("希望尽快修好")
    await expect(page.locator("#text")).to_have_value(re.compile("老人出门不方便\n希望尽快修好$"))
    await expect(page.locator("#text")).to_be_focused()
    assert page.url.endswith("/console/operator")  # nothing was submitted
    # Nor by Ctrl+Enter while an input method is composing characters (its Enter picks them):
    # a submission would have disabled the button at once, before the page could go.
    sent = await page.locator("#text").evaluate(
        "el => { el.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', ctrlKey: true,"
        " isComposing: true, bubbles: true, cancelable: true}));"
        " return document.getElementById('submit').disabled; }"
    )
    assert sent is False
    await shot(page, "operator-preview")
    await keyboard.press("Control+Enter")  # from the text box too
    number = page.locator("#ticket-no")
    await expect(number).to_have_text(re.compile(r"^\S{6,}$"))
    ticket_no = (await number.text_content() or "").strip()
    font_size = await number.evaluate("el => parseFloat(getComputedStyle(el).fontSize)")
    assert font_size >= 32  # read out over the phone: large
    # The number is said to a screen reader, while the focus waits in the emptied form, ready for
    # the next call: nothing of this call is kept for the next caller.
    await expect(page.locator("#announcer")).to_have_text(f"诉求已受理，工单号{ticket_no}")
    await expect(phone_field).to_be_focused()
    await read_once(page, ticket_no, by="announcer")  # the focus, in 来电号码, does not say it
    for field in ("caller_phone", "caller_name", "address", "text", "direct_answer"):
        await expect(page.locator(f"#{field}")).to_have_value("")
    await expect(page.locator("#urgent")).not_to_be_checked()
    await accessible(page)
    await shot(page, "operator-accepted")
    # The number copied, from the button just before the form.
    await keyboard.press("Shift+Tab")
    await expect(page.locator("#copy-ticket-no")).to_be_focused()
    await keyboard.press("Enter")
    await expect(page.locator("#copy-state")).to_have_text(f"已复制工单号{ticket_no}")
    assert await page.evaluate("navigator.clipboard.readText()") == ticket_no

    async with await admin_api(system, redis) as client:
        ticket = await ticket_when(client, ticket_no, lambda t: t["status"] != "received")
    assert ticket["channel"] == "hotline"
    assert ticket["operator_id"] == "op01"

    # The next call, answered on the phone: Enter is a new line in the answer; Ctrl+Enter submits.
    await keyboard.press("Tab")
    await expect(phone_field).to_be_focused()
    await keyboard.type(new_phone())
    for _ in range(3):  # past the name and the address, left empty
        await keyboard.press("Enter")
    await keyboard.type("来电人咨询社保卡丢了怎么补办")
    for _ in range(3):  # past the photos and 紧急
        await keyboard.press("Tab")
    await expect(page.locator("#direct_answer")).to_be_focused()
    await keyboard.type("先挂失")
    await keyboard.press("Enter")
    await keyboard.type("再到社保窗口补办")
    await expect(page.locator("#direct_answer")).to_have_value("先挂失\n再到社保窗口补办")
    await keyboard.press("Control+Enter")
    await expect(page.locator(".accepted")).to_contain_text("已登记当场答复")
    await expect(number).not_to_have_text(ticket_no)
    await expect(phone_field).to_be_focused()


# Every change inside a live region of the page (aria-live, or a role that is one), from now on:
# what a screen reader would be made to read again.
WATCH_LIVE = """() => {
  window.__live = [];
  const live = '[aria-live]:not([aria-live="off"]), [role="status"], [role="alert"], [role="log"]';
  new MutationObserver((changes) => {
    for (const change of changes) {
      const node = change.target.nodeType === Node.ELEMENT_NODE ? change.target : change.target.parentElement;
      const region = node ? node.closest(live) : null;
      if (region) window.__live.push(region.id || region.outerHTML.slice(0, 80));
    }
  }).observe(document.body, { childList: true, characterData: true, subtree: true });
}"""


async def test_operator_hears_the_suggestions_only_when_they_change(page: Page, redis):
    await sign_in(page, await issue_token(redis, "operator", operator="op06"))
    announcer, preview, text = page.locator("#announcer"), page.locator("#preview"), page.locator("#text")
    await expect(announcer).to_have_attribute("data-state", "said")  # the page has said its own
    await page.evaluate(WATCH_LIVE)

    async def asked(typing: Awaitable[None]) -> str:
        """What the panel suggests once the typing's pause has been answered (its data-suggests)."""
        async with page.expect_response(lambda r: r.url.endswith("/console/operator/preview")):
            await typing
        await expect(preview).to_have_attribute("data-state", "ready", timeout=60_000)
        return await preview.locator("[data-suggests]").get_attribute("data-suggests") or ""

    # What the panel suggests is told, politely, in one sentence: category, grid, department.
    first = await asked(text.fill("幸福路12号楼下的路灯坏了一个星期，晚上很黑"))
    department = (await page.locator("#pv-department").text_content() or "").strip()
    category = (await page.locator("#pv-category").text_content() or "").split("（")[0]
    assert first.startswith(f"智能提示：建议分类{category}；所属网格")
    assert f"；承办单位{department}" in first
    assert "置信度" not in first  # a confidence that moves is no new suggestion
    await expect(announcer).to_have_text(first)
    assert await page.evaluate("window.__live") == ["announcer"]  # the panel is no live region
    # Typed on, the same suggestions: nothing is read out again, neither the panel nor the announcer.
    await page.evaluate("window.__live = []")
    await text.press("End")
    for more in ("，", "。"):
        assert await asked(page.keyboard.type(more)) == first
    await expect(text).to_have_value("幸福路12号楼下的路灯坏了一个星期，晚上很黑，。")
    await expect(announcer).to_have_text(first)
    assert await page.evaluate("window.__live") == []
    # Another appeal, other suggestions: told, once.
    other = await asked(text.fill("社保卡丢了，想问一下怎么补办，需要带什么材料"))
    assert other != first
    await expect(announcer).to_have_text(other)
    assert await page.evaluate("window.__live") == ["announcer"]


async def test_operator_answers_a_question_on_the_call_from_the_knowledge_base(
    page: Page, redis, system: System
):
    await sign_in(page, await issue_token(redis, "operator", operator="op04"))
    await page.locator("#caller_phone").fill(new_phone())
    await page.locator("#text").fill("来电人咨询社保卡丢了怎么补办，要带什么材料")
    answers = page.locator("#pv-answers li")
    await expect(answers.first).to_contain_text("社保卡丢了怎么补办", timeout=60_000)
    await expect(answers.first).to_contain_text("区人力资源和社会保障局提供")
    await answers.first.locator("button.use-answer").click()
    answer = page.locator("#direct_answer")
    await expect(answer).to_be_focused()
    await expect(answer).to_have_value(re.compile("挂失"))
    await answer.press("End")
    await answer.type("。已提醒来电人先挂失。")  # the operator adapts it to what was said
    await accessible(page)
    await shot(page, "operator-knowledge")
    await page.locator("#submit").click()
    await expect(page.locator(".accepted")).to_contain_text("已登记当场答复")
    ticket_no = (await page.locator("#ticket-no").text_content() or "").strip()
    async with await admin_api(system, redis) as client:
        ticket = await ticket_when(client, ticket_no, lambda t: t["status"] in ("resolved", "surveyed"))
    assert ticket["assigned_via"] == "answered"
    assert ticket["resolution_note"].endswith("已提醒来电人先挂失。")
    assert ticket["operator_id"] == "op04"


async def test_an_expired_session_does_not_cost_the_operator_the_call(page: Page, redis):
    token = await issue_token(redis, "operator", operator="op05")
    await sign_in(page, token)
    phone = new_phone()
    await page.locator("#caller_phone").fill(phone)
    await page.locator("#text").fill("建设路菜市场门口早上占道经营，车辆过不去，希望管一管")
    await page.locator("#urgent").check()
    # The session ends while the call goes on (12 hours without a page, or signed out elsewhere).
    cookie = next(c for c in await page.context.cookies() if c["name"] == "appeals_console")
    await redis.delete("console:session:" + hashlib.sha256(cookie["value"].encode()).hexdigest())
    await page.locator("#submit").click()
    await expect(page).to_have_url(re.compile(r"/console/signin$"))
    await sign_in(page, token)
    # Signed in again, the page is a new one: the call is offered back, not filled in unasked.
    await expect(page.locator("#draft-offer")).to_contain_text(f"{phone[:3]}****{phone[-4:]}")
    await expect(page.locator("#text")).to_have_value("")
    await page.get_by_role("button", name="恢复").click()
    await expect(page.locator("#draft-restored")).to_contain_text("已恢复上次未提交的内容")
    # Said (智能提示, for the restored words, may follow it in the announcer).
    await read_once(page, "已恢复上次未提交的内容，请核对后提交。", by="announcer")
    await expect(page.locator("#caller_phone")).to_have_value(phone)
    await expect(page.locator("#text")).to_have_value("建设路菜市场门口早上占道经营，车辆过不去，希望管一管")
    await expect(page.locator("#urgent")).to_be_checked()
    await page.locator("#submit").click()
    await expect(page.locator("#ticket-no")).to_have_text(re.compile(r"^\S{6,}$"))
    # Accepted: the next call starts on an empty form.
    await page.goto("/console/operator")
    await expect(page.locator("#text")).to_have_value("")
    await expect(page.locator("#draft-restored")).to_have_count(0)


async def test_a_new_call_starts_empty_and_the_unsent_one_is_offered_back(page: Page, redis):
    """A call typed and left unsent comes back filled only where the operator is still on it (the
    page reloaded, or back with the browser's back button); the next call, from the menu, starts
    on an empty form, the unsent one offered by its masked phone and first words (恢复 / 丢弃), so no
    caller's details reach another's ticket. 清空（新来电） empties the form and drops the draft."""
    await sign_in(page, await issue_token(redis, "operator", operator="op07"))
    phone, text = new_phone(), "建设路菜市场门口早上占道经营，车辆过不去，希望管一管"
    typed = {"caller_phone": phone, "caller_name": "李女士", "address": "建设路菜市场", "text": text}
    fields = [page.locator(f"#{name}") for name in (*typed, "direct_answer")]

    async def type_the_call() -> None:
        for name, value in typed.items():
            await page.locator(f"#{name}").fill(value)
        await page.locator("#urgent").check()

    async def filled() -> None:
        for name, value in typed.items():
            await expect(page.locator(f"#{name}")).to_have_value(value)
        await expect(page.locator("#urgent")).to_be_checked()

    async def empty() -> None:
        for field in fields:
            await expect(field).to_have_value("")
        await expect(page.locator("#urgent")).not_to_be_checked()

    async def new_call() -> None:  # the menu's 来电登记, as for the next caller
        async with page.expect_navigation():
            await page.get_by_role("navigation").get_by_role("link", name="来电登记").click()

    await type_the_call()
    # Reloaded mid-call: all of it back, with the note to check it; nothing offered.
    await page.reload()
    await filled()
    await expect(page.locator("#draft-restored")).to_contain_text("已恢复上次未提交的内容")
    await expect(page.locator("#draft-offer")).to_have_count(0)
    # Away to the knowledge base and back with the browser's back button: the call still there.
    await page.goto("/console/knowledge")
    await page.go_back()
    await filled()

    # The next call: an empty form, the phone focused; the unsent call offered, not filled in.
    await new_call()
    await empty()
    await expect(page.locator("#draft-restored")).to_have_count(0)
    await expect(page.locator("#caller_phone")).to_be_focused()
    offer = page.locator("#draft-offer")
    said = f"有一份上次未提交的来电：{phone[:3]}****{phone[-4:]}，“建设路菜市场门口早上占道经营…”。"
    await expect(offer).to_contain_text(said)
    await expect(offer).not_to_contain_text(phone)
    await expect(offer).to_have_attribute("role", "group")
    restore = page.get_by_role("button", name="恢复")
    await expect(restore).to_have_attribute("aria-describedby", "draft-offer-text")
    await read_once(page, (await page.locator("#draft-offer-text").text_content() or ""), by="announcer")
    await accessible(page)
    await shot(page, "operator-draft-offered")
    # 恢复: the call filled in, to check from the top.
    await restore.click()
    await filled()
    await expect(offer).to_have_count(0)
    await expect(page.locator("#draft-restored")).to_contain_text("已恢复上次未提交的内容")
    await expect(page.locator("#caller_phone")).to_be_focused()

    # 清空（新来电）: an empty form, and the draft gone, so a reload brings nothing back.
    async with page.expect_navigation():
        await page.get_by_role("button", name="清空（新来电）").click()
    await empty()
    await expect(page.locator("#caller_phone")).to_be_focused()
    assert await page.evaluate("sessionStorage.getItem('appeals-draft:intake')") is None
    await page.reload()
    await empty()
    await expect(page.locator("#draft-offer")).to_have_count(0)

    # 丢弃: the offer and the draft go, the form stays empty, the focus back in the phone.
    await type_the_call()
    await new_call()
    await page.get_by_role("button", name="丢弃").click()
    await expect(offer).to_have_count(0)
    await empty()
    await expect(page.locator("#caller_phone")).to_be_focused()
    assert await page.evaluate("sessionStorage.getItem('appeals-draft:intake')") is None
    # And an offer left unanswered goes once the next call is typed, which is now the draft.
    await type_the_call()
    await new_call()
    await expect(offer).to_be_visible()
    other = new_phone()
    await page.locator("#caller_phone").fill(other)
    await expect(offer).to_have_count(0)
    draft = json.loads(await page.evaluate("sessionStorage.getItem('appeals-draft:intake')"))
    assert draft["caller_phone"] == other
    assert draft["text"] == ""


async def test_operator_urges_the_callers_open_ticket_and_the_department_sees_it(
    page: Page, browser: Browser, redis, system: System
):
    """重复来电: the caller's open ticket is urged (催办) from the preview; no new ticket."""
    phone = new_phone()
    async with await admin_api(system, redis) as client:
        no = await submit(client, "和平里小区门口的路灯坏了好几天了，晚上走路很危险", phone, "和平里小区")
        ticket = await ticket_when(client, no, lambda t: t["status"] == "assigned")

        async def listed():  # the caller's tickets are indexed by the intake worker
            r = await client.post(
                "/api/v1/appeals/preview", json={"caller_phone": phone, "text": "路灯还是不亮"}
            )
            return no in [d["ticket_no"] for d in r.json()["duplicates"]]

        await eventually(listed, timeout=60)
        await sign_in(page, await issue_token(redis, "operator", operator="op05"))
        asked: list[str] = []

        async def confirm(dialog) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.on("dialog", confirm)
        await page.locator("#caller_phone").fill(phone)
        await page.locator("#text").fill("上周反映的路灯还是不亮，一直没人来修")
        urge = page.locator(f"#urge-{no}")
        await expect(urge).to_have_text("催办此工单", timeout=60_000)
        await accessible(page)
        await shot(page, "operator-urge")
        await urge.click()
        await expect(page.locator("#ticket-no")).to_have_text(no)  # the existing number, read out again
        dept = ticket["department"]["name"]
        await expect(page.locator("#urged")).to_contain_text(f"已催办工单{no}，承办单位：{dept}，不新建工单")
        assert any("不会新建工单" in q and "承办单位会看到" in q for q in asked)
        assert int(await redis.get(f"seq:{no[:8]}")) == int(no.split("-")[1])  # no number taken
        await accessible(page)
        await shot(page, "operator-urged")
        await ticket_when(client, no, lambda t: t["urges"] == 1)
        # The same post without the script (a plain form): a refusal comes back in words, the call kept.
        csrf = await page.locator("#main").get_attribute("data-csrf") or ""
        call = {"csrf": csrf, "idem": "k1", "urge": "20991231-000001", "text": "路灯还是不亮"}
        refused = await page.request.post("/console/operator/urge", form=call)
        assert refused.status == 404
        assert "工单20991231-000001不存在" in await refused.text()
        assert "路灯还是不亮</textarea>" in await refused.text()

        # Without the script: the form asks for the preview, which comes with the page; the urge
        # posts at once (no dialog without the script, as every confirmation of the console).
        context = await browser.new_context(base_url=system.base_url, java_script_enabled=False)
        plain = await context.new_page()
        await sign_in(plain, await issue_token(redis, "operator", operator="op06"))
        await plain.locator("#caller_phone").fill(phone)
        await plain.locator("#text").fill("又打来了，路灯还是不亮")
        await plain.get_by_role("button", name="查看智能提示（不提交）").click()
        await expect(plain.locator("#text")).to_have_value("又打来了，路灯还是不亮")
        await plain.locator(f"#urge-{no}").click()
        await expect(plain.locator("#ticket-no")).to_have_text(no)
        await expect(plain.locator("#urged")).to_contain_text("不新建工单")
        await context.close()
        await ticket_when(client, no, lambda t: t["urges"] == 2)

    # The department: the badge in its queue, the call in the ticket's history.
    await sign_in(page, await issue_token(redis, "department", ticket["department"]["id"]))
    row = page.locator("#queue tr", has=page.locator(f"a[href='/console/tickets/{no}']"))
    await expect(row).to_contain_text("催办2次")
    await row.get_by_role("link", name=no).click()
    await expect(page.locator("#urges")).to_have_text("催办2次")
    history = page.locator("ol.history")
    await expect(history).to_contain_text(
        "来电催办：上周反映的路灯还是不亮，一直没人来修（第1次，话务员op05）"
    )
    await expect(history).to_contain_text("来电催办：又打来了，路灯还是不亮（第2次，话务员op06）")


async def test_operator_sees_the_callers_history_and_the_desk_opens_the_earlier_ticket(
    page: Page, browser: Browser, redis, system: System
):
    """来电历史: the caller's earlier ticket in the preview while the operator types, with the counts;
    the desk, which may open tickets, follows its link, here without the script (the form's own
    preview button)."""
    phone = new_phone()
    async with await admin_api(system, redis) as client:
        earlier = await submit(
            client, "和平里小区门口的路灯坏了好几天了，晚上走路很危险", phone, "和平里小区"
        )

        async def in_record():  # the caller's history is the record's: the records worker writes it
            r = await client.post(
                "/api/v1/appeals/preview", json={"caller_phone": phone, "text": "路灯还是不亮"}
            )
            return [t["ticket_no"] for t in (r.json().get("history") or {}).get("tickets", [])] == [earlier]

        await eventually(in_record, timeout=60)

    await sign_in(page, await issue_token(redis, "operator", operator="op12"))
    await page.locator("#caller_phone").fill(phone)
    await page.locator("#text").fill("上周反映的路灯还是不亮，想问问进展")
    history = page.locator("#pv-history")
    await expect(page.locator("#pv-history-counts")).to_have_text("近30天来电1次，近一年1次", timeout=60_000)
    await expect(history.locator("li")).to_have_count(1)
    await expect(history).to_contain_text(earlier)
    await expect(history).not_to_contain_text("和平里")  # no word of the old ticket: it is a click away
    await expect(history.locator("a")).to_have_count(0)  # an operator's token opens no ticket page
    await accessible(page)
    await shot(page, "operator-history")
    # The caller says the SMS with the number never came: 补发受理短信, after a confirmation, sends it
    # again to the number calling, and the number is read out.
    asked: list[str] = []

    async def confirm(dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await history.get_by_role("button", name="补发受理短信").click()
    await expect(page.locator("#urged")).to_have_text("已向来电人补发受理短信。请告知来电人原工单号：")
    await expect(page.locator("#accepted")).to_contain_text(earlier)
    assert asked == [f"确定向来电号码补发工单{earlier}的受理短信吗？"]
    assert len(await outbox_for(redis, phone, "ack")) == 2

    context = await browser.new_context(base_url=system.base_url, java_script_enabled=False)
    plain = await context.new_page()
    await sign_in(plain, await issue_token(redis, "admin"))
    await plain.goto("/console/operator")
    await plain.locator("#caller_phone").fill(phone)
    await plain.locator("#text").fill("又打来问路灯的事")
    await plain.get_by_role("button", name="查看智能提示（不提交）").click()
    await expect(plain.locator("#pv-history-counts")).to_have_text("近30天来电1次，近一年1次")
    await plain.locator(f"#pv-history a[href='/console/tickets/{earlier}']").click()
    await expect(plain.locator("#ticket-no")).to_have_text(earlier)
    await context.close()


async def test_operator_form_shows_the_apis_message_beside_the_field(page: Page, redis):
    await sign_in(page, await issue_token(redis, "operator", operator="op02"))
    await expect(page.locator("#caller_phone")).to_be_focused()
    await page.keyboard.type("12345")  # not a phone number
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await page.keyboard.type("小区门口垃圾堆了三天没人清理")
    await page.keyboard.press("Control+Enter")
    error = page.locator("#caller_phone-error")
    await expect(error).to_contain_text("不是有效的手机号或固话号码")
    await expect(page.locator("#caller_phone")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#text")).to_have_value("小区门口垃圾堆了三天没人清理")  # nothing retyped
    # The page comes back with the field at fault focused, not the first one.
    await page.locator("#caller_phone").fill(new_phone())
    await page.locator("#text").fill("")
    await page.locator("#submit").click()
    await expect(page.locator("#text-error")).to_contain_text("诉求内容是空的")
    await expect(page.locator("#text")).to_be_focused()
    await read_once(page, "诉求内容是空的", by="focus")  # with the field it describes, not again
    # Put right, the reason and the mark go with the next preview, which finds the text fine.
    await page.keyboard.type("小区门口垃圾堆了三天没人清理")
    await expect(page.locator("#pv-department")).not_to_be_empty(timeout=60_000)
    await expect(page.locator("#text-error")).to_have_count(0)
    await expect(page.locator("#text")).not_to_have_attribute("aria-invalid", "true")
    assert "text-error" not in (await page.locator("#text").get_attribute("aria-describedby") or "")


async def test_a_number_typed_into_the_words_is_masked_and_the_operator_told(
    page: Page, redis, system: System
):
    await sign_in(page, await issue_token(redis, "operator", operator="op03"))
    await page.locator("#caller_phone").fill(new_phone())
    await page.locator("#address").fill("阳光花园3号楼")
    await page.locator("#text").fill("阳光花园3号楼门口的路灯坏了，物业电话139 2468 1357一直没人接")
    await page.locator("#submit").click()
    number = page.locator("#ticket-no")
    await expect(number).to_have_text(re.compile(r"^\S{6,}$"))
    ticket_no = (await number.text_content() or "").strip()
    # Said on the page and to a screen reader: the words on the ticket are not what was typed.
    said = "已对诉求内容中的个人信息（电话、证件号、银行卡号、姓名）脱敏显示"
    await expect(page.locator("#accepted-masked")).to_contain_text(said)
    await expect(page.locator("#announcer")).to_have_text(f"诉求已受理，工单号{ticket_no}；{said}")
    async with await admin_api(system, redis) as client:
        ticket = await ticket_when(client, ticket_no, lambda t: t["status"] != "received")
    assert ticket["text"] == "阳光花园3号楼门口的路灯坏了，物业电话139****1357一直没人接"
    assert ticket["address"] == "阳光花园3号楼"


async def test_a_mistyped_phone_is_marked_at_the_phone_and_the_suggestions_stay(
    page: Page, browser: Browser, redis, system: System
):
    """A phone the preview cannot read costs only what it would look up by the caller: category,
    department and knowledge-base answers stay in view; the phone is marked beside it (aria-invalid,
    the reason describing it), told once, and unmarked when put right. A number half typed is not
    marked until the operator leaves it. The same on a grid worker's report."""
    await sign_in(page, await issue_token(redis, "operator", operator="op08"))
    phone, error = page.locator("#caller_phone"), page.locator("#caller_phone-error")
    await phone.fill("12345")
    await page.locator("#text").fill("来电人咨询社保卡丢了怎么补办，要带什么材料")
    await expect(page.locator("#pv-answers li").first).to_contain_text("社保卡", timeout=60_000)
    await expect(page.locator("#pv-department")).not_to_be_empty()
    await expect(page.locator("#pv-category")).not_to_be_empty()
    await expect(error).to_contain_text("不是有效的手机号或固话号码")
    await expect(phone).to_have_attribute("aria-invalid", "true")
    await expect(phone).to_have_attribute("aria-describedby", "caller_phone-error")
    await expect(page.locator("#pv-without-phone")).to_contain_text("来电号码有误")
    await expect(page.locator("#text")).to_be_focused()  # the typing goes on where it was
    said = "来电号码：" + (await error.text_content() or "")
    await read_once(page, said, by="announcer")
    await accessible(page)
    await shot(page, "operator-phone-mistyped")

    async def previewed(typing: Awaitable[None]) -> None:
        async with page.expect_response(lambda r: r.url.endswith("/console/operator/preview")):
            await typing
        await expect(page.locator("#preview")).to_have_attribute("data-state", "ready")

    # Put right: the mark goes, the suggestions stay, now with the caller's number.
    await previewed(phone.fill(new_phone()))
    await expect(error).to_have_count(0)
    await expect(phone).not_to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#pv-without-phone")).to_have_count(0)
    await expect(page.locator("#pv-answers li").first).to_contain_text("社保卡")
    # Half a number while it is typed is no mistake yet; left that way, it is one.
    await previewed(phone.fill("1391234"))
    await expect(phone).not_to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#pv-answers li").first).to_contain_text("社保卡")
    await page.keyboard.press("Tab")
    await expect(phone).to_have_attribute("aria-invalid", "true")
    await expect(error).to_contain_text("不是有效的手机号或固话号码")

    # A grid worker's report with a resident's phone mistyped: the suggestions stay there too.
    context = await browser.new_context(base_url=system.base_url, locale="zh-CN")
    worker = await context.new_page()
    try:
        await sign_in(worker, await issue_token(redis, "grid_worker", operator="W032", grid="s01c01g02"))
        await worker.locator("#caller_phone").fill("12345")
        await worker.locator("#text").fill("巡查发现翠竹苑东门外人行道井盖破损下陷，行人容易绊倒")
        await expect(worker.locator("#pv-department")).not_to_be_empty(timeout=60_000)
        await expect(worker.locator("#caller_phone-error")).to_contain_text("不是有效的手机号或固话号码")
        await expect(worker.locator("#caller_phone")).to_have_attribute("aria-invalid", "true")
        await expect(worker.locator("#caller_phone")).to_have_attribute(
            "aria-describedby", "caller_phone-hint caller_phone-error"
        )
        await expect(worker.locator("#pv-without-phone")).to_contain_text("反映群众电话有误")
    finally:
        await context.close()


# --- photos ----------------------------------------------------------------------------------------


def photo(color: tuple[int, int, int], size: tuple[int, int] = (800, 600)) -> dict[str, Any]:
    """A file for a file input: a generated JPEG."""
    out = io.BytesIO()
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).ellipse(
        (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), fill=(250, 250, 250)
    )
    image.save(out, "JPEG")
    return {
        "name": f"{color[0]}-{color[1]}-{color[2]}.jpg",
        "mimeType": "image/jpeg",
        "buffer": out.getvalue(),
    }


async def loaded(page: Page, selector: str, count: int) -> None:
    """Every <img> under `selector` (`count` of them) loaded from the console and decoded."""
    images = page.locator(f"{selector} img")
    await expect(images).to_have_count(count)
    await images.last.scroll_into_view_if_needed()  # lazy images load once near the screen
    await page.wait_for_function(
        "s => [...document.querySelectorAll(s + ' img')].every(i => i.complete && i.naturalWidth > 0)",
        arg=selector,
        timeout=30_000,
    )


async def test_photos_go_from_the_operator_and_the_department_onto_the_ticket(
    page: Page, redis, system: System, settings: Settings
):
    await sign_in(page, await issue_token(redis, "operator", operator="op03"))
    # The form is multipart now: a forged CSRF token is refused all the same.
    r = await page.request.post(
        "/console/operator/appeals", multipart={"text": "路灯坏了很久没人修", "csrf": "forged"}
    )
    assert r.status == 403
    await page.locator("#caller_phone").fill(new_phone())
    await page.locator("#address").fill("阳光花园3号楼")
    await page.locator("#text").fill("阳光花园3号楼门口的路灯杆被车撞歪了，随时可能倒下")
    not_a_photo = {"name": "说明.jpg", "mimeType": "image/jpeg", "buffer": "这不是照片".encode()}
    too_big = {"name": "大.jpg", "mimeType": "image/jpeg", "buffer": b"\xff" * (settings.photo_max_bytes + 1)}
    await page.locator("#photos").set_input_files([photo((200, 40, 40)), not_a_photo, too_big])
    await page.locator("#submit").click()
    # The refused files' reasons beside the field; the good one uploaded, kept, shown small.
    await expect(page.locator("#photos-error")).to_contain_text("“说明.jpg”无法识别为图片")
    await expect(page.locator("#photos-error")).to_contain_text("“大.jpg”太大")
    await expect(page.locator("#photos")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#photos")).to_be_focused()  # the field at fault, as any other
    await loaded(page, "#photos-kept", 1)
    await expect(page.locator("#text")).to_have_value("阳光花园3号楼门口的路灯杆被车撞歪了，随时可能倒下")
    await accessible(page)
    await shot(page, "operator-photos")
    # Sent again with one more photo: both go with the appeal.
    await page.locator("#photos").set_input_files([photo((40, 40, 200))])
    await page.locator("#submit").click()
    await expect(page.locator("#ticket-no")).to_have_text(re.compile(r"^\S{6,}$"))
    await expect(page.locator("#accepted-photos")).to_contain_text("已附照片2张")
    no = (await page.locator("#ticket-no").text_content() or "").strip()

    async with await admin_api(system, redis) as client:
        ticket = await ticket_when(client, no, lambda t: t["status"] == "assigned")
    assert len(ticket["photos"]) == 2

    await sign_in(page, await issue_token(redis, "department", ticket["department"]["id"]))
    await page.goto(f"/console/tickets/{no}")
    await loaded(page, "#appeal-photos", 2)
    first = page.locator("#appeal-photos a").first
    assert await first.get_attribute("target") == "_blank"
    href = await first.get_attribute("href") or ""
    assert href == f"/console/photos/{ticket['photos'][0]}"  # through the session: no token in it
    await expect(page.locator("#resolution-photos")).to_have_count(0)

    # The department resolves with a photo of the result (and confirms: it cannot be undone).
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.locator("#resolve-note").fill("已扶正灯杆并加固底座")
    await page.locator("#resolve-photos").set_input_files([photo((40, 160, 40), (600, 800))])
    await page.locator("#resolve").click()
    await expect(page.locator("#status")).to_have_text(RESOLVED)
    await loaded(page, "#resolution-photos", 1)
    await accessible(page)
    await shot(page, "ticket-photos")
    # On a phone the thumbnails wrap: nothing scrolls sideways.
    await page.set_viewport_size({"width": 390, "height": 844})
    await loaded(page, "#resolution-photos", 1)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await shot(page, "ticket-photos-mobile")
    async with await admin_api(system, redis) as client:
        done = (await client.get(f"/api/v1/tickets/{no}")).json()
    assert len(done["resolution_photos"]) == 1
    assert done["resolution_photos"][0] not in done["photos"]

    # A photo nobody kept: 404 from the console too.
    response = await page.goto(f"/console/photos/{'0' * 32}")
    assert response is not None
    assert response.status == 404


# --- a grid worker on patrol ---------------------------------------------------------------------


async def touch_sized(page: Page, *selectors: str) -> None:
    """Each control is a thumb's target on a phone: 44 px high at least (WCAG 2.5.5)."""
    for selector in selectors:
        box = await page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["height"] >= 44, f"{selector} is {box['height']} px high"


async def test_grid_worker_reports_from_a_phone_with_its_position_and_a_photo(
    browser: Browser, redis, system: System, system_city
):
    """On a 360 px phone: touch-sized controls, the keyboard's Enter going on instead of sending the
    report, photos from the camera (several, one tap each) and the gallery; once accepted, the
    number on one line, told to a screen reader and copied, above the emptied form, focused."""
    grid = system_city.grids["s01c01g02"]  # lng 116.32-116.34, lat 39.96-39.98
    context = await browser.new_context(
        base_url=system.base_url,
        locale="zh-CN",
        viewport={"width": 360, "height": 740},
        is_mobile=True,
        has_touch=True,
        geolocation={"longitude": 116.33, "latitude": 39.97, "accuracy": 12},
        permissions=["geolocation", "clipboard-read", "clipboard-write"],
    )
    await listen(context)
    page = await context.new_page()
    try:
        await sign_in(page, await issue_token(redis, "grid_worker", operator="W031", grid="s01c01g02"))
        await expect(page).to_have_url(re.compile(r"/console/patrol$"))
        await expect(page.locator("#patrol-grid")).to_contain_text(grid.grid.name)
        await touch_sized(page, "#submit", "#locate", "#photos-camera", "#photos", "#address")
        await touch_sized(page, "#caller_phone")
        await touch_sized(page, ".check:has(#urgent)", "label[for=urgent]")
        # The phone's keyboard: digits for the resident's phone, 下一项 on the one-line fields.
        await expect(page.locator("#caller_phone")).to_have_attribute("inputmode", "tel")
        for field in ("address", "caller_phone"):
            await expect(page.locator(f"#{field}")).to_have_attribute("enterkeyhint", "next")
        await page.locator("#text").fill("巡查发现翠竹苑东门外人行道井盖破损下陷，行人容易绊倒")
        # Enter after the place goes on to the position: the report is not sent without its photos.
        await page.locator("#address").focus()
        await page.keyboard.type("翠竹苑东门")
        await page.keyboard.press("Enter")
        await expect(page.locator("#locate")).to_be_focused()
        assert page.url.endswith("/console/patrol")
        await page.locator("#locate").click()
        position = "已定位：东经116.3300，北纬39.9700（误差约12米）"
        await expect(page.locator("#location-state")).to_contain_text(position)
        await expect(page.locator("#pv-grid")).to_contain_text(grid.grid.name, timeout=60_000)
        # On the phone's one column the suggestions come before 上报: the worker passes the
        # suggested department and any duplicates on the way to sending.
        suggested = await page.locator("#preview").bounding_box()
        send = await page.locator("#submit").bounding_box()
        assert suggested
        assert send
        assert suggested["y"] + suggested["height"] <= send["y"]
        # The field itself offers the camera and the gallery (no `capture`, which would allow the
        # camera alone, one photo); 拍照 opens the camera, each photo taken added to those sent.
        await expect(page.locator("#photos")).to_have_attribute("accept", "image/*")
        assert await page.locator("#photos").get_attribute("capture") is None
        await page.locator("#photos").set_input_files([photo((90, 90, 90))])
        for color in ((200, 60, 60), (60, 200, 60)):
            async with page.expect_file_chooser() as chosen:
                await page.locator("#photos-camera").click()
            camera = await chosen.value
            assert not camera.is_multiple()
            assert await camera.element.get_attribute("capture") == "environment"
            assert await camera.element.get_attribute("accept") == "image/*"
            await camera.set_files([photo(color)])
        await expect(page.locator("#photos-taken-state")).to_have_text("已拍2张，将随表单上传")
        await expect(page.locator("#photos-taken img")).to_have_count(2)
        await touch_sized(page, "#photos-taken li:last-child button")
        await page.get_by_role("button", name="删除第1张").click()  # a blurred one
        await expect(page.locator("#photos-camera")).to_be_focused()
        await expect(page.locator("#photos-taken-state")).to_have_text("已拍1张，将随表单上传")
        await expect(page.locator("#photos-taken button")).to_have_text("删除第1张")
        await accessible(page)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        await shot(page, "patrol-report")
        await page.locator("#submit").click()
        await expect(page.locator(".accepted")).to_contain_text("问题已上报")
        number = page.locator("#ticket-no")
        reported = (await number.text_content() or "").strip()
        await expect(page.locator("#accepted-photos")).to_contain_text("已附照片2张")
        # Told to a screen reader (a live region present at load is not read out); the number on one
        # line of the phone, large; the emptied form below it has the focus, the position forgotten.
        said = f"问题已上报，将派给责任单位办理，工单号{reported}"
        await expect(page.locator("#announcer")).to_have_text(said)
        await expect(page.locator("#text")).to_be_focused()
        await read_once(page, reported, by="announcer")
        for field in ("text", "address", "caller_phone", "direct_answer", "lng", "lat"):
            await expect(page.locator(f"#{field}")).to_have_value("")
        await expect(page.locator("#location-state")).to_contain_text("未定位")
        lines = await number.evaluate(
            "el => Math.round(el.getBoundingClientRect().height"
            " / parseFloat(getComputedStyle(el).lineHeight))"
        )
        assert lines == 1, f"the number takes {lines} lines"
        assert await number.evaluate("el => parseFloat(getComputedStyle(el).fontSize)") >= 24
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        await touch_sized(page, "#copy-ticket-no")
        await page.locator("#copy-ticket-no").click()
        await expect(page.locator("#copy-state")).to_have_text(f"已复制工单号{reported}")
        assert await page.evaluate("navigator.clipboard.readText()") == reported
        await accessible(page)
        await shot(page, "patrol-accepted")

        # The next one the worker dealt with there, resolved at once by the street office; a mistyped
        # phone comes back refused with the field focused, what was typed kept.
        await page.locator("#text").fill("巡查发现翠竹苑2号楼楼道堆放纸箱杂物，堵塞消防通道")
        await page.locator("#direct_answer").fill("已现场联系物业清理杂物，消防通道恢复畅通")
        await page.locator("#caller_phone").fill("1390")
        await page.locator("#submit").click()
        await expect(page.locator("#caller_phone-error")).to_be_visible()
        await expect(page.locator("#caller_phone")).to_be_focused()
        await expect(page.locator("#direct_answer")).to_have_value("已现场联系物业清理杂物，消防通道恢复畅通")
        await page.locator("#caller_phone").fill("")
        await page.locator("#submit").click()
        await expect(page.locator(".accepted")).to_contain_text("已登记现场处置")
        handled = (await number.text_content() or "").strip()
        said = f"已登记现场处置，工单直接办结，工单号{handled}"
        await expect(page.locator("#announcer")).to_have_text(said)

        async with await admin_api(system, redis) as client:
            ticket = await ticket_when(client, reported, lambda t: t["status"] != "received")
            # No resident to survey, nothing to check: it ends closed (resolved may pass unseen).
            done = await ticket_when(client, handled, lambda t: t["status"] == "closed")
        assert (ticket["channel"], ticket["operator_id"], len(ticket["photos"])) == ("patrol", "W031", 2)
        assert ticket["address"] == "翠竹苑东门"
        assert (ticket["grid"]["grid"], ticket["grid"]["method"]) == ("s01c01g02", "coordinates")
        assert (done["assigned_via"], done["department"]["id"]) == ("on_spot", "street_s01")

        # The grid's latest tickets under the form, once the record has them; each opens read-only.
        async def listed() -> bool:
            await page.goto("/console/patrol")
            return await page.locator(f"#recent a:text-is('{reported}')").count() == 1

        await eventually(listed, timeout=60)
        await expect(page.locator("#recent")).to_contain_text("网格巡查")
        await accessible(page)
        await shot(page, "patrol-recent")
        await page.locator(f"#recent a:text-is('{reported}')").click()
        await expect(page.locator("h1")).to_contain_text(reported)
        await expect(page.get_by_role("button", name="签收")).to_have_count(0)
        # Another grid's ticket is no ticket for this worker; the desk's pages are not its pages.
        response = await page.goto("/console/desk")
        assert response is not None
        assert response.status == 403
    finally:
        await context.close()


async def test_grid_worker_finds_its_report_under_what_it_reported_wherever_the_desk_placed_it(
    browser: Browser, redis, system: System, system_city: City
):
    """我上报的: on a 360 px phone a worker reports from /console/patrol, then, by keyboard from the
    menu, finds the report in its own list with its status and place; once the desk has placed it
    in the next grid (人工选定), it is still there, with its department and deadline, and opens;
    under 已办结 it is not; another worker of the same grid has no such report."""
    own, named = system_city.grids["s01c01g02"], system_city.grids["s01c01g01"]
    phone = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
    context = await browser.new_context(base_url=system.base_url, locale="zh-CN", **phone)
    await listen(context)
    page = await context.new_page()
    try:
        await sign_in(page, await issue_token(redis, "grid_worker", operator="W081", grid="s01c01g02"))
        await expect(page).to_have_url(re.compile(r"/console/patrol$"))
        text = "巡查发现小区门口一盏路灯灯杆倾斜，灯罩脱落，夜间不亮，存在安全隐患，晚上行人经过时容易被绊倒"
        await page.locator("#text").fill(text)
        await page.locator("#address").fill("和平里小区3号楼")  # the next grid's compound: to the desk
        await page.locator("#submit").click()
        # Said as it will happen: the desk decides the grid first (the preview said so too).
        waits = "问题已上报，派单中心确定事发网格后派给责任单位办理"
        await expect(page.locator("#accepted-next")).to_have_text(f"{waits}。工单号：")
        no = (await page.locator("#ticket-no").text_content() or "").strip()
        await expect(page.locator(".accepted a[href='/console/reported']")).to_have_text("我上报的")

        # From the menu, by keyboard; the record has it within seconds.
        menu = page.get_by_role("navigation", name="主导航").get_by_role("link", name="我上报的")
        await menu.focus()
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        await expect(page.locator("h1")).to_have_text("我上报的")
        row = page.locator(f"#reported-{no}")

        async def listed(*expected: str) -> bool:
            await page.goto("/console/reported")
            shown = await row.text_content() if await row.count() == 1 else None
            return shown is not None and all(e in shown for e in expected)

        # The record reads the classification and the assignment from two topics, in whichever order
        # they come: the row may say 待人工派单 a moment before it has the grid.
        await eventually(lambda: listed("待人工派单", own.full_name), timeout=60)
        await expect(row.locator("td.place")).to_have_text(f"{own.street_name}/{own.full_name}")
        await expect(row.locator("td.text")).to_have_text(text[:40] + "…")  # its opening words
        await expect(page.locator("#reported-state a[aria-current=page]")).to_have_text("全部")

        async with await admin_api(system, redis) as client:
            await ticket_when(client, no, lambda t: t["status"] == "review")
            placing = {"department": "urban_mgmt", "grid": "s01c01g01"}
            r = await client.post(f"/api/v1/dispatch/{no}/assign", json=placing)
            assert r.status_code == 200, r.text
        await eventually(lambda: listed("人工选定"), timeout=60)
        await expect(row.locator("td.place")).to_have_text(
            f"{named.street_name}/{named.full_name}（人工选定）"
        )
        await expect(row.locator("td.status")).to_have_text("已派单")
        await expect(row).to_contain_text("区城市管理委员会")
        await expect(row.locator("td.deadline")).to_contain_text("签收时限")
        await touch_sized(page, "#reported-state a[aria-current]")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        await accessible(page)
        await shot(page, "patrol-reported")

        # 已办结 by keyboard: the report, still being handled, is not there; 未办结 has it.
        await tab_to(page, page.locator("#reported-state a", has_text="已办结"))
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        await expect(page.locator("#reported-state a[aria-current=page]")).to_have_text("已办结")
        await expect(row).to_have_count(0)
        await page.goto("/console/reported?state=open")
        await expect(row).to_have_count(1)
        # Its page opens for the worker who reported it, in the grid the desk chose.
        await tab_to(page, row.get_by_role("link", name=no))
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        await expect(page.locator("#ticket-no")).to_have_text(no)
        await expect(page.locator("#ticket-grid")).to_have_text(
            f"{named.street_name}/{named.full_name}（人工选定）"
        )
    finally:
        await context.close()

    other = await (await browser.new_context(base_url=system.base_url, locale="zh-CN", **phone)).new_page()
    try:
        await sign_in(other, await issue_token(redis, "grid_worker", operator="W082", grid="s01c01g02"))
        await other.goto("/console/reported")
        await expect(other.locator("#reported")).to_contain_text("还没有上报记录")
        response = await other.goto(f"/console/tickets/{no}")  # the next grid's now, and not its own
        assert response is not None
        assert response.status == 404
    finally:
        await other.context.close()


async def resolved_in_grid(system: System, redis, worker: str, text: str) -> dict:
    """A grid worker's report that a resident left a phone for, held by a department (the desk
    dispatches it, or a meeting names the lead, where routing did not) and resolved by it; the
    ticket once its survey went out."""
    async with httpx.AsyncClient(
        base_url=system.base_url, timeout=30, headers={"Authorization": f"Bearer {worker}"}
    ) as as_worker:
        r = await as_worker.post("/api/v1/appeals", json={"text": text, "caller_phone": new_phone()})
        assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]
    async with await admin_api(system, redis) as client:
        t = await ticket_when(client, no, lambda t: t["status"] in ("assigned", "review", "meeting"))
        if t["status"] == "review":
            r = await client.post(f"/api/v1/dispatch/{no}/assign", json={"department": "urban_mgmt"})
            assert r.status_code == 200, r.text
        elif t["status"] == "meeting":
            meeting = await eventually(lambda: meeting_of(client, t["meeting_id"]), timeout=60)
            lead = meeting["summoned"][0]["id"]
            r = await client.post(f"/api/v1/meetings/{t['meeting_id']}/decide", json={"lead": lead})
            assert r.status_code == 200, r.text
        t = await ticket_when(client, no, lambda t: t["status"] == "assigned")
        token = await issue_token(redis, "department", t["department"]["id"])
        r = await client.post(
            f"/api/v1/tickets/{no}/resolve",
            json={"note": "已派人处理完毕"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        return await ticket_when(client, no, lambda t: t["status"] == "surveyed")


async def meeting_of(client: httpx.AsyncClient, mid: str) -> dict | None:
    r = await client.get(f"/api/v1/meetings/{mid}")
    return r.json() if r.status_code == 200 else None


async def test_grid_worker_checks_resolutions_on_the_spot_from_a_phone(
    browser: Browser, redis, system: System
):
    """现场核查: the patrol page lists the grid's resolutions to check; on a 360 px phone the worker
    sends one back as not solved (a missing note refused beside the field, which takes the focus,
    before it is asked to confirm; a photo from the camera), what was done then focused and told to a screen
    reader; and confirms another with a photo without the script."""
    token = await issue_token(redis, "grid_worker", operator="W032", grid="s01c01g02")
    fixed = await resolved_in_grid(system, redis, token, "巡查发现翠竹苑北门路灯不亮，夜间行人看不清台阶")
    broken = await resolved_in_grid(system, redis, token, "巡查发现翠竹苑3号楼前人行道地砖大面积松动翘起")
    phone = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
    context = await browser.new_context(base_url=system.base_url, locale="zh-CN", **phone)
    await listen(context)
    page = await context.new_page()
    asked: list[str] = []

    async def confirm(dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    try:
        await sign_in(page, token)
        to_verify = page.locator("#to-verify")

        async def listed() -> bool:  # the record has both, a few seconds behind
            await page.goto("/console/patrol")
            links = [to_verify.locator(f"a:text-is('{t['ticket_no']}')") for t in (fixed, broken)]
            return all([await link.count() == 1 for link in links])

        await eventually(listed, timeout=60)
        await expect(page.locator("#to-verify-title")).to_contain_text("待核查")
        await accessible(page)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        await shot(page, "patrol-to-verify")

        # Not solved: a note is required; the choice asks first; the ticket goes back to the department.
        await to_verify.locator(f"a:text-is('{broken['ticket_no']}')").click()
        await expect(page.locator("#verify-title")).to_have_text("现场核查")
        await touch_sized(page, "#verify", "#verify-photos-camera")
        await touch_sized(page, "label[for=verify-solved]", "label[for=verify-unsolved]")
        await page.get_by_label("未解决（退回").check()
        await page.locator("#verify").click()
        await expect(page.locator("#verify-note-error")).to_contain_text("现场看到的情况")
        await expect(page.locator("#verify-note")).to_be_focused()
        assert asked == []
        await expect(page.get_by_label("未解决（退回")).to_be_checked()  # the choice kept
        seen = "地砖仍然松动，3号楼前有两处翘起，雨后积水"
        await page.keyboard.type(seen)
        async with page.expect_file_chooser() as chosen:
            await page.locator("#verify-photos-camera").click()
        camera = await chosen.value
        assert await camera.element.get_attribute("capture") == "environment"
        await camera.set_files([photo((120, 100, 60))])
        await expect(page.locator("#verify-photos-taken-state")).to_have_text("已拍1张，将随表单上传")
        await accessible(page)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        await shot(page, "ticket-verify")
        await page.locator("#verify").click()
        dept = broken["department"]["name"]
        await expect(page.locator("#done")).to_contain_text(f"已退回{dept}重新办理")
        # The form is gone: what was done has the focus, which reads it (not announced again).
        await expect(page.locator("#done")).to_be_focused()
        said = (await page.locator("#done").text_content() or "").strip()
        await read_once(page, said, by="focus")
        await expect(page.locator("#status")).to_have_text("已派单")
        await expect(page.locator("#verification")).to_contain_text("未解决，已退回重办（网格员W032，")
        await expect(page.locator("#verification")).to_contain_text(seen)
        await expect(page.locator("ol.history")).to_contain_text(f"网格员W032现场核查未解决：{seen}")
        await loaded(page, "#verification-photos", 1)
        await expect(page.locator("#verify")).to_have_count(0)  # nothing more to check here
        # Asked once: the note missing was refused before the question, not after it was confirmed.
        assert len(asked) == 1, asked
        assert all(f"退回{dept}重新办理" in q for q in asked), asked
        async with await admin_api(system, redis) as client:
            back = await ticket_when(client, broken["ticket_no"], lambda t: t["status"] == "assigned")
        assert (back["department"], back["verification_note"], back["reopens"]) == (
            broken["department"],
            seen,
            1,
        )
    finally:
        await context.close()

    # Without the script, on a phone: confirmed, with a photo from the spot.
    context = await browser.new_context(
        base_url=system.base_url, locale="zh-CN", java_script_enabled=False, **phone
    )
    plain = await context.new_page()
    try:
        await sign_in(plain, token)
        await expect(plain.locator("#locate")).to_be_hidden()  # it needs the script; the grid stands
        await plain.locator(f"#to-verify a:text-is('{fixed['ticket_no']}')").click()
        await expect(plain.locator("#verify-photos-camera")).to_be_hidden()  # the field offers the camera
        await plain.get_by_label("已解决（核查属实）").check()
        await plain.locator("#verify-note").fill("路灯已亮，台阶照得清楚")
        await plain.locator("#verify-photos").set_input_files([photo((200, 200, 90))])
        await plain.locator("#verify").click()
        await expect(plain.locator("#done")).to_contain_text("核查结果已记录：已解决（网格员W032，")
        await expect(plain.locator("#status")).to_have_text("回访中")  # the survey is the resident's
        await expect(plain.locator("#verification")).to_contain_text("路灯已亮，台阶照得清楚")
        await expect(plain.locator("ol.history")).to_contain_text(
            "网格员W032现场核查：已解决（路灯已亮，台阶照得清楚，附照片1张）"
        )
        await expect(plain.locator("#verify")).to_have_count(0)
        assert await plain.evaluate("document.documentElement.scrollWidth") <= 360
        await shot(plain, "ticket-verified")

        async def gone() -> bool:  # both checked: neither waits on the patrol page any more
            await plain.goto("/console/patrol")
            nos = [t["ticket_no"] for t in (fixed, broken)]
            return all([await plain.locator(f"#to-verify a:text-is('{no}')").count() == 0 for no in nos])

        await eventually(gone, timeout=60)
    finally:
        await context.close()


# --- the dispatch desk -------------------------------------------------------------------------


async def test_desk_corrects_a_low_confidence_ticket_in_two_clicks(
    page: Page, redis, system: System, system_city: City
):
    async with await admin_api(system, redis) as client:
        no = await submit(client, "有个事情想反映一下，麻烦你们看看怎么处理", new_phone())
        ticket = await ticket_when(client, no, lambda t: t["status"] == "review")
        await sign_in(page, await issue_token(redis, "admin"))
        await expect(page).to_have_url(re.compile(r"/console/desk$"))
        # The desk's queue is paged: the ticket's own page links to the page that holds its card.
        await page.goto(f"/console/tickets/{no}")
        await page.locator("#to-desk").click()
        card = page.locator(f"#desk-{no}")
        await expect(card).to_be_visible()
        await expect(card.locator(".resident-text")).to_have_text(ticket["text"])
        await accessible(page)
        await shot(page, "desk")
        # No unit is chosen until the desk chooses one: "派往所选单位" alone sends the ticket nowhere.
        await expect(card.locator(f"#dept-{no}")).to_have_value("")
        await card.get_by_role("button", name="派往所选单位").click()
        await expect(page.locator("p.error")).to_contain_text("请先在“其他单位”中选择承办单位")
        # Back on the card, the select to choose from has the focus, marked and described by why.
        await expect(card.locator(f"#dept-{no}")).to_be_focused()
        await expect(card.locator(f"#dept-{no}")).to_have_attribute("aria-invalid", "true")
        await page.goto(f"/console/desk?ticket={no}")
        await expect(card).to_be_visible()
        # Click 1: the second suggested category; click 2: its department.
        choices = card.get_by_role("radio")
        assert await choices.count() >= 2
        await choices.nth(1).click()
        chosen = await choices.nth(1).get_attribute("value")
        department = card.locator("button.dept").first  # the chosen category's, put first
        await expect(department).to_have_attribute("data-category", chosen)
        chosen_department = await department.get_attribute("value")
        # Then a category in 其他分类 that has no button, and the button still pressed: it sends
        # the ticket under the category it names, as its label says, and what was done says so.
        readings = [await c.get_attribute("value") for c in await choices.all()]
        other = next(c for c in system_city.leaf_categories if c not in readings)
        await card.locator(f"#cat-{no}-other").select_option(other)
        named = system_city.category_names(chosen)[-1]
        await expect(department).to_have_text(
            f"{system_city.department_by_id[chosen_department].name}（{named}）"
        )
        await department.click()
        await expect(page.locator("p.ok")).to_contain_text(
            f"（分类：{named}），按所按按钮的分类派出，未采用所选的“{system_city.category_names(other)[-1]}”"
        )
        routed = await ticket_when(client, no, lambda t: t["status"] == "assigned")
    assert routed["category"] == chosen
    assert routed["department"]["id"] == chosen_department
    assert routed["assigned_via"] == "operator"
    await expect(page.locator(f"#desk-{no}")).to_have_count(0)
    await page.goto("/console/meetings")
    await expect(page.locator("h1")).to_have_text("联席会议")
    await accessible(page)
    await shot(page, "meetings")


async def tab_to(page: Page, target, limit: int = 300) -> None:
    """Tab until the focus is on `target` (a locator), as a person without a mouse does."""
    for _ in range(limit):
        if await target.evaluate("el => el === document.activeElement"):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {target}")


async def test_desk_dispatches_from_the_keyboard_and_goes_on_to_the_next_card(
    page: Page, redis, system: System, system_city: City
):
    async with await admin_api(system, redis) as client:
        vague = "有个事情想反映一下，麻烦你们看看怎么处理"  # low confidence: the desk's to check
        nos = [await submit(client, f"{vague}{i}", new_phone()) for i in range(2)]
        for no in nos:
            await ticket_when(client, no, lambda t: t["status"] == "review")
        await sign_in(page, await issue_token(redis, "admin"))
        await page.goto(f"/console/desk?ticket={nos[0]}")
        await expect(page.locator("#desk-keys")).to_contain_text("Tab")
        card = page.locator(f"#desk-{nos[0]}")
        # The card the desk goes on to: the next one on the page (or, for the last, the one before).
        following = await card.evaluate(
            "el => { const n = el.nextElementSibling;"
            " return (n && n.matches('article') ? n : el.previousElementSibling).id; }"
        )
        # To the card by Tab, a category by the arrow keys, a department's button by Tab, Enter.
        # The department Tab reaches first is the one suggested for the category just picked (the
        # second, whose button came second): the ticket does not go where the first category would.
        buttons = card.locator("button.dept")
        suggested = {
            await b.get_attribute("data-category"): (await b.get_attribute("value"), await b.inner_text())
            for b in await buttons.all()
        }
        await tab_to(page, card.locator("h3 a"))
        await tab_to(page, card.locator("input[type=radio]:checked"))
        first = await card.locator("input[type=radio]:checked").get_attribute("value")
        await expect(buttons.first).to_have_attribute("data-category", first)
        await page.keyboard.press("ArrowDown")
        radio = card.locator("input[type=radio]:checked")
        chosen = await radio.get_attribute("value")
        assert chosen != first
        assert chosen in suggested, (chosen, suggested)  # a suggestion with a department of its own
        await expect(radio).to_be_focused()  # the buttons moved, the focus did not
        await expect(buttons.first).to_have_attribute("data-category", chosen)
        chosen_department, label = suggested[chosen]
        await tab_to(page, buttons.first)  # past 其他分类: the first department button Tab reaches
        await expect(buttons.first).to_have_accessible_name(label)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        # What was done names both, the department and the category (which need not be its own).
        department_name = system_city.department_by_id[chosen_department].name
        category = system_city.category_names(chosen)[-1]
        assert label == f"{department_name}（{category}）"
        said = f"工单{nos[0]}已派至{department_name}（分类：{category}）"
        await expect(page.locator("#done")).to_have_text(said)
        await expect(page.locator("#announcer")).to_contain_text(said)
        await read_once(page, said, by="announcer")  # the focus is not on it
        # The focus is on the next card, outlined, so the desk goes on from there.
        next_card = page.locator(f"#{following}")
        await expect(next_card).to_be_focused()
        outline = "el => el.matches(':focus-visible') && getComputedStyle(el).outlineStyle"
        assert await next_card.evaluate(outline) == "solid"
        await expect(page.locator(f"#desk-{nos[0]}")).to_have_count(0)
        await accessible(page)
        routed = await ticket_when(client, nos[0], lambda t: t["status"] == "assigned")
    assert (routed["category"], routed["department"]["id"]) == (chosen, chosen_department)


async def test_desk_buttons_follow_the_grid_chosen_where_the_place_decides_the_department(
    page: Page, redis, system: System
):
    """Garbage is the city's to clear but at 南苑's market, where 光明街道's cleaners do it: choosing
    that grid in 事发网格 turns the garbage button into 光明街道's, 不改 turns it back, and the
    dispatch goes where the button now says."""
    async with await admin_api(system, redis) as client:
        no = await submit(client, "这边垃圾堆了好几天了没人清理，臭得很", new_phone())
        await ticket_when(client, no, lambda t: t["status"] == "review")
        await sign_in(page, await issue_token(redis, "admin"))
        await page.goto(f"/console/desk?ticket={no}")
        card = page.locator(f"#desk-{no}")
        button = card.locator('button.dept[data-category="city.appearance.garbage"]')
        await expect(button).to_have_attribute("value", "urban_mgmt")
        choice = card.locator(f"#grid-{no}")
        await choice.select_option("s03c02g03")
        await expect(button).to_have_attribute("value", "street_s03")
        await expect(button).to_have_text("光明街道办事处（垃圾清运）")
        await choice.select_option("")
        await expect(button).to_have_attribute("value", "urban_mgmt")
        await expect(button).to_have_text("区城市管理委员会（垃圾清运）")
        await choice.select_option("s03c02g03")
        await expect(button).to_have_attribute("value", "street_s03")
        await card.get_by_label("垃圾清运", exact=False).first.check()
        async with page.expect_navigation():
            await button.click()
        await expect(page.locator("#done")).to_contain_text(f"工单{no}已派至光明街道办事处")
        sent = await ticket_when(client, no, lambda t: t["status"] == "assigned")
    assert (sent["department"]["id"], sent["grid"]["grid"]) == ("street_s03", "s03c02g03")


async def test_desk_places_a_ticket_without_a_grid_and_its_grid_worker_finds_it(
    page: Page, browser: Browser, redis, system: System, system_city: City
):
    """A vague address leaves the classifier without a grid: the desk's card says 网格未定位 and
    offers the city's grids by street and community (事发网格). A grid the API refuses comes back
    beside that select, which takes the focus; chosen by keyboard, the grid goes with the dispatch:
    the ticket's page names it as the desk's choice (人工选定), and the grid's worker finds the ticket
    in the grid's latest tickets."""
    grid_id = "s01c01g02"  # the second grid of the list: two ArrowDowns past 暂不选择
    place = f"{system_city.grids[grid_id].street_name}/{system_city.grids[grid_id].full_name}"
    async with await admin_api(system, redis) as client:
        no = await submit(client, "有个事情想反映一下，就在那边，麻烦你们看看怎么处理", new_phone())
        waiting = await ticket_when(client, no, lambda t: t["status"] == "review")
        assert (waiting["grid"] or {}).get("grid") is None
        await sign_in(page, await issue_token(redis, "admin"))
        await page.goto(f"/console/desk?ticket={no}")
        card = page.locator(f"#desk-{no}")
        await expect(card).to_contain_text("网格：未定位")
        choice = card.get_by_label("网格未定位，请按地址选择")
        await expect(choice).to_have_value("")  # none chosen until the desk chooses one
        groups = choice.locator("optgroup")
        await expect(groups.first).to_have_attribute("label", "和平街道/和平里社区")
        await expect(groups).to_have_count(sum(len(s.communities) for s in system_city.district.streets))
        await accessible(page)
        # A grid the city no longer has (a page older than its areas): refused beside the select.
        await choice.evaluate("el => { el.options[1].value = 's09c09g09'; el.selectedIndex = 1; }")
        await card.locator("button.dept").first.click()
        said = "没有编号为“s09c09g09”的网格，请在“事发网格”中按街道、社区选择一个网格"
        await expect(card.locator(f"#assign-error-{no}")).to_have_text(said)
        choice = card.locator(f"#grid-{no}")
        await expect(choice).to_be_focused()
        await expect(choice).to_have_attribute("aria-invalid", "true")
        await expect(choice).to_have_attribute("aria-describedby", f"assign-error-{no}")
        await expect(card.locator(f"#dept-{no}")).not_to_have_attribute("aria-invalid", "true")
        # By keyboard: the grid by the arrow keys, then Tab to the first department, Enter.
        await page.keyboard.press("ArrowDown")
        await page.keyboard.press("ArrowDown")
        await expect(choice).to_have_value(grid_id)
        department = card.locator("button.dept").first
        chosen_department = await department.get_attribute("value")
        await tab_to(page, department)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        await expect(page.locator("#done")).to_contain_text(f"工单{no}已派至")
        # A section scrolled to (the desk's link to 退单工单) clears the line saying what was done,
        # which stays at the top (room added below, as a desk with many cards has).
        await page.evaluate("document.body.style.paddingBottom = '3000px'")
        await page.locator("#returned").evaluate("el => el.scrollIntoView()")
        heading = await page.locator("#returned h2").bounding_box()
        line = await page.locator("#done").bounding_box()
        assert heading is not None
        assert line is not None
        assert heading["y"] >= line["y"] + line["height"], (heading, line)
        placed = await ticket_when(client, no, lambda t: t["status"] == "assigned")
    assert (placed["department"]["id"], placed["grid"]["grid"], placed["grid"]["method"]) == (
        chosen_department,
        grid_id,
        "desk",
    )
    assert (placed["grid"]["community"], placed["grid"]["street"]) == ("s01c01", "s01")
    await page.goto(f"/console/tickets/{no}")
    await expect(page.locator("#ticket-grid")).to_have_text(f"{place}（人工选定）")
    await expect(page.locator("ol.history")).to_contain_text(f"事发网格人工选定为{place}")
    await accessible(page)

    # The grid's worker finds it among the grid's latest tickets (the record's), and opens it.
    worker = await (await browser.new_context(base_url=system.base_url, locale="zh-CN")).new_page()
    try:
        await sign_in(worker, await issue_token(redis, "grid_worker", operator="W041", grid=grid_id))
        await expect(worker).to_have_url(re.compile(r"/console/patrol$"))

        async def listed() -> bool:
            await worker.goto("/console/patrol")
            return await worker.locator(f"#recent a:text-is('{no}')").count() == 1

        await eventually(listed, timeout=60)
        await worker.locator(f"#recent a:text-is('{no}')").click()
        await expect(worker.locator("#ticket-no")).to_have_text(no)
        await expect(worker.locator("#ticket-grid")).to_have_text(f"{place}（人工选定）")
    finally:
        await worker.context.close()


async def test_desk_places_a_routed_ticket_without_a_grid_from_its_page(
    page: Page, redis, system: System, settings: Settings, system_city: City
):
    """A street light with no place found (未定位) is routed by its rule and never waits at the desk.
    Its page offers the desk 事发网格, the city's grids by street and community: none chosen is asked
    for beside the select before anything is sent; a grid the API refuses comes back beside the
    select, which takes the focus; a grid chosen places the ticket, the page then naming the place
    as the desk's choice (人工选定) with the history's line, its department and status as they were."""
    no = await classified_streetlight(settings, system_city, None)  # routed by its rule, without a grid
    grid_id = "s02c01g02"
    place = f"{system_city.grids[grid_id].street_name}/{system_city.grids[grid_id].full_name}"
    async with await admin_api(system, redis) as client:
        routed = await ticket_when(client, no, lambda t: t["status"] == "assigned")
        assert (routed["grid"] or {}).get("grid") is None
        await sign_in(page, await issue_token(redis, "admin"))
        await page.goto(f"/console/tickets/{no}")
        await expect(page.locator("#ticket-grid")).to_have_text("未定位")
        choice = page.get_by_role("combobox", name="事发网格", exact=True)
        await expect(choice).to_have_value("")
        groups = choice.locator("optgroup")
        await expect(groups.first).to_have_attribute("label", "和平街道/和平里社区")
        await expect(groups).to_have_count(sum(len(s.communities) for s in system_city.district.streets))
        await accessible(page)
        # None chosen: asked for beside the select, in the server's words, nothing sent.
        await expect(page.locator("#place")).to_have_text("设定事发网格")  # none yet: nothing to change
        await page.locator("#place").click()
        await expect(page.locator("#place-grid-error")).to_have_text(REQUIRED["place.grid"])
        await expect(choice).to_be_focused()
        assert page.url.endswith(f"/console/tickets/{no}")
        # A grid the city no longer has (a page older than its areas): refused beside the select.
        await choice.evaluate("el => { el.options[1].value = 's09c09g09'; el.selectedIndex = 1; }")
        async with page.expect_navigation():
            await page.locator("#place").click()
        said = "没有编号为“s09c09g09”的网格，请在“事发网格”中按街道、社区选择一个网格"
        await expect(page.locator("#place-grid-error")).to_have_text(said)
        choice = page.locator("#place-grid")
        await expect(choice).to_be_focused()
        await expect(choice).to_have_attribute("aria-invalid", "true")
        await expect(choice).to_have_attribute("aria-describedby", "place-grid-error")
        await accessible(page)
        await shot(page, "ticket-place-refused")
        await choice.select_option(grid_id)
        async with page.expect_navigation():
            await page.locator("#place").click()
        await expect(page.locator("#done")).to_contain_text(f"事发网格已更新为{place}")
        await expect(page.locator("#ticket-grid")).to_have_text(f"{place}（人工选定）")
        line = f"事发网格人工选定为{place}，原为未定位（12345派单中心）"
        await expect(page.locator("ol.history")).to_contain_text(line)
        await accessible(page)
        await shot(page, "ticket-placed")
        placed = await ticket_when(client, no, lambda t: (t["grid"] or {}).get("grid") == grid_id)
    assert (placed["status"], placed["department"]) == (routed["status"], routed["department"])
    assert (placed["grid"]["community"], placed["grid"]["street"], placed["grid"]["method"]) == (
        "s02c01",
        "s02",
        "desk",
    )


async def test_grid_worker_asks_to_correct_the_grid_and_the_desk_approves_it_from_the_desk(
    page: Page, browser: Browser, redis, system: System, settings: Settings, system_city: City
):
    """申请更正事发网格: the worker of a ticket's grid finds on the spot that the street light is in the
    next community's grid. On the ticket's page it chooses that grid and says what it saw: with none
    chosen it is asked for beside the select, which takes the focus; sent, the page says the request
    waits. The desk finds it on /console/desk under 事发网格更正申请 (the current grid, the grid asked
    for, the worker, the reason) and approves it (同意): the ticket is placed in that grid."""
    no = await classified_streetlight(settings, system_city, "s01c01g01")  # routed by its rule
    asked = system_city.grids["s02c01g02"]
    place = f"{asked.street_name}/{asked.full_name}"
    seen = "现场核实路灯在建设社区小区门口，不在和平里"
    async with await admin_api(system, redis) as client:
        await ticket_when(client, no, lambda t: t["status"] == "assigned")
        await sign_in(page, await issue_token(redis, "grid_worker", operator="W091", grid="s01c01g01"))
        await page.goto(f"/console/tickets/{no}")
        choice = page.get_by_role("combobox", name="问题实际所在网格")
        await expect(choice).to_have_value("")
        # None chosen: asked for beside the select, in the console's words, nothing sent.
        await page.locator("#request-place-reason").fill(seen)
        await page.locator("#request-place").click()
        await expect(page.locator("#request_place-grid-error")).to_have_text(REQUIRED["request_place.grid"])
        await expect(choice).to_be_focused()
        await choice.select_option("s02c01g02")
        async with page.expect_navigation():
            await page.locator("#request-place").click()
        await expect(page.locator("#done")).to_contain_text("更正申请已提交，等待派单中心审核")
        await expect(page.locator("#place-request")).to_contain_text(
            f"网格员W091申请将事发网格更正为{place}：{seen}"
        )
        await expect(page.locator("#request-place")).to_have_count(0)  # one request at a time
        await accessible(page)
        await shot(page, "ticket-place-requested")

        desk = await (await browser.new_context(base_url=system.base_url, locale="zh-CN")).new_page()
        try:
            await sign_in(desk, await issue_token(redis, "admin"))
            await desk.goto("/console/desk")
            card = desk.locator(f"#placereq-{no}")
            await expect(card).to_contain_text("现事发网格：和平街道/和平里社区第一网格")
            await expect(card).to_contain_text(f"申请更正为：{place}")
            await expect(card).to_contain_text(f"网格员W091现场核实：{seen}")
            await accessible(desk)
            await shot(desk, "desk-place-requests")
            async with desk.expect_navigation():
                await desk.locator(f"#placereq-approve-{no}").click()
            await expect(desk.locator("#done")).to_contain_text(f"工单{no}的事发网格更正申请已同意")
            await expect(desk.locator(f"#placereq-{no}")).to_have_count(0)
        finally:
            await desk.context.close()
        placed = await ticket_when(client, no, lambda t: (t["grid"] or {}).get("grid") == "s02c01g02")
    assert (placed["status"], placed["place_request"]) == ("assigned", None)
    assert "同意网格员W091的更正申请" in placed["history"][-1]["note"]


async def refused_beside(page: Page, card: Locator, field: Locator, error_id: str, said: str) -> None:
    """A desk card's verdict refused for want of a reason: `said` beside the card's `field` (not at
    the top of the page), which takes the focus, marked invalid and described by it."""
    await expect(page.locator(f"#{error_id}")).to_have_text(said)
    await expect(card.locator(f"#{error_id}")).to_have_count(1)  # on its card
    await expect(page.locator("#desk-error")).to_have_count(0)  # not at the top of the page
    await expect(field).to_be_focused()
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_have_attribute("aria-describedby", error_id)
    await accessible(page)


async def test_the_desk_refuses_a_grid_workers_request_and_a_missing_reason_is_asked_for_on_its_card(
    page: Page, redis, system: System, settings: Settings, system_city: City
):
    """不同意 a grid worker's request to correct the grid: with no reason the desk comes back to the
    request's card, the reason asked for beside its field (not at the top of the page), which takes
    the focus, marked and described by it; with one, the request is dropped and the ticket's history
    says who refused which grid and why."""
    no = await classified_streetlight(settings, system_city, "s01c01g01")  # routed by its rule
    why = "路灯在和平里社区一侧，属本网格"
    token = await issue_token(redis, "grid_worker", operator="W092", grid="s01c01g01")
    async with await admin_api(system, redis) as client:
        await ticket_when(client, no, lambda t: t["status"] == "assigned")
        requested = await client.post(
            f"/api/v1/tickets/{no}/place-request",
            json={"grid": "s02c01g02", "reason": "现场核实路灯在建设社区小区门口"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert requested.status_code == 200, requested.text
        await sign_in(page, await issue_token(redis, "admin"))
        await page.goto("/console/desk")
        card = page.locator(f"#placereq-{no}")
        reason = card.get_by_role("textbox", name="不同意的理由（网格员将看到）")
        async with page.expect_navigation():
            await card.get_by_role("button", name="不同意", exact=True).click()
        await refused_beside(
            page, card, reason, f"placereq-refuse-{no}-error", REQUIRED["decide_place.reason"]
        )
        await shot(page, "desk-place-request-reason-wanted")
        await reason.fill(why)
        async with page.expect_navigation():
            await card.get_by_role("button", name="不同意", exact=True).click()
        await expect(page.locator("#done")).to_contain_text(f"工单{no}的事发网格更正申请未同意，已告知网格员")
        await expect(page.locator(f"#placereq-{no}")).to_have_count(0)
        await page.goto(f"/console/tickets/{no}")
        place = system_city.place_name("s02c01g02")
        line = f"12345派单中心不同意将事发网格更正为{place}（网格员W092申请）：{why}"
        await expect(page.locator("ol.history")).to_contain_text(line)
        refused = await ticket_when(client, no, lambda t: t["place_request"] is None)
    assert (refused["status"], (refused["grid"] or {}).get("grid")) == ("assigned", "s01c01g01")


async def test_the_desk_refuses_an_extension_only_with_a_reason_which_the_department_reads(
    page: Page, redis, system: System, settings: Settings, system_city: City
):
    """驳回 a department's extension request: with no reason the desk comes back to the request's
    card, the reason asked for beside its field, which takes the focus, marked and described by it;
    with one, the deadline stays and the ticket's history says the department's reason and the
    desk's apart."""
    no = await classified_streetlight(settings, system_city, "s01c01g01")  # routed by its rule
    why = "灯杆库存充足，请按原时限办结"
    dept = {"Authorization": f"Bearer {await issue_token(redis, 'department', 'urban_mgmt')}"}
    async with await admin_api(system, redis) as client:
        await ticket_when(client, no, lambda t: t["status"] == "assigned")
        assert (await client.post(f"/api/v1/tickets/{no}/accept", headers=dept)).status_code == 200
        asked = await client.post(
            f"/api/v1/tickets/{no}/extend", json={"days": 3, "reason": "需要采购灯杆"}, headers=dept
        )
        assert asked.status_code == 200, asked.text
        due = asked.json()["resolve_by"]
        await sign_in(page, await issue_token(redis, "admin"))
        await page.goto("/console/desk")
        card = page.locator(f"#ext-{no}")
        reason = card.get_by_role("textbox", name="驳回的理由（承办单位将看到）")
        await expect(reason).to_have_attribute("aria-required", "true")
        async with page.expect_navigation():
            await card.get_by_role("button", name="驳回", exact=True).click()
        await refused_beside(
            page, card, reason, f"ext-refuse-{no}-error", REQUIRED["decide_extension.reason"]
        )
        await reason.fill(why)
        async with page.expect_navigation():
            await card.get_by_role("button", name="驳回", exact=True).click()
        await expect(page.locator("#done")).to_contain_text(f"工单{no}的延期申请已驳回，已告知承办单位")
        await expect(page.locator(f"#ext-{no}")).to_have_count(0)
        await page.goto(f"/console/tickets/{no}")
        line = f"延期未批准：区城市管理委员会，3个工作日（需要采购灯杆），驳回理由：{why}"
        await expect(page.locator("ol.history")).to_contain_text(line)
        refused = await ticket_when(client, no, lambda t: t["extension_request"] is None)
    assert (refused["status"], refused["resolve_by"]) == ("accepted", due)


async def test_desk_reads_where_a_patrol_report_and_its_address_disagree_and_picks_the_grid(
    page: Page, browser: Browser, redis, system: System, system_city: City
):
    """定位与地址不一致: the grid worker's preview says so as the address is typed, and a report sent
    as it is (the address a compound of the next grid) waits at the desk. Its card and its page say
    both grids by name, the card's 事发网格 described by it; the desk picks the address's grid by
    keyboard and dispatches it, and the page then names the place the desk chose (人工选定), the
    disagreement settled."""
    own, named = system_city.grids["s01c01g02"], system_city.grids["s01c01g01"]
    said = f"上报网格与地址不一致：网格员所属{own.full_name}，地址在{named.full_name}"
    token = await issue_token(redis, "grid_worker", operator="W052", grid="s01c01g02")
    worker = {"Authorization": f"Bearer {token}"}
    text = "巡查发现小区门口一盏路灯灯杆倾斜，灯罩脱落，夜间不亮，存在安全隐患"
    patrol = await (await browser.new_context(base_url=system.base_url, locale="zh-CN")).new_page()
    try:
        await sign_in(patrol, token)
        await expect(patrol).to_have_url(re.compile(r"/console/patrol$"))
        await patrol.locator("#text").fill(text)
        await patrol.locator("#address").fill("和平里小区3号楼")
        await expect(patrol.locator("#pv-grid-apart")).to_have_text(
            f"{said}，请核实地址；按原样上报的，由派单中心确定事发网格", timeout=15_000
        )
    finally:
        await patrol.context.close()
    async with await admin_api(system, redis) as client:
        r = await client.post(
            "/api/v1/appeals", json={"text": text, "address": "和平里小区3号楼"}, headers=worker
        )
        assert r.status_code == 201, r.text
        no = r.json()["ticket_no"]
        await ticket_when(client, no, lambda t: t["status"] == "review")
        await sign_in(page, await issue_token(redis, "admin"))
        await page.goto(f"/console/tickets/{no}")
        await expect(page.locator("#grid-apart")).to_have_text(f"{said}，派单时请在“事发网格”中确认")
        await page.goto(f"/console/desk?ticket={no}")
        card = page.locator(f"#desk-{no}")
        await expect(card.locator(f"#apart-{no}")).to_have_text(f"{said}，请核实后在“事发网格”中选定")
        choice = card.locator(f"#grid-{no}")
        await expect(choice).to_have_attribute("aria-describedby", f"apart-{no}")
        await expect(choice).to_have_accessible_description(f"{said}，请核实后在“事发网格”中选定")
        await accessible(page)
        # By keyboard: the select focused, the first grid (和平里社区第一网格: the address's), Tab, Enter.
        await choice.focus()
        await page.keyboard.press("ArrowDown")
        await expect(choice).to_have_value("s01c01g01")
        department = card.locator("button.dept").first
        await tab_to(page, department)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        await expect(page.locator("#done")).to_contain_text(f"工单{no}已派至")
        placed = await ticket_when(client, no, lambda t: t["status"] == "assigned")
    assert (placed["grid"]["grid"], placed["grid"]["method"]) == ("s01c01g01", "desk")
    await page.goto(f"/console/tickets/{no}")
    await expect(page.locator("#ticket-grid")).to_have_text(
        f"{named.street_name}/{named.full_name}（人工选定）"
    )
    await expect(page.locator("#grid-apart")).to_have_count(0)


async def test_the_lead_street_office_finds_the_meeting_it_is_summoned_to_and_checks_in(
    page: Page, redis, system: System, settings: Settings, system_city: City
):
    """吹哨报到: a joint meeting about a ticket another department holds (whose street light it is
    is contested); the street office that leads it holds none of its tickets, yet its menu counts
    the meeting, /console/meetings shows it, and it checks in there. While the meeting decides, the
    ticket's page names no department as its 承办单位; once decided, the meeting's page says the
    precedent it set, and the next appeal of its category in its grid says in its history that the
    meeting sent it to its lead."""
    no = f"20261125-{random.randint(900000, 999999)}"
    contested = classified(
        system_city,
        "city.facility.streetlight",
        "s02c02g03",
        no=no,
        at=datetime.now(UTC),
        confidence=0.55,
        second=("utility.power", 0.5),
    )
    await send_classified(settings, [contested])
    async with await admin_api(system, redis) as client:
        held = await ticket_when(client, no, lambda t: t["status"] == "meeting")
        mid = held["meeting_id"]
        meeting = await eventually(lambda: meeting_of(client, mid), timeout=60)
    street = system_city.department_by_id["street_s02"].name
    assert meeting["lead_street"] == "street_s02"
    assert held["department"]["id"] != "street_s02"  # it holds none of the meeting's tickets

    await sign_in(page, await issue_token(redis, "department", "street_s02"))
    await page.locator("nav a[href='/console/meetings']").click()
    card = page.locator(f"#meeting-{mid}")
    await expect(card).to_contain_text(f"{street}：未报到")
    await expect(card.locator("a", has_text=no)).to_be_visible()
    waiting = await meetings_to_check_in(page)
    assert waiting >= 1  # the menu counts it, on every page
    await accessible(page)
    await shot(page, "meetings-department")
    await card.get_by_role("button", name="报到").click()
    # What came of it, in the meeting's card, focused and so read out (once).
    await expect(card.locator("#meeting-done")).to_have_text(f"已在联席会议{mid}报到")
    await expect(card.locator("#meeting-done")).to_be_focused()
    await read_once(page, f"已在联席会议{mid}报到", by="focus")
    await expect(page.locator(f"#checked-in-{mid}")).to_have_text("本单位已报到")
    await expect(card).to_contain_text(f"{street}：已报到")
    await expect(card.get_by_role("button", name="报到")).to_have_count(0)
    assert await meetings_to_check_in(page) == waiting - 1
    # It reads the case it is summoned about, and is told who handles it.
    await card.locator("a", has_text=no).click()
    await expect(page.locator("#ticket-no")).to_have_text(no)
    await expect(page.locator("#summoned-only")).to_contain_text("由承办单位办理")
    await expect(page.locator("#accept")).to_have_count(0)
    # The department the ticket still names is not its lead: the meeting decides, and is named.
    await expect(page.locator("#ticket-department")).to_have_text(f"待会议确定（联席会议工单{no}）")

    # The desk reads the meeting by what it is about (its id is a hash), and its decision asks
    # first, naming the department chosen; called off here, the meeting stays open.
    await sign_in(page, await issue_token(redis, "admin"))
    await page.goto(f"/console/meetings/{mid}")
    card = page.locator(f"#meeting-{mid}")
    await expect(card.locator("h2")).to_contain_text(f"工单{no} · ")
    asked: list[str] = []

    def noted(dialog) -> None:
        asked.append(dialog.message)

    page.on("dialog", noted)
    # No lead chosen: refused beside the field in the console's words, before any question.
    await card.get_by_role("button", name="记录决定").click()
    await expect(card.locator(f"#lead-{mid}-error")).to_have_text("请选择主办单位（参会单位之一）")
    await expect(card.locator(f"#lead-{mid}")).to_be_focused()
    assert asked == []
    page.remove_listener("dialog", noted)
    await card.locator(f"#lead-{mid}").select_option("street_s02")

    async def call_off(dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", call_off)
    await card.get_by_role("button", name="记录决定").click()

    async def said() -> list[str]:
        return asked

    assert (await eventually(said, timeout=10))[0].startswith(f"确定由{street}主办吗？")
    await expect(card.get_by_role("button", name="记录决定")).to_be_visible()
    # Confirmed, the decision is recorded and the desk is back on the meeting's own page (not the
    # list), which shows the decision, what came of it focused in the card.
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await card.get_by_role("button", name="记录决定").click()
    await expect(card.locator("#meeting-done")).to_contain_text(f"联席会议{mid}已记录决定：由{street}主办")
    await expect(page).to_have_url(re.compile(rf"/console/meetings/{mid}\?"))
    await expect(card.locator("#meeting-done")).to_be_focused()
    await expect(card.locator(".lead-decided")).to_contain_text(f"主办单位：{street}")
    await expect(card.get_by_role("button", name="记录决定")).to_have_count(0)
    # 先例: the lead takes the next confident streetlights of this grid for the city's 30 days.
    days = system_city.sla.supervision.meeting_precedent_days
    async with await admin_api(system, redis) as client:
        decided = await meeting_of(client, mid)
    assert decided is not None
    until = (datetime.fromisoformat(decided["decided_at"]) + timedelta(days=days)).astimezone(
        ZoneInfo(settings.timezone)
    )
    await expect(card.locator(f"#precedent-{mid}")).to_have_text(
        f"先例：此后{days:g}天内本网格同类诉求直接派给{street}（至{until:%Y-%m-%d}）"
    )
    later = f"20261125-{random.randint(900000, 999999)}"
    at = datetime.now(UTC)
    streetlight = classified(system_city, "city.facility.streetlight", "s02c02g03", no=later, at=at)
    await send_classified(settings, [streetlight])
    async with await admin_api(system, redis) as client:
        routed = await ticket_when(client, later, lambda t: t["status"] == "assigned")
    assert routed["department"]["id"] == "street_s02"
    await page.goto(f"/console/tickets/{later}")
    await expect(page.locator("ol.history")).to_contain_text(
        f"派单至{street}（按权责清单）：按联席会议（会议编号{mid}）确定的主办单位派单：{street}"
    )


async def meetings_to_check_in(page: Page) -> int:
    """How many meetings the menu says wait for the department to check in (联席会议 (N); none: 0)."""
    count = page.locator("#meetings-to-check-in")
    return int(re.sub(r"\D", "", await count.text_content() or "")) if await count.count() else 0


async def test_desk_redispatches_a_departments_ticket_and_its_queue_lets_it_go(
    page: Page, browser: Browser, redis, system: System, system_city
):
    """改派: the desk, on a ticket's page, moves it from the department that holds it to another,
    with a reason, after a confirmation; the old department's open queue drops it by itself."""
    async with await admin_api(system, redis) as client:
        no = await submit(client, "和平里小区门口的路灯坏了好几天了，晚上很黑", new_phone(), "和平里小区")
        ticket = await ticket_when(client, no, lambda t: t["status"] == "assigned")
    old = ticket["department"]
    target = next(d for d in ("power", "water") if d != old["id"])
    target_name = system_city.department_by_id[target].name

    holder = await (
        await browser.new_context(base_url=system.base_url, viewport={"width": 1280, "height": 900})
    ).new_page()
    await sign_in(holder, await issue_token(redis, "department", old["id"]))
    await expect(holder.locator("#queue")).to_have_attribute("data-live-state", "ready", timeout=30_000)
    await expect(holder.locator(f"a[href='/console/tickets/{no}']")).to_be_visible()

    asked: list[str] = []

    async def confirm(dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await sign_in(page, await issue_token(redis, "admin"))
    await page.goto(f"/console/tickets/{no}")
    choice = page.locator("#redispatch-department")
    await expect(choice).to_have_value("")  # no department chosen until the desk chooses one
    assert await choice.locator(f"option[value='{old['id']}']").count() == 0  # not where it is
    await choice.select_option(target)
    await page.locator("#redispatch-reason").fill("错了")
    await page.locator("#redispatch").click()
    await expect(page.locator("#redispatch-reason-error")).to_contain_text("请填写改派原因")
    await expect(page.locator("#redispatch-reason")).to_be_focused()
    await expect(choice).to_have_value(target)  # what was chosen stays chosen
    await page.locator("#redispatch-reason").fill("居民来电反映路灯由供电线路故障引起")
    await page.locator("#redispatch").click()
    await expect(page.locator("#done")).to_contain_text(f"已改派至{target_name}")
    await expect(page.locator("#status")).to_have_text("已派单")
    await expect(page.locator("dl.facts")).to_contain_text(target_name)
    await expect(page.locator("ol.history")).to_contain_text(
        "派单中心改派：居民来电反映路灯由供电线路故障引起"
    )
    assert asked
    assert all(f"{old['name']}将不再承办此工单" in q for q in asked)  # asked each time, naming who loses it
    await accessible(page)
    await shot(page, "ticket-redispatch")

    # The old department's open queue lets it go without a reload.
    await expect(holder.locator(f"a[href='/console/tickets/{no}']")).to_have_count(0, timeout=30_000)
    await expect(holder.locator("#live-news")).to_contain_text(f"工单已转出本单位：{no}")
    await holder.context.close()


async def test_desk_merges_a_duplicate_into_the_ticket_being_handled_and_both_pages_link(
    page: Page, redis, system: System
):
    """并案: a duplicate its department returned as such waits on the desk, whose card says what is
    being handled nearby and links to the duplicate's page. There the desk picks the main ticket
    among its grid's and category's open tickets, gives the reason, confirms a question naming both;
    the duplicate closes and the two pages link to each other. Then the main ticket, with its
    duplicate, is merged into a third by a typed number: the page names the ticket that number is
    before anything is done (and refuses a number that cannot take it, in words), and the
    duplicate follows to the third."""
    async with await admin_api(system, redis) as client:
        text = "和平里小区8号楼西侧的路灯坏了三天了，晚上很黑，老人出门不方便"
        main = await submit(client, text, new_phone(), "和平里小区")
        await ticket_when(client, main, lambda t: t["status"] in ("assigned", "review"))
        dup = await submit(
            client, "和平里小区8号楼西侧路灯坏了三天，晚上漆黑一片，请尽快修", new_phone(), "和平里小区"
        )
        held = await ticket_when(client, dup, lambda t: t["status"] in ("assigned", "review"))
        returner = held["department"] if held["status"] == "assigned" else None
        if returner:  # its department returns it as a duplicate: to the desk
            token = await issue_token(redis, "department", returner["id"])
            r = await client.post(
                f"/api/v1/tickets/{dup}/return",
                json={"reason": "duplicate", "note": f"与工单{main}重复"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200, r.text
        await ticket_when(client, dup, lambda t: t["status"] == "review")
        third = await submit(
            client, "和平里小区8号楼西边路灯不亮了，请派人来修一下", new_phone(), "和平里小区"
        )
        third_ticket = await ticket_when(client, third, lambda t: t["status"] in ("assigned", "review"))

    asked: list[str] = []

    async def confirm(dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await sign_in(page, await issue_token(redis, "admin"))
    # Its card on the desk says the tickets of its grid and category are being handled (the page's
    # cards asked about at once; the most similar named first, which other tests' tickets of the
    # grid may be), and links to its page's 并案.
    await page.goto(f"/console/desk?ticket={dup}")
    if returner:  # the card says who returned it and why, and offers that department only in 其他单位
        card = page.locator(f"#desk-{dup}")
        await expect(card.locator(f"#returns-{dup}")).to_contain_text(
            f"{returner['name']}退单：重复工单；说明：与工单{main}重复"
        )
        await expect(card.locator(f"#returned-hint-{dup}")).to_contain_text(f"{returner['name']}已退回此工单")
        await expect(card.locator(f"button.dept[value='{returner['id']}']")).to_have_count(0)
        await expect(card.locator(f"#dept-{dup} option[value='{returner['id']}']")).to_have_text(
            f"{returner['name']}（已退回）"
        )
    nearby = page.locator(f"#nearby-{dup}")
    await expect(nearby).to_contain_text("同网格、同分类正在办理")
    await expect(nearby.locator("a[href^='/console/tickets/']").first).to_have_text(
        re.compile(r"工单\d{8}-\d{6}")
    )
    await nearby.get_by_role("link", name=f"将工单{dup}并案").click()
    await expect(page).to_have_url(re.compile(rf"/console/tickets/{dup}#merge-title$"))
    offered = page.locator(f"input[name='into'][value='{main}']")
    await expect(offered).to_have_count(1)  # the same grid and category, being handled
    await expect(page.locator(f"input[name='into'][value='{dup}']")).to_have_count(0)  # not itself
    await page.locator("#merge-reason").fill("同一路灯邻居重复反映")
    await page.locator("#merge").click()  # no main ticket chosen: said beside the field
    await expect(page.locator("#merge-into-error")).to_contain_text("请选择或填写主件的工单号")
    await offered.check()
    await page.locator("#merge-reason").fill("重复")
    await page.locator("#merge").click()
    await expect(page.locator("#merge-reason-error")).to_contain_text("请填写并案原因")
    await expect(page.locator("#merge-reason")).to_be_focused()
    await expect(offered).to_be_checked()  # what was chosen stays chosen
    await page.locator("#merge-reason").fill("同一盏路灯，邻居重复反映")
    await page.locator("#merge").click()
    await expect(page.locator("#done")).to_contain_text(f"工单{dup}已并入工单{main}合并办理")
    await expect(page.locator("#status")).to_have_text("已关闭")
    await expect(page.locator(f"#merged-into a[href='/console/tickets/{main}']")).to_have_text(main)
    await expect(page.locator("ol.history")).to_contain_text(
        f"并入工单{main}合并办理：同一盏路灯，邻居重复反映"
    )
    await expect(page.locator("#merge")).to_have_count(0)  # closed: nothing more to merge
    assert asked
    assert all(f"确定将工单{dup}并入" in q for q in asked)  # asked each time
    assert f"确定将工单{dup}并入工单{main}合并办理吗" in asked[-1]  # the main ticket chosen: both named
    await accessible(page)
    await shot(page, "ticket-merge")

    await page.locator(f"#merged-into a[href='/console/tickets/{main}']").click()
    await expect(page.locator(f"#merged a[href='/console/tickets/{dup}']")).to_have_text(f"工单{dup}")
    await expect(page.locator("#merged")).to_contain_text("共2位市民反映")
    await expect(page.locator("ol.history")).to_contain_text(f"并案：工单{dup}并入本工单")
    await accessible(page)

    # The main ticket, with its duplicate, merged into a third by a typed number. A number that
    # cannot take it is refused in words at once (no question asked, nothing confirmed).
    before = len(asked)
    typed = page.locator("#merge-into-typed")
    await page.locator("#merge-reason").fill("同一盏路灯，邻居重复反映")
    for wrong, words in (
        ("20991231-000001", "工单20991231-000001不存在，请核对主件的工单号"),
        (dup, "两张工单不能互相并入"),  # its own duplicate
    ):
        await typed.fill(wrong)
        await page.locator("#merge").click()
        await expect(page.locator("#merge-into-error")).to_contain_text(words)
        await expect(page.locator("#merge-confirm")).to_have_count(0)
        await expect(typed).to_have_value(wrong)  # kept, to correct
    await typed.fill(third)
    await page.locator("#merge").click()
    # The confirmation names both tickets, the main one by what it is; nothing is done yet.
    confirm = page.locator("#merge-confirm")
    await expect(confirm).to_contain_text(f"将工单{main}并入工单{third}（")
    for fact in (third_ticket["department"]["name"], third_ticket["status_name"], "和平里小区8号楼西边路灯"):
        await expect(confirm).to_contain_text(fact)
    await expect(page.locator("#merge-confirm-moved")).to_contain_text(f"工单{dup}随同并入工单{third}")
    await expect(page.locator("#status")).not_to_have_text("已关闭")
    assert len(asked) == before  # the page asked, not the browser
    await accessible(page)
    await shot(page, "ticket-merge-confirm")
    await page.locator("#merge-confirmed").click()
    await expect(page.locator("#done")).to_contain_text(f"工单{main}已并入工单{third}合并办理")
    await expect(page.locator(f"#merged-into a[href='/console/tickets/{third}']")).to_have_text(third)
    await expect(page.locator("#merged")).to_have_count(0)  # its duplicate moved on with it
    await page.locator(f"#merged-into a[href='/console/tickets/{third}']").click()
    await expect(page.locator("#merged")).to_contain_text("共3位市民反映")
    for no in (main, dup):
        await expect(page.locator(f"#merged a[href='/console/tickets/{no}']")).to_have_text(f"工单{no}")
    await page.goto(f"/console/tickets/{dup}")
    await expect(page.locator(f"#merged-into a[href='/console/tickets/{third}']")).to_have_text(third)
    await expect(page.locator("ol.history")).to_contain_text(f"随工单{main}并入工单{third}合并办理")


async def test_a_department_refers_a_dispute_to_mediation_and_the_mediator_records_the_agreement(
    page: Page, browser: Browser, redis, system: System, system_city
):
    """转人民调解: the department holding a neighbours' dispute refers it from the ticket's page, with
    a reason, after a confirmation, and is told in its queue; the street's committee finds it in its
    queue and resolves it with 达成协议 and the terms (missing terms refused beside the field); the
    ticket's page shows the outcome and the agreement."""
    async with await admin_api(system, redis) as client:
        no = await submit(
            client,
            "和平里小区3号楼楼上邻居每天深夜拖动家具、大声放音乐，噪音扰民，上门沟通还吵了起来",
            new_phone(),
            "和平里小区",
        )
        ticket = await ticket_when(client, no, lambda t: t["status"] in ("assigned", "review"))
        if ticket["status"] == "review":  # the classifier was unsure: the desk dispatches it
            r = await client.post(f"/api/v1/dispatch/{no}/assign", json={"department": "environment"})
            assert r.status_code == 200, r.text
            ticket = r.json()
    holder, street = ticket["department"], system_city.grids[ticket["grid"]["grid"]].street_id
    committee = next(d for d in system_city.departments if d.kind == "mediation" and d.street == street)

    asked: list[str] = []

    async def confirm(dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await sign_in(page, await issue_token(redis, "department", holder["id"]))
    await page.goto(f"/console/tickets/{no}")
    await page.locator("#mediate-reason").fill("纠纷")
    await page.locator("#mediate").click()
    await expect(page.locator("#mediate-reason-error")).to_contain_text("请填写转人民调解的原因")
    await expect(page.locator("#mediate-reason")).to_be_focused()
    await page.locator("#mediate-reason").fill("楼上楼下因深夜噪音多次争吵，属邻里纠纷")
    await page.locator("#mediate").click()
    await expect(page.locator("#done")).to_contain_text(f"工单{no}已转{committee.name}调解")
    assert asked
    assert all(f"确定转{committee.name}调解吗" in q for q in asked)
    await accessible(page)

    mediator = await (
        await browser.new_context(base_url=system.base_url, viewport={"width": 1280, "height": 900})
    ).new_page()
    mediator.on("dialog", confirm)
    await sign_in(mediator, await issue_token(redis, "department", committee.id))
    await mediator.locator(f"a[href='/console/tickets/{no}']").click()
    await expect(mediator.locator("ol.history")).to_contain_text(
        f"{holder['name']}转{committee.name}调解：楼上楼下因深夜噪音多次争吵"
    )
    await expect(mediator.locator("#mediate")).to_have_count(0)  # with the committee already
    await mediator.locator("#resolve-agreed").check()
    await mediator.locator("#resolve-note").fill("调解员分别听取双方意见后组织面对面调解")
    await mediator.locator("#resolve").click()
    agreement = mediator.locator("#resolve-agreement")
    await expect(mediator.locator("[id='resolve-mediation.agreement-error']")).to_contain_text(
        "请填写协议内容"
    )
    await expect(agreement).to_be_focused()
    await expect(mediator.locator("#resolve-agreed")).to_be_checked()  # what was chosen stays chosen
    terms = "楼上住户22时后不再大声放音乐，家具加装防噪垫；双方互不追究此前争执"
    await agreement.fill(terms)
    await mediator.locator("#resolve").click()
    await expect(mediator.locator("#status")).to_have_text(RESOLVED)
    await expect(mediator.locator("#mediation-outcome")).to_have_text("调解成功，达成协议")
    await expect(mediator.locator("#mediation-agreement")).to_have_text(terms)
    await expect(mediator.locator("ol.history")).to_contain_text(f"调解成功，达成协议（协议：{terms}）")
    await accessible(mediator)
    await shot(mediator, "ticket-mediation")
    await mediator.context.close()


# --- departments, the survey and the dashboard --------------------------------------------------


async def test_department_accepts_and_resolves_and_the_dashboard_moves_live(
    page: Page, browser: Browser, redis, system: System, system_city
):
    phone = new_phone()
    async with await admin_api(system, redis) as client:
        no = await submit(client, "建设路的路灯坏了好几天了，晚上走路很危险" + HOSTILE, phone, "和平里小区")
        ticket = await ticket_when(client, no, lambda t: t["status"] == "assigned")
        dept = ticket["department"]["id"]

        await sign_in(page, await issue_token(redis, "department", dept))
        await expect(page).to_have_url(re.compile(r"/console/department$"))
        await expect(page.locator(".who")).to_contain_text(ticket["department"]["name"])  # not its id
        await expect(page.locator(f"a[href='/console/tickets/{no}']")).to_be_visible()
        asked: list[str] = []  # what the confirmations asked; each is accepted

        async def confirm(dialog) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.on("dialog", confirm)
        # A new ticket for the department appears in the open queue without a reload.
        await expect(page.locator("#queue")).to_have_attribute("data-live-state", "ready", timeout=30_000)
        await page.evaluate("window.__same_page = true")
        second = await submit(client, "建设路路灯也不亮了，整条街都是黑的", new_phone(), "和平里小区")
        await expect(page.locator(f"a[href='/console/tickets/{second}']")).to_be_visible(timeout=30_000)
        await expect(page.locator("#live-news")).to_contain_text(second)
        assert await page.evaluate("window.__same_page === true")
        # The grid filter offers the grids by name (staff do not know their codes).
        grid = ticket["grid"]["grid"]
        await page.locator("#f-grid").select_option(grid)
        await page.get_by_role("button", name="筛选").click()
        await expect(page.locator("#f-grid option:checked")).to_contain_text(
            system_city.grids[grid].grid.name
        )
        await expect(page.locator(f"a[href='/console/tickets/{no}']")).to_be_visible()
        await accessible(page)
        await shot(page, "department-queue")

        await page.locator(f"a[href='/console/tickets/{no}']").click()
        await expect(page.locator("#status")).to_have_text("已派单")
        # The resident's words are text, not markup.
        await expect(page.locator("#resident-text")).to_contain_text("<script>window.__pwned = 1</script>")
        assert await page.locator("#resident-text b").count() == 0
        assert await page.evaluate("window.__pwned === undefined")
        await expect(page.locator("ol.history")).to_contain_text("派单至")
        await expect(page.locator("ol.history")).to_contain_text("（按地名定位）")  # not the method's code

        await page.locator("#accept").click()
        await expect(page.locator("#status")).to_have_text("办理中")
        await expect(page.locator("#done")).to_contain_text("已签收")
        # An extension without a reason: what to fill in, in Chinese, beside the field, focused.
        await page.locator("#extend-days").fill("2")
        await page.locator("#extend").click()
        await expect(page.locator("#extend-reason-error")).to_have_text(REQUIRED["extend.reason"])
        await expect(page.locator("#extend-reason")).to_be_focused()
        # A resolution without a note: the API's message, beside the note.
        await page.locator("#resolve-note").fill("   ")
        await page.locator("#resolve").click()
        await expect(page.locator("#resolve-note-error")).to_contain_text("办结时必须填写办理结果说明")
        assert asked == []  # not asked to confirm what would be refused
        await page.locator("#resolve-note").fill("已更换灯泡，恢复照明")
        await page.locator("#resolve").click()
        await expect(page.locator("#status")).to_have_text(RESOLVED)
        assert any("办结后将向市民发送回访短信" in q for q in asked)  # asked before it could not be undone
        await expect(page.locator("#done")).to_contain_text("已办结")
        await accessible(page)
        await shot(page, "department-ticket")

        # The second ticket returned: asked first, then back in the queue with what happens next.
        await page.locator("#done").get_by_role("link", name="返回本单位工单").click()
        await page.locator(f"a[href='/console/tickets/{second}']").click()
        # 诉求分类有误 says what the problem really is, for the desk to classify it again.
        await page.locator("#return-reason").select_option("wrong_category")
        before = len(asked)
        await page.locator("#return").click()
        await expect(page.locator("#return-note-error")).to_contain_text("实际反映的是什么问题")
        await expect(page.locator("#return-note")).to_be_focused()
        assert len(asked) == before  # refused before 退单's question, not after it was confirmed
        await page.locator("#return-reason").select_option("not_ours")
        # The rule disputed is filled in, editable: the one the ticket was routed here by.
        history = (await client.get(f"/api/v1/tickets/{second}")).json()["history"]
        routed = [h for h in history if h.get("topic") == "ticket.assigned"][-1]
        assert (routed["via"], routed["department"]["id"]) == ("rule", dept)
        await expect(page.locator("#return-rule")).to_have_value(routed["rule"])
        await page.locator("#return-rule").fill("路灯维护属于街道职责")
        await page.locator("#return").click()
        await expect(page.locator("#done")).to_contain_text(f"工单{second}已退单")
        # Back in the queue (the ticket's page is gone): what was done is focused and read out.
        await expect(page.locator("#done")).to_be_focused()
        # Where it went, as the record of the return has it: the list's next candidate or the desk.
        went = (await client.get(f"/api/v1/tickets/{second}")).json()["department"]
        desk = went["id"] == system_city.responsibilities.dispatch_desk
        said = present.left_queue("return", second, to=went["name"], to_meeting=False, to_desk=desk)
        await read_once(page, said, by="focus")
        assert any("确定退单吗" in q for q in asked)
        await fits_a_phone(page)  # the queue, on a grid worker's phone
        await ticket_when(client, no, lambda t: t["status"] == "surveyed")

        # The manager's dashboard, open while the resident answers the survey.
        manager = await (
            await browser.new_context(base_url=system.base_url, viewport={"width": 1280, "height": 900})
        ).new_page()
        await sign_in(manager, await issue_token(redis, "admin"))
        await manager.goto("/console/dashboard?from=2026-02-30")  # a period the API refuses: in words
        await expect(manager.locator("p.error")).to_have_text("起始日期不符合要求，请检查后重新填写")
        await manager.goto("/console/dashboard")
        await expect(manager.locator("#figures")).to_have_attribute(
            "data-live-state", "ready", timeout=30_000
        )
        # The trend of the period: the report's sentence and the daily chart (axe checks it below).
        await expect(manager.locator("#trend-summary")).to_have_text(
            re.compile(
                r"^本期受理[\d,]+件，环比(上升|下降)?[\d.%新增持平]+，同比(上升|下降)?[\d.%新增持平]+$"
            )
        )
        await expect(manager.locator("#trend-chart")).to_be_visible()
        before = await manager.locator("#satisfaction").text_content()
        answered = await manager.locator("[data-figure=answered]").text_content()
        dept_answered = manager.locator(f"#rank-department [data-answered='{dept}']")
        dept_answered_before = await dept_answered.text_content() or ""
        await manager.evaluate("window.__same_page = true")
        gateway = {"Authorization": f"Bearer {await issue_token(redis, 'sms_gateway')}"}
        r = await client.post("/api/v1/sms/inbound", json={"phone": phone, "text": "1"}, headers=gateway)
        assert r.status_code == 200, r.text
        await expect(manager.locator("[data-figure=answered]")).not_to_have_text(
            answered or "", timeout=30_000
        )
        assert await manager.evaluate("window.__same_page === true")  # changed without a reload
        # The ranking by department follows, also without a reload.
        await expect(dept_answered).not_to_have_text(dept_answered_before, timeout=30_000)
        after = await manager.locator("#satisfaction").text_content()
        assert after != "—"
        assert (before, answered) != (after, await manager.locator("[data-figure=answered]").text_content())
        await accessible(manager)
        await shot(manager, "dashboard")
        # Each ranking downloads as a table for Excel, through the session.
        async with manager.expect_download() as got:
            await manager.locator("#export-department").click()
        download = await got.value
        assert download.suggested_filename.startswith("ranking-department-")
        assert download.suggested_filename.endswith(".xlsx")
        await manager.context.close()

        # The desk's view of the same ticket escapes the text too.
        await sign_in(page, await issue_token(redis, "admin"))
        # The desk sees who returned the second ticket and why.
        returned = page.locator("#returned tr", has=page.locator(f"a[href='/console/tickets/{second}']"))
        why = "退单：不属于本单位职责（争议规则：路灯维护属于街道职责）"
        await expect(returned.first).to_contain_text(why)
        await page.goto(f"/console/tickets/{no}")
        await expect(page.locator("#resident-text")).to_contain_text('<b id="bold">粗体</b>')
        assert await page.locator("#bold").count() == 0
        assert await page.evaluate("window.__pwned === undefined")


async def test_a_live_redraw_of_the_queue_waits_for_a_click_and_keeps_the_focus(
    page: Page, redis, system: System
):
    # The queue is redrawn whenever one of its tickets arrives or changes. Redrawn between the press
    # and the release of a click, the click landed on no link and the page stayed where it was.
    async with await admin_api(system, redis) as client:
        no = await submit(client, "春晖园门口的路灯坏了，晚上一片漆黑", new_phone(), "春晖园")
        ticket = await ticket_when(client, no, lambda t: t["status"] == "assigned")
        await sign_in(page, await issue_token(redis, "department", ticket["department"]["id"]))
        await expect(page.locator("#queue")).to_have_attribute("data-live-state", "ready", timeout=30_000)
        link = page.locator(f"a[href='/console/tickets/{no}']")

        # A keyboard user's place: the link in focus is in focus again after the redraw.
        await link.focus()
        second = await submit(client, "春晖园东门的路灯不亮，请尽快修理", new_phone(), "春晖园")
        await expect(page.locator(f"a[href='/console/tickets/{second}']")).to_be_visible(timeout=30_000)
        assert await page.evaluate("document.activeElement.getAttribute('href')") == f"/console/tickets/{no}"

        # A click held down while a ticket arrives: the redraw waits for the release, and the click
        # opens the ticket.
        await link.hover()  # in view, whatever the queue holds from the tests before
        await page.mouse.down()
        pressed = "document.querySelector('a:active')?.getAttribute('href')"
        assert await page.evaluate(pressed) == f"/console/tickets/{no}"
        third = await submit(client, "春晖园西门的路灯也坏了", new_phone(), "春晖园")
        await ticket_when(client, third, lambda t: t["status"] != "received")
        await page.wait_for_timeout(2_000)  # the news reaches the page well within this, idle
        await expect(page.locator(f"a[href='/console/tickets/{third}']")).to_have_count(0)
        await page.mouse.up()
        await expect(page).to_have_url(re.compile(f"/console/tickets/{no}$"))
        await expect(page.locator("#status")).to_be_visible()


async def test_a_department_accepts_its_new_tickets_together_with_and_without_the_script(
    page: Page, browser: Browser, redis, system: System, system_city, settings
):
    """批量签收: the tickets ticked in the queue (counted on the button, confirmed first) are signed
    for in one go; without the script 全选 sends the page's new tickets, and one a colleague
    accepted meanwhile is listed with the workflow's reason."""
    grid = "s03c02g01"  # a grid of its own: the filtered queue lists only this test's tickets
    stamp = datetime.now(ZoneInfo(settings.timezone))
    # Numbered on a day long past: a high number of today's would push today's real counter (the
    # record keeps it above the highest number it has seen) towards the end of its six digits.
    nos = [f"20001202-{n}" for n in random.sample(range(900000, 1000000), 4)]
    await send_classified(
        settings, [classified(system_city, "city.appearance.garbage", grid, no=no, at=stamp) for no in nos]
    )
    async with await admin_api(system, redis) as client:
        held = [await ticket_when(client, no, lambda t: t["status"] == "assigned") for no in nos]
        dept = held[0]["department"]["id"]
        assert {t["department"]["id"] for t in held} == {dept}
        token = await issue_token(redis, "department", dept)
        queue = f"/console/department?status=assigned&grid={grid}"

        await sign_in(page, token)
        await page.goto(queue)
        asked: list[str] = []

        async def confirm(dialog) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.on("dialog", confirm)
        first, second, third, fourth = nos
        for no in nos:
            await expect(page.locator(f"#pick-{no}")).to_be_visible()
        await expect(page.locator("#batch-accept")).to_be_disabled()  # nothing ticked yet
        await page.get_by_label(f"选择工单{first}批量签收").check()
        await page.get_by_label(f"选择工单{second}批量签收").check()
        await expect(page.locator("#batch-accept")).to_have_text("批量签收（2件）")
        await accessible(page)
        await shot(page, "department-batch")
        # 全选 ticks the page, and unticking one leaves it half ticked.
        await page.locator("#pick-all").check()
        await expect(page.locator("#batch-accept")).to_have_text("批量签收（4件）")
        await page.get_by_label(f"选择工单{third}批量签收").uncheck()
        await page.get_by_label(f"选择工单{fourth}批量签收").uncheck()
        assert await page.locator("#pick-all").evaluate("el => el.indeterminate")
        await page.locator("#batch-accept").click()
        await expect(page.locator("#batch-accepted")).to_have_text("已签收2件，请在办结时限内办理。")
        await expect(page.locator("#batch-result")).to_be_focused()
        await read_once(page, "已签收2件，请在办结时限内办理。", by="focus")
        assert any("确定批量签收所选的2件工单吗" in q for q in asked)
        await expect(page.locator("#batch-refused")).to_have_count(0)
        for no in (first, second):
            assert (await ticket_when(client, no, lambda t: True))["status"] == "accepted"
            await expect(page.locator(f"#pick-{no}")).to_have_count(0)  # signed for: out of the filter
        await accessible(page)
        await page.reload()  # the outcome is shown again, nothing is accepted again
        await expect(page.locator("#batch-accepted")).to_have_text("已签收2件，请在办结时限内办理。")
        await fits_a_phone(page)  # the cards, with their boxes, on a phone

        # Without the script: 全选 sends the page's new tickets; a colleague took one meanwhile.
        plain = await browser.new_context(base_url=system.base_url, locale="zh-CN", java_script_enabled=False)
        try:
            bare = await plain.new_page()
            await sign_in(bare, token)
            await bare.goto(queue)
            await bare.locator("#pick-all").check()
            headers = {"Authorization": f"Bearer {token}"}
            assert (await client.post(f"/api/v1/tickets/{third}/accept", headers=headers)).status_code == 200
            await bare.locator("#batch-accept").click()
            await expect(bare.locator("#batch-accepted")).to_have_text("已签收1件，请在办结时限内办理。")
            await expect(bare.locator("#batch-refused li")).to_have_text(
                [f"工单{third}：工单{third}已签收（本单位已有人先签收），无需再签收"]
            )
            await expect(bare).to_have_url(re.compile(rf"/console/department\?.*grid={grid}.*&batch="))
        finally:
            await plain.close()
        assert (await ticket_when(client, fourth, lambda t: True))["status"] == "accepted"


async def test_the_dashboards_trend_says_what_rose_and_links_to_its_tickets(
    page: Page, redis, pool, system_city
):
    """A known week in the record (tests/test_records_trend.py's): the sentence for the report,
    the rising and falling categories linking to their tickets, the days as a table, the export;
    then the same by street."""
    await Records(pool, system_city).project_many(appeal_events(system_city))
    await sign_in(page, await issue_token(redis, "admin"))
    await page.goto("/console/dashboard?from=2011-07-04&to=2011-07-10")
    await expect(page.locator("#trend-summary")).to_have_text("本期受理6件，环比上升50.0%，同比上升200.0%")
    await expect(page.locator("#trend-rising li")).to_have_text(
        [
            "公共事业/供暖：本期3件，上期1件，+2（+200.0%）",
            "城市管理/市政设施/排水堵塞：本期2件，上期0件，+2（新增）",
        ]
    )
    await expect(page.locator("#trend-falling li")).to_have_text(
        ["环境保护/噪音扰民：本期1件，上期3件，−2（−66.7%）"]
    )
    # The chart's figures as text, the days without appeals included.
    await page.locator("#trend details summary").click()
    days = page.locator("#trend-days tbody tr")
    await expect(days).to_have_count(7)
    await expect(days.nth(2)).to_have_text("2011-07-060")
    await accessible(page)
    await shot(page, "dashboard-trend")
    async with page.expect_download() as got:
        await page.locator("#export-trend").click()
    assert (await got.value).suggested_filename == "trend-category-20110704-20110710.xlsx"
    # A rising category opens its tickets of the period.
    await page.locator("#trend-rising a").first.click()
    await expect(page).to_have_url(re.compile(r"category=utility\.heating&from=2011-07-04&to=2011-07-10"))
    await expect(page.locator("#list-total")).to_contain_text("共 3 件")
    # Where it rose: 按街道 (a plain link keeping the period), its streets, its export, its tickets.
    await page.go_back()
    await expect(page.locator("#trend-by [aria-current]")).to_have_text("按分类")
    await page.locator("#trend-by").get_by_role("link", name="按街道").click()
    await expect(page).to_have_url(re.compile(r"from=2011-07-04&to=2011-07-10&trend_by=street#trend$"))
    await expect(page.locator("#trend-by [aria-current]")).to_have_text("按街道")
    await expect(page.locator("#trend-rising li")).to_have_text(
        ["建设街道：本期3件，上期0件，+3（新增）", "和平街道：本期2件，上期1件，+1（+100.0%）"]
    )
    await expect(page.locator("#trend-falling li")).to_have_text(["光明街道：本期1件，上期3件，−2（−66.7%）"])
    await accessible(page)
    async with page.expect_download() as got:
        await page.locator("#export-trend").click()
    assert (await got.value).suggested_filename == "trend-street-20110704-20110710.xlsx"
    await page.locator("#trend-rising a").first.click()
    await expect(page).to_have_url(re.compile(r"street=s02&from=2011-07-04&to=2011-07-10"))
    await expect(page.locator("#list-total")).to_contain_text("共 3 件")


# --- the ticket list with search and export -------------------------------------------------------


async def in_record(client: httpx.AsyncClient, no: str, keyword: str) -> None:
    """The record (PostgreSQL) is written by its own consumer: wait until the search finds the ticket."""

    async def probe():
        r = await client.get("/api/v1/tickets", params={"q": keyword})
        return r.status_code == 200 and no in [t["ticket_no"] for t in r.json()["items"]]

    await eventually(probe, timeout=60)


async def test_desk_searches_opens_and_exports_and_a_department_sees_its_own(
    page: Page, redis, system: System, system_city
):
    place = f"{random.randint(100000, 999999)}号楼"  # the keyword: this ticket's alone
    async with await admin_api(system, redis) as client:
        text = "小区门口的路灯一直不亮，晚上出门看不清路" + HOSTILE
        phone = new_phone()
        no = await submit(client, text, phone, "和平里小区" + place)
        ticket = await ticket_when(client, no, lambda t: t["status"] == "assigned")
        await in_record(client, no, place)
    dept, category = ticket["department"]["id"], ticket["category"]

    await sign_in(page, await issue_token(redis, "admin"))
    await page.get_by_role("navigation", name="主导航").get_by_role("link", name="工单查询").click()
    await expect(page.locator("h1")).to_have_text("工单查询")
    # The API's validation message, beside the field it names.
    await page.locator("#f-q").fill("幸")
    await page.get_by_role("button", name="查询").click()
    await expect(page.locator("#f-q-error")).to_contain_text("搜索词至少两个字")
    await expect(page.locator("#f-q")).to_have_attribute("aria-invalid", "true")

    # A caller's tickets by the number they called from, typed as a person reads it out: posted,
    # so the number is in no address the browser keeps; the list's address carries the caller's
    # hash and the number masked. A number that is none is refused beside the field (Enter in it).
    await page.locator("#f-q").fill("")
    await page.locator("#f-phone").fill("1381234")
    await page.locator("#f-phone").press("Enter")
    await expect(page.locator("#f-phone-error")).to_contain_text("不是有效的手机号或固话号码")
    await expect(page.locator("#list-total")).not_to_have_text("共 0 件。")  # the list as it stood
    await page.locator("#f-phone").fill(f"{phone[:3]} {phone[3:7]} {phone[7:]}")
    await page.get_by_role("button", name="查询").click()
    await expect(page.locator("#ticket-list tbody tr")).to_have_count(1)
    await expect(page.locator(f"#ticket-list a[href='/console/tickets/{no}']")).to_be_visible()
    await expect(page.locator("#f-caller")).to_contain_text(f"{phone[:3]}****{phone[-4:]}")
    assert "phone=" not in page.url
    assert phone not in page.url
    assert phone not in await page.locator("#export-csv").get_attribute("href")
    await page.get_by_role("link", name="不限来电号码").click()
    await expect(page.locator("#f-caller")).to_have_count(0)

    await page.locator("#f-q").fill(place)
    await page.locator("#f-category").select_option(category)
    await page.get_by_role("button", name="查询").click()
    link = page.locator(f"#ticket-list a[href='/console/tickets/{no}']")
    await expect(link).to_be_visible()
    await expect(page.locator("#ticket-list tbody tr")).to_have_count(1)
    await expect(page.locator("#f-category")).to_have_value(category)
    assert await page.locator("#ticket-list b").count() == 0
    assert await page.evaluate("window.__pwned === undefined")
    await accessible(page)
    await shot(page, "tickets")

    # The export carries the same filters, through the session: no token in the link.
    href = await page.locator("#export-csv").get_attribute("href") or ""
    assert "token" not in href.lower()
    async with page.expect_download() as info:
        await page.locator("#export-csv").click()
    download = await info.value
    assert download.suggested_filename.endswith(".csv")
    content = await asyncio.to_thread(Path(await download.path()).read_bytes)
    assert content.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    lines = content.decode("utf-8-sig").splitlines()
    assert lines[0].split(",")[:3] == ["工单号", "状态", "渠道"]
    assert len(lines) == 2
    assert lines[1].startswith(no)
    # In words, as the people who open it in Excel read them: not assigned, hotline, s01c01g01.
    exported = next(csv.reader(lines[1:]))
    assert exported[1:3] == ["已派单", "12345热线"]
    assert exported[7] == system_city.grids[ticket["grid"]["grid"]].grid.name

    await link.click()
    await expect(page).to_have_url(re.compile(f"/console/tickets/{no}$"))
    await expect(page.locator("#status")).to_have_text("已派单")

    # A department finds its own ticket; another finds nothing, even naming the first in the URL.
    await sign_in(page, await issue_token(redis, "department", dept))
    await page.goto(f"/console/tickets?q={place}&page=9")  # past the end: the last page, not an empty 9/1
    await expect(page.locator(f"#ticket-list a[href='/console/tickets/{no}']")).to_be_visible()
    await expect(page.locator("#list-total")).to_contain_text("第 1/1 页")
    await fits_a_phone(page)
    assert await page.locator("#f-department").count() == 0  # the desk alone chooses a department
    other = next(d.id for d in system_city.departments if d.kind != "dispatch_desk" and d.id != dept)
    await sign_in(page, await issue_token(redis, "department", other))
    await page.goto(f"/console/tickets?q={place}&department={dept}")
    await expect(page.locator("#list-total")).to_contain_text("共 0 件")
    await expect(page.locator(f"a[href='/console/tickets/{no}']")).to_have_count(0)


async def test_a_refused_ticket_filter_comes_back_focused_and_is_read_once(page: Page, redis):
    """The reason beside a refused filter was an alert already on the page, which a screen reader
    did not read, and the focus was nowhere: the filter at fault now has it, read with its reason."""
    await sign_in(page, await issue_token(redis, "admin"))
    await page.goto("/console/tickets")
    await page.locator("#f-q").fill("幸")
    await page.get_by_role("button", name="查询").click()
    await expect(page.locator("#f-q")).to_be_focused()
    await read_once(page, "搜索词至少两个字", by="focus")
    await page.locator("#f-q").fill("")
    await page.locator("#f-from").fill("2033-07-10")
    await page.locator("#f-to").fill("2033-07-04")
    await page.get_by_role("button", name="查询").click()
    await expect(page.locator("#f-to")).to_be_focused()
    await expect(page.locator("#f-to")).to_have_attribute("aria-invalid", "true")
    await read_once(page, "结束日期不能早于开始日期", by="focus")
    await accessible(page)


async def test_a_refused_period_or_category_comes_back_focused_and_is_read_once(page: Page, redis):
    """The dashboard's refused period and the knowledge list's refused category were alerts already
    on the page, which nothing read: the date or the category at fault has the focus, read with why."""
    await sign_in(page, await issue_token(redis, "admin"))
    await page.goto("/console/dashboard")
    await page.locator("#from").fill("2033-07-10")
    await page.locator("#to").fill("2033-07-04")
    await page.get_by_role("button", name="统计").click()
    await expect(page.locator("#from")).to_be_focused()
    await expect(page.locator("#from")).to_have_attribute("aria-invalid", "true")
    await read_once(page, "起始日期2033-07-10晚于结束日期2033-07-04", by="focus")
    await accessible(page)

    await page.goto("/console/knowledge?category=no.such")
    await expect(page.locator("#category")).to_be_focused()
    reason = (await page.locator("#category-error").inner_text()).strip()
    assert "no.such" in reason
    await read_once(page, reason, by="focus")


# --- a resident's erasure request ----------------------------------------------------------------


async def test_privacy_desk_erases_a_residents_data_after_a_preview(page: Page, redis, system: System):
    phone, other = new_phone(), new_phone()
    async with await admin_api(system, redis) as client:
        no = await submit(client, "小区门口的路灯一直不亮，晚上出门看不清路，李四", phone, "和平里小区")
        # A resident the desk finds by the number on their SMS.
        by_no = await submit(client, "锦绣家园门口垃圾堆了好几天没人清运，周九", other, "锦绣家园")
        await ticket_when(client, no, lambda t: t["status"] == "assigned")

        async def in_record():  # the record's own consumer writes the row the erasure reads
            for body in ({"phone": phone}, {"ticket_no": by_no}):
                r = await client.post("/api/v1/records/privacy/erasures/preview", json=body)
                if r.status_code != 200 or r.json()["count"] != 1:
                    return False
            return True

        await eventually(in_record, timeout=60)

    await sign_in(page, await issue_token(redis, "department", "water"))
    response = await page.goto("/console/privacy")
    assert response is not None
    assert response.status == 403

    await sign_in(page, await issue_token(redis, "admin"))
    await page.get_by_role("navigation", name="主导航").get_by_role("link", name="个人信息删除").click()
    await expect(page.locator("h1")).to_have_text("个人信息删除")
    await expect(page.locator("#reason")).to_have_value("居民申请删除个人信息")
    await accessible(page)

    # The API's reasons, beside their fields.
    await page.locator("#phone").fill("12345")
    await page.get_by_role("button", name="查看将受影响的工单").click()
    await expect(page.locator("#phone-error")).to_contain_text("不是有效的手机号或固话号码")
    await expect(page.locator("#phone")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#phone")).to_be_focused()
    await read_once(page, "不是有效的手机号或固话号码", by="focus")  # with the field it describes
    await page.locator("#phone").fill(f"+86 {phone[:3]}-{phone[3:7]}-{phone[7:]}")
    await page.locator("#reason").fill(" ")
    await page.get_by_role("button", name="查看将受影响的工单").click()
    await expect(page.locator("#reason-error")).to_contain_text("请填写删除原因")
    # The clerk writes the caller's number into the reason: confirmed as the audit will keep it.
    await page.locator("#reason").fill(f"居民{phone}来电申请删除个人信息")
    await page.get_by_role("button", name="查看将受影响的工单").click()
    kept = f"居民{phone[:3]}****{phone[-4:]}来电申请删除个人信息"
    await expect(page.locator("#preview-reason")).to_have_text(f"删除原因（写入审计记录）：{kept}")
    await expect(page.locator("#preview-reason-masked")).to_contain_text("电话号码/身份证号已隐藏")
    assert phone not in await page.content()

    # The preview: the resident's ticket, and a plain warning before the one button that erases.
    await expect(page.locator("#preview-tickets tbody tr")).to_have_count(1)
    await expect(page.locator("#preview-tickets")).to_contain_text(no)
    await expect(page.locator("#preview-tickets")).to_contain_text("已派单")
    await expect(page.locator("#preview-count")).to_contain_text(f"{phone[:3]}****{phone[-4:]}")
    await expect(page.locator("#irreversible")).to_contain_text("删除后无法恢复")
    # Still being handled (已派单): the department will no longer see what the resident said.
    await expect(page.locator("#unfinished")).to_contain_text("其中1件尚未办结")
    await accessible(page)
    await shot(page, "privacy-preview")
    async with await admin_api(system, redis) as client:  # nothing changed yet
        assert "李四" in (await client.get(f"/api/v1/tickets/{no}")).json()["text"]

    await page.get_by_role("button", name="确认删除（不可恢复）").click()
    await expect(page).to_have_url(re.compile(r"/console/privacy\?erased=1$"))
    await expect(page.locator("#erased")).to_contain_text("已删除1件工单中的个人信息")
    await expect(page.locator("#erased")).to_be_focused()  # not the emptied form's first field
    await read_once(page, "已删除1件工单中的个人信息，审计记录已写入。", by="focus")
    first = page.locator("#audit-list tbody tr").first
    await expect(first).to_contain_text("依申请删除")
    await expect(first).to_contain_text(kept)
    await expect(first).to_contain_text("派单中心")
    assert phone not in await page.content()
    assert phone[3:] not in await page.content()
    await accessible(page)
    await shot(page, "privacy")

    await page.goto(f"/console/tickets/{no}")
    await expect(page.locator("#resident-text")).to_have_text(REMOVED)
    await expect(page.locator("#address")).to_have_text(REMOVED)
    assert "李四" not in await page.content()

    # By ticket number: the choice shows the number's field, the refusal stands beside it, and the
    # preview names the ticket's channel and its resident, masked, before the same confirmation.
    await page.goto("/console/privacy")
    await page.get_by_role("radio", name="工单号").check()
    await expect(page.get_by_label("居民的工单号")).to_be_visible()
    await expect(page.locator("#phone")).to_be_hidden()
    await page.locator("#ticket_no").fill("19990101-000001")
    await page.get_by_role("button", name="查看将受影响的工单").click()
    await expect(page.locator("#ticket_no-error")).to_contain_text("没有工单号为19990101-000001的工单")
    await expect(page.locator("#ticket_no")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#by-ticket")).to_be_checked()
    await accessible(page)
    await page.locator("#ticket_no").fill(f" {by_no} ")
    await page.get_by_role("button", name="查看将受影响的工单").click()
    await expect(page.locator("#preview-subject")).to_contain_text(f"工单 {by_no}（12345热线）")
    await expect(page.locator("#preview-subject")).to_contain_text(f"{other[:3]}****{other[-4:]}")
    await expect(page.locator("#preview-tickets tbody tr")).to_have_count(1)
    await accessible(page)
    await page.get_by_role("button", name="确认删除（不可恢复）").click()
    await expect(page.locator("#erased")).to_contain_text("已删除1件工单中的个人信息")
    await expect(page.locator("#audit-list tbody tr").first).to_contain_text(f"工单号 {by_no}")
    assert other not in await page.content()
    await accessible(page)


# --- residents ---------------------------------------------------------------------------------


async def test_resident_looks_up_on_a_narrow_screen(browser: Browser, redis, system: System):
    phone = new_phone()
    async with await admin_api(system, redis) as client:
        no = await submit(client, "人民路上的井盖松动了，车开过去哐哐响" + HOSTILE, phone)
        await ticket_when(client, no, lambda t: t["status"] in ("assigned", "review"))
    context = await browser.new_context(
        base_url=system.base_url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
    )
    await listen(context)
    page = await context.new_page()
    await page.goto("/console/lookup")
    # A number pad for both (the number's dash may be left out, the hint says), touch-sized; Enter
    # in the number goes on to the digits instead of sending the form without them.
    for field in ("ticket_no", "last4"):
        await expect(page.locator(f"#{field}")).to_have_attribute("inputmode", "numeric")
    await expect(page.locator("#ticket_no-hint")).to_contain_text("“-”可不输入")
    await touch_sized(page, "#ticket_no", "#last4", "#lookup-submit")
    await page.get_by_label("工单号").focus()
    await page.keyboard.type(no)
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("来电手机号后四位")).to_be_focused()
    assert page.url.endswith("/console/lookup")
    # Refused, the field at fault or the reason takes the focus (read out), the rest kept.
    await page.keyboard.type("12")
    await page.keyboard.press("Enter")
    await expect(page.locator("#last4-error")).to_contain_text("后四位")
    await expect(page.get_by_label("来电手机号后四位")).to_be_focused()
    await page.get_by_label("来电手机号后四位").fill("0000" if phone[-4:] != "0000" else "1111")
    await page.keyboard.press("Enter")
    await expect(page.locator("p.error")).to_contain_text("没有找到")
    await expect(page.locator("#form-error")).to_be_focused()
    await read_once(page, (await page.locator("#form-error").text_content() or "").strip(), by="focus")
    await expect(page.get_by_label("工单号")).to_have_value(no)
    # Typed on a phone without the dash, the digits full-width: the same number.
    await page.get_by_label("工单号").fill(f" {no.replace('-', '')} ")
    full_width = "".join(chr(ord(d) + 0xFEE0) for d in phone[-4:])
    await page.get_by_label("来电手机号后四位").fill(full_width)
    await page.get_by_role("button", name="查询").click()
    await expect(page.locator("#lookup-status")).to_be_visible()
    await expect(page.get_by_label("工单号")).to_have_value(no)
    # The answer, below the form (off the first screen of a phone), has the focus, which reads its
    # number and where the appeal is: once, not announced as well.
    await expect(page.locator("#found")).to_be_focused()
    status = (await page.locator("#lookup-status").text_content() or "").strip()
    await read_once(page, f"办理状态 {status}", by="focus")
    spoken = await read_once(page, no, by="focus")
    assert spoken["announced"] == ""
    body = await page.locator("main").text_content() or ""
    assert phone not in body
    assert "哐哐响" not in body  # the appeal's words are not shown to whoever has the number
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360  # no sideways scrolling on a phone
    await accessible(page)
    await shot(page, "lookup-mobile")
    await context.close()


async def test_a_wechat_notices_signed_link_opens_its_ticket_until_it_expires(
    browser: Browser, redis, system: System, settings: Settings
):
    async with await admin_api(system, redis) as client:
        no = await submit(client, "幸福里小区门口的路灯一直不亮", new_phone())
        await ticket_when(client, no, lambda t: t["status"] in ("assigned", "review"))
    key = link_key(settings.caller_id_salt)  # the running console's salt
    context = await browser.new_context(
        base_url=system.base_url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
    )
    page = await context.new_page()
    today = day_number(time.time())
    await page.goto(ticket_url("/console/lookup", params(no, today, 30, key)))
    await expect(page.locator("#lookup-status")).to_be_visible()
    await expect(page.locator("#found h2")).to_have_text(f"工单 {no}")
    assert "幸福里" not in (await page.locator("main").text_content() or "")
    await accessible(page)
    # The same signature on another number: the form, saying why, with the number kept.
    other = f"{no[:-1]}{(int(no[-1]) + 1) % 10}"
    await page.goto(ticket_url("/console/lookup", {**params(no, today, 30, key), "t": other}))
    await expect(page.locator("p.error")).to_have_text(BAD_LINK)
    await expect(page.locator("#found")).to_have_count(0)
    await expect(page.get_by_label("工单号")).to_have_value(other)
    await accessible(page)
    # Past its last day: the form, saying how to get a new link.
    await page.goto(ticket_url("/console/lookup", params(no, today - 30, 30, key)))
    await expect(page.locator("p.error")).to_have_text(EXPIRED_LINK)
    await expect(page.locator("#found")).to_have_count(0)
    await expect(page.get_by_label("工单号")).to_have_value(no)
    await context.close()


async def test_a_resident_without_the_survey_sms_rates_the_ticket_on_the_lookup_page(
    browser: Browser, redis, system: System
):
    """回访中, the lookup offers the survey's answers; 不满意/未解决 closes the survey as an SMS answer
    would (the ticket goes back to its department), given on the page and not by phone; the page says
    what happens next, a second post gives the same answer, and the survey is offered no more."""
    phone = new_phone()
    async with await admin_api(system, redis) as client:
        no, _ = await surveyed(client, redis, "和平街12号楼下的路灯坏了，晚上很黑", phone, "和平街12号")
        context = await browser.new_context(
            base_url=system.base_url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
        )
        await listen(context)
        page = await context.new_page()
        await page.goto("/console/lookup")
        await page.get_by_label("工单号").fill(no)
        await page.get_by_label("来电手机号后四位").fill(phone[-4:])
        await page.get_by_role("button", name="查询").click()
        await expect(page.locator("#survey-form")).to_be_visible()
        await touch_sized(page, "#survey-submit")
        await accessible(page)
        await shot(page, "lookup-survey")
        form = page.locator("#survey-form")
        await form.get_by_label("不满意").check()
        await form.get_by_label("未解决").check()
        await form.get_by_label("意见或建议").fill("灯亮了两天又坏了")
        await page.locator("#survey-submit").click()
        await expect(page.locator("#survey-done")).to_have_text("您的评价已记录：不满意")
        await expect(page.locator("#survey-done")).to_be_focused()
        await expect(page.locator("#survey-next")).to_contain_text("将督促重新办理")
        await expect(page.locator("#lookup-status")).to_have_text("已评价，将重新办理")
        await expect(page.locator("#survey-form")).to_have_count(0)
        assert phone not in (await page.locator("main").text_content() or "")
        await accessible(page)
        await shot(page, "lookup-survey-done")

        back = await ticket_when(client, no, lambda t: t["status"] == "assigned" and t["reopens"] == 1)
        answers = [h for h in back["history"] if h["topic"] == "survey.answered"]
        assert len(answers) == 1
        assert (answers[0]["rating"], answers[0]["solved"], answers[0]["text"]) == (
            3,
            False,
            "灯亮了两天又坏了",
        )
        assert (answers[0]["by"], answers[0]["via"]) == (None, "lookup")  # not 电话回访

        # Sent again (a double click, the browser's resend): the answer recorded the first time.
        csrf = await page.locator("form[action='/console/lookup'] input[name=csrf]").input_value()
        fields = {"csrf": csrf, "ticket_no": no, "last4": phone[-4:], "rating": "1", "solved": "yes"}
        again = await page.request.post("/console/lookup/survey", form=fields)
        assert again.status == 200
        said = await again.text()
        assert "您的评价已记录：不满意" in said
        # Wrong digits: refused like a lookup, and nothing recorded (the token: the last page's).
        csrf = re.findall(r'name="csrf" value="([^"]+)"', said)[0]
        wrong = "0000" if phone[-4:] != "0000" else "1111"
        refused = await page.request.post(
            "/console/lookup/survey", form={**fields, "csrf": csrf, "last4": wrong}
        )
        assert refused.status == 404
        # Looked up again: being handled again, no survey to answer.
        await page.goto("/console/lookup")
        await page.get_by_label("工单号").fill(no)
        await page.get_by_label("来电手机号后四位").fill(phone[-4:])
        await page.get_by_role("button", name="查询").click()
        await expect(page.locator("#lookup-status")).to_be_visible()
        await expect(page.locator("#survey-form")).to_have_count(0)
        final = await client.get(f"/api/v1/tickets/{no}")
        assert len([h for h in final.json()["history"] if h["topic"] == "survey.answered"]) == 1
        await context.close()


async def test_a_wechat_resident_rates_the_ticket_on_the_page_its_signed_link_opens(
    browser: Browser, redis, system: System, settings: Settings
):
    """A WeChat resident (no phone, so no digits) opens their ticket by the signed link while its
    survey waits: the page offers the survey as the digits' page does, the answer is recorded the
    same way (`via: lookup`, not 电话回访) and closes the ticket, and the link then offers it no more."""
    async with await admin_api(system, redis) as client:
        no = await surveyed_in_wechat(client, redis, wechat_user())
        key = link_key(settings.caller_id_salt)  # the running console's salt
        link = ticket_url("/console/lookup", params(no, day_number(time.time()), 30, key))
        context = await browser.new_context(
            base_url=system.base_url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
        )
        await listen(context)
        page = await context.new_page()
        await page.goto(link)
        await expect(page.locator("#found h2")).to_have_text(f"工单 {no}")
        form = page.locator("#survey-form")
        await expect(form).to_be_visible()
        await expect(form.locator("input[name=last4]")).to_have_count(0)  # the link stands for the digits
        await expect(page.locator("#survey-hint")).to_contain_text("公众号")
        await touch_sized(page, "#survey-submit")
        await accessible(page)
        await form.get_by_label("满意", exact=True).check()
        await form.get_by_label("已解决").check()
        await page.locator("#survey-submit").click()
        await expect(page.locator("#survey-done")).to_have_text("您的评价已记录：满意")
        await expect(page.locator("#lookup-status")).to_have_text("已评价，办理完毕")
        await expect(page.locator("#survey-form")).to_have_count(0)
        await accessible(page)

        closed = await ticket_when(client, no, lambda t: t["status"] == "closed")
        answers = [h for h in closed["history"] if h["topic"] == "survey.answered"]
        assert [(a["rating"], a["solved"], a["by"], a["via"]) for a in answers] == [(1, True, None, "lookup")]
        # The same link again: the survey has its answer, nothing to rate.
        await page.goto(link)
        await expect(page.locator("#lookup-status")).to_be_visible()
        await expect(page.locator("#survey-form")).to_have_count(0)
        await context.close()


async def test_docs_load_swagger_from_the_project(page: Page):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.goto("/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text(
        "12345 appeals API", timeout=30_000
    )
    base = page.url.split("/docs")[0]
    assert [u for u in requests if not u.startswith(base)] == []
    await shot(page, "docs")


# --- phone callbacks (电话回访) --------------------------------------------------------------------


async def menu_count(page: Page) -> int:
    """How many phone callbacks the menu says are due (电话回访 (N))."""
    return int(re.sub(r"\D", "", await page.locator("#callbacks-due").text_content() or ""))


async def test_operator_calls_back_a_resident_who_did_not_answer_the_survey_sms(
    page: Page, browser: Browser, redis, system: System, settings: Settings
):
    """A resident who answered neither the survey SMS nor its reminder is listed for a call (the
    menu counts it on every page); the operator takes it, sees the number and what to read out,
    records 不满意/未解决, and the ticket goes back to its department, the history naming the
    operator; the manager's dashboard counts the answer apart from those by SMS."""
    first_day = local_today(settings.timezone)  # the counters' local day may turn meanwhile
    phone = new_phone()
    async with await admin_api(system, redis) as client:
        no, asked = await surveyed(
            client, redis, "阳光花园5号楼门口的路灯坏了一个多星期，晚上很黑", phone, "阳光花园5号楼"
        )
        sid = next(h["survey_id"] for h in asked["history"] if h["topic"] == "survey.sent")
        # The reminder's hour has come with no answer (a day in the demo city): due for a call.
        await redis.zadd("survey:callback", {sid: 0}, xx=True)

        await sign_in(page, await issue_token(redis, "operator", operator="op09"))
        # The menu says how many calls are due on the operator's own page; the list has as many.
        due = await menu_count(page)
        assert due >= 1
        await page.get_by_role("link", name="电话回访").click()
        await expect(page.locator("#callbacks")).to_contain_text(no)
        await expect(page.locator("#callbacks-total")).to_contain_text(f"待回访 {due} 件")
        await accessible(page)
        await shot(page, "callbacks")
        await page.get_by_role("button", name=f"开始回访工单{no}").click()
        await expect(page.locator("#dial")).to_have_text(phone)
        await expect(page.locator("#script")).to_contain_text("已更换灯泡，恢复照明")
        await accessible(page)
        await shot(page, "callback")
        # Recorded without a rating: refused in words, the call kept. The script asks first (see
        # test_a_choice_of_radios_left_unchosen_is_asked_for_beside_it_not_by_the_browsers_bubble);
        # without its asking, the API refuses in the same words, under the question, whose first
        # answer takes the focus.
        await page.locator("#callback-form").evaluate(
            "f => f.querySelectorAll('[data-required]').forEach(e => e.removeAttribute('data-required'))"
        )
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.locator("#record-answer").click()
        await expect(page.locator("#rating-error")).to_have_text(CALL_ANSWER_REQUIRED["rating"])
        await expect(page.locator("input[name=rating][value='1']")).to_be_focused()
        await expect(page.locator("#callback-error")).to_have_count(0)
        await read_once(page, CALL_ANSWER_REQUIRED["rating"], by="focus")
        await page.get_by_label("不满意").check()
        await page.get_by_label("未解决").check()
        await page.locator("#note").fill("灯亮了两天又坏了")
        page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.locator("#record-answer").click()
        await expect(page.locator("#callback-done")).to_contain_text(f"工单{no}回访已记录：不满意")
        await expect(page.locator("#callback-done")).to_be_focused()
        await read_once(page, f"工单{no}回访已记录：不满意", by="focus")
        await expect(page.locator("#callbacks")).not_to_contain_text(no)
        await expect(page.locator("#callbacks-due")).to_have_text(f"({due - 1}件待回访)")
        await page.get_by_role("link", name="来电登记").click()
        assert await menu_count(page) == due - 1

        back = await ticket_when(client, no, lambda t: t["status"] == "assigned" and t["reopens"] == 1)
        answer = next(h for h in back["history"] if h["topic"] == "survey.answered")
        assert (answer["by"], answer["rating"], answer["solved"]) == ("op09", 3, False)
        # The manager sees the answers taken on the phone apart from those by SMS (电话回访).
        dept_id = asked["department"]["id"]

        async def counted():
            period = days_since(first_day, settings.timezone)
            r = await client.get("/api/v1/stats", params={"group_by": "department", **period})
            return any(g["group"] == dept_id and g["answered_by_phone"] for g in r.json()["groups"])

        await eventually(counted, timeout=30)
        manager = await (
            await browser.new_context(base_url=system.base_url, viewport={"width": 1280, "height": 900})
        ).new_page()
        await sign_in(manager, await issue_token(redis, "admin"))
        await manager.goto("/console/dashboard")
        await expect(manager.locator("#rank-department thead")).to_contain_text("电话回访")
        await expect(manager.locator(f"#rank-department [data-by-phone='{dept_id}']")).to_have_text(
            re.compile(r"^[1-9]\d*$")
        )
        await manager.context.close()
        # Another operator cannot take a call that is over.
        other = await page.request.post(
            f"/api/v1/callbacks/{sid}/call",
            headers={"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='op10')}"},
        )
        assert other.status == 409


async def test_knowledge_desk_edits_an_answer_and_the_department_confirms_one(
    page: Page, redis, pool, system: System, settings: Settings, system_city: City
):
    tz_today = local_today(settings.timezone)
    t = str(random.randint(10**7, 10**8))
    stale = KnowledgeEntry(
        id=f"kb-e2e-{t}",
        question=f"居住证{t}到期了怎么续签？",
        answer="携带身份证到居住地派出所续签。",
        department="hrss",
        reviewed=tz_today - timedelta(days=system_city.sla.supervision.knowledge_review_days + 30),
    )
    await KnowledgeService(pool, redis, system_city, timezone=settings.timezone).seed([stale])

    # The desk finds it among those due for a review and edits its answer.
    await sign_in(page, await issue_token(redis, "admin"))
    await page.get_by_role("link", name="知识库").click()
    await page.locator("#q").fill(t)
    await page.locator("#due").check()
    await page.locator("#search").click()
    row = page.locator(f"#entry-{stale.id}")
    await expect(row).to_contain_text("待复核")
    await expect(row).to_contain_text("区人力资源和社会保障局")
    await accessible(page)
    await shot(page, "knowledge")
    await row.get_by_role("link").click()
    await expect(page.locator("#review-due")).to_contain_text("答复前请核实")
    question = await page.locator("#question").input_value()
    await page.locator("#question").fill("")
    await page.locator("#answer").fill("")
    await page.locator("#save-entry").click()  # each empty field refused beside it, at once
    await expect(page.locator("#question-error")).to_contain_text("请填写问题")
    await expect(page.locator("#answer-error")).to_contain_text("请填写答复内容")
    await accessible(page)
    await page.locator("#question").fill(question)
    await page.locator("#answer").fill(f"居住证{t}可在“示范区政务”小程序在线续签，也可到派出所办理。")
    await page.locator("#save-entry").click()
    await expect(page.locator("#done")).to_contain_text("已保存修改")
    await expect(page.locator("#done")).to_be_focused()
    await read_once(page, KNOWLEDGE_DONE["edited"], by="focus")
    await expect(page.locator("#entry-answer")).to_contain_text("在线续签")
    await expect(page.locator("#review-due")).to_be_visible()  # the desk is not the owner: still to confirm
    await expect(page.locator("#revisions")).to_contain_text("编辑")

    # The owning department confirms the answer is still valid.
    await page.context.clear_cookies()
    await sign_in(page, await issue_token(redis, "department", "hrss"))
    await page.goto(f"/console/knowledge?mine=1&due=1&q={t}")
    await page.locator(f"#entry-{stale.id}").get_by_role("link").click()
    await page.locator("#confirm-entry").click()
    await expect(page.locator("#done")).to_contain_text("已确认此答复有效")
    await expect(page.locator("#done")).to_be_focused()
    await read_once(page, KNOWLEDGE_DONE["confirmed"], by="focus")
    await expect(page.locator("#review-due")).to_have_count(0)
    # Confirmed today: the day the test began, or the next if local midnight passed meanwhile.
    confirmed_on = {tz_today.isoformat(), local_today(settings.timezone).isoformat()}
    await expect(page.locator("#entry-reviewed")).to_have_text(
        re.compile("^(" + "|".join(confirmed_on) + ")$")
    )
    await expect(page.locator("#revisions tbody tr").first).to_contain_text("确认有效")
    await expect(page.locator("#revisions tbody tr").first).to_contain_text("区人力资源和社会保障局")
    await expect(page.locator("#retire-form")).to_have_count(0)  # retiring is the desk's
    await accessible(page)
    await shot(page, "knowledge-entry")

    # The operators' search gives the edited answer, no longer marked.
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='op09')}"}
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30, headers=operator) as client:

        async def fresh() -> dict | None:
            r = await client.get("/api/v1/knowledge", params={"q": stale.question})
            found = next((a for a in r.json()["answers"] if a["id"] == stale.id), None)
            return found if found and not found["review_due"] and "在线续签" in found["answer"] else None

        await eventually(fresh, timeout=15)
    async with await admin_api(system, redis) as client:
        r = await client.post(f"/api/v1/knowledge/entries/{stale.id}/retire", json={"reason": "测试结束"})
        assert r.status_code == 200, r.text


async def test_knowledge_lists_one_category_and_the_department_files_its_entry(
    page: Page, redis, pool, system: System, settings: Settings, system_city: City
):
    tz_today = datetime.now(ZoneInfo(settings.timezone)).date()
    t = str(random.randint(10**7, 10**8))

    def entry(name: str, question: str, category: str | None, department: str) -> KnowledgeEntry:
        return KnowledgeEntry(
            id=f"kb-e2e-{name}-{t}",
            question=question,
            answer="请拨打热线登记，工作人员会联系您。",
            category=category,
            department=department,
            reviewed=tz_today,
        )

    light = entry("light", f"小区路灯{t}不亮归谁管？", "city.facility.streetlight", "urban_mgmt")
    trash = entry("trash", f"大件垃圾{t}放在哪里？", "city.appearance.garbage", "urban_mgmt")
    power = entry("power", f"小区停电{t}找谁报修？", "utility.power", "power")
    loose = entry("loose", f"路灯杆上的广告{t}谁来清理？", None, "urban_mgmt")
    everything = (light, trash, power, loose)
    await KnowledgeService(pool, redis, system_city, timezone=settings.timezone).seed(everything)

    # An operator narrows the list to 路灯故障: only its entry, named by its category; in the URL.
    await sign_in(page, await issue_token(redis, "operator", operator="op11"))
    await page.goto("/console/knowledge")
    await page.locator("#q").fill(t)
    await page.locator("#search").click()
    await expect(page.locator("#total")).to_have_text("共 4 条")
    await page.locator("#category").select_option(label="城市管理/市政设施/路灯故障")
    await page.locator("#search").click()
    await expect(page).to_have_url(re.compile(r"[?&]category=city\.facility\.streetlight(&|$)"))
    await expect(page.locator("#total")).to_have_text("共 1 条")
    await expect(page.locator(f"#entry-{light.id}")).to_contain_text("城市管理/市政设施/路灯故障")
    for other in (trash, power, loose):
        await expect(page.locator(f"#entry-{other.id}")).to_have_count(0)
    await expect(page.locator("#category")).to_have_value("city.facility.streetlight")
    await expect(page.locator("#q")).to_have_value(t)

    # A branch lists the entries of every category under it.
    await page.locator("#category").select_option("city")
    await page.locator("#search").click()
    await expect(page.locator("#total")).to_have_text("共 2 条")
    await expect(page.locator(f"#entry-{light.id}")).to_be_visible()
    await expect(page.locator(f"#entry-{trash.id}")).to_contain_text("城市管理/市容环境/垃圾清运")
    await expect(page.locator(f"#entry-{power.id}")).to_have_count(0)
    await accessible(page)
    await shot(page, "knowledge-category")

    # The owning department files its entry under 路灯故障 on the edit form; the list then has it.
    await page.context.clear_cookies()
    await sign_in(page, await issue_token(redis, "department", "urban_mgmt"))
    await page.goto(f"/console/knowledge?q={t}")
    await expect(page.locator(f"#entry-{loose.id}")).to_contain_text("未分类")
    await page.locator(f"#entry-{loose.id}").get_by_role("link").click()
    await page.locator("#category").select_option("city.facility.streetlight")
    await page.locator("#save-entry").click()
    await expect(page.locator("#done")).to_contain_text("已保存修改")
    await expect(page.locator("#entry-category")).to_have_text("城市管理/市政设施/路灯故障")
    await page.goto(f"/console/knowledge?q={t}&category=city.facility.streetlight")
    await expect(page.locator("#total")).to_have_text("共 2 条")
    await expect(page.locator(f"#entry-{loose.id}")).to_be_visible()

    # And takes it out again: （未分类） on the form leaves the entry under no category.
    await page.locator(f"#entry-{loose.id}").get_by_role("link").click()
    await page.locator("#category").select_option("")
    await page.locator("#save-entry").click()
    await expect(page.locator("#done")).to_contain_text("已保存修改")
    await expect(page.locator("#entry-category")).to_have_text("未分类")

    async with await admin_api(system, redis) as client:
        for e in everything:
            r = await client.post(f"/api/v1/knowledge/entries/{e.id}/retire", json={"reason": "测试结束"})
            assert r.status_code == 200, r.text
