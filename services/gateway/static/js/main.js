// Wires the page together: connection → transcript, settings, meter, snapshots, export, tooltip, heads view, and the
// list of this browser's conversations (switch, new, delete).

import { ChatClient } from "./client.js";
import { Conversations, lastUsedText } from "./conversations.js";
import { HeadsView } from "./heads.js";
import { SettingsPanel } from "./settings.js";
import { Transcript } from "./transcript.js";

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/chat`;
const client = new ChatClient(wsUrl);
const transcript = new Transcript($("transcript"));
const heads = new HeadsView($("heads"), $("heads-canvas"), $("heads-info"));
const settings = new SettingsPanel($("settings-form"), $("settings-error"), (changes) =>
  client.send({ type: "settings", settings: changes }),
);
const conversations = new Conversations();
const state = { model: "", generating: false, budget: 0, lastStats: null };
window.haloweave = { client, transcript, state, conversations }; // for the console and the browser tests

// ---- status, meter, composer ----------------------------------------------------------------------------------------

function setStatus(kind, text) {
  const status = $("status");
  status.dataset.state = kind;
  status.textContent = text;
}

function updateMeter() {
  const { active, pruned } = transcript;
  const budget = state.budget;
  $("meter-text").textContent = budget ? `${active} / ${budget} tokens` : `${active} tokens (no budget)`;
  $("meter-pruned").textContent = `${pruned} pruned`;
  $("meter-fill").style.width = budget ? `${Math.min(100, (100 * active) / budget)}%` : "0%";
  $("meter").classList.toggle("over", budget > 0 && active > budget);
  $("legend-max").textContent = transcript.maxScore ? `max ${transcript.maxScore.toFixed(3)}` : "";
}
transcript.onChange = () => {
  if (!updateMeter.queued) {
    updateMeter.queued = true;
    requestAnimationFrame(() => {
      updateMeter.queued = false;
      updateMeter();
    });
  }
};

function setGenerating(generating) {
  state.generating = generating;
  $("btn-send").disabled = generating;
  $("btn-stop").hidden = !generating;
}

let toastTimer = null;
function toast(message) {
  const element = $("toast");
  element.textContent = message;
  element.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (element.hidden = true), 5000);
}

function applySettings(effective) {
  settings.show(effective);
  state.budget = effective.max_context_tokens ?? 0;
  if (effective.aggregation !== "full") heads.setVisible(false); // shown again by the next `attention` frame
  updateMeter();
}

// ---- frames ---------------------------------------------------------------------------------------------------------

const handlers = {
  session(frame) {
    if (frame.event_id === 0) transcript.clear(); // the relay starts from the beginning: rebuild the whole page
    conversations.touch(client.session);
    renderConversations();
    // The session's oldest events were trimmed (the Stream is bounded): the replay alone cannot rebuild the page.
    if (frame.replay_truncated) rebuildFromExport();
    state.model = frame.model;
    setStatus("connected", `Connected: ${frame.model}`);
    applySettings(frame.settings);
    setGenerating(frame.generating);
    if (!frame.resumed) {
      const changes = settings.differences(frame.settings);
      if (Object.keys(changes).length) client.send({ type: "settings", settings: changes });
    }
  },
  token(frame) {
    transcript.addToken(frame);
    transcript.scrollToEnd();
  },
  brightness(frame) {
    transcript.brightness(frame.positions, frame.scores);
  },
  pruned(frame) {
    transcript.prune(frame.positions);
  },
  recalled(frame) {
    transcript.recall(frame.positions, frame.scores);
  },
  attention(frame) {
    heads.show(frame);
  },
  settings(frame) {
    applySettings(frame.settings);
  },
  done(frame) {
    setGenerating(false);
    nameFromTranscript();
    state.lastStats = frame.stats;
    const s = frame.stats || {};
    $("meter").title = `last reply: ${s.tokens ?? "?"} tokens, ${(s.tokens_per_s ?? 0).toFixed(1)} tokens/s (${s.reason})`;
  },
  error(frame) {
    if (frame.code === "replay_truncated") {
      rebuildFromExport(); // events were trimmed before they reached us: the export has what they said
      return;
    }
    if (frame.code === "invalid_settings") {
      settings.refused(frame.message);
      settings.show(settings.current);
    }
    if (!["busy", "invalid_settings"].includes(frame.code)) setGenerating(false);
    toast(`${frame.code}: ${frame.message}`);
  },
  snapshot_saved(frame) {
    $("snapshot-msg").textContent = `saved ${frame.snapshot_id} (${frame.tokens} tokens)`;
    refreshSnapshots();
  },
  snapshot_restored(frame) {
    $("snapshot-msg").textContent = `restored ${frame.snapshot_id}`;
    rebuildFromExport();
  },
};

// Frames that arrive while the transcript is being rebuilt from the export wait, then apply on top of it in order
// (token frames of entries the export already holds are ignored; later scores replace earlier ones), so none is lost.
let held = null;
client.addEventListener("frame", (event) => {
  if (held) held.push(event.detail);
  else handlers[event.detail.type]?.(event.detail);
});
client.addEventListener("status", (event) => {
  const { state: kind, code, reason } = event.detail;
  if (kind === "connecting") setStatus("connecting", "Connecting…");
  if (kind === "closed") setStatus("closed", `Disconnected${reason ? ` (${reason})` : code ? ` (${code})` : ""}; retrying…`);
});
client.addEventListener("lost", (event) => {
  // The server no longer knows the session (erased elsewhere, say): it leaves the list, with a note.
  const { session, code } = event.detail;
  if (session) {
    const known = conversations.get(session.session_id);
    conversations.remove(session.session_id);
    note(`${describe(known, session.session_id)} is no longer on the server (${code}); removed from the list`);
  }
  openNext();
});

// ---- composer -------------------------------------------------------------------------------------------------------

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("input");
  const text = input.value.trim();
  if (!text || state.generating) return;
  if (client.send({ type: "user_message", text })) {
    input.value = "";
    setGenerating(true);
    if (conversations.name(client.session.session_id, text)) renderConversations();
  }
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("btn-stop").addEventListener("click", () => client.send({ type: "cancel" }));

// ---- toggles --------------------------------------------------------------------------------------------------------

function bindToggle(id, key, apply) {
  const box = $(id);
  const stored = localStorage.getItem(key);
  if (stored !== null) box.checked = stored === "1";
  apply(box.checked);
  box.addEventListener("change", () => {
    localStorage.setItem(key, box.checked ? "1" : "0");
    apply(box.checked);
  });
}
bindToggle("opt-log", "haloweave.log", (on) => document.body.classList.toggle("log-scale", on));
bindToggle("opt-special", "haloweave.special", (on) => document.body.classList.toggle("hide-special", !on));
bindToggle("opt-pruned", "haloweave.pruned", (on) => document.body.classList.toggle("hide-pruned", !on));

for (const [button, panel] of [["btn-settings", "panel-settings"], ["btn-snapshots", "panel-snapshots"]]) {
  $(button).addEventListener("click", () => {
    const element = $(panel);
    element.hidden = !element.hidden;
    if (panel === "panel-snapshots" && !element.hidden) refreshSnapshots();
  });
}
$("btn-new").addEventListener("click", () => {
  transcript.clear();
  setGenerating(false);
  client.newSession();
});

// ---- conversations --------------------------------------------------------------------------------------------------

function describe(conversation, sessionId) {
  return conversation?.title ? `“${conversation.title}”` : `conversation ${sessionId.slice(0, 8)}`;
}

function note(text) {
  $("conversation-note").textContent = text;
}

function renderConversations() {
  const current = client.session?.session_id;
  $("conversation-list").replaceChildren(
    ...conversations.all().map((conversation) => {
      const item = document.createElement("li");
      item.dataset.session = conversation.session_id;
      item.classList.toggle("current", conversation.session_id === current);
      const open = document.createElement("button");
      open.className = "conversation-open";
      open.title = `session ${conversation.session_id}`;
      const title = document.createElement("span");
      title.className = "conversation-title";
      title.textContent = conversation.title || "New conversation";
      const used = document.createElement("span");
      used.className = "muted";
      used.textContent = `${lastUsedText(conversation.last_used)} · ${conversation.session_id.slice(0, 8)}`;
      open.append(title, used);
      open.addEventListener("click", () => switchConversation(conversation));
      const remove = document.createElement("button");
      remove.className = "conversation-delete";
      remove.textContent = "Delete";
      remove.title = "Erase this conversation on the server: its dictionary, caches and snapshots";
      remove.addEventListener("click", () => deleteConversation(conversation));
      item.append(open, remove);
      return item;
    }),
  );
}
setInterval(renderConversations, 60_000); // "5 min ago" moves on

function switchConversation(conversation) {
  if (conversation.session_id === client.session?.session_id) return;
  transcript.clear();
  setGenerating(false);
  client.switchTo(conversation); // its `session` frame marks it used and redraws the list
  renderConversations();
}

// The most recently used conversation left, or a new one.
function openNext() {
  transcript.clear();
  setGenerating(false);
  const next = conversations.all()[0];
  if (next) client.switchTo(next);
  else client.newSession();
  renderConversations();
}

async function deleteConversation(conversation) {
  const name = describe(conversation, conversation.session_id);
  if (!window.confirm(`Delete ${name}? It is erased on the server and cannot be brought back.`)) return;
  const current = conversation.session_id === client.session?.session_id;
  if (current) client.detach(); // its connection is closed by the erase anyway; do not resume it meanwhile
  let outcome;
  try {
    const response = await fetch(`/v1/sessions/${encodeURIComponent(conversation.session_id)}`, {
      method: "DELETE",
      headers: { Authorization: `Bearer ${conversation.token}` },
    });
    if (response.status === 404) {
      outcome = `${name} was already gone on the server; removed from the list`;
    } else if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`${body.code || response.status}: ${body.message || response.statusText}`);
    } else {
      outcome = `${name} deleted`;
    }
  } catch (error) {
    toast(`delete failed: ${error.message}`);
    if (current) client.reopen(); // it is still there: go on with it
    return;
  }
  conversations.remove(conversation.session_id);
  note(outcome);
  if (current) openNext();
  else renderConversations();
}

// A conversation started elsewhere (or before titles were kept) is named after its first user message once shown.
function nameFromTranscript() {
  const session = client.session;
  if (!session || conversations.get(session.session_id)?.title) return;
  const said = [...transcript.tokens.values()]
    .filter((t) => t.role === "user" && !t.special)
    .sort((a, b) => a.position - b.position);
  if (!said.length) return;
  const text = said.filter((t) => t.turn_id === said[0].turn_id).map((t) => t.token).join("");
  if (conversations.name(session.session_id, text)) renderConversations();
}

// ---- tooltip --------------------------------------------------------------------------------------------------------

const tooltip = $("tooltip");
$("transcript").addEventListener("mouseover", (event) => {
  const span = event.target.closest(".tok");
  if (!span) return;
  const record = transcript.tokens.get(Number(span.dataset.pos));
  if (!record) return;
  const rows = [
    ["token", JSON.stringify(record.token)],
    ["token_id", record.token_id],
    ["position", record.position],
    ["score", Number(record.score).toFixed(4)],
    ["role", record.role],
    ["turn_id", record.turn_id],
    ["sentence_id", record.sentence_id],
    ["deleted", record.deleted],
  ];
  const table = document.createElement("table");
  for (const [name, value] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = String(value);
  }
  tooltip.replaceChildren(table);
  const box = span.getBoundingClientRect();
  tooltip.style.left = `${Math.min(box.left, window.innerWidth - 240)}px`;
  tooltip.style.top = `${box.bottom + 6}px`;
  tooltip.hidden = false;
});
$("transcript").addEventListener("mouseout", (event) => {
  if (event.target.closest(".tok")) tooltip.hidden = true;
});

// ---- REST: export and snapshots ---------------------------------------------------------------------------------------

async function api(method, path) {
  const session = client.session;
  if (!session) throw new Error("no session yet");
  const response = await fetch(`/v1/sessions/${session.session_id}${path}`, { method, headers: client.authHeaders() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${body.code || response.status}: ${body.message || response.statusText}`);
  return body;
}

$("btn-export").addEventListener("click", async () => {
  try {
    const body = await api("GET", "/export");
    const blob = new Blob([JSON.stringify(body, null, 2)], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `haloweave-${body.session_id}.json`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  } catch (error) {
    toast(`export failed: ${error.message}`);
  }
});

async function refreshSnapshots() {
  const list = $("snapshot-list");
  try {
    const { snapshots } = await api("GET", "/snapshots");
    list.replaceChildren(
      ...snapshots.map((snapshot) => {
        const item = document.createElement("li");
        const label = document.createElement("span");
        label.textContent = `${snapshot.snapshot_id} · ${snapshot.tokens} tokens`;
        label.title = snapshot.created_at;
        const restore = document.createElement("button");
        restore.textContent = "Restore";
        restore.addEventListener("click", () => restoreSnapshot(snapshot.snapshot_id));
        item.append(label, restore);
        return item;
      }),
    );
    if (!snapshots.length) $("snapshot-msg").textContent = "no snapshots yet";
  } catch (error) {
    $("snapshot-msg").textContent = error.message;
  }
}

$("btn-snapshot-save").addEventListener("click", async () => {
  const button = $("btn-snapshot-save");
  button.disabled = true;
  $("snapshot-msg").textContent = "saving…";
  try {
    const saved = await api("POST", "/snapshots");
    $("snapshot-msg").textContent = `saved ${saved.snapshot_id}`;
    await refreshSnapshots();
  } catch (error) {
    $("snapshot-msg").textContent = `save failed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
});

async function restoreSnapshot(snapshotId) {
  $("snapshot-msg").textContent = `restoring ${snapshotId}…`;
  try {
    await api("POST", `/snapshots/${encodeURIComponent(snapshotId)}/restore`);
  } catch (error) {
    $("snapshot-msg").textContent = `restore failed: ${error.message}`;
  }
}

// After a restore the dictionary is the snapshot's, and after a truncated replay the page lacks what the trimmed
// events said: redraw it from the export, then keep following live events.
async function rebuildFromExport() {
  if (held) return; // a rebuild is under way; the frames it holds come after it
  held = [];
  try {
    const body = await api("GET", "/export");
    transcript.clear();
    for (const entry of body.tokens) transcript.addToken(entry);
    transcript.normalise();
    applySettings(body.settings);
  } catch (error) {
    toast(`could not redraw the transcript: ${error.message}`);
  } finally {
    const frames = held;
    held = null;
    for (const frame of frames) handlers[frame.type]?.(frame);
  }
}

client.connect();
