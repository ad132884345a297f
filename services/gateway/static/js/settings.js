// The settings panel: one control per setting, kept in localStorage and sent to the session when changed.
//
// The controls are built from the settings' JSON schema, served by the gateway (GET /v1/settings/schema, made from
// services/common/session_settings.py): each property's title labels it and its description is the tooltip; an enum
// makes a select, a boolean a checkbox, an array a comma-separated text field, a number or integer a number input
// with the schema's bounds (`x-ui-max` where the setting has no upper bound) and step (`x-step`). `x-group` places it
// in a fieldset. A new setting in the schema appears here without an edit.

const STORE_KEY = "haloweave.settings";
export const SCHEMA_URL = "/v1/settings/schema";

// Loaded once, before the page wires itself up (main.js imports this module, and waits for it).
let schemaError = "";
export const schema = await fetch(SCHEMA_URL, { cache: "no-cache" })
  .then((reply) => {
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    return reply.json();
  })
  .catch((error) => {
    schemaError = `The settings could not be loaded (${error.message}); reload the page to try again.`;
    return { properties: {} };
  });

// The schema's properties as [group, [[name, property], ...]], groups in the order they first appear.
export function groups(settingsSchema) {
  const byGroup = new Map();
  for (const [name, property] of Object.entries(settingsSchema.properties || {})) {
    const group = property["x-group"] || "Other";
    if (!byGroup.has(group)) byGroup.set(group, []);
    byGroup.get(group).push([name, property]);
  }
  return [...byGroup.entries()];
}

function kindOf(property) {
  if (Array.isArray(property.enum)) return "select";
  if (property.type === "boolean") return "bool";
  if (property.type === "array") return "list";
  if (property.type === "integer") return "int";
  return "float";
}

// The number input's attributes: the schema's bounds (an exclusive minimum becomes its next step) and step.
function numberBounds(property, kind) {
  const step = property["x-step"] ?? (kind === "int" ? 1 : "any");
  const spec = { step };
  if (property.minimum !== undefined) spec.min = property.minimum;
  else if (property.exclusiveMinimum !== undefined) {
    spec.min = typeof step === "number" ? property.exclusiveMinimum + step : property.exclusiveMinimum;
  }
  const max = property.maximum ?? property["x-ui-max"];
  if (max !== undefined) spec.max = max;
  return spec;
}

export function storedSettings() {
  try {
    return JSON.parse(localStorage.getItem(STORE_KEY) || "{}");
  } catch {
    return {};
  }
}

export class SettingsPanel {
  constructor(form, errorLine, send, settingsSchema = schema) {
    this.form = form;
    this.errorLine = errorLine;
    this.send = send; // (changes) => void
    this.schema = settingsSchema;
    this.current = {};
    this.inputs = new Map();
    this.build();
    if (schemaError) this.errorLine.textContent = schemaError;
    form.addEventListener("submit", (event) => event.preventDefault()); // Enter in a field must not reload the page
  }

  build() {
    for (const [title, fields] of groups(this.schema)) {
      const set = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = title;
      set.appendChild(legend);
      for (const [name, property] of fields) {
        const kind = kindOf(property);
        const row = document.createElement("label");
        row.className = "field";
        row.title = property.description || "";
        const text = document.createElement("span");
        text.textContent = (property.title || name) + (kind === "list" ? " (comma-separated)" : "");
        let input;
        if (kind === "select") {
          input = document.createElement("select");
          for (const option of property.enum) input.add(new Option(String(option).replaceAll("_", " "), option));
        } else if (kind === "bool") {
          input = document.createElement("input");
          input.type = "checkbox";
        } else {
          input = document.createElement("input");
          input.type = kind === "list" ? "text" : "number";
          if (kind !== "list") {
            for (const [key, value] of Object.entries(numberBounds(property, kind))) input.setAttribute(key, value);
          }
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
