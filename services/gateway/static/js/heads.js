// The `full` aggregation view: the current token's attention per layer and head, as a heat map
// (one row per layer·head, one column per context position).

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

export class HeadsView {
  constructor(section, canvas, info) {
    this.section = section;
    this.canvas = canvas;
    this.info = info;
  }

  setVisible(visible) {
    this.section.hidden = !visible;
  }

  show(frame) {
    const { layers, heads, positions } = frame;
    const ctx = positions.length;
    if (!layers || !heads || !ctx) return;
    const bytes = Uint8Array.from(atob(frame.data), (c) => c.charCodeAt(0));
    const halves = new Uint16Array(bytes.buffer, 0, Math.min(layers * heads * ctx, bytes.length >> 1));
    const rows = layers * heads;
    const canvas = this.canvas;
    canvas.width = ctx;
    canvas.height = rows;
    const g = canvas.getContext("2d");
    const image = g.createImageData(ctx, rows);
    for (let row = 0; row < rows; row++) {
      // Each row is normalised on its own: heads differ by orders of magnitude, and the shape is what matters here.
      let max = 1e-9;
      for (let c = 0; c < ctx; c++) max = Math.max(max, halfToFloat(halves[row * ctx + c]));
      for (let c = 0; c < ctx; c++) {
        const v = Math.sqrt(Math.max(0, halfToFloat(halves[row * ctx + c])) / max);
        const o = (row * ctx + c) * 4;
        image.data[o] = 20 + 235 * v;
        image.data[o + 1] = 16 + 170 * v;
        image.data[o + 2] = 24 + 49 * v;
        image.data[o + 3] = 255;
      }
    }
    g.putImageData(image, 0, 0);
    this.info.textContent = `step ${frame.step}: ${layers} layers × ${heads} heads over ${ctx} positions`;
    this.setVisible(true);
  }
}
