// Telling the user about messages they are not looking at: "(3) peerlink" in
// the tab title (then "· alice": my name tells side-by-side tabs apart) and a favicon with a dot while anything is unread, and,
// once the user turns them on, desktop notifications (the Notification API)
// naming the sender with the text.
//
// Desktop notifications are opt-in twice: the browser's permission, asked
// only when the user presses the button (browsers ignore or punish asking
// unprompted), and the user's own switch, kept in localStorage, so turning
// them off here needs no trip to the browser's settings.

import { groupUnreadTotal } from "../group_state.js";
import { byTestId, changed } from "./dom.js";
import { rememberSwitch, switchedOn } from "./switches.js";
import { findPeer } from "../state.js";

const SWITCH_KEY = "peerlink:notifications";
const TITLE = "peerlink";
const ICON = "/static/favicon.svg";
const ICON_UNREAD = "/static/favicon-unread.svg";
const BODY_CHARS = 200; // notification bodies are cut by the system anyway; keep them short

/** Unread messages over all conversations (the open one, being read, has none). */
export function unreadTotal(state) {
  return state.peers.reduce((sum, peer) => sum + (peer.unread || 0), 0) + groupUnreadTotal(state);
}

/** @param {{showError: (error: string) => void, select: (peerId: number) => void}} actions */
export function createNotificationsView(actions, root = document) {
  const icon = byTestId("favicon", root);
  const toggle = byTestId("notify-toggle", root);
  const memo = {};
  let on = supported() && switchedOn(SWITCH_KEY) && Notification.permission === "granted";

  function drawToggle() {
    toggle.hidden = !supported();
    toggle.textContent = on ? "Desktop notifications: on" : "Desktop notifications: off";
    toggle.setAttribute("aria-pressed", String(on));
  }

  toggle.addEventListener("click", async () => {
    if (on) {
      on = false;
    } else {
      const permission = Notification.permission === "granted" ? "granted" : await Notification.requestPermission();
      on = permission === "granted";
      if (!on) actions.showError("The browser does not allow notifications for this page (see its site settings).");
    }
    rememberSwitch(SWITCH_KEY, on);
    drawToggle();
  });
  drawToggle();

  function render(state) {
    const total = unreadTotal(state);
    const name = state.me && state.me.name ? state.me.name : "";
    if (!changed(memo, [total, name])) return;
    root.title = `${total > 0 ? `(${total}) ` : ""}${TITLE}${name ? ` · ${name}` : ""}`;
    icon.href = total > 0 ? ICON_UNREAD : ICON;
    icon.dataset.unread = String(total > 0);
  }

  // A message the user is not reading arrived (main.js decides which).
  function notify(state, message) {
    if (!on || !supported() || Notification.permission !== "granted") return;
    const peer = findPeer(state, message.peer);
    const name = peer && peer.name ? `${peer.name} #${message.peer}` : `peer #${message.peer}`;
    const text = message.text.length > BODY_CHARS ? `${message.text.slice(0, BODY_CHARS)}…` : message.text;
    try {
      // The tag folds a burst from one peer into one notification; the text
      // is shown by the system as plain text.
      const shown = new Notification(name, { body: text, tag: `peer-${message.peer}`, icon: ICON });
      shown.addEventListener("click", () => {
        window.focus();
        actions.select(message.peer);
        shown.close();
      });
    } catch (_) {
      // Some platforms allow notifications only from a service worker: then none.
    }
  }

  return { render, notify };
}

function supported() {
  return typeof Notification === "function";
}
