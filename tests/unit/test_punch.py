"""PunchSession (connectivity checks) driven with literal times and two
sessions talking to each other through a dict, no sockets."""

from __future__ import annotations

from rendezvous.stun import Attr, Message, MessageClass, Method, decode, encode
from webpeer.punch import PACE, REPEAT, PunchSession, PunchState, username

KEY = b"k" * 16
T0 = 1000.0
ALICE_AT = ("198.51.100.11", 40000)  # alice as bob sees her
BOB_AT = ("198.51.100.12", 50000)
BOB_LOCAL = ("10.0.2.5", 50000)


def counter_bytes():
    state = {"n": 0}

    def random_bytes(n: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(n, "big")

    return random_bytes


def session(my_id: int, peer_id: int, candidates, now: float = T0, **kwargs) -> PunchSession:
    return PunchSession(my_id, peer_id, KEY, list(candidates), now, random_bytes=counter_bytes(), **kwargs)


def decoded(out):
    return [(decode(data, require_fingerprint=True), address) for data, address in out]


def test_first_probes_go_to_candidates_in_order_then_paced() -> None:
    alice = session(1, 2, [BOB_AT, BOB_LOCAL])
    first = decoded(alice.datagrams_to_send())
    assert [address for _, address in first] == [BOB_AT]  # one per pace
    request = first[0][0]
    assert request.method == Method.BINDING and request.message_class == MessageClass.REQUEST
    assert request.get(Attr.USERNAME) == username(2, 1)
    assert request.verify_integrity(KEY) and not request.verify_integrity(b"x" * 16)
    assert alice.get_timer() == T0 + PACE
    alice.handle_timer(T0 + PACE)
    assert [address for _, address in alice.datagrams_to_send()] == [BOB_LOCAL]
    # Both probed: nothing is due again before REPEAT.
    alice.handle_timer(T0 + 2 * PACE)
    assert alice.datagrams_to_send() == []
    alice.handle_timer(T0 + REPEAT)
    assert [address for _, address in alice.datagrams_to_send()] == [BOB_AT]


def test_an_answer_to_our_probe_is_success_with_the_other_sides_nonce() -> None:
    alice = session(1, 2, [BOB_AT])
    bob = session(2, 1, [ALICE_AT])
    bob.datagrams_to_send()
    ((request, _),) = decoded(alice.datagrams_to_send())
    assert bob.receive(request, ALICE_AT, T0 + 0.02)
    answers = decoded(bob.datagrams_to_send())
    answer = next(m for m, address in answers if m.message_class == MessageClass.SUCCESS)
    assert answer.get(Attr.XOR_MAPPED_ADDRESS) == ALICE_AT and answer.get(Attr.CHALLENGE) == bob.nonce
    assert alice.receive(answer, BOB_AT, T0 + 0.04)
    assert alice.state is PunchState.SUCCEEDED and alice.chosen == BOB_AT and alice.remote_nonce == bob.nonce
    assert alice.get_timer() is None


def test_requests_with_a_wrong_key_or_username_are_refused() -> None:
    bob = session(2, 1, [ALICE_AT])
    bob.datagrams_to_send()
    wrong_key = Message(Method.BINDING, MessageClass.REQUEST, b"a" * 12).add(Attr.USERNAME, username(2, 1))
    assert not bob.receive(decode(encode(wrong_key, integrity_key=b"z" * 16)), ALICE_AT, T0)
    wrong_name = Message(Method.BINDING, MessageClass.REQUEST, b"b" * 12).add(Attr.USERNAME, username(2, 9))
    assert not bob.receive(decode(encode(wrong_name, integrity_key=KEY)), ALICE_AT, T0)
    # An answer to a transaction we never sent is not a success either.
    stray = Message(Method.BINDING, MessageClass.SUCCESS, b"c" * 12).add(Attr.XOR_MAPPED_ADDRESS, ALICE_AT)
    assert not bob.receive(decode(encode(stray, integrity_key=KEY)), ALICE_AT, T0)
    assert bob.datagrams_to_send() == [] and bob.state is PunchState.PROBING


def test_a_request_from_an_unknown_address_is_peer_reflexive_and_probed_at_once() -> None:
    alice = session(1, 2, [BOB_AT])
    alice.datagrams_to_send()
    bob_elsewhere = ("198.51.100.12", 61000)  # bob's symmetric NAT's port toward alice
    request = Message(Method.BINDING, MessageClass.REQUEST, b"r" * 12).add(Attr.USERNAME, username(1, 2))
    assert alice.receive(decode(encode(request, integrity_key=KEY)), bob_elsewhere, T0 + 0.02)
    out = decoded(alice.datagrams_to_send())
    assert [(m.message_class, address) for m, address in out] == [
        (MessageClass.SUCCESS, bob_elsewhere),
        (MessageClass.REQUEST, bob_elsewhere),
    ]
    assert alice.candidates == [BOB_AT, bob_elsewhere]
    assert alice.reflexive == bob_elsewhere
    # Only the first such address is reported.
    other = ("198.51.100.12", 62000)
    again = Message(Method.BINDING, MessageClass.REQUEST, b"s" * 12).add(Attr.USERNAME, username(1, 2))
    alice.receive(decode(encode(again, integrity_key=KEY)), other, T0 + 0.03)
    assert alice.reflexive == bob_elsewhere


def test_no_answer_in_time_is_failure() -> None:
    alice = session(1, 2, [BOB_AT], timeout=2.0)
    alice.handle_timer(T0 + 1.0)
    assert alice.state is PunchState.PROBING
    alice.handle_timer(T0 + 2.0)
    assert alice.state is PunchState.FAILED and alice.get_timer() is None


def test_candidates_are_bounded() -> None:
    many = [("203.0.113.9", 1000 + i) for i in range(40)]
    alice = session(1, 2, many, max_candidates=16)
    assert len(alice.candidates) == 16
    alice.add_candidates([("203.0.113.10", 5)], T0)
    assert len(alice.candidates) == 16
