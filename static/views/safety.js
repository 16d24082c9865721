// The open peer's key: old and new fingerprints side by side, the safety
// number and its QR code, and the user's decision (Accept / Block / Mark as
// verified / Unverify).  Shown by itself while the peer's key change is
// pending or its key is blocked; for a trusted peer when the user opens it.

import { safetyQrUrl } from "../api.js";
import { findPeer, showsSafety } from "../state.js";
import { byTestId, changed } from "./dom.js";

/** @param {{trust: (action: string) => void, toggleSafety: (open: boolean) => void}} actions */
export function createSafetyView(actions, root = document) {
  const el = {
    panel: byTestId("safety-panel", root),
    alarm: byTestId("safety-alarm", root),
    old: byTestId("safety-old", root),
    oldFingerprint: byTestId("safety-old-fingerprint", root),
    newLabel: byTestId("safety-new-label", root),
    theirFingerprint: byTestId("safety-their-fingerprint", root),
    myFingerprint: byTestId("safety-my-fingerprint", root),
    number: byTestId("safety-number", root),
    qr: byTestId("safety-qr", root),
    accept: byTestId("trust-accept", root),
    block: byTestId("trust-block", root),
    verify: byTestId("trust-verify", root),
    unverify: byTestId("trust-unverify", root),
    close: byTestId("safety-close", root),
  };
  for (const action of ["accept", "block", "verify", "unverify"]) {
    el[action].addEventListener("click", () => actions.trust(action));
  }
  el.close.addEventListener("click", () => actions.toggleSafety(false));
  const memo = {};

  function render(state) {
    const shown = showsSafety(state);
    const peer = state.selected === null ? undefined : findPeer(state, state.selected);
    if (!changed(memo, [shown, peer, state.safety])) return;
    el.panel.hidden = !shown;
    if (!shown || !peer) return;
    const trust = peer.trust || "trusted";
    const alarm = Boolean(peer.verified_key_changed);
    el.panel.dataset.trust = trust;
    el.panel.dataset.alarm = alarm ? "true" : "false";
    el.alarm.hidden = !alarm && trust === "trusted";
    el.alarm.textContent = alarm
      ? "⚠ The key you VERIFIED for this peer was replaced. Do not accept the new key unless you compared the new safety number with them."
      : trust === "changed"
        ? "⚠ This peer's key changed. Messages to them are held until you accept the new key."
        : trust === "blocked" ? "You blocked this key: nothing goes to it and nothing from it is kept." : "";

    const safety = state.safety && state.safety.peer === peer.id ? state.safety : null;
    const previous = safety ? safety.previous_fingerprint : null;
    el.old.hidden = !(previous && trust !== "trusted");
    el.oldFingerprint.textContent = previous || "";
    el.newLabel.textContent = trust === "trusted" ? "their key" : "their new key";
    el.theirFingerprint.textContent = safety ? safety.their_fingerprint : "…";
    el.myFingerprint.textContent = safety ? safety.my_fingerprint : "…";
    el.number.textContent = safety ? safety.safety_number : "loading…";
    el.number.dataset.peer = safety ? String(safety.peer) : "";
    if (safety) el.qr.src = safetyQrUrl(peer.id, safety.their_fingerprint);
    el.qr.hidden = !safety;

    el.accept.hidden = trust === "trusted";
    el.accept.textContent = trust === "blocked" ? "Unblock and accept this key" : "Accept new key";
    el.block.hidden = trust === "blocked";
    el.verify.hidden = trust === "blocked" || Boolean(peer.verified);
    el.unverify.hidden = !peer.verified;
    el.close.hidden = trust !== "trusted";
  }

  return { render };
}
