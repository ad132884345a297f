// The settings panel: one control per setting, kept in localStorage and sent to the session when changed.

const STORE_KEY = "haloweave.settings";

// [name, label, kind, options or {min, max, step}]
const GROUPS = [
  ["Generation", [
    ["max_new_tokens", "Max new tokens", "int", { min: 1, max: 4096, step: 1 }],
    ["temperature", "Temperature (0 = greedy)", "float", { min: 0, max: 2, step: 0.05 }],
    ["top_p", "Top-p", "float", { min: 0.01, max: 1, step: 0.01 }],
    ["seed", "Seed", "int", { step: 1 }],
    ["stop", "Stop strings (comma-separated)", "list", {}],
  ]],
  ["Attention", [
    ["aggregation", "Aggregation", "select", ["mean", "max", "last_layer", "weighted_layers", "full"]],
    ["boost", "Boost", "float", { step: 0.1 }],
    ["decay_mode", "Decay", "select", ["additive", "exponential", "none"]],
    ["decay_rate", "Decay rate", "float", { min: 0, step: 0.001 }],
    ["initial_score", "Initial score", "float", { step: 0.1 }],
  ]],
  ["Distance weighting", [
    ["distance_mode", "Mode", "select", ["none", "threshold", "linear", "square_root", "logarithmic"]],
    ["min_distance", "Min distance", "int", { min: 0, step: 1 }],
    ["distance_scale", "Scale", "float", { min: 0.001, step: 1 }],
  ]],
  ["Pruning", [
    ["max_context_tokens", "Token budget (0 = off)", "int", { min: 0, step: 16 }],
    ["prune_policy", "Policy", "select", ["brightness", "recency", "random", "h2o", "tova"]],
    ["prune_mode", "Eviction", "select", ["in_place", "reprefill"]],
    ["recall", "Recall pruned sentences", "bool", {}],
    ["recall_max_sentences", "Recall at most (sentences)", "int", { min: 1, max: 64, step: 1 }],
  ]],
];

export function storedSettings() {
  try {
    return JSON.parse(localStorage.getItem(STORE_KEY) || "{}");
  } catch {
    return {};
  }
}

export class SettingsPanel {
  constructor(form, errorLine, send) {
    this.form = form;
    this.errorLine = errorLine;
    this.send = send; // (changes) => void
    this.current = {};
    this.inputs = new Map();
    this.build();
    form.addEventListener("submit", (event) => event.preventDefault()); // Enter in a field must not reload the page
  }

  build() {
    for (const [title, fields] of GROUPS) {
      const set = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = title;
      set.appendChild(legend);
      for (const [name, label, kind, spec] of fields) {
        const row = document.createElement("label");
        row.className = "field";
        const text = document.createElement("span");
        text.textContent = label;
        let input;
        if (kind === "select") {
          input = document.createElement("select");
          for (const option of spec) input.add(new Option(option.replace("_", " "), option));
        } else if (kind === "bool") {
          input = document.createElement("input");
          input.type = "checkbox";
        } else {
          input = document.createElement("input");
          input.type = kind === "list" ? "text" : "number";
          for (const [key, value] of Object.entries(spec)) input.setAttribute(key, value);
        }
        input.name = name;
        input.id = `set-${name}`;
        input.dataset.kind = kind;
        input.addEventListener("change", () => this.changed(input));
        row.append(text, input);
        set.appendChild(row);
        this.inputs.set(name, input);
      }
      this.form.appendChild(set);
    }
  }

  read(input) {
    const kind = input.dataset.kind;
    if (kind === "bool") return input.checked;
    const raw = input.value.trim();
    if (kind === "select") return raw;
    if (kind === "list") return raw ? raw.split(",").map((s) => s.trim()).filter(Boolean) : [];
    if (raw === "") return undefined;
    const value = Number(raw);
    if (!Number.isFinite(value) || (kind === "int" && !Number.isInteger(value))) return undefined;
    return value;
  }

  changed(input) {
    const value = this.read(input);
    if (value === undefined) {
      input.setAttribute("aria-invalid", "true");
      this.errorLine.textContent = `${input.name}: enter a ${input.dataset.kind === "int" ? "whole " : ""}number`;
      return;
    }
    input.removeAttribute("aria-invalid");
    this.errorLine.textContent = "";
    const stored = storedSettings();
    stored[input.name] = value;
    localStorage.setItem(STORE_KEY, JSON.stringify(stored));
    this.send({ [input.name]: value });
  }

  // The session's effective settings (from `session` and `settings` frames) are what the controls show.
  show(settings) {
    this.current = { ...settings };
    for (const [name, input] of this.inputs) {
      if (!(name in settings)) continue;
      const value = settings[name];
      if (input.dataset.kind === "bool") input.checked = !!value;
      else input.value = Array.isArray(value) ? value.join(", ") : String(value);
      input.removeAttribute("aria-invalid");
    }
  }

  // The stored choices that differ from the session's: applied when a session starts in this browser.
  differences(settings) {
    const changes = {};
    for (const [name, value] of Object.entries(storedSettings())) {
      if (!this.inputs.has(name)) continue;
      if (JSON.stringify(settings[name]) !== JSON.stringify(value)) changes[name] = value;
    }
    return changes;
  }

  refused(message) {
    this.errorLine.textContent = message;
  }
}
