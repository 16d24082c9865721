// The groups' part of the page's state (see state.js, which adds these
// handlers to its one reducer).  Pure, like state.js: no DOM, no clock, no
// network; a case returns new objects for what it touches and shares the rest.
//
// Events:
// - from the websocket: group (a group appeared or changed, with the change as
//   a line), group_delivery (which members have our messages up to one);
//   a group's "message" reaches the reducer as group-message, and a run of them
//   in one frame as group-messages (main.js tells the two kinds of message
//   apart, so state.js never sees a group message);
// - from the page: groups-loaded (GET /api/groups), group-history-loaded
//   (GET /api/groups/ID/messages and .../changes, with the user's read mark of
//   the group),
//   group-selected, group-closed, group-sent (POST .../messages's answer).
//
// Unread counts: webpeer keeps no read state for groups, so the page keeps a
// read mark per group (group_reads.js: the time of the latest message read)
// and counts the other members' messages after it.

export function initialGroupState() {
  return {
    groups: [], // <group> shapes (README, GET /api/groups), in the server's order
    // group id -> Map(message id -> message) in the order webpeer delivered them (causal: a
    // reply after what it answers, whatever the writers' clocks say), never re-sorted by time
    groupMessages: new Map(),
    groupLines: new Map(), // group id -> [change] (membership changes seen while the page is open)
    groupUnread: new Map(), // group id -> messages from others after the read mark
    selectedGroup: null, // the open group's id, or null (a peer's conversation and a group never both open)
  };
}

// ---------------------------------------------------------------- queries

export function findGroup(state, groupId) {
  return state.groups.find((group) => group.id === groupId);
}

export function groupMessagesOf(state, groupId) {
  return state.groupMessages.get(groupId) ?? EMPTY;
}

const EMPTY = new Map();

/** The open group is being read: its messages count as read as they come. */
export function isReadingGroup(state, groupId) {
  return groupId === state.selectedGroup && state.visible;
}

/** Unread group messages over all groups (the open one, being read, has none). */
export function groupUnreadTotal(state) {
  let total = 0;
  for (const [groupId, count] of state.groupUnread) if (!isReadingGroup(state, groupId)) total += count;
  return total;
}

/** When the group last saw activity (its latest message, else its creation): the list's order. */
export function groupActivity(state, group) {
  let latest = group.created;
  for (const msg of groupMessagesOf(state, group.id).values()) if (msg.time > latest) latest = msg.time;
  return latest;
}

/** The group's latest message, or null. */
export function lastGroupMessage(state, groupId) {
  let last = null;
  for (const msg of groupMessagesOf(state, groupId).values()) if (last === null || msg.time >= last.time) last = msg;
  return last;
}

/** The newest message time of the group (what a read mark is set to), or 0. */
export function newestGroupTime(state, groupId) {
  return lastGroupMessage(state, groupId)?.time ?? 0;
}

/** The members our message went to (everyone but us, and any that has it and left since). */
export function recipientsOf(state, group, message) {
  const me = state.me ? state.me.id : null;
  const members = new Set((group ? group.members : []).filter((id) => id !== me));
  for (const id of message.delivered_to ?? []) members.add(id);
  return [...members].sort((a, b) => a - b);
}

/** Whether `peerId` may add and remove members of the group. */
export function isGroupAdmin(group, peerId) {
  return Boolean(group) && group.admins.includes(peerId);
}

/** The groups the filter box lets through: its words in the group's name. */
export function filteredGroups(state) {
  const words = state.filter.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return state.groups;
  return state.groups.filter((group) => words.every((word) => `${group.name} group`.toLowerCase().includes(word)));
}

// ---------------------------------------------------------------- handlers

function withGroup(state, group) {
  const known = state.groups.some((g) => g.id === group.id);
  const groups = known ? state.groups.map((g) => (g.id === group.id ? group : g)) : [...state.groups, group];
  return { ...state, groups };
}

function withUnread(state, groupId, count) {
  if ((state.groupUnread.get(groupId) ?? 0) === count) return state;
  return { ...state, groupUnread: new Map(state.groupUnread).set(groupId, count) };
}

// GET /api/groups's answer.  A group that came live meanwhile (one just made
// here) and is not in it yet stays.
function groupsLoaded(state, event) {
  const listed = new Set(event.groups.map((group) => group.id));
  return { ...state, groups: [...event.groups, ...state.groups.filter((group) => !listed.has(group.id))] };
}

// A group appeared or changed; its change (if any) becomes a line of its conversation.
function groupChanged(state, event) {
  const next = withGroup(state, event.group);
  return event.change ? withLines(next, event.group.id, [event.change]) : next;
}

// Changes as lines, each once (the same change from the websocket and from
// GET .../changes is one line; the later copy wins: "applied" may have changed).
function withLines(state, groupId, changes) {
  const lines = new Map((state.groupLines.get(groupId) ?? []).map((line) => [line.id, line]));
  for (const change of changes) {
    const id = `${change.kind}:${change.by}:${change.time}`;
    lines.set(id, { ...change, id });
  }
  return { ...state, groupLines: new Map(state.groupLines).set(groupId, [...lines.values()]) };
}

// Stores messages (new ones and newer copies of known ones) in one copy of the group's map.
// `snapshot`: the messages are a history answer, in delivery order: they go first, in
// that order, and what only the websocket brought (newer) after them.
function withMessages(state, groupId, messages, snapshot = false) {
  const before = groupMessagesOf(state, groupId);
  const conversation = snapshot ? new Map() : new Map(before);
  if (snapshot) {
    const listed = new Set(messages.map((msg) => msg.id));
    for (const msg of messages) conversation.set(msg.id, before.get(msg.id) ?? msg);
    for (const [id, msg] of before) if (!listed.has(id)) conversation.set(id, msg);
  }
  for (const msg of messages) {
    const known = conversation.get(msg.id);
    // delivered_to only grows (a history answer may be older than a delivery event).
    const delivered = known ? union(known.delivered_to, msg.delivered_to) : msg.delivered_to ?? [];
    conversation.set(msg.id, { ...msg, delivered_to: delivered });
  }
  return { ...state, groupMessages: new Map(state.groupMessages).set(groupId, conversation) };
}

function union(a = [], b = []) {
  const all = new Set([...a, ...b]);
  return all.size === a.length ? a : [...all].sort((x, y) => x - y);
}

function groupMessage(state, event) {
  return groupMessages(state, { messages: [event.message] });
}

// A run of group messages from one websocket frame: one copy of each group's map.
function groupMessages(state, event) {
  const byGroup = new Map();
  for (const msg of event.messages) byGroup.set(msg.group, [...(byGroup.get(msg.group) ?? []), msg]);
  let next = state;
  for (const [groupId, messages] of byGroup) {
    const known = groupMessagesOf(state, groupId);
    const fresh = new Set(messages.filter((msg) => !known.has(msg.id) && !isMineIn(state, msg)).map((msg) => msg.id));
    next = withMessages(next, groupId, messages);
    if (fresh.size > 0 && !isReadingGroup(state, groupId)) {
      next = withUnread(next, groupId, (state.groupUnread.get(groupId) ?? 0) + fresh.size);
    }
  }
  return next;
}

function isMineIn(state, msg) {
  return state.me !== null && msg.from === state.me.id;
}

// GET /api/groups/ID/messages, with `readMark` (the time of the latest message the user read).
function groupHistoryLoaded(state, event) {
  const next = withLines(withMessages(state, event.group, event.messages, true), event.group, event.changes ?? []);
  if (isReadingGroup(state, event.group)) return withUnread(next, event.group, 0);
  const me = state.me ? state.me.id : null;
  let unread = 0;
  for (const msg of groupMessagesOf(next, event.group).values()) {
    if (msg.from !== me && msg.time > event.readMark) unread += 1;
  }
  return withUnread(next, event.group, unread);
}

// Members that have our messages up to event.id ("<me>:<seq>") have every earlier one too.
function groupDelivery(state, event) {
  const conversation = groupMessagesOf(state, event.group);
  const [sender, seq] = event.id.split(":").map(Number);
  const changedMessages = [];
  for (const msg of conversation.values()) {
    if (msg.from !== sender || msg.seq > seq) continue;
    const delivered = union(msg.delivered_to, event.delivered_to);
    if (delivered !== msg.delivered_to) changedMessages.push({ ...msg, delivered_to: delivered });
  }
  return changedMessages.length === 0 ? state : withMessages(state, event.group, changedMessages);
}

function groupSelected(state, event) {
  if (event.group === state.selectedGroup && state.selected === null) return state;
  const next = {
    ...state, selectedGroup: event.group, selected: null, safety: null, safetyOpen: false, search: null, unreadDivider: null,
  };
  return withUnread(next, event.group, 0);
}

function groupClosed(state) {
  return state.selectedGroup === null ? state : { ...state, selectedGroup: null };
}

// The page came back into view with a group open: what it shows is read.
function groupVisible(state, event) {
  if (!event.visible || state.selectedGroup === null) return state;
  return withUnread(state, state.selectedGroup, 0);
}

export const GROUP_HANDLERS = [
  ["groups-loaded", groupsLoaded],
  ["group", groupChanged],
  ["group-message", groupMessage],
  ["group-messages", groupMessages],
  ["group-sent", (state, event) => withMessages(state, event.message.group, [event.message])],
  ["group-history-loaded", groupHistoryLoaded],
  ["group_delivery", groupDelivery],
  ["group-selected", groupSelected],
  ["group-closed", groupClosed],
];

/** Runs after state.js's own handler for the events both care about. */
export function afterPageEvent(state, event) {
  if (event.type === "peer-selected" && state.selectedGroup !== null) return { ...state, selectedGroup: null };
  if (event.type === "conversation-closed") return groupClosed(state);
  if (event.type === "visibility-changed") return groupVisible(state, event);
  return state;
}
