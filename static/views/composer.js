// The message box: Enter sends, Shift+Enter is a newline; disabled while no
// conversation is open.

import { byTestId, changed } from "./dom.js";

/** @param {{send: (text: string) => void}} actions */
export function createComposerView(actions, root = document) {
  const form = byTestId("composer-form", root);
  const composer = byTestId("composer", root);
  const sendButton = byTestId("send-button", root);
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
    if (!changed(memo, [state.selected])) return;
    composer.disabled = state.selected === null;
    sendButton.disabled = state.selected === null;
  }

  return { render, focus: () => composer.focus() };
}
