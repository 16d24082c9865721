// The open conversation's files (README "Files"): the attach button, drag
// and drop onto the conversation, pasting a picture; one row per file with
// its name, size, a progress bar (bytes, rate, time left), Cancel and
// Accept; pictures shown as thumbnails once complete, other files as a
// download link.
//
// It keeps its own list (the reducer of state.js does not know files): the
// open conversation's files are fetched when it opens, then follow the
// websocket's "file" events (main.js hands them to onEvent).  Names from
// peers reach the DOM as text only.

import { byTestId, make } from "./dom.js";

const PICTURES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
const ACTIVE = new Set(["offered", "accepted", "paused"]);
// How far along a status is: a file only ever moves forward (offered, then
// accepted, then one of the final ones); paused (a full disk on the
// receiver) and accepted alternate at the same stage.
const STAGE = new Map([["offered", 0], ["accepted", 1], ["paused", 1]]);

/**
 * Whether ``file`` is an older view than ``known`` (same id) and must not
 * replace it.  The answer to an upload or an Accept is a snapshot from
 * when the request was served, and the websocket may already have told of
 * later steps: a small file can be complete before the answer to its
 * Accept reaches the page, which then showed it "accepted" for good.
 */
export function isStale(known, file) {
  if (!known) return false;
  const stage = (status) => STAGE.get(status) ?? 2;
  return stage(file.status) < stage(known.status);
}

export function formatBytes(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function timeLeft(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 60) return `${Math.ceil(seconds)} s left`;
  return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s left`;
}

/**
 * @param {{showError: (text: string) => void}} actions
 * @param {{fetchFiles, uploadFiles, postFileAction}} api
 */
export function createFilesView(actions, api, root = document) {
  const el = {
    conversation: byTestId("conversation", root),
    list: byTestId("file-list", root),
    attach: byTestId("attach-button", root),
    input: byTestId("file-input", root),
    composer: byTestId("composer", root),
  };
  let peer = null; // the open conversation
  const files = new Map(); // id -> file (as the API shows it), this conversation's
  const rates = new Map(); // id -> bytes/s of the last progress event
  const rows = new Map(); // id -> <li>

  async function send(list) {
    if (peer === null || list.length === 0) return;
    try {
      for (const file of await api.uploadFiles(peer, list)) update(file);
    } catch (error) {
      actions.showError(`Could not send the file: ${error.message}`);
    }
  }

  el.attach.addEventListener("click", () => el.input.click());
  el.input.addEventListener("change", () => {
    const chosen = [...el.input.files];
    el.input.value = "";
    send(chosen);
  });
  el.conversation.addEventListener("dragover", (event) => {
    if (peer === null || !event.dataTransfer || ![...event.dataTransfer.types].includes("Files")) return;
    event.preventDefault();
    el.conversation.classList.add("drop-target");
  });
  el.conversation.addEventListener("dragleave", () => el.conversation.classList.remove("drop-target"));
  el.conversation.addEventListener("drop", (event) => {
    el.conversation.classList.remove("drop-target");
    if (peer === null || !event.dataTransfer || event.dataTransfer.files.length === 0) return;
    event.preventDefault();
    send([...event.dataTransfer.files]);
  });
  el.composer.addEventListener("paste", (event) => {
    const pasted = event.clipboardData ? [...event.clipboardData.files] : [];
    if (pasted.length === 0) return; // text: the composer's
    event.preventDefault();
    send(pasted);
  });

  async function act(file, action) {
    try {
      update(await api.postFileAction(file.id, action));
    } catch (error) {
      actions.showError(`Could not ${action} the file: ${error.message}`);
    }
  }

  function draw(file) {
    let row = rows.get(file.id);
    if (!row) {
      row = make("li", "file");
      row.dataset.testid = "file";
      rows.set(file.id, row);
      el.list.append(row);
    }
    row.dataset.fileId = file.id;
    row.dataset.status = file.status;
    row.classList.toggle("file-out", file.direction === "out");
    row.replaceChildren();
    const head = make("div", "file-head");
    head.append(make("span", "file-name", file.name), make("span", "file-size", formatBytes(file.size)));
    const status = make("span", "file-status", file.status);
    status.dataset.testid = "file-status";
    head.append(status);
    row.append(head);
    if (ACTIVE.has(file.status)) {
      const bar = make("progress", "file-progress");
      bar.dataset.testid = "file-progress";
      bar.max = Math.max(file.size, 1);
      bar.value = file.bytes;
      const rate = rates.get(file.id) || 0;
      const detail = [`${formatBytes(file.bytes)} of ${formatBytes(file.size)}`];
      if (rate > 0) detail.push(`${formatBytes(rate)}/s`, timeLeft((file.size - file.bytes) / rate));
      row.append(bar, make("span", "file-detail", detail.filter(Boolean).join(" · ")));
      if (file.status === "paused" && file.error) row.append(make("span", "file-error", file.error));
      const buttons = make("span", "file-actions");
      if (file.status === "paused") {
        const retry = make("button", "", "Retry");
        retry.type = "button";
        retry.dataset.testid = "file-retry";
        retry.addEventListener("click", () => act(file, "retry"));
        buttons.append(retry);
      }
      if (file.direction === "in" && file.status === "offered") {
        const accept = make("button", "", "Accept");
        accept.type = "button";
        accept.dataset.testid = "file-accept";
        accept.addEventListener("click", () => act(file, "accept"));
        buttons.append(accept);
      }
      const cancel = make("button", "secondary", "Cancel");
      cancel.type = "button";
      cancel.dataset.testid = "file-cancel";
      cancel.addEventListener("click", () => act(file, "cancel"));
      buttons.append(cancel);
      row.append(buttons);
    } else if (file.status === "complete") {
      const url = `/api/files/${encodeURIComponent(file.id)}`;
      if (PICTURES.has(file.mime)) {
        const picture = make("img", "file-thumb");
        picture.dataset.testid = "file-thumb";
        picture.alt = file.name;
        picture.src = url;
        row.append(picture);
      }
      const link = make("a", "file-link", "download");
      link.href = `${url}?download=1`;
      link.setAttribute("download", file.name);
      row.append(link);
    } else if (file.error) {
      row.append(make("span", "file-error", file.error));
    }
  }

  function update(file) {
    if (file.peer !== peer || isStale(files.get(file.id), file)) return;
    files.set(file.id, file);
    draw(file);
  }

  async function open(peerId) {
    files.clear();
    rates.clear();
    rows.clear();
    el.list.replaceChildren();
    if (peerId === null) return;
    try {
      const list = await api.fetchFiles(peerId);
      if (peer !== peerId) return; // another conversation opened meanwhile
      for (const file of list) if (!files.has(file.id)) update(file);
    } catch (error) {
      actions.showError(`Could not load the files: ${error.message}`);
    }
  }

  function render(state) {
    el.attach.disabled = state.selected === null;
    if (state.selected === peer) return;
    peer = state.selected;
    open(peer);
  }

  /** A websocket "file" event. */
  function onEvent(event) {
    if (!event.file) return;
    if (event.kind === "progress") rates.set(event.file.id, event.rate || 0);
    update(event.file);
  }

  return { render, onEvent };
}
