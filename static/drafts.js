// Half-written messages, one per conversation, kept in localStorage so they
// survive a reload.  localStorage is per origin, and the origin includes the
// port, so side-by-side webpeers on one machine keep their drafts apart.
// Storage may be unavailable or full (private mode, quotas): a draft is then
// only lost, never an error.

const PREFIX = "peerlink:draft:";

export function loadDraft(peerId) {
  try {
    return localStorage.getItem(PREFIX + peerId) ?? "";
  } catch (_) {
    return "";
  }
}

/** An empty or blank text removes the draft. */
export function saveDraft(peerId, text) {
  try {
    if (text.trim() === "") localStorage.removeItem(PREFIX + peerId);
    else localStorage.setItem(PREFIX + peerId, text);
  } catch (_) {
    // no storage: the draft lives as long as the composer shows it
  }
}
