// The open conversation's header: who, fingerprint, verified badge,
// connection, key-changed warning (louder for a verified key) and refusal
// reason, and the button that opens the safety view; "No conversation open"
// when none is.

import { byTestId, changed, connectionText } from "./dom.js";
import { findPeer } from "../state.js";

/** @param {{toggleSafety: (open: boolean) => void}} actions */
export function createConversationView(actions, root = document) {
  const el = {
    conversation: byTestId("conversation", root),
    name: byTestId("conversation-name", root),
    id: byTestId("conversation-id", root),
    fingerprint: byTestId("conversation-fingerprint", root),
    connection: byTestId("conversation-connection", root),
    keyWarning: byTestId("conversation-key-warning", root),
    verified: byTestId("conversation-verified", root),
    safetyButton: byTestId("safety-button", root),
    error: byTestId("conversation-error", root),
    empty: byTestId("conversation-empty", root),
  };
  el.safetyButton.addEventListener("click", () => actions.toggleSafety(true));
  const memo = {};

  function render(state) {
    const id = state.selected;
    const peer = id === null ? undefined : findPeer(state, id);
    if (!changed(memo, [id, peer])) return;
    el.conversation.dataset.peerId = id === null ? "" : String(id);
    el.empty.hidden = id !== null;
    if (id === null) {
      el.name.textContent = "No conversation open";
      el.id.textContent = "";
      el.fingerprint.textContent = "";
      el.connection.textContent = "";
      el.keyWarning.hidden = true;
      el.verified.hidden = true;
      el.safetyButton.hidden = true;
      el.error.hidden = true;
      return;
    }
    el.name.textContent = peer && peer.name ? peer.name : `peer ${id}`;
    el.id.textContent = `#${id}`;
    el.fingerprint.textContent = peer ? peer.fingerprint || "" : "";
    if (peer) {
      const conn = connectionText(peer.connection);
      const online = peer.online ? "online" : "offline";
      el.connection.textContent = conn.address
        ? `${online} · ${conn.label} via ${conn.address}`
        : `${online} · ${conn.label}`;
    } else {
      el.connection.textContent = "not in the peer list";
    }
    el.keyWarning.hidden = !(peer && (peer.key_changed || peer.trust === "blocked"));
    el.keyWarning.classList.toggle("key-alarm", Boolean(peer && peer.verified_key_changed));
    el.keyWarning.textContent = peer && peer.trust === "blocked"
      ? "⛔ You blocked this peer's new key."
      : peer && peer.verified_key_changed
        ? "⚠ The key you verified for this peer changed: it may not be the same person."
        : "⚠ This peer's key changed since you first talked: it may not be the same person.";
    el.verified.hidden = !(peer && peer.verified);
    el.safetyButton.hidden = !peer || !peer.fingerprint;
    el.error.textContent = peer && peer.error ? peer.error : "";
    el.error.hidden = !(peer && peer.error);
  }

  return { render };
}
