// The page's state and its one reducer: reduce(state, event) -> state.
//
// Pure: no DOM, no clock, no network.  States are never changed in place; a
// case returns a new object for every part it touches and shares the rest, so
// a view can tell what changed by comparing references (===).
//
// Events come from two places:
// - the webpeer's websocket (see webpeer/websocket.py): hello, message,
//   status, peers, connection, me, trust, resync, and the answers sent, cancelled
//   and error;
// - the page itself (named in the past tense, for what already happened):
//   peer-selected, visibility-changed, marked-read, send-started, send-failed,
//   send-withdrawn, history-loaded, reloaded, socket-opened, socket-closed,
//   signed-out, error-shown, error-dismissed, safety-loaded, safety-toggled,
//   older-loaded, settings-loaded, filter-changed, search-done, search-closed,
//   conversation-closed, jumped.
// Also from the websocket: read-up-to (the peer has read our messages up to one);
// and from socket.js, message-burst: a run of message events from one frame.
// A new feature adds its cases to HANDLERS below; unknown events change nothing
// (a newer server may send events this page does not know).  The groups'
// state and cases live in group_state.js.

import { afterPageEvent, GROUP_HANDLERS, initialGroupState } from "./group_state.js";

export function initialState({ selected = null, visible = true } = {}) {
  return {
    me: null,
    peers: [], // in the server's order
    conversations: new Map(), // peer id -> Map(message id -> message), in arrival order
    messagePeer: new Map(), // message id -> peer id, for status events
    // Live updates are numbered, so a history snapshot can tell which of its
    // messages are older than what the websocket already said (see historyLoaded).
    liveClock: 0,
    liveAt: new Map(), // message id -> liveClock of its last live update
    pending: new Map(), // client id -> {clientId, peer, text, time, status, error}, not stored yet
    selected, // the open conversation's peer id, or null
    visible, // the page is visible (so an open conversation is being read)
    link: { connected: null, retryInSeconds: 0, signedOut: false }, // connected: null until the first try
    error: null, // text of the error banner, or null when hidden
    historyLoads: 0, // counts loads of the open conversation (the view then scrolls to the end)
    safety: null, // the open conversation's GET /api/peers/N/safety answer, or null
    safetyOpen: false, // the user opened the safety view of a trusted peer
    historyStart: new Map(), // peer id -> true once the conversation's first message is loaded
    // The "N new messages" line of the conversation just opened: {peer, count, before}, `before`
    // the id of the first unread message once the history is loaded (null until then).
    unreadDivider: null,
    settings: null, // GET /api/settings: {read_receipts}, null until loaded
    filter: "", // the peer list's filter box
    search: null, // {peer, query, results} of the open conversation's search, or null
    ...initialGroupState(),
    jump: null, // {peer, id, count}: the search result the user went to (count tells two jumps apart)
  };
}

export function reduce(state, event) {
  const handler = event && HANDLERS.get(event.type);
  return handler ? afterPageEvent(handler(state, event), event) : state;
}

// ---------------------------------------------------------------- queries

export function findPeer(state, id) {
  return state.peers.find((peer) => peer.id === id);
}

export function isMine(state, message) {
  return state.me !== null && message.from === state.me.id;
}

export function conversationOf(state, peerId) {
  return state.conversations.get(peerId) ?? EMPTY_CONVERSATION;
}

/** The open conversation is being read: its unread count is not shown and new messages in it are read. */
export function isReading(state, peerId) {
  return peerId === state.selected && state.visible;
}

/** A message event that the page should answer with "read": new, from the other side, being read. */
export function readsOnArrival(state, message) {
  return !conversationOf(state, message.peer).has(message.id) && !isMine(state, message) && isReading(state, message.peer);
}

/** A message event worth a desktop notification: new, from the other side, and not being read. */
export function notifiesOnArrival(state, message) {
  return !conversationOf(state, message.peer).has(message.id) && !isMine(state, message) && !isReading(state, message.peer);
}

/** The open peer's key is not trusted (changed or blocked): the safety view shows and sending waits. */
export function keyUndecided(peer) {
  return Boolean(peer) && (peer.trust === "changed" || peer.trust === "blocked");
}

/** The safety view (fingerprints, safety number, Accept / Block / Verify) is shown. */
export function showsSafety(state) {
  if (state.selected === null) return false;
  return state.safetyOpen || keyUndecided(findPeer(state, state.selected));
}

/** Why the composer is disabled for the open peer, or null when it may send. */
export function composerBlock(state) {
  if (state.selected === null) return null;
  const peer = findPeer(state, state.selected);
  if (!peer) return null;
  if (peer.trust === "changed") {
    return "Sending is held: this peer's key changed. Compare the safety number with them, then accept the new key or block it.";
  }
  if (peer.trust === "blocked") return "You blocked this peer's key: nothing is sent to it.";
  return null;
}

const EMPTY_CONVERSATION = new Map();

/** What the page calls a peer: the user's nickname for it, else its own name. */
export function displayName(peer) {
  if (!peer) return "";
  return peer.nickname || peer.name || "";
}

/** Our message the peer has read (its read mark is at or after the message's time). */
export function readByPeer(state, message) {
  if (!isMine(state, message) || !["sent", "stored", "delivered"].includes(message.status)) return false;
  const mark = findPeer(state, message.peer)?.read_up_to;
  return Boolean(mark) && message.time <= mark.time;
}

/** The peers the filter box lets through: its words in the nickname, name, #id or latest text. */
export function filteredPeers(state) {
  const words = state.filter.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return state.peers;
  return state.peers.filter((peer) => {
    const haystack = `${peer.nickname || ""} ${peer.name || ""} #${peer.id}`.toLowerCase();
    return words.every((word) => haystack.includes(word));
  });
}

/** The first message of the conversation is loaded: nothing older to page back to. */
export function reachedStart(state, peerId) {
  return state.historyStart?.get(peerId) === true;
}

/** The oldest loaded message's id (the cursor for ?before=), or null when none is loaded. */
export function oldestLoaded(state, peerId) {
  let oldest = null;
  // Strictly older only: among equal times the first in map order is the
  // server's first (older pages are put in front, in the server's order).
  for (const msg of conversationOf(state, peerId).values()) {
    if (oldest === null || msg.time < oldest.time) oldest = msg;
  }
  return oldest === null ? null : oldest.id;
}

// ---------------------------------------------------------------- helpers

function withPeerChanges(state, id, changes) {
  if (!findPeer(state, id)) return state;
  return { ...state, peers: state.peers.map((peer) => (peer.id === id ? { ...peer, ...changes } : peer)) };
}

function withPending(state, clientId, pending) {
  const next = new Map(state.pending);
  if (pending) next.set(clientId, pending);
  else next.delete(clientId);
  return { ...state, pending: next };
}

function withoutPending(state, clientId) {
  return state.pending.has(clientId) ? withPending(state, clientId, null) : state;
}

// Store one message that the websocket (or an HTTP answer) just told us about.
function storeLive(state, message) {
  const conversations = new Map(state.conversations);
  conversations.set(message.peer, new Map(conversationOf(state, message.peer)).set(message.id, message));
  const liveClock = state.liveClock + 1;
  return {
    ...state,
    conversations,
    messagePeer: new Map(state.messagePeer).set(message.id, message.peer),
    liveClock,
    liveAt: new Map(state.liveAt).set(message.id, liveClock),
  };
}

// ---------------------------------------------------------------- websocket events

function hello(state, event) {
  const next = { ...state, me: event.me, peers: event.peers };
  // The open conversation is drawn again from the start (and reloaded by main.js).
  return state.selected === null ? next : { ...next, historyLoads: state.historyLoads + 1 };
}

function message(state, event) {
  const msg = event.message;
  let next = state;
  if (isMine(state, msg)) {
    // Our own message may be announced before the "sent" answer: drop the
    // pending copy so it never shows twice.
    for (const pending of state.pending.values()) {
      if (pending.peer === msg.peer && pending.text === msg.text && pending.status === "sending") {
        next = withoutPending(next, pending.clientId);
        break;
      }
    }
  }
  const known = conversationOf(state, msg.peer).has(msg.id);
  next = storeLive(next, msg);
  if (known || isMine(state, msg)) return next;
  if (isReading(state, msg.peer)) return markedRead(next, { peer: msg.peer }); // main.js tells the server
  const peer = findPeer(state, msg.peer);
  return peer ? withPeerChanges(next, msg.peer, { unread: (peer.unread || 0) + 1 }) : next;
}

// A run of message events, as applying each in turn would leave the state,
// with one copy of each map instead of one per message.  Runs that hold one
// of our own messages (a pending copy to drop) take the one-by-one way.
function messageBurst(state, event) {
  const messages = event.events.map((e) => e.message);
  if (messages.some((msg) => isMine(state, msg))) {
    return event.events.reduce((next, e) => withLastMessage(message(next, e), e.message), state);
  }
  const conversations = new Map(state.conversations);
  const messagePeer = new Map(state.messagePeer);
  const liveAt = new Map(state.liveAt);
  let liveClock = state.liveClock;
  const copied = new Set();
  const unreadAdded = new Map();
  const latest = new Map();
  for (const msg of messages) {
    if (!copied.has(msg.peer)) {
      conversations.set(msg.peer, new Map(conversationOf(state, msg.peer)));
      copied.add(msg.peer);
    }
    const conversation = conversations.get(msg.peer);
    const known = conversation.has(msg.id);
    conversation.set(msg.id, msg);
    messagePeer.set(msg.id, msg.peer);
    liveClock += 1;
    liveAt.set(msg.id, liveClock);
    if (!known && !isReading(state, msg.peer)) unreadAdded.set(msg.peer, (unreadAdded.get(msg.peer) || 0) + 1);
    const last = latest.get(msg.peer);
    if (!last || msg.time >= last.time) latest.set(msg.peer, msg);
  }
  let next = { ...state, conversations, messagePeer, liveAt, liveClock };
  for (const peerId of copied) {
    if (isReading(state, peerId)) next = markedRead(next, { peer: peerId }); // main.js tells the server
  }
  for (const [peerId, count] of unreadAdded) {
    const peer = findPeer(next, peerId);
    if (peer) next = withPeerChanges(next, peerId, { unread: (peer.unread || 0) + count });
  }
  for (const msg of latest.values()) next = withLastMessage(next, msg);
  return next;
}

function status(state, event) {
  const peerId = state.messagePeer.get(event.id);
  if (peerId === undefined) return state; // not loaded on this page
  const msg = conversationOf(state, peerId).get(event.id);
  if (!msg) return state;
  return storeLive(state, { ...msg, status: event.status, error: event.error ?? null });
}

function peers(state, event) {
  return { ...state, peers: event.peers };
}

function connection(state, event) {
  return withPeerChanges(state, event.peer, { connection: event.connection });
}

function me(state, event) {
  return { ...state, me: event.me };
}

// A peer's key changed or came back, or the user decided about it (webpeer/trust.py).
function trust(state, event) {
  return withPeerChanges(state, event.peer, {
    trust: event.trust,
    key_changed: event.trust === "changed",
    verified: Boolean(event.verified),
    verified_key_changed: Boolean(event.verified_key_changed),
  });
}

function sent(state, event) {
  const next = event.client_id ? withoutPending(state, event.client_id) : state;
  return storeLive(next, event.message);
}

// The answer to a cancel: the message, now failed ("cancelled").
function cancelled(state, event) {
  return storeLive(state, event.message);
}

function error(state, event) {
  if (event.client_id && state.pending.has(event.client_id)) {
    return sendFailed(state, { clientId: event.client_id, error: event.error });
  }
  return { ...state, error: event.error };
}

// ---------------------------------------------------------------- the page's own events

function peerSelected(state, event) {
  if (event.peer === state.selected) return state;
  return { ...state, selected: event.peer, safety: null, safetyOpen: false, search: null };
}

// GET /api/peers/N/safety (or a trust action's answer); kept for the open peer only.
function safetyLoaded(state, event) {
  return event.safety && event.safety.peer === state.selected ? { ...state, safety: event.safety } : state;
}

function safetyToggled(state, event) {
  return { ...state, safetyOpen: Boolean(event.open) };
}

function visibilityChanged(state, event) {
  return { ...state, visible: event.visible };
}

function markedRead(state, event) {
  const peer = findPeer(state, event.peer);
  return peer && peer.unread ? withPeerChanges(state, event.peer, { unread: 0 }) : state;
}

function sendStarted(state, event) {
  const { clientId, peer, text, time } = event;
  return withPending(state, clientId, { clientId, peer, text, time, status: "sending", error: null });
}

function sendFailed(state, event) {
  const pending = state.pending.get(event.clientId);
  if (!pending) return state;
  return withPending(state, event.clientId, { ...pending, status: "failed", error: event.error });
}

function sendWithdrawn(state, event) {
  return withoutPending(state, event.clientId);
}

// A conversation fetched over HTTP.  `since` is the liveClock when the request
// started: a message the websocket updated after that is newer than the snapshot.
function historyLoaded(state, event) {
  const conversation = new Map(conversationOf(state, event.peer));
  const messagePeer = new Map(state.messagePeer);
  for (const msg of event.messages) {
    const live = state.liveAt.get(msg.id);
    if (live !== undefined && live > event.since && conversation.has(msg.id)) continue;
    conversation.set(msg.id, msg);
    messagePeer.set(msg.id, msg.peer);
  }
  const conversations = new Map(state.conversations).set(event.peer, conversation);
  const historyLoads = state.historyLoads + (event.peer === state.selected ? 1 : 0);
  return { ...state, conversations, messagePeer, historyLoads };
}

// `complete`: the answer held fewer messages than asked for, so it reaches the start.
function withStart(state, event) {
  if (!event.complete || reachedStart(state, event.peer)) return state;
  return { ...state, historyStart: new Map(state.historyStart ?? []).set(event.peer, true) };
}

function historyLoadedWithStart(state, event) {
  return placeDivider(withStart(historyLoaded(state, event), event));
}

// The peer list shows each conversation's latest message and is ordered by it:
// a message event or a send's answer makes it the latest unless an even later one is known.
function withLastMessage(state, msg) {
  const peer = msg && findPeer(state, msg.peer);
  if (!peer) return state;
  const last = peer.last_message;
  if (last && (last.id === msg.id || last.time > msg.time)) return state;
  return withPeerChanges(state, msg.peer, {
    last_message: { id: msg.id, from: msg.from, time: msg.time, text: msg.text.slice(0, 120) },
  });
}

// Opening a conversation with unread messages draws a line above the first of them.
function peerSelectedWithDivider(state, event) {
  const next = peerSelected(state, event);
  if (next === state) return state;
  const peer = findPeer(state, event.peer);
  const count = peer ? peer.unread || 0 : 0;
  return placeDivider({ ...next, unreadDivider: count > 0 ? { peer: event.peer, count, before: null } : null });
}

// The first unread message is the count-th last one from the other side; the
// line stays above it while more arrive.  Placed once that many are loaded.
function placeDivider(state) {
  const divider = state.unreadDivider;
  if (!divider || divider.before !== null) return state;
  const theirs = [...conversationOf(state, divider.peer).values()]
    .filter((msg) => !isMine(state, msg))
    .sort((a, b) => a.time - b.time);
  if (theirs.length < divider.count) return state;
  return { ...state, unreadDivider: { ...divider, before: theirs[theirs.length - divider.count].id } };
}

// An older page (GET /api/messages?before=): put in front, in the server's
// order, so ties in time keep it.  No historyLoads bump: the view keeps its
// scroll position instead of jumping to the end.  What the websocket updated
// meanwhile is newer than this page and stays.
function olderLoaded(state, event) {
  const existing = conversationOf(state, event.peer);
  const conversation = new Map();
  const messagePeer = new Map(state.messagePeer);
  for (const msg of event.messages) {
    if (existing.has(msg.id)) continue;
    conversation.set(msg.id, msg);
    messagePeer.set(msg.id, msg.peer);
  }
  for (const [id, msg] of existing) conversation.set(id, msg);
  const conversations = new Map(state.conversations).set(event.peer, conversation);
  return withStart({ ...state, conversations, messagePeer }, event);
}

// What /api/me and /api/peers said after a resync.
function reloaded(state, event) {
  return { ...state, me: event.me, peers: event.peers };
}

function socketOpened(state) {
  return { ...state, link: { connected: true, retryInSeconds: 0, signedOut: false } };
}

// `unanswered`: client ids of requests the dead socket will never answer.
function socketClosed(state, event) {
  let next = state;
  for (const clientId of event.unanswered ?? []) {
    const pending = next.pending.get(clientId);
    if (pending && pending.status === "sending") {
      next = sendFailed(next, { clientId, error: "connection to webpeer lost" });
    }
  }
  return { ...next, link: { connected: false, retryInSeconds: event.retryInSeconds, signedOut: false } };
}

function signedOut(state) {
  return state.link.connected === false ? { ...state, link: { ...state.link, signedOut: true } } : state;
}

// The peer has read our messages up to event.id (sent at event.time); a mark never moves back.
function readUpTo(state, event) {
  const peer = findPeer(state, event.peer);
  if (!peer || (peer.read_up_to && peer.read_up_to.time > event.time)) return state;
  return withPeerChanges(state, event.peer, { read_up_to: { id: event.id, time: event.time } });
}

function settingsLoaded(state, event) {
  return { ...state, settings: event.settings };
}

// GET /api/search's answer for the open conversation (a late answer for another one is dropped).
function searchDone(state, event) {
  if (event.peer !== state.selected) return state;
  return { ...state, search: { peer: event.peer, query: event.query, results: event.results } };
}

// A search result was clicked and its message is loaded: the list shows it.
function jumped(state, event) {
  const count = (state.jump?.count ?? 0) + 1;
  return { ...state, jump: { peer: event.peer, id: event.id, count } };
}

function filterChanged(state, event) {
  return state.filter === event.filter ? state : { ...state, filter: String(event.filter) };
}

function errorShown(state, event) {
  return { ...state, error: event.error };
}

function errorDismissed(state) {
  return state.error === null ? state : { ...state, error: null };
}

const HANDLERS = new Map([
  ["hello", hello],
  ["message", (state, event) => withLastMessage(message(state, event), event.message)],
  ["message-burst", messageBurst],
  ["status", status],
  ["peers", peers],
  ["connection", connection],
  ["me", me],
  ["trust", trust],
  ["resync", (state) => state], // main.js reloads everything and reports "reloaded"
  ["sent", (state, event) => withLastMessage(sent(state, event), event.message)],
  ["cancelled", cancelled],
  ["error", error],
  ["peer-selected", peerSelectedWithDivider],
  ["visibility-changed", visibilityChanged],
  ["marked-read", markedRead],
  ["send-started", sendStarted],
  ["send-failed", sendFailed],
  ["send-withdrawn", sendWithdrawn],
  ["history-loaded", historyLoadedWithStart],
  ["older-loaded", olderLoaded],
  ["reloaded", reloaded],
  ["socket-opened", socketOpened],
  ["socket-closed", socketClosed],
  ["signed-out", signedOut],
  ["error-shown", errorShown],
  ["error-dismissed", errorDismissed],
  ["safety-loaded", safetyLoaded],
  ["safety-toggled", safetyToggled],
  ["read-up-to", readUpTo],
  ["settings-loaded", settingsLoaded],
  ["filter-changed", filterChanged],
  ["search-done", searchDone],
  ["jumped", jumped],
  ["conversation-closed", (state) => (state.selected === null ? state : {
    ...state, selected: null, safety: null, safetyOpen: false, search: null, unreadDivider: null,
  })],
  ["search-closed", (state) => (state.search === null ? state : { ...state, search: null })],
  ...GROUP_HANDLERS,
]);
