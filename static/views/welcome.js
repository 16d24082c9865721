// The first-run card: "You are alice. Others add you with your id 1 ...",
// with a Copy button.  Shown while no other peer is known, until the user
// dismisses it (remembered in this browser's localStorage).

import { byTestId, changed } from "./dom.js";

const DISMISSED = "peerlink-welcome-dismissed";

export function createWelcomeView(root = document, storage = window.localStorage) {
  const el = {
    card: byTestId("welcome-card", root),
    name: byTestId("welcome-name", root),
    id: byTestId("welcome-id", root),
    fingerprint: byTestId("welcome-fingerprint", root),
    copied: byTestId("welcome-copied", root),
  };
  let dismissed = storage.getItem(DISMISSED) === "1";
  let myId = null;
  const memo = {};
  byTestId("welcome-dismiss", root).addEventListener("click", () => {
    dismissed = true;
    storage.setItem(DISMISSED, "1");
    el.card.hidden = true;
  });
  byTestId("welcome-copy", root).addEventListener("click", async () => {
    if (myId === null) return;
    try {
      await navigator.clipboard.writeText(String(myId));
      el.copied.textContent = "Copied.";
    } catch (_) {
      el.copied.textContent = `Copy failed: select the id ${myId} by hand.`;
    }
  });

  function render(state) {
    if (!changed(memo, [state.me, state.peers])) return;
    const me = state.me;
    myId = me && typeof me.id === "number" ? me.id : null;
    const others = state.peers.some((peer) => peer.id !== myId);
    el.card.hidden = dismissed || myId === null || others;
    if (me) {
      el.name.textContent = `${me.name || "(no name)"} #${myId ?? "?"}`;
      el.id.textContent = myId === null ? "" : String(myId);
      el.fingerprint.textContent = me.fingerprint || "";
    }
  }

  return { render };
}
