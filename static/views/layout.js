// Which pane a narrow screen shows (app.css, below 700 px): the peer list
// while no conversation is open, the conversation (with a back button) once
// one is (a peer's or a group's).  Wide screens show both whatever this says.

import { byTestId } from "./dom.js";

/** @param {{closeConversation: () => void}} actions */
export function createLayoutView(actions, root = document) {
  const layout = byTestId("layout", root);
  byTestId("back-button", root).addEventListener("click", () => actions.closeConversation());
  function render(state) {
    const open = state.selected === null && state.selectedGroup === null ? "false" : "true";
    if (layout.dataset.open !== open) layout.dataset.open = open;
  }
  return { render };
}
