// webpeer page, entry point: no framework, no build step.
//
// One loop: every event (from the websocket, from HTTP answers, from the
// user) goes through dispatch(), which runs the reducer (state.js), redraws
// the views (views/*.js) from the new state, then starts whatever the event
// calls for (fetches, websocket requests).  The views only draw; the reducer
// only computes; the network lives in api.js and socket.js.

import * as api from "./api.js";
import { arrivalsOf } from "./announce.js";
import { PeerSocket } from "./socket.js";
import { conversationOf, findPeer, initialState, notifiesOnArrival, oldestLoaded, reachedStart, readsOnArrival, reduce, showsSafety } from "./state.js";
import { createAnnouncerView } from "./views/announcer.js";
import { createBannersView } from "./views/banners.js";
import { createComposerView } from "./views/composer.js";
import { createConversationView } from "./views/conversation.js";
import { createFilesView } from "./views/files.js";
import { createMessagesView } from "./views/messages.js";
import { createMeView } from "./views/me.js";
import { createNotificationsView } from "./views/notifications.js";
import { createPeersView } from "./views/peers.js";
import { createSafetyView } from "./views/safety.js";
import { createLayoutView } from "./views/layout.js";
import { createSearchView } from "./views/search.js";
import { createThemeView } from "./views/theme.js";
import { createWelcomeView } from "./views/welcome.js";
import { createSettingsView } from "./views/settings.js";
import { findGroup, isReadingGroup, newestGroupTime } from "./group_state.js";
import { loadReadMark, saveReadMark } from "./group_reads.js";
import { createGroupView } from "./views/group.js";
import { createNewGroupView } from "./views/group_new.js";
import { createSoundView } from "./views/sound.js";

const MAX_TEXT_BYTES = 64 * 1024; // webpeer.api.MAX_TEXT_BYTES: refused here before it is sent
const HASH_PEER = /^#peer-([1-9][0-9]{0,15})$/;
const HASH_GROUP = /^#group-([0-9a-f]{64})$/;
const HISTORY_PAGE = 200; // messages per history request: the latest ones, then older ones as the user scrolls up

function start() {
  let state = initialState({ visible: document.visibilityState === "visible" });
  let clientCounter = 1;
  const newClientId = (prefix) => `${prefix}${Date.now().toString(36)}-${clientCounter++}`;

  const socket = new PeerSocket({
    onEvent: (event) => dispatchFromSocket(event),
    onOpen: () => dispatch({ type: "socket-opened" }),
    onClose: ({ retryInMs, unanswered }) => {
      dispatch({ type: "socket-closed", retryInSeconds: Math.ceil(retryInMs / 1000), unanswered });
      // Tell "webpeer stopped" apart from "this browser is not signed in".
      api.isSignedOut().then((signedOut) => signedOut && dispatch({ type: "signed-out" }));
    },
  });

  const actions = {
    select: (peerId) => selectPeer(peerId),
    send: (text) => state.selected !== null && sendText(state.selected, text),
    retry: (messageId) => retryMessage(messageId),
    resend: (clientId) => resendPending(clientId),
    cancel: (messageId) => cancelMessage(messageId),
    showError: (error) => dispatch({ type: "error-shown", error }),
    dismissError: () => dispatch({ type: "error-dismissed" }),
    toggleSafety: (open) => dispatch({ type: "safety-toggled", open }),
    trust: (action) => state.selected !== null && decideTrust(state.selected, action),
    loadOlder: () => loadOlder(),
    addContact: (peerId) => addContact(peerId),
    rename: (peerId, nickname) => rename(peerId, nickname),
    setAutoAccept: (peerId, bytes) => setAutoAccept(peerId, bytes),
    filter: (text) => dispatch({ type: "filter-changed", filter: text }),
    setReadReceipts: (on) => changeSettings({ read_receipts: on }),
    search: (query) => state.selected !== null && search(state.selected, query),
    closeSearch: () => dispatch({ type: "search-closed" }),
    selectGroup: (groupId) => selectGroup(groupId),
    createGroup: (name, members) => createGroup(name, members),
    sendToGroup: (groupId, text) => sendToGroup(groupId, text),
    addToGroup: (groupId, peerId) => changeGroup(() => api.postGroupMembers(groupId, [peerId]), "add the member"),
    removeFromGroup: (groupId, peerId) => changeGroup(() => api.deleteGroupMember(groupId, peerId), "remove the member"),
    leaveGroup: (groupId) => changeGroup(() => api.postGroupLeave(groupId), "leave the group"),
    jumpTo: (messageId) => jumpTo(messageId),
    closeConversation: () => {
      dispatch({ type: "conversation-closed" });
      history.replaceState(null, "", location.pathname);
    },
  };
  const composer = createComposerView(actions);
  const notifications = createNotificationsView(actions);
  const sound = createSoundView();
  const files = createFilesView(actions, api);
  const peersView = createPeersView(actions);
  const groupView = createGroupView(actions);
  const announcer = createAnnouncerView();
  const views = [
    createMeView(),
    createBannersView(actions),
    peersView,
    createConversationView(actions),
    createSafetyView(actions),
    createMessagesView(actions),
    composer,
    notifications,
    files,
    createSettingsView(actions),
    createSearchView(actions),
    createWelcomeView(),
    createThemeView(),
    createLayoutView(actions),
    groupView,
    createNewGroupView(actions),
    announcer,
  ];

  // The state changes at once; the views draw it at most once per animation
  // frame, so a burst of events (hundreds of messages in one websocket frame)
  // costs one redraw, not one per message.  A hidden tab gets no frames: it
  // draws on a timer instead (its title carries the unread count).
  let renderPending = false;
  function renderNow() {
    if (!renderPending) return;
    renderPending = false;
    for (const view of views) view.render(state);
  }
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    if (document.visibilityState === "visible") requestAnimationFrame(renderNow);
    // Also a timer: a tab hidden before its frame came still draws (whichever runs first draws).
    setTimeout(renderNow, document.visibilityState === "visible" ? 100 : 0);
  }

  function dispatch(event) {
    const before = state;
    state = reduce(state, event);
    scheduleRender();
    // Screen readers hear new messages from others in the open conversation (announce.js).
    announcer.add(arrivalsOf(before, event), state);
    followUp(event, before);
  }

  // A group's message comes as a "message" with `group` set: the reducer gets it as
  // "group-message", so the one-to-one cases (state.js) never see one.
  function dispatchFromSocket(event) {
    if (event.type === "message" && event.message && event.message.group) {
      dispatch({ type: "group-message", message: event.message });
    } else if (event.type === "message-burst" && event.events.some((inner) => inner.message.group)) {
      const direct = event.events.filter((inner) => !inner.message.group);
      const messages = event.events.filter((inner) => inner.message.group).map((inner) => inner.message);
      dispatch({ type: "group-messages", messages });
      if (direct.length === 1) dispatch(direct[0]);
      else if (direct.length > 1) dispatch({ ...event, events: direct });
    } else {
      dispatch(event);
    }
  }

  // What an event sets in motion beyond the state change.
  function followUp(event, before) {
    followUpGroups(event, before);
    switch (event.type) {
      case "hello":
        // Catch up on anything missed while disconnected.
        if (state.selected !== null) loadHistory(state.selected);
        break;
      case "file":
        files.onEvent(event);
        break;
      case "message":
        if (readsOnArrival(before, event.message)) tellRead(event.message.peer);
        break;
      case "message-burst": {
        const toldRead = new Set();
        for (const inner of event.events) {
          const peerId = inner.message.peer;
          if (!toldRead.has(peerId) && readsOnArrival(before, inner.message)) {
            toldRead.add(peerId);
            tellRead(peerId);
          }
          if (notifiesOnArrival(before, inner.message)) {
            notifications.notify(state, inner.message);
            sound.ring();
          }
        }
        break;
      }
      case "resync":
        reloadAll(); // we fell behind and events were dropped
        break;
      case "trust":
        // Accepting shows what the new key sent; the trusted key coming back drops it.
        if (event.peer === state.selected) {
          loadHistory(event.peer);
          if (showsSafety(state)) loadSafety(event.peer);
        }
        break;
      default:
        break;
    }
    if (event.type === "message" && notifiesOnArrival(before, event.message)) {
      notifications.notify(state, event.message);
      sound.ring();
    }
    // The safety view needs the open peer's safety number when it shows.
    if (showsSafety(state) && (state.safety === null || state.safety.peer !== state.selected)) {
      if (safetyLoading !== state.selected && safetyFailed !== state.selected) loadSafety(state.selected);
    }
  }

  let safetyLoading = null; // the peer whose safety number is being fetched
  let safetyFailed = null; // the peer whose safety number could not be fetched (not asked again by itself)

  async function loadSafety(peerId) {
    safetyLoading = peerId;
    safetyFailed = null;
    try {
      dispatch({ type: "safety-loaded", safety: await api.fetchSafety(peerId) });
    } catch (error) {
      safetyFailed = peerId;
      actions.showError(`Could not load the safety number: ${error.message}`);
    } finally {
      if (safetyLoading === peerId) safetyLoading = null;
    }
  }

  // ------------------------------------------------------------ groups

  function followUpGroups(event, before) {
    switch (event.type) {
      case "hello":
      case "resync":
        loadGroups();
        break;
      case "group":
        // A group new to this page (we were added): what was written before we saw it.
        if (!findGroup(before, event.group.id)) loadGroupHistory(event.group.id);
        break;
      default:
        break;
    }
    // What the open group shows while the page is visible is read.
    const open = state.selectedGroup;
    if (open !== null && isReadingGroup(state, open)) saveReadMark(open, newestGroupTime(state, open));
  }

  async function loadGroups() {
    try {
      const groups = await api.fetchGroups();
      dispatch({ type: "groups-loaded", groups });
      await Promise.all(groups.map((group) => loadGroupHistory(group.id)));
    } catch (error) {
      actions.showError(`Could not load the groups: ${error.message}`);
    }
  }

  async function loadGroupHistory(groupId) {
    try {
      const [messages, changes] = await Promise.all([
        api.fetchGroupMessages(groupId, HISTORY_PAGE),
        api.fetchGroupChanges(groupId),
      ]);
      dispatch({ type: "group-history-loaded", group: groupId, messages, changes, readMark: loadReadMark(groupId) });
    } catch (error) {
      actions.showError(`Could not load the group's messages: ${error.message}`);
    }
  }

  function selectGroup(groupId) {
    dispatch({ type: "group-selected", group: groupId });
    history.replaceState(null, "", `#group-${groupId}`);
    renderNow(); // the composer is shown before it takes the focus
    groupView.focus();
  }

  async function createGroup(name, members) {
    try {
      const group = await api.postGroup(name, members);
      dispatch({ type: "group", group, change: null });
      selectGroup(group.id);
      return true;
    } catch (error) {
      actions.showError(`Could not create the group: ${error.message}`);
      return false;
    }
  }

  async function sendToGroup(groupId, text) {
    const size = new TextEncoder().encode(text).length;
    if (size > MAX_TEXT_BYTES) {
      actions.showError(`Not sent: too long: ${size} bytes, the limit is ${MAX_TEXT_BYTES}`);
      return;
    }
    try {
      dispatch({ type: "group-sent", message: await api.postGroupMessage(groupId, text) });
    } catch (error) {
      actions.showError(`Could not send to the group: ${error.message}`);
    }
  }

  // The answer is the group after the change; the "group" event brings it with the change as a line.
  async function changeGroup(call, what) {
    try {
      dispatch({ type: "group", group: await call(), change: null });
    } catch (error) {
      actions.showError(`Could not ${what}: ${error.message}`);
    }
  }

  async function decideTrust(peerId, action) {
    try {
      dispatch({ type: "safety-loaded", safety: await api.postTrust(peerId, action) });
    } catch (error) {
      actions.showError(`Could not ${action} the key: ${error.message}`);
    }
  }

  function selectPeer(peerId) {
    dispatch({ type: "peer-selected", peer: peerId });
    history.replaceState(null, "", `#peer-${peerId}`);
    markRead(peerId);
    loadHistory(peerId);
    renderNow(); // the composer is enabled for this peer before it takes the focus
    composer.focus();
  }

  function markRead(peerId) {
    dispatch({ type: "marked-read", peer: peerId });
    tellRead(peerId);
  }

  function tellRead(peerId) {
    if (!socket.send({ type: "read", peer: peerId })) api.postRead(peerId).catch(() => {});
  }

  // "Chat with id": the server is asked whether the id exists before it joins the list.
  async function addContact(peerId) {
    try {
      await api.postContact(peerId);
    } catch (error) {
      actions.showError(`Could not add ${peerId}: ${error.message}`);
      return;
    }
    selectPeer(peerId);
  }

  async function rename(peerId, nickname) {
    try {
      await api.putNickname(peerId, nickname); // the "peers" event brings the new name
    } catch (error) {
      actions.showError(`Could not rename: ${error.message}`);
    }
  }

  async function setAutoAccept(peerId, bytes) {
    try {
      await api.putPeerSettings(peerId, { auto_accept_bytes: bytes }); // a "peers" event follows
    } catch (error) {
      actions.showError(`Could not change the file setting: ${error.message}`);
    }
  }

  async function search(peerId, query) {
    try {
      dispatch({ type: "search-done", peer: peerId, query, results: await api.fetchSearch(query, peerId) });
    } catch (error) {
      actions.showError(`Search failed: ${error.message}`);
    }
  }

  async function loadSettings() {
    try {
      dispatch({ type: "settings-loaded", settings: await api.fetchSettings() });
    } catch (error) {
      actions.showError(`Could not load the settings: ${error.message}`);
    }
  }

  async function changeSettings(changes) {
    try {
      dispatch({ type: "settings-loaded", settings: await api.putSettings(changes) });
    } catch (error) {
      actions.showError(`Could not change the settings: ${error.message}`);
    }
  }

  async function loadHistory(peerId) {
    const since = state.liveClock;
    try {
      const messages = await api.fetchMessages(peerId, HISTORY_PAGE);
      dispatch({ type: "history-loaded", peer: peerId, messages, since, complete: messages.length < HISTORY_PAGE });
    } catch (error) {
      actions.showError(`Could not load the conversation: ${error.message}`);
    }
  }

  let olderLoading = null; // the request for the open conversation's older page (one at a time)

  // The user scrolled near the top of the open conversation: fetch the page
  // before its oldest message.  Resolves true when a page came (an empty one
  // at the start included), false when there was nothing to ask or it failed.
  function loadOlder() {
    const peerId = state.selected;
    if (peerId === null || reachedStart(state, peerId)) return Promise.resolve(false);
    if (olderLoading !== null) return olderLoading;
    const before = oldestLoaded(state, peerId);
    if (before === null) return Promise.resolve(false); // the first page is not loaded yet
    olderLoading = (async () => {
      try {
        const messages = await api.fetchOlderMessages(peerId, before, HISTORY_PAGE);
        dispatch({ type: "older-loaded", peer: peerId, messages, complete: messages.length < HISTORY_PAGE });
        return true;
      } catch (error) {
        actions.showError(`Could not load older messages: ${error.message}`);
        return false;
      } finally {
        olderLoading = null;
      }
    })();
    return olderLoading;
  }

  let jumps = 0; // counts clicks on search results: a later one takes over from an earlier one

  // A search result: page back until the message is loaded (so nothing is
  // missing between it and the latest messages), then the list shows it.
  async function jumpTo(messageId) {
    const peerId = state.selected;
    const jump = ++jumps;
    const current = () => jump === jumps && state.selected === peerId;
    while (current() && !conversationOf(state, peerId).has(messageId)) {
      if (reachedStart(state, peerId) || !(await loadOlder())) break;
    }
    if (!current()) return;
    if (conversationOf(state, peerId).has(messageId)) dispatch({ type: "jumped", peer: peerId, id: messageId });
    else actions.showError("That message is not in the loaded history (still loading, or deleted).");
  }

  async function reloadAll() {
    try {
      const [me, peers] = await Promise.all([api.fetchMe(), api.fetchPeers()]);
      dispatch({ type: "reloaded", me, peers });
    } catch (error) {
      actions.showError(`Could not reload the peer list: ${error.message}`);
    }
    if (state.selected !== null) loadHistory(state.selected);
  }

  function sendText(peerId, text) {
    const clientId = newClientId("c");
    dispatch({ type: "send-started", clientId, peer: peerId, text, time: Date.now() / 1000 });
    const size = new TextEncoder().encode(text).length;
    if (size > MAX_TEXT_BYTES) {
      dispatch({ type: "send-failed", clientId, error: `too long: ${size} bytes, the limit is ${MAX_TEXT_BYTES}` });
      return;
    }
    if (socket.request({ type: "send", to: peerId, text, client_id: clientId })) return;
    api.postMessage(peerId, text)
      .then((message) => dispatch({ type: "sent", client_id: clientId, message }))
      .catch((error) => dispatch({ type: "send-failed", clientId, error: error.message }));
  }

  function resendPending(clientId) {
    const pending = state.pending.get(clientId);
    if (!pending) return;
    dispatch({ type: "send-withdrawn", clientId });
    sendText(pending.peer, pending.text);
  }

  function retryMessage(messageId) {
    if (socket.request({ type: "retry", id: messageId, client_id: newClientId("r") })) return;
    api.postRetry(messageId)
      .then((message) => dispatch({ type: "sent", client_id: null, message }))
      .catch((error) => actions.showError(`Retry failed: ${error.message}`));
  }

  function cancelMessage(messageId) {
    if (socket.request({ type: "cancel", id: messageId, client_id: newClientId("x") })) return;
    api.postCancel(messageId)
      .then((message) => dispatch({ type: "cancelled", client_id: null, message }))
      .catch((error) => actions.showError(`Cancel failed: ${error.message}`));
  }

  // Escape goes back to the peer list: focus on the open peer's entry (on a
  // phone's one pane, the list comes back).  Fields with an Escape of their
  // own (search, rename) take it first.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented || state.selected === null) return;
    if (event.target.closest && event.target.closest("form.search-form, form.rename-form")) return;
    const peerId = state.selected;
    if (window.matchMedia("(max-width: 700px)").matches) actions.closeConversation();
    renderNow();
    peersView.focusPeer(peerId);
  });

  // Escape in an open group: back to its entry in the list (on a phone, the list comes back).
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented || state.selectedGroup === null) return;
    if (event.target.closest && event.target.closest("form.new-group")) return;
    const groupId = state.selectedGroup;
    if (window.matchMedia("(max-width: 700px)").matches) actions.closeConversation();
    renderNow();
    peersView.focusGroup(groupId);
  });

  document.addEventListener("visibilitychange", () => {
    const visible = document.visibilityState === "visible";
    dispatch({ type: "visibility-changed", visible });
    if (visible && state.selected !== null) {
      const peer = findPeer(state, state.selected);
      if (peer && peer.unread) markRead(state.selected);
    }
  });

  for (const view of views) view.render(state);
  const match = HASH_PEER.exec(location.hash);
  if (match) {
    // Reopen the conversation of before the reload (no read mark, no focus: the user did nothing yet).
    dispatch({ type: "peer-selected", peer: Number(match[1]) });
    loadHistory(state.selected);
  }
  const groupMatch = HASH_GROUP.exec(location.hash);
  if (groupMatch) dispatch({ type: "group-selected", group: groupMatch[1] });
  socket.connect();
  loadSettings();
}

// Module scripts run after the document is parsed, so the elements exist.
start();
