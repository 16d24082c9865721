"""The web layer's contact, nickname and settings routes (webpeer/web.py)
against the in-memory PeerApi (tests/unit/fake_api.py), over loopback HTTP."""

from __future__ import annotations

import pytest
from fake_api import FakePeerApi
from test_web import Site, SiteFactory, make_site  # noqa: F401  (the fixture)


@pytest.fixture
async def site(make_site: SiteFactory) -> Site:  # noqa: F811
    api = FakePeerApi(highest_id=50)
    api.add_peer(2, "bob")
    return await make_site(api)


async def test_add_contact_answers_the_peer_and_refuses_unknown_and_own_ids(site: Site) -> None:
    response = await site.client.post("/api/peers", json={"id": 7}, headers=site.bearer)
    assert response.status == 201
    assert (await response.json())["id"] == 7
    assert 7 in {peer["id"] for peer in site.api.peers_json()}
    response = await site.client.post("/api/peers", json={"id": 51}, headers=site.bearer)
    assert (response.status, (await response.json())["error"]) == (404, "unknown peer 51")
    response = await site.client.post("/api/peers", json={"id": 1}, headers=site.bearer)
    assert response.status == 400
    for bad in ({"id": "7"}, {"id": 0}, {"id": True}, {}):
        response = await site.client.post("/api/peers", json=bad, headers=site.bearer)
        assert response.status == 400, bad


async def test_a_nickname_is_set_trimmed_cleared_and_checked(site: Site) -> None:
    response = await site.client.put("/api/peers/2/nickname", json={"nickname": "  Bobby  "}, headers=site.bearer)
    assert response.status == 204
    assert site.api.peers_json()[0]["nickname"] == "Bobby"
    response = await site.client.put("/api/peers/2/nickname", json={"nickname": ""}, headers=site.bearer)
    assert response.status == 204
    assert site.api.peers_json()[0]["nickname"] is None
    for bad in ({"nickname": 5}, {"nickname": "x" * 65}, {"nickname": "a\nb"}):
        response = await site.client.put("/api/peers/2/nickname", json=bad, headers=site.bearer)
        assert response.status == 400, bad
    assert site.api.peers_json()[0]["nickname"] is None


async def test_settings_read_and_change_with_types_checked(site: Site) -> None:
    response = await site.client.get("/api/settings", headers=site.bearer)
    assert await response.json() == {"read_receipts": True}
    response = await site.client.put("/api/settings", json={"read_receipts": False}, headers=site.bearer)
    assert (response.status, await response.json()) == (200, {"read_receipts": False})
    for bad in ({"read_receipts": "no"}, {"other": True}, {}, [1]):
        response = await site.client.put("/api/settings", json=bad, headers=site.bearer)
        assert response.status == 400, bad
    assert site.api.settings() == {"read_receipts": False}


async def test_changes_need_the_pages_origin(site: Site) -> None:
    await site.sign_in()
    response = await site.client.put("/api/settings", json={"read_receipts": False})
    assert response.status == 403
    response = await site.client.put("/api/settings", json={"read_receipts": False}, headers=site.browser())
    assert response.status == 200


async def test_search_checks_its_query_and_answers_newest_first(site: Site) -> None:
    site.api.receive(2, "the green door")
    site.api.add_peer(3, "carol")
    site.api.receive(3, "a green light")
    response = await site.client.get("/api/search", params={"q": "green"}, headers=site.bearer)
    assert [m["text"] for m in await response.json()] == ["a green light", "the green door"]
    response = await site.client.get("/api/search", params={"q": "green", "peer": "2"}, headers=site.bearer)
    assert [m["text"] for m in await response.json()] == ["the green door"]
    response = await site.client.get("/api/search", params={"q": "green", "limit": "1"}, headers=site.bearer)
    assert len(await response.json()) == 1
    for bad in ({}, {"q": "  "}, {"q": "x" * 201}, {"q": " ".join("w" * 11)}, {"q": "a", "limit": "0"},
                {"q": "a", "limit": "201"}, {"q": "a", "peer": "x"}):  # fmt: skip
        response = await site.client.get("/api/search", params=bad, headers=site.bearer)
        assert response.status == 400, bad
