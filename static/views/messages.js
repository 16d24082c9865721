// The open conversation's messages: stored ones in time order, then the ones
// still being sent (pending); for mine a status (queued and sending with a
// Cancel button, sent, delivered, held while the peer's key change waits,
// failed with a Retry button).  A "key changed" line goes before each run of
// messages received from a new key before the user accepted it.
//
// The reducer makes a new object for every message that changes, so an element
// is reused while its message is the same object and made again otherwise:
// a status event redraws one element, not the list.
//
// History comes in pages: near the top the list asks for the page before its
// oldest message (actions.loadOlder), keeps what the reader looks at in place
// when it arrives, and says "start of the conversation" once the first
// message is loaded.
//
// A conversation opened with unread messages shows a "N new messages" line
// above the first of them and starts there; a message from the other side
// that arrives while the reader is scrolled up shows a "New messages" button
// instead of moving the list.
//
// A line names the day before each day's first message; each time's tooltip
// is the full date.  http(s) addresses in texts are links (links.js).
//
// A search result the user went to (state.jump) is scrolled to the middle of
// the list and highlighted, once its element is made.
//
// A message that follows one from the same side within GROUP_SECONDS is
// "grouped" (drawn close under it).  Each message starts with who wrote it
// for screen readers ("You:" / the peer's name), hidden on screen.

import { byTestId, changed, make } from "./dom.js";
import { conversationOf, displayName, findPeer, isMine, reachedStart, readByPeer } from "../state.js";
import { appendWithLinks } from "./links.js";

const STATUS_LABELS = {
  queued: "queued",
  sending: "sending…",
  sent: "sent ✓",
  stored: "stored on server",
  delivered: "delivered ✓✓",
  read: "read ✓✓",
  failed: "failed",
  held: "held",
  received: "",
};
const NEAR_BOTTOM_PX = 80;
const GROUP_SECONDS = 300;
const LOAD_OLDER_PX = 300; // this close to the top, the page before is fetched
// New elements per pass: making and laying out 1,000 at once was a task of
// 0.5-1 s.  A pass costs what it adds (the elements it makes, inserted where
// they go, nothing else moved), so a burst of 1,000 takes five short tasks
// (bench/PAGE.md; the page aims at 500 ms and no task over 200 ms).
const BUILD_PER_PASS = 200;

/** @param {{retry: (messageId: string) => void, resend: (clientId: string) => void, cancel: (messageId: string) => void, loadOlder: () => void}} actions */
export function createMessagesView(actions, root = document) {
  const list = byTestId("message-list", root);
  const newButton = newMessagesButton(list, byTestId("new-messages", root));
  const memo = {};
  // key -> {item, mine, grouped, node}: every element the list holds, in the
  // list's order once a plan is applied; an outdated one stays until remade.
  const shown = new Map();
  // What the state asks the list to be, worked out once per change of the
  // state (not once per pass): the items in order, and the indexes of those
  // still without an up-to-date element, nearest to what it holds first.
  let plan = null;
  let shownPeer = null;
  let shownLoads = -1;
  // A pass that left elements unbuilt (more than BUILD_PER_PASS were new):
  // {reopened, follow} of that pass, carried to the next one, which the view
  // asks for itself (the state may not change again).
  let building = null;
  let lastState = null;
  let passToken = 0; // the scheduled next pass; an older schedule does nothing
  let jumpedTo = null; // the state.jump last shown
  list.addEventListener("scroll", () => {
    if (list.scrollTop < LOAD_OLDER_PX && shownPeer !== null) actions.loadOlder();
  }, { passive: true });

  // The next pass in a later task: the next animation frame, or a timer when
  // the tab is hidden (no frames) or frames are late (whichever comes first).
  function scheduleNextPass() {
    const token = ++passToken;
    const run = () => {
      if (token === passToken) pass(lastState);
    };
    const visible = document.visibilityState === "visible";
    if (visible) requestAnimationFrame(run);
    setTimeout(run, visible ? 100 : 0);
  }

  // While a build goes on, a new state waits for its next pass (one pass a
  // frame: a state that came in the same frame as a scheduled pass would
  // otherwise make a second one in that frame's task).
  function render(state) {
    lastState = state;
    if (building === null) pass(state);
  }

  function pass(state) {
    passToken += 1; // this pass is the one a schedule asked for
    const peer = state.selected;
    const conversation = peer === null ? null : conversationOf(state, peer);
    const start = peer !== null && reachedStart(state, peer);
    const divider = state.unreadDivider && state.unreadDivider.peer === peer ? state.unreadDivider : null;
    const readMark = peer === null ? null : findPeer(state, peer)?.read_up_to;
    const jump = state.jump !== null && state.jump.peer === peer && state.jump !== jumpedTo ? state.jump : null;
    const inputsChanged = changed(memo, [peer, conversation, state.pending, state.me, state.historyLoads, start, divider, readMark, jump]);
    const continuing = building;
    if (!inputsChanged && continuing === null) return;
    building = null;

    // Scroll metrics are read here, before any write: the last frame left
    // the layout clean, so this forces nothing.
    const wasNearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX;
    const anchor = wasNearBottom ? null : scrollAnchor(list);
    if (inputsChanged) {
      const items = peer === null ? [] : withGroups(withDivider(withStartLine(withDays(itemsOf(state, peer, conversation)), start), divider));
      plan = planFor(items, shown);
      applyPlan(list, shown, plan);
    }

    const theirName = peer === null ? "" : displayName(findPeer(state, peer)) || `peer ${peer}`;
    const batch = nextBatch(plan);
    let added = 0;
    let theirsAdded = 0;
    let mineChanged = false;
    let run = null; // {fragment, last}: new elements for consecutive items, inserted at once
    const insertRun = () => {
      if (run !== null) list.insertBefore(run.fragment, nextShownNode(plan.items, run.last + 1, shown));
      run = null;
    };
    for (const index of batch) {
      const { key, item, mine, pending, grouped } = plan.items[index];
      if (index > plan.newAfter) {
        if (mine) {
          added += 1;
          mineChanged = true;
        } else if (key.startsWith("m:")) {
          added += 1;
          theirsAdded += 1;
        }
      }
      const node = messageElement(item, mine, pending, actions, { grouped, sender: mine ? "You" : theirName });
      const old = shown.get(key);
      shown.set(key, { item, mine, grouped, node });
      if (old) {
        old.node.replaceWith(node);
        continue;
      }
      if (run !== null && run.last === index - 1) run.last = index;
      else {
        insertRun();
        run = { fragment: document.createDocumentFragment(), last: index };
      }
      run.fragment.append(node);
    }
    insertRun();

    // A newly opened or reloaded conversation starts at its end; otherwise
    // follow new messages only if the reader was at the end or wrote them.
    // Later passes of one build carry on what its first pass did, unless the
    // reader scrolled away from the end meanwhile.  The one layout a pass
    // forces is here, after all its writes (the frame then has none to do).
    const reopened = peer !== shownPeer || state.historyLoads !== shownLoads || Boolean(continuing?.reopened);
    shownPeer = peer;
    shownLoads = state.historyLoads;
    const follow = reopened || mineChanged || (wasNearBottom && (added > 0 || Boolean(continuing?.follow)));
    if (follow) list.scrollTop = list.scrollHeight;
    else keepInPlace(list, anchor);
    if (reopened) startAtDivider(list, shown.get("unread"));
    if (reopened || follow) newButton.hide();
    else if (theirsAdded > 0) newButton.show();
    if (jump !== null && shown.has(`m:${jump.id}`)) {
      jumpedTo = jump;
      showFound(list, shown.get(`m:${jump.id}`).node);
    }
    if (plan.built < plan.toBuild.length) {
      building = { reopened, follow };
      scheduleNextPass();
    }
  }

  return { render };
}

// The items (in order, with what indexes them) and which of them need an
// element: those with none, and those whose element shows an older copy.
// They are made outward from what the list holds, nearest first: what comes
// after its first element oldest first (a burst of new messages is appended
// slice by slice, moving nothing already there), what comes before it newest
// first (an older page grows upward from the reader's view; a conversation
// just opened shows its end first).
// `newAfter`: the index of the last message whose element stays as it is;
// what is made after it is new to the reader (followed, or announced by the
// "New messages" button), what is made before it is an older page or an
// update in place.
function planFor(items, shown) {
  const indexByKey = new Map();
  const after = [];
  const before = [];
  let firstHeld = -1;
  let newAfter = -1;
  items.forEach((entry, index) => {
    indexByKey.set(entry.key, index);
    const old = shown.get(entry.key);
    if (old && firstHeld < 0) firstHeld = index;
    if (!old || !isDrawn(old, entry.item, entry.mine, entry.grouped)) (firstHeld < 0 ? before : after).push(index);
    else if (entry.key.startsWith("m:") || entry.key.startsWith("c:")) newAfter = index;
  });
  return { items, indexByKey, toBuild: [...after, ...before.reverse()], built: 0, newAfter };
}

// The items this pass makes: up to BUILD_PER_PASS messages, with the lines
// among them (a day's line does not cost a pass of its own), in the list's
// order, so that consecutive new elements go in as one fragment.
function nextBatch(plan) {
  const batch = [];
  let messages = 0;
  while (plan.built < plan.toBuild.length) {
    const index = plan.toBuild[plan.built];
    const key = plan.items[index].key;
    const isMessage = key.startsWith("m:") || key.startsWith("c:");
    if (isMessage && messages === BUILD_PER_PASS) break;
    if (isMessage) messages += 1;
    batch.push(index);
    plan.built += 1;
  }
  return batch.sort((a, b) => a - b);
}

// Makes the list hold only the plan's items, in its order: elements of items
// gone are removed and kept ones put in order.  Usually nothing moves (new
// messages come at the end, older pages at the start), and this walk over the
// list touches no layout.
function applyPlan(list, shown, plan) {
  for (const [key, entry] of shown) {
    if (!plan.indexByKey.has(key)) {
      entry.node.remove();
      shown.delete(key);
    }
  }
  let cursor = list.firstElementChild;
  for (const { key } of plan.items) {
    const entry = shown.get(key);
    if (!entry) continue;
    if (entry.node === cursor) cursor = cursor.nextElementSibling;
    else list.insertBefore(entry.node, cursor);
  }
  while (cursor !== null) {
    const stray = cursor;
    cursor = cursor.nextElementSibling;
    stray.remove();
  }
}

// The element of the first item from `index` on that the list holds (null: none, the end).
function nextShownNode(items, index, shown) {
  for (let at = index; at < items.length; at += 1) {
    const entry = shown.get(items[at].key);
    if (entry) return entry.node;
  }
  return null;
}

// The message a search result points to: in the middle of the list, marked
// (app.css) until the next one.
function showFound(list, node) {
  for (const old of list.querySelectorAll(".message.found")) old.classList.remove("found");
  node.classList.add("found");
  node.scrollIntoView({ block: "center" });
}

function isDrawn(old, item, mine, grouped) {
  return old.item === item && old.mine === mine && old.grouped === grouped;
}

function itemsOf(state, peer, conversation) {
  // Array.prototype.sort is stable: equal times keep their arrival order.
  const stored = [...conversation.values()].sort((a, b) => a.time - b.time);
  const items = [];
  let afterChange = false;
  for (const message of stored) {
    const mine = isMine(state, message);
    const fromNewKey = Boolean(message.key_changed) && !mine;
    if (fromNewKey && !afterChange) items.push({ key: `k:${message.id}`, item: KEY_LINE, mine: false, pending: false });
    if (!mine) afterChange = fromNewKey;
    items.push({ key: `m:${message.id}`, item: readByPeer(state, message) ? asRead(message) : message, mine, pending: false });
  }
  for (const pending of state.pending.values()) {
    if (pending.peer === peer) items.push({ key: `c:${pending.clientId}`, item: pending, mine: true, pending: true });
  }
  return items;
}

// Our message the peer has read is shown with status "read": one copy per
// message object, so its element is kept from render to render.
const READ_COPIES = new WeakMap();
function asRead(message) {
  let copy = READ_COPIES.get(message);
  if (!copy) {
    copy = { ...message, status: "read" };
    READ_COPIES.set(message, copy);
  }
  return copy;
}

// A day line before the first message of each day (the local day).  One line
// object per day and label, so its element is kept from render to render.
const DAY_LINES = new Map();
function withDays(items) {
  const out = [];
  let lastDay = null;
  for (const entry of items) {
    const time = entry.item.time;
    if (typeof time === "number") {
      const date = new Date(time * 1000);
      const day = `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
      if (day !== lastDay) {
        const label = dayLabel(date);
        const key = `${day} ${label}`;
        if (!DAY_LINES.has(key)) DAY_LINES.set(key, { day: true, line: label, title: date.toLocaleDateString() });
        out.push({ key: `d:${day}`, item: DAY_LINES.get(key), mine: false, pending: false });
        lastDay = day;
      }
    }
    out.push(entry);
  }
  return out;
}

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return "Today";
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  const options = { weekday: "long", day: "numeric", month: "long" };
  if (date.getFullYear() !== today.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString([], options);
}

// The reader starts at the unread line (with a little of what came before)
// when the unread messages are more than a screen.
function startAtDivider(list, shownDivider) {
  if (!shownDivider) return;
  const above = shownDivider.node.getBoundingClientRect().top - list.getBoundingClientRect().top - 40;
  if (above < 0) list.scrollTop += above;
}

function withDivider(items, divider) {
  if (!divider || divider.before === null) return items;
  const at = items.findIndex((entry) => entry.key === `m:${divider.before}`);
  if (at < 0) return items;
  const line = { key: "unread", item: dividerLine(divider.count), mine: false, pending: false };
  return [...items.slice(0, at), line, ...items.slice(at)];
}

// One line object per count, so the element is made again only when the count changes.
const DIVIDER_LINES = new Map();
function dividerLine(count) {
  if (!DIVIDER_LINES.has(count)) {
    DIVIDER_LINES.set(count, { divider: true, line: count === 1 ? "1 new message" : `${count} new messages` });
  }
  return DIVIDER_LINES.get(count);
}

// "New messages ↓": shown when a message from the other side arrives below
// the reader's view; a click (or scrolling down to it) hides it.
function newMessagesButton(list, button) {
  const hide = () => {
    button.hidden = true;
  };
  button.addEventListener("click", () => {
    list.scrollTop = list.scrollHeight;
    hide();
  });
  list.addEventListener("scroll", () => {
    if (list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX) hide();
  }, { passive: true });
  return {
    hide,
    show: () => {
      button.hidden = false;
    },
  };
}

const START_LINE = { line: "start of the conversation" };

// Marks each message that follows one from the same side closely (no line between them).
function withGroups(items) {
  let previous = null;
  return items.map((entry) => {
    const isMessage = entry.key.startsWith("m:") || entry.key.startsWith("c:");
    const grouped = isMessage && previous !== null && previous.mine === entry.mine
      && Math.abs(entry.item.time - previous.item.time) < GROUP_SECONDS;
    previous = isMessage ? entry : null;
    return grouped === Boolean(entry.grouped) ? entry : { ...entry, grouped };
  });
}

function withStartLine(items, start) {
  return start ? [{ key: "start", item: START_LINE, mine: false, pending: false }, ...items] : items;
}

// The first element in view and where it is, so that adding messages above it
// (an older page) moves nothing the reader sees.  The list has
// overflow-anchor: none, so the browser's own anchoring does not add to this.
function scrollAnchor(list) {
  const top = list.getBoundingClientRect().top;
  const children = list.children;
  // Children are stacked top to bottom: a binary search, not a walk through thousands.
  let low = 0;
  let high = children.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (children[middle].getBoundingClientRect().bottom > top) high = middle;
    else low = middle + 1;
  }
  // A message, not a line: a day's line moves up when an older page brings more of that day.
  while (low < children.length && children[low].dataset.testid !== "message") low += 1;
  return low < children.length ? { node: children[low], top: children[low].getBoundingClientRect().top } : null;
}

function keepInPlace(list, anchor) {
  if (anchor === null || !anchor.node.isConnected) return;
  const moved = anchor.node.getBoundingClientRect().top - anchor.top;
  if (moved !== 0) list.scrollTop += moved;
}

const KEY_LINE = { line: "key changed: the messages below came from the peer's new key, before you accepted it" };

// Made once: toLocaleTimeString with options builds a new formatter per call
// (about a millisecond each), which made a burst of 1,000 messages take seconds.
const TIME_FORMAT = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const FULL_FORMAT = new Intl.DateTimeFormat([], { dateStyle: "full", timeStyle: "short" });

function formatTime(seconds) {
  return TIME_FORMAT.format(new Date(seconds * 1000));
}

// hh:mm, with the full date and time as the tooltip.
function timeElement(seconds) {
  const time = make("time", "time", formatTime(seconds));
  const date = new Date(seconds * 1000);
  time.dateTime = date.toISOString();
  time.title = FULL_FORMAT.format(date);
  return time;
}

function messageElement(message, mine, pending, actions, { grouped = false, sender = "" } = {}) {
  if (message.day) {
    const line = make("li", "day-line", message.line);
    line.dataset.testid = "day-separator";
    line.title = message.title;
    return line;
  }
  if (message.divider) {
    const line = make("li", "unread-line", message.line);
    line.dataset.testid = "unread-divider";
    return line;
  }
  if (message === START_LINE) {
    const line = make("li", "start-line", START_LINE.line);
    line.dataset.testid = "conversation-start";
    return line;
  }
  if (message === KEY_LINE) {
    const line = make("li", "key-line", KEY_LINE.line);
    line.dataset.testid = "key-change-line";
    return line;
  }
  const item = make("li", "message");
  item.dataset.testid = "message";
  item.classList.add(mine ? "mine" : "theirs");
  if (grouped) item.classList.add("grouped");
  if (pending) item.dataset.clientId = message.clientId;
  else item.dataset.messageId = message.id;
  item.dataset.status = message.status;
  item.dataset.time = String(message.time);

  const bubble = make("div", "bubble");
  if (sender) bubble.append(make("span", "sr-only", `${sender}: `));
  const text = make("div", "message-text");
  appendWithLinks(text, message.text);
  text.dataset.testid = "message-text";
  bubble.append(text);

  const meta = make("div", "meta");
  meta.append(timeElement(message.time));
  if (mine) {
    const status = make("span", `status status-${message.status}`, STATUS_LABELS[message.status] ?? message.status);
    status.dataset.testid = "message-status";
    meta.append(status);
  }
  if (message.status === "held" && message.error) {
    const reason = make("span", "message-error", message.error);
    reason.dataset.testid = "message-error";
    meta.append(reason);
  }
  // Only a stored message not yet handed to a connection can be taken back
  // (a "sent" one may already have arrived).
  if (mine && !pending && (message.status === "queued" || message.status === "sending")) {
    const cancel = make("button", "cancel", "Cancel");
    cancel.type = "button";
    cancel.dataset.testid = "cancel-button";
    cancel.addEventListener("click", () => actions.cancel(message.id));
    meta.append(cancel);
  }
  if (message.status === "failed") {
    if (message.error) {
      const error = make("span", "message-error", message.error);
      error.dataset.testid = "message-error";
      meta.append(error);
    }
    const retry = make("button", "retry", "Retry");
    retry.type = "button";
    retry.dataset.testid = "retry-button";
    retry.addEventListener("click", () => (pending ? actions.resend(message.clientId) : actions.retry(message.id)));
    meta.append(retry);
  }
  bubble.append(meta);
  item.append(bubble);
  return item;
}
