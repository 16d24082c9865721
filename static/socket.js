// The page's one websocket to its webpeer (protocol: top of webpeer/websocket.py).
//
// It connects, reconnects with a growing, jittered delay, unpacks
// {"type": "batch", "events": [...]} frames into single events (in order), and
// keeps track of the requests it sent with a client_id until their answer
// ("sent" or "error" with the same client_id) comes back, so that when the
// socket dies the page learns which requests will never be answered.
// The HttpOnly cookie authenticates the socket: no token in JavaScript.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;
const ANSWER_TYPES = new Set(["sent", "error"]);

export class PeerSocket {
  /**
   * @param {object} handlers
   * @param {(event: object) => void} handlers.onEvent  every event, batches unpacked
   * @param {() => void} handlers.onOpen
   * @param {(closed: {retryInMs: number, unanswered: string[]}) => void} handlers.onClose
   */
  constructor({ onEvent, onOpen, onClose }) {
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onClose = onClose;
    this.ws = null;
    this.open = false;
    this.attempts = 0;
    this.reconnectTimer = null;
    this.unanswered = new Set(); // client ids sent on the current socket
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  connect() {
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (_) {
      this.closed([]);
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.attempts = 0;
      this.open = true;
      this.onOpen();
    });
    ws.addEventListener("message", (frame) => this.received(frame.data));
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.open = false;
      const unanswered = [...this.unanswered];
      this.unanswered.clear();
      this.closed(unanswered);
    });
  }

  /** Send a request that gets no answer; false if the socket is not open (use HTTP then). */
  send(payload) {
    if (!this.ws || !this.open || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(payload));
    return true;
  }

  /** Send a request whose answer carries payload.client_id; false if the socket is not open. */
  request(payload) {
    if (!this.send(payload)) return false;
    this.unanswered.add(payload.client_id);
    return true;
  }

  received(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (!isEvent(event)) return;
    if (event.type !== "batch") {
      this.deliver(event);
    } else if (Array.isArray(event.events)) {
      // Events that were ready at once, in order, in one frame; batches do not nest.
      // A run of message events goes as one "message-burst" (state.js takes it
      // in one step: a burst of 1,000 messages is one copy of the state, not 1,000).
      let run = [];
      const flushRun = () => {
        if (run.length === 1) this.deliver(run[0]);
        else if (run.length > 1) this.deliver({ type: "message-burst", events: run });
        run = [];
      };
      for (const inner of event.events) {
        if (!isEvent(inner) || inner.type === "batch") continue;
        if (inner.type === "message") {
          run.push(inner);
          continue;
        }
        flushRun();
        this.deliver(inner);
      }
      flushRun();
    }
  }

  deliver(event) {
    if (ANSWER_TYPES.has(event.type) && event.client_id) this.unanswered.delete(event.client_id);
    this.onEvent(event);
  }

  closed(unanswered) {
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this.attempts);
    const retryInMs = delay / 2 + Math.random() * (delay / 2);
    this.attempts += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), retryInMs);
    this.onClose({ retryInMs, unanswered });
  }
}

function isEvent(value) {
  return value !== null && typeof value === "object" && typeof value.type === "string";
}
