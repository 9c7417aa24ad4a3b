// The browser client's pure state logic, with Node's own test runner:
//   node --test tests/js/
// The recorded sequences in sequences.json are shared with the Python client's
// tests (tests/test_client_state.py), so both clients answer frames alike.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import {
  ClientState,
  ScorecastClient,
  Status,
  applyPatch,
  backoffDelay,
  isValidTopic,
} from "../../gateway/static/client.js";

const { sequences } = JSON.parse(readFileSync(new URL("./sequences.json", import.meta.url)));

function normalise(output) {
  switch (output.type) {
    case "update": {
      const { topic, seq, kind, state, snapshot } = output;
      return { update: { topic, seq, kind, state, snapshot } };
    }
    case "send":
      return { send: output.message };
    case "gatewayError":
      return { error: { code: output.code, topics: output.topics } };
    case "reconnectHint":
      return { reconnect: output.afterMs };
    case "welcomed":
      return { welcomed: output.session };
    default:
      throw new Error(`unexpected output ${JSON.stringify(output)}`);
  }
}

function step(state, input) {
  if ("connect" in input) return state.connectionMade();
  if ("lost" in input) return state.connectionLost() ?? [];
  if ("subscribe" in input) return state.subscribe(input.subscribe);
  if ("unsubscribe" in input) return state.unsubscribe(input.unsubscribe);
  if ("flush" in input) return state.flush();
  return state.receive(input.receive);
}

describe("recorded sequences (shared with the Python client)", () => {
  for (const sequence of sequences) {
    test(sequence.name, () => {
      const state = new ClientState(sequence.topics);
      sequence.steps.forEach((input, index) => {
        const outputs = step(state, input).map(normalise);
        assert.deepEqual(outputs, input.out, `step ${index}: ${JSON.stringify(input)}`);
      });
      const views = Object.fromEntries(
        [...state.views.values()].map((view) => [view.topic, [view.seq, view.state]]),
      );
      assert.deepEqual(views, sequence.views);
    });
  }
});

describe("ClientState", () => {
  test("resubscribes are split to the gateway's per-request limit", () => {
    const topics = Array.from({ length: 250 }, (_, n) => `match.${n}`);
    const state = new ClientState(topics, { maxTopicsPerRequest: 100 });
    const frames = state.connectionMade();
    assert.deepEqual(frames.map((f) => f.message.topics.length), [100, 100, 50]);
    assert.equal(new Set(frames.map((f) => f.message.id)).size, 3);
  });

  test("ping and pong", () => {
    const state = new ClientState(["match.1"]);
    state.connectionMade();
    const ping = state.ping(1000);
    assert.equal(ping.message.type, "ping");
    assert.ok(state.pingOverdue(5000, 2000));
    state.receive({ type: "pong", id: ping.message.id });
    assert.ok(!state.pingOverdue(5000, 2000));
  });

  test("counters tell gaps from duplicates", () => {
    const state = new ClientState(["match.1"]);
    const [{ message }] = state.connectionMade();
    state.receive({ type: "subscribed", id: message.id, topics: ["match.1"] });
    state.receive({ type: "snapshot", topic: "match.1", seq: 1, ts: 1, state: {} });
    assert.deepEqual(state.receive({ type: "event", topic: "match.1", seq: 3, data: {} }), []);
    const [resubscribe] = state.flush();
    state.receive({ type: "subscribed", id: resubscribe.message.id, topics: ["match.1"] });
    state.receive({ type: "event", topic: "match.1", seq: 1, data: {} });
    state.flush();
    assert.equal(state.counters.gaps, 1);
    assert.equal(state.counters.duplicates, 1);
    assert.equal(state.counters.resubscribes, 2);
  });

  for (const topic of ["", "a..b", "match.*", "x".repeat(201), "a.b.c.d.e.f.g.h.i", 42]) {
    test(`invalid topic ${JSON.stringify(topic).slice(0, 20)} is refused locally`, () => {
      assert.throws(() => new ClientState([topic]), /invalid topic/);
      assert.throws(() => new ClientState().subscribe([topic]), /invalid topic/);
    });
  }
});

describe("applyPatch (RFC 7386 appendix A)", () => {
  const cases = [
    [{ a: "b" }, { a: "c" }, { a: "c" }],
    [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
    [{ a: "b" }, { a: null }, {}],
    [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
    [{ a: ["b"] }, { a: "c" }, { a: "c" }],
    [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
    [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
    [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
    [["a", "b"], ["c", "d"], ["c", "d"]],
    [{ a: "b" }, ["c"], ["c"]],
    [{ a: "foo" }, null, null],
    [{ a: "foo" }, "bar", "bar"],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: "b", c: null }, { a: "b" }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
    [null, { a: 1 }, { a: 1 }],
  ];
  for (const [target, patch, expected] of cases) {
    test(`${JSON.stringify(target)} + ${JSON.stringify(patch)}`, () => {
      const before = structuredClone(target);
      assert.deepEqual(applyPatch(target, patch), expected);
      assert.deepEqual(target, before, "the target is not modified");
    });
  }
});

describe("backoffDelay (full jitter)", () => {
  test("the ceiling doubles up to maxDelay", () => {
    const top = (attempt) => backoffDelay(attempt, { minDelay: 500, maxDelay: 20000 }, () => 1);
    assert.deepEqual([0, 1, 2, 3, 6, 7, 100].map(top), [500, 1000, 2000, 4000, 20000, 20000, 20000]);
  });

  test("delays spread over the whole range", () => {
    const delays = Array.from({ length: 2000 }, () => backoffDelay(3));
    assert.ok(Math.min(...delays) >= 0 && Math.max(...delays) <= 4000);
    assert.ok(Math.min(...delays) < 400 && Math.max(...delays) > 3600);
  });
});

describe("ScorecastClient construction", () => {
  test("refuses URLs that are not ws:// or wss://", () => {
    assert.throws(() => new ScorecastClient("http://127.0.0.1/ws"), /ws:\/\//);
    assert.throws(() => new ScorecastClient("not a url"));
  });

  test("starts closed, with its topics held and no socket opened", () => {
    const client = new ScorecastClient("ws://127.0.0.1:1/ws", { topics: ["football.live"] });
    assert.equal(client.status, Status.CLOSED);
    assert.deepEqual(client.topics, ["football.live"]);
    assert.equal(client.get("football.live"), null);
    assert.throws(() => client.on("nope", () => {}), /no such event/);
  });

  test("isValidTopic", () => {
    assert.ok(isValidTopic("match.4711"));
    assert.ok(isValidTopic("football.live"));
    assert.ok(!isValidTopic("match.>"));
  });
});

test("an auth request is answered by authed, or by an error with its id", () => {
  const state = new ClientState(["match.1"]);
  state.connectionMade();
  const send = state.authenticate("fresh.jwt.token");
  assert.deepEqual(send.message, { type: "auth", id: send.message.id, token: "fresh.jwt.token" });
  assert.deepEqual(state.receive({ type: "authed", id: send.message.id, exp: 1900000000 }), [
    { type: "authed", requestId: send.message.id, exp: 1900000000 },
  ]);
  const refused = state.authenticate("bad").message.id;
  const [error] = state.receive({ type: "error", id: refused, code: "unauthorized", message: "invalid token" });
  assert.equal(error.type, "gatewayError");
  assert.equal(error.requestId, refused);
  assert.equal(error.code, "unauthorized");
});

describe("ScorecastClient resubscribes (a fake WebSocket, real timers)", () => {
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      FakeSocket.last = this;
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.();
      }, 0);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
    receive(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
  }
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  test("gaps go as one request; rate_limited keeps the topics and asks again later", async () => {
    const topics = ["match.1", "match.2"];
    const client = new ScorecastClient("ws://127.0.0.1:1/ws", { topics, WebSocket: FakeSocket });
    const errors = [];
    client.on("error", (error) => errors.push(error));
    client.connect();
    await sleep(5);
    const ws = FakeSocket.last;
    assert.deepEqual(ws.sent, [{ type: "subscribe", id: 1, topics }]);
    ws.receive({ type: "subscribed", id: 1, topics });
    for (const topic of topics) ws.receive({ type: "snapshot", topic, seq: 1, ts: 1, state: {} });
    for (const topic of topics) ws.receive({ type: "event", topic, seq: 3, ts: 2, data: {} });
    assert.equal(ws.sent.length, 1, "nothing sent before the batch window ends");
    await sleep(40);
    const since = { "match.1": 1, "match.2": 1 };
    assert.deepEqual(ws.sent.slice(1), [{ type: "subscribe", id: 2, topics, since }]);
    ws.receive({ type: "error", id: 2, code: "rate_limited", message: "too many messages" });
    assert.deepEqual(client.topics, topics);
    assert.equal(errors[0].code, "rate_limited");
    await sleep(100);
    assert.equal(ws.sent.length, 2, "not asked again at once");
    await sleep(1000);
    assert.deepEqual(ws.sent.slice(2), [{ type: "subscribe", id: 3, topics, since }]);
    client.close();
  });
});
