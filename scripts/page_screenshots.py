"""Screenshots of the page (light, dark, phone, a group) for docs/screenshots/: the
real web layer over the in-memory fake peer of the unit tests, in Debian's
Chromium.  Run from the repository: .venv/bin/python scripts/page_screenshots.py"""

from __future__ import annotations

import asyncio
import socket
import sys
import time

sys.path.insert(0, "tests")
from browser.chromium import CHROMIUM_ARGS, chromium_path
from playwright.async_api import async_playwright
from unit.fake_api import FakePeerApi

from webpeer.web import WebConfig, create_app, start_site


async def main() -> None:
    api = FakePeerApi(my_id=1, name="alice")
    api.add_peer(2, "bob")
    api.add_peer(3, "carol", online=False)
    api.add_peer(4, "dave")
    api.set_connection(2, "direct", "192.168.1.20:40002")
    api.add_history(2, 12, start=time.time() - 3600, step=240)
    api.receive(3, "See you tomorrow at https://example.org/meetup")
    api.set_nickname(2, "Bob (work)")
    start = time.time() - 1800
    group = api.add_group("Saturday climbing", [2, 3, 4], created=start)
    api.group_receive(group["id"], 4, "Who is in for Saturday? The hall opens at 10.", at=start + 60)
    api.group_receive(group["id"], 2, "Me! I can drive two people.", at=start + 120)
    api.group_receive(group["id"], 3, "Sorry, not this week. Next time!", at=start + 180)
    mine = await api.send_group_message(group["id"], "Count me in, I'll bring the rope.")
    api.group_delivered(group["id"], mine["id"], 2)
    api.group_delivered(group["id"], mine["id"], 4)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    runner = await start_site(create_app(WebConfig(port=port, token="t" * 24), api))
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        for name, w, h, scheme in (
            ("light", 1100, 700, "light"),
            ("dark", 1100, 700, "dark"),
            ("narrow", 390, 844, "light"),
        ):
            ctx = await b.new_context(viewport={"width": w, "height": h}, color_scheme=scheme)
            page = await ctx.new_page()
            await page.goto(f"http://127.0.0.1:{port}/?token={'t' * 24}")
            await page.locator('[data-peer-id="2"]').click()
            await page.wait_for_selector('[data-testid="message"]')
            await page.wait_for_timeout(300)
            await page.screenshot(path=f"docs/screenshots/{name}.png")
        ctx = await b.new_context(viewport={"width": 1100, "height": 700}, color_scheme="light")
        page = await ctx.new_page()
        await page.goto(f"http://127.0.0.1:{port}/?token={'t' * 24}")
        await page.locator(f'[data-group-id="{group["id"]}"]').click()
        await page.wait_for_selector('[data-testid="group-message"]')
        await page.locator('[data-testid="group-delivery"] summary').click()
        await page.locator('[data-testid="group-members-summary"]').click()
        await page.wait_for_timeout(300)
        await page.screenshot(path="docs/screenshots/group.png")
        await b.close()
    await runner.cleanup()


asyncio.run(main())
