"""The local web site of a webpeer: the page, the JSON API and the websocket.

The web layer only talks to a :class:`~webpeer.api.PeerApi` (shapes in
webpeer/api.py); it owns no peer state.  ``create_app`` builds the site and
``start_site`` is the only way this module binds a socket: always 127.0.0.1.

Security (issue 3), enforced by one middleware and one response signal:

- Host must be exactly ``127.0.0.1:PORT`` or ``localhost:PORT``, else 403
  (DNS rebinding: a hostile name that resolves to 127.0.0.1 is refused).
- ``/api/*`` and ``/ws`` need the token, else 401: ``Authorization: Bearer
  TOKEN``, or the HttpOnly SameSite=Strict cookie that ``GET /?token=TOKEN``
  sets, or ``?token=`` on ``/ws`` only.  Compared in constant time.  The
  cookie holds :func:`cookie_value` (bound to the port), not the token.
- At most ``max_open_requests`` requests (websockets included) at once, else 503;
  at most ``max_connections`` TCP connections, idle ones closed after
  ``idle_timeout`` or to make room (webpeer/web_connections.py).
- Every unsafe method (POST ...) and ``/ws`` need ``Origin`` equal to
  ``http://127.0.0.1:PORT`` or ``http://localhost:PORT``, else 403 (CSRF and
  cross-site websocket hijacking).  A missing Origin is accepted only with a
  Bearer header: browsers always send Origin on these requests, and a cross-site
  page cannot attach an Authorization header without a CORS preflight we fail.
- Every response carries a Content-Security-Policy without 'unsafe-inline',
  nosniff, no-referrer, and Cache-Control: no-store (static files: no-cache,
  see :func:`_security_headers`).  Scripts are served as text/javascript
  whatever the system's MIME table says (module scripts require it).
- Request bodies are capped at :data:`MAX_BODY_BYTES`; message texts at
  :data:`~webpeer.api.MAX_TEXT_BYTES` UTF-8 bytes (413); websocket messages
  above :data:`webpeer.websocket.WS_MAX_MESSAGE_BYTES` get an error event and the socket stays
  open (aiohttp itself closes the socket, code 1009, only above
  :data:`webpeer.websocket.WS_HARD_LIMIT_BYTES`).

The websocket is in webpeer/websocket.py; request bodies are decoded by
webpeer/parse.py and their fields checked by webpeer/validate.py (the rules
the peer itself applies).  Every refusal is an :class:`~webpeer.api.ApiError`,
which the middleware turns into ``{"error": message}`` with its status.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import segno
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.abc import AbstractAccessLogger

from webpeer import validate, websocket
from webpeer.api import MAX_TEXT_BYTES, ApiError, PeerApi
from webpeer.parse import loads
from webpeer.web_connections import IDLE_TIMEOUT, MAX_CONNECTIONS, Connections, LocalSite

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 80 * 1024
"""Largest request body (aiohttp's client_max_size); room for a full text plus JSON escaping."""
MAX_HISTORY_LIMIT = 5000
MAX_OPEN_REQUESTS = 128
"""Requests being handled at once, open websockets included (each is one
request for its whole life); past it the site answers 503 at once.  A page
holds one websocket and a few requests; this bounds the file descriptors and
memory that local scripts or forgotten tabs can take."""

_STATIC_TYPES = {".js": "text/javascript; charset=utf-8"}
"""Content types of static files that must not depend on the system's MIME table."""
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{1,512}")
_PACKAGE_DIR = Path(__file__).resolve().parent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asset_dir(name: str) -> Path:
    """The installed copy inside the package (the wheel force-includes it as
    webpeer/<name>) wins; otherwise the checkout's top-level directory."""
    installed = _PACKAGE_DIR / name
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / name


def default_templates_dir() -> Path:
    """Where index.html lives: webpeer/templates when installed, else <checkout>/templates."""
    return _asset_dir("templates")


def default_static_dir() -> Path:
    """Where the page's modules (main.js, views/ ...) and app.css live: webpeer/static when
    installed, else <checkout>/static."""
    return _asset_dir("static")


@dataclass(frozen=True)
class WebConfig:
    """What the site needs to know.

    ``port`` is the port the site is reached on; it is part of the allowed
    Host and Origin values, the CSP and the cookie name.  ``port=0`` means "the
    port the connection actually arrived on" (for sites bound to port 0).
    ``token`` must be URL- and cookie-safe (``secrets.token_urlsafe`` is).
    """

    port: int
    token: str
    max_open_requests: int = MAX_OPEN_REQUESTS
    # TCP connections open at once, and how long one may sit with no request (web_connections.py).
    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    templates_dir: Path = field(default_factory=default_templates_dir)
    static_dir: Path = field(default_factory=default_static_dir)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0..65535")
        if not _TOKEN_RE.fullmatch(self.token):
            raise ValueError("token must be 1-512 characters of A-Z a-z 0-9 . _ ~ -")


CONFIG_KEY = web.AppKey[WebConfig]("webpeer_config")
API_KEY = web.AppKey[PeerApi]("webpeer_api")
SOCKETS_KEY = web.AppKey["weakref.WeakSet[web.WebSocketResponse]"]("webpeer_sockets")
ASSET_VERSION_KEY = web.AppKey[str]("webpeer_asset_version")
LOAD_KEY = web.AppKey["_Load"]("webpeer_load")
CONNECTIONS_KEY = web.AppKey[Connections]("webpeer_connections")
AUTH_KEY = web.RequestKey[str]("webpeer_auth")
"""How the request authenticated: "bearer", "cookie" or "query"."""


def create_app(config: WebConfig, api: PeerApi) -> web.Application:
    """The site: page at ``/``, JSON API under ``/api/``, websocket at ``/ws``,
    files under ``/static/``.  It binds nothing; see :func:`start_site`."""
    for directory in (config.templates_dir, config.static_dir):
        if not Path(directory).is_dir():
            raise ValueError(f"{directory} is not a directory")
    app = web.Application(middlewares=[_limit, _guard], client_max_size=MAX_BODY_BYTES)
    app[CONFIG_KEY] = config
    app[LOAD_KEY] = _Load()
    app[CONNECTIONS_KEY] = Connections(config.max_connections)
    app[API_KEY] = api
    app[SOCKETS_KEY] = weakref.WeakSet()
    app[ASSET_VERSION_KEY] = _asset_version(Path(config.static_dir))
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(config.templates_dir)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app.router.add_get("/", _index)
    app.router.add_get("/api/me", _api_me)
    app.router.add_get("/api/peers", _api_peers)
    app.router.add_get("/api/messages", _api_messages)
    app.router.add_post("/api/messages", _api_send)
    app.router.add_post("/api/messages/{id}/retry", _api_retry)
    app.router.add_post("/api/messages/{id}/cancel", _api_cancel)
    app.router.add_post("/api/peers/{id}/read", _api_read)
    app.router.add_post("/api/peers", _api_add_contact)
    app.router.add_put("/api/peers/{id}/nickname", _api_nickname)
    app.router.add_put("/api/peers/{id}/settings", _api_peer_settings)
    app.router.add_get("/api/settings", _api_settings)
    app.router.add_get("/api/search", _api_search)
    app.router.add_put("/api/settings", _api_set_settings)
    app.router.add_get("/api/peers/{id}/safety", _api_safety)
    app.router.add_get("/api/peers/{id}/safety.svg", _api_safety_svg)
    app.router.add_post("/api/peers/{id}/trust", _api_trust)
    app.router.add_get("/api/files", _api_files)
    app.router.add_post("/api/files", _api_send_files)
    app.router.add_get("/api/files/{id}", _api_file)
    app.router.add_post("/api/files/{id}/accept", _api_file_accept)
    app.router.add_post("/api/files/{id}/cancel", _api_file_cancel)
    app.router.add_post("/api/files/{id}/retry", _api_file_retry)
    app.router.add_get("/api/groups", _api_groups)
    app.router.add_post("/api/groups", _api_create_group)
    app.router.add_get("/api/groups/{id}/messages", _api_group_messages)
    app.router.add_post("/api/groups/{id}/messages", _api_group_send)
    app.router.add_get("/api/groups/{id}/changes", _api_group_changes)
    app.router.add_post("/api/groups/{id}/members", _api_group_add)
    app.router.add_delete("/api/groups/{id}/members/{peer}", _api_group_remove)
    app.router.add_post("/api/groups/{id}/leave", _api_group_leave)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/favicon.ico", _favicon)
    app.router.add_static("/static/", config.static_dir, show_index=False, follow_symlinks=False)
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_close_websockets)
    return app


async def start_site(app: web.Application, port: int | None = None) -> web.AppRunner:
    """Serve ``app`` on 127.0.0.1 (and nowhere else) at ``port`` (default: the
    config's).  The bound port is ``runner.addresses[0][1]``; stop with
    ``await runner.cleanup()``."""
    config = app[CONFIG_KEY]
    if port is None:
        port = config.port
    elif config.port and port != config.port:
        raise ValueError(f"the app only accepts Host/Origin for port {config.port}, not {port}")
    runner = web.AppRunner(
        app, handle_signals=False, access_log_class=_AccessLogger, keepalive_timeout=config.idle_timeout
    )
    await runner.setup()
    site = LocalSite(runner, "127.0.0.1", port, app[CONNECTIONS_KEY])
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class _AccessLogger(AbstractAccessLogger):
    """Method, path and status only: the default format would log ``?token=``.
    A GET or HEAD that worked (the page, its scripts, its polling of the API)
    is routine and logged at debug; changes and failures at info."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        routine = request.method in ("GET", "HEAD") and response.status < 400
        level = logging.DEBUG if routine else logging.INFO
        self.logger.log(level, "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000)


# ---------------------------------------------------------------- checks


def _port(request: web.Request) -> int:
    """The port the site is reached on (the config's, else the socket's)."""
    config = request.app[CONFIG_KEY]
    if config.port:
        return config.port
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return 0


def _same(a: str, b: str) -> bool:
    """Constant-time string comparison that never raises on odd characters."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def _cookie_name(port: int) -> str:
    # Cookies ignore ports: per-port names keep side-by-side webpeers apart.
    return f"webpeer_token_{port}"


def cookie_value(token: str, port: int) -> str:
    """What the cookie holds: an HMAC of the port under the token, not the token.

    Browsers send a 127.0.0.1 cookie to every port of 127.0.0.1, so the value
    is bound to this site's port (a name alone is not: any site can read all
    the names) and never reveals the token itself."""
    return hmac.new(token.encode(), f"webpeer cookie for port {port}".encode(), hashlib.sha256).hexdigest()


def _authenticate(request: web.Request, token: str, port: int) -> str | None:
    """Which credential is valid ("bearer", "cookie", "query"), or None."""
    authorization = request.headers.get(hdrs.AUTHORIZATION)
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip(), token):
            return "bearer"
    cookie = request.cookies.get(_cookie_name(port))
    if cookie is not None and _same(cookie, cookie_value(token, port)):
        return "cookie"
    if request.path == "/ws":
        query = request.query.get("token")
        if query is not None and _same(query, token):
            return "query"
    return None


def _host_ok(request: web.Request, port: int) -> bool:
    host = request.headers.get(hdrs.HOST)
    if host is None or port == 0:
        return False
    return host.lower() in (f"127.0.0.1:{port}", f"localhost:{port}")


def _origin_ok(request: web.Request, port: int, auth: str | None) -> bool:
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return auth == "bearer"
    return origin.lower() in (f"http://127.0.0.1:{port}", f"http://localhost:{port}")


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass
class _Load:
    """Requests (websockets included) being handled now."""

    open: int = 0


@web.middleware
async def _limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """503 past the config's max_open_requests: the limit holds before any other work."""
    load = request.app[LOAD_KEY]
    limit = request.app[CONFIG_KEY].max_open_requests
    if load.open >= limit:
        return _error(503, f"too many open requests and websockets ({limit}): close some tabs or scripts")
    load.open += 1
    connections = request.app[CONNECTIONS_KEY]
    connections.request_started(request.protocol)  # its connection is not idle (web_connections.py)
    try:
        return await handler(request)
    finally:
        load.open -= 1
        connections.request_ended(request.protocol)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, token and Origin checks, then ApiError and HTTP errors -> JSON."""
    port = _port(request)
    if not _host_ok(request, port):
        return _error(403, "forbidden Host header: use http://127.0.0.1:PORT or http://localhost:PORT")
    path = request.path
    auth: str | None = None
    if _is_api(path) or path == "/ws":
        auth = _authenticate(request, request.app[CONFIG_KEY].token, port)
        if auth is None:
            return _error(401, "missing or wrong token (Authorization: Bearer TOKEN, or open /?token=TOKEN first)")
        request[AUTH_KEY] = auth
    if (request.method not in ("GET", "HEAD", "OPTIONS") or path == "/ws") and not _origin_ok(request, port, auth):
        return _error(403, "forbidden Origin: requests must come from this page")
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400 and _is_api(path):
            return _error(exc.status, exc.reason)
        raise
    except Exception:
        if not _is_api(path):
            raise
        # A bug in the peer must not look like a network failure to the page.
        log.exception("unexpected error in %s %s", request.method, path)
        return _error(500, "internal error in webpeer (see its log)")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    port = _port(request)
    headers = response.headers
    headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"connect-src 'self' ws://127.0.0.1:{port} ws://localhost:{port}; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"
        return
    # The page's modules import each other by plain names (no ?v=), so the
    # browser must revalidate them (a 304 when unchanged) rather than guess.
    headers["Cache-Control"] = "no-cache"
    content_type = _STATIC_TYPES.get(Path(request.path).suffix)
    if content_type is not None and response.status == 200:
        # Browsers refuse module scripts of any non-JavaScript type, and some
        # systems' MIME tables map .js to text/plain.
        headers[hdrs.CONTENT_TYPE] = content_type


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            413, f"request body larger than {MAX_BODY_BYTES} bytes (a message text may have {MAX_TEXT_BYTES} bytes)"
        ) from None
    return loads(body)


# ---------------------------------------------------------------- HTTP handlers


async def _index(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG_KEY]
    port = _port(request)
    if "token" in request.query:
        if not _same(request.query["token"], config.token):
            return web.Response(status=401, text="Wrong token: open the URL that webpeer printed.\n")
        # Set the cookie, then drop the token from the address bar and history.
        response = web.Response(status=303, headers={hdrs.LOCATION: "/"})
        response.set_cookie(
            _cookie_name(port), cookie_value(config.token, port), httponly=True, samesite="Strict", path="/"
        )
        return response
    cookie = request.cookies.get(_cookie_name(port))
    if cookie is None or not _same(cookie, cookie_value(config.token, port)):
        return web.Response(
            status=401,
            text="Not signed in: open the URL that webpeer printed (http://127.0.0.1:PORT/?token=...), then reload.\n",
        )
    context = {"asset_version": request.app[ASSET_VERSION_KEY]}
    return aiohttp_jinja2.render_template("index.html", request, context)


async def _favicon(request: web.Request) -> web.FileResponse:
    """Browsers (and tools) ask for /favicon.ico whatever the page links; the
    page's own icon is an SVG (static/favicon.svg), which they all take."""
    return web.FileResponse(
        Path(request.app[CONFIG_KEY].static_dir) / "favicon.svg", headers={hdrs.CONTENT_TYPE: "image/svg+xml"}
    )


async def _api_me(request: web.Request) -> web.Response:
    return web.json_response(request.app[API_KEY].me())


async def _api_peers(request: web.Request) -> web.Response:
    api = request.app[API_KEY]
    await api.refresh_directory()  # with no page open, the directory page is fetched only on demand
    return web.json_response(api.peers_json())


# The handlers raise ApiError for bad input; _guard answers it.


async def _api_messages(request: web.Request) -> web.Response:
    peer = validate.peer_id(request.query.get("peer"), "peer", from_url=True)
    limit = 500
    if "limit" in request.query:
        raw = request.query["limit"]
        # Length first: int() raises on more than 4300 digits (that would be a
        # 500), and a dozen digits are out of range whatever they say.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 12 and 0 < int(raw) <= MAX_HISTORY_LIMIT):
            raise ApiError(400, f"limit must be an integer in 1..{MAX_HISTORY_LIMIT}")
        limit = int(raw)
    if "before" in request.query or "after" in request.query:
        return web.json_response(_history_page(request, peer, limit))
    return web.json_response(request.app[API_KEY].messages(peer, limit))


def _history_page(request: web.Request, peer: int, limit: int) -> list[dict[str, Any]]:
    """``?before=ID`` / ``?after=ID``: the ``limit`` messages next to message ID
    (404 if it is not in this conversation), for paging through a long history."""
    before, after = validate.history_cursor(request.query.get("before"), request.query.get("after"))
    return request.app[API_KEY].messages_page(peer, limit, before=before, after=after)


async def _api_send(request: web.Request) -> web.Response:
    body = await _read_json(request)
    to = validate.peer_id(body.get("to"), "to")
    text = validate.message_text(body.get("text"))
    message = await request.app[API_KEY].send_message(to, text)
    return web.json_response(message, status=201)


async def _api_retry(request: web.Request) -> web.Response:
    wanted = validate.message_id(request.match_info["id"])
    message = await request.app[API_KEY].retry(wanted)
    return web.json_response(message)


async def _api_cancel(request: web.Request) -> web.Response:
    wanted = validate.message_id(request.match_info["id"])
    message = await request.app[API_KEY].cancel(wanted)
    return web.json_response(message)


async def _api_read(request: web.Request) -> web.Response:
    peer = validate.peer_id(request.match_info["id"], "peer id", from_url=True)
    request.app[API_KEY].mark_read(peer)
    return web.Response(status=204)


async def _api_add_contact(request: web.Request) -> web.Response:
    body = await _read_json(request)
    peer = validate.peer_id(body.get("id"), "id")
    return web.json_response(await request.app[API_KEY].add_contact(peer), status=201)


async def _api_nickname(request: web.Request) -> web.Response:
    peer = validate.peer_id(request.match_info["id"], "peer id", from_url=True)
    body = await _read_json(request)
    request.app[API_KEY].set_nickname(peer, validate.nickname(body.get("nickname")))
    return web.Response(status=204)


async def _api_peer_settings(request: web.Request) -> web.Response:
    """``{"auto_accept_bytes": N}``: the peer's file offers up to N bytes are
    accepted without asking (0 or null: each waits for the user)."""
    peer = validate.peer_id(request.match_info["id"], "peer id", from_url=True)
    body = await _read_json(request)
    unknown = sorted(set(body) - {"auto_accept_bytes"})
    if unknown or "auto_accept_bytes" not in body:
        raise ApiError(400, f"peer settings: only auto_accept_bytes (not {', '.join(unknown)[:80] or 'nothing'})")
    request.app[API_KEY].set_auto_accept(peer, validate.auto_accept_bytes(body["auto_accept_bytes"]))
    return web.Response(status=204)


MAX_SEARCH_LIMIT = 200


async def _api_search(request: web.Request) -> web.Response:
    """``?q=words[&peer=N][&limit=K]``: the latest K (default 50) messages
    having every word (as a word's start), newest first."""
    words = validate.search_words(request.query.get("q"))
    peer = None
    if "peer" in request.query:
        peer = validate.peer_id(request.query["peer"], "peer", from_url=True)
    limit = 50
    if "limit" in request.query:
        raw = request.query["limit"]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 0 < int(raw) <= MAX_SEARCH_LIMIT):
            raise ApiError(400, f"limit must be an integer in 1..{MAX_SEARCH_LIMIT}")
        limit = int(raw)
    return web.json_response(request.app[API_KEY].search(words, peer, limit))


async def _api_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[API_KEY].settings())


async def _api_set_settings(request: web.Request) -> web.Response:
    api = request.app[API_KEY]
    changes = validate.settings_change(await _read_json(request), api.settings())
    return web.json_response(api.set_settings(changes))


async def _api_safety(request: web.Request) -> web.Response:
    peer = validate.peer_id(request.match_info["id"], "peer id", from_url=True)
    return web.json_response(request.app[API_KEY].safety(peer))


async def _api_safety_svg(request: web.Request) -> web.Response:
    """The safety number as a QR code: an SVG of paths only (no script, no
    style element), drawn here so the page needs no QR library; the CSP
    applies to it like to every response (img-src 'self')."""
    peer = validate.peer_id(request.match_info["id"], "peer id", from_url=True)
    return web.Response(
        body=safety_qr_svg(request.app[API_KEY].safety(peer)["safety_number"]), content_type="image/svg+xml"
    )


def safety_qr_svg(safety_number: str) -> bytes:
    """The QR code of a safety number's 60 digits (numeric mode: the densest)."""
    digits = "".join(ch for ch in safety_number if ch.isdigit())
    out = io.BytesIO()
    segno.make(digits, error="m").save(out, kind="svg", scale=4, xmldecl=False, svgclass="qr", lineclass=None)
    return out.getvalue()


async def _api_trust(request: web.Request) -> web.Response:
    peer = validate.peer_id(request.match_info["id"], "peer id", from_url=True)
    body = await _read_json(request)
    action = validate.trust_action(body.get("action"))
    return web.json_response(await request.app[API_KEY].set_trust(peer, action))


# ---------------------------------------------------------------- files

INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Received files the browser may show in the page (pictures it decodes
itself); everything else, SVG and HTML included, is served as an attachment."""
UPLOAD_CHUNK = 256 * 1024
MAX_FILES_PER_UPLOAD = 100
MAX_FIELD_BYTES = 64


async def _api_files(request: web.Request) -> web.Response:
    """GET /api/files?peer=N: that conversation's files, oldest first."""
    peer = validate.peer_id(request.query.get("peer"), "peer", from_url=True)
    return web.json_response(request.app[API_KEY].files(peer))


async def _api_send_files(request: web.Request) -> web.Response:
    """POST /api/files, multipart: a ``to`` field first, then one or more
    ``file`` parts, each copied to files/ a chunk at a time and offered."""
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "send multipart/form-data: a 'to' field, then one or more 'file' parts")
    reader = await request.multipart()
    api = request.app[API_KEY]
    to: int | None = None
    sent: list[dict[str, Any]] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "nested multipart is not supported")
        if part.name == "to":
            raw = await part.read_chunk(MAX_FIELD_BYTES + 1)
            if len(raw) > MAX_FIELD_BYTES:
                raise ApiError(400, "'to' must be a peer id")
            to = validate.peer_id(raw.decode("ascii", "replace").strip(), "to", from_url=True)
        elif part.name == "file":
            if to is None:
                raise ApiError(400, "the 'to' field must come before the files")
            if len(sent) >= MAX_FILES_PER_UPLOAD:
                raise ApiError(413, f"at most {MAX_FILES_PER_UPLOAD} files in one request")
            sent.append(
                await api.send_file(to, part.filename or "", part.headers.get(hdrs.CONTENT_TYPE, ""), _chunks(part))
            )
        else:
            await part.release()
    if not sent:
        raise ApiError(400, "no 'file' part")
    return web.json_response(sent, status=201)


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(UPLOAD_CHUNK):
        yield bytes(chunk)


def content_disposition(name: str, inline: bool) -> str:
    """RFC 6266: an ASCII fallback and the UTF-8 name (RFC 8187)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name) or "file"
    return f"{'inline' if inline else 'attachment'}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _api_file(request: web.Request) -> web.StreamResponse:
    """GET /api/files/ID: a file we sent, or one received and verified.
    Pictures inline; anything else as an attachment, never rendered."""
    path, record = request.app[API_KEY].file_download(request.match_info["id"])
    mime = str(record["mime"]).lower()
    inline = mime in INLINE_TYPES and request.query.get("download") != "1"
    return web.FileResponse(
        path,
        headers={
            hdrs.CONTENT_TYPE: mime if inline else (mime or "application/octet-stream"),
            hdrs.CONTENT_DISPOSITION: content_disposition(str(record["name"]), inline),
        },
    )


async def _api_file_accept(request: web.Request) -> web.Response:
    return web.json_response(await request.app[API_KEY].accept_file(request.match_info["id"]))


async def _api_file_cancel(request: web.Request) -> web.Response:
    return web.json_response(await request.app[API_KEY].cancel_file(request.match_info["id"]))


async def _api_file_retry(request: web.Request) -> web.Response:
    return web.json_response(await request.app[API_KEY].retry_file(request.match_info["id"]))


# ---------------------------------------------------------------- groups


def _limit_query(request: web.Request) -> int:
    raw = request.query.get("limit", "500")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12 and 0 < int(raw) <= MAX_HISTORY_LIMIT):
        raise ApiError(400, f"limit must be an integer in 1..{MAX_HISTORY_LIMIT}")
    return int(raw)


async def _api_groups(request: web.Request) -> web.Response:
    return web.json_response(request.app[API_KEY].groups())


async def _api_create_group(request: web.Request) -> web.Response:
    body = await _read_json(request)
    members = validate.member_ids(body.get("members"))
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "name must be a string")
    group = await request.app[API_KEY].create_group(name, members)  # its length and blankness: checked there
    return web.json_response(group, status=201)


async def _api_group_messages(request: web.Request) -> web.Response:
    group = validate.group_id(request.match_info["id"])
    before, after = validate.history_cursor(request.query.get("before"), request.query.get("after"))
    page = request.app[API_KEY].group_messages(group, _limit_query(request), before=before, after=after)
    return web.json_response(page)


async def _api_group_changes(request: web.Request) -> web.Response:
    group = validate.group_id(request.match_info["id"])
    return web.json_response(request.app[API_KEY].group_changes(group))


async def _api_group_send(request: web.Request) -> web.Response:
    group = validate.group_id(request.match_info["id"])
    body = await _read_json(request)
    text = validate.message_text(body.get("text"))
    return web.json_response(await request.app[API_KEY].send_group_message(group, text), status=201)


async def _api_group_add(request: web.Request) -> web.Response:
    group = validate.group_id(request.match_info["id"])
    body = await _read_json(request)
    members = validate.member_ids(body.get("members"))
    if not members:
        raise ApiError(400, "members must name at least one peer id")
    return web.json_response(await request.app[API_KEY].change_group(group, "add", members=tuple(members)))


async def _api_group_remove(request: web.Request) -> web.Response:
    group = validate.group_id(request.match_info["id"])
    peer = validate.peer_id(request.match_info["peer"], "peer id", from_url=True)
    return web.json_response(await request.app[API_KEY].change_group(group, "remove", target=peer))


async def _api_group_leave(request: web.Request) -> web.Response:
    group = validate.group_id(request.match_info["id"])
    return web.json_response(await request.app[API_KEY].change_group(group, "leave"))


# ---------------------------------------------------------------- websocket


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    return await websocket.serve(request, request.app[API_KEY], request.app[SOCKETS_KEY])


async def _close_websockets(app: web.Application) -> None:
    await websocket.close_all(app[SOCKETS_KEY])


def _asset_version(static_dir: Path) -> str:
    """Changes whenever a static file changes (views/ included), so the page's URL
    of main.js changes with any of them."""
    newest = 0
    for path in static_dir.rglob("*"):
        if path.is_file():
            newest = max(newest, path.stat().st_mtime_ns)
    return format(newest, "x")
