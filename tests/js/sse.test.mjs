// The browser client's Server-Sent Events fallback and occupancy, with small
// honest fakes of WebSocket and EventSource (the real ones are driven in
// Chromium by tests/test_browser.py):   node --test tests/js/

import assert from "node:assert/strict";
import { test } from "node:test";

import { ClientState, ScorecastClient, Status, sseUrlFor } from "../../gateway/static/client.js";

const settle = (ms = 20) => new Promise((resolve) => setTimeout(resolve, ms));

function fakeWebSockets(behaviour) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => behaviour(this, sockets.length), 1);
    }
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
    receive(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    fail() {
      this.readyState = 3;
      this.onclose?.({ code: 1006, reason: "" });
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close() {
      this.readyState = 3;
    }
  }
  return { FakeWebSocket, sockets };
}

function fakeEventSources() {
  const sources = [];
  class FakeEventSource {
    constructor(url) {
      this.url = new URL(url);
      this.readyState = 0;
      this.listeners = {};
      sources.push(this);
    }
    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    }
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
    emit(message) {
      for (const fn of this.listeners[message.type] ?? []) fn({ data: JSON.stringify(message) });
    }
    drop() {
      this.readyState = 0; // the browser retries by itself
      for (const fn of this.listeners.error ?? []) fn({});
    }
    close() {
      this.readyState = 2;
    }
  }
  return { FakeEventSource, sources };
}

test("sseUrlFor maps the WebSocket URL to /sse", () => {
  assert.equal(sseUrlFor("wss://scores.example/ws"), "https://scores.example/sse");
  assert.equal(sseUrlFor("ws://127.0.0.1:8080/ws?token=x"), "http://127.0.0.1:8080/sse");
});

test("auto falls back to SSE after upgrades fail, keeping views and positions", async () => {
  const { FakeWebSocket, sockets } = fakeWebSockets((ws, n) => {
    if (n > 1) return ws.fail(); // later upgrades are blocked
    ws.open();
    ws.receive({ type: "welcome", protocol: 1, session: "s", node: "n", heartbeat: 20 });
    const id = ws.sent[0].id;
    ws.receive({ type: "subscribed", id, topics: ["match.1"] });
    ws.receive({ type: "snapshot", topic: "match.1", seq: 3, ts: 1, state: { home: 1 } });
    setTimeout(() => ws.fail(), 5);
  });
  const { FakeEventSource, sources } = fakeEventSources();
  const client = new ScorecastClient("ws://gw.example/ws", {
    topics: ["match.1"], occupancy: true, WebSocket: FakeWebSocket,
    EventSource: FakeEventSource, backoff: { minDelay: 1, maxDelay: 2 },
  });
  const transports = [];
  const gauges = [];
  const updates = [];
  client.on("transport", (t) => transports.push(t));
  client.on("occupancy", (o) => gauges.push(o));
  client.on("update", (u) => updates.push([u.seq, u.state]));
  client.connect();
  for (let i = 0; i < 100 && sources.length === 0; i++) await settle(5);
  assert.equal(sockets.length, 3); // one that worked, then two that never opened
  assert.deepEqual(transports, ["sse"]);
  const source = sources[0];
  assert.equal(source.url.pathname, "/sse");
  assert.equal(source.url.searchParams.get("topics"), "match.1");
  assert.equal(source.url.searchParams.get("since"), "match.1:3");
  assert.equal(source.url.searchParams.get("occupancy"), "1");
  source.open();
  source.emit({ type: "welcome", protocol: 1, session: "t", node: "n", heartbeat: 20 });
  assert.equal(client.status, Status.CONNECTED);
  source.emit({ type: "event", topic: "match.1", seq: 4, ts: 2, kind: "goal", data: { home: 2 } });
  source.emit({ type: "occupancy", topic: "match.1", subscribers: 7, ts: 3 });
  assert.deepEqual(updates, [[3, { home: 1 }], [4, { home: 2 }]]);
  assert.deepEqual(gauges, [{ type: "occupancy", topic: "match.1", subscribers: 7, ts: 3 }]);
  // the browser reconnects by itself: views stay, nothing is dropped as in flight
  source.drop();
  assert.equal(client.status, Status.RECONNECTING);
  source.open();
  source.emit({ type: "event", topic: "match.1", seq: 5, ts: 4, kind: "goal", data: { home: 3 } });
  assert.deepEqual(client.get("match.1"), { home: 3 });
  assert.equal(client.state.counters.gaps, 0);
  // a new topic: a new stream from the positions held
  client.subscribe("match.2");
  await settle();
  assert.equal(sources.length, 2);
  assert.equal(sources[1].url.searchParams.get("topics"), "match.1,match.2");
  assert.equal(sources[1].url.searchParams.get("since"), "match.1:5");
  assert.equal(sources[0].readyState, 2);
  client.close();
});

test("transport: sse never tries a WebSocket", async () => {
  const { FakeEventSource, sources } = fakeEventSources();
  const client = new ScorecastClient("ws://gw.example/ws", {
    topics: ["a.b"], transport: "sse", EventSource: FakeEventSource,
    WebSocket: class { constructor() { throw new Error("no WebSockets here"); } },
  });
  client.connect();
  await settle();
  assert.equal(sources.length, 1);
  assert.equal(sources[0].url.searchParams.get("since"), null);
  client.close();
});

test("subscribe frames ask for occupancy when told to", () => {
  const state = new ClientState(["m.1"], { occupancy: true });
  const [frame] = state.connectionMade();
  assert.equal(frame.message.occupancy, true);
  assert.deepEqual(new ClientState(["m.1"]).connectionMade()[0].message.occupancy, undefined);
});
