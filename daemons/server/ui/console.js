// One console stream (SSE) with a visible connection state and exact resume.
//
// The browser's EventSource reconnects by itself after a dropped connection and sends the last
// ID it saw as `Last-Event-ID`; when it gives up (the server answered something other than a
// 200 event stream) or when the user asks for a reconnect, a new EventSource starts with
// `last_event_id=` (the query form of the same header). Either way, the server replays exactly
// the events after that ID, or sends one `stream_reset` first when it cannot: the state shown
// is `resumed` (nothing missed) or `reset` (with the reason), never silent.

import { streamUrl } from "./api.js";

const TYPES = ["can_frame", "presence", "log", "group_state", "stream_reset", "command_status"];
const RETRY_MS = 2000;

export class ConsoleStream {
  // path: `/streams/groups/{id}/console` etc.; params: extra query parameters; onEvent(type,
  // data, id); onState({state, detail, lastId}).
  constructor(path, { params = {}, onEvent, onState }) {
    this.path = path;
    this.params = params;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.lastId = null;
    this.source = null;
    this.timer = null;
    this.closed = false;
    this.resuming = false;
    this.firstAfterOpen = false;
    this.reconnects = 0;
    this.events = 0;
    this.listeners = TYPES.map((type) => [type, (ev) => this.dispatch(type, ev)]);
  }

  open() {
    this.closed = false;
    this.connect(this.lastId);
  }

  connect(fromId) {
    clearTimeout(this.timer);
    this.detach();
    const params = { ...this.params };
    if (fromId) params.last_event_id = fromId;
    this.resuming = Boolean(fromId);
    this.setState(fromId ? "reconnecting" : "connecting", fromId ? `from ${fromId}` : "");
    const source = new EventSource(streamUrl(this.path, params));
    this.source = source;
    for (const [type, fn] of this.listeners) source.addEventListener(type, fn);
    source.onopen = () => {
      this.firstAfterOpen = true;
      if (this.resuming) this.setState("resumed", `after ${this.lastId}`);
      else this.setState("live", "");
      this.resuming = true; // the browser's own reconnects resume from its last ID
    };
    source.onerror = () => {
      if (this.closed || source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up: try again ourselves, from our last ID.
        this.setState("disconnected", `retrying in ${RETRY_MS / 1000} s`);
        this.timer = setTimeout(() => this.connect(this.lastId), RETRY_MS);
      } else {
        this.reconnects += 1;
        this.setState("reconnecting", this.lastId ? `from ${this.lastId}` : "");
      }
    };
  }

  // A new connection from the last ID seen (the user's "Reconnect").
  restart() {
    this.reconnects += 1;
    this.connect(this.lastId);
  }

  dispatch(type, ev) {
    if (ev.target !== this.source) return;
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      return;
    }
    this.events += 1;
    if (type === "stream_reset") {
      this.setState("reset", `${data.reason}: resumed from ${data.oldest ?? "the start"}, events between ${data.requested ?? "?"} and it are missing`, data);
    } else if (this.firstAfterOpen && this.state === "resumed") {
      this.firstAfterOpen = false;
    }
    if (ev.lastEventId) this.lastId = ev.lastEventId;
    this.onEvent(type, data, ev.lastEventId);
  }

  setState(state, detail, reset) {
    this.state = state;
    this.onState({ state, detail, lastId: this.lastId, reconnects: this.reconnects, reset });
  }

  detach() {
    if (!this.source) return;
    for (const [type, fn] of this.listeners) this.source.removeEventListener(type, fn);
    this.source.onopen = this.source.onerror = null;
    this.source.close();
    this.source = null;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.detach();
  }
}
