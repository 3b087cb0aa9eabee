"""The desk's access page end to end, in Chromium against the started system: the desk issues an
operator's credential in the browser, the new operator signs in with it, the desk revokes it and the
operator's next page goes to sign in. Its operator is drawn for this test: no other test's token is
touched."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.async_api import Browser, Page, expect

from shared.access import MAX_DAYS, MIN_DAYS
from shared.auth import issue_token
from tests.browser_support import read_once
from tests.conftest import System
from tests.test_console_e2e import (
    accessible,
    fits_a_phone,
    shot,
    sign_in,
)

pytestmark = pytest.mark.integration


async def test_the_desk_issues_an_operators_credential_and_revokes_it(
    page: Page, browser: Browser, redis, system: System
):
    op = f"t{uuid.uuid4().hex[:7]}"
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await sign_in(page, await issue_token(redis, "admin", note="测试派单员"))
    await page.get_by_role("navigation", name="主导航").get_by_role("link", name="凭证管理").click()
    await expect(page.locator("h1")).to_have_text("凭证管理")
    await expect(page.locator("#days")).to_have_value("90")  # TOKEN_TTL_DAYS
    await accessible(page)

    # Only the chosen role's fields show; a missing 工号 is refused beside its field.
    await page.get_by_label("角色", exact=True).select_option(label="话务员")
    await expect(page.get_by_label("工号")).to_be_visible()
    await expect(page.locator("#department")).to_be_hidden()
    await expect(page.locator("#grid")).to_be_hidden()
    await page.get_by_role("button", name="签发凭证").click()
    await expect(page.locator("#operator-error")).to_have_text("请填写话务员的工号，如 0231")
    await expect(page.locator("#operator")).to_have_attribute("aria-invalid", "true")
    # The field at fault has the focus and is read with its reason, which is not announced too.
    await expect(page.locator("#operator")).to_be_focused()
    await read_once(page, "请填写话务员的工号，如 0231", by="focus")
    await expect(page.get_by_label("角色", exact=True)).to_have_value("operator")
    await page.get_by_label("工号").fill(op)
    # 有效天数 offers the range a grant is checked against, and the browser holds back what is outside it.
    days = page.get_by_label("有效天数")
    await expect(days).to_have_attribute("min", str(MIN_DAYS))
    await expect(days).to_have_attribute("max", str(MAX_DAYS))
    await expect(page.locator("#days-hint")).to_contain_text(f"可填{MIN_DAYS}到{MAX_DAYS}天")
    await days.fill(str(MAX_DAYS + 1))
    await page.get_by_role("button", name="签发凭证").click()
    await expect(days).to_be_focused()
    assert await days.evaluate("el => el.validity.rangeOverflow")
    await expect(page.locator("#issued")).to_have_count(0)
    await expect(page.get_by_label("工号")).to_have_value(op)
    await page.get_by_label("有效天数").fill("30")
    await page.get_by_label("备注").fill("张三 测试")
    await page.get_by_role("button", name="签发凭证").click()

    # Shown once, with a copy button and how the person signs in; the credential has the focus, to
    # be copied, read with that it is shown this once, and a screen reader is told whose it is.
    issued = page.locator("#issued")
    await expect(issued.locator("h2")).to_have_text(f"已为话务员 {op}（张三 测试）签发凭证")
    await expect(page.locator("#new-token")).to_be_focused()
    await expect(page.locator("#announcer")).to_have_text(f"已为话务员 {op}（张三 测试）签发凭证。")
    await read_once(page, "凭证只显示这一次", by="focus")
    await read_once(page, f"已为话务员 {op}（张三 测试）签发凭证", by="announcer")
    token = await page.locator("#new-token").input_value()
    assert len(token) >= 40
    await expect(page.locator("#shown-once")).to_contain_text("凭证只显示这一次")
    await expect(page.locator("#how-to-use")).to_contain_text(f"{system.base_url}/console/signin")
    await page.get_by_role("button", name="复制凭证").click()
    await expect(page.locator("#copy-state")).to_have_text("已复制到剪贴板")
    assert await page.evaluate("navigator.clipboard.readText()") == token
    await accessible(page)
    await shot(page, "access-issued")
    token_id = (await page.locator("#issued label").inner_text()).split("编号 ")[1][:16]
    row = page.locator(f"#token-{token_id}")
    await expect(row).to_contain_text("话务员")
    await expect(row).to_contain_text(f"工号 {op}")
    await expect(row).to_contain_text("张三 测试")
    await expect(row.locator("td[data-label=最近使用]")).to_have_text("暂无记录")
    first = page.locator("#access-audit tbody tr").first
    await expect(first).to_contain_text("签发")
    await expect(first).to_contain_text("派单中心 测试派单员")
    await expect(first).to_contain_text(f"话务员 {op}（张三 测试）")

    # The new operator signs in with it, in a browser of their own.
    context = await browser.new_context(base_url=system.base_url, locale="zh-CN")
    operator = await context.new_page()
    await sign_in(operator, token)
    await expect(operator).to_have_url(re.compile(r"/console/operator$"))
    await expect(operator.locator(".who")).to_contain_text(op)

    # The desk finds it by role and words (the page shows its first use), revokes it after a
    # confirmation that names who loses access; called off first, nothing happens.
    await page.goto("/console/access")
    await page.locator("#role-filter").get_by_role("link", name="话务员").click()
    await page.get_by_label("查找").fill(op)
    await page.get_by_role("button", name="查找").click()
    await expect(page).to_have_url(re.compile(rf"role=operator&q={op}$"))
    await expect(page.locator("#tokens tbody tr")).to_have_count(1)
    await expect(row.locator("td[data-label=最近使用]")).not_to_have_text("暂无记录")
    await accessible(page)
    await fits_a_phone(page)
    await shot(page, "access")
    asked: list[str] = []

    async def call_off(dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", call_off)
    revoke = row.get_by_role("button", name=re.compile("^吊销"))
    await revoke.click()
    await expect(row).to_be_visible()
    assert len(asked) == 1
    assert asked[0].startswith(f"确定吊销话务员 {op}（张三 测试）的凭证 {token_id} 吗？")
    await operator.reload()
    await expect(operator).to_have_url(re.compile(r"/console/operator$"))  # still signed in

    page.once("dialog", lambda dialog: dialog.accept())
    await revoke.click()
    await expect(page).to_have_url(re.compile(rf"/console/access\?role=operator&q={op}&revoked={token_id}$"))
    await expect(page.locator("#revoked")).to_contain_text(f"已吊销话务员 {op}（张三 测试）的凭证 {token_id}")
    await expect(page.locator("#revoked")).to_be_focused()
    said = (await page.locator("#revoked").text_content() or "").strip()
    await read_once(page, said, by="focus")
    await expect(page.locator("#tokens tbody tr")).to_have_text(["没有符合条件的凭证"])
    first = page.locator("#access-audit tbody tr").first
    await expect(first).to_contain_text("吊销")
    await expect(first).to_contain_text(token_id)
    await expect(first).to_contain_text("派单中心 测试派单员")
    await accessible(page)

    # The operator's next page load is sent to sign in, and the token no longer signs in.
    await operator.goto("/console/operator")
    await expect(operator).to_have_url(re.compile(r"/console/signin$"))
    await expect(operator.locator("#session-ended")).to_contain_text("登录凭证已被吊销或已过期")
    await sign_in(operator, token)
    await expect(operator.locator("#token-error")).to_contain_text("登录凭证无效")
    await context.close()


async def test_the_access_page_is_the_desks_alone(page: Page, redis):
    # signed in as others here
    for token in (
        await issue_token(redis, "operator", operator=f"t{uuid.uuid4().hex[:7]}"),
        await issue_token(redis, "department", "water"),
    ):
        await sign_in(page, token)
        await expect(page.get_by_role("link", name="凭证管理")).to_have_count(0)
        response = await page.goto("/console/access")
        assert response is not None
        assert response.status == 403
        await expect(page.locator("h1")).to_have_text("无权访问")
        csrf = await page.locator("#main").get_attribute("data-csrf") or ""
        posted = await page.request.post(
            "/console/access/issue", form={"csrf": csrf, "role": "admin", "idem": uuid.uuid4().hex}
        )
        assert posted.status == 403
