// Search in the open conversation: a search box in its header, and the
// matches (newest first, each with its date and who wrote it) in a panel
// under it.  Escape or the close button hides the panel.  A match is a
// button: it shows the message in the conversation (actions.jumpTo).

import { byTestId, changed, make } from "./dom.js";
import { displayName, findPeer, isMine } from "../state.js";

/** @param {{search: (query: string) => void, closeSearch: () => void, jumpTo: (messageId: string) => void}} actions */
export function createSearchView(actions, root = document) {
  const form = byTestId("search-form", root);
  const input = byTestId("search-input", root);
  const panel = byTestId("search-panel", root);
  const summary = byTestId("search-summary", root);
  const results = byTestId("search-results", root);
  const memo = {};
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = input.value.trim();
    if (query) actions.search(query);
    else actions.closeSearch();
  });
  const close = () => {
    input.value = "";
    actions.closeSearch();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });
  byTestId("search-close", root).addEventListener("click", close);

  function render(state) {
    if (!changed(memo, [state.selected, state.search, state.me])) return;
    form.hidden = state.selected === null;
    const search = state.search;
    panel.hidden = search === null;
    if (search === null) {
      results.replaceChildren();
      return;
    }
    const count = search.results.length;
    summary.textContent = count === 0
      ? `No message has “${search.query}”.`
      : `${count}${count >= 50 ? "+" : ""} message${count === 1 ? "" : "s"} with “${search.query}”, newest first`;
    const peer = findPeer(state, search.peer);
    results.replaceChildren(...search.results.map((message) => {
      const item = make("li", "search-result");
      item.dataset.testid = "search-result";
      const who = isMine(state, message) ? "you" : displayName(peer) || `peer ${search.peer}`;
      const when = new Date(message.time * 1000);
      const jump = make("button", "search-jump");
      jump.type = "button";
      jump.dataset.testid = "search-jump";
      jump.append(make("span", "search-meta", `${who} · ${when.toLocaleString()}`), make("span", "search-text", message.text));
      jump.addEventListener("click", () => actions.jumpTo(message.id));
      item.append(jump);
      return item;
    }));
  }

  return { render };
}
