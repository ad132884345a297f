// The chat connection: hello (new or resumed session), frames in and out, reconnect with the last event id.
// Protocol: docs/websocket.md (haloweave.chat.v1).

const STORE_KEY = "haloweave.session";

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
    this.session = loadSession(); // {session_id, token} of the session this browser owns
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
    ws.onmessage = (message) => this.onFrame(JSON.parse(message.data));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.emit("status", { state: "closed", code: event.code, reason: event.reason });
      if (this.closedByUs) return;
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
      // The stored session is gone (or not ours): start a fresh one rather than retrying forever.
      forgetSession();
      this.session = null;
      this.lastEventId = 0;
      this.emit("reset", {});
      this.ws.send(JSON.stringify({ type: "hello" }));
      this.emit("frame", frame);
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

  newSession() {
    forgetSession();
    this.session = null;
    this.lastEventId = 0;
    this.closedByUs = true;
    if (this.ws) this.ws.close(1000);
    this.connect();
  }

  authHeaders() {
    return this.session ? { Authorization: `Bearer ${this.session.token}` } : {};
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
