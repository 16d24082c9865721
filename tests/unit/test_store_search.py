"""Search in the history (Store.search): FTS5 where SQLite has it, LIKE
otherwise; both ways must find the same messages for plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from webpeer.store import KEY_CHANGE_HIDDEN, NewMessage, Store


@pytest.fixture(params=["fts5", "like"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    store = Store(tmp_path / "history.sqlite3")
    store.open()
    if request.param == "like":
        store._fts = False  # as on an SQLite built without FTS5
    store.add_messages(
        [
            NewMessage("a", 2, 1, "Hello Wörld, see you at the café", "received", 10.0),
            NewMessage("b", 1, 2, 'she said "hi" with 100% certainty', "sent", 11.0),
            NewMessage("c", 3, 1, "hello carol", "received", 12.0),
            NewMessage("h", 2, 1, "hello from a key not accepted", "received", 13.0, KEY_CHANGE_HIDDEN),
        ]
    )
    return store


def ids(found: list[dict[str, object]]) -> list[object]:
    return [m["id"] for m in found]


def test_search_finds_every_word_newest_first_case_blind(store: Store) -> None:
    assert ids(store.search(["hello"])) == ["c", "a"]  # the hidden one is never found
    # "world" finds "Wörld" only through FTS5 (accents ignored); LIKE compares letters as they are.
    assert ids(store.search(["HELLO", "world"])) == (["a"] if store._fts else [])
    assert ids(store.search(["hello", "carol"])) == ["c"]
    assert ids(store.search(["hello"], peer=2)) == ["a"]
    assert ids(store.search(["hello"], limit=1)) == ["c"]
    assert ids(store.search(["nothing"])) == []
    assert store.search([]) == []


def test_search_takes_quotes_percent_and_underscore_as_text(store: Store) -> None:
    assert ids(store.search(['"hi"'])) == ["b"]
    assert ids(store.search(["100%"])) == ["b"]
    assert ids(store.search(["_"])) == []
    assert ids(store.search(["%"])) == ([] if store._fts else ["b"])


def test_messages_stored_after_a_search_are_found_by_the_next(store: Store) -> None:
    assert ids(store.search(["again"])) == []
    store.add_messages([NewMessage("d", 2, 1, "hello again", "received", 14.0)])
    assert ids(store.search(["again"])) == ["d"]
    assert ids(store.search(["hello"])) == ["d", "c", "a"]


def test_fts_matches_word_starts_and_ignores_accents(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite3")
    store.open()
    store.add_messages([NewMessage("a", 2, 1, "Hello Wörld at the café", "received", 10.0)])
    assert ids(store.search(["hel", "wor", "cafe"])) == ["a"]
    assert ids(store.search(["ello"])) == []  # a word's start, not any part of it
