// The chat connection: hello (new or resumed session), frames in and out, reconnect with the last event id.
// Protocol: docs/websocket.md (haloweave.chat.v1).

const STORE_KEY = "haloweave.session"; // the session on screen; the list of them is conversations.js
// Close code of a connection whose session was erased (DELETE /v1/sessions/{id}): resuming it is pointless.
const CLOSE_SESSION_DELETED = 4410;

export function loadSession() {
  try {
    return JSON.parse(localStorage.getItem(STORE_KEY) || "null");
  } catch {
    return null;
  }
}

export function forgetSession() {
  localStorage.removeItem(STORE_KEY);
}

export class ChatClient extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.session = loadSession(); // {session_id, token} of the session on screen
    this.lastEventId = 0; // largest event id applied to the page; reset on reload (the page replays everything)
    this.retry = 0;
    this.closedByUs = false;
  }

  connect() {
    this.closedByUs = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.emit("status", { state: "connecting" });
    ws.onopen = () => {
      const hello = { type: "hello" };
      if (this.session) {
        hello.session_id = this.session.session_id;
        hello.token = this.session.token;
        hello.last_event_id = this.lastEventId;
      }
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (message) => {
      if (this.ws === ws) this.onFrame(JSON.parse(message.data)); // not a connection left behind by a switch
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.emit("status", { state: "closed", code: event.code, reason: event.reason });
      if (this.closedByUs) return;
      if (event.code === CLOSE_SESSION_DELETED && this.session) {
        this.lose("session_deleted");
        return;
      }
      // Back off (0.5 s, 1 s, 2 s … 10 s); the replay on resume fills in whatever we missed meanwhile.
      const delay = Math.min(10000, 500 * 2 ** this.retry++);
      setTimeout(() => this.connect(), delay);
    };
  }

  onFrame(frame) {
    if (frame.type === "session") {
      this.retry = 0;
      this.session = { session_id: frame.session_id, token: frame.token };
      localStorage.setItem(STORE_KEY, JSON.stringify(this.session));
    } else if (frame.type === "error" && frame.event_id === 0 && ["unknown_session", "unauthorized"].includes(frame.code)) {
      // The stored session is gone (or not ours): never retried; the page decides what comes next.
      this.lose(frame.code);
      return;
    }
    if (frame.event_id > this.lastEventId) this.lastEventId = frame.event_id;
    this.emit("frame", frame);
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // The session is gone on the server (erased, or the token no longer opens it): the connection is dropped and a
  // `lost` event names it; the page switches to another conversation or starts a new one.
  lose(code) {
    const lost = this.session;
    this.detach();
    forgetSession();
    this.session = null;
    this.lastEventId = 0;
    this.emit("lost", { session: lost, code });
  }

  newSession() {
    forgetSession();
    this.session = null;
    this.lastEventId = 0;
    this.reopen();
  }

  // Another conversation of this browser: reconnect with its token; the relay replays it from the start.
  switchTo(session) {
    this.session = { session_id: session.session_id, token: session.token };
    localStorage.setItem(STORE_KEY, JSON.stringify(this.session));
    this.lastEventId = 0;
    this.reopen();
  }

  reopen() {
    this.detach();
    this.connect();
  }

  // Closes the connection without reconnecting.
  detach() {
    this.closedByUs = true;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
  }

  authHeaders() {
    return this.session ? { Authorization: `Bearer ${this.session.token}` } : {};
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
