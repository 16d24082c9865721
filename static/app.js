// webpeer page: no framework, no build step.
//
// Everything a peer controls (names, message texts, fingerprints, addresses)
// reaches the DOM through textContent only; this file never uses innerHTML.
// The websocket protocol is described at the top of webpeer/web.py.  The
// HttpOnly cookie authenticates both fetch() and the websocket, so the token
// never appears in JavaScript.
(() => {
  "use strict";

  const MAX_TEXT_BYTES = 64 * 1024;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  const STATUS_LABELS = {
    queued: "queued",
    sending: "sending…",
    sent: "sent ✓",
    delivered: "delivered ✓✓",
    failed: "failed",
    received: "",
  };

  const state = {
    me: null,
    peers: new Map(), // id -> peer
    peerOrder: [], // ids in the server's order
    conversations: new Map(), // peer id -> Map(message id -> message)
    messagePeer: new Map(), // message id -> peer id
    liveUpdatedAt: new Map(), // message id -> performance.now() of the last live update
    pending: new Map(), // client id -> {clientId, peer, text, time, status, error}
    selected: null, // peer id
    ws: null,
    connected: false,
    attempts: 0,
    reconnectTimer: null,
    nextClientId: 1,
  };

  const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
  const el = {};

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function peerLabel(id) {
    const peer = state.peers.get(id);
    return peer && peer.name ? peer.name : `peer ${id}`;
  }

  // ------------------------------------------------------------ header

  function renderMe() {
    const me = state.me;
    if (!me) return;
    el.myName.textContent = me.name || "(no name)";
    el.myId.textContent = me.id === null || me.id === undefined ? "?" : String(me.id);
    el.myFingerprint.textContent = me.fingerprint || "";
    el.myAddress.textContent = me.public_address || "unknown yet";
    const nat = me.nat || {};
    el.myNat.textContent = nat.type && nat.type !== "unknown" ? nat.type : (nat.note ? "unknown" : "not known yet");
    el.myNat.title = nat.type && nat.type !== "unknown"
      ? `mapping ${nat.mapping}, filtering ${nat.filtering}`
      : (nat.note || "asked of the rendezvous server after registering");
    const registered = Boolean(me.registered);
    el.serverStatus.textContent = registered
      ? `registered with ${me.server}`
      : `not registered (server ${me.server || "?"})`;
    el.serverDot.dataset.state = registered ? "ok" : "down";
    document.title = me.name ? `${me.name} · webpeer` : "webpeer";
  }

  // ------------------------------------------------------------ peers

  function setPeers(list) {
    state.peers = new Map();
    state.peerOrder = [];
    for (const peer of list) {
      state.peers.set(peer.id, peer);
      state.peerOrder.push(peer.id);
    }
    renderPeers();
    renderConversationHeader();
  }

  function connectionText(connection) {
    if (!connection) return { state: "none", label: "not connected", address: "" };
    return { state: connection.state, label: connection.state, address: connection.address || "" };
  }

  function renderPeerItem(peer) {
    const item = make("li", "peer");
    item.dataset.testid = "peer-item";
    item.dataset.peerId = String(peer.id);
    item.dataset.online = peer.online ? "true" : "false";
    item.tabIndex = 0;
    item.setAttribute("role", "button");
    if (peer.online) item.classList.add("online");
    if (peer.id === state.selected) item.classList.add("selected");

    const top = make("div", "peer-top");
    const dot = make("span", "dot");
    dot.dataset.testid = "online-dot";
    dot.title = peer.online ? "online" : "offline";
    top.append(dot);
    const name = make("span", "peer-name", peer.name || "(no name)");
    name.dataset.testid = "peer-name";
    top.append(name, make("span", "peer-id", `#${peer.id}`));
    // The open conversation is being read: no badge, even before the server agrees.
    const reading = peer.id === state.selected && document.visibilityState === "visible";
    if (peer.unread > 0 && !reading) {
      const badge = make("span", "badge", peer.unread > 99 ? "99+" : peer.unread);
      badge.dataset.testid = "unread-badge";
      badge.title = `${peer.unread} unread`;
      top.append(badge);
    }
    item.append(top);

    const conn = connectionText(peer.connection);
    const line = make("div", "peer-conn");
    const stateSpan = make("span", `conn-state conn-${conn.state}`, conn.label);
    stateSpan.dataset.testid = "connection-state";
    stateSpan.dataset.state = conn.state;
    line.append(stateSpan);
    if (conn.address) {
      const address = make("span", "conn-address mono", conn.address);
      address.dataset.testid = "connection-address";
      line.append(address);
    }
    item.append(line);

    if (peer.key_changed) {
      const warning = make("div", "key-changed", "⚠ key changed");
      warning.dataset.testid = "key-warning";
      warning.title = "This peer's key is not the one seen before";
      item.append(warning);
    }
    if (peer.error) {
      const error = make("div", "peer-error", peer.error);
      error.dataset.testid = "peer-error";
      item.append(error);
    }
    return item;
  }

  function renderPeers() {
    const items = [];
    for (const id of state.peerOrder) {
      const peer = state.peers.get(id);
      if (state.me && peer.id === state.me.id) continue;
      items.push(renderPeerItem(peer));
    }
    el.peerList.replaceChildren(...items);
    el.noPeers.hidden = items.length > 0;
  }

  function updatePeer(id, changes) {
    const peer = state.peers.get(id);
    if (!peer) return;
    Object.assign(peer, changes);
    renderPeers();
    if (id === state.selected) renderConversationHeader();
  }

  // ------------------------------------------------------------ conversation

  function conversation(peerId) {
    let conv = state.conversations.get(peerId);
    if (!conv) {
      conv = new Map();
      state.conversations.set(peerId, conv);
    }
    return conv;
  }

  function isMine(message) {
    return state.me !== null && message.from === state.me.id;
  }

  function renderConversationHeader() {
    const id = state.selected;
    el.conversation.dataset.peerId = id === null ? "" : String(id);
    el.composer.disabled = id === null;
    el.sendButton.disabled = id === null;
    el.conversationEmpty.hidden = id !== null;
    if (id === null) {
      el.convName.textContent = "No conversation open";
      el.convId.textContent = "";
      el.convFingerprint.textContent = "";
      el.convConnection.textContent = "";
      el.convKeyWarning.hidden = true;
      el.convError.hidden = true;
      return;
    }
    const peer = state.peers.get(id);
    el.convName.textContent = peerLabel(id);
    el.convId.textContent = `#${id}`;
    el.convFingerprint.textContent = peer ? peer.fingerprint || "" : "";
    if (peer) {
      const conn = connectionText(peer.connection);
      const online = peer.online ? "online" : "offline";
      el.convConnection.textContent = conn.address
        ? `${online} · ${conn.label} via ${conn.address}`
        : `${online} · ${conn.label}`;
    } else {
      el.convConnection.textContent = "not in the peer list";
    }
    el.convKeyWarning.hidden = !(peer && peer.key_changed);
    el.convError.textContent = peer && peer.error ? peer.error : "";
    el.convError.hidden = !(peer && peer.error);
  }

  function formatTime(seconds) {
    const date = new Date(seconds * 1000);
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function messageElement(message, pending) {
    const item = make("li", "message");
    item.dataset.testid = "message";
    const mine = pending ? true : isMine(message);
    item.classList.add(mine ? "mine" : "theirs");
    if (pending) {
      item.dataset.clientId = pending.clientId;
    } else {
      item.dataset.messageId = message.id;
    }
    item.dataset.status = message.status;
    item.dataset.time = String(message.time);

    const bubble = make("div", "bubble");
    const text = make("div", "message-text", message.text);
    text.dataset.testid = "message-text";
    bubble.append(text);

    const meta = make("div", "meta");
    meta.append(make("time", "time", formatTime(message.time)));
    if (mine) {
      const status = make("span", `status status-${message.status}`, STATUS_LABELS[message.status] ?? message.status);
      status.dataset.testid = "message-status";
      meta.append(status);
    }
    if (message.status === "failed") {
      if (message.error) {
        const error = make("span", "message-error", message.error);
        error.dataset.testid = "message-error";
        meta.append(error);
      }
      const retry = make("button", "retry", "Retry");
      retry.type = "button";
      retry.dataset.testid = "retry-button";
      retry.addEventListener("click", () => (pending ? resendPending(pending.clientId) : retryMessage(message.id)));
      meta.append(retry);
    }
    bubble.append(meta);
    item.append(bubble);
    return item;
  }

  function nearBottom() {
    const list = el.messageList;
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function scrollToBottom() {
    el.messageList.scrollTop = el.messageList.scrollHeight;
  }

  function renderConversation() {
    const id = state.selected;
    if (id === null) {
      el.messageList.replaceChildren();
      return;
    }
    const messages = [...conversation(id).values()].sort((a, b) => a.time - b.time);
    const items = messages.map((m) => messageElement(m, null));
    for (const p of state.pending.values()) {
      if (p.peer === id) items.push(messageElement(p, p));
    }
    el.messageList.replaceChildren(...items);
    scrollToBottom();
  }

  // Insert or replace one message element, keeping the list in time order.
  function placeMessage(message) {
    if (message.peer !== state.selected) return;
    const stick = nearBottom() || isMine(message);
    const fresh = messageElement(message, null);
    const old = el.messageList.querySelector(`[data-message-id="${CSS.escape(message.id)}"]`);
    if (old) {
      old.replaceWith(fresh);
    } else {
      let before = null;
      for (const node of el.messageList.children) {
        if (node.dataset.clientId) {
          before = before || node; // confirmed messages go above the still-pending ones
        } else if (Number(node.dataset.time) > message.time) {
          before = node;
          break;
        }
      }
      el.messageList.insertBefore(fresh, before);
    }
    if (stick) scrollToBottom();
  }

  function storeMessage(message, live) {
    conversation(message.peer).set(message.id, message);
    state.messagePeer.set(message.id, message.peer);
    if (live) state.liveUpdatedAt.set(message.id, performance.now());
    placeMessage(message);
  }

  function removePending(clientId) {
    state.pending.delete(clientId);
    const node = el.messageList.querySelector(`[data-client-id="${CSS.escape(clientId)}"]`);
    if (node) node.remove();
  }

  function renderPending(pending) {
    if (pending.peer !== state.selected) return;
    const fresh = messageElement(pending, pending);
    const old = el.messageList.querySelector(`[data-client-id="${CSS.escape(pending.clientId)}"]`);
    if (old) old.replaceWith(fresh);
    else el.messageList.append(fresh);
    scrollToBottom();
  }

  async function loadHistory(peerId) {
    const started = performance.now();
    let messages;
    try {
      const response = await fetch(`/api/messages?peer=${encodeURIComponent(peerId)}`, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (!response.ok) throw new Error(await errorText(response));
      messages = await response.json();
    } catch (error) {
      showError(`Could not load the conversation: ${error.message}`);
      return;
    }
    const conv = conversation(peerId);
    for (const message of messages) {
      // A live event that arrived after this request started is newer than the snapshot.
      const live = state.liveUpdatedAt.get(message.id);
      if (live !== undefined && live > started && conv.has(message.id)) continue;
      conv.set(message.id, message);
      state.messagePeer.set(message.id, message.peer);
    }
    if (state.selected === peerId) renderConversation();
  }

  function selectPeer(peerId, { focus = true } = {}) {
    state.selected = peerId;
    history.replaceState(null, "", `#peer-${peerId}`);
    renderPeers();
    renderConversationHeader();
    renderConversation();
    markRead(peerId);
    loadHistory(peerId);
    if (focus) el.composer.focus();
  }

  // ------------------------------------------------------------ actions

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) {
      // not JSON: fall through
    }
    return `HTTP ${response.status}`;
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await errorText(response));
    return response.status === 204 ? null : response.json();
  }

  function wsSend(payload) {
    if (state.ws && state.connected && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify(payload));
      return true;
    }
    return false;
  }

  function markRead(peerId) {
    const peer = state.peers.get(peerId);
    if (peer && peer.unread) updatePeer(peerId, { unread: 0 });
    if (!wsSend({ type: "read", peer: peerId })) {
      postJson(`/api/peers/${encodeURIComponent(peerId)}/read`).catch(() => {});
    }
  }

  function failPending(clientId, error) {
    const pending = state.pending.get(clientId);
    if (!pending) return;
    pending.status = "failed";
    pending.error = error;
    renderPending(pending);
  }

  function sendText(peerId, text) {
    const clientId = `c${Date.now().toString(36)}-${state.nextClientId++}`;
    const pending = { clientId, peer: peerId, text, time: Date.now() / 1000, status: "sending", error: null };
    state.pending.set(clientId, pending);
    renderPending(pending);
    const size = new TextEncoder().encode(text).length;
    if (size > MAX_TEXT_BYTES) {
      failPending(clientId, `too long: ${size} bytes, the limit is ${MAX_TEXT_BYTES}`);
      return;
    }
    if (wsSend({ type: "send", to: peerId, text, client_id: clientId })) return;
    postJson("/api/messages", { to: peerId, text })
      .then((message) => {
        removePending(clientId);
        storeMessage(message, true);
      })
      .catch((error) => failPending(clientId, error.message));
  }

  function resendPending(clientId) {
    const pending = state.pending.get(clientId);
    if (!pending) return;
    removePending(clientId);
    sendText(pending.peer, pending.text);
  }

  function retryMessage(messageId) {
    const clientId = `r${Date.now().toString(36)}-${state.nextClientId++}`;
    if (wsSend({ type: "retry", id: messageId, client_id: clientId })) return;
    postJson(`/api/messages/${encodeURIComponent(messageId)}/retry`)
      .then((message) => storeMessage(message, true))
      .catch((error) => showError(`Retry failed: ${error.message}`));
  }

  function submitComposer() {
    if (state.selected === null) return;
    const text = el.composer.value;
    if (text.trim() === "") return;
    el.composer.value = "";
    sendText(state.selected, text);
  }

  // ------------------------------------------------------------ banners

  function showError(message) {
    el.errorText.textContent = message;
    el.errorBanner.hidden = false;
  }

  function setConnected(connected, note) {
    state.connected = connected;
    el.disconnectedBanner.hidden = connected;
    document.body.dataset.connected = connected ? "true" : "false";
    if (!connected && note) el.bannerText.textContent = note;
  }

  // ------------------------------------------------------------ websocket

  function handleEvent(event) {
    switch (event.type) {
      case "batch":
        // Events that were ready at once, in order, in one frame.
        if (Array.isArray(event.events)) {
          for (const inner of event.events) {
            if (inner && typeof inner.type === "string" && inner.type !== "batch") handleEvent(inner);
          }
        }
        break;
      case "hello":
        state.me = event.me;
        renderMe();
        setPeers(event.peers);
        if (state.selected !== null) {
          renderConversation();
          loadHistory(state.selected); // catch up on anything missed while disconnected
        }
        break;
      case "me":
        state.me = event.me;
        renderMe();
        renderPeers();
        break;
      case "peers":
        setPeers(event.peers);
        break;
      case "connection":
        updatePeer(event.peer, { connection: event.connection });
        break;
      case "message":
        onMessage(event.message);
        break;
      case "status":
        onStatus(event.id, event.status, event.error ?? null);
        break;
      case "resync":
        resync(); // we fell behind and events were dropped: reload the state
        break;
      case "sent":
        if (event.client_id) removePending(event.client_id);
        storeMessage(event.message, true);
        break;
      case "error":
        if (event.client_id && state.pending.has(event.client_id)) failPending(event.client_id, event.error);
        else showError(event.error);
        break;
      default:
        break; // newer server, older page: ignore what we do not know
    }
  }

  function onMessage(message) {
    if (isMine(message)) {
      // Our own message may be announced before the "sent" answer: drop the
      // pending copy so it never shows twice.
      for (const pending of state.pending.values()) {
        if (pending.peer === message.peer && pending.text === message.text && pending.status === "sending") {
          removePending(pending.clientId);
          break;
        }
      }
    }
    const known = conversation(message.peer).has(message.id);
    storeMessage(message, true);
    if (known || isMine(message)) return;
    if (message.peer === state.selected && document.visibilityState === "visible") {
      markRead(message.peer);
    } else {
      const peer = state.peers.get(message.peer);
      if (peer) updatePeer(message.peer, { unread: (peer.unread || 0) + 1 });
    }
  }

  async function resync() {
    try {
      const [me, peers] = await Promise.all(
        ["/api/me", "/api/peers"].map(async (url) => {
          const response = await fetch(url, { credentials: "same-origin" });
          if (!response.ok) throw new Error(await errorText(response));
          return response.json();
        }),
      );
      state.me = me;
      renderMe();
      setPeers(peers);
    } catch (error) {
      showError(`Could not reload the peer list: ${error.message}`);
    }
    if (state.selected !== null) loadHistory(state.selected);
  }

  function onStatus(id, status, error) {
    const peerId = state.messagePeer.get(id);
    if (peerId === undefined) return; // not loaded on this page
    const message = conversation(peerId).get(id);
    if (!message) return;
    storeMessage({ ...message, status, error }, true);
  }

  function scheduleReconnect() {
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** state.attempts);
    const jittered = delay / 2 + Math.random() * (delay / 2);
    state.attempts += 1;
    setConnected(false, `Disconnected from webpeer. Reconnecting in ${Math.ceil(jittered / 1000)} s…`);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, jittered);
    // Tell "webpeer stopped" apart from "this browser is not signed in".
    fetch("/api/me", { credentials: "same-origin" })
      .then((response) => {
        if (response.status === 401) {
          el.bannerText.textContent =
            "Not signed in: open the address that webpeer printed (it ends in ?token=…).";
        }
      })
      .catch(() => {});
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch (error) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.addEventListener("open", () => {
      state.attempts = 0;
      setConnected(true);
    });
    ws.addEventListener("message", (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      if (event && typeof event.type === "string") handleEvent(event);
    });
    ws.addEventListener("close", () => {
      if (state.ws !== ws) return;
      state.ws = null;
      // Messages in flight over the dead socket will never be answered.
      for (const pending of state.pending.values()) {
        if (pending.status === "sending") failPending(pending.clientId, "connection to webpeer lost");
      }
      scheduleReconnect();
    });
  }

  // ------------------------------------------------------------ start

  function start() {
    el.myName = byTestId("my-name");
    el.myId = byTestId("my-id");
    el.myFingerprint = byTestId("my-fingerprint");
    el.myAddress = byTestId("my-address");
    el.myNat = byTestId("my-nat");
    el.serverStatus = byTestId("server-status");
    el.serverDot = byTestId("server-dot");
    el.peerList = byTestId("peer-list");
    el.noPeers = byTestId("no-peers");
    el.conversation = byTestId("conversation");
    el.convName = byTestId("conversation-name");
    el.convId = byTestId("conversation-id");
    el.convFingerprint = byTestId("conversation-fingerprint");
    el.convConnection = byTestId("conversation-connection");
    el.convKeyWarning = byTestId("conversation-key-warning");
    el.convError = byTestId("conversation-error");
    el.conversationEmpty = byTestId("conversation-empty");
    el.messageList = byTestId("message-list");
    el.composer = byTestId("composer");
    el.sendButton = byTestId("send-button");
    el.disconnectedBanner = byTestId("disconnected-banner");
    el.bannerText = byTestId("banner-text");
    el.errorBanner = byTestId("error-banner");
    el.errorText = byTestId("error-text");

    byTestId("error-dismiss").addEventListener("click", () => {
      el.errorBanner.hidden = true;
    });
    el.peerList.addEventListener("click", (event) => {
      const item = event.target.closest('[data-testid="peer-item"]');
      if (item) selectPeer(Number(item.dataset.peerId));
    });
    el.peerList.addEventListener("keydown", (event) => {
      const item = event.target.closest('[data-testid="peer-item"]');
      if (item && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        selectPeer(Number(item.dataset.peerId));
      }
    });
    byTestId("open-peer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = byTestId("open-peer-id");
      const value = input.value.trim();
      if (/^[1-9][0-9]{0,15}$/.test(value)) {
        input.value = "";
        selectPeer(Number(value));
      } else {
        showError("A peer id is a positive whole number.");
      }
    });
    byTestId("composer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      submitComposer();
    });
    el.composer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        submitComposer();
      }
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && state.selected !== null) {
        const peer = state.peers.get(state.selected);
        if (peer && peer.unread) markRead(state.selected);
      }
    });

    renderConversationHeader();
    const match = /^#peer-([1-9][0-9]{0,15})$/.exec(location.hash);
    if (match) {
      state.selected = Number(match[1]);
      renderConversationHeader();
      loadHistory(state.selected);
    }
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
