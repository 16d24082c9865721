// The groups' reducer cases (static/group_state.js, through state.js's reduce): `node --test`.
// Run by tests/js/test_reducer.py.

import assert from "node:assert/strict";
import { test } from "node:test";

import { initialState, reduce } from "../../static/state.js";
import { groupActivity, groupMessagesOf, groupUnreadTotal, recipientsOf } from "../../static/group_state.js";
import { changeText } from "../../static/views/group_text.js";

const G = "a".repeat(64);
const ALICE = { id: 1, name: "alice" };
const group = (extra = {}) => ({ id: G, name: "lunch", members: [1, 2, 3], admins: [1], member: true, created_by: 1, created: 50, ...extra });
const gmsg = (from, seq, text, extra = {}) => ({ id: `${from}:${seq}`, group: G, from, seq, text, time: 100 + seq, delivered_to: [], ...extra });

function run(state, ...events) {
  return events.reduce(reduce, state);
}

function greeted(options) {
  return run(initialState(options), { type: "hello", me: ALICE, peers: [ALICE, { id: 2, name: "bob" }, { id: 3, name: "carol" }] });
}

function snapshot(value) {
  return JSON.stringify(value, (_, v) => (v instanceof Map ? [...v] : v));
}

test("a group event adds the group once and its change as one line", () => {
  const change = { kind: "create", by: 1, members: [2, 3], target: null, name: "lunch", time: 50, applied: true };
  const before = greeted();
  const frozen = snapshot(before);
  const state = run(before, { type: "group", group: group(), change }, { type: "group", group: group(), change });
  assert.equal(snapshot(before), frozen, "the old state was not changed in place");
  assert.deepEqual(state.groups.map((g) => g.id), [G]);
  assert.equal(state.groupLines.get(G).length, 1);
  const renamed = run(state, { type: "group", group: group({ name: "dinner" }), change: null });
  assert.deepEqual(renamed.groups.map((g) => g.name), ["dinner"]);
  assert.equal(renamed.groupLines.get(G).length, 1);
});

test("others' messages count as unread until the group is opened; ours and repeats never", () => {
  let state = run(greeted(), { type: "groups-loaded", groups: [group()] });
  state = run(state, { type: "group-message", message: gmsg(2, 1, "hi") }, { type: "group-message", message: gmsg(2, 1, "hi") });
  state = run(state, { type: "group-message", message: gmsg(1, 1, "mine") });
  assert.equal(state.groupUnread.get(G), 1);
  assert.equal(groupUnreadTotal(state), 1);
  assert.equal(groupMessagesOf(state, G).size, 2);
  state = run(state, { type: "group-selected", group: G });
  assert.equal(state.groupUnread.get(G), 0);
  state = run(state, { type: "group-message", message: gmsg(3, 1, "read at once") });
  assert.equal(state.groupUnread.get(G), 0);
  // Hidden tab: not being read.
  state = run(state, { type: "visibility-changed", visible: false }, { type: "group-message", message: gmsg(3, 2, "later") });
  assert.equal(groupUnreadTotal(state), 1);
});

test("a history answer counts the others' messages after the read mark", () => {
  const state = run(greeted(), { type: "groups-loaded", groups: [group()] }, {
    type: "group-history-loaded",
    group: G,
    readMark: 102,
    messages: [gmsg(2, 1, "old"), gmsg(2, 2, "at the mark"), gmsg(2, 3, "new"), gmsg(1, 4, "mine, newer")],
  });
  assert.equal(state.groupUnread.get(G), 1);
  assert.equal(groupActivity(state, state.groups[0]), 104);
});

test("a frame's run of group messages is stored in one step, counting each new one once", () => {
  let state = run(greeted(), { type: "groups-loaded", groups: [group()] }, { type: "group-message", message: gmsg(2, 1, "known") });
  const before = state.groupUnread.get(G);
  state = run(state, { type: "group-messages", messages: [gmsg(2, 1, "known"), gmsg(3, 1, "new"), gmsg(3, 1, "new"), gmsg(1, 1, "mine")] });
  assert.equal(state.groupUnread.get(G) - before, 1);
  assert.deepEqual([...groupMessagesOf(state, G).keys()], ["2:1", "3:1", "1:1"]);
});

test("changes from history and from the websocket are one line each, the later copy winning", () => {
  const change = (kind, time, applied = true) => ({ kind, by: 1, members: [], target: 3, name: null, time, applied });
  let state = run(greeted(), { type: "group", group: group(), change: change("remove", 60) });
  state = run(state, {
    type: "group-history-loaded", group: G, readMark: 0, messages: [], changes: [change("create", 50), change("remove", 60, false)],
  });
  const lines = state.groupLines.get(G);
  assert.deepEqual(lines.map((line) => [line.kind, line.applied]).sort(), [["create", true], ["remove", false]]);
});

test("a delivery report reaches every earlier message of ours, and never shrinks", () => {
  let state = run(greeted(), { type: "groups-loaded", groups: [group()] });
  state = run(state, ...[1, 2, 3].map((seq) => ({ type: "group-message", message: gmsg(1, seq, `m${seq}`) })));
  state = run(state, { type: "group-message", message: gmsg(2, 1, "theirs") });
  state = run(state, { type: "group_delivery", group: G, id: "1:2", delivered_to: [2] });
  state = run(state, { type: "group_delivery", group: G, id: "1:3", delivered_to: [3] });
  const messages = groupMessagesOf(state, G);
  // carol (3) has everything of ours up to 1:3, bob (2) up to 1:2.
  assert.deepEqual(messages.get("1:1").delivered_to, [2, 3]);
  assert.deepEqual(messages.get("1:2").delivered_to, [2, 3]);
  assert.deepEqual(messages.get("1:3").delivered_to, [3]);
  assert.deepEqual(messages.get("2:1").delivered_to, []);
  // An older snapshot from history does not take a delivery back.
  state = run(state, { type: "group-history-loaded", group: G, readMark: 0, messages: [gmsg(1, 1, "m1")] });
  assert.deepEqual(groupMessagesOf(state, G).get("1:1").delivered_to, [2, 3]);
  assert.deepEqual(recipientsOf(state, state.groups[0], groupMessagesOf(state, G).get("1:1")), [2, 3]);
});

test("opening a peer closes the group and the other way round", () => {
  let state = run(greeted(), { type: "groups-loaded", groups: [group()] }, { type: "peer-selected", peer: 2 });
  state = run(state, { type: "group-selected", group: G });
  assert.equal(state.selected, null);
  assert.equal(state.selectedGroup, G);
  state = run(state, { type: "peer-selected", peer: 3 });
  assert.equal(state.selected, 3);
  assert.equal(state.selectedGroup, null);
  state = run(state, { type: "group-selected", group: G }, { type: "conversation-closed" });
  assert.equal(state.selectedGroup, null);
});

test("membership changes read as sentences", () => {
  const nameOf = (id) => ({ 1: "you", 2: "bob", 3: "carol", 4: "dave" })[id];
  const line = (kind, extra) => changeText({ kind, by: 1, members: [], target: null, name: null, time: 1, applied: true, ...extra }, nameOf);
  assert.equal(line("add", { members: [2, 3, 4] }), "you added bob, carol and dave");
  assert.equal(line("remove", { by: 2, target: 3 }), "bob removed carol");
  assert.equal(line("leave", { by: 3 }), "carol left");
  assert.equal(line("create", { name: "lunch" }), "you created the group “lunch”");
  assert.match(line("remove", { target: 2, applied: false }), /did not apply/);
});

test("the group list's answer keeps a group that came live meanwhile", () => {
  const other = { ...group(), id: "b".repeat(64), name: "just made" };
  const state = run(greeted(), { type: "group", group: other, change: null }, { type: "groups-loaded", groups: [group()] });
  assert.deepEqual(state.groups.map((g) => g.name), ["lunch", "just made"]);
});

test("messages keep webpeer's delivery order, not the writers' clocks; live ones stay after a snapshot", () => {
  // carol's clock is behind: her answer to bob carries an earlier time than his question.
  const question = gmsg(2, 1, "question", { time: 200 });
  const answer = gmsg(3, 1, "answer", { time: 150 });
  const live = gmsg(2, 2, "newer, live", { time: 300 });
  let state = run(greeted(), { type: "groups-loaded", groups: [group()] }, { type: "group-message", message: live });
  state = run(state, { type: "group-history-loaded", group: G, readMark: 0, messages: [question, answer] });
  assert.deepEqual([...groupMessagesOf(state, G).keys()], ["2:1", "3:1", "2:2"]);
});
