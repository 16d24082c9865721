"""The group log (webpeer/group_log.py): signed membership ops, their one
resolution, forgeries and replays refused, message order and gap filling."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from group_people import copy_of, member, new_group, person, sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webpeer.group_codec import GroupError, GroupMessage, Op, OpKind
from webpeer.group_log import GroupLog, Update


def snapshot(log: GroupLog) -> tuple[str, dict[int, bytes], frozenset[int], list[tuple[str, bool]]]:
    return (log.state.name, log.state.members, log.state.admins, [(op.id, ok) for op, ok in log.timeline()])


# -- membership ----------------------------------------------------------------------------------------------


def test_create_names_the_group_by_its_first_op_and_makes_the_creator_admin() -> None:
    log = new_group()
    assert log.id == log.create.id and len(log.id) == 64
    assert log.state.name == "friends"
    assert sorted(log.state.members) == [1, 2, 3, 4]
    assert log.state.admins == {1}
    assert copy_of(log).id == log.id


def test_admin_changes_apply_on_every_replica() -> None:
    alice = new_group()
    alice.make_op(person(1).sign, 1, OpKind.ADD, 2_000, members=(member(5),))
    alice.make_op(person(1).sign, 1, OpKind.PROMOTE, 2_001, target=2)
    alice.make_op(person(1).sign, 1, OpKind.RENAME, 2_002, name="old friends")
    alice.make_op(person(1).sign, 1, OpKind.REMOVE, 2_003, target=3)
    bob = copy_of(alice)
    bob.make_op(person(2).sign, 2, OpKind.REMOVE, 2_004, target=4)  # bob is an admin now
    dave = copy_of(bob)
    dave.make_op(person(5).sign, 5, OpKind.LEAVE, 2_005)
    for log in (dave, copy_of(dave)):
        assert log.state.name == "old friends"
        assert sorted(log.state.members) == [1, 2]
        assert log.state.admins == {1, 2}
        assert all(applied for _, applied in log.timeline())


def test_a_non_admin_op_is_refused_by_every_member() -> None:
    alice = new_group()
    bob = copy_of(alice)
    with pytest.raises(GroupError, match="peer 2 is not an admin"):
        bob.make_op(person(2).sign, 2, OpKind.ADD, 2_000, members=(member(9),))
    # Built and signed by bob's own key anyway, and sent to alice:
    forged = Op(alice.id, OpKind.ADD, 2, alice.heads, 2_000, members=(member(9),))
    forged = replace(forged, sig=person(2).sign(forged.signed_bytes()))
    with pytest.raises(GroupError, match="not an admin"):
        alice.add_op(forged)
    assert 9 not in alice.state.members and not alice.has_op(forged.id)


def test_an_op_with_a_wrong_signature_is_refused() -> None:
    alice = new_group()
    # Claims to be alice's (the admin) but signed by bob's key.
    forged = Op(alice.id, OpKind.ADD, 1, alice.heads, 2_000, members=(member(9),))
    forged = replace(forged, sig=person(2).sign(forged.signed_bytes()))
    with pytest.raises(GroupError, match="bad signature"):
        alice.add_op(forged)
    # A real op of alice's with one field changed after signing.
    real = Op(alice.id, OpKind.RENAME, 1, alice.heads, 2_000, name="a")
    real = replace(real, sig=person(1).sign(real.signed_bytes()))
    with pytest.raises(GroupError, match="bad signature"):
        alice.add_op(replace(real, name="b"))
    assert alice.state.name == "friends"


def test_a_replayed_op_changes_nothing() -> None:
    alice = new_group()
    added = alice.make_op(person(1).sign, 1, OpKind.ADD, 2_000, members=(member(5),))
    alice.make_op(person(1).sign, 1, OpKind.REMOVE, 2_001, target=5)
    before = snapshot(alice)
    assert alice.add_op(added) == Update()  # the same op again: same id, no news
    assert snapshot(alice) == before and 5 not in alice.state.members


def test_an_op_of_another_group_is_refused() -> None:
    ours, theirs = new_group(name="ours"), new_group(name="theirs")
    op = theirs.make_op(person(1).sign, 1, OpKind.ADD, 2_000, members=(member(5),))
    with pytest.raises(GroupError, match="another group"):
        ours.add_op(op)
    # Re-labelled for our group, the signature no longer holds.
    with pytest.raises(GroupError, match="bad signature"):
        ours.add_op(replace(op, group=ours.id, parents=ours.heads))


def test_a_removed_member_can_make_no_more_ops_on_top_of_its_removal() -> None:
    alice = new_group()
    alice.make_op(person(1).sign, 1, OpKind.PROMOTE, 2_000, target=2)
    bob = copy_of(alice)
    alice.make_op(person(1).sign, 1, OpKind.REMOVE, 2_001, target=2)
    sync(bob, alice, 2)
    assert 2 not in bob.state.members
    forged = Op(alice.id, OpKind.ADD, 2, bob.heads, 2_002, members=(member(9),))
    forged = replace(forged, sig=person(2).sign(forged.signed_bytes()))
    with pytest.raises(GroupError, match="not a member"):
        alice.add_op(forged)


def test_concurrent_removal_wins_over_the_removed_admins_change() -> None:
    alice = new_group()
    alice.make_op(person(1).sign, 1, OpKind.PROMOTE, 2_000, target=2)
    bob = copy_of(alice)
    bob_adds = bob.make_op(person(2).sign, 2, OpKind.ADD, 2_001, members=(member(7),))
    alice.make_op(person(1).sign, 1, OpKind.REMOVE, 2_001, target=2)
    sync(alice, bob, 1)
    sync(bob, alice, 2)
    for log in (alice, bob):
        assert 2 not in log.state.members and 7 not in log.state.members
        assert dict((op.id, ok) for op, ok in log.timeline())[bob_adds.id] is False
    assert snapshot(alice) == snapshot(bob)


def test_two_admins_removing_each_other_at_once_agree_on_one_survivor() -> None:
    alice = new_group()
    alice.make_op(person(1).sign, 1, OpKind.PROMOTE, 2_000, target=2)
    bob = copy_of(alice)
    a = alice.make_op(person(1).sign, 1, OpKind.REMOVE, 2_001, target=2)
    b = bob.make_op(person(2).sign, 2, OpKind.REMOVE, 2_001, target=1)
    sync(alice, bob, 1)
    sync(bob, alice, 2)
    assert snapshot(alice) == snapshot(bob)
    survivor = 1 if a.id < b.id else 2
    assert survivor in alice.state.members and (3 - survivor) not in alice.state.members


# -- messages ------------------------------------------------------------------------------------------------


def test_messages_wait_for_their_sender_predecessors_and_their_causes() -> None:
    alice = new_group()
    bob, carol = copy_of(alice), copy_of(alice)
    a1 = alice.post(person(1).sign, 1, "one", 3_000)
    a2 = alice.post(person(1).sign, 1, "two", 3_001)
    bob.add_message(a1)
    bob.add_message(a2)
    b1 = bob.post(person(2).sign, 2, "reply to two", 3_002)
    assert b1.deps == ((1, 2),)
    assert carol.add_message(b1).messages == []  # the reply before what it replies to
    assert carol.add_message(a2).messages == []  # two before one
    assert carol.missing()[1] == {1: 1}
    assert [m.text for m in carol.add_message(a1).messages] == ["one", "two", "reply to two"]
    assert carol.missing() == (set(), {})


def test_a_forged_or_tampered_message_is_refused() -> None:
    alice = new_group()
    bob = copy_of(alice)
    a1 = alice.post(person(1).sign, 1, "hello", 3_000)
    with pytest.raises(GroupError, match="bad signature"):
        bob.add_message(replace(a1, text="goodbye"))
    outsider = GroupMessage(alice.id, 9, 1, (), alice.heads, 3_000, "let me in")
    outsider = replace(outsider, sig=person(9).sign(outsider.signed_bytes()))
    with pytest.raises(GroupError, match="not a member"):
        bob.add_message(outsider)
    assert bob.add_message(a1).messages == [a1]
    other = GroupMessage(alice.id, 1, 1, (), alice.heads, 3_000, "something else")
    other = replace(other, sig=person(1).sign(other.signed_bytes()))
    with pytest.raises(GroupError, match="two different messages"):
        bob.add_message(other)
    assert bob.add_message(a1) == Update()  # a duplicate is no news
    assert [m.text for m in bob.delivered()] == ["hello"]


def test_a_forgery_held_for_unknown_heads_is_dropped_when_they_come() -> None:
    alice = new_group()
    bob = copy_of(alice)
    added = alice.make_op(person(1).sign, 1, OpKind.ADD, 2_000, members=(member(5),))
    real = alice.post(person(1).sign, 1, "hi", 3_000)
    forged = replace(real, text="tampered")
    assert bob.add_message(forged).messages == []  # its heads (the add) are unknown: held
    assert bob.missing()[0] == {added.id}
    update = bob.add_op(added)
    assert update.dropped == 1 and update.messages == []
    assert bob.add_message(real).messages == [real]


def test_a_member_fills_its_gaps_from_someone_other_than_the_sender() -> None:
    alice = new_group()
    bob, carol = copy_of(alice), copy_of(alice)
    for i in range(5):
        bob.add_message(alice.post(person(1).sign, 1, f"a{i}", 3_000 + i))
    sync(bob, alice, 2)
    bob.post(person(2).sign, 2, "b0", 3_200)
    update = sync(carol, bob, 3)  # alice is gone; bob has it all
    assert [m.text for m in update.messages] == ["a0", "a1", "a2", "a3", "a4", "b0"]
    assert [m.key for m in carol.delivered()] == [m.key for m in bob.delivered()]
    assert sync(carol, bob, 3) == Update()


def test_a_removed_member_is_given_nothing_written_after_its_removal() -> None:
    alice = new_group()
    dave = copy_of(alice)
    alice.post(person(1).sign, 1, "before", 3_000)
    alice.make_op(person(1).sign, 1, OpKind.REMOVE, 3_001, target=4)
    alice.post(person(1).sign, 1, "after", 3_002)
    sync(dave, alice, 4)
    assert [m.text for m in dave.delivered()] == ["before"]
    assert 4 not in dave.state.members  # it does learn it was removed
    assert alice.lacking(new_group(others=(2,)).summary(), 99) == ([], [])  # never a member: nothing


def test_a_member_added_again_gets_what_follows_but_only_withheld_copies_of_what_it_missed() -> None:
    alice = new_group()
    bob, dave = copy_of(alice), copy_of(alice)
    alice.post(person(1).sign, 1, "before", 3_000)
    sync(dave, alice, 4)
    alice.make_op(person(1).sign, 1, OpKind.REMOVE, 3_001, target=4)
    sync(bob, alice, 2)
    bob.post(person(2).sign, 2, "while dave is out", 3_002)
    sync(alice, bob, 1)
    alice.post(person(1).sign, 1, "still out", 3_003)
    sync(dave, alice, 4)  # removed: it learns that, and gets nothing written since
    assert [m.text for m in dave.delivered()] == ["before"] and 4 not in dave.state.members
    alice.make_op(person(1).sign, 1, OpKind.ADD, 3_004, members=(member(4),))
    sync(bob, alice, 2)
    bob_after = bob.post(person(2).sign, 2, "welcome back", 3_005)
    # Bob's message follows his own and alice's written while dave was out: dave is given those
    # as withheld copies (signed, no text), so it can be delivered, and asks for nothing more.
    update = sync(dave, bob, 4)
    assert [m.text for m in update.messages if not m.withheld] == ["welcome back"]
    assert [m.text for m in dave.readable()] == ["before", "welcome back"]
    assert {m.key for m in dave.delivered() if m.withheld} == {(2, 1), (1, 2)}
    assert all(m.text == "" for m in dave.delivered() if m.withheld)
    assert dave.missing() == (set(), {}) and dave.delivered_seq(2) == bob_after.seq
    # It may not take a withheld copy of a message it may read: that could hide one from it.
    readable_copy = bob_after.without_text()
    other = copy_of(alice)
    other.reader = 3
    with pytest.raises(GroupError, match="withheld copy"):
        other.add_message(readable_copy)
    # A withheld copy held by dave is never passed on as the message to one who may read it.
    fresh = copy_of(new_group())
    ops, messages = dave.lacking(fresh.summary(), 2)
    assert all(not m.withheld for m in messages)


def test_a_removal_cuts_off_what_the_removed_member_writes_without_having_seen_it() -> None:
    alice = new_group()
    bob, carol, dave = copy_of(alice), copy_of(alice), copy_of(alice)
    d1 = dave.post(person(4).sign, 4, "one", 3_000)
    alice.add_message(d1)
    removal = alice.make_op(person(1).sign, 1, OpKind.REMOVE, 3_001, target=4)
    assert removal.upto == 1 and removal.to_fields()["u"] == 1  # signed: the cut-off is the admin's word
    # Dave never learns of it and keeps writing under the old membership.
    late = [dave.post(person(4).sign, 4, f"late {n}", 3_002 + n) for n in range(3)]
    for message in (d1, *late):
        bob.add_message(message)  # bob got them before the removal: he shows them (too late to unsee)
    b1 = bob.post(person(2).sign, 2, "after dave's last", 3_010)  # and answers the last
    assert b1.deps == ((4, 4),)
    bob.add_op(removal)
    carol.add_op(removal)  # carol learns of the removal first
    for message in (d1, *late):
        carol.add_message(message)
    update = carol.add_message(b1)
    assert [m.text for m in update.messages] == ["after dave's last"]  # not stuck on what was cut
    assert [m.text for m in carol.readable()] == ["one", "after dave's last"]
    assert [m.key for m in carol.delivered() if m.withheld] == [(4, 2), (4, 3), (4, 4)]
    # A member that has only the cut-off copies passes them on, so nobody waits for their text.
    newcomer = copy_of(new_group())
    newcomer.add_op(removal)
    sync(newcomer, carol, 3)
    assert [m.text for m in newcomer.readable()] == ["one", "after dave's last"]
    assert newcomer.missing() == (set(), {})
    # Added again, dave writes under ops that include his removal: no cut-off applies.
    alice.make_op(person(1).sign, 1, OpKind.ADD, 3_020, members=(member(4),))
    sync(dave, alice, 4)
    back = dave.post(person(4).sign, 4, "back", 3_021)
    sync(carol, alice, 3)
    assert [m.text for m in carol.add_message(back).messages] == ["back"]


def test_a_member_added_late_reads_from_its_arrival_on() -> None:
    alice = new_group()
    for n in range(3):
        alice.post(person(1).sign, 1, f"old {n}", 3_000 + n)
    alice.make_op(person(1).sign, 1, OpKind.ADD, 3_010, members=(member(5),))
    alice.post(person(1).sign, 1, "hello eve", 3_011)
    eve = GroupLog(alice.create)
    sync(eve, alice, 5)
    assert [m.text for m in eve.readable()] == ["hello eve"]  # the rest only as withheld copies
    assert [m.seq for m in eve.delivered() if m.withheld] == [1, 2, 3] and eve.missing() == (set(), {})


# -- convergence under any order -----------------------------------------------------------------------------

PEERS = (1, 2, 3, 4, 5)


def _random_history(rng: random.Random, steps: int) -> tuple[GroupLog, list[Op], list[GroupMessage]]:
    """Members acting on partial knowledge: each step one member makes an op or
    posts, or pulls from another.  Returns everything ever made."""
    first = new_group(1, (2, 3, 4))
    replicas = {1: first}
    for peer in (2, 3, 4):
        replicas[peer] = copy_of(first)
    replicas[5] = copy_of(first)  # an outsider's copy until it is added
    ops: list[Op] = []
    messages: list[GroupMessage] = []
    for _ in range(steps):
        peer = rng.choice(PEERS)
        log = replicas[peer]
        roll = rng.random()
        if roll < 0.35:
            other = rng.choice(PEERS)
            sync(log, replicas[other], peer)
        elif roll < 0.75:
            if peer in log.state.members:
                messages.append(log.post(person(peer).sign, peer, f"{peer} says {len(messages)}", 4_000))
        else:
            admins = [p for p in PEERS if p in replicas[p].state.admins]
            if admins and rng.random() < 0.8:  # mostly admins: others' attempts are refused
                peer = rng.choice(admins)
                log = replicas[peer]
            kinds = [OpKind.ADD, OpKind.REMOVE, OpKind.PROMOTE, OpKind.LEAVE, OpKind.RENAME]
            kind = rng.choices(kinds, weights=[4, 2, 3, 1, 2])[0]  # leaving often would empty the group
            target = rng.choice(PEERS)
            try:
                ops.append(
                    log.make_op(
                        person(peer).sign,
                        peer,
                        kind,
                        5_000,
                        name=f"name {len(ops)}",
                        members=(member(target),),
                        target=target,
                    )
                )
            except GroupError:
                pass  # not allowed to this member now: the page would say so
    return first, ops, messages


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(5, 60))
def test_members_receiving_everything_in_any_order_converge(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    first, ops, messages = _random_history(rng, steps)
    results = []
    for _ in range(3):
        log = GroupLog(first.create)
        items: list[Op | GroupMessage] = [*ops, *messages]
        rng.shuffle(items)
        for item in items:  # never raises: every op and message was honestly made
            if isinstance(item, Op):
                log.add_op(item)
            else:
                log.add_message(item)
        assert log.missing() == (set(), {})
        delivered = log.delivered()
        assert sorted(m.key for m in delivered) == sorted(m.key for m in messages)  # all, once each
        position = {m.key: i for i, m in enumerate(delivered)}
        for m in delivered:
            if m.seq > 1:
                assert position[(m.sender, m.seq - 1)] < position[m.key]  # per sender order
            for dep in m.deps:
                assert position[dep] < position[m.key]  # causal order across senders
        results.append(snapshot(log))
    assert results[0] == results[1] == results[2]


def test_a_message_from_a_members_new_key_is_held_until_the_user_decides() -> None:
    alice = new_group()
    views: dict[int, tuple[bytes, bool]] = {}
    watcher = GroupLog(alice.create, key_view=views.get)  # dan's replica; his user's view of the keys
    bob = copy_of(alice)
    new_phone = person(20)  # bob's new key: the group still names his old one
    b1 = bob.post(new_phone.sign, 2, "new phone, same bob", 3_000)
    with pytest.raises(GroupError, match="bad signature"):
        watcher.add_message(b1)  # nobody told this member of a new key: a forgery
    views[2] = (new_phone.public_key, False)  # the registry gave it; the user has not accepted it
    assert watcher.add_message(b1).messages == [] and watcher.held_for_key() == [2]
    carol = GroupLog(alice.create, key_view={2: (new_phone.public_key, True)}.get)
    carol.add_message(b1)  # carol's user had accepted it: her reply follows it
    c1 = carol.post(person(3).sign, 3, "welcome back", 3_001)
    assert watcher.add_message(c1).messages == []  # the reply waits for what it replies to
    assert [m.text for m in watcher.delivered()] == []
    assert watcher.recheck().messages == []  # still undecided: still held
    views[2] = (new_phone.public_key, True)  # accepted
    assert [m.text for m in watcher.recheck().messages] == ["new phone, same bob", "welcome back"]
    assert watcher.held_for_key() == []


def test_a_blocked_new_key_s_held_messages_are_dropped_and_an_unknown_key_is_still_a_forgery() -> None:
    alice = new_group()
    views: dict[int, tuple[bytes, bool]] = {2: (person(20).public_key, False)}
    watcher = GroupLog(alice.create, key_view=views.get)
    bob = copy_of(alice)
    held = bob.post(person(20).sign, 2, "held", 3_000)
    assert watcher.add_message(held).messages == []
    other = copy_of(alice).post(person(21).sign, 2, "a third key", 3_000)
    with pytest.raises(GroupError, match="two different messages|bad signature"):
        watcher.add_message(other)
    del views[2]  # blocked: the view gives no key
    update = watcher.recheck()
    assert (update.messages, update.dropped, watcher.held_for_key()) == ([], 1, [])
