// The open group's conversation, shown instead of a peer's: its name and
// members (admins can add and remove, anyone can leave), its messages with
// who wrote each, membership changes as lines ("alice added carol"), and for
// each of our messages which members have it ("delivered to 2 of 3", the
// names in a details element that opens on click, Enter or Space).
//
// Each group keeps its own draft (drafts.js), as each peer's conversation does.
//
// As in messages.js, an element is kept while its message is the same object
// (the reducer makes a new one when its delivery changes), so a delivery
// event redraws one message, not the list; an open delivery list stays open.

import { displayName, findPeer } from "../state.js";
import { findGroup, groupMessagesOf, isGroupAdmin, recipientsOf } from "../group_state.js";
import { byTestId, changed, make } from "./dom.js";
import { appendWithLinks } from "./links.js";
import { changeText } from "./group_text.js";
import { loadDraft, saveDraft } from "../drafts.js";

const draftKey = (groupId) => `group-${groupId}`; // drafts.js keys; a peer's are its id

const NEAR_BOTTOM_PX = 80;
const TIME_FORMAT = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const FULL_FORMAT = new Intl.DateTimeFormat([], { dateStyle: "full", timeStyle: "short" });

/**
 * @param {{sendToGroup: (groupId: string, text: string) => void, addToGroup: (groupId: string, peerId: number) => void,
 *   removeFromGroup: (groupId: string, peerId: number) => void, leaveGroup: (groupId: string) => void,
 *   closeConversation: () => void}} actions
 */
export function createGroupView(actions, root = document) {
  const el = {
    section: byTestId("group-conversation", root),
    peerSection: byTestId("conversation", root),
    name: byTestId("group-name", root),
    count: byTestId("group-member-count", root),
    members: byTestId("group-members", root),
    memberList: byTestId("group-member-list", root),
    addForm: byTestId("group-add-form", root),
    addSelect: byTestId("group-add-select", root),
    leave: byTestId("group-leave", root),
    leaveConfirm: byTestId("group-leave-confirm", root),
    leaveYes: byTestId("group-leave-yes", root),
    leaveNo: byTestId("group-leave-no", root),
    list: byTestId("group-message-list", root),
    note: byTestId("group-composer-note", root),
    form: byTestId("group-composer-form", root),
    composer: byTestId("group-composer", root),
    send: byTestId("group-send-button", root),
  };
  let groupId = null; // the group drawn now
  const memo = {};
  let shown = new Map(); // key -> {item, node}
  const openDeliveries = new Set(); // message ids whose delivery list the user opened

  byTestId("group-back-button", root).addEventListener("click", () => actions.closeConversation());
  function submit() {
    const text = el.composer.value;
    if (el.composer.disabled || groupId === null || text.trim() === "") return;
    el.composer.value = "";
    saveDraft(draftKey(groupId), "");
    actions.sendToGroup(groupId, text);
  }
  el.composer.addEventListener("input", () => groupId !== null && saveDraft(draftKey(groupId), el.composer.value));
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  el.composer.addEventListener("keydown", (event) => {
    const plainEnter = event.key === "Enter" && !event.shiftKey && !event.isComposing
      && !event.altKey && !event.ctrlKey && !event.metaKey;
    if (plainEnter) {
      event.preventDefault();
      submit();
    }
  });
  el.addForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const peerId = Number(el.addSelect.value);
    if (groupId !== null && peerId > 0) actions.addToGroup(groupId, peerId);
  });
  // Leaving cannot be undone by the one who left: asked once more.
  const askLeave = (ask) => {
    el.leaveConfirm.hidden = !ask;
    el.leave.hidden = ask;
    (ask ? el.leaveNo : el.leave).focus();
  };
  el.leave.addEventListener("click", () => askLeave(true));
  el.leaveNo.addEventListener("click", () => askLeave(false));
  el.leaveYes.addEventListener("click", () => {
    el.leaveConfirm.hidden = true;
    if (groupId !== null) actions.leaveGroup(groupId);
  });
  el.memberList.addEventListener("click", (event) => {
    const button = event.target.closest('[data-testid="group-remove"]');
    if (button && groupId !== null) actions.removeFromGroup(groupId, Number(button.dataset.peerId));
  });
  el.list.addEventListener("toggle", (event) => {
    const details = event.target;
    if (!details.dataset || details.dataset.testid !== "group-delivery") return;
    if (details.open) openDeliveries.add(details.dataset.messageId);
    else openDeliveries.delete(details.dataset.messageId);
  }, true); // toggle does not bubble

  function render(state) {
    const id = state.selectedGroup;
    const group = id === null ? undefined : findGroup(state, id);
    const messages = id === null ? null : groupMessagesOf(state, id);
    const lines = id === null ? null : state.groupLines.get(id);
    if (!changed(memo, [id, group, messages, lines, state.peers, state.me])) return;
    el.section.hidden = id === null;
    el.peerSection.hidden = id !== null;
    el.section.dataset.groupId = id ?? "";
    if (id !== groupId) {
      if (groupId !== null) saveDraft(draftKey(groupId), el.composer.value);
      groupId = id;
      shown = new Map();
      openDeliveries.clear();
      el.list.replaceChildren();
      el.composer.value = id === null ? "" : loadDraft(draftKey(id)); // each group has its own draft
      el.members.open = false;
      el.leaveConfirm.hidden = true;
    }
    if (id === null) return;
    const me = state.me ? state.me.id : null;
    const nameOf = (peerId) => (peerId === me ? "you" : displayName(findPeer(state, peerId)) || `#${peerId}`);

    el.name.textContent = group ? group.name : "group";
    const members = group ? group.members : [];
    const doubtful = members.filter((peerId) => {
      const peer = findPeer(state, peerId);
      return peer && (peer.key_changed || peer.trust === "blocked");
    }).length;
    el.count.textContent = `${members.length} member${members.length === 1 ? "" : "s"}${doubtful ? `, ⚠ ${doubtful} with a changed key` : ""}`;
    const isMember = Boolean(group && group.member);
    const admin = isMember && isGroupAdmin(group, me);
    drawMembers(state, group, admin, nameOf);
    drawAddChoices(state, group, admin);
    el.leave.hidden = !isMember || !el.leaveConfirm.hidden;
    if (!isMember) el.leaveConfirm.hidden = true;
    el.composer.disabled = !isMember;
    el.send.disabled = !isMember;
    el.note.hidden = isMember || !group;
    el.note.textContent = isMember ? "" : "You are no longer a member of this group: you can read what came before, not write.";

    const wasNearBottom = el.list.scrollHeight - el.list.scrollTop - el.list.clientHeight < NEAR_BOTTOM_PX;
    const firstDraw = shown.size === 0;
    let mineAdded = false;
    const next = new Map();
    const nodes = itemsOf(messages, lines).map(({ key, item, line }) => {
      const old = shown.get(key);
      if (old && old.item === item) {
        next.set(key, old);
        return old.node;
      }
      const mine = !line && item.from === me;
      if (mine && !old) mineAdded = true;
      const node = line ? lineElement(item, nameOf) : messageElement(state, group, item, mine, nameOf, openDeliveries);
      next.set(key, { item, node });
      return node;
    });
    el.list.replaceChildren(...nodes);
    shown = next;
    if (firstDraw || mineAdded || wasNearBottom) el.list.scrollTop = el.list.scrollHeight;
  }

  function drawMembers(state, group, admin, nameOf) {
    const me = state.me ? state.me.id : null;
    const items = (group ? group.members : []).map((peerId) => {
      const item = make("li", "group-member");
      item.dataset.testid = "group-member";
      item.dataset.peerId = String(peerId);
      item.append(make("span", "group-member-name", nameOf(peerId)));
      item.append(make("span", "peer-id", `#${peerId}`));
      if (isGroupAdmin(group, peerId)) item.append(make("span", "group-admin", "admin"));
      // As in the peer list: a member whose key changed (or was blocked) may not be who it was.
      const peer = findPeer(state, peerId);
      if (peer && (peer.key_changed || peer.trust === "blocked")) {
        const warning = make("span", "key-changed", peer.trust === "blocked" ? "⛔ key blocked" : "⚠ key changed");
        warning.dataset.testid = "group-member-key-warning";
        warning.title = "Open the conversation with this peer to compare the safety number and decide";
        item.append(warning);
      }
      if (admin && peerId !== me) {
        const remove = make("button", "link-button group-remove", "remove");
        remove.type = "button";
        remove.dataset.testid = "group-remove";
        remove.dataset.peerId = String(peerId);
        remove.setAttribute("aria-label", `Remove ${nameOf(peerId)} from the group`);
        item.append(remove);
      }
      return item;
    });
    el.memberList.replaceChildren(...items);
  }

  function drawAddChoices(state, group, admin) {
    const me = state.me ? state.me.id : null;
    const inGroup = new Set(group ? group.members : []);
    const choices = state.peers.filter((peer) => peer.id !== me && peer.fingerprint && !inGroup.has(peer.id));
    el.addForm.hidden = !admin || choices.length === 0;
    const kept = el.addSelect.value;
    el.addSelect.replaceChildren(...choices.map((peer) => {
      const option = make("option", "", `${displayName(peer) || "(no name)"} #${peer.id}`);
      option.value = String(peer.id);
      return option;
    }));
    if (choices.some((peer) => String(peer.id) === kept)) el.addSelect.value = kept;
  }

  /** Keyboard focus to the composer (a group just opened). */
  function focus() {
    if (!el.composer.disabled) el.composer.focus();
  }

  return { render, focus };
}

// The messages in webpeer's delivery order (causal: never sorted by the
// writers' clocks), each membership line before the first message written
// after it (a group's creation before what is written in it).
function itemsOf(messages, lines) {
  const pending = [...(lines ?? [])].sort((a, b) => a.time - b.time);
  const items = [];
  let next = 0;
  for (const msg of messages.values()) {
    while (next < pending.length && pending[next].time <= msg.time) {
      const line = pending[next++];
      items.push({ key: `l:${line.id}`, item: line, line: true });
    }
    items.push({ key: `m:${msg.id}`, item: msg, line: false });
  }
  for (const line of pending.slice(next)) items.push({ key: `l:${line.id}`, item: line, line: true });
  return items;
}

function lineElement(change, nameOf) {
  const line = make("li", "group-line", changeText(change, nameOf));
  line.dataset.testid = "group-line";
  line.dataset.kind = change.kind;
  return line;
}

function timeElement(seconds) {
  const date = new Date(seconds * 1000);
  const time = make("time", "time", TIME_FORMAT.format(date));
  time.dateTime = date.toISOString();
  time.title = FULL_FORMAT.format(date);
  return time;
}

function messageElement(state, group, message, mine, nameOf, openDeliveries) {
  const item = make("li", `message ${mine ? "mine" : "theirs"}`);
  item.dataset.testid = "group-message";
  item.dataset.messageId = message.id;
  item.dataset.from = String(message.from);
  const bubble = make("div", "bubble");
  if (mine) bubble.append(make("span", "sr-only", "You: "));
  else {
    const sender = make("div", "group-sender", nameOf(message.from));
    sender.dataset.testid = "group-sender";
    bubble.append(sender);
  }
  const text = make("div", "message-text");
  text.dataset.testid = "message-text";
  appendWithLinks(text, message.text);
  bubble.append(text);
  const meta = make("div", "meta");
  meta.append(timeElement(message.time));
  if (mine) meta.append(deliveryElement(state, group, message, nameOf, openDeliveries));
  bubble.append(meta);
  item.append(bubble);
  return item;
}

// "delivered to 2 of 3", opening onto who has it and who not yet.
function deliveryElement(state, group, message, nameOf, openDeliveries) {
  const recipients = recipientsOf(state, group, message);
  const have = new Set(message.delivered_to ?? []);
  const count = recipients.filter((id) => have.has(id)).length;
  const details = make("details", "group-delivery");
  details.dataset.testid = "group-delivery";
  details.dataset.messageId = message.id;
  details.dataset.delivered = String(count);
  details.dataset.of = String(recipients.length);
  if (openDeliveries.has(message.id)) details.open = true;
  const summary = make("summary", "", recipients.length === 0 ? "only you are in the group" : `delivered to ${count} of ${recipients.length}`);
  summary.dataset.testid = "group-delivery-summary";
  details.append(summary);
  const list = make("ul", "group-delivery-list");
  for (const id of recipients) {
    const got = have.has(id);
    const entry = make("li", got ? "delivered" : "waiting", `${nameOf(id)}: ${got ? "delivered ✓" : "not yet"}`);
    entry.dataset.testid = "group-delivery-member";
    entry.dataset.peerId = String(id);
    entry.dataset.delivered = got ? "true" : "false";
    list.append(entry);
  }
  details.append(list);
  return details;
}
