// The webpeer's JSON API over HTTP (README "JSON API").
//
// The token lives in an HttpOnly cookie that the server set when the page was
// opened with ?token=; "same-origin" credentials send it, so JavaScript never
// sees the token.  Every call resolves to the parsed JSON (null for 204) or
// rejects with an Error whose message is the server's {"error": ...} text.

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) {
    // not JSON: fall through
  }
  return `HTTP ${response.status}`;
}

async function getJson(url, headers = {}) {
  const response = await fetch(url, { headers, credentials: "same-origin" });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function postJson(url, body, method = "POST") {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await errorText(response));
  return response.status === 204 ? null : response.json();
}

export function fetchMe() {
  return getJson("/api/me");
}

export function fetchPeers() {
  return getJson("/api/peers");
}

export function fetchMessages(peerId, limit = 500) {
  return getJson(`/api/messages?peer=${encodeURIComponent(peerId)}&limit=${limit}`, { Accept: "application/json" });
}

/** Up to `limit` messages just before message `beforeId`, oldest first ([] at the start). */
export function fetchOlderMessages(peerId, beforeId, limit) {
  const query = `peer=${encodeURIComponent(peerId)}&before=${encodeURIComponent(beforeId)}&limit=${limit}`;
  return getJson(`/api/messages?${query}`, { Accept: "application/json" });
}

export function postMessage(to, text) {
  return postJson("/api/messages", { to, text });
}

export function postRetry(messageId) {
  return postJson(`/api/messages/${encodeURIComponent(messageId)}/retry`);
}

export function postCancel(messageId) {
  return postJson(`/api/messages/${encodeURIComponent(messageId)}/cancel`);
}

export function fetchFiles(peerId) {
  return getJson(`/api/files?peer=${encodeURIComponent(peerId)}`, { Accept: "application/json" });
}

/** Offer files (File objects) to a peer; resolves to the files as stored. */
export async function uploadFiles(peerId, files) {
  const form = new FormData();
  form.append("to", String(peerId));
  for (const file of files) form.append("file", file, file.name || "pasted");
  const response = await fetch("/api/files", { method: "POST", body: form, credentials: "same-origin" });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

/** action: "accept" | "cancel"; resolves to the file. */
export function postFileAction(fileId, action) {
  return postJson(`/api/files/${encodeURIComponent(fileId)}/${action}`);
}

export function postRead(peerId) {
  return postJson(`/api/peers/${encodeURIComponent(peerId)}/read`);
}

/** True when this browser has no valid token cookie (as opposed to "webpeer is down"). */
export async function isSignedOut() {
  try {
    const response = await fetch("/api/me", { credentials: "same-origin" });
    return response.status === 401;
  } catch (_) {
    return false;
  }
}

export function fetchSafety(peerId) {
  return getJson(`/api/peers/${encodeURIComponent(peerId)}/safety`, { Accept: "application/json" });
}

/** The QR code of the peer's safety number (an SVG the server draws); `version` changes with the key. */
export function safetyQrUrl(peerId, version) {
  return `/api/peers/${encodeURIComponent(peerId)}/safety.svg?v=${encodeURIComponent(version)}`;
}

/** action: "accept" | "block" | "verify" | "unverify"; resolves to the new safety answer. */
export function postTrust(peerId, action) {
  return postJson(`/api/peers/${encodeURIComponent(peerId)}/trust`, { action });
}

/** Put an id on the peer list; resolves to its peer object (rejects "unknown peer N" for an id never given out). */
export function postContact(peerId) {
  return postJson("/api/peers", { id: peerId });
}

/** The user's own name for a peer ("" forgets it). */
export function putNickname(peerId, nickname) {
  return postJson(`/api/peers/${encodeURIComponent(peerId)}/nickname`, { nickname }, "PUT");
}

/** A peer's settings: `{auto_accept_bytes}` (its files up to that size need no accept; 0: ask). */
export function putPeerSettings(peerId, settings) {
  return postJson(`/api/peers/${encodeURIComponent(peerId)}/settings`, settings, "PUT");
}

/** The latest messages with the peer having every word of `query`, newest first. */
export function fetchSearch(query, peerId, limit = 50) {
  const params = new URLSearchParams({ q: query, limit: String(limit) });
  if (peerId !== null) params.set("peer", String(peerId));
  return getJson(`/api/search?${params}`, { Accept: "application/json" });
}

export function fetchSettings() {
  return getJson("/api/settings", { Accept: "application/json" });
}

/** Change some settings ({read_receipts: bool}); resolves to all of them. */
export function putSettings(changes) {
  return postJson("/api/settings", changes, "PUT");
}

// ---------------------------------------------------------------- groups (README "JSON API")

export function fetchGroups() {
  return getJson("/api/groups", { Accept: "application/json" });
}

export function postGroup(name, members) {
  return postJson("/api/groups", { name, members });
}

export function fetchGroupMessages(groupId, limit) {
  return getJson(`/api/groups/${encodeURIComponent(groupId)}/messages?limit=${limit}`, { Accept: "application/json" });
}

/** Every membership change of the group, oldest first (the lines of its conversation). */
export function fetchGroupChanges(groupId) {
  return getJson(`/api/groups/${encodeURIComponent(groupId)}/changes`, { Accept: "application/json" });
}

export function postGroupMessage(groupId, text) {
  return postJson(`/api/groups/${encodeURIComponent(groupId)}/messages`, { text });
}

export function postGroupMembers(groupId, members) {
  return postJson(`/api/groups/${encodeURIComponent(groupId)}/members`, { members });
}

export function deleteGroupMember(groupId, peerId) {
  return postJson(`/api/groups/${encodeURIComponent(groupId)}/members/${encodeURIComponent(peerId)}`, undefined, "DELETE");
}

export function postGroupLeave(groupId) {
  return postJson(`/api/groups/${encodeURIComponent(groupId)}/leave`);
}
