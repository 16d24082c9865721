// The open conversation's header: who, fingerprint, verified badge,
// connection, key-changed warning (louder for a verified key) and refusal
// reason, and the button that opens the safety view; "No conversation open"
// when none is.

import { byTestId, changed, connectionText } from "./dom.js";
import { displayName, findPeer } from "../state.js";

/**
 * @param {{toggleSafety: (open: boolean) => void, rename: (peerId: number, nickname: string) => void,
 *          setAutoAccept: (peerId: number, bytes: number) => void}} actions
 */
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
    ownName: byTestId("conversation-own-name", root),
    renameButton: byTestId("rename-button", root),
    renameForm: byTestId("rename-form", root),
    renameInput: byTestId("rename-input", root),
    autoAccept: byTestId("auto-accept", root),
    autoAcceptSelect: byTestId("auto-accept-select", root),
  };
  el.safetyButton.addEventListener("click", () => actions.toggleSafety(true));
  // The nickname is the user's own name for the peer, kept by this webpeer only.
  el.renameButton.addEventListener("click", () => {
    const peer = findPeer(lastState, lastState.selected);
    el.renameInput.value = peer && peer.nickname ? peer.nickname : "";
    el.renameForm.hidden = false;
    el.renameInput.focus();
  });
  el.renameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    el.renameForm.hidden = true;
    if (lastState.selected !== null) actions.rename(lastState.selected, el.renameInput.value.trim());
  });
  el.renameInput.addEventListener("keydown", (event) => {
    if (event.key === "Escape") el.renameForm.hidden = true;
  });
  // Files from this peer up to the chosen size are accepted without asking
  // (stored by this webpeer: PUT /api/peers/N/settings).
  el.autoAcceptSelect.addEventListener("change", () => {
    if (lastState.selected !== null) actions.setAutoAccept(lastState.selected, Number(el.autoAcceptSelect.value));
  });
  let lastState = null;
  const memo = {};

  function render(state) {
    lastState = state;
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
      el.renameButton.hidden = true;
      el.renameForm.hidden = true;
      el.autoAccept.hidden = true;
      el.ownName.textContent = "";
      return;
    }
    el.name.textContent = displayName(peer) || `peer ${id}`;
    el.ownName.textContent = peer && peer.nickname && peer.name && peer.name !== peer.nickname ? `(${peer.name})` : "";
    el.renameButton.hidden = !peer;
    el.autoAccept.hidden = !peer;
    if (peer) showAutoAccept(peer.auto_accept_bytes || 0);
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

  /** The select shows the stored size; one set through the API that is not among its choices gets its own. */
  function showAutoAccept(bytes) {
    const value = String(bytes);
    if (![...el.autoAcceptSelect.options].some((option) => option.value === value)) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = `accept up to ${bytes} bytes`;
      el.autoAcceptSelect.append(option);
    }
    el.autoAcceptSelect.value = value;
  }

  return { render };
}
