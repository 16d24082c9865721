"""The web layer (webpeer/web.py) against an in-memory PeerApi, over real
loopback HTTP: every security rule, every route and the websocket protocol.
Sites run under pytest-aiohttp's ``aiohttp_client`` fixture, which closes
them after each test."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from fake_api import FakePeerApi
from pytest_aiohttp import AiohttpClient

from webpeer.api import MAX_TEXT_BYTES
from webpeer.web import (
    MAX_BODY_BYTES,
    SOCKETS_KEY,
    WebConfig,
    cookie_value,
    create_app,
    default_static_dir,
    default_templates_dir,
    start_site,
)
from webpeer.websocket import WS_HARD_LIMIT_BYTES, WS_MAX_MESSAGE_BYTES

TOKEN = "test-token_0123456789abcdefXYZ"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Site:
    client: TestClient[web.Request, web.Application]
    api: FakePeerApi
    port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def browser(self, **extra: str) -> dict[str, str]:
        """What a same-origin page sends with a POST (the cookie comes from the jar)."""
        return {"Origin": self.origin, **extra}

    async def sign_in(self) -> None:
        response = await self.client.get(f"/?token={TOKEN}", allow_redirects=False)
        assert response.status == 303

    async def ws(self) -> aiohttp.ClientWebSocketResponse:
        """A websocket as a script opens it: Bearer token (and our Origin)."""
        return await self.client.ws_connect("/ws", headers={"Origin": self.origin, **self.bearer})


SiteFactory = Callable[[FakePeerApi], Awaitable[Site]]


@pytest.fixture
def make_site(aiohttp_client: AiohttpClient) -> SiteFactory:
    """Serves a site over ``api`` on 127.0.0.1 at a port fixed before the app
    is made (the config's port is part of the Host, Origin and cookie checks)."""

    async def make(api: FakePeerApi) -> Site:
        port = free_port()
        app = create_app(WebConfig(port=port, token=TOKEN), api)
        client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1", "port": port})
        return Site(client, api, port)

    return make


@pytest.fixture
async def site(make_site: SiteFactory) -> Site:
    api = FakePeerApi()
    api.add_peer(2, "bob")
    api.add_peer(3, "carol", online=False)
    return await make_site(api)


# Events that came in a batch frame and were not read yet, per socket.
_unread: weakref.WeakKeyDictionary[aiohttp.ClientWebSocketResponse, list[dict[str, Any]]] = weakref.WeakKeyDictionary()


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    """The next event, whether it came alone or in a batch."""
    pending = _unread.setdefault(ws, [])
    if pending:
        return pending.pop(0)
    value = await receive_frame(ws, timeout)
    if value["type"] == "batch":
        assert len(value["events"]) > 1
        events: list[dict[str, Any]] = value["events"]
        pending.extend(events[1:])
        return events[0]
    return value


async def receive_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    value = json.loads(msg.data)
    assert isinstance(value, dict)
    return value


async def receive_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        event = await receive_json(ws)
        if event["type"] == kind:
            return event


def assert_security_headers(response: aiohttp.ClientResponse, port: int) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    directives = {part.split()[0]: part.split()[1:] for part in csp.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["connect-src"] == ["'self'", f"ws://127.0.0.1:{port}", f"ws://localhost:{port}"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


# ---------------------------------------------------------------- configuration


def test_config_rejects_unsafe_tokens_and_ports() -> None:
    for token in ["", "with space", "semi;colon", 'quote"', "é", "x" * 513]:
        with pytest.raises(ValueError, match="token"):
            WebConfig(port=8000, token=token)
    with pytest.raises(ValueError, match="port"):
        WebConfig(port=70000, token=TOKEN)


def test_default_asset_dirs_hold_the_page() -> None:
    assert (default_templates_dir() / "index.html").is_file()
    assert (default_static_dir() / "main.js").is_file()
    assert (default_static_dir() / "views" / "messages.js").is_file()
    assert (default_static_dir() / "app.css").is_file()


def test_create_app_refuses_missing_dirs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        create_app(WebConfig(port=8000, token=TOKEN, templates_dir=tmp_path / "nope"), FakePeerApi())


async def test_start_site_binds_loopback_only_and_checks_the_real_port() -> None:
    api = FakePeerApi()
    app = create_app(WebConfig(port=0, token=TOKEN), api)
    runner = await start_site(app)
    try:
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        assert port != 0
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/api/me"
            async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
                assert (await response.json())["name"] == "alice"
                assert_security_headers(response, port)
            # Port 0 in the config means "the port we were reached on", not "any port".
            headers = {"Authorization": f"Bearer {TOKEN}", "Host": f"127.0.0.1:{port + 1}"}
            async with session.get(url, headers=headers) as response:
                assert response.status == 403
    finally:
        await runner.cleanup()


async def test_the_access_log_puts_routine_gets_at_debug_and_changes_and_failures_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(WebConfig(port=0, token=TOKEN), FakePeerApi())
    runner = await start_site(app)  # the access logger is start_site's
    try:
        port = runner.addresses[0][1]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        with caplog.at_level(logging.DEBUG, logger="aiohttp.access"):
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
                async with session.get("/api/me", headers=bearer) as response:
                    assert response.status == 200
                async with session.get("/api/messages?peer=x", headers=bearer) as response:
                    assert response.status == 400
                async with session.post("/api/contacts", json={"peer": 2}, headers=bearer) as response:
                    assert response.status < 500
                    posted = response.status
            # The access log is written after the response is sent: wait for all three.
            deadline = asyncio.get_running_loop().time() + 20
            while len([r for r in caplog.records if r.name == "aiohttp.access"]) < 3:
                assert asyncio.get_running_loop().time() < deadline, caplog.records
                await asyncio.sleep(0.01)
        levels = {r.getMessage().rsplit(" ", 1)[0]: r.levelname for r in caplog.records if r.name == "aiohttp.access"}
        assert levels == {
            "GET /api/me 200": "DEBUG",
            "GET /api/messages 400": "INFO",
            f"POST /api/contacts {posted}": "INFO",
        }
    finally:
        await runner.cleanup()


async def test_start_site_refuses_a_port_the_app_does_not_answer_for() -> None:
    app = create_app(WebConfig(port=free_port(), token=TOKEN), FakePeerApi())
    with pytest.raises(ValueError, match="only accepts"):
        await start_site(app, 1)


# ---------------------------------------------------------------- Host header


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "evil.example",
        "127.0.0.1",
        "127.0.0.1:1",
        "localhost",
        "localhost.evil.example:{port}",
        "127.0.0.1.nip.io:{port}",
        "[::1]:{port}",
        "0.0.0.0:{port}",
        "127.0.0.2:{port}",
    ],
)
async def test_wrong_host_header_is_forbidden(site: Site, host: str) -> None:
    host = host.format(port=site.port)
    for path in ["/", f"/?token={TOKEN}", "/api/me", "/static/main.js", "/ws"]:
        response = await site.client.get(path, headers={"Host": host, **site.bearer, "Origin": site.origin})
        assert response.status == 403, (host, path)
        assert "Host" in (await response.json())["error"]
        assert "Set-Cookie" not in response.headers
        assert_security_headers(response, site.port)


async def test_localhost_host_header_is_accepted(site: Site) -> None:
    response = await site.client.get("/api/me", headers={"Host": f"localhost:{site.port}", **site.bearer})
    assert response.status == 200
    response = await site.client.get("/static/app.css", headers={"Host": f"LOCALHOST:{site.port}"})
    assert response.status == 200


# ---------------------------------------------------------------- token


@pytest.mark.parametrize("path", ["/api/me", "/api/peers", "/api/messages?peer=2", "/api/anything"])
async def test_api_needs_the_token(site: Site, path: str) -> None:
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer \u00e9\u00e9"},
        {"Cookie": f"webpeer_token_{site.port}=wrong"},
        {"Cookie": f"webpeer_token_{site.port + 1}={TOKEN}"},  # another webpeer's cookie
    ]:
        response = await site.client.get(path, headers=headers)
        assert response.status == 401, headers
        assert "token" in (await response.json())["error"]
        assert response.headers["Cache-Control"] == "no-store"
        assert_security_headers(response, site.port)
    # ?token= is for the websocket only: URLs end up in logs and history.
    response = await site.client.get(path + ("&" if "?" in path else "?") + f"token={TOKEN}")
    assert response.status == 401


async def test_post_needs_the_token_even_from_the_page_origin(site: Site) -> None:
    response = await site.client.post("/api/messages", json={"to": 2, "text": "hi"}, headers=site.browser())
    assert response.status == 401
    assert site.api.sent == []


async def test_bearer_token_is_accepted(site: Site) -> None:
    response = await site.client.get("/api/me", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------- cookie flow and page


async def test_token_url_sets_cookie_and_redirects_without_token(site: Site) -> None:
    response = await site.client.get(f"/?token={TOKEN}", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    # The cookie holds the port's HMAC under the token, never the token.
    assert cookie.startswith(f"webpeer_token_{site.port}={cookie_value(TOKEN, site.port)};")
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert_security_headers(response, site.port)
    # The cookie now authenticates the page and the API.
    page = await site.client.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    assert_security_headers(page, site.port)
    html = await page.text()
    assert TOKEN not in html
    me = await site.client.get("/api/me")
    assert me.status == 200
    assert (await me.json())["id"] == 1


async def test_a_cookie_only_works_on_its_own_port(site: Site) -> None:
    # Browsers send every 127.0.0.1 cookie to every port; the value is bound
    # to the port, so another port's cookie (even renamed), or the bare token
    # as a cookie, is refused.
    name = f"webpeer_token_{site.port}"
    for value in (cookie_value(TOKEN, site.port + 1), TOKEN):
        for path in ("/api/me", "/"):
            refused = await site.client.get(path, headers={"Cookie": f"{name}={value}"})
            assert refused.status == 401, (path, value)
    accepted = await site.client.get("/api/me", headers={"Cookie": f"{name}={cookie_value(TOKEN, site.port)}"})
    assert accepted.status == 200


async def test_open_requests_are_capped_with_a_clear_503(aiohttp_client: AiohttpClient) -> None:
    port = free_port()
    api = FakePeerApi()
    app = create_app(WebConfig(port=port, token=TOKEN, max_open_requests=3), api)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1", "port": port})
    headers = {"Origin": f"http://127.0.0.1:{port}", "Authorization": f"Bearer {TOKEN}"}
    sockets = [await client.ws_connect("/ws", headers=headers) for _ in range(3)]
    for ws in sockets:
        await receive_json(ws)
    refused = await client.get("/api/me", headers=headers)
    assert refused.status == 503
    assert "too many open" in (await refused.json())["error"]
    await sockets[0].close()
    for _ in range(100):
        if (await client.get("/api/me", headers=headers)).status == 200:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("a closed websocket did not free its place")
    for ws in sockets[1:]:
        await ws.close()


async def test_a_websocket_whose_writer_died_ends_its_subscription_at_once(site: Site) -> None:
    ws = await site.ws()
    await receive_json(ws)
    assert site.api.subscribers == 1
    (server_ws,) = list(site.client.app[SOCKETS_KEY])

    async def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionResetError("the writer died")

    server_ws.send_str = broken  # type: ignore[method-assign]
    site.api.add_peer(4, "dave")  # an event for the writer, which fails on it
    for _ in range(50):
        if site.api.subscribers == 0:
            break
        await asyncio.sleep(0.02)
    # The page never closed its side; the subscription still ended within a second.
    assert site.api.subscribers == 0
    assert not ws.closed or ws.close_code is not None


async def test_wrong_token_url_sets_no_cookie(site: Site) -> None:
    response = await site.client.get("/?token=nope", allow_redirects=False)
    assert response.status == 401
    assert "Set-Cookie" not in response.headers
    assert (await site.client.get("/api/me")).status == 401


async def test_page_without_cookie_says_how_to_sign_in(site: Site) -> None:
    response = await site.client.get("/")
    assert response.status == 401
    assert "?token=" in await response.text()


class _PageAudit(HTMLParser):
    """Collects what a strict CSP would block or what would leak data into HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.testids: set[str] = set()
        self.scripts: list[str] = []
        self.module_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            if not names.get("src"):
                self.problems.append("inline <script>")
            else:
                self.scripts.append(names["src"] or "")
                if names.get("type") == "module":
                    self.module_scripts.append((names["src"] or "").split("?")[0])
            self._in_script = True
        if names.get("data-testid"):
            self.testids.add(names["data-testid"] or "")
        for name in ("href", "src", "action"):
            value = names.get(name) or ""
            if value.lower().startswith(("javascript:", "data:", "http:", "https:", "//")):
                self.problems.append(f"<{tag} {name}={value}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("script with a body")


async def test_page_has_no_inline_code_and_all_test_ids(site: Site) -> None:
    await site.sign_in()
    html = await (await site.client.get("/")).text()
    audit = _PageAudit()
    audit.feed(html)
    assert audit.problems == []
    assert [src.split("?")[0] for src in audit.scripts] == ["/static/main.js"]
    assert audit.module_scripts == ["/static/main.js"]
    expected = {
        "my-id",
        "my-name",
        "my-fingerprint",
        "my-address",
        "peer-list",
        "conversation",
        "composer",
        "send-button",
        "disconnected-banner",
        "server-status",
    }
    assert expected <= audit.testids
    # The dynamic ones are made by the views.
    script = "\n".join(path.read_text() for path in _scripts())
    for testid in ["peer-item", "message", "message-text", "retry-button", "unread-badge", "connection-state"]:
        assert f'"{testid}"' in script, testid


def _scripts() -> list[Path]:
    """The page's modules: main.js and everything it may import."""
    scripts = sorted(default_static_dir().rglob("*.js"))
    assert default_static_dir() / "main.js" in scripts
    return scripts


def test_script_never_parses_strings_as_html() -> None:
    script = "\n".join(path.read_text() for path in _scripts())
    code = re.sub(r"//.*", "", script)  # the header comments name what they avoid
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setTimeout("',
        "createContextualFragment",
        "DOMParser",
    ]:
        assert sink not in code, sink
    assert "textContent" in code


async def test_static_files_are_served_with_headers(site: Site) -> None:
    for name, kind in [
        ("main.js", "text/javascript"),
        ("views/messages.js", "text/javascript"),  # subfolders are served too
        ("app.css", "text/css"),
    ]:
        response = await site.client.get(f"/static/{name}")
        assert response.status == 200, name
        assert kind in response.headers["Content-Type"]
        # Modules import each other without ?v=: the browser must revalidate them.
        assert response.headers["Cache-Control"] == "no-cache"
        assert_security_headers(response, site.port)
        etag = response.headers["ETag"]
        again = await site.client.get(f"/static/{name}", headers={"If-None-Match": etag})
        assert again.status == 304, name
    assert (await site.client.get("/static/../webpeer/web.py")).status in (403, 404)
    assert (await site.client.get("/static/%2e%2e/pyproject.toml")).status in (403, 404)
    assert (await site.client.get("/static/")).status in (403, 404)


# ---------------------------------------------------------------- Origin


async def test_post_with_cookie_needs_same_origin(site: Site) -> None:
    await site.sign_in()
    body = {"to": 2, "text": "hi"}
    for origin in [
        None,
        "http://evil.example",
        "null",
        f"http://127.0.0.1:{site.port + 1}",
        f"https://127.0.0.1:{site.port}",
        f"http://127.0.0.1:{site.port}.evil.example",
    ]:
        headers = {} if origin is None else {"Origin": origin}
        response = await site.client.post("/api/messages", json=body, headers=headers)
        assert response.status == 403, origin
        assert "Origin" in (await response.json())["error"]
    assert site.api.sent == []
    for origin in [site.origin, f"http://localhost:{site.port}"]:
        response = await site.client.post("/api/messages", json=body, headers={"Origin": origin})
        assert response.status == 201, origin
    assert site.api.sent == [(2, "hi"), (2, "hi")]


async def test_post_with_bearer_may_omit_origin_but_not_lie(site: Site) -> None:
    response = await site.client.post("/api/messages", json={"to": 2, "text": "a"}, headers=site.bearer)
    assert response.status == 201
    headers = {**site.bearer, "Origin": "http://evil.example"}
    response = await site.client.post("/api/messages", json={"to": 2, "text": "b"}, headers=headers)
    assert response.status == 403
    assert site.api.sent == [(2, "a")]


async def test_every_post_route_checks_origin(site: Site) -> None:
    await site.sign_in()
    failed = site.api._new_message(2, 1, 2, "x", "failed")
    queued = site.api._new_message(2, 1, 2, "x", "queued")
    for path in [
        "/api/messages",
        f"/api/messages/{failed['id']}/retry",
        f"/api/messages/{queued['id']}/cancel",
        "/api/peers/2/read",
    ]:
        response = await site.client.post(path, json={}, headers={"Origin": "http://evil.example"})
        assert response.status == 403, path
    assert site.api.retried == [] and site.api.read_marks == [] and site.api.cancelled == []


# ---------------------------------------------------------------- API routes


async def test_me_and_peers(site: Site) -> None:
    me = await (await site.client.get("/api/me", headers=site.bearer)).json()
    assert me == site.api.me()
    assert {"id", "name", "fingerprint", "public_address"} <= me.keys()
    assert site.api.directory_refreshes == 0
    peers = await (await site.client.get("/api/peers", headers=site.bearer)).json()
    assert [(p["id"], p["name"], p["online"]) for p in peers] == [(2, "bob", True), (3, "carol", False)]
    # With no page open no heartbeat fetches the directory: GET asks (node.refresh_directory
    # fetches only when the last page is stale).
    assert site.api.directory_refreshes == 1


async def test_send_then_history_oldest_first(site: Site) -> None:
    response = await site.client.post("/api/messages", json={"to": 2, "text": "first"}, headers=site.bearer)
    assert response.status == 201
    sent = await response.json()
    assert sent["status"] == "sending" and sent["to"] == 2 and sent["text"] == "first"
    assert isinstance(sent["id"], str)
    site.api.receive(2, "second")
    response = await site.client.post("/api/messages", json={"to": 3, "text": "queued one"}, headers=site.bearer)
    assert (await response.json())["status"] == "queued"
    history = await (await site.client.get("/api/messages?peer=2", headers=site.bearer)).json()
    assert [m["text"] for m in history] == ["first", "second"]
    assert [m["from"] for m in history] == [1, 2]
    history = await (await site.client.get("/api/messages?peer=2&limit=1", headers=site.bearer)).json()
    assert [m["text"] for m in history] == ["second"]


async def test_favicon_is_served_as_svg(site: Site) -> None:
    response = await site.client.get("/favicon.ico")  # no token needed: browsers ask for it unasked
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("image/svg+xml")
    assert (await response.read()).startswith(b"<svg")
    assert "Content-Security-Policy" in response.headers


async def test_history_pages_through_5000_messages_without_gap_or_duplicate(site: Site) -> None:
    site.api.add_history(2, 5000, start=1_700_000_000.0, step=0.0)  # one timestamp: order is storage order
    site.api.add_history(3, 10, start=1_700_000_000.0)
    everything = site.api.messages(2, 10_000)

    async def get(query: str) -> list[dict[str, Any]]:
        response = await site.client.get("/api/messages?peer=2" + query, headers=site.bearer)
        assert response.status == 200, await response.text()
        page: list[dict[str, Any]] = await response.json()
        return page

    page = await get("&limit=100")
    backward, sizes = list(page), []
    while page:
        page = await get(f"&before={page[0]['id']}&limit=450")
        sizes.append(len(page))
        backward[:0] = page
    assert [m["id"] for m in backward] == [m["id"] for m in everything]
    assert sizes == [450] * 10 + [400, 0]  # full pages, the rest, then nothing: the start

    page = await get("&limit=1&before=" + everything[1]["id"])
    assert [m["id"] for m in page] == [everything[0]["id"]]
    forward = list(page)
    while page:
        page = await get(f"&after={page[-1]['id']}&limit=5000")
        forward += page
    assert [m["id"] for m in forward] == [m["id"] for m in everything]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?peer=2&before=m1&after=m2", 400),
        ("?peer=2&before=", 400),
        ("?peer=2&after=" + "x" * 201, 400),
        ("?peer=2&before=m1&limit=0", 400),
        ("?peer=2&before=nope", 404),
        ("?peer=3&before=m1", 404),  # m1 is bob's: not in carol's conversation
    ],
)
async def test_history_paging_rejects_bad_cursors(site: Site, query: str, status: int) -> None:
    site.api.add_history(2, 3, start=1_700_000_000.0)
    response = await site.client.get("/api/messages" + query, headers=site.bearer)
    assert response.status == status
    assert (await response.json())["error"]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?peer=",
        "?peer=abc",
        "?peer=-1",
        "?peer=0",
        "?peer=1.5",
        "?peer=2&limit=0",
        "?peer=2&limit=x",
        "?peer=99999999999999999999",
        "?peer=%D9%A3",
        "?peer=4294967296",  # registry ids are 32-bit
        "?peer=2&limit=" + "9" * 5000,  # more digits than int() takes: a 400, not a 500
    ],
)
async def test_history_rejects_bad_parameters(site: Site, query: str) -> None:
    response = await site.client.get("/api/messages" + query, headers=site.bearer)
    assert response.status == 400
    assert (await response.json())["error"]


async def test_text_limit_is_64_kib_of_utf8(site: Site) -> None:
    ok = "a" * MAX_TEXT_BYTES
    response = await site.client.post("/api/messages", json={"to": 2, "text": ok}, headers=site.bearer)
    assert response.status == 201
    for text in ["a" * (MAX_TEXT_BYTES + 1), "é" * (MAX_TEXT_BYTES // 2 + 1), "€" * (MAX_TEXT_BYTES // 3 + 1)]:
        # As a browser's JSON.stringify sends it: UTF-8, not \u escapes.
        body = json.dumps({"to": 2, "text": text}, ensure_ascii=False).encode()
        headers = {**site.bearer, "Content-Type": "application/json"}
        response = await site.client.post("/api/messages", data=body, headers=headers)
        assert response.status == 413
        error = (await response.json())["error"]
        assert str(MAX_TEXT_BYTES) in error and "bytes" in error
    assert len(site.api.sent) == 1
    ok = "€" * (MAX_TEXT_BYTES // 3)
    body = json.dumps({"to": 2, "text": ok}, ensure_ascii=False).encode()
    response = await site.client.post("/api/messages", data=body, headers=site.bearer)
    assert response.status == 201
    assert site.api.sent[-1] == (2, ok)


async def test_body_limit(site: Site) -> None:
    body = json.dumps({"to": 2, "text": "a" * MAX_BODY_BYTES})
    response = await site.client.post(
        "/api/messages", data=body, headers={**site.bearer, "Content-Type": "application/json"}
    )
    assert response.status == 413
    assert "body" in (await response.json())["error"]
    assert site.api.sent == []


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b"[" * 60000, b'{"to": 2, "text": "a"}}'],
)
async def test_malformed_json_is_400(site: Site, body: bytes) -> None:
    response = await site.client.post(
        "/api/messages", data=body, headers={**site.bearer, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert "malformed" in (await response.json())["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"text": "a"},
        {"to": "2", "text": "a"},
        {"to": True, "text": "a"},
        {"to": 2.0, "text": "a"},
        {"to": 0, "text": "a"},
        {"to": 2},
        {"to": 2, "text": 5},
        {"to": 2, "text": None},
        {"to": 2**70, "text": "a"},
        {"to": 2**32, "text": "a"},
        {"to": 2, "text": "\ud800"},  # a lone surrogate: json.dumps writes it as an escape
    ],
)
async def test_bad_fields_are_400(site: Site, body: dict[str, Any]) -> None:
    response = await site.client.post("/api/messages", json=body, headers=site.bearer)
    assert response.status == 400
    assert (await response.json())["error"]
    assert site.api.sent == []


async def test_api_errors_keep_their_status(site: Site) -> None:
    response = await site.client.post("/api/messages", json={"to": 999, "text": "hi"}, headers=site.bearer)
    assert response.status == 404
    assert await response.json() == {"error": "unknown peer 999"}
    response = await site.client.post("/api/messages", json={"to": 1, "text": "hi"}, headers=site.bearer)
    assert response.status == 400
    assert await response.json() == {"error": "cannot send a message to yourself"}
    assert site.api.sent == []
    response = await site.client.post("/api/messages", json={"to": 2, "text": "  "}, headers=site.bearer)
    assert response.status == 400
    assert await response.json() == {"error": "empty message"}


async def test_retry(site: Site) -> None:
    response = await site.client.post("/api/messages/nope/retry", headers=site.bearer)
    assert response.status == 404
    assert await response.json() == {"error": "no message nope"}
    sent = await (await site.client.post("/api/messages", json={"to": 2, "text": "x"}, headers=site.bearer)).json()
    response = await site.client.post(f"/api/messages/{sent['id']}/retry", headers=site.bearer)
    assert response.status == 409
    site.api.set_status(sent["id"], "failed", "peer unreachable")
    response = await site.client.post(f"/api/messages/{sent['id']}/retry", headers=site.bearer)
    assert response.status == 200
    assert (await response.json())["status"] == "sending"
    assert site.api.retried == [sent["id"]]


async def test_a_send_to_an_id_that_exists_but_was_never_listed_is_queued(site: Site) -> None:
    response = await site.client.post("/api/messages", json={"to": 50, "text": "hi"}, headers=site.bearer)
    assert response.status == 201
    assert (await response.json())["status"] == "queued"


async def test_cancel(site: Site) -> None:
    response = await site.client.post("/api/messages/nope/cancel", headers=site.bearer)
    assert response.status == 404
    assert await response.json() == {"error": "no message nope"}
    response = await site.client.post("/api/messages/%20/cancel", headers=site.bearer)
    assert response.status in (400, 404)
    site.api.add_peer(5, "dave", online=False)
    queued = await (await site.client.post("/api/messages", json={"to": 5, "text": "x"}, headers=site.bearer)).json()
    assert queued["status"] == "queued"
    response = await site.client.post(f"/api/messages/{queued['id']}/cancel", headers=site.bearer)
    assert response.status == 200
    assert await response.json() == {**queued, "status": "failed", "error": "cancelled"}
    assert site.api.cancelled == [queued["id"]]
    # Only once: it is failed now.  A sent one may have arrived: 409 too.
    response = await site.client.post(f"/api/messages/{queued['id']}/cancel", headers=site.bearer)
    assert response.status == 409
    sending = await (await site.client.post("/api/messages", json={"to": 2, "text": "y"}, headers=site.bearer)).json()
    site.api.set_status(sending["id"], "sent")
    response = await site.client.post(f"/api/messages/{sending['id']}/cancel", headers=site.bearer)
    assert response.status == 409
    assert "only a queued or sending one" in (await response.json())["error"]
    # Someone else's message is not ours to cancel.
    received = site.api.receive(2, "hi")
    response = await site.client.post(f"/api/messages/{received['id']}/cancel", headers=site.bearer)
    assert response.status == 404


async def test_mark_read(site: Site) -> None:
    site.api.receive(2, "unread one")
    assert site.api.peers_json()[0]["unread"] == 1
    response = await site.client.post("/api/peers/2/read", headers=site.bearer)
    assert response.status == 204
    assert site.api.read_marks == [2]
    assert site.api.peers_json()[0]["unread"] == 0
    response = await site.client.post("/api/peers/abc/read", headers=site.bearer)
    assert response.status == 400


async def test_unknown_api_route_and_method_are_json(site: Site) -> None:
    response = await site.client.get("/api/nothing", headers=site.bearer)
    assert response.status == 404
    assert (await response.json())["error"]
    response = await site.client.delete("/api/me", headers={**site.bearer, "Origin": site.origin})
    assert response.status == 405
    assert (await response.json())["error"]


# ---------------------------------------------------------------- websocket


async def test_ws_handshake_needs_token_and_origin(site: Site) -> None:
    cases = [
        ({"Origin": site.origin}, 401),  # no token at all
        ({"Origin": site.origin, "Authorization": "Bearer wrong"}, 401),
        ({"Origin": "http://evil.example", **site.bearer}, 403),  # cross-site websocket hijacking
        ({"Origin": "null", **site.bearer}, 403),
        ({"Host": f"evil.example:{site.port}", "Origin": site.origin, **site.bearer}, 403),
    ]
    for headers, status in cases:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await site.client.ws_connect("/ws", headers=headers)
        assert caught.value.status == status, headers
    await site.sign_in()
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:  # cookie, but no Origin
        await site.client.ws_connect("/ws")
    assert caught.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:  # cookie, foreign Origin
        await site.client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
    assert caught.value.status == 403
    assert site.api.subscribers == 0


async def test_ws_accepts_cookie_query_token_and_bearer(site: Site) -> None:
    async with await site.client.ws_connect(f"/ws?token={TOKEN}", headers={"Origin": site.origin}) as ws:
        assert (await receive_json(ws))["type"] == "hello"
    async with await site.client.ws_connect("/ws", headers=site.bearer) as ws:  # a script: no Origin
        assert (await receive_json(ws))["type"] == "hello"
    await site.sign_in()
    async with await site.client.ws_connect("/ws", headers={"Origin": f"http://localhost:{site.port}"}) as ws:
        assert (await receive_json(ws))["type"] == "hello"


async def test_ws_hello_then_live_events(site: Site) -> None:
    async with await site.ws() as ws:
        hello = await receive_json(ws)
        assert hello == {"type": "hello", "me": site.api.me(), "peers": site.api.peers_json()}
        incoming = site.api.receive(2, "live <b>hi</b>")
        assert await receive_json(ws) == {"type": "message", "message": incoming}
        site.api.set_connection(2, "direct", "127.0.0.1:5000")
        event = await receive_json(ws)
        assert event == {
            "type": "connection",
            "peer": 2,
            "connection": {"state": "direct", "address": "127.0.0.1:5000"},
        }
        site.api.set_status(incoming["id"], "delivered")
        assert await receive_json(ws) == {"type": "status", "id": incoming["id"], "status": "delivered", "error": None}
        site.api.add_peer(4, "dave")
        event = await receive_json(ws)
        assert event["type"] == "peers" and [p["id"] for p in event["peers"]] == [2, 3, 4]
    # Closing the socket unsubscribes.
    for _ in range(50):
        if site.api.subscribers == 0:
            break
        await asyncio.sleep(0.01)
    assert site.api.subscribers == 0


async def test_ws_send_read_and_retry(site: Site) -> None:
    async with await site.ws() as ws:
        await receive_json(ws)
        await ws.send_json({"type": "send", "to": 2, "text": "over ws", "client_id": "c1"})
        sent = await receive_until(ws, "sent")
        assert sent["client_id"] == "c1"
        assert sent["message"]["text"] == "over ws" and sent["message"]["to"] == 2
        assert site.api.sent == [(2, "over ws")]

        await ws.send_json({"type": "read", "peer": 2})
        await ws.send_json({"type": "retry", "id": sent["message"]["id"], "client_id": "r1"})
        error = await receive_until(ws, "error")
        assert error == {
            "type": "error",
            "client_id": "r1",
            "status": 409,
            "error": f"message {sent['message']['id']} has not failed",
        }
        assert site.api.read_marks == [2]

        site.api.set_status(sent["message"]["id"], "failed", "timeout")
        await ws.send_json({"type": "retry", "id": sent["message"]["id"], "client_id": "r2"})
        answer = await receive_until(ws, "sent")
        assert answer["client_id"] == "r2" and answer["message"]["status"] == "sending"

        await ws.send_json({"type": "cancel", "id": sent["message"]["id"], "client_id": "x1"})
        cancelled = await receive_until(ws, "cancelled")
        assert cancelled["client_id"] == "x1"
        assert (cancelled["message"]["status"], cancelled["message"]["error"]) == ("failed", "cancelled")
        await ws.send_json({"type": "cancel", "id": sent["message"]["id"], "client_id": "x2"})
        error = await receive_until(ws, "error")
        assert (error["client_id"], error["status"]) == ("x2", 409)


async def test_ws_events_ready_at_once_come_as_one_batch(site: Site) -> None:
    async with await site.ws() as ws:
        await receive_frame(ws)
        first = site.api.receive(2, "one")
        second = site.api.receive(2, "two")
        site.api.set_status(second["id"], "delivered")
        assert await receive_frame(ws) == {
            "type": "batch",
            "events": [
                {"type": "message", "message": first},
                {"type": "message", "message": second},
                {"type": "status", "id": second["id"], "status": "delivered", "error": None},
            ],
        }
        site.api.receive(2, "alone")
        assert (await receive_frame(ws))["type"] == "message"  # a single event is not wrapped


def test_large_batches_are_split_and_a_bad_event_is_dropped() -> None:
    from webpeer.websocket import WS_BATCH_BYTES, _frames

    big = [{"type": "message", "message": {"text": "x" * (WS_BATCH_BYTES // 3)}} for _ in range(7)]
    frames = [json.loads(text) for text in _frames(big)]
    assert all(len(json.dumps(frame)) <= WS_BATCH_BYTES for frame in frames)
    assert len(frames) > 1
    unpacked = [e for f in frames for e in (f["events"] if f["type"] == "batch" else [f])]
    assert unpacked == big
    huge = {"type": "message", "message": {"text": "y" * 2 * WS_BATCH_BYTES}}
    assert [json.loads(text) for text in _frames([huge])] == [huge]  # alone, it may exceed the size
    good = {"type": "resync"}
    assert [json.loads(text) for text in _frames([good, {"type": "bad", "value": object()}, good])] == [good, good]


async def test_ws_own_send_comes_back_as_the_answer_others_get_the_event(site: Site) -> None:
    async with await site.ws() as mine, await site.ws() as other:
        await receive_json(mine)
        await receive_json(other)
        await mine.send_json({"type": "send", "to": 2, "text": "from this tab", "client_id": "t1"})
        answer = await receive_json(mine)
        assert answer["type"] == "sent" and answer["message"]["text"] == "from this tab"
        event = await receive_json(other)
        assert event == {"type": "message", "message": answer["message"]}
        site.api.receive(2, "next")  # the next thing this tab hears is not its own message again
        assert (await receive_json(mine))["message"]["text"] == "next"


class HoldingApi(FakePeerApi):
    """Sends are stored only when the test says so (a commit that takes a while)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[asyncio.Future[dict[str, Any]], dict[str, Any]]] = []

    def submit_message(
        self, to: int, text: str, *, answered_on: asyncio.Queue[dict[str, Any]] | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        stored = super().submit_message(to, text, answered_on=answered_on).result()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.held.append((future, stored))
        return future

    def commit(self) -> None:
        for future, stored in self.held:
            future.set_result(stored)
        self.held.clear()

    async def wait_held(self, count: int) -> None:
        """Until ``count`` sends wait for their commit (the socket reads them in its own time)."""
        for _ in range(100):
            if len(self.held) >= count:
                return
            await asyncio.sleep(0.01)


Holding = tuple[HoldingApi, aiohttp.ClientWebSocketResponse]


@pytest.fixture
async def holding(make_site: SiteFactory) -> AsyncIterator[Holding]:
    """A site over a HoldingApi that knows peer 2, and a websocket past its hello."""
    api = HoldingApi()
    api.add_peer(2, "bob")
    site = await make_site(api)
    ws = await site.ws()
    await receive_json(ws)
    yield api, ws
    await ws.close()


async def test_ws_sent_answers_wait_for_the_commit_and_keep_request_order(holding: Holding) -> None:
    api, ws = holding
    for n in range(3):
        await ws.send_json({"type": "send", "to": 2, "text": f"m{n}", "client_id": f"c{n}"})
    await ws.send_json({"type": "send", "to": 999, "text": "x", "client_id": "bad"})
    await api.wait_held(3)
    # Nothing comes before the commit (this socket gets no "message"
    # events for its own sends: the answers carry the messages).
    with pytest.raises(asyncio.TimeoutError):
        await receive_json(ws, timeout=0.2)
    api.commit()
    answers = [await receive_json(ws) for _ in range(4)]
    assert [(a["type"], a["client_id"]) for a in answers] == [
        ("sent", "c0"),
        ("sent", "c1"),
        ("sent", "c2"),
        ("error", "bad"),
    ]
    assert [a["message"]["text"] for a in answers[:3]] == ["m0", "m1", "m2"]


async def test_ws_answers_survive_a_dropped_event_backlog(holding: Holding) -> None:
    api, ws = holding
    for n in range(3):
        await ws.send_json({"type": "send", "to": 2, "text": f"m{n}", "client_id": f"c{n}"})
    await api.wait_held(3)
    api.commit()
    await asyncio.sleep(0)  # the answers are ready; the writer has not run yet
    for i in range(2000):  # many more than the queue holds: its backlog is dropped
        api.receive(2, f"flood {i}")
    seen: list[dict[str, Any]] = []
    while len([e for e in seen if e["type"] == "sent"]) < 3 or {"type": "resync"} not in seen:
        seen.append(await receive_json(ws))
    assert [e["client_id"] for e in seen if e["type"] == "sent"] == ["c0", "c1", "c2"]
    assert {"type": "resync"} in seen


async def test_ws_answer_goes_before_news_about_its_message(holding: Holding) -> None:
    api, ws = holding
    await ws.send_json({"type": "send", "to": 2, "text": "quick", "client_id": "q"})
    await api.wait_held(1)
    message_id = api.held[0][1]["id"]
    api.commit()
    api.set_status(message_id, "delivered")  # its receipt, before the answer went out
    first, second = await receive_json(ws), await receive_json(ws)
    assert (first["type"], first["client_id"]) == ("sent", "q")  # the page learns of the message first
    assert second == {"type": "status", "id": message_id, "status": "delivered", "error": None}


async def test_ws_stops_reading_a_page_with_too_many_unanswered_sends(
    monkeypatch: pytest.MonkeyPatch, holding: Holding
) -> None:
    monkeypatch.setattr("webpeer.websocket.MAX_UNANSWERED", 5)
    api, ws = holding
    for n in range(8):
        await ws.send_json({"type": "send", "to": 2, "text": f"m{n}", "client_id": f"c{n}"})
    await asyncio.sleep(0.2)
    assert len(api.held) == 5  # the other three wait in the socket
    api.commit()
    await api.wait_held(3)
    api.commit()
    answers = [await receive_json(ws) for _ in range(8)]
    assert [a["client_id"] for a in answers] == [f"c{n}" for n in range(8)]


@pytest.mark.parametrize(
    ("request_text", "status", "client_id", "words"),
    [
        ("{", 400, None, "malformed JSON"),
        ("[]", 400, None, "JSON object"),
        ('{"type": "dance", "client_id": "c9"}', 400, "c9", "unknown request type"),
        ('{"client_id": "c9"}', 400, "c9", "unknown request type"),
        ('{"type": "send", "to": 999, "text": "x", "client_id": "c2"}', 404, "c2", "unknown peer 999"),
        ('{"type": "send", "to": 1, "text": "x", "client_id": "c2"}', 400, "c2", "cannot send a message to yourself"),
        ('{"type": "cancel", "id": 7, "client_id": "c2"}', 400, "c2", "message id"),
        ('{"type": "cancel", "id": "nope", "client_id": "c2"}', 404, "c2", "no message nope"),
        ('{"type": "send", "to": "2", "text": "x", "client_id": "c3"}', 400, "c3", "positive integer"),
        ('{"type": "send", "to": 2, "client_id": "c4"}', 400, "c4", "text must be a string"),
        ('{"type": "send", "to": 2, "text": "x", "client_id": 5}', 400, None, "client_id"),
        ('{"type": "read", "peer": null}', 400, None, "positive integer"),
        ('{"type": "retry", "id": 7}', 400, None, "message id"),
        ('{"type": "send", "to": 2, "text": " \\n ", "client_id": "c6"}', 400, "c6", "empty message"),
        ('{"type": "send", "to": 2, "text": "a\\udc00", "client_id": "c7"}', 400, "c7", "not valid Unicode"),
        ('{"type": "send", "to": 4294967296, "text": "x", "client_id": "c8"}', 400, "c8", "positive integer"),
    ],
)
async def test_ws_bad_requests_get_error_events(
    site: Site, request_text: str, status: int, client_id: str | None, words: str
) -> None:
    async with await site.ws() as ws:
        await receive_json(ws)
        await ws.send_str(request_text)
        error = await receive_until(ws, "error")
        assert error["status"] == status
        assert error["client_id"] == client_id
        assert words in error["error"]
        # The socket still works.
        await ws.send_json({"type": "send", "to": 2, "text": "still here", "client_id": "ok"})
        assert (await receive_until(ws, "sent"))["client_id"] == "ok"


async def test_ws_oversize_message_gets_an_error_and_the_socket_stays_usable(site: Site) -> None:
    async with await site.ws() as ws:
        await receive_json(ws)
        text = "a" * (MAX_TEXT_BYTES + 1)  # fits the websocket limit, not the text limit
        await ws.send_json({"type": "send", "to": 2, "text": text, "client_id": "big"})
        error = await receive_until(ws, "error")
        assert error["status"] == 413 and error["client_id"] == "big"
        assert str(MAX_TEXT_BYTES) in error["error"]
        await ws.send_json({"type": "send", "to": 2, "text": "x" * (WS_MAX_MESSAGE_BYTES + 10), "client_id": "huge"})
        error = await receive_until(ws, "error")
        assert error["status"] == 413 and "websocket message larger" in error["error"]
        await ws.send_bytes(b"\x00\x01")
        error = await receive_until(ws, "error")
        assert "binary" in error["error"]
        assert site.api.sent == []
        await ws.send_json({"type": "send", "to": 2, "text": "small", "client_id": "small"})
        assert (await receive_until(ws, "sent"))["client_id"] == "small"
        assert site.api.sent == [(2, "small")]


async def test_ws_beyond_hard_limit_closes_only_that_socket(site: Site) -> None:
    async with await site.ws() as other:
        await receive_json(other)
        async with await site.ws() as ws:
            await receive_json(ws)
            await ws.send_str("a" * (WS_HARD_LIMIT_BYTES + 1))
            msg = await ws.receive(timeout=5)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
            assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await other.send_json({"type": "send", "to": 2, "text": "fine", "client_id": "f"})
        assert (await receive_until(other, "sent"))["client_id"] == "f"


async def test_ws_closed_on_shutdown(make_site: SiteFactory) -> None:
    api = FakePeerApi()
    client = (await make_site(api)).client
    ws = await client.ws_connect("/ws", headers={"Authorization": f"Bearer {TOKEN}"})
    await receive_json(ws)
    closing = asyncio.create_task(client.server.close())  # runs on_shutdown
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    await asyncio.wait_for(closing, 10)
    assert api.subscribers == 0


class _BrokenApi(FakePeerApi):
    """A peer with a bug: sending raises something that is not an ApiError."""

    async def send_message(self, to: int, text: str) -> dict[str, Any]:
        raise RuntimeError("bug in the peer")

    def submit_message(
        self, to: int, text: str, *, answered_on: asyncio.Queue[dict[str, Any]] | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.set_exception(RuntimeError("bug in the peer"))
        return future


async def test_a_bug_in_the_peer_is_a_500_not_a_dead_socket(
    make_site: SiteFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = _BrokenApi()
    api.add_peer(2, "bob")
    client = (await make_site(api)).client
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await client.post("/api/messages", json={"to": 2, "text": "x"}, headers=headers)
    assert response.status == 500
    assert "internal error" in (await response.json())["error"]
    async with client.ws_connect("/ws", headers=headers) as ws:
        await receive_json(ws)
        await ws.send_json({"type": "send", "to": 2, "text": "x", "client_id": "b"})
        error = await receive_until(ws, "error")
        assert error["status"] == 500 and error["client_id"] == "b"
        await ws.send_json({"type": "read", "peer": 2})
        await ws.send_json({"type": "what"})
        assert (await receive_until(ws, "error"))["status"] == 400
    assert "bug in the peer" in caplog.text


async def test_slow_consumer_gets_a_snapshot_not_a_crash(site: Site) -> None:
    async with await site.ws() as ws:
        await receive_json(ws)
        for i in range(2000):  # many more than the fake's queue holds
            site.api.receive(2, f"m{i}")
        kinds = set()
        while True:
            event = await receive_json(ws)
            kinds.add(event["type"])
            if event["type"] == "message" and event["message"]["text"] == "m1999":
                break
        assert kinds == {"message", "resync"}
        await ws.send_json({"type": "read", "peer": 2})
        await ws.send_json({"type": "nope"})
        assert (await receive_until(ws, "error"))["status"] == 400


# ---------------------------------------------------------------- key trust


async def test_safety_number_and_its_qr_code(site: Site) -> None:
    response = await site.client.get("/api/peers/2/safety", headers=site.bearer)
    assert response.status == 200
    safety = await response.json()
    assert safety == site.api.safety(2)
    assert len(safety["safety_number"].split()) == 12
    response = await site.client.get("/api/peers/2/safety.svg", headers=site.bearer)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("image/svg+xml")
    assert_security_headers(response, site.port)
    svg = (await response.read()).decode()
    assert svg.startswith("<svg") and "<path" in svg
    assert "<script" not in svg and "<style" not in svg and "style=" not in svg
    missing = await site.client.get("/api/peers/9/safety.svg", headers=site.bearer)
    assert missing.status == 404
    assert (await site.client.get("/api/peers/2/safety.svg")).status == 401


async def test_trust_actions_are_checked_at_the_edge(site: Site) -> None:
    site.api.change_key(2)
    for body in [{}, {"action": "trust me"}, {"action": 1}, {"action": ["accept"]}]:
        response = await site.client.post("/api/peers/2/trust", json=body, headers=site.bearer)
        assert response.status == 400, body
        assert "action must be one of accept, block, verify, unverify" in (await response.json())["error"]
    bad_id = await site.client.post("/api/peers/0/trust", json={"action": "accept"}, headers=site.bearer)
    assert bad_id.status == 400
    await site.sign_in()
    forged = await site.client.post(
        "/api/peers/2/trust", json={"action": "accept"}, headers={"Origin": "http://evil.example"}
    )
    assert forged.status == 403
    assert site.api.trust_actions == []
    response = await site.client.post("/api/peers/2/trust", json={"action": "accept"}, headers=site.bearer)
    assert response.status == 200
    assert (await response.json())["trust"] == "trusted"
    again = await site.client.post("/api/peers/2/trust", json={"action": "accept"}, headers=site.bearer)
    assert again.status == 409
    assert site.api.trust_actions == [(2, "accept"), (2, "accept")]
