"""webpeer/validate.py: the one set of rules for texts and ids, at its edges."""

from __future__ import annotations

import pytest

from webpeer import validate
from webpeer.api import MAX_TEXT_BYTES, ApiError
from webpeer.validate import MAX_PEER_ID, InvalidValue, message_id, message_text, peer_id


def refused(call: object, *args: object, **kwargs: object) -> InvalidValue:
    assert callable(call)
    with pytest.raises(InvalidValue) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------- message_text


@pytest.mark.parametrize("text", ["", " ", "\t\n", "\u00a0\u2003", "\u3000"])
def test_blank_text_is_an_empty_message(text: str) -> None:
    error = refused(message_text, text)
    assert (error.status, error.message) == (400, "empty message")


@pytest.mark.parametrize("value", [None, 5, b"bytes", ["a"], {"text": "a"}])
def test_text_must_be_a_string(value: object) -> None:
    error = refused(message_text, value)
    assert (error.status, error.message) == (400, "text must be a string")


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "ok \ud83d", "é\udc80" * 3])
def test_lone_surrogates_are_not_valid_unicode(text: str) -> None:
    error = refused(message_text, text)
    assert error.status == 400
    assert "not valid Unicode" in error.message and "surrogate" in error.message


def test_a_surrogate_pair_written_as_one_character_is_fine() -> None:
    assert message_text("\U0001f600") == "\U0001f600"


@pytest.mark.parametrize(
    "text",
    [
        "a" * MAX_TEXT_BYTES,
        "é" * (MAX_TEXT_BYTES // 2),
        "€" * (MAX_TEXT_BYTES // 3) + "a",  # 3 * 21845 + 1 = 65536
        "\U0001f600" * (MAX_TEXT_BYTES // 4),
        " x ",  # spaces around text are kept as they are
    ],
)
def test_texts_up_to_the_limit_pass_unchanged(text: str) -> None:
    assert len(text.encode("utf-8")) <= MAX_TEXT_BYTES
    assert message_text(text) is text


@pytest.mark.parametrize(
    "text",
    [
        "a" * (MAX_TEXT_BYTES + 1),
        "é" * (MAX_TEXT_BYTES // 2) + "a",  # one byte over, in two-byte characters
        "€" * (MAX_TEXT_BYTES // 3) + "é",  # 65535 + 2
        "a" * (MAX_TEXT_BYTES - 1) + "€",  # the last character crosses the limit
        "\U0001f600" * (MAX_TEXT_BYTES // 4) + "a",
    ],
)
def test_one_byte_over_the_limit_is_413_and_names_it(text: str) -> None:
    assert len(text) <= MAX_TEXT_BYTES + 1  # in characters it may well fit: bytes count
    error = refused(message_text, text)
    assert error.status == 413
    assert str(MAX_TEXT_BYTES) in error.message and "bytes" in error.message
    assert str(len(text.encode("utf-8"))) in error.message


def test_invalid_value_is_an_api_error() -> None:
    # The web layer answers ApiError; the frame path catches InvalidValue by name.
    assert issubclass(InvalidValue, ApiError)
    assert refused(message_text, "").args == ("empty message",)


# ---------------------------------------------------------------- peer_id


@pytest.mark.parametrize("value", [1, 2, 2**31, MAX_PEER_ID])
def test_peer_ids_in_range(value: int) -> None:
    assert MAX_PEER_ID == 2**32 - 1
    assert peer_id(value, "to") == value


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**32, 2**63 - 1, 2**70, 10**400, True, False, 2.0, 1e3, float("nan"), "2", None, [2], {"id": 2}],
)
def test_peer_ids_refused(value: object) -> None:
    error = refused(peer_id, value, "to")
    assert error.status == 400
    assert error.message.startswith("to must be a positive integer peer id")
    assert str(MAX_PEER_ID) in error.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", 1), ("42", 42), ("0042", 42), ("4294967295", MAX_PEER_ID), ("0" * 5000 + "7", 7)],
)
def test_url_peer_ids(raw: str, expected: int) -> None:
    assert peer_id(raw, "peer", from_url=True) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "0",
        "000",
        "4294967296",
        "99999999999999999999",
        "9" * 5000,  # int() alone would raise ValueError past 4300 digits
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.5",
        "1e3",
        "0x10",
        "abc",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit(), not ASCII
        "\u00b2",  # SUPERSCRIPT TWO: isdigit(), int() refuses it
        "１",  # FULLWIDTH DIGIT ONE: int() would accept it
    ],
)
def test_url_peer_ids_refused(raw: str) -> None:
    error = refused(peer_id, raw, "peer id", from_url=True)
    assert error.status == 400 and "peer id must be a positive integer" in error.message


def test_digit_strings_are_ids_only_from_urls() -> None:
    refused(peer_id, "2", "to")


# ---------------------------------------------------------------- message_id


@pytest.mark.parametrize("value", ["a", "0123456789abcdef" * 2, "2:abc", "x" * validate.MAX_MESSAGE_ID_CHARS])
def test_message_ids(value: str) -> None:
    assert message_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * (validate.MAX_MESSAGE_ID_CHARS + 1), "a\ud800", None, 7, b"id", True])
def test_message_ids_refused(value: object) -> None:
    error = refused(message_id, value)
    assert error.status == 400 and "message id" in error.message


def test_frame_message_ids_have_their_own_length() -> None:
    limit = validate.MAX_FRAME_MESSAGE_ID_CHARS
    assert message_id("x" * limit, max_chars=limit) == "x" * limit
    error = refused(message_id, "x" * (limit + 1), max_chars=limit)
    assert f"1..{limit}" in error.message
