"""What a screen reader hears of new messages (static/views/announcer.js), in
headless Chromium against the real web layer and the fake peer: the message
lists are not live regions; one hidden role=status region says "bob: <text>"
for one new message from the other side in the open conversation and "N new
messages from bob" for a burst; opening a conversation, paging back, our own
messages and statuses say nothing.  Every announcement is logged by a
MutationObserver on the region, so the test checks the whole sequence, and
"nothing said" is proven by the next message's announcement coming right
after the one before it (no waiting on the chance that nothing happens)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from browser.test_accessibility import AXE_JS, violations
from browser.test_page_looks import Site, peer, site, tid  # noqa: F401  (the fixture)
from playwright.async_api import Page, expect
from unit import fake_api

# Each announcement as it is added (a new element each time: the same text twice is two).
LOG_ANNOUNCEMENTS = """() => {
  window.__said = [];
  const region = document.querySelector('[data-testid="announcer"]');
  new MutationObserver((records) => {
    for (const record of records) for (const node of record.addedNodes) window.__said.push(node.textContent);
  }).observe(region, { childList: true });
}"""


# The axe rules about live regions, lists, ARIA and scrolling by keyboard.
NEAR_RULES = [
    "scrollable-region-focusable",
    "aria-allowed-attr",
    "aria-allowed-role",
    "aria-valid-attr-value",
    "aria-prohibited-attr",
    "list",
    "listitem",
    "nested-interactive",
]


async def rule_violations(page: Page, rules: list[str]) -> list[dict[str, Any]]:
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE_JS)
    result = await page.evaluate(
        "async (rules) => (await axe.run(document, {runOnly: {type: 'rule', values: rules}})).violations", rules
    )
    return [{"id": v["id"], "nodes": [n["target"] for n in v["nodes"]][:5]} for v in result]


async def said(page: Page) -> list[str]:
    return list(await page.evaluate("window.__said"))


async def until_said(page: Page, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 20.0
    while len(await said(page)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"not {count} announcements in 20 s: {await said(page)}"
        await asyncio.sleep(0.05)


async def scroll_back_to_the_start(page: Page) -> None:
    """Scrolls the list to its top by keyboard (the list takes the focus:
    Home) until the "start of the conversation" line shows (each scroll to
    the top asks for the page before)."""
    start = page.locator(tid("conversation-start"))
    list_box = page.locator(tid("message-list"))
    deadline = asyncio.get_running_loop().time() + 20.0
    while await start.count() == 0:
        assert asyncio.get_running_loop().time() < deadline, "the start of the conversation did not come in 20 s"
        await list_box.focus()
        await page.keyboard.press("Home")
        await asyncio.sleep(0.1)


async def announced(page: Page, text: str) -> None:
    await expect(page.locator(tid("announcer"))).to_have_text(text)


async def test_one_message_then_a_burst_of_200_is_one_summary_and_paging_back_says_nothing(
    site: Site,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fake_api, "QUEUE_SIZE", 1100)  # the burst goes in one or two frames, never a resync
    site.api.add_peer(2, "bob")
    site.api.add_history(2, 210, start=1_700_000_000.0)
    page = await site.page()
    region = page.locator(tid("announcer"))
    assert await region.get_attribute("role") == "status"
    # The lists are no live regions: a screen reader would read each message added.
    for name in ("message-list", "group-message-list"):
        assert await page.locator(tid(name)).get_attribute("aria-live") is None
    await page.evaluate(LOG_ANNOUNCEMENTS)
    await page.locator(peer(2)).click()
    messages = page.locator(tid("message"))
    await expect(messages).to_have_count(200)  # the latest page of the history

    site.api.receive(2, "hello   there\nalice")
    await announced(page, "bob: hello there alice")
    # The visually hidden sender stays in each message, for reading the list itself.
    await expect(messages.last.locator(".sr-only")).to_have_text("bob:")
    # axe on what this changed, with a history long enough to scroll: the
    # whole page once has 200 messages' contrast to check, seconds of a
    # loaded machine (the group's test runs all of axe on a page that scrolls).
    found = await rule_violations(page, NEAR_RULES)
    assert found == [], json.dumps(found, indent=1)

    await page.locator(tid("composer")).fill("my own words")
    await page.keyboard.press("Enter")
    await expect(messages.last.locator(tid("message-text"))).to_have_text("my own words")
    for n in range(200):
        site.api.receive(2, f"burst {n}")
    await expect(messages).to_have_count(402, timeout=20_000)
    await announced(page, "200 new messages from bob")

    # Back to the first message: the older page comes in, nothing is said.
    await scroll_back_to_the_start(page)
    await expect(messages).to_have_count(412)
    site.api.receive(2, "after paging")
    await announced(page, "bob: after paging")
    assert await said(page) == ["bob: hello there alice", "200 new messages from bob", "bob: after paging"]

    # The same short text twice is said twice (a new element each time).
    site.api.receive(2, "ok")
    await expect(page.locator(tid("message-text")).last).to_have_text("ok")
    await announced(page, "bob: ok")
    site.api.receive(2, "ok")
    await until_said(page, 5)
    assert (await said(page))[3:] == ["bob: ok", "bob: ok"]
    assert site.errors == []


async def test_a_group_says_who_wrote_one_message_and_sums_up_a_burst(site: Site) -> None:  # noqa: F811
    site.api.add_peer(2, "bob")
    site.api.add_peer(3, "carol")
    group = site.api.add_group("lunch", [2, 3], created=1_700_000_000.0)
    site.api.group_receive(group["id"], 2, "written before", at=1_700_000_060.0)
    page = await site.page()
    await page.evaluate(LOG_ANNOUNCEMENTS)
    await page.locator(f'[data-testid="group-item"][data-group-id="{group["id"]}"]').click()
    group_messages = page.locator(tid("group-message"))
    await expect(group_messages).to_have_count(1)

    site.api.group_receive(group["id"], 3, "noodles at noon?")
    await announced(page, "carol: noodles at noon?")
    await page.locator(tid("group-composer")).fill("yes")
    await page.keyboard.press("Enter")
    await expect(group_messages).to_have_count(3)
    for n in range(30):  # more than the list shows: a list that scrolls
        site.api.group_receive(group["id"], 2 + n % 2, f"plan {n}")
    await expect(group_messages).to_have_count(33)
    await announced(page, "30 new messages from bob and carol")
    assert await said(page) == ["carol: noodles at noon?", "30 new messages from bob and carol"]
    list_box = page.locator(tid("group-message-list"))
    assert await list_box.evaluate("(list) => list.scrollHeight > list.clientHeight")
    found = await violations(page)
    assert found == [], json.dumps(found, indent=1)
    assert site.errors == []
