// What the user has read of each group, kept in localStorage (webpeer keeps
// no read state for groups): the time of the latest message read.  As in
// drafts.js, localStorage is per origin (port included) and may be missing or
// full: then every group message of a past session counts as read.

const PREFIX = "peerlink:group-read:";

export function loadReadMark(groupId) {
  try {
    const value = Number(localStorage.getItem(PREFIX + groupId));
    return Number.isFinite(value) && value > 0 ? value : 0;
  } catch (_) {
    return Infinity; // nothing remembered: nothing old counts as unread
  }
}

/** Moves the mark forward only (a late, older answer never makes messages unread again). */
export function saveReadMark(groupId, time) {
  try {
    if (time > loadReadMark(groupId)) localStorage.setItem(PREFIX + groupId, String(time));
  } catch (_) {
    // no storage: the mark lives as long as the page
  }
}
