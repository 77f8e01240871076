// A virtualised table of CAN frames: a ring of the newest `capacity` frames (newest first), of
// which only the rows in view exist in the DOM (a fixed pool, reused), drawn at most once per
// animation frame. Memory is bounded by the ring; cost per frame is a few assignments.

import { h } from "./dom.js";

const ROW_H = 24;
const MIN_REDRAW_MS = 100;
const COLUMNS = ["Time", "Dongle", "Dir", "Bus", "ID", "DLC", "Data"];

export class FrameTable {
  constructor({ capacity = 10000, dongleName = (id) => id.slice(0, 8), label = "Frames" } = {}) {
    this.capacity = capacity;
    this.dongleName = dongleName;
    this.ring = new Array(capacity);
    this.total = 0; // frames ever added to the ring; ring slot = seq % capacity
    this.filter = null; // Set of upper-case ids ("0x7E8"), or null
    this.matches = []; // seqs of matching frames (when filtered), oldest first
    this.matchStart = 0;
    this.paused = false;
    this.pending = [];
    this.droppedWhilePaused = 0;
    this.dirty = true;
    this.pool = [];
    this.rateWindow = 0;
    this.rate = 0;

    this.viewport = h("div", { class: "vt", role: "table", "aria-label": label, "aria-rowcount": "0", tabindex: "0" });
    this.head = h("div", { class: "vt-row vt-head", role: "row" },
      COLUMNS.map((c) => h("span", { role: "columnheader" }, c)));
    this.spacer = h("div", { class: "vt-spacer" });
    this.rows = h("div", { class: "vt-rows", role: "rowgroup" });
    this.spacer.append(this.rows);
    this.viewport.append(this.spacer);
    this.el = h("div", { class: "vt-wrap" }, this.head, this.viewport);
    this.viewport.addEventListener("scroll", () => this.invalidate(true), { passive: true });
    this.viewport.addEventListener("keydown", (e) => this.key(e));
    this.resize = new ResizeObserver(() => this.invalidate(true));
    this.resize.observe(this.viewport);
    this.rateTimer = setInterval(() => {
      this.rate = this.rateWindow;
      this.rateWindow = 0;
      if (this.onRate) this.onRate(this.rate);
    }, 1000);
    this.raf = 0;
    this.later = 0;
    this.drawnAt = 0;
  }

  destroy() {
    clearInterval(this.rateTimer);
    clearTimeout(this.later);
    cancelAnimationFrame(this.raf);
    this.resize.disconnect();
  }

  add(frame) {
    this.rateWindow += 1;
    if (this.paused) {
      this.pending.push(frame);
      if (this.pending.length > this.capacity) {
        this.pending.shift();
        this.droppedWhilePaused += 1;
      }
      return;
    }
    this.push(frame);
    this.invalidate();
  }

  push(frame) {
    const seq = this.total++;
    this.ring[seq % this.capacity] = frame;
    if (this.filter && this.filter.has(frame.id)) this.matches.push(seq);
    const oldest = this.total - this.capacity;
    while (this.matchStart < this.matches.length && this.matches[this.matchStart] < oldest) this.matchStart++;
    if (this.matchStart > 4096) {
      this.matches = this.matches.slice(this.matchStart);
      this.matchStart = 0;
    }
  }

  setPaused(paused) {
    this.paused = paused;
    if (paused) {
      // What is on screen when the user pauses is what stays: draw what arrived before now
      // instead of letting a scheduled redraw add it after the click.
      clearTimeout(this.later);
      this.later = 0;
      cancelAnimationFrame(this.raf);
      this.raf = 0;
      this.render();
    } else {
      for (const f of this.pending) this.push(f);
      this.pending = [];
      this.invalidate();
    }
  }

  // `text`: ids separated by commas or spaces, with or without 0x ("7E8, 0x7e0"); empty = all.
  setFilter(text) {
    const ids = String(text).split(/[\s,]+/).filter(Boolean).map((t) => {
      const hex = t.replace(/^0x/i, "").toUpperCase();
      if (!/^[0-9A-F]{1,8}$/.test(hex)) return null;
      const width = parseInt(hex, 16) > 0x7ff || hex.length > 3 ? 8 : 3;
      return "0x" + hex.padStart(width, "0");
    });
    if (ids.includes(null)) return false;
    this.filter = ids.length ? new Set(ids) : null;
    this.matches = [];
    this.matchStart = 0;
    if (this.filter) {
      for (let seq = Math.max(0, this.total - this.capacity); seq < this.total; seq++) {
        if (this.filter.has(this.ring[seq % this.capacity].id)) this.matches.push(seq);
      }
    }
    this.viewport.scrollTop = 0;
    this.invalidate(true);
    return true;
  }

  clear() {
    this.ring = new Array(this.capacity);
    this.total = 0;
    this.matches = [];
    this.matchStart = 0;
    this.pending = [];
    this.invalidate();
  }

  // Rows shown (after the filter).
  get count() {
    return this.filter ? this.matches.length - this.matchStart : Math.min(this.total, this.capacity);
  }

  // The frame in row `i`, newest first.
  frameAt(i) {
    const seq = this.filter ? this.matches[this.matches.length - 1 - i] : this.total - 1 - i;
    return this.ring[seq % this.capacity];
  }

  // New frames redraw at most every MIN_REDRAW_MS (a table changing 60 times a second cannot
  // be read anyway, and each redraw costs style and layout); scrolling redraws at once.
  invalidate(now = false) {
    this.dirty = true;
    if (this.raf || this.later) return;
    const wait = now ? 0 : MIN_REDRAW_MS - (performance.now() - this.drawnAt);
    const draw = () => { this.raf = requestAnimationFrame(() => { this.raf = 0; this.render(); }); };
    if (wait > 0) this.later = setTimeout(() => { this.later = 0; draw(); }, wait);
    else draw();
  }

  render() {
    if (!this.dirty) return;
    this.dirty = false;
    this.drawnAt = performance.now();
    const count = this.count;
    this.spacer.style.height = `${count * ROW_H}px`;
    this.viewport.setAttribute("aria-rowcount", String(count));
    this.el.dataset.rows = String(count);
    const height = this.viewport.clientHeight || 400;
    const first = Math.min(Math.floor(this.viewport.scrollTop / ROW_H), Math.max(0, count - 1));
    const n = Math.min(Math.ceil(height / ROW_H) + 1, Math.max(0, count - first));
    while (this.pool.length < n) {
      const cells = COLUMNS.map(() => h("span", { role: "cell" }));
      const row = h("div", { class: "vt-row", role: "row" }, cells);
      this.pool.push({ row, cells, frame: null });
      this.rows.append(row);
    }
    this.rows.style.transform = `translateY(${first * ROW_H}px)`;
    for (let i = 0; i < this.pool.length; i++) {
      const slot = this.pool[i];
      if (i >= n) {
        slot.row.hidden = true;
        continue;
      }
      slot.row.hidden = false;
      slot.row.setAttribute("aria-rowindex", String(first + i + 1));
      const f = this.frameAt(first + i);
      if (slot.frame === f) continue;
      slot.frame = f;
      const c = slot.cells;
      c[0].textContent = f.time;
      c[1].textContent = this.dongleName(f.dongle);
      c[2].textContent = f.dir;
      c[3].textContent = f.bus;
      c[4].textContent = f.id;
      c[5].textContent = f.dlc;
      c[6].textContent = f.data;
    }
    if (this.onRender) this.onRender(count);
  }

  key(e) {
    const page = Math.max(1, Math.floor(this.viewport.clientHeight / ROW_H) - 1) * ROW_H;
    const moves = { ArrowDown: ROW_H, ArrowUp: -ROW_H, PageDown: page, PageUp: -page };
    if (e.key in moves) this.viewport.scrollTop += moves[e.key];
    else if (e.key === "Home") this.viewport.scrollTop = 0;
    else if (e.key === "End") this.viewport.scrollTop = this.viewport.scrollHeight;
    else return;
    e.preventDefault();
  }
}

// A console `can_frame` event as a table row.
export function frameRow(ev) {
  const t = ev.ts.indexOf("T");
  return {
    time: t >= 0 ? ev.ts.slice(t + 1, -1) : ev.ts,
    dongle: ev.dongle_id,
    dir: ev.direction,
    bus: ev.bus,
    id: ev.id,
    dlc: ev.dlc,
    data: ev.data_hex + (ev.is_remote ? " (remote)" : "") + (ev.is_error ? " (error)" : ""),
  };
}
