// The transcript: one span per token, keyed by position, grouped by turn. Events change only the spans they name;
// brightness updates are coalesced and applied once per animation frame, so a 4k-token conversation stays smooth.

const SPECIAL = /^<\|[^|]*\|>$/;
const LOG_GAIN = 100; // log scale: ln(1 + 100·s), so the small scores spread out under the attention-sink peak

export class Transcript {
  constructor(root) {
    this.root = root;
    this.tokens = new Map(); // position → {token, token_id, role, turn_id, sentence_id, score, deleted, span}
    this.turns = new Map(); // turn_id → element
    this.pending = new Map(); // position → score, waiting for the next frame
    this.frameRequested = false;
    this.active = 0;
    this.pruned = 0;
    this.headerOpen = new Map(); // turn_id → true while inside "<|im_start|>role\n"
    this.onChange = () => {};
  }

  clear() {
    this.root.replaceChildren();
    this.tokens.clear();
    this.turns.clear();
    this.pending.clear();
    this.headerOpen.clear();
    this.active = 0;
    this.pruned = 0;
    this.onChange();
  }

  turnElement(turnId, role) {
    let element = this.turns.get(turnId);
    if (!element) {
      element = document.createElement("div");
      element.className = "turn";
      element.dataset.turn = turnId;
      element.dataset.role = role;
      // Turns arrive in order; a restored or replayed dictionary may not, so insert by turn id.
      const after = [...this.turns.keys()].filter((t) => t > turnId).sort((a, b) => a - b)[0];
      this.root.insertBefore(element, after === undefined ? null : this.turns.get(after));
      this.turns.set(turnId, element);
    }
    return element;
  }

  addToken(entry) {
    if (this.tokens.has(entry.position)) return; // a replay overlapping what is shown: keep the first
    const span = document.createElement("span");
    span.className = "tok";
    span.dataset.pos = entry.position;
    span.textContent = entry.token;
    // Template markers and the role name after <|im_start|> are dimmed (or hidden by the toggle).
    const special = SPECIAL.test(entry.token);
    if (entry.token === "<|im_start|>") this.headerOpen.set(entry.turn_id, true);
    if (special || this.headerOpen.get(entry.turn_id)) span.classList.add("special");
    if (!special && this.headerOpen.get(entry.turn_id) && entry.token.includes("\n")) this.headerOpen.delete(entry.turn_id);
    const record = {
      ...entry,
      score: entry.score ?? entry.attention_score ?? 0,
      deleted: !!entry.deleted,
      special: span.classList.contains("special"),
      span,
    };
    this.tokens.set(entry.position, record);
    this.setScore(span, record.score);
    if (record.deleted) {
      span.classList.add("pruned", "faded");
      this.pruned++;
    } else {
      this.active++;
    }
    const turn = this.turnElement(entry.turn_id, entry.role);
    const last = turn.lastElementChild;
    if (!last || Number(last.dataset.pos) < entry.position) {
      turn.appendChild(span);
    } else {
      const next = [...turn.children].find((child) => Number(child.dataset.pos) > entry.position);
      turn.insertBefore(span, next || null);
    }
    this.onChange();
  }

  setScore(span, score) {
    span.style.setProperty("--s", score.toFixed(5));
    span.style.setProperty("--l", Math.log1p(LOG_GAIN * Math.max(0, score)).toFixed(5));
  }

  brightness(positions, scores) {
    for (let i = 0; i < positions.length; i++) this.pending.set(positions[i], scores[i]);
    if (!this.frameRequested) {
      this.frameRequested = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.frameRequested = false;
    for (const [position, score] of this.pending) {
      const record = this.tokens.get(position);
      if (!record) continue;
      record.score = score;
      this.setScore(record.span, score);
    }
    this.pending.clear();
    this.normalise();
  }

  // Linear scale: the 90th percentile of the active text tokens' scores. The attention sink (usually the first
  // template token) and the few tokens near it saturate instead of darkening everything else. Log scale: the true
  // maximum, sink included, in log space.
  normalise() {
    const scores = [];
    let max = 0;
    for (const record of this.tokens.values()) {
      if (record.deleted) continue;
      max = Math.max(max, record.score);
      if (!record.special) scores.push(record.score);
    }
    if (!scores.length) return;
    scores.sort((a, b) => a - b);
    const p90 = scores[Math.floor(0.9 * (scores.length - 1))];
    const norm = Math.max(1e-6, p90, scores[scores.length - 1] / 200);
    const style = document.documentElement.style;
    style.setProperty("--norm", norm.toFixed(6));
    style.setProperty("--lnorm", Math.max(1e-6, Math.log1p(LOG_GAIN * max)).toFixed(6));
    this.maxScore = max;
    this.norm = norm;
    this.onChange();
  }

  prune(positions) {
    for (const position of positions) {
      const record = this.tokens.get(position);
      if (!record || record.deleted) continue;
      record.deleted = true;
      this.active--;
      this.pruned++;
      const span = record.span;
      span.classList.add("pruned");
      span.addEventListener("animationend", () => span.classList.add("faded"), { once: true });
    }
    this.onChange();
  }

  // The reverse of `prune`: a recalled sentence lights up and comes back, with the score the tracker gave it.
  recall(positions, scores) {
    positions.forEach((position, i) => {
      const record = this.tokens.get(position);
      if (!record || !record.deleted) return;
      record.deleted = false;
      this.active++;
      this.pruned--;
      const span = record.span;
      span.classList.remove("pruned", "faded");
      span.classList.add("recalled");
      span.addEventListener("animationend", () => span.classList.remove("recalled"), { once: true });
      if (scores && i < scores.length) {
        record.score = scores[i];
        this.setScore(span, record.score);
      }
    });
    this.normalise();
  }

  scrollToEnd() {
    const root = this.root;
    if (root.scrollHeight - root.scrollTop - root.clientHeight < 160) root.scrollTop = root.scrollHeight;
  }
}
