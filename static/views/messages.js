// The open conversation's messages: stored ones in time order, then the ones
// still being sent (pending); for mine a status (queued and sending with a
// Cancel button, sent, delivered, held while the peer's key change waits,
// failed with a Retry button).  A "key changed" line goes before each run of
// messages received from a new key before the user accepted it.
//
// The reducer makes a new object for every message that changes, so an element
// is reused while its message is the same object and made again otherwise:
// a status event redraws one element, not the list.

import { byTestId, changed, make } from "./dom.js";
import { conversationOf, isMine } from "../state.js";

const STATUS_LABELS = {
  queued: "queued",
  sending: "sending…",
  sent: "sent ✓",
  delivered: "delivered ✓✓",
  failed: "failed",
  held: "held",
  received: "",
};
const NEAR_BOTTOM_PX = 80;

/** @param {{retry: (messageId: string) => void, resend: (clientId: string) => void, cancel: (messageId: string) => void}} actions */
export function createMessagesView(actions, root = document) {
  const list = byTestId("message-list", root);
  const memo = {};
  let shown = new Map(); // key -> {item, mine, node} of what the list holds now
  let shownPeer = null;
  let shownLoads = -1;

  function render(state) {
    const peer = state.selected;
    const conversation = peer === null ? null : conversationOf(state, peer);
    if (!changed(memo, [peer, conversation, state.pending, state.me, state.historyLoads])) return;

    const items = peer === null ? [] : itemsOf(state, peer, conversation);
    const wasNearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX;
    let added = 0;
    let mineChanged = false;
    const next = new Map();
    const nodes = items.map(({ key, item, mine, pending }) => {
      const old = shown.get(key);
      if (old && old.item === item && old.mine === mine) {
        next.set(key, old);
        return old.node;
      }
      added += 1;
      if (mine) mineChanged = true;
      const node = messageElement(item, mine, pending, actions);
      next.set(key, { item, mine, node });
      return node;
    });
    placeInOrder(list, nodes);
    shown = next;

    // A newly opened or reloaded conversation starts at its end; otherwise
    // follow new messages only if the reader was at the end or wrote them.
    const reopened = peer !== shownPeer || state.historyLoads !== shownLoads;
    shownPeer = peer;
    shownLoads = state.historyLoads;
    if (reopened || mineChanged || (wasNearBottom && added > 0)) list.scrollTop = list.scrollHeight;
  }

  return { render };
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
    items.push({ key: `m:${message.id}`, item: message, mine, pending: false });
  }
  for (const pending of state.pending.values()) {
    if (pending.peer === peer) items.push({ key: `c:${pending.clientId}`, item: pending, mine: true, pending: true });
  }
  return items;
}

const KEY_LINE = { line: "key changed: the messages below came from the peer's new key, before you accepted it" };

// Make the list's children exactly `nodes`, moving only what is out of place.
function placeInOrder(list, nodes) {
  nodes.forEach((node, index) => {
    const current = list.children[index];
    if (current !== node) list.insertBefore(node, current ?? null);
  });
  while (list.children.length > nodes.length) list.lastElementChild.remove();
}

function formatTime(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageElement(message, mine, pending, actions) {
  if (message === KEY_LINE) {
    const line = make("li", "key-line", KEY_LINE.line);
    line.dataset.testid = "key-change-line";
    return line;
  }
  const item = make("li", "message");
  item.dataset.testid = "message";
  item.classList.add(mine ? "mine" : "theirs");
  if (pending) item.dataset.clientId = message.clientId;
  else item.dataset.messageId = message.id;
  item.dataset.status = message.status;
  item.dataset.time = String(message.time);

  const bubble = make("div", "bubble");
  const text = make("div", "message-text", message.text);
  text.dataset.testid = "message-text";
  bubble.append(text);

  const meta = make("div", "meta");
  meta.append(make("time", "time", formatTime(message.time)));
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
