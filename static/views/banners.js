// The banners: "disconnected from webpeer" (with the reconnect delay, or
// why the page is not signed in), "cannot save messages" while webpeer cannot
// write its history (me.storage_error), and a dismissable error.

import { byTestId, changed } from "./dom.js";

const SIGNED_OUT = "Not signed in: open the address that webpeer printed (it ends in ?token=…).";

/** @param {{dismissError: () => void}} actions */
export function createBannersView(actions, root = document) {
  const el = {
    disconnected: byTestId("disconnected-banner", root),
    disconnectedText: byTestId("banner-text", root),
    error: byTestId("error-banner", root),
    errorText: byTestId("error-text", root),
    storage: byTestId("storage-banner", root),
    storageText: byTestId("storage-text", root),
  };
  byTestId("error-dismiss", root).addEventListener("click", () => actions.dismissError());
  const linkMemo = {};
  const errorMemo = {};
  const storageMemo = {};

  function render(state) {
    const link = state.link;
    if (changed(linkMemo, [link])) {
      if (link.connected !== null) document.body.dataset.connected = link.connected ? "true" : "false";
      el.disconnected.hidden = link.connected !== false;
      // Once connected again the banner is hidden and keeps its last text.
      if (link.connected === false) {
        el.disconnectedText.textContent = link.signedOut
          ? SIGNED_OUT
          : `Disconnected from webpeer. Reconnecting in ${link.retryInSeconds} s…`;
      }
    }
    const storageError = state.me ? state.me.storage_error || null : null;
    if (changed(storageMemo, [storageError])) {
      if (storageError !== null) {
        el.storageText.textContent =
          `webpeer cannot save messages (${storageError}): nothing new is received or sent until it can; ` +
          "free some disk space and it carries on by itself.";
      }
      el.storage.hidden = storageError === null;
    }
    if (changed(errorMemo, [state.error])) {
      if (state.error !== null) el.errorText.textContent = state.error;
      el.error.hidden = state.error === null;
    }
  }

  return { render };
}
