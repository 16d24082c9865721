// The page's reducer (static/state.js), without a browser: `node --test`.
// Run by tests/js/test_reducer.py, which says how.

import assert from "node:assert/strict";
import { test } from "node:test";

import { conversationOf, displayName, filteredPeers, findPeer, initialState, readByPeer, readsOnArrival, reduce } from "../../static/state.js";

const ALICE = { id: 1, name: "alice", fingerprint: "SHA256:a", registered: true };
const peer = (id, name, extra = {}) => ({ id, name, online: true, unread: 0, key_changed: false, error: null, connection: null, ...extra });
const msg = (id, from, to, text, extra = {}) => ({ id, peer: from === 1 ? to : from, from, to, text, status: "received", time: 100, error: null, ...extra });

function run(state, ...events) {
  return events.reduce(reduce, state);
}

// A deep, comparable picture of a state (Maps included), to prove nothing was changed in place.
function snapshot(value) {
  return JSON.stringify(value, (_, v) => (v instanceof Map ? [...v] : v));
}

function greeted(options) {
  return run(initialState(options), { type: "hello", me: ALICE, peers: [ALICE, peer(2, "bob"), peer(3, "carol")] });
}

test("hello sets me and the peers; an unknown event changes nothing", () => {
  const state = greeted();
  assert.equal(state.me.id, 1);
  assert.deepEqual(state.peers.map((p) => p.id), [1, 2, 3]);
  for (const type of ["wake", "constructor", "__proto__", "toString", "batch"]) {
    assert.equal(reduce(state, { type }), state, type);
  }
  assert.equal(reduce(state, null), state);
});

test("the reducer never changes the state it is given", () => {
  const events = [
    { type: "hello", me: ALICE, peers: [ALICE, peer(2, "bob")] },
    { type: "peer-selected", peer: 2 },
    { type: "send-started", clientId: "c1", peer: 2, text: "hi", time: 101 },
    { type: "message", message: msg("m1", 2, 1, "hello") },
    { type: "sent", client_id: "c1", message: msg("m2", 1, 2, "hi", { status: "sending" }) },
    { type: "status", id: "m2", status: "delivered", error: null },
    { type: "connection", peer: 2, connection: { state: "direct", address: "127.0.0.1:5" } },
    { type: "history-loaded", peer: 2, messages: [msg("m0", 2, 1, "old")], since: 0 },
    { type: "socket-closed", retryInSeconds: 1, unanswered: [] },
    { type: "error-shown", error: "boom" },
  ];
  let state = initialState();
  for (const event of events) {
    const before = snapshot(state);
    const next = reduce(state, event);
    assert.equal(snapshot(state), before, event.type);
    assert.notEqual(next, state, event.type);
    state = next;
  }
});

test("a new message from a peer counts as unread unless its conversation is open and visible", () => {
  let state = greeted();
  state = reduce(state, { type: "message", message: msg("m1", 2, 1, "one") });
  assert.equal(findPeer(state, 2).unread, 1);
  // The same message again (history and live overlap) is not counted twice.
  state = reduce(state, { type: "message", message: msg("m1", 2, 1, "one") });
  assert.equal(findPeer(state, 2).unread, 1);

  state = reduce(state, { type: "peer-selected", peer: 2 });
  state = reduce(state, { type: "marked-read", peer: 2 });
  assert.equal(findPeer(state, 2).unread, 0);
  const incoming = msg("m2", 2, 1, "two");
  assert.equal(readsOnArrival(state, incoming), true);
  state = reduce(state, { type: "message", message: incoming });
  assert.equal(findPeer(state, 2).unread, 0);

  state = reduce(state, { type: "visibility-changed", visible: false });
  assert.equal(readsOnArrival(state, msg("m3", 2, 1, "three")), false);
  state = reduce(state, { type: "message", message: msg("m3", 2, 1, "three") });
  assert.equal(findPeer(state, 2).unread, 1);

  // My own messages are never unread; nor do they need a read mark.
  assert.equal(readsOnArrival(state, msg("m4", 1, 3, "mine")), false);
  state = reduce(state, { type: "message", message: msg("m4", 1, 3, "mine") });
  assert.equal(findPeer(state, 3).unread, 0);
});

test("a send is pending until the sent answer stores it; my message event may come first", () => {
  let state = run(greeted(), { type: "peer-selected", peer: 2 },
    { type: "send-started", clientId: "c1", peer: 2, text: "hi", time: 101 },
    { type: "send-started", clientId: "c2", peer: 2, text: "hi", time: 102 });
  assert.deepEqual([...state.pending.keys()], ["c1", "c2"]);
  assert.equal(state.pending.get("c1").status, "sending");

  // Another tab's socket announced it first: the first matching pending copy goes.
  state = reduce(state, { type: "message", message: msg("m1", 1, 2, "hi", { status: "sent" }) });
  assert.deepEqual([...state.pending.keys()], ["c2"]);
  state = reduce(state, { type: "sent", client_id: "c1", message: msg("m1", 1, 2, "hi", { status: "sent" }) });
  state = reduce(state, { type: "sent", client_id: "c2", message: msg("m2", 1, 2, "hi", { status: "sending" }) });
  assert.equal(state.pending.size, 0);
  assert.deepEqual([...conversationOf(state, 2).keys()], ["m1", "m2"]);
  assert.equal(findPeer(state, 2).unread, 0);
});

test("status events update known messages only", () => {
  let state = run(greeted(), { type: "message", message: msg("m1", 1, 2, "hi", { status: "sending" }) });
  const before = conversationOf(state, 2).get("m1");
  state = reduce(state, { type: "status", id: "m1", status: "failed", error: "peer unreachable" });
  const after = conversationOf(state, 2).get("m1");
  assert.notEqual(after, before);
  assert.deepEqual([after.status, after.error], ["failed", "peer unreachable"]);
  state = reduce(state, { type: "status", id: "m1", status: "delivered" });
  assert.equal(conversationOf(state, 2).get("m1").error, null);
  assert.equal(reduce(state, { type: "status", id: "elsewhere", status: "sent" }), state);
});

test("an error answer fails its pending send; any other error goes to the banner", () => {
  let state = run(greeted(), { type: "send-started", clientId: "c1", peer: 2, text: "hi", time: 1 });
  state = reduce(state, { type: "error", client_id: "c1", status: 503, error: "not registered yet" });
  assert.deepEqual([state.pending.get("c1").status, state.pending.get("c1").error], ["failed", "not registered yet"]);
  assert.equal(state.error, null);
  state = reduce(state, { type: "error", client_id: "r9", status: 409, error: "not failed" });
  assert.equal(state.error, "not failed");
  state = reduce(state, { type: "error-dismissed" });
  assert.equal(state.error, null);
  state = reduce(state, { type: "send-withdrawn", clientId: "c1" });
  assert.equal(state.pending.size, 0);
});

test("a history snapshot does not undo what the websocket said after the request started", () => {
  let state = run(greeted(), { type: "peer-selected", peer: 2 },
    { type: "message", message: msg("m1", 1, 2, "early", { status: "sending" }) });
  const since = state.liveClock;
  state = reduce(state, { type: "status", id: "m1", status: "delivered" });
  const loadsBefore = state.historyLoads;
  state = reduce(state, {
    type: "history-loaded", peer: 2, since,
    messages: [msg("m0", 2, 1, "older"), msg("m1", 1, 2, "early", { status: "sent" })],
  });
  assert.equal(conversationOf(state, 2).get("m1").status, "delivered");
  assert.equal(conversationOf(state, 2).get("m0").text, "older");
  assert.equal(state.historyLoads, loadsBefore + 1);
  // A status for a message that only history brought is applied.
  state = reduce(state, { type: "status", id: "m0", status: "failed", error: "x" });
  assert.equal(conversationOf(state, 2).get("m0").status, "failed");
  // Another peer's history does not move the open conversation.
  state = reduce(state, { type: "history-loaded", peer: 3, since: state.liveClock, messages: [] });
  assert.equal(state.historyLoads, loadsBefore + 1);
});

test("peer list, connection and me events", () => {
  let state = greeted();
  state = reduce(state, { type: "connection", peer: 2, connection: { state: "relayed", address: "127.0.0.1:3478" } });
  assert.equal(findPeer(state, 2).connection.state, "relayed");
  assert.equal(reduce(state, { type: "connection", peer: 99, connection: null }), state);
  state = reduce(state, { type: "peers", peers: [peer(2, "bobby")] });
  assert.deepEqual(state.peers.map((p) => p.name), ["bobby"]);
  state = reduce(state, { type: "me", me: { ...ALICE, registered: false } });
  assert.equal(state.me.registered, false);
  state = reduce(state, { type: "reloaded", me: ALICE, peers: [peer(2, "bob"), peer(4, "dan")] });
  assert.deepEqual(state.peers.map((p) => p.id), [2, 4]);
  assert.equal(reduce(state, { type: "resync" }), state); // main.js does the reloading
});

test("a closed socket fails the sends it will never answer, and says when it retries", () => {
  let state = run(greeted(),
    { type: "socket-opened" },
    { type: "send-started", clientId: "c1", peer: 2, text: "a", time: 1 },
    { type: "send-started", clientId: "c2", peer: 2, text: "b", time: 2 });
  assert.equal(state.link.connected, true);
  state = reduce(state, { type: "signed-out" });
  assert.equal(state.link.signedOut, false); // only meaningful while disconnected
  state = reduce(state, { type: "socket-closed", retryInSeconds: 2, unanswered: ["c1", "r5"] });
  assert.deepEqual([state.pending.get("c1").status, state.pending.get("c1").error], ["failed", "connection to webpeer lost"]);
  assert.equal(state.pending.get("c2").status, "sending"); // went over HTTP: its answer still comes
  assert.deepEqual(state.link, { connected: false, retryInSeconds: 2, signedOut: false });
  state = reduce(state, { type: "signed-out" });
  assert.equal(state.link.signedOut, true);
  state = reduce(state, { type: "socket-opened" });
  assert.deepEqual(state.link, { connected: true, retryInSeconds: 0, signedOut: false });
});

test("hello again (a reconnect) redraws the open conversation", () => {
  let state = run(greeted(), { type: "peer-selected", peer: 2 });
  const loads = state.historyLoads;
  state = reduce(state, { type: "hello", me: ALICE, peers: [] });
  assert.equal(state.historyLoads, loads + 1);
  assert.equal(state.selected, 2);
});

test("a trust event updates the peer; a changed or blocked key shows the safety view and shuts the composer", async () => {
  const { composerBlock, showsSafety } = await import("../../static/state.js");
  let state = run(greeted(), { type: "peer-selected", peer: 2 });
  assert.equal(showsSafety(state), false);
  assert.equal(composerBlock(state), null);
  const before = snapshot(state);
  const changed = reduce(state, { type: "trust", peer: 2, trust: "changed", verified: false, verified_key_changed: true });
  assert.equal(snapshot(state), before);
  const bob = findPeer(changed, 2);
  assert.deepEqual([bob.trust, bob.key_changed, bob.verified, bob.verified_key_changed], ["changed", true, false, true]);
  assert.equal(findPeer(changed, 3), findPeer(state, 3)); // untouched peers are shared
  assert.equal(showsSafety(changed), true);
  assert.match(composerBlock(changed), /held/);
  state = reduce(changed, { type: "trust", peer: 2, trust: "blocked", verified: false, verified_key_changed: false });
  assert.match(composerBlock(state), /blocked/);
  state = reduce(state, { type: "trust", peer: 2, trust: "trusted", verified: true, verified_key_changed: false });
  assert.equal(showsSafety(state), false);
  assert.equal(composerBlock(state), null);
  assert.equal(findPeer(state, 2).verified, true);
  // Opened by hand for a trusted peer, closed again; another peer closes it.
  state = reduce(state, { type: "safety-toggled", open: true });
  assert.equal(showsSafety(state), true);
  state = reduce(state, { type: "peer-selected", peer: 3 });
  assert.equal(showsSafety(state), false);
});

test("a safety answer is kept for the open peer only", () => {
  let state = run(greeted(), { type: "peer-selected", peer: 2 });
  const safety = { peer: 2, safety_number: "12345", their_fingerprint: "F" };
  state = reduce(state, { type: "safety-loaded", safety });
  assert.equal(state.safety, safety);
  assert.equal(reduce(state, { type: "safety-loaded", safety: { ...safety, peer: 3 } }), state);
  state = reduce(state, { type: "peer-selected", peer: 3 });
  assert.equal(state.safety, null);
});

test("a cancelled answer stores the message as failed, cancelled; the page drops nothing else", () => {
  let state = run(greeted(), { type: "message", message: msg("m1", 1, 2, "oops", { status: "queued" }) });
  const before = snapshot(state);
  const next = reduce(state, { type: "cancelled", client_id: "x1", message: msg("m1", 1, 2, "oops", { status: "failed", error: "cancelled" }) });
  assert.equal(snapshot(state), before);
  assert.deepEqual([conversationOf(next, 2).get("m1").status, conversationOf(next, 2).get("m1").error], ["failed", "cancelled"]);
  assert.equal(next.error, null);
});

test("older pages go in front in the server's order, and the start is reached once a page is short", async () => {
  const { oldestLoaded, reachedStart } = await import("../../static/state.js");
  let state = run(greeted({ selected: 2 }), {
    type: "history-loaded", peer: 2, since: 0, complete: false,
    messages: [msg("m3", 2, 1, "c", { time: 20 }), msg("m4", 1, 2, "d", { time: 30 })],
  });
  assert.equal(oldestLoaded(state, 2), "m3");
  assert.equal(reachedStart(state, 2), false);
  const loads = state.historyLoads;
  const before = snapshot(state);
  const next = reduce(state, {
    type: "older-loaded", peer: 2, complete: true,
    messages: [msg("m1", 2, 1, "a", { time: 20 }), msg("m2", 2, 1, "b", { time: 20 }), msg("m3", 2, 1, "dup", { time: 20 })],
  });
  assert.equal(snapshot(state), before); // nothing changed in place
  assert.deepEqual([...conversationOf(next, 2).keys()], ["m1", "m2", "m3", "m4"]);
  assert.equal(conversationOf(next, 2).get("m3").text, "c"); // what was loaded stays
  assert.equal(oldestLoaded(next, 2), "m1"); // equal times: the server's first
  assert.equal(reachedStart(next, 2), true);
  assert.equal(next.historyLoads, loads); // no jump to the end
  assert.equal(next.messagePeer.get("m1"), 2);
  assert.equal(oldestLoaded(next, 3), null);
});

test("opening a conversation with unread messages puts the divider above the first of them, once", () => {
  let state = run(
    greeted(),
    { type: "history-loaded", peer: 2, since: 0, messages: [msg("a", 2, 1, "old", { time: 1 }), msg("b", 1, 2, "mine", { time: 2 })] },
    { type: "message", message: msg("u1", 2, 1, "new 1", { time: 3 }) },
    { type: "message", message: msg("u2", 2, 1, "new 2", { time: 4 }) },
  );
  assert.equal(findPeer(state, 2).unread, 2);
  state = reduce(state, { type: "peer-selected", peer: 2 });
  assert.deepEqual(state.unreadDivider, { peer: 2, count: 2, before: "u1" });
  state = run(state, { type: "marked-read", peer: 2 }, { type: "message", message: msg("u3", 2, 1, "new 3", { time: 5 }) });
  assert.equal(state.unreadDivider.before, "u1"); // stays where it was
  state = run(state, { type: "peer-selected", peer: 3 });
  assert.equal(state.unreadDivider, null);
  // Unread messages not loaded yet: placed when the history comes.
  state = run(state, { type: "message", message: msg("c1", 3, 1, "hi", { time: 6 }) });
  state = { ...state, peers: state.peers.map((p) => (p.id === 2 ? { ...p, unread: 5 } : p)) };
  state = reduce(state, { type: "peer-selected", peer: 2 });
  assert.deepEqual(state.unreadDivider, { peer: 2, count: 5, before: null });
  const history = ["h1", "h2", "h3", "h4", "h5", "h6"].map((id, i) => msg(id, 2, 1, id, { time: 10 + i }));
  state = reduce(state, { type: "history-loaded", peer: 2, since: state.liveClock, messages: history });
  assert.equal(state.unreadDivider.before, "h2");
});

test("read-up-to marks our messages up to its time as read, and never moves back", () => {
  let state = run(
    greeted(),
    { type: "history-loaded", peer: 2, since: 0, messages: [
      msg("a", 1, 2, "one", { status: "delivered", time: 100 }),
      msg("b", 1, 2, "two", { status: "delivered", time: 200 }),
      msg("c", 2, 1, "theirs", { time: 150 }),
    ] },
    { type: "read-up-to", peer: 2, id: "a", time: 100 },
  );
  const conv = conversationOf(state, 2);
  assert.equal(readByPeer(state, conv.get("a")), true);
  assert.equal(readByPeer(state, conv.get("b")), false);
  assert.equal(readByPeer(state, conv.get("c")), false); // theirs: not ours to be read
  state = reduce(state, { type: "read-up-to", peer: 2, id: "b", time: 200 });
  assert.equal(readByPeer(state, conversationOf(state, 2).get("b")), true);
  const back = reduce(state, { type: "read-up-to", peer: 2, id: "a", time: 100 });
  assert.equal(back, state);
  assert.equal(reduce(state, { type: "read-up-to", peer: 99, id: "x", time: 1 }), state);
  // A failed or queued message is never shown read.
  const failed = { ...conversationOf(state, 2).get("a"), status: "failed" };
  assert.equal(readByPeer(state, failed), false);
});

test("a message stored on the server is read once the receipt covers it, even before its ack", () => {
  const state = run(
    greeted(),
    { type: "history-loaded", peer: 2, since: 0, messages: [
      msg("s", 1, 2, "left in the mailbox", { status: "stored", time: 100 }),
      msg("q", 1, 2, "still queued", { status: "queued", time: 110 }),
    ] },
    { type: "read-up-to", peer: 2, id: "q", time: 110 },
  );
  assert.equal(readByPeer(state, conversationOf(state, 2).get("s")), true);
  assert.equal(readByPeer(state, conversationOf(state, 2).get("q")), false); // never left us: not read
});

test("the filter matches nickname, name and #id, every word", () => {
  let state = run(initialState(), { type: "hello", me: ALICE, peers: [
    peer(2, "bob", { nickname: "Bobby Tables" }), peer(3, "carol"), peer(23, "dave"),
  ] });
  const ids = () => filteredPeers(state).map((p) => p.id);
  assert.deepEqual(ids(), [2, 3, 23]);
  state = reduce(state, { type: "filter-changed", filter: "tables" });
  assert.deepEqual(ids(), [2]);
  state = reduce(state, { type: "filter-changed", filter: "#2" });
  assert.deepEqual(ids(), [2, 23]);
  state = reduce(state, { type: "filter-changed", filter: "bob  car" });
  assert.deepEqual(ids(), []);
  state = reduce(state, { type: "filter-changed", filter: "  " });
  assert.deepEqual(ids(), [2, 3, 23]);
  assert.equal(displayName(findPeer(state, 2)), "Bobby Tables");
  assert.equal(displayName(findPeer(state, 3)), "carol");
});

test("a message-burst leaves the state as its messages one by one would", () => {
  const start = run(
    greeted(),
    { type: "peer-selected", peer: 2 },
    { type: "peers", peers: [ALICE, peer(2, "bob", { unread: 2 }), peer(3, "carol", { unread: 1 })] },
  );
  const events = [];
  for (let n = 0; n < 50; n += 1) {
    const from = n % 3 === 0 ? 3 : 2;
    events.push({ type: "message", message: msg(`b${n}`, from, 1, `text ${n}`, { time: 200 + n }) });
  }
  events.push({ type: "message", message: msg("b7", 2, 1, "text 7", { time: 207 }) }); // a repeat
  const oneByOne = events.reduce(reduce, start);
  const burst = reduce(start, { type: "message-burst", events });
  const picture = (state) => snapshot({ ...state, liveAt: [...state.liveAt.keys()].sort() });
  assert.equal(picture(burst), picture(oneByOne));
  assert.equal(findPeer(burst, 2).unread, 0); // open and visible: read as they came
  assert.equal(findPeer(burst, 3).unread, 1 + 17);
  assert.equal(findPeer(burst, 3).last_message.id, "b48");
  // With one of ours in it, the one-by-one way (its pending copy is dropped).
  const withMine = [...events, { type: "message", message: msg("m1", 1, 2, "mine", { time: 300 }) }];
  const pendingStart = reduce(start, { type: "send-started", clientId: "c1", peer: 2, text: "mine", time: 300 });
  const mixed = reduce(pendingStart, { type: "message-burst", events: withMine });
  assert.equal(mixed.pending.size, 0);
  assert.equal(picture(mixed), picture(withMine.reduce(reduce, pendingStart)));
});

test("a jump to a search result names the peer and message, and each jump is new", () => {
  const start = reduce(initialState(), { type: "hello", me: { id: 1 }, peers: [peer(2)] });
  const first = reduce(start, { type: "jumped", peer: 2, id: "m5" });
  assert.deepEqual(first.jump, { peer: 2, id: "m5", count: 1 });
  const again = reduce(first, { type: "jumped", peer: 2, id: "m5" });
  assert.notEqual(again.jump, first.jump); // the same message again is shown again
  assert.equal(again.jump.count, 2);
  assert.equal(start.jump, null);
});
