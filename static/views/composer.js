// The message box: Enter sends, Shift+Enter is a newline; disabled while no
// conversation is open, and (with the reason shown above it) while the open
// peer's key change waits for the user's decision or its key is blocked.

import { composerBlock } from "../state.js";
import { byTestId, changed } from "./dom.js";

/** @param {{send: (text: string) => void}} actions */
export function createComposerView(actions, root = document) {
  const form = byTestId("composer-form", root);
  const composer = byTestId("composer", root);
  const sendButton = byTestId("send-button", root);
  const note = byTestId("composer-note", root);
  const memo = {};

  function submit() {
    const text = composer.value;
    if (composer.disabled || text.trim() === "") return;
    composer.value = "";
    actions.send(text);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  composer.addEventListener("keydown", (event) => {
    // While an input method composes, Enter belongs to it.
    const plainEnter = event.key === "Enter" && !event.shiftKey && !event.isComposing
      && !event.altKey && !event.ctrlKey && !event.metaKey;
    if (plainEnter) {
      event.preventDefault();
      submit();
    }
  });

  function render(state) {
    const blocked = composerBlock(state);
    if (!changed(memo, [state.selected, blocked])) return;
    composer.disabled = state.selected === null || blocked !== null;
    sendButton.disabled = composer.disabled;
    note.hidden = blocked === null;
    note.textContent = blocked ?? "";
  }

  return { render, focus: () => composer.focus() };
}
