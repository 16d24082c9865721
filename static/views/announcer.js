// The page's voice for screen readers: a visually hidden live region
// (role=status, outside the message lists, which are not live regions) that
// says new messages from others in the open conversation, chosen by
// announce.js: "bob: <text>" for one, "200 new messages from bob" for a
// burst.  History (opening a conversation, older pages, reloads), our own
// messages, statuses and receipts say nothing.
//
// Arrivals are gathered for WINDOW_MS from the first, then said in one
// sentence: a burst that webpeer writes in several websocket frames (or that
// the page draws in several passes) is still one announcement.  What is said
// is a new element each time, so the same sentence twice ("bob: ok", "bob:
// ok") is announced twice.  Arrivals for a conversation the user left within
// the window are dropped.

import { announcementFor, openConversation } from "../announce.js";
import { displayName, findPeer } from "../state.js";
import { byTestId, make } from "./dom.js";

const WINDOW_MS = 500;

export function createAnnouncerView(root = document) {
  const region = byTestId("announcer", root);
  let gathered = [];
  let timer = null;
  let lastState = null;

  function say() {
    timer = null;
    const open = lastState === null ? null : openConversation(lastState);
    const arrivals = gathered.filter((arrival) => arrival.conversation === open);
    gathered = [];
    if (arrivals.length === 0) return;
    const group = open.startsWith("group:");
    const nameOf = (peerId) => displayName(findPeer(lastState, peerId)) || (group ? `#${peerId}` : `peer ${peerId}`);
    const line = make("p", "", announcementFor(arrivals, nameOf));
    line.dataset.testid = "announcement";
    region.replaceChildren(line);
  }

  return {
    render(state) {
      lastState = state;
    },
    /** New arrivals (announce.js arrivalsOf), said together at the end of the window. */
    add(arrivals, state) {
      if (arrivals.length === 0) return;
      lastState = state;
      gathered.push(...arrivals);
      if (timer === null) timer = setTimeout(say, WINDOW_MS);
    },
  };
}
