// The live-scores page: football.live as a list, one match.<id> in detail.
//
// The board topic maps match id -> {home, away, score, minute, period}; a
// match topic holds {id, home: {name, code, score, red}, away, minute, added,
// period, status, events: [...]}. Clicking a match (or opening #match=<id>)
// subscribes to its topic and drops the one shown before. The page's ?token=
// is passed on to the gateway, for deployments that require tokens; its
// ?transport=sse|websocket|auto picks how (auto: WebSocket, SSE if upgrades
// fail). The detail shows how many are watching the match (occupancy).

import { ScorecastClient, Status } from "/client.js";

const BOARD = "football.live";

const STATUS_TEXT = {
  [Status.CONNECTING]: "Connecting…",
  [Status.CONNECTED]: "Live",
  [Status.RECONNECTING]: "Reconnecting…",
  [Status.DRAINING]: "Switching server…",
  [Status.CLOSED]: "Offline",
};

const EVENT_LABEL = {
  kickoff: "Kick-off",
  goal: "Goal",
  card: "Card",
  substitution: "Sub",
  period: "Period",
  fulltime: "Full time",
};

const $ = (selector, root = document) => root.querySelector(selector);

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function minuteText(minute, added) {
  if (typeof minute !== "number") return "";
  return added ? `${minute}+${added}'` : `${minute}'`;
}

function periodText(period) {
  return { "1H": "1st half", HT: "Half time", "2H": "2nd half", FT: "Full time" }[period] ?? "";
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function flash(node) {
  node.classList.remove("flash");
  void node.offsetWidth; // restart the animation
  node.classList.add("flash");
}

// --- the board --------------------------------------------------------------------

const scores = new Map(); // match id -> last score shown, to flash changes
let selected = null; // match id shown in detail

function renderBoard(board) {
  const list = $("#matches");
  const entries = Object.entries(board ?? {}).sort(([a], [b]) => a.localeCompare(b, "en", { numeric: true }));
  $("#live-count").textContent = entries.length ? String(entries.length) : "";
  if (entries.length === 0) {
    list.replaceChildren(el("li", "placeholder", board ? "No live matches right now." : "Waiting for live matches…"));
    return;
  }
  const rows = entries.map(([id, line]) => {
    const row = el("li", "match");
    row.dataset.matchId = id;
    row.tabIndex = 0;
    row.setAttribute("role", "button");
    if (id === selected) row.classList.add("selected");
    if (line.period === "FT") row.classList.add("finished");
    const score = el("span", "score", String(line.score ?? "–").replace("-", " – "));
    row.append(
      el("span", "code home", line.home ?? "?"),
      score,
      el("span", "code away", line.away ?? "?"),
      el("span", `badge period-${line.period ?? "none"}`, line.period === "HT" || line.period === "FT" ? line.period : minuteText(line.minute)),
    );
    if (scores.has(id) && scores.get(id) !== line.score) flash(row);
    scores.set(id, line.score);
    return row;
  });
  list.replaceChildren(...rows);
}

function onBoardClick(event) {
  const row = event.target.closest("li.match");
  if (row) select(row.dataset.matchId);
}

function onBoardKey(event) {
  if (event.key === "Enter" || event.key === " ") onBoardClick(event);
}

// --- one match --------------------------------------------------------------------

function select(id) {
  if (id === selected) return;
  if (selected !== null) client.unsubscribe(`match.${selected}`);
  selected = id;
  history.replaceState(null, "", `#match=${id}`);
  for (const row of document.querySelectorAll("#matches li.match")) {
    row.classList.toggle("selected", row.dataset.matchId === id);
  }
  client.subscribe(`match.${id}`);
  renderWatching(null);
  renderMatch(null);
}

function renderWatching(count) {
  const text = typeof count === "number" ? `${count} watching` : "";
  $("#detail .watching").textContent = text;
}

function renderMatch(match, update) {
  const detail = $("#detail");
  $("#empty-detail").hidden = selected !== null;
  detail.hidden = selected === null;
  if (selected === null) return;
  if (!match) {
    detail.classList.add("loading");
    $(".match-status", detail).textContent = "Loading…";
    return;
  }
  detail.classList.remove("loading");
  for (const side of ["home", "away"]) {
    const team = match[side] ?? {};
    const box = $(`.team.${side}`, detail);
    $(".team-code", box).textContent = team.code ?? "";
    $(".team-name", box).textContent = team.name ?? "";
    $(".reds", box).replaceChildren(...Array.from({ length: team.red ?? 0 }, () => el("span", "red-card")));
    const score = $(`.score-${side}`, detail);
    const text = String(team.score ?? 0);
    if (score.textContent !== text && update && !update.snapshot) flash(score);
    score.textContent = text;
  }
  $(".minute", detail).textContent = match.period === "HT" || match.period === "FT" ? "" : minuteText(match.minute, match.added);
  $(".period", detail).textContent = periodText(match.period);
  $(".match-status", detail).textContent = match.status === "finished" ? "Finished" : match.status === "live" ? "" : (match.status ?? "");
  detail.dataset.period = match.period ?? "";
  renderEvents(match);
  if (update) {
    const when = update.ts ? new Date(update.ts * 1000).toLocaleTimeString() : "–";
    $(".meta", detail).textContent = `match.${selected} · seq ${update.seq} · updated ${when}`;
  }
}

function renderEvents(match) {
  const events = Array.isArray(match.events) ? [...match.events].reverse() : [];
  const items = events.map((event) => {
    const item = el("li", `event kind-${event.kind}`);
    const side = event.team === "home" || event.team === "away" ? match[event.team] : null;
    item.append(
      el("span", "event-minute", minuteText(event.minute, event.added)),
      el("span", `event-icon ${event.kind === "card" ? `card-${event.card}` : ""}`, event.kind === "card" ? "" : (EVENT_LABEL[event.kind] ?? event.kind)),
      el("span", "event-text", describe(event, side)),
    );
    return item;
  });
  $(".events").replaceChildren(...(items.length ? items : [el("li", "placeholder", "No events yet.")]));
}

function describe(event, side) {
  const team = side?.code ? ` (${side.code})` : "";
  switch (event.kind) {
    case "goal":
      return `${event.player ?? "Goal"}${team}${event.score ? ` · ${event.score.replace("-", " – ")}` : ""}`;
    case "card":
      return `${event.player ?? ""}${team} · ${event.second_yellow ? "second yellow" : event.card ?? ""} card`;
    case "substitution":
      return `${event.player_in ?? "?"} on for ${event.player_out ?? "?"}${team}`;
    case "kickoff":
      return "The match is under way";
    case "period":
      return periodText(event.period) || "Period";
    case "fulltime":
      return `Final score ${String(event.score ?? "").replace("-", " – ")}`.trim();
    default:
      return event.kind ?? "";
  }
}

// --- connection -----------------------------------------------------------------

function renderStatus(status) {
  const box = $("#status");
  box.dataset.status = status;
  $(".status-text", box).textContent = STATUS_TEXT[status] ?? status;
  document.body.classList.toggle("stale", status !== Status.CONNECTED);
}

const query = new URLSearchParams(location.search);
const token = query.get("token");
const transport = query.get("transport") ?? "auto";
const client = new ScorecastClient(wsUrl(), { topics: [BOARD], token, transport, occupancy: true });
const statuses = [];

client.on("status", (status) => {
  statuses.push(status);
  renderStatus(status);
});
client.on("update", (update) => {
  if (update.topic === BOARD) renderBoard(update.state);
  else if (update.topic === `match.${selected}`) renderMatch(update.state, update);
});
client.on("occupancy", (gauge) => {
  if (gauge.topic === `match.${selected}`) renderWatching(gauge.subscribers);
});
client.on("error", (error) => console.warn("scorecast:", error));

$("#matches").addEventListener("click", onBoardClick);
$("#matches").addEventListener("keydown", onBoardKey);

// exposed for the console and for tests: the client and its status history
window.scorecast = { client, statuses };

const linked = /^#match=([A-Za-z0-9_-]+)$/.exec(location.hash);
if (linked) select(linked[1]);
client.connect();
