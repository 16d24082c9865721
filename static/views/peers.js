// The sidebar: the live peer list (online dot, unread badge, connection state,
// key-changed warning, refusal reason) and the "Chat with id" form.
// Peers are ordered by their conversation's latest message, newest first,
// with the start of its text under the name; peers never talked to follow, by id.
// A peer is shown by the user's nickname for it (its own name then in grey),
// an offline one with when it was last seen; the filter box narrows the list.
// "Chat with id" adds the id as a contact (the server says whether it exists).

import { asListButton, byTestId, changed, connectionText, make } from "./dom.js";
import { filteredPeers, isReading } from "../state.js";
import { filteredGroups, groupActivity } from "../group_state.js";
import { groupItem } from "./group_item.js";

const PEER_ID = /^[1-9][0-9]{0,15}$/;

/** @param {{select: (peerId: number) => void, selectGroup: (groupId: string) => void, addContact: (peerId: number) => void, filter: (text: string) => void, showError: (text: string) => void}} actions */
export function createPeersView(actions, root = document) {
  const list = byTestId("peer-list", root);
  const noPeers = byTestId("no-peers", root);
  const memo = {};

  // Groups are in the same list (group_item.js).
  const ITEMS = '[data-testid="peer-item"], [data-testid="group-item"]';
  const itemOf = (event) => event.target.closest(ITEMS);
  list.addEventListener("click", (event) => {
    const item = itemOf(event);
    if (item && item.dataset.groupId) actions.selectGroup(item.dataset.groupId);
    else if (item) actions.select(Number(item.dataset.peerId));
  });
  // Keyboard: each entry is a button (Tab reaches the list, Enter or Space
  // opens); Up and Down move between entries, Home and End to the ends.
  list.addEventListener("keydown", (event) => {
    const item = itemOf(event);
    if (!item) return;
    const items = [...list.querySelectorAll(ITEMS)];
    const at = items.indexOf(item);
    const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: items.length - 1 }[event.key];
    if (to === undefined || to < 0 || to >= items.length) return;
    event.preventDefault();
    items[to].querySelector("button").focus();
  });
  byTestId("open-peer-form", root).addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byTestId("open-peer-id", root);
    const value = input.value.trim();
    if (isMyId(value)) {
      actions.showError("That is your own id: give it to others so they can reach you.");
    } else if (PEER_ID.test(value)) {
      input.value = "";
      actions.addContact(Number(value));
    } else {
      actions.showError("A peer id is a positive whole number.");
    }
  });

  const filterBox = byTestId("peer-filter", root);
  filterBox.addEventListener("input", () => actions.filter(filterBox.value));

  let myId = null;
  const isMyId = (value) => myId !== null && value.replace(/^0+/, "") === String(myId);

  function render(state) {
    const groupInputs = [state.groups, state.groupMessages, state.groupUnread, state.selectedGroup];
    if (!changed(memo, [state.peers, state.me, state.selected, state.visible, state.filter, ...groupInputs])) return;
    myId = state.me ? state.me.id : null;
    const peers = filteredPeers(state).filter((peer) => peer.id !== myId);
    const items = byActivity(state, peers, filteredGroups(state)).map(({ peer, group }) => {
      if (group) return groupItem(state, group);
      const item = peerItem(state, peer);
      addPreview(state, item, peer);
      return item;
    });
    // The list is drawn anew: the entry that had the keyboard focus gets it back.
    const focused = list.contains(document.activeElement) ? itemOf({ target: document.activeElement }) : null;
    list.replaceChildren(...items);
    const key = focused && (focused.dataset.groupId ? `[data-group-id="${focused.dataset.groupId}"]` : `[data-peer-id="${focused.dataset.peerId}"]`);
    if (focused) list.querySelector(`${key} button`)?.focus();
    noPeers.hidden = items.length > 0;
    noPeers.textContent = state.filter ? "No peer matches the filter." : "No other peers are known yet.";
  }

  /** Keyboard focus to the entry of `peerId` (Escape from a conversation comes back here). */
  function focusPeer(peerId) {
    list.querySelector(`[data-peer-id="${peerId}"] button`)?.focus();
  }

  /** Keyboard focus to the entry of group `groupId`. */
  function focusGroup(groupId) {
    list.querySelector(`[data-group-id="${groupId}"] button`)?.focus();
  }

  return { render, focusPeer, focusGroup };
}

// Peers and groups by their latest activity, newest first; peers never talked to last, by id.
function byActivity(state, peers, groups) {
  const entries = [
    ...peers.map((peer) => ({ peer, time: peer.last_message ? peer.last_message.time : -Infinity, order: peer.id })),
    ...groups.map((group) => ({ group, time: groupActivity(state, group), order: 0 })),
  ];
  return entries.sort((a, b) => b.time - a.time || a.order - b.order);
}

// The start of the latest message, after the name line ("you: " for mine).
function addPreview(state, item, peer) {
  const last = peer.last_message;
  if (!last) return;
  const mine = state.me !== null && last.from === state.me.id;
  const preview = make("div", "peer-preview", `${mine ? "you: " : ""}${last.text}`);
  preview.dataset.testid = "peer-preview";
  item.querySelector(".peer-top").after(preview);
}

function peerItem(state, peer) {
  const item = make("li", "peer");
  item.dataset.testid = "peer-item";
  item.dataset.peerId = String(peer.id);
  item.dataset.online = peer.online ? "true" : "false";
  if (peer.online) item.classList.add("online");
  if (peer.id === state.selected) item.classList.add("selected");

  const top = make("div", "peer-top");
  const dot = make("span", "dot");
  dot.dataset.testid = "online-dot";
  dot.title = peer.online ? "online" : "offline";
  top.append(dot);
  const name = make("span", "peer-name", peer.nickname || peer.name || "(no name)");
  name.dataset.testid = "peer-name";
  top.append(name);
  if (peer.nickname && peer.name && peer.name !== peer.nickname) {
    const own = make("span", "peer-own-name", peer.name);
    own.dataset.testid = "peer-own-name";
    own.title = "the name this peer gave itself";
    top.append(own);
  }
  top.append(make("span", "peer-id", `#${peer.id}`));
  // The open conversation is being read: no badge, even before the server agrees.
  if (peer.unread > 0 && !isReading(state, peer.id)) {
    const badge = make("span", "badge", peer.unread > 99 ? "99+" : peer.unread);
    badge.dataset.testid = "unread-badge";
    badge.title = `${peer.unread} unread`;
    top.append(badge);
  }
  item.append(top);

  const conn = connectionText(peer.connection);
  const line = make("div", "peer-conn");
  const stateSpan = make("span", `conn-state conn-${conn.state}`, conn.label);
  stateSpan.dataset.testid = "connection-state";
  stateSpan.dataset.state = conn.state;
  line.append(stateSpan);
  if (conn.address) {
    const address = make("span", "conn-address mono", conn.address);
    address.dataset.testid = "connection-address";
    line.append(address);
  }
  if (!peer.online && typeof peer.last_seen === "number") {
    const seen = make("span", "last-seen", `last seen ${lastSeenText(peer.last_seen)}`);
    seen.dataset.testid = "last-seen";
    seen.title = new Date(peer.last_seen * 1000).toLocaleString();
    line.append(seen);
  }
  item.append(line);

  if (peer.verified) {
    const badge = make("span", "verified-badge", "✔");
    badge.dataset.testid = "verified-badge";
    badge.title = "You verified this peer's key (safety number compared)";
    top.append(badge);
  }
  if (peer.key_changed) {
    // Louder when the key that changed was one the user had verified.
    const alarm = Boolean(peer.verified_key_changed);
    const warning = make("div", alarm ? "key-changed key-alarm" : "key-changed", alarm ? "⚠ VERIFIED key changed" : "⚠ key changed");
    warning.dataset.testid = "key-warning";
    warning.dataset.alarm = alarm ? "true" : "false";
    warning.title = "This peer's key is not the one seen before: sending is held until you accept it";
    item.append(warning);
  } else if (peer.trust === "blocked") {
    const blocked = make("div", "key-blocked", "⛔ key blocked");
    blocked.dataset.testid = "key-blocked";
    item.append(blocked);
  }
  if (peer.error) {
    const error = make("div", "peer-error", peer.error);
    error.dataset.testid = "peer-error";
    item.append(error);
  }
  return asListButton(item, "peer-button", peer.id === state.selected);
}

/** "5 min ago", "3 h ago", else the date: when an offline peer was last seen. */
export function lastSeenText(seconds, now = Date.now() / 1000) {
  const ago = Math.max(0, now - seconds);
  if (ago < 60) return "just now";
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.floor(ago / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}
