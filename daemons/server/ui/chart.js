// A small line chart on a canvas: one or two series over time, each on its own scale
// (left and right axis), redrawn when data is added or replaced. Enough for a status page; no
// library.

export class LineChart {
  constructor(canvas, series) {
    this.canvas = canvas;
    this.series = series; // [{label, color}]
    this.points = []; // [t, v0, v1…]
    this.max = 600;
  }

  add(t, ...values) {
    this.points.push([t, ...values]);
    if (this.points.length > this.max) this.points.shift();
    this.draw();
  }

  // All points at once, [t, v0, v1…] oldest first (the newest `max` are kept).
  replace(points) {
    this.points = points.slice(-this.max);
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 600;
    const hgt = c.clientHeight || 200;
    if (c.width !== w * dpr || c.height !== hgt * dpr) {
      c.width = w * dpr;
      c.height = hgt * dpr;
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const pad = { l: 48, r: 48, t: 10, b: 20 };
    const pw = w - pad.l - pad.r;
    const ph = hgt - pad.t - pad.b;
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#ccc";
    g.strokeRect(pad.l, pad.t, pw, ph);
    if (this.points.length < 2) return;
    const t0 = this.points[0][0];
    const t1 = this.points[this.points.length - 1][0];
    const span = Math.max(1, t1 - t0);
    this.series.forEach((s, i) => {
      const vals = this.points.map((p) => p[i + 1]).filter((v) => Number.isFinite(v));
      const top = Math.max(1, ...vals) * 1.1;
      g.strokeStyle = s.color;
      g.lineWidth = 1.5;
      g.beginPath();
      let started = false;
      for (const p of this.points) {
        const v = p[i + 1];
        if (!Number.isFinite(v)) continue;
        const x = pad.l + ((p[0] - t0) / span) * pw;
        const y = pad.t + ph - (v / top) * ph;
        if (started) g.lineTo(x, y); else g.moveTo(x, y);
        started = true;
      }
      g.stroke();
      g.fillStyle = s.color;
      g.textAlign = i === 0 ? "right" : "left";
      g.fillText(formatNumber(top), i === 0 ? pad.l - 4 : pad.l + pw + 4, pad.t + 10);
      g.fillText("0", i === 0 ? pad.l - 4 : pad.l + pw + 4, pad.t + ph);
    });
    g.fillStyle = "#666";
    g.textAlign = "center";
    g.fillText(`last ${Math.round(span / 1000)} s`, pad.l + pw / 2, hgt - 4);
  }
}

function formatNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return v.toFixed(v < 10 ? 1 : 0);
}
