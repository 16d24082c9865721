// What screen readers are told of new messages (static/announce.js): `node --test`.
// Run by tests/js/test_reducer.py.

import assert from "node:assert/strict";
import { test } from "node:test";

import { initialState, reduce } from "../../static/state.js";
import { ANNOUNCED_TEXT_CHARS, announcementFor, arrivalsOf, openConversation } from "../../static/announce.js";

const ALICE = { id: 1, name: "alice" };
const G = "b".repeat(64);
const msg = (id, from, to, text) => ({ id, peer: from === 1 ? to : from, from, to, text, status: "received", time: 100, error: null });
const gmsg = (from, seq, text) => ({ id: `${from}:${seq}`, group: G, from, seq, text, time: 100 + seq, delivered_to: [] });
const names = new Map([[2, "bob"], [3, "carol"], [4, "dave"], [5, "erin"]]);
const nameOf = (id) => names.get(id) ?? `peer ${id}`;

function run(state, ...events) {
  return events.reduce(reduce, state);
}

function withBobOpen() {
  return run(
    initialState(),
    { type: "hello", me: ALICE, peers: [ALICE, { id: 2, name: "bob" }, { id: 3, name: "carol" }] },
    { type: "peer-selected", peer: 2 },
  );
}

function withGroupOpen() {
  const group = { id: G, name: "lunch", members: [1, 2, 3], admins: [1], member: true, created_by: 1, created: 50 };
  return run(withBobOpen(), { type: "group", group, change: null }, { type: "group-selected", group: G });
}

const burst = (messages) => ({ type: "message-burst", events: messages.map((message) => ({ type: "message", message })) });

test("one new message from the open peer: its sender and text", () => {
  const arrivals = arrivalsOf(withBobOpen(), { type: "message", message: msg("m1", 2, 1, "hi there") });
  assert.deepEqual(arrivals, [{ conversation: "peer:2", from: 2, text: "hi there" }]);
  assert.equal(announcementFor(arrivals, nameOf), "bob: hi there");
});

test("a burst is one summary naming the sender", () => {
  const messages = Array.from({ length: 200 }, (_, n) => msg(`m${n}`, 2, 1, `burst ${n}`));
  const arrivals = arrivalsOf(withBobOpen(), burst(messages));
  assert.equal(arrivals.length, 200);
  assert.equal(announcementFor(arrivals, nameOf), "200 new messages from bob");
  // The same id twice in one burst (a status right after the message) is one arrival.
  assert.equal(arrivalsOf(withBobOpen(), burst([messages[0], { ...messages[0], status: "read" }])).length, 1);
});

test("nothing for own messages, other conversations, known messages or other events", () => {
  const state = withBobOpen();
  assert.deepEqual(arrivalsOf(state, { type: "message", message: msg("m1", 1, 2, "mine") }), []);
  assert.deepEqual(arrivalsOf(state, { type: "message", message: msg("m2", 3, 1, "carol's, not open") }), []);
  const known = run(state, { type: "message", message: msg("m3", 2, 1, "seen") });
  assert.deepEqual(arrivalsOf(known, { type: "message", message: { ...msg("m3", 2, 1, "seen"), status: "read" } }), []);
  // History (the open conversation's, or an older page) is never an arrival.
  const page = { type: "history-loaded", peer: 2, since: 0, messages: [msg("m0", 2, 1, "older")] };
  assert.deepEqual(arrivalsOf(state, page), []);
  for (const event of [{ type: "status", id: "m3", status: "read" }, { type: "peers", peers: [] }, null, {}, { type: "message-burst" }]) {
    assert.deepEqual(arrivalsOf(known, event), []);
  }
  // No conversation open: nothing is said, whoever writes.
  const closed = run(state, { type: "conversation-closed" });
  assert.equal(openConversation(closed), null);
  assert.deepEqual(arrivalsOf(closed, { type: "message", message: msg("m4", 2, 1, "hello?") }), []);
});

test("a mixed burst keeps only the open conversation's new messages from others", () => {
  const state = withBobOpen();
  const arrivals = arrivalsOf(state, burst([msg("a", 2, 1, "one"), msg("b", 1, 2, "mine"), msg("c", 3, 1, "carol"), msg("d", 2, 1, "two")]));
  assert.deepEqual(arrivals.map((arrival) => arrival.text), ["one", "two"]);
  assert.equal(announcementFor(arrivals, nameOf), "2 new messages from bob");
});

test("a group: the sender of one message, the senders of a burst", () => {
  const state = withGroupOpen();
  assert.equal(openConversation(state), `group:${G}`);
  const one = arrivalsOf(state, { type: "group-message", message: gmsg(2, 1, "noodles?") });
  assert.deepEqual(one, [{ conversation: `group:${G}`, from: 2, text: "noodles?" }]);
  assert.equal(announcementFor(one, nameOf), "bob: noodles?");
  const two = arrivalsOf(state, { type: "group-messages", messages: [gmsg(2, 1, "a"), gmsg(3, 1, "b"), gmsg(1, 1, "mine"), gmsg(2, 2, "c")] });
  assert.equal(announcementFor(two, nameOf), "3 new messages from bob and carol");
  const three = [2, 3, 4].map((from) => ({ conversation: `group:${G}`, from, text: "x" }));
  assert.equal(announcementFor(three, nameOf), "3 new messages from bob, carol and dave");
  const four = [2, 3, 4, 5, 2].map((from) => ({ conversation: `group:${G}`, from, text: "x" }));
  assert.equal(announcementFor(four, nameOf), "5 new messages from 4 people");
  // A group message already shown, or one to a group that is not open, is not new here.
  const known = run(state, { type: "group-message", message: gmsg(2, 1, "noodles?") });
  assert.deepEqual(arrivalsOf(known, { type: "group-message", message: gmsg(2, 1, "noodles?") }), []);
  assert.deepEqual(arrivalsOf(state, { type: "group-message", message: { ...gmsg(2, 3, "x"), group: "c".repeat(64) } }), []);
  // With a group open, a peer's message is not the open conversation's.
  assert.deepEqual(arrivalsOf(state, { type: "message", message: msg("m9", 2, 1, "direct") }), []);
});

test("a long or many-line text is said on one line and cut", () => {
  const long = `${"word ".repeat(200)}end`;
  const said = announcementFor([{ conversation: "peer:2", from: 2, text: long }], nameOf);
  assert.equal([...said.slice("bob: ".length)].length, ANNOUNCED_TEXT_CHARS);
  assert.ok(said.endsWith("…"), said);
  assert.equal(announcementFor([{ conversation: "peer:2", from: 2, text: "two\n\nlines " }], nameOf), "bob: two lines");
  // A cut never splits an emoji in halves.
  const emoji = announcementFor([{ conversation: "peer:2", from: 2, text: "😀".repeat(400) }], nameOf);
  assert.ok(!/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/.test(emoji), "no lone high surrogate");
  assert.equal(announcementFor([], nameOf), "");
});
