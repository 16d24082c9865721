// "New group" in the sidebar: a name and the members, ticked in a list of the
// known peers (by id).  webpeer makes the group and sends it to them
// (POST /api/groups); the new group then opens.

import { displayName } from "../state.js";
import { byTestId, changed, make } from "./dom.js";

/** @param {{createGroup: (name: string, members: number[]) => Promise<boolean>, showError: (text: string) => void}} actions */
export function createNewGroupView(actions, root = document) {
  const el = {
    toggle: byTestId("new-group-button", root),
    form: byTestId("new-group-form", root),
    name: byTestId("new-group-name", root),
    list: byTestId("new-group-members", root),
    none: byTestId("new-group-no-peers", root),
    create: byTestId("new-group-create", root),
    cancel: byTestId("new-group-cancel", root),
  };
  const memo = {};

  function show(open) {
    el.form.hidden = !open;
    el.toggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) el.name.focus();
    else el.toggle.focus();
  }
  el.toggle.addEventListener("click", () => show(el.form.hidden));
  el.cancel.addEventListener("click", () => show(false));
  el.form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault(); // not the page's "back to the list"
      show(false);
    }
  });
  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = el.name.value.trim();
    if (name === "") {
      actions.showError("A group needs a name.");
      return;
    }
    const members = [...el.list.querySelectorAll("input:checked")].map((box) => Number(box.value));
    el.create.disabled = true;
    try {
      if (await actions.createGroup(name, members)) {
        el.name.value = "";
        for (const box of el.list.querySelectorAll("input")) box.checked = false;
        el.form.hidden = true;
        el.toggle.setAttribute("aria-expanded", "false");
      }
    } finally {
      el.create.disabled = false;
    }
  });

  function render(state) {
    if (!changed(memo, [state.peers, state.me])) return;
    const me = state.me ? state.me.id : null;
    const ticked = new Set([...el.list.querySelectorAll("input:checked")].map((box) => box.value));
    // Only peers whose key is known (seen online once) can be members: webpeer refuses others.
    const peers = state.peers.filter((peer) => peer.id !== me && peer.fingerprint);
    el.list.replaceChildren(...peers.map((peer) => {
      const item = make("li", "new-group-member");
      const label = make("label");
      const box = make("input");
      box.type = "checkbox";
      box.value = String(peer.id);
      box.dataset.testid = "new-group-member";
      box.checked = ticked.has(box.value);
      label.append(box, ` ${displayName(peer) || "(no name)"} `, make("span", "peer-id", `#${peer.id}`));
      item.append(label);
      return item;
    }));
    el.none.hidden = peers.length > 0;
  }

  return { render };
}
