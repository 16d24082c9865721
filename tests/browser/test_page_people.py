"""The page's people features in headless Chromium against the real web layer
and the fake peer (tests/browser/test_page_fake.py's harness): adding a
contact by id, nicknames, read receipts, the peer filter, last seen, and the
read-receipts setting."""

from __future__ import annotations

import re

from browser.test_page_fake import TOKEN, Harness, harness, until  # noqa: F401  (the fixture)
from playwright.async_api import expect

# The harness (test_page_fake.py's) runs on the session's loop with the shared
# Chromium (tests/browser/conftest.py).


async def test_contacts_nicknames_read_receipts_filter_and_setting(harness: Harness) -> None:  # noqa: F811
    h, page, api = harness, harness.page, harness.api
    await page.goto(f"{h.url}?token={TOKEN}")
    await expect(page.locator(h.testid("peer-item"))).to_have_count(3)

    # An offline peer says when it was last seen; an online one does not.
    await expect(page.locator(h.testid("last-seen", h.peer(4)))).to_have_text("last seen 1 h ago")
    await expect(page.locator(h.testid("last-seen", h.peer(2)))).to_have_count(0)

    # "Chat with id": an id the server never gave out is refused, a real one is added and opened.
    await page.locator(h.testid("open-peer-id")).fill("999")
    await page.locator(h.testid("open-peer-button")).click()
    await expect(page.locator(h.testid("error-text"))).to_contain_text("unknown peer 999")
    await expect(page.locator(h.peer(999))).to_have_count(0)
    await page.locator(h.testid("open-peer-id")).fill("7")
    await page.locator(h.testid("open-peer-button")).click()
    await expect(page.locator(h.peer(7))).to_have_count(1)
    await expect(page.locator(h.testid("conversation"))).to_have_attribute("data-peer-id", "7")

    # A nickname for bob: shown instead of his name, his own name beside it.
    await page.locator(h.peer(2)).click()
    await page.locator(h.testid("rename-button")).click()
    await page.locator(h.testid("rename-input")).fill("Bobby")
    await page.locator(h.testid("rename-input")).press("Enter")
    await expect(page.locator(h.testid("peer-name", h.peer(2)))).to_have_text("Bobby")
    await expect(page.locator(h.testid("peer-own-name", h.peer(2)))).to_have_text("bob")
    await expect(page.locator(h.testid("conversation-name"))).to_have_text("Bobby")
    assert api.peers_json()[0]["nickname"] == "Bobby"

    # A message to bob: delivered, then bob reads it and the page says so.
    await page.locator(h.testid("composer")).fill("did you read this?")
    await page.locator(h.testid("composer")).press("Enter")
    await until(lambda: api.sent == [(2, "did you read this?")], "the fake to get the message")
    sent_id = api.messages(2)[-1]["id"]
    api.set_status(sent_id, "delivered")
    status = page.locator(f'[data-message-id="{sent_id}"] [data-testid="message-status"]')
    await expect(status).to_have_text("delivered ✓✓")
    api.peer_read(2, sent_id)
    await expect(status).to_have_text("read ✓✓")

    # The filter box narrows the list by nickname or #id.
    await page.locator(h.testid("peer-filter")).fill("bobby")
    await expect(page.locator(h.testid("peer-item"))).to_have_count(1)
    await expect(page.locator(h.peer(2))).to_have_count(1)
    await page.locator(h.testid("peer-filter")).fill("nobody here")
    await expect(page.locator(h.testid("peer-item"))).to_have_count(0)
    await expect(page.locator(h.testid("no-peers"))).to_have_text("No peer matches the filter.")
    await page.locator(h.testid("peer-filter")).fill("")
    await expect(page.locator(h.testid("peer-item"))).to_have_count(4)

    # Read receipts can be switched off.
    toggle = page.locator(h.testid("read-receipts-toggle"))
    await expect(toggle).to_be_checked()
    await toggle.uncheck()
    await until(lambda: api.settings() == {"read_receipts": False}, "the setting to be saved")
    assert h.page_errors == []
    # The one failed request is the refused id 999 (Chromium logs a 404 answer).
    assert len(h.console_errors) == 1 and "404" in h.console_errors[0]


async def test_search_in_the_open_conversation(harness: Harness) -> None:  # noqa: F811
    h, page, api = harness, harness.page, harness.api
    api.receive(2, "the green door is open")
    api.receive(2, "nothing to see")
    api.receive(3, "green from someone else")
    await page.goto(f"{h.url}?token={TOKEN}")
    await page.locator(h.peer(2)).click()
    search = page.locator(h.testid("search-input"))
    await search.fill("green")
    await search.press("Enter")
    results = page.locator(h.testid("search-result"))
    await expect(results).to_have_count(1)  # only bob's conversation
    await expect(results).to_contain_text("the green door is open")
    await expect(results).to_contain_text("bob")
    await expect(page.locator(h.testid("search-summary"))).to_contain_text("1 message with “green”")
    await search.fill("purple")
    await search.press("Enter")
    await expect(page.locator(h.testid("search-summary"))).to_have_text("No message has “purple”.")
    await expect(results).to_have_count(0)
    await search.press("Escape")
    await expect(page.locator(h.testid("search-panel"))).to_be_hidden()
    assert h.page_errors == [] and h.console_errors == []


async def test_a_search_result_jumps_to_its_message_far_back_in_the_history(harness: Harness) -> None:  # noqa: F811
    h, page, api = harness, harness.page, harness.api
    api.add_history(2, 600, start=1_700_000_000.0, step=30.0)  # "old 0" .. "old 599": three pages
    await page.goto(f"{h.url}?token={TOKEN}")
    await page.locator(h.peer(2)).click()
    messages = page.locator(h.testid("message"))
    await expect(messages).to_have_count(200)  # the latest page only
    search = page.locator(h.testid("search-input"))
    await search.fill("old 12")  # both words: old 12, 112, 120..129, 212 .. 512; "old 12" is the oldest
    await search.press("Enter")
    results = page.locator(h.testid("search-jump"))
    await expect(results).to_have_count(16)
    await results.last.click()
    target = api.messages(2, 10_000)[12]
    found = page.locator(f'[data-message-id="{target["id"]}"]')
    await expect(found).to_have_class("message theirs found", timeout=20_000)  # two pages back
    await expect(found.locator(h.testid("message-text"))).to_have_text("old 12")
    await expect(found).to_be_in_viewport()
    # Everything from there to the latest is loaded, in order, with no gap.
    ids = await messages.evaluate_all("ms => ms.map(m => m.dataset.messageId)")
    everything = [m["id"] for m in api.messages(2, 10_000)]
    assert ids == everything[len(everything) - len(ids) :] and target["id"] in ids
    # The newest result (loaded already) takes the mark.
    await results.first.click()
    newer = page.locator(f'[data-message-id="{api.messages(2, 10_000)[512]["id"]}"]')
    await expect(newer).to_have_class(re.compile(r"\bfound\b"))
    await expect(found).not_to_have_class(re.compile(r"\bfound\b"))
    await expect(newer).to_be_in_viewport()
    assert h.page_errors == [] and h.console_errors == []
