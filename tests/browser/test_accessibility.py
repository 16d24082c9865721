"""axe-core (WCAG 2.1 A and AA rules) on the page's main states, light and
dark: the first run, an open conversation, a phone's two panes.  The engine's
JS is the copy the axe-playwright-python package ships (a test dependency),
injected over DevTools, so the page's CSP stays as it is and no network is used.
Also: keyboard-only use of the peer list (Tab to it, arrows, Enter, Escape)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import axe_playwright_python
from browser.test_page_looks import TOKEN, Site, peer, site, tid  # noqa: F401  (the fixture)
from playwright.async_api import Page, expect

AXE_JS = (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()
RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


async def violations(page: Page) -> list[dict[str, Any]]:
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE_JS)
    result = await page.evaluate(
        "async (tags) => (await axe.run(document, {runOnly: {type: 'tag', values: tags}})).violations", RULES
    )
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result  # short enough to read in a failure
    ]


FOUND: dict[str, list[dict[str, Any]]] = {}


async def check(page: Page, state: str) -> None:
    """Records what axe finds in a state; the test then asserts all are clean (one report for all)."""
    found = await violations(page)
    if found:
        FOUND[state] = found


async def test_no_axe_violations_in_the_main_states(site: Site) -> None:  # noqa: F811
    for scheme in ("light", "dark"):
        page = await site.page(color_scheme=scheme)
        await expect(page.locator(tid("welcome-card"))).to_be_visible()
        await check(page, f"first run, {scheme}")
    site.api.add_peer(2, "bob")
    site.api.add_peer(3, "carol", online=False)
    site.api.add_history(2, 6, start=1_700_000_000.0)
    site.api.receive(3, "unread from carol https://example.org/x")
    for scheme in ("light", "dark"):
        page = await site.page(color_scheme=scheme)
        await page.locator(peer(2)).click()
        await expect(page.locator(tid("message"))).to_have_count(6)
        await check(page, f"conversation, {scheme}")
    # The phone's panes in dark too only with PEERLINK_LONG_A11Y=1 (same colours as above; keeps CI short).
    for scheme in ("light", "dark") if os.environ.get("PEERLINK_LONG_A11Y") == "1" else ("light",):
        page = await site.page(width=390, height=844, color_scheme=scheme)
        await check(page, f"narrow list, {scheme}")
        await page.locator(peer(2)).click()
        await expect(page.locator(tid("message"))).to_have_count(6)
        await check(page, f"narrow conversation, {scheme}")
    assert FOUND == {}, json.dumps(FOUND, indent=1)


async def focused_peer(page: Page) -> str | None:
    return await page.evaluate("document.activeElement.closest('[data-testid=\"peer-item\"]')?.dataset.peerId ?? null")


async def test_keyboard_only_tab_to_the_list_arrows_enter_escape(site: Site) -> None:  # noqa: F811
    site.api.add_peer(2, "bob")
    site.api.add_peer(3, "carol")
    site.api.add_peer(4, "dave")
    page = await site.page()
    await expect(page.locator(peer(4))).to_have_count(1)
    await page.locator(tid("peer-filter")).focus()
    await page.keyboard.press("Tab")
    assert await focused_peer(page) == "2"
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")
    assert await focused_peer(page) == "4"
    await page.keyboard.press("ArrowUp")
    assert await focused_peer(page) == "3"
    await page.keyboard.press("End")
    assert await focused_peer(page) == "4"
    await page.keyboard.press("Home")
    assert await focused_peer(page) == "2"
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("Enter")
    await expect(page.locator(tid("conversation"))).to_have_attribute("data-peer-id", "3")
    await expect(page.locator(tid("composer"))).to_be_focused()
    await page.keyboard.press("Escape")
    assert await focused_peer(page) == "3"  # back on the list, where we left it
    # A peer-list redraw (a peer came online) keeps the focus where it was.
    site.api.add_peer(5, "erin")
    await expect(page.locator(peer(5))).to_have_count(1)
    assert await focused_peer(page) == "3"
    # On a phone, Escape also brings the list back.
    phone = await site.page(width=390, height=844)
    await phone.locator(peer(2)).click()
    await expect(phone.locator(tid("composer"))).to_be_focused()
    await phone.keyboard.press("Escape")
    await expect(phone.locator(".sidebar")).to_be_visible()
    await expect(phone.locator(tid("conversation"))).to_be_hidden()
    assert await focused_peer(phone) == "2"


async def test_no_axe_violations_in_a_group_and_it_works_by_keyboard(site: Site) -> None:  # noqa: F811
    site.api.add_peer(2, "bob")
    site.api.add_peer(3, "carol", online=False)
    group = site.api.add_group("lunch", [2, 3], created=1_700_000_000.0)
    site.api.group_receive(group["id"], 2, "noodles at noon?", at=1_700_000_060.0)
    mine = await site.api.send_group_message(group["id"], "yes, the usual place")
    site.api.group_delivered(group["id"], mine["id"], 2)
    item = f'[data-testid="group-item"][data-group-id="{group["id"]}"]'
    found: dict[str, list[dict[str, Any]]] = {}
    for scheme in ("light", "dark"):
        page = await site.page(color_scheme=scheme)
        await expect(page.locator(item)).to_have_count(1)
        # Keyboard only: the group is the newest entry of the list; Enter opens it, Escape comes back.
        await page.locator(tid("peer-filter")).focus()
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.closest('[data-testid=\"group-item\"]') !== null")
        await page.keyboard.press("Enter")
        await expect(page.locator(tid("group-composer"))).to_be_focused()
        await expect(page.locator(tid("group-message"))).to_have_count(2)
        await expect(page.locator(tid("group-delivery-summary"))).to_have_text("delivered to 1 of 2")
        await page.locator(tid("group-delivery-summary")).focus()
        await page.keyboard.press("Enter")  # a details element: the list opens
        await expect(page.locator(tid("group-delivery-member"))).to_have_text(["bob: delivered ✓", "carol: not yet"])
        await page.locator(tid("group-members-summary")).click()
        await page.locator(tid("new-group-button")).click()
        await expect(page.locator(tid("new-group-member"))).to_have_count(2)
        if scheme == "light":  # the phone's one pane, once
            await page.set_viewport_size({"width": 390, "height": 844})
            await expect(page.locator(tid("group-conversation"))).to_be_visible()
            await expect(page.locator(".sidebar")).to_be_hidden()
            if os.environ.get("PEERLINK_LONG_A11Y") == "1":  # same colours and parts as the wide page
                result = await violations(page)
                if result:
                    found["group, narrow"] = result
            await page.keyboard.press("Escape")
            await page.locator(tid("group-composer")).focus()
            await page.keyboard.press("Escape")
            await expect(page.locator(".sidebar")).to_be_visible()
            assert await page.evaluate("document.activeElement.closest('[data-testid=\"group-item\"]') !== null")
            await page.set_viewport_size({"width": 1100, "height": 700})
            await page.locator(item).click()
        result = await violations(page)
        if result:
            found[f"group, {scheme}"] = result
    # A member's key change shows in the group (as in the peer list).
    site.api.change_key(3)
    warning = page.locator(f'{tid("group-member")}[data-peer-id="3"] {tid("group-member-key-warning")}')
    await expect(warning).to_have_text("⚠ key changed")
    await expect(page.locator(tid("group-member-count"))).to_have_text("3 members, ⚠ 1 with a changed key")
    # Leaving asks once more; Stay keeps everything as it was, Leave closes the composer.
    await page.locator(tid("group-leave")).click()
    await expect(page.locator(tid("group-leave-no"))).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator(tid("group-leave"))).to_be_focused()
    await expect(page.locator(tid("group-composer"))).to_be_enabled()
    await page.keyboard.press("Enter")
    await page.locator(tid("group-leave-yes")).click()
    await expect(page.locator(tid("group-composer"))).to_be_disabled()
    await expect(page.locator(tid("group-composer-note"))).to_contain_text("no longer a member")
    await expect(page.locator(tid("group-leave"))).to_be_hidden()
    await expect(page.locator(tid("group-line")).last).to_have_text("you left")
    assert found == {}, json.dumps(found, indent=1)
    assert site.errors == []
