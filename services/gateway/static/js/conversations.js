// The conversations this browser holds: each one's session id and token (whoever holds the token owns the session),
// a title (its first user message) and when it was last used. Kept in localStorage only; the server knows nothing of
// the list. The one on screen is the client's current session (client.js).

const LIST_KEY = "haloweave.conversations";
const TITLE_CHARS = 60;

export class Conversations {
  constructor(storage = localStorage) {
    this.storage = storage;
  }

  all() {
    let list;
    try {
      list = JSON.parse(this.storage.getItem(LIST_KEY) || "[]");
    } catch {
      list = [];
    }
    if (!Array.isArray(list)) list = [];
    return list
      .filter((c) => c && typeof c.session_id === "string" && typeof c.token === "string")
      .sort((a, b) => (b.last_used || 0) - (a.last_used || 0));
  }

  get(sessionId) {
    return this.all().find((c) => c.session_id === sessionId) || null;
  }

  save(list) {
    this.storage.setItem(LIST_KEY, JSON.stringify(list));
  }

  // A session this browser has just been given or has reconnected to: added, or marked as used now.
  touch(session) {
    const list = this.all();
    const known = list.find((c) => c.session_id === session.session_id);
    if (known) {
      known.token = session.token;
      known.last_used = Date.now();
    } else {
      list.push({ session_id: session.session_id, token: session.token, title: "", last_used: Date.now() });
    }
    this.save(list);
  }

  // The first user message names a conversation; a title, once given, stays.
  name(sessionId, text) {
    const title = text.replace(/\s+/g, " ").trim();
    if (!title) return false;
    const list = this.all();
    const known = list.find((c) => c.session_id === sessionId);
    if (!known || known.title) return false;
    known.title = title.length > TITLE_CHARS ? `${title.slice(0, TITLE_CHARS - 1)}…` : title;
    this.save(list);
    return true;
  }

  remove(sessionId) {
    this.save(this.all().filter((c) => c.session_id !== sessionId));
  }
}

// "just now", "5 min ago", "3 h ago", then the date.
export function lastUsedText(ms, now = Date.now()) {
  const seconds = Math.max(0, (now - ms) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}
