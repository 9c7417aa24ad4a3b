// scorecast browser client: one dependency-free ES module.
//
//   import { ScorecastClient } from "/client.js";
//   const client = new ScorecastClient("wss://scores.example/ws", { topics: ["match.4711"] });
//   client.on("update", (u) => render(u.topic, u.state));
//   client.on("status", (s) => indicator(s));   // connecting | connected | reconnecting | draining | closed
//   client.connect();
//
// The state logic (ClientState) is pure and shared in meaning with the Python
// client (scorecast/client_state.py): a snapshot replaces a topic's state; an
// event with seq = position + 1 is applied as an RFC 7386 merge patch; any
// other seq (a gap, a duplicate, a step backwards) is dropped and the topic is
// queued to be resubscribed with `since` = position: flush() sends every
// queued topic as one subscribe, a moment after the first gap, so many gaps
// at once are one request; a `rate_limited` answer drops nothing (the gateway
// still streams what it held) and queues the topics again for a later
// flush; frames of a topic between a
// (re)subscribe and its `subscribed` answer are dropped. Every new connection
// resubscribes all topics with `since`, so a reconnect loses and repeats
// nothing. ScorecastClient owns the socket, timers and retries: exponential
// backoff with full jitter, `reconnect` hints from a draining gateway, and
// application pings.
//
// Transports: WebSocket by default; Server-Sent Events (GET /sse) when told
// (`transport: "sse"`) or, with `transport: "auto"` (the default), after
// `fallbackAfter` WebSocket attempts in a row that never opened (a proxy that
// blocks upgrades). The views and positions carry across the switch: the SSE
// URL's `since` holds every topic's position, and the browser's own reconnects
// resume with Last-Event-ID. `occupancy: true` asks for "N watching" gauges,
// emitted as "occupancy" {topic, subscribers, ts}.

export const PROTOCOL_VERSION = 1;
export const DEFAULT_MAX_TOPICS_PER_REQUEST = 100;
// gaps seen within this many ms of the first go out as one resubscribe
export const GAP_BATCH_MS = 10;
// after a rate_limited answer: wait this long (doubling, jittered) to ask again
export const RATE_LIMITED_RETRY_MS = 1000;
const RATE_LIMITED_RETRY_MAX_MS = 30000;

export const Status = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  DRAINING: "draining",
  CLOSED: "closed",
});

// --- pure helpers -------------------------------------------------------------

const TOPIC = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+){0,7}$/;

/** 1 to 8 dot-separated tokens of [A-Za-z0-9_-], at most 200 characters. */
export function isValidTopic(topic) {
  return typeof topic === "string" && topic.length <= 200 && TOPIC.test(topic);
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** RFC 7386: `target` with `patch` applied; neither argument is modified. */
export function applyPatch(target, patch) {
  if (!isObject(patch)) return patch;
  const result = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = applyPatch(result[key], value);
  }
  return result;
}

function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((key) => Object.hasOwn(b, key) && deepEqual(a[key], b[key]));
}

/** Full jitter: uniform(0, min(maxDelay, minDelay * factor ** attempt)), in ms. */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const { minDelay = 500, maxDelay = 20000, factor = 2 } = backoff;
  const ceiling = Math.min(maxDelay, minDelay * factor ** Math.min(attempt, 64));
  return random() * ceiling;
}

function checkedTopics(topics) {
  const unique = [...new Set(typeof topics === "string" ? [topics] : topics)];
  for (const topic of unique) {
    if (!isValidTopic(topic)) {
      throw new TypeError(
        `invalid topic ${JSON.stringify(topic)}: 1 to 8 dot-separated tokens of [A-Za-z0-9_-]`,
      );
    }
  }
  return unique;
}

// --- the state machine (no I/O, no clock) ----------------------------------------
//
// receive(message) returns a list of outputs, each a plain object:
//   {type: "update", topic, seq, kind, state, data, ts, snapshot}
//   {type: "send", message}                 a frame to send to the gateway
//   {type: "welcomed", session, node, heartbeat, protocol}
//   {type: "reconnectHint", afterMs, reason}
//   {type: "gatewayError", code, message, requestId, topics}

export class ClientState {
  constructor(
    topics = [],
    { maxTopicsPerRequest = DEFAULT_MAX_TOPICS_PER_REQUEST, occupancy = false } = {},
  ) {
    this.maxTopicsPerRequest = maxTopicsPerRequest;
    this.occupancy = occupancy; // ask for occupancy gauges with every subscribe
    this.subscribers = new Map(); // topic -> the latest occupancy gauge
    this.views = new Map(); // topic -> {topic, seq, state, ts, pending}
    this.connected = false;
    this.session = null;
    this.node = null;
    this.heartbeat = null;
    this.counters = {
      snapshots: 0, events: 0, gaps: 0, duplicates: 0,
      resubscribes: 0, droppedInFlight: 0, badFrames: 0,
    };
    this._nextId = 1;
    this._requests = new Map(); // id -> {kind, topics, refusals}
    this._pings = new Map(); // id -> sent at (ms)
    this._queued = new Set(); // topics to resubscribe at the next flush()
    for (const topic of checkedTopics(topics)) this.views.set(topic, newView(topic));
  }

  get topics() {
    return [...this.views.keys()];
  }

  view(topic) {
    return this.views.get(topic);
  }

  /** Want `topics`; the frames to send now (none while disconnected). */
  subscribe(topics) {
    const wanted = checkedTopics(topics);
    for (const topic of wanted) if (!this.views.has(topic)) this.views.set(topic, newView(topic));
    return this.connected ? this._subscribeFrames(wanted) : [];
  }

  /** Forget `topics` and their state; the frames to send now. */
  unsubscribe(topics) {
    const dropped = checkedTopics(topics).filter((topic) => this.views.delete(topic));
    if (dropped.length === 0 || !this.connected) return [];
    const id = this._nextId++;
    this._requests.set(id, { kind: "unsubscribe", topics: dropped, refusals: [] });
    return [{ type: "send", message: { type: "unsubscribe", id, topics: dropped } }];
  }

  /** An `auth` request refreshing the connection's token; answered by an
   * `authed` output or a `gatewayError` carrying its id. */
  authenticate(token) {
    const id = this._nextId++;
    this._requests.set(id, { kind: "auth", topics: [], refusals: [] });
    return { type: "send", message: { type: "auth", id, token } };
  }

  /** True when topics wait for flush() (after a gap or a rate limit). */
  get resubscribeDue() {
    return this._queued.size > 0;
  }

  /** One subscribe (split only past the per-request limit) for every topic
   * queued since the last flush, each resuming from its position. */
  flush() {
    const topics = [...this._queued].filter((topic) => this.views.get(topic)?.pending === null);
    this._queued.clear();
    if (topics.length === 0 || !this.connected) return [];
    this.counters.resubscribes += topics.length;
    return this._subscribeFrames(topics);
  }

  ping(now) {
    const id = this._nextId++;
    this._pings.set(id, now);
    return { type: "send", message: { type: "ping", id } };
  }

  pingOverdue(now, timeout) {
    for (const sent of this._pings.values()) if (now - sent > timeout) return true;
    return false;
  }

  /** A new connection: resubscribe every topic, resuming from its position. */
  connectionMade() {
    this.connected = true;
    this._queued.clear();
    this._requests.clear();
    this._pings.clear();
    return this._subscribeFrames(this.topics);
  }

  /** An SSE stream opened: it subscribed every topic by its URL (no
   * `subscribed` answer comes), so nothing is in flight. */
  streamOpened() {
    this.connected = true;
    this._requests.clear();
    this._pings.clear();
    for (const view of this.views.values()) view.pending = null;
  }

  /** The SSE form of every topic's position: `T1:n,T2:m` (those known). */
  cursor() {
    return [...this.views.values()]
      .filter((view) => view.seq !== null)
      .map((view) => `${view.topic}:${view.seq}`)
      .join(",");
  }

  connectionLost() {
    this.connected = false;
    this._queued.clear(); // the next connection resubscribes everything
    this._requests.clear();
    this._pings.clear();
    for (const view of this.views.values()) view.pending = null;
  }

  /** One decoded gateway frame; what follows from it. Never throws. */
  receive(message) {
    if (!isObject(message)) {
      this.counters.badFrames++;
      return [];
    }
    const handler = HANDLERS[message.type];
    if (handler === undefined) return []; // unknown types: the gateway may grow
    try {
      return handler.call(this, message);
    } catch (error) {
      if (!(error instanceof BadFrame)) throw error;
      this.counters.badFrames++;
      return [];
    }
  }

  _onEvent(message) {
    const view = this._liveView(message.topic);
    if (view === undefined) return [];
    const seq = integer(message.seq);
    if (view.seq !== null && seq === view.seq + 1) {
      view.seq = seq;
      view.ts = message.ts ?? null;
      view.state = applyPatch(view.state, message.data);
      this.counters.events++;
      const kind = typeof message.kind === "string" ? message.kind : "event";
      return [update(view, kind, message.data ?? null, false)];
    }
    // a gap, a repeat, a step backwards, or an event before any snapshot:
    // never apply it; queue the topic to be restarted from what we hold
    if (view.seq !== null && seq <= view.seq) this.counters.duplicates++;
    else this.counters.gaps++;
    this._queued.add(view.topic);
    return [];
  }

  _onSnapshot(message) {
    const view = this._liveView(message.topic);
    if (view === undefined) return [];
    const seq = integer(message.seq);
    if (seq < 0) throw new BadFrame("negative seq");
    const state = message.state ?? null;
    this.counters.snapshots++;
    if (seq === view.seq && deepEqual(state, view.state)) return []; // nothing changed
    view.seq = seq;
    view.state = state;
    view.ts = message.ts ?? null;
    return [update(view, "snapshot", null, true)];
  }

  _onSubscribed(message) {
    const id = integer(message.id);
    const request = this._requests.get(id);
    if (request === undefined) return [];
    this._requests.delete(id);
    const granted = new Set(Array.isArray(message.topics) ? message.topics : []);
    const refused = [];
    for (const topic of request.topics) {
      const view = this.views.get(topic);
      if (view === undefined || view.pending !== id) continue; // a newer request rules
      if (granted.has(topic)) view.pending = null;
      else {
        refused.push(topic);
        this.views.delete(topic);
      }
    }
    if (refused.length === 0) return [];
    const text = request.refusals.join("; ") || "not allowed by the token";
    return [gatewayError("forbidden", text, id, refused)];
  }

  _onError(message) {
    const id = Number.isInteger(message.id) ? message.id : null;
    const code = String(message.code);
    const text = String(message.message ?? "");
    const request = id === null ? undefined : this._requests.get(id);
    if (request === undefined || request.kind !== "subscribe") {
      return [gatewayError(code, text, id, [])];
    }
    if (code === "forbidden") {
      request.refusals.push(text); // the `subscribed` that follows leaves them out
      return [];
    }
    if (code === "rate_limited") {
      // refused for now, not for good: keep every topic, ask again later
      this._requests.delete(id);
      for (const topic of request.topics) {
        const view = this.views.get(topic);
        if (view?.pending === id) {
          view.pending = null;
          this._queued.add(topic);
        }
      }
      return [gatewayError(code, text, id, [])];
    }
    this._requests.delete(id); // the whole subscribe was refused
    const refused = request.topics.filter((topic) => this.views.get(topic)?.pending === id);
    for (const topic of refused) this.views.delete(topic);
    return [gatewayError(code, text, id, refused)];
  }

  _onUnsubscribed(message) {
    this._requests.delete(message.id);
    return [];
  }

  _onAuthed(message) {
    this._requests.delete(message.id);
    return [{ type: "authed", requestId: integer(message.id), exp: integer(message.exp) }];
  }

  _onPong(message) {
    this._pings.delete(message.id);
    return [];
  }

  _onWelcome(message) {
    this.session = String(message.session);
    this.node = String(message.node);
    this.heartbeat = typeof message.heartbeat === "number" ? message.heartbeat : null;
    const protocol = message.protocol ?? null;
    return [{ type: "welcomed", session: this.session, node: this.node,
              heartbeat: this.heartbeat, protocol }];
  }

  _onOccupancy(message) {
    if (typeof message.topic !== "string" || !this.views.has(message.topic)) return [];
    const subscribers = integer(message.subscribers);
    this.subscribers.set(message.topic, subscribers);
    return [{ type: "occupancy", topic: message.topic, subscribers, ts: message.ts ?? null }];
  }

  _onReconnect(message) {
    const afterMs = typeof message.after_ms === "number" ? Math.max(0, message.after_ms) : 0;
    return [{ type: "reconnectHint", afterMs, reason: String(message.reason ?? "") }];
  }

  _liveView(topic) {
    const view = typeof topic === "string" ? this.views.get(topic) : undefined;
    if (view === undefined) {
      if (typeof topic !== "string") throw new BadFrame("no topic");
      return undefined; // not (or no longer) subscribed
    }
    if (view.pending !== null) {
      this.counters.droppedInFlight++;
      return undefined;
    }
    return view;
  }

  _subscribeFrames(topics) {
    const frames = [];
    for (let start = 0; start < topics.length; start += this.maxTopicsPerRequest) {
      const batch = topics.slice(start, start + this.maxTopicsPerRequest);
      const id = this._nextId++;
      this._requests.set(id, { kind: "subscribe", topics: batch, refusals: [] });
      const message = { type: "subscribe", id, topics: batch };
      if (this.occupancy) message.occupancy = true;
      const since = {};
      for (const topic of batch) {
        const view = this.views.get(topic);
        view.pending = id;
        if (view.seq !== null) since[topic] = view.seq;
      }
      if (Object.keys(since).length > 0) message.since = since;
      frames.push({ type: "send", message });
    }
    return frames;
  }
}

const HANDLERS = {
  event: ClientState.prototype._onEvent,
  snapshot: ClientState.prototype._onSnapshot,
  subscribed: ClientState.prototype._onSubscribed,
  unsubscribed: ClientState.prototype._onUnsubscribed,
  error: ClientState.prototype._onError,
  pong: ClientState.prototype._onPong,
  authed: ClientState.prototype._onAuthed,
  welcome: ClientState.prototype._onWelcome,
  reconnect: ClientState.prototype._onReconnect,
  occupancy: ClientState.prototype._onOccupancy,
};

class BadFrame extends Error {}

function integer(value) {
  if (!Number.isInteger(value)) throw new BadFrame(`expected an integer, got ${value}`);
  return value;
}

function newView(topic) {
  return { topic, seq: null, state: null, ts: null, pending: null };
}

function update(view, kind, data, snapshot) {
  return { type: "update", topic: view.topic, seq: view.seq, kind, state: view.state,
           data, ts: view.ts, snapshot };
}

function gatewayError(code, message, requestId, topics) {
  return { type: "gatewayError", code, message, requestId, topics };
}

// --- the connection ---------------------------------------------------------------

const SSE_TYPES = ["welcome", "snapshot", "event", "occupancy", "error", "reconnect", "message"];

/** The SSE endpoint beside a WebSocket URL: ws -> http, wss -> https, /ws -> /sse. */
export function sseUrlFor(url) {
  const parsed = new URL(url);
  parsed.protocol = parsed.protocol === "wss:" ? "https:" : "http:";
  parsed.pathname = parsed.pathname.replace(/\/ws$/, "") + "/sse";
  parsed.search = "";
  return parsed.toString();
}

/**
 * An EventSource dressed as the WebSocket the client drives: readyState,
 * onopen / onmessage / onclose, close(). It is one-way: a subscribe or
 * unsubscribe "sent" on it asks for a new stream (onrestart). An error while
 * the browser reconnects by itself is `onreconnecting`; a stream the browser
 * gave up on (an HTTP refusal) closes with 1006 and the client's backoff.
 */
class SseSocket {
  constructor(EventSourceImpl, url) {
    this.sse = true;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = this.onreconnecting = this.onrestart = null;
    this._source = null;
    if (url === null) {
      // no topics yet: an idle stream until subscribe() asks for a real one
      this.readyState = 1;
      queueMicrotask(() => this.onopen?.());
      return;
    }
    const source = new EventSourceImpl(url);
    this._source = source;
    source.onopen = () => {
      this.readyState = 1;
      this.onopen?.();
    };
    const deliver = (event) => {
      if (typeof event.data === "string") this.onmessage?.({ data: event.data });
    };
    for (const type of SSE_TYPES) {
      if (type !== "error") source.addEventListener(type, deliver);
    }
    // "error" is both the gateway's error message and the stream's own failure
    source.addEventListener("error", (event) => {
      if (typeof event.data === "string") {
        deliver(event);
      } else if (source.readyState === 2) {
        this.readyState = 3;
        this.onclose?.({ code: 1006, reason: "event stream failed" });
      } else {
        this.readyState = 0;
        this.onreconnecting?.();
      }
    });
  }

  send(text) {
    const type = JSON.parse(text).type;
    if (type === "subscribe" || type === "unsubscribe") this.onrestart?.();
  }

  close() {
    this.readyState = 3;
    this._source?.close();
  }
}

/** The client stopped for good (1008 policy close, or a URL it cannot use). */
export class ClientFailed extends Error {}

/**
 * One WebSocket to a gateway, kept alive, and a view per topic.
 *
 * Options: token (string, or a function returning one or a Promise of one,
 * called before each connection attempt; sent as ?token= since browsers
 * cannot set headers on a WebSocket), topics, backoff {minDelay, maxDelay,
 * factor} in ms, pingInterval / pingTimeout in ms (default: the gateway's
 * heartbeat), openTimeout in ms (10000), WebSocket (the constructor to use; default globalThis.WebSocket),
 * transport ("auto", "websocket" or "sse"), sseUrl (default: the URL with
 * http(s) and /sse), fallbackAfter (WebSocket attempts that never open before
 * "auto" moves to SSE; 2), EventSource (default globalThis.EventSource),
 * occupancy (true: ask for "N watching").
 *
 * Events, via on(type, fn) which returns a function that removes fn:
 *   "update"  {topic, seq, kind, state, data, ts, snapshot}
 *   "status"  one of Status
 *   "error"   {code, message, requestId, topics} from the gateway, or a ClientFailed
 *   "occupancy" {topic, subscribers, ts} (with occupancy: true)
 *   "transport" "websocket" or "sse", when the client starts using it
 */
export class ScorecastClient {
  constructor(url, options = {}) {
    const parsed = new URL(url);
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new TypeError(`a gateway URL is ws://HOST[:PORT]/ws or wss://..., not ${url}`);
    }
    this.url = url;
    this.token = options.token ?? null;
    this.backoff = { minDelay: 500, maxDelay: 20000, factor: 2, ...options.backoff };
    this.pingInterval = options.pingInterval ?? null;
    this.pingTimeout = options.pingTimeout ?? null;
    this.openTimeout = options.openTimeout ?? 10000;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.EventSource = options.EventSource ?? globalThis.EventSource;
    this.transport = options.transport ?? "auto";
    if (!["auto", "websocket", "sse"].includes(this.transport)) {
      throw new TypeError(`transport is "auto", "websocket" or "sse", not ${this.transport}`);
    }
    this.sseUrl = options.sseUrl ?? sseUrlFor(url);
    this.fallbackAfter = options.fallbackAfter ?? 2;
    this.using = this.transport === "sse" ? "sse" : "websocket";
    this._wsFailures = 0;
    this._opened = false;
    this.state = new ClientState(options.topics ?? [], options);
    this.status = Status.CLOSED;
    this.reconnects = 0;
    this.failure = null;
    this._listeners = {
      update: new Set(), status: new Set(), error: new Set(), occupancy: new Set(),
      transport: new Set(),
    };
    this._ws = null;
    this._attempt = 0;
    this._timers = new Set();
    this._auths = new Map(); // auth request id -> {resolve, reject} of refreshToken
    this._hintAt = null;
    this._flushTimer = null;
    this._limited = 0; // rate_limited answers in a row
    this._closing = true;
    if (typeof window !== "undefined" && typeof window.addEventListener === "function") {
      // back online: try now rather than at the end of a long backoff
      window.addEventListener("online", () => this._reconnectNow());
    }
  }

  on(type, listener) {
    const listeners = this._listeners[type];
    if (listeners === undefined) throw new TypeError(`no such event: ${type}`);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  /** Connect, and keep reconnecting until close(). */
  connect() {
    if (!this._closing) return;
    this._closing = false;
    this.failure = null;
    this._setStatus(Status.CONNECTING);
    this._open();
  }

  close() {
    this._closing = true;
    this._clearTimers();
    this._drop(1000, "client closing");
    this._setStatus(Status.CLOSED);
  }

  subscribe(...topics) {
    this._send(this.state.subscribe(topics));
  }

  unsubscribe(...topics) {
    this._send(this.state.unsubscribe(topics));
  }

  view(topic) {
    return this.state.view(topic);
  }

  get(topic) {
    return this.state.view(topic)?.state ?? null;
  }

  get topics() {
    return this.state.topics;
  }

  // --- one connection ------------------------------------------------------------

  async _open() {
    let token = this.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (error) {
      this._emit("error", error);
      this._retry();
      return;
    }
    if (this._closing) return;
    if (this.using === "sse") {
      this._openSse(token);
      return;
    }
    const url = new URL(this.url);
    if (token) url.searchParams.set("token", token);
    let ws;
    try {
      ws = new this.WebSocket(url.toString());
    } catch (error) {
      this._fail(new ClientFailed(`cannot open ${this.url}: ${error.message}`));
      return;
    }
    this._ws = ws;
    this._hintAt = null;
    this._opened = false;
    ws.onopen = () => {
      this._opened = true;
      this._wsFailures = 0;
      this._send(this.state.connectionMade());
    };
    ws.onmessage = (event) => this._onFrame(event.data);
    ws.onclose = (event) => this._lost(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event always follows
    this._later(this.openTimeout, () => {
      if (ws === this._ws && ws.readyState === 0) this._drop(1000, "open timeout");
    });
  }

  /** One SSE stream with every topic and its position in the URL; the
   * browser's own reconnects resume it with Last-Event-ID. */
  _openSse(token) {
    const url = new URL(this.sseUrl);
    const topics = this.state.topics;
    url.searchParams.set("topics", topics.join(","));
    const cursor = this.state.cursor();
    if (cursor) url.searchParams.set("since", cursor);
    if (this.state.occupancy) url.searchParams.set("occupancy", "1");
    if (token) url.searchParams.set("token", token);
    const stream = new SseSocket(this.EventSource, topics.length ? url.toString() : null);
    this._ws = stream;
    this._hintAt = null;
    stream.onopen = () => {
      this.state.streamOpened();
      if (!topics.length) this._setStatus(Status.CONNECTED); // nothing to stream yet
    };
    stream.onreconnecting = () => {
      // the browser reconnects by itself (Last-Event-ID): views stay, nothing in flight
      this.state.connectionLost();
      this._setStatus(Status.RECONNECTING);
    };
    stream.onrestart = () => this._restartStream();
    stream.onmessage = (event) => this._onFrame(event.data);
    stream.onclose = (event) => this._lost(stream, event.code, event.reason);
  }

  /** The topics changed (or a gap needs a resubscribe): a new SSE stream
   * from the positions held, at once. */
  _restartStream() {
    if (this._restartQueued) return;
    this._restartQueued = true;
    queueMicrotask(() => {
      this._restartQueued = false;
      const stream = this._ws;
      if (this._closing || stream === null || !stream.sse) return;
      stream.onopen = stream.onmessage = stream.onclose = stream.onreconnecting = null;
      stream.close();
      this._ws = null;
      this.state.connectionLost();
      this._open();
    });
  }

  _onFrame(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.state.counters.badFrames++;
      return;
    }
    let limited = false;
    for (const output of this.state.receive(message)) {
      switch (output.type) {
        case "update":
          this._emit("update", output);
          break;
        case "send":
          this._send([output]);
          break;
        case "welcomed":
          this._attempt = 0;
          this._setStatus(Status.CONNECTED);
          if (!this._ws?.sse) this._startHeartbeat(); // SSE: no pongs; the stream's own errors tell
          break;
        case "occupancy":
          this._emit("occupancy", output);
          break;
        case "reconnectHint":
          this._hintAt = Date.now() + output.afterMs;
          this._setStatus(Status.DRAINING);
          // leave at the hinted time if the gateway has not closed by then
          this._later(output.afterMs, () => this._drop(1000, "reconnecting as asked"));
          break;
        case "authed":
          this._settle(output.requestId, null, output.exp);
          break;
        case "gatewayError":
          if (output.code === "rate_limited") limited = true;
          this._settle(output.requestId, new ClientFailed(output.message));
          this._emit("error", output);
          break;
      }
    }
    if (message?.type === "subscribed") this._limited = 0;
    this._scheduleFlush(limited);
  }

  /** Send the queued resubscribes as one request: soon after a gap, later
   * (doubling, jittered) after a rate_limited answer. */
  _scheduleFlush(limited) {
    if (!this.state.resubscribeDue) return;
    if (limited) {
      const ceiling = Math.min(RATE_LIMITED_RETRY_MAX_MS, RATE_LIMITED_RETRY_MS * 2 ** this._limited++);
      if (this._flushTimer !== null) this._cancelTimer(this._flushTimer);
      this._flushTimer = this._later(ceiling / 2 + (Math.random() * ceiling) / 2, () => this._flush());
    } else if (this._flushTimer === null) {
      this._flushTimer = this._later(GAP_BATCH_MS, () => this._flush());
    }
  }

  _flush() {
    this._flushTimer = null;
    this._send(this.state.flush());
  }

  _startHeartbeat() {
    const interval = this.pingInterval ?? (this.state.heartbeat ?? 20) * 1000;
    const timeout = this.pingTimeout ?? interval;
    const beat = () => {
      if (this._ws === null || this._ws.readyState !== 1) return;
      const now = Date.now();
      if (this.state.pingOverdue(now, timeout)) {
        this._drop(1000, "heartbeat timeout");
        return;
      }
      this._send([this.state.ping(now)]);
      this._later(interval, beat);
    };
    this._later(interval, beat);
  }

  /** Close the socket now and go on as if the gateway had closed it. */
  _drop(code, reason) {
    const ws = this._ws;
    if (ws === null) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this._lost(ws, code, reason);
  }

  /** Give the open connection a fresh token (the `auth` message), so that it
   * outlives the old token's `exp`; resolves with the new `exp`. */
  refreshToken(token) {
    if (this._ws?.sse) {
      // an SSE stream cannot be told: a new stream with the new token, resuming
      this.token = token;
      this._restartStream();
      return Promise.resolve(null);
    }
    if (this._ws === null || this._ws.readyState !== 1) {
      return Promise.reject(new Error("not connected: the next connection sends the token"));
    }
    const frame = this.state.authenticate(token);
    return new Promise((resolve, reject) => {
      this._auths.set(frame.message.id, { resolve, reject });
      this._send([frame]);
    });
  }

  _settle(requestId, error, exp) {
    const waiting = this._auths.get(requestId);
    if (waiting === undefined) return;
    this._auths.delete(requestId);
    if (error) waiting.reject(error);
    else waiting.resolve(exp);
  }

  _lost(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    this.state.connectionLost();
    for (const id of [...this._auths.keys()]) this._settle(id, new Error("the connection closed first"));
    this._clearTimers();
    if (this._closing) return;
    if (code === 1008) {
      this._fail(new ClientFailed(`gateway refused this client (1008 policy): ${reason}`));
      return;
    }
    if (!ws.sse && !this._opened && this.transport === "auto" && this.EventSource) {
      // upgrades that never open (a proxy in the way): Server-Sent Events instead
      if (++this._wsFailures >= this.fallbackAfter) {
        this.using = "sse";
        this._attempt = 0;
        this._emit("transport", "sse");
      }
    }
    if (this._hintAt !== null) {
      this._setStatus(Status.DRAINING);
      this._later(Math.max(0, this._hintAt - Date.now()), () => this._reopen());
    } else {
      this._retry();
    }
  }

  _retry() {
    this._setStatus(Status.RECONNECTING);
    const delay = backoffDelay(this._attempt++, this.backoff);
    this._later(delay, () => this._reopen());
  }

  _reconnectNow() {
    if (this._closing || this._ws !== null) return;
    this._clearTimers();
    this._reopen();
  }

  _reopen() {
    if (this._closing) return;
    this.reconnects++;
    this._open();
  }

  _fail(error) {
    this.failure = error;
    this._closing = true;
    this._clearTimers();
    this._setStatus(Status.CLOSED);
    this._emit("error", error);
  }

  _send(frames) {
    const ws = this._ws;
    if (ws === null || ws.readyState !== 1) return; // sent on the next connection
    for (const frame of frames) ws.send(JSON.stringify(frame.message));
  }

  _later(ms, fn) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
    return timer;
  }

  _cancelTimer(timer) {
    clearTimeout(timer);
    this._timers.delete(timer);
  }

  _clearTimers() {
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this._flushTimer = null;
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this._emit("status", status);
  }

  _emit(type, value) {
    for (const listener of this._listeners[type]) {
      try {
        listener(value);
      } catch (error) {
        console.error(`scorecast: a "${type}" listener threw`, error);
      }
    }
  }
}
