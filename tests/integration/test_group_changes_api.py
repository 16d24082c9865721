"""GET /api/groups/ID/changes (the page's membership lines after a reload) on
real peer nodes over loopback, with test_group_api.py's fixture."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from integration.test_group_api import Member, members, wait_for  # noqa: F401  (the fixture)


async def test_every_member_lists_the_same_changes_in_order(members: Callable[[str], Awaitable[Member]]) -> None:  # noqa: F811
    alice, bob = await members("alice"), await members("bob")
    await wait_for(lambda: alice.node.engine.key_of(bob.id), "alice knows bob's key")
    group = await alice.call("POST", "/api/groups", 201, {"name": "lunch", "members": [bob.id]})
    # (Removed before the group reached him, bob would never get it at all.)
    await wait_for(lambda: any(g["id"] == group["id"] for g in bob.node.groups()), "bob has the group")
    await alice.call("DELETE", f"/api/groups/{group['id']}/members/{bob.id}", 200)
    await wait_for(lambda: len(bob.node.group_changes(group["id"])) == 2, "bob has both changes")

    mine = await alice.call("GET", f"/api/groups/{group['id']}/changes", 200)
    assert [(c["kind"], c["by"], c["members"], c["target"], c["applied"]) for c in mine] == [
        ("create", alice.id, sorted([alice.id, bob.id]), None, True),
        ("remove", alice.id, [], bob.id, True),
    ]
    assert mine[0]["name"] == "lunch" and mine[0]["time"] <= mine[1]["time"]
    assert await bob.call("GET", f"/api/groups/{group['id']}/changes", 200) == mine
    assert (await alice.call("GET", f"/api/groups/{'0' * 64}/changes", 404))["error"] == "no such group"
    assert "64 lower-case hex" in (await alice.call("GET", "/api/groups/nothex/changes", 400))["error"]
