"""The shared client-side protocol (rendezvous.client_protocol), pure, with literal times."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rendezvous.client import public_key_bytes
from rendezvous.client_protocol import (
    INTERACTIVE_POLICY,
    MAX_REMEMBERED_INTRODUCTIONS,
    Answer,
    Introduction,
    PeerInfo,
    RegisterHandshake,
    RegisterRefused,
    Registration,
    RelayData,
    ServerConversation,
    error_of,
    new_request,
    register_request,
    relay_indication,
    session_request,
)
from rendezvous.core import ServerConfig, ServerCore
from rendezvous.stun import (
    Address,
    Attr,
    Candidate,
    CandidateKind,
    ErrorValue,
    Message,
    MessageClass,
    Method,
    decode,
    encode,
)
from rendezvous.tokens import Tokens

T0 = 1000.0
ME: Address = ("192.0.2.10", 40001)
TID = bytes(range(12))


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def answer_to(request: Message, cls: MessageClass = MessageClass.SUCCESS) -> Message:
    return Message(request.method, cls, request.transaction_id)


def introduce(transaction_id: bytes, peer_id: int | None = 7, public_key: bytes | None = b"k" * 32) -> Message:
    message = Message(Method.INTRODUCE, MessageClass.REQUEST, transaction_id)
    if peer_id is not None:
        message.add(Attr.PEER_ID, peer_id)
    if public_key is not None:
        message.add(Attr.PUBLIC_KEY, public_key)
    message.add(Attr.CANDIDATE, Candidate(CandidateKind.OBSERVED, ("198.51.100.7", 7000)))
    return decode(encode(message))


# ------------------------------------------------------------ building


def test_requests_carry_the_given_transaction_id_or_a_random_one() -> None:
    assert new_request(Method.BINDING, TID).transaction_id == TID
    first, second = new_request(Method.BINDING), new_request(Method.BINDING)
    assert len(first.transaction_id) == 12 and first.transaction_id != second.transaction_id


def test_register_request_has_the_fields_the_signature_covers() -> None:
    local = (("10.0.0.2", 4000), ("10.0.0.3", 4001))
    message = register_request(b"p" * 32, nickname="alice", local=local, ttl=90, transaction_id=TID)
    decoded = decode(encode(message))
    assert decoded.method == Method.REGISTER and decoded.transaction_id == TID
    assert decoded.get(Attr.PUBLIC_KEY) == b"p" * 32
    assert decoded.get(Attr.NICKNAME) == "alice"
    assert [c.address for c in decoded.get_all(Attr.CANDIDATE)] == list(local)
    assert decoded.get(Attr.TTL) == 90
    assert decoded.get(Attr.CHALLENGE) is None and decoded.get(Attr.SIGNATURE) is None


def test_session_request_puts_the_session_first() -> None:
    message = session_request(Method.REFRESH, b"s" * 20, (Attr.TTL, 30), transaction_id=TID)
    # The server's fast REFRESH path expects SESSION as the first attribute.
    assert [code for code, _ in decode(encode(message)).attributes][:2] == [Attr.SESSION, Attr.TTL]
    assert decode(encode(message)).get(Attr.TTL) == 30


def test_relay_indication() -> None:
    decoded = decode(encode(relay_indication(b"s" * 20, 9, b"\x40payload", TID)))
    assert decoded.message_class == MessageClass.INDICATION and decoded.method == Method.SEND
    assert decoded.get(Attr.SESSION) == b"s" * 20
    assert (decoded.get(Attr.PEER_ID), decoded.get(Attr.DATA)) == (9, b"\x40payload")


def test_error_of() -> None:
    request = new_request(Method.LIST, TID)
    assert error_of(answer_to(request)) is None
    refused = answer_to(request, MessageClass.ERROR).add(Attr.ERROR_CODE, ErrorValue(429, "Rate Limited"))
    assert error_of(decode(encode(refused))) == ErrorValue(429, "Rate Limited")
    assert error_of(answer_to(request, MessageClass.ERROR)) == ErrorValue(500, "error without ERROR-CODE")


# ------------------------------------------------------------ registering


def test_handshake_registers_with_the_real_core() -> None:
    core = ServerCore(ServerConfig(), Tokens(b"k" * 32))
    private = key(1)
    local = (("10.0.0.2", 4000),)
    handshake = RegisterHandshake(private, public_key_bytes(private), nickname="alice", local=local, ttl=90)
    step: Message | Registration | RegisterRefused = handshake.first_request()
    sent = 0
    while isinstance(step, Message):
        sent += 1
        core.receive_datagram(encode(step), ME, T0)
        for pending in core.pending_registrations():
            core.complete_registration(pending, 1, None, T0)
        ((reply, to),) = core.datagrams_to_send()
        assert to == ME
        step = handshake.answer(decode(reply))
    assert sent == 2 and handshake.signed
    assert isinstance(step, Registration)
    assert (step.peer_id, step.ttl, step.observed) == (1, 90, ME)
    record = core.directory.get(1)
    assert record is not None and (record.nickname, record.local) == ("alice", local)


def test_handshake_signs_the_first_challenge_only() -> None:
    private = key(2)
    handshake = RegisterHandshake(private, public_key_bytes(private))
    first = handshake.first_request()
    challenge = answer_to(first, MessageClass.ERROR).add(Attr.ERROR_CODE, ErrorValue(401, "Unauthorized"))
    challenge.add(Attr.CHALLENGE, b"c" * 24)
    signed = handshake.answer(challenge)
    assert isinstance(signed, Message)
    assert signed.get(Attr.CHALLENGE) == b"c" * 24 and len(signed.get(Attr.SIGNATURE)) == 64
    again = answer_to(signed, MessageClass.ERROR).add(Attr.ERROR_CODE, ErrorValue(401, "Bad Signature"))
    again.add(Attr.CHALLENGE, b"d" * 24)
    refused = handshake.answer(again)
    assert isinstance(refused, RegisterRefused)
    assert refused.reason == "registration refused: 401 Bad Signature"
    assert refused.error == ErrorValue(401, "Bad Signature") and refused.response is again


def test_handshake_refuses_an_incomplete_success() -> None:
    private = key(3)
    handshake = RegisterHandshake(private, public_key_bytes(private))
    answer = answer_to(handshake.first_request()).add(Attr.PEER_ID, 4)  # no TTL, address or SESSION
    refused = handshake.answer(answer)
    assert isinstance(refused, RegisterRefused)
    assert refused.error is None and refused.reason == "registration answer is missing attributes"


# ------------------------------------------------------------ the conversation


def test_request_is_retransmitted_on_the_policy_schedule_then_times_out() -> None:
    conversation: ServerConversation[str] = ServerConversation(INTERACTIVE_POLICY)
    request = new_request(Method.LIST, TID)
    conversation.request(request, "list", T0)
    assert conversation.datagrams_to_send() == [encode(request)]
    resent_at = []
    while (at := conversation.get_timer()) is not None:
        timed_out = conversation.handle_timer(at)
        if conversation.datagrams_to_send() == [encode(request)]:
            resent_at.append(at)
        if timed_out:
            assert timed_out == ["list"]
            break
    assert resent_at == [1000.25, 1000.75, 1001.75, 1003.75]
    assert at == 1004.75
    assert len(conversation) == 0 and conversation.get_timer() is None


def test_a_late_timer_sends_one_copy_not_a_burst() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    conversation.request(new_request(Method.LIST, TID), "list", T0)
    conversation.datagrams_to_send()
    assert conversation.handle_timer(1001.0) == []
    assert len(conversation.datagrams_to_send()) == 1
    assert conversation.get_timer() == 1001.75


def test_answers_are_matched_once() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    request = new_request(Method.CONNECT, TID)
    conversation.request(request, "connect", T0)
    reply = answer_to(request)
    assert conversation.receive(reply) == Answer("connect", reply)
    # A second copy (the answer to a retransmission) and strangers' answers are not reported.
    assert conversation.receive(reply) is None
    assert conversation.receive(answer_to(new_request(Method.CONNECT, b"x" * 12))) is None
    assert conversation.get_timer() is None


def test_a_cancelled_request_stops_and_its_answer_is_ignored() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    request = new_request(Method.LIST, TID)
    conversation.request(request, "list", T0)
    conversation.cancel(TID)
    assert conversation.get_timer() is None
    assert conversation.receive(answer_to(request)) is None


def test_introductions_are_acknowledged_every_time_and_reported_once() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    first = conversation.receive(introduce(TID))
    assert isinstance(first, Introduction)
    assert (first.info.peer_id, first.info.public_key) == (7, b"k" * 32)
    assert first.info.candidates == (Candidate(CandidateKind.OBSERVED, ("198.51.100.7", 7000)),)
    assert conversation.receive(introduce(TID)) is None  # our ack was lost: the server sent it again
    acks = [decode(data) for data in conversation.datagrams_to_send()]
    assert [(a.method, a.message_class, a.transaction_id) for a in acks] == [
        (Method.INTRODUCE, MessageClass.SUCCESS, TID)
    ] * 2


def test_an_incomplete_introduction_is_acknowledged_but_not_reported() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    assert conversation.receive(introduce(TID, public_key=None)) is None
    assert conversation.receive(introduce(b"y" * 12, peer_id=None)) is None
    assert len(conversation.datagrams_to_send()) == 2


def test_the_memory_of_introductions_is_bounded() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    ids = [n.to_bytes(12, "big") for n in range(MAX_REMEMBERED_INTRODUCTIONS + 1)]
    for transaction_id in ids:
        assert isinstance(conversation.receive(introduce(transaction_id)), Introduction)
    # The oldest was forgotten, the newest kept.
    assert isinstance(conversation.receive(introduce(ids[0])), Introduction)
    assert conversation.receive(introduce(ids[-1])) is None


def test_relayed_data_is_reported_when_complete() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    data = Message(Method.DATA, MessageClass.INDICATION, TID).add(Attr.PEER_ID, 3).add(Attr.DATA, b"\x40q")
    assert conversation.receive(decode(encode(data))) == RelayData(3, b"\x40q")
    incomplete = Message(Method.DATA, MessageClass.INDICATION, TID).add(Attr.PEER_ID, 3)
    assert conversation.receive(decode(encode(incomplete))) is None
    assert conversation.datagrams_to_send() == []


def test_indications_go_out_once() -> None:
    conversation: ServerConversation[str] = ServerConversation()
    message = relay_indication(b"s" * 20, 2, b"\x40x", TID)
    conversation.indicate(message)
    assert conversation.datagrams_to_send() == [encode(message)]
    assert conversation.get_timer() is None


def test_peer_info_from_a_connect_answer() -> None:
    reply = Message(Method.CONNECT, MessageClass.SUCCESS, TID).add(Attr.PEER_ID, 2).add(Attr.PUBLIC_KEY, b"b" * 32)
    reply.add(Attr.NICKNAME, "bob").add(Attr.PUNCH_KEY, b"p" * 16)
    info = PeerInfo.from_message(decode(encode(reply)))
    assert info == PeerInfo(2, b"b" * 32, "bob", (), b"p" * 16)
    assert info.complete
