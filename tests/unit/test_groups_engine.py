"""Groups through the pure engines (webpeer/groups.py on tests/unit/peer_net.py):
fan-out over the peer links, storage, catching up from any member, removal."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from peer_net import Peer, PeerNet

from webpeer.events import GroupChanged, GroupDelivery
from webpeer.group_codec import Member, Op, OpKind
from webpeer.group_frames import op_frame
from webpeer.group_log import GroupLog
from webpeer.groups import ASK_AGAIN, MAX_FOREIGN
from webpeer.trust import Action, TrustState

DEADLINE = 60.0  # simulated seconds: generous, the run stops as soon as the condition holds


def online_group(net: PeerNet, size: int = 5) -> list[Peer]:
    peers = [net.add(f"p{i}") for i in range(size)]
    net.run_until(lambda: all(p.engine.my_id is not None for p in peers), DEADLINE)
    net.run_until(lambda: all(p.engine.session(q.peer_id).online for p in peers for q in peers if p is not q), DEADLINE)
    return peers


def create(net: PeerNet, peers: list[Peer], name: str = "club") -> str:
    creator = peers[0]
    group = creator.engine.groups.create(name, [p.peer_id for p in peers[1:]], net.now)
    creator.flush()
    net.run_until(lambda: all(group["id"] in p.engine.groups._stored for p in peers), DEADLINE)
    return str(group["id"])


def stored_keys(peer: Peer, group_id: str) -> list[tuple[int, int]]:
    """The group messages in the peer's store, as (sender, seq), in stored order."""
    return [(body["s"], body["q"]) for body in map(json.loads, peer.store.group_messages(group_id))]


def post(net: PeerNet, peer: Peer, group_id: str, text: str) -> str:
    message = peer.engine.groups.post(group_id, text, net.now)
    peer.flush()
    return str(message["id"])


def test_a_group_appears_on_every_member_with_its_name_and_members(net: PeerNet) -> None:
    peers = online_group(net, 3)
    group_id = create(net, peers, "tea")
    for peer in peers:
        [group] = peer.engine.groups.groups_json()
        assert group["name"] == "tea" and group["members"] == sorted(p.peer_id for p in peers)
        assert group["admins"] == [peers[0].peer_id] and group["member"] is True
        assert any(isinstance(e, GroupChanged) and e.group["id"] == group_id for e in peer.events)


@pytest.mark.slow
def test_250_concurrent_messages_reach_all_5_members_once_each_in_order(net: PeerNet) -> None:
    peers = online_group(net)
    group_id = create(net, peers)
    for round_ in range(50):  # all at the same simulated moment: as concurrent as it gets
        for peer in peers:
            post(net, peer, group_id, f"{peer.name} {round_}")
    want = {(p.peer_id, seq) for p in peers for seq in range(1, 51)}
    net.run_until(lambda: all(set(stored_keys(p, group_id)) == want for p in peers), DEADLINE)
    for peer in peers:
        keys = stored_keys(peer, group_id)
        assert len(keys) == 250 and set(keys) == want  # every one, none twice
        for writer in peers:
            seqs = [seq for sender, seq in keys if sender == writer.peer_id]
            assert seqs == list(range(1, 51))  # each writer's in its order
        log = peer.engine.groups.logs[group_id]
        position = {m.key: i for i, m in enumerate(log.delivered())}
        for message in log.delivered():
            assert all(position[dep] < position[message.key] for dep in message.deps)  # causal
    states = [peer.engine.groups.logs[group_id].state for peer in peers]
    assert all(state == states[0] for state in states)


def test_the_writer_learns_which_members_delivered_its_message(net: PeerNet) -> None:
    peers = online_group(net, 3)
    group_id = create(net, peers)
    writer = peers[0]
    message_id = post(net, writer, group_id, "who has this?")
    others = sorted(p.peer_id for p in peers[1:])

    def reported() -> list[int]:
        events = [e for e in writer.events if isinstance(e, GroupDelivery) and e.message_id == message_id]
        return events[-1].delivered_to if events else []

    net.run_until(lambda: reported() == others, DEADLINE)
    [message] = writer.engine.groups.messages_json(group_id)
    assert message["delivered_to"] == others


def test_an_offline_member_catches_up_from_a_member_other_than_the_writer(net: PeerNet) -> None:
    peers = online_group(net)
    group_id = create(net, peers)
    writer, away = peers[0], peers[3]
    away_id = away.peer_id
    net.stop(away)
    texts = [f"while you were out {n}" for n in range(10)]
    for text in texts:
        post(net, writer, group_id, text)
    others = [p for p in peers if p not in (writer, away)]
    net.run_until(lambda: all(len(stored_keys(p, group_id)) == 10 for p in others), DEADLINE)
    net.stop(writer)  # the writer is gone before the member comes back
    back = net.start_again(away, last_id=away_id)
    assert group_id in back.engine.groups.logs  # rebuilt from its store before anyone answered
    net.run_until(lambda: len(stored_keys(back, group_id)) == 10, DEADLINE)
    log = back.engine.groups.logs[group_id]
    assert [m.text for m in log.delivered()] == texts
    assert stored_keys(back, group_id) == [(writer.peer_id, n) for n in range(1, 11)]


def test_a_removed_member_receives_nothing_written_after_its_removal(net: PeerNet) -> None:
    peers = online_group(net)
    group_id = create(net, peers)
    admin, removed = peers[0], peers[4]
    post(net, admin, group_id, "before")
    net.run_until(lambda: len(stored_keys(removed, group_id)) == 1, DEADLINE)
    admin.engine.groups.change(group_id, OpKind.REMOVE, net.now, target=removed.peer_id)
    admin.flush()
    net.run_until(lambda: removed.peer_id not in removed.engine.groups.logs[group_id].state.members, DEADLINE)
    for peer in peers[:4]:
        post(net, peer, group_id, f"after, from {peer.name}")
    net.run_until(lambda: all(len(stored_keys(p, group_id)) == 5 for p in peers[:4]), DEADLINE)
    # It asks for what it lacks on every new link: nothing written after its removal is given.
    for peer in peers[:4]:
        removed.engine.groups.link_ready(peer.peer_id, net.now)
    removed.flush()
    net.run(5)
    assert stored_keys(removed, group_id) == [(admin.peer_id, 1)]
    assert [m.text for m in removed.engine.groups.logs[group_id].delivered()] == ["before"]


def test_a_forged_membership_op_is_refused_by_every_member(net: PeerNet) -> None:
    peers = online_group(net, 4)
    group_id = create(net, peers)
    forger = peers[1]  # a member, not an admin
    log = forger.engine.groups.logs[group_id]
    forged = Op(group_id, OpKind.ADD, forger.peer_id, log.heads, 5_000, members=(Member(99, b"k" * 32),))
    forged = replace(forged, sig=forger.identity.sign(forged.signed_bytes()))
    replayed = log.create  # an old op again
    before = {p.name: p.engine.stats["group_refused"] for p in peers}
    for peer in (peers[0], peers[2], peers[3]):
        link = forger.engine.session(peer.peer_id).ready_link
        if link is None:
            forger.engine.connect(forger.engine.session(peer.peer_id), net.now)
            forger.flush()
            net.run_until(lambda p=peer: forger.engine.session(p.peer_id).ready_link is not None, DEADLINE)
            link = forger.engine.session(peer.peer_id).ready_link
        assert link is not None
        link.send_frames([op_frame(forged), op_frame(replayed)], net.now)
        forger.flush()
    for peer in (peers[0], peers[2], peers[3]):
        net.run_until(lambda p=peer: p.engine.stats["group_refused"] == before[p.name] + 1, DEADLINE)
        state = peer.engine.groups.logs[group_id].state
        assert 99 not in state.members
        assert len(peer.store.group_ops(group_id)) == 1  # the create op only: the replay changed nothing


def test_made_up_groups_from_a_peer_cannot_crowd_out_real_ones(net: PeerNet) -> None:
    peers = online_group(net, 2)
    spammer, victim = peers
    spammer.engine.connect(spammer.engine.session(victim.peer_id), net.now)
    spammer.flush()
    net.run_until(lambda: spammer.engine.session(victim.peer_id).ready_link is not None, DEADLINE)
    post_link = spammer.engine.session(victim.peer_id).ready_link
    assert post_link is not None
    # Groups the victim is not in: kept only in memory, and only the latest few.
    for n in range(MAX_FOREIGN + 10):
        fake = GroupLog.create_group(
            spammer.identity.sign, Member(spammer.peer_id, spammer.identity.public_key), f"spam {n}", [], f"{n:032x}", 1
        )
        post_link.send_frames([op_frame(fake.create)], net.now)
    spammer.flush()
    net.run(1)
    assert victim.engine.groups.groups_json() == []
    assert len(victim.engine.groups.logs) == MAX_FOREIGN
    assert victim.store.group_ids() == []
    # A real group still comes through.
    group_id = create(net, [spammer, victim], "real")
    assert [g["id"] for g in victim.engine.groups.groups_json()] == [group_id]


def test_a_member_offline_when_the_group_was_made_gets_it_when_it_comes_back(net: PeerNet) -> None:
    peers = online_group(net, 3)
    away = peers[2]
    away_id = away.peer_id
    net.stop(away)
    creator = peers[0]
    group = creator.engine.groups.create("later", [p.peer_id for p in peers[1:]], net.now)
    creator.flush()
    post(net, creator, str(group["id"]), "hello all")
    net.run_until(lambda: len(stored_keys(peers[1], str(group["id"]))) == 1, DEADLINE)
    net.run(10)  # its first attempts found it offline
    back = net.start_again(away, last_id=away_id)  # nothing of the group on it: only the others can tell it
    net.run_until(lambda: len(stored_keys(back, str(group["id"]))) == 1, DEADLINE)
    assert back.engine.groups.groups_json()[0]["name"] == "later"


def test_a_members_new_key_is_held_in_the_group_until_the_user_accepts_it(net: PeerNet) -> None:
    peers = online_group(net, 3)
    group_id = create(net, peers)
    alice, bob, carol = peers
    bob_id = bob.peer_id
    bob2 = net.new_key(bob)  # same id, new key, fresh data dir
    for peer in (alice, carol):
        net.run_until(lambda p=peer: p.engine.trust.of(bob_id).state is TrustState.CHANGED, DEADLINE)
    with carol.store.batch():
        carol.engine.set_trust(bob_id, Action.ACCEPT, net.now)  # carol's user compared the new key
    carol.flush()
    bob2.send(carol, "new phone")  # a link to carol: she tells the new key of the group it is in
    net.run_until(lambda: group_id in bob2.engine.groups._stored, DEADLINE)
    post(net, bob2, group_id, "same bob")
    net.run_until(lambda: stored_keys(carol, group_id) == [(bob_id, 1)], DEADLINE)
    refused = alice.engine.stats["group_refused"]
    net.run_until(lambda: alice.engine.groups.logs[group_id].held_for_key() == [bob_id], DEADLINE)
    net.run(3)
    # Held on alice: not shown, not stored, not refused, and nothing of hers goes to the new key.
    assert stored_keys(alice, group_id) == [] and alice.engine.stats["group_refused"] == refused
    assert alice.engine.groups.groups_json()[0]["held_for_key_change"] == [bob_id]
    told = [e.group["held_for_key_change"] for e in alice.events if isinstance(e, GroupChanged)]
    assert told[-1] == [bob_id]  # the page was told whose messages wait
    assert bob2.engine.groups.seen.get(group_id, {}).get(alice.peer_id) is None
    with alice.store.batch():
        alice.engine.set_trust(bob_id, Action.ACCEPT, net.now)
    alice.flush()
    assert stored_keys(alice, group_id) == [(bob_id, 1)]
    assert [m.text for m in alice.engine.groups.logs[group_id].delivered()] == ["same bob"]
    assert alice.engine.groups.groups_json()[0]["held_for_key_change"] == []
    assert [e.group["held_for_key_change"] for e in alice.events if isinstance(e, GroupChanged)][-1] == []
    net.run_until(lambda: bob2.engine.groups.seen[group_id].get(alice.peer_id, {}).get(bob_id) == 1, DEADLINE)


def test_a_member_added_again_gets_everything_after_and_nothing_written_while_it_was_out(net: PeerNet) -> None:
    peers = online_group(net, 3)
    group_id = create(net, peers)
    admin, bob, dan = peers
    admin.engine.groups.change(group_id, OpKind.REMOVE, net.now, target=dan.peer_id)
    admin.flush()
    net.run_until(lambda: dan.peer_id not in bob.engine.groups.logs[group_id].state.members, DEADLINE)
    post(net, bob, group_id, "while dan is out")
    post(net, admin, group_id, "still out")
    net.run_until(lambda: len(stored_keys(bob, group_id)) == 2 and len(stored_keys(admin, group_id)) == 2, DEADLINE)
    admin.engine.groups.change(group_id, OpKind.ADD, net.now, members=(dan.peer_id,))
    admin.flush()
    net.run_until(lambda: dan.peer_id in bob.engine.groups.logs[group_id].state.members, DEADLINE)
    post(net, bob, group_id, "welcome back")
    net.run_until(lambda: [m["text"] for m in dan.engine.groups.messages_json(group_id)] == ["welcome back"], DEADLINE)
    net.run(ASK_AGAIN * 3)  # long enough for any request to be asked again
    # Its store keeps the withheld copies (their text's hash, no text), so a restart rebuilds the same.
    bodies = [json.loads(body) for body in dan.store.group_messages(group_id)]
    assert [("text" in b, b.get("text")) for b in bodies if (b["s"], b["q"]) != (bob.peer_id, 2)] == [
        (False, None),
        (False, None),
    ]
    assert not dan.engine.groups._asking  # nothing left to ask for
    assert dan.engine.groups.logs[group_id].missing() == (set(), {})
