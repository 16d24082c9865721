// The page's settings in the sidebar: "Send read receipts" (on by default;
// off, peers are not told which of their messages were read).

import { byTestId, changed } from "./dom.js";

/** @param {{setReadReceipts: (on: boolean) => void}} actions */
export function createSettingsView(actions, root = document) {
  const setting = byTestId("read-receipts-setting", root);
  const toggle = byTestId("read-receipts-toggle", root);
  toggle.addEventListener("change", () => actions.setReadReceipts(toggle.checked));
  const memo = {};

  function render(state) {
    if (!changed(memo, [state.settings])) return;
    setting.hidden = state.settings === null;
    if (state.settings !== null) toggle.checked = Boolean(state.settings.read_receipts);
  }

  return { render };
}
