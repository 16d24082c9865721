// The message box: Enter sends, Shift+Enter is a newline; disabled while no
// conversation is open, and (with the reason shown above it) while the open
// peer's key change waits for the user's decision or its key is blocked.
// Each conversation has its own draft (drafts.js): what was typed for one
// peer never shows in another's composer, and comes back after a reload.

import { composerBlock } from "../state.js";
import { byTestId, changed } from "./dom.js";
import { loadDraft, saveDraft } from "../drafts.js";

/** @param {{send: (text: string) => void}} actions */
export function createComposerView(actions, root = document) {
  const form = byTestId("composer-form", root);
  const composer = byTestId("composer", root);
  const sendButton = byTestId("send-button", root);
  const note = byTestId("composer-note", root);
  const memo = {};
  const drafts = followDrafts(composer);

  function submit() {
    const text = composer.value;
    if (composer.disabled || text.trim() === "") return;
    composer.value = "";
    drafts.sent();
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
    drafts.render(state);
    const blocked = composerBlock(state);
    if (!changed(memo, [state.selected, blocked])) return;
    composer.disabled = state.selected === null || blocked !== null;
    sendButton.disabled = composer.disabled;
    note.hidden = blocked === null;
    note.textContent = blocked ?? "";
  }

  return { render, focus: () => composer.focus() };
}

// The composer holds the open conversation's draft: saved as it is typed,
// swapped when another conversation opens, dropped when it is sent.
function followDrafts(composer) {
  let peer = null; // whose draft the composer shows
  composer.addEventListener("input", () => {
    if (peer !== null) saveDraft(peer, composer.value);
  });
  return {
    render(state) {
      if (state.selected === peer) return;
      if (peer !== null) saveDraft(peer, composer.value);
      peer = state.selected;
      composer.value = peer === null ? "" : loadDraft(peer);
    },
    sent() {
      if (peer !== null) saveDraft(peer, "");
    },
  };
}
