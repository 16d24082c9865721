// What a screen reader is told about new messages (views/announcer.js says
// it through a visually hidden live region).  Pure: no DOM, no timers, so
// tests/js/announce.test.mjs runs it under Node.
//
// Only what a person wants to hear, as Signal Desktop and Element do: new
// messages from others in the conversation that is open.  Not history (the
// page loaded when a conversation opens, older pages loaded by scrolling,
// a reload after a reconnect: those come as history events, never as
// arrivals), not our own messages, not a message the page already had (a
// status change or a receipt brings the same id again).  A burst is one
// summary ("200 new messages from bob"), never one announcement per message.

import { conversationOf, isMine } from "./state.js";
import { groupMessagesOf } from "./group_state.js";

// A screen reader reads a 64 KB message to the end; the list holds all of it.
export const ANNOUNCED_TEXT_CHARS = 300;
// Named senders in a summary; more are counted ("from 5 people").
const NAMED_SENDERS = 3;

/**
 * The messages of `event` (a reducer event) that are new arrivals from others
 * in the conversation open in `before` (the state the event found), each as
 * {conversation, from, text}: `conversation` is "peer:<id>" or "group:<id>".
 */
export function arrivalsOf(before, event) {
  if (!event || typeof event !== "object") return [];
  let candidates;
  switch (event.type) {
    case "message":
      candidates = [event.message];
      break;
    case "message-burst":
      candidates = Array.isArray(event.events) ? event.events.map((inner) => inner && inner.message) : [];
      break;
    case "group-message":
      candidates = [event.message];
      break;
    case "group-messages":
      candidates = Array.isArray(event.messages) ? event.messages : [];
      break;
    default:
      return [];
  }
  const seen = new Set();
  const arrivals = [];
  for (const message of candidates) {
    if (!message || typeof message !== "object" || isMine(before, message)) continue;
    const key = openConversationOf(before, message);
    if (key === null || seen.has(`${key} ${message.id}`)) continue;
    seen.add(`${key} ${message.id}`);
    arrivals.push({ conversation: key, from: message.from, text: typeof message.text === "string" ? message.text : "" });
  }
  return arrivals;
}

// The open conversation's key when `message` is new to it, else null.
function openConversationOf(state, message) {
  if (message.group) {
    if (message.group !== state.selectedGroup || groupMessagesOf(state, message.group).has(message.id)) return null;
    return `group:${message.group}`;
  }
  if (message.peer !== state.selected || state.selected === null) return null;
  if (conversationOf(state, message.peer).has(message.id)) return null;
  return `peer:${message.peer}`;
}

/** The key of the conversation `state` has open ("peer:<id>", "group:<id>"), or null. */
export function openConversation(state) {
  if (state.selected !== null && state.selected !== undefined) return `peer:${state.selected}`;
  if (state.selectedGroup !== null && state.selectedGroup !== undefined) return `group:${state.selectedGroup}`;
  return null;
}

/**
 * The one sentence for `arrivals` (those of one window): "bob: <text>" for
 * one message, "N new messages from bob" for more ("from bob and carol",
 * "from 4 people" in a group); "" for none.  `nameOf(peerId)` names a sender.
 */
export function announcementFor(arrivals, nameOf) {
  if (arrivals.length === 0) return "";
  if (arrivals.length === 1) return `${nameOf(arrivals[0].from)}: ${shortened(arrivals[0].text)}`;
  const senders = [...new Set(arrivals.map((arrival) => arrival.from))].map(nameOf);
  return `${arrivals.length} new messages from ${listed(senders)}`;
}

function listed(names) {
  if (names.length > NAMED_SENDERS) return `${names.length} people`;
  if (names.length === 1) return names[0];
  return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

// One line (a screen reader pauses at each line break) and at most ANNOUNCED_TEXT_CHARS.
function shortened(text) {
  const line = text.replace(/\s+/g, " ").trim();
  const chars = [...line]; // code points: a cut never splits an emoji's surrogate pair
  if (chars.length <= ANNOUNCED_TEXT_CHARS) return line;
  return `${chars.slice(0, ANNOUNCED_TEXT_CHARS - 1).join("").trimEnd()}…`;
}
