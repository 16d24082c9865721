"""Issue 12's browser test: a group made and written in through the page.
Three real peer nodes (alice, bob, carol: QUIC between them over loopback
UDP, SQLite stores, a real rendezvous server), each with its real site, in
this process as in tests/integration/test_group_api.py (three webpeer
processes cost 10-20 s to start on a loaded machine); one headless Chromium
page per peer.

alice makes the group with bob and carol on her page; it shows on theirs;
what alice writes shows on both, with her name; her page shows it delivered
to 2 of 2 (and to whom); bob's answer shows on alice's page; alice removes
carol, and carol's page says so, stops her writing, and still says so after
a reload."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from browser.chromium import CHROMIUM_ARGS, chromium_path
from browser.test_two_peers import WAIT_MS, Peer, open_page
from integration.test_group_api import TOKEN, Member, members  # noqa: F401  (the fixture)
from playwright.async_api import Locator, async_playwright, expect

NAMES = ("alice", "bob", "carol")


@pytest.fixture
async def three(members: Callable[[str], Awaitable[Member]]) -> AsyncIterator[tuple[Peer, Peer, Peer]]:  # noqa: F811
    """alice, bob and carol, registered, each with its page open."""
    nodes = [await members(name) for name in NAMES]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            pages = [
                await open_page(browser, name, f"http://127.0.0.1:{node.port}/?token={TOKEN}")
                for name, node in zip(NAMES, nodes, strict=True)
            ]
            yield pages[0], pages[1], pages[2]
        finally:
            await browser.close()


def group_message(peer: Peer, text: str) -> Locator:
    return peer.testid("group-message").filter(has_text=text)


async def test_a_group_made_on_one_page_is_written_in_on_three(three: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, carol = three
    alice_id, bob_id, carol_id = await alice.my_id(), await bob.my_id(), await carol.my_id()

    # alice ticks bob and carol (offered once their keys are known) and names the group.
    await alice.testid("new-group-button").click()
    await expect(alice.testid("new-group-form")).to_be_visible()
    for peer_id in (bob_id, carol_id):
        await alice.page.locator(f'[data-testid="new-group-member"][value="{peer_id}"]').check(timeout=WAIT_MS)
    await alice.testid("new-group-name").fill("lunch")
    await alice.testid("new-group-create").click()
    await expect(alice.testid("group-conversation")).to_be_visible()
    await expect(alice.testid("group-name")).to_have_text("lunch")
    await expect(alice.testid("group-member-count")).to_have_text("3 members")
    await expect(alice.testid("group-line")).to_have_text(["you created the group “lunch”"], timeout=WAIT_MS)
    await expect(alice.testid("group-composer")).to_be_focused()
    group_id = await alice.testid("group-conversation").get_attribute("data-group-id")
    assert group_id is not None and re.fullmatch(r"[0-9a-f]{64}", group_id)

    # It reaches bob's and carol's lists, beside the people, marked as a group.
    items = {peer.name: peer.page.locator(f'[data-testid="group-item"][data-group-id="{group_id}"]') for peer in three}
    for peer in (bob, carol):
        await expect(items[peer.name]).to_have_count(1, timeout=WAIT_MS)
        await expect(items[peer.name].locator('[data-testid="group-item-name"]')).to_have_text("lunch")
        await expect(items[peer.name]).to_contain_text("group")

    # alice writes; bob has not opened the group: an unread badge, then the message with alice's name.
    await alice.testid("group-composer").fill("noodles at noon?")
    await alice.testid("group-composer").press("Enter")
    await expect(alice.testid("group-composer")).to_have_value("")
    await expect(items["bob"].locator('[data-testid="group-unread-badge"]')).to_have_text("1", timeout=WAIT_MS)
    for peer in (bob, carol):
        await items[peer.name].click()
        await expect(peer.testid("group-name")).to_have_text("lunch")
        theirs = group_message(peer, "noodles at noon?")
        await expect(theirs).to_have_count(1, timeout=WAIT_MS)
        await expect(theirs).to_have_class(re.compile(r"\btheirs\b"))
        await expect(theirs.locator('[data-testid="group-sender"]')).to_have_text("alice")
    await expect(items["bob"].locator('[data-testid="group-unread-badge"]')).to_have_count(0)

    # Per-member delivery on alice's page reaches both, and names them when opened.
    mine = group_message(alice, "noodles at noon?")
    await expect(mine).to_have_class(re.compile(r"\bmine\b"))
    delivery = mine.locator('[data-testid="group-delivery"]')
    await expect(delivery.locator('[data-testid="group-delivery-summary"]')).to_have_text(
        "delivered to 2 of 2", timeout=WAIT_MS
    )
    await delivery.locator("summary").click()
    by_id = sorted([(bob_id, "bob"), (carol_id, "carol")])
    await expect(delivery.locator('[data-testid="group-delivery-member"]')).to_have_text(
        [f"{name}: delivered ✓" for _, name in by_id]
    )

    # bob answers: alice's page shows it under bob's name.
    await bob.testid("group-composer").fill("yes, at the corner")
    await bob.testid("group-composer").press("Enter")
    answer = group_message(alice, "yes, at the corner")
    await expect(answer).to_have_count(1, timeout=WAIT_MS)
    await expect(answer.locator('[data-testid="group-sender"]')).to_have_text("bob")
    await expect(group_message(carol, "yes, at the corner")).to_have_count(1, timeout=WAIT_MS)

    # Each conversation keeps its own draft: bob's half-written group text waits while he looks at alice's.
    await bob.testid("group-composer").fill("half written")
    await bob.page.locator(bob.peer_item(alice_id)).click()
    await expect(bob.testid("group-conversation")).to_be_hidden()
    await expect(bob.testid("composer")).to_have_value("")
    await items["bob"].click()
    await expect(bob.testid("group-composer")).to_have_value("half written")

    # alice (the admin) removes carol: a line on every page, and carol can no longer write.
    await alice.testid("group-members-summary").click()
    await expect(alice.testid("group-member")).to_have_count(3)
    await alice.page.locator(f'[data-testid="group-remove"][data-peer-id="{carol_id}"]').click()
    await expect(alice.testid("group-member-count")).to_have_text("2 members", timeout=WAIT_MS)
    await expect(alice.testid("group-line").filter(has_text="you removed carol")).to_have_count(1, timeout=WAIT_MS)
    await expect(carol.testid("group-line").filter(has_text="alice removed you")).to_have_count(1, timeout=WAIT_MS)
    await expect(carol.testid("group-composer")).to_be_disabled()
    await expect(carol.testid("group-composer-note")).to_contain_text("no longer a member")
    # bob has no remove buttons: he is not an admin.
    await bob.testid("group-members-summary").click()
    await expect(bob.testid("group-member")).to_have_count(2, timeout=WAIT_MS)
    await expect(bob.testid("group-remove")).to_have_count(0)

    # A reload keeps the group open (its address) and its lines (GET .../changes).
    await carol.page.reload()
    await expect(carol.testid("group-line")).to_have_text(
        ["alice created the group “lunch”", "alice removed you"], timeout=WAIT_MS
    )
    await expect(group_message(carol, "noodles at noon?")).to_have_count(1)

    for peer in three:
        assert peer.dialogs == [], peer.name
        assert peer.page_errors == [], peer.name
        assert peer.csp_errors == [], peer.name
        await expect(peer.testid("error-banner")).to_be_hidden()
