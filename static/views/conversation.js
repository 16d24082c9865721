// The open conversation's header: who, fingerprint, connection, key-changed
// warning and refusal reason; "No conversation open" when none is.

import { byTestId, changed, connectionText } from "./dom.js";
import { findPeer } from "../state.js";

export function createConversationView(root = document) {
  const el = {
    conversation: byTestId("conversation", root),
    name: byTestId("conversation-name", root),
    id: byTestId("conversation-id", root),
    fingerprint: byTestId("conversation-fingerprint", root),
    connection: byTestId("conversation-connection", root),
    keyWarning: byTestId("conversation-key-warning", root),
    error: byTestId("conversation-error", root),
    empty: byTestId("conversation-empty", root),
  };
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
    el.keyWarning.hidden = !(peer && peer.key_changed);
    el.error.textContent = peer && peer.error ? peer.error : "";
    el.error.hidden = !(peer && peer.error);
  }

  return { render };
}
