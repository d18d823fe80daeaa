// procdevices web: the topology as a picture, live.
//
// Data: GET /api/state once, then the server-sent events of /api/events: `state` (the whole
// snapshot, after every change and every second while this page is open) and `event` (each
// supervisor event as it happens, applied at once, so a restart that takes 30 ms still shows).
// Drawing: device cards (HTML) in a grid, columns by data flow, arrows in one SVG layer computed from
// the cards' positions. The DOM is rebuilt only when the topology's structure changes;
// otherwise values are updated in place (an expanded group stays expanded).
"use strict";

const ACTIONS = ["pause", "resume", "restart", "stop", "start"];
const STATE_RANK = { FATAL: 7, BACKOFF: 6, STOPPING: 5, STARTING: 4, QUEUED: 3, EXITED: 2, STOPPED: 1, RUNNING: 0 };

let current = null;      // the last snapshot
let structure = "";      // what the DOM was built for
const expanded = new Set();
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400); s %= 86400;
  const h = Math.floor(s / 3600); s %= 3600;
  const m = Math.floor(s / 60); s %= 60;
  if (d) return `${d}d${String(h).padStart(2, "0")}h`;
  if (h) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

function perSecond(value) {
  if (!value) return "0";
  return value >= 10 ? Math.round(value).toLocaleString("en") : value.toFixed(1);
}

function worstState(instances) {
  let worst = "RUNNING";
  for (const i of instances) if ((STATE_RANK[i.state] ?? 0) > (STATE_RANK[worst] ?? 0)) worst = i.state;
  return worst;
}

// -- layout: columns by data flow ----------------------------------------------------------

function upstreamOf(edge) {
  // A SUB that connects to a PUB receives from it: data flows from the bound socket.
  if (edge.from.role === "in" && edge.to.role !== "in") return [edge.to.device, edge.from.device];
  return [edge.from.device, edge.to.device];
}

function layout(state) {
  // Columns by data flow (longest path from the sources), rows so that a device lines up with
  // what feeds it; a peer sits in its device's row, in the column before (clients of `in`) or
  // after it. Returns grid cells: {col, row, items}.
  const names = state.devices.map((d) => d.device);
  const layer = Object.fromEntries(names.map((n) => [n, 1]));
  const flows = state.edges.map(upstreamOf).filter(([a, b]) => a !== b);
  for (let round = 0; round < names.length; round++) {   // a cycle stops growing after N rounds
    let changed = false;
    for (const [a, b] of flows) if (layer[b] < layer[a] + 1) { layer[b] = layer[a] + 1; changed = true; }
    if (!changed) break;
  }
  const byColumn = new Map();
  for (const n of names) byColumn.set(layer[n], [...(byColumn.get(layer[n]) || []), n]);
  const row = {};
  const fedFrom = (n) => {
    const around = flows.filter(([, b]) => b === n).map(([a]) => row[a]).filter((r) => r !== undefined);
    return around.length ? around.reduce((x, y) => x + y, 0) / around.length : 0;
  };
  for (const col of [...byColumn.keys()].sort((a, b) => a - b)) {
    const column = byColumn.get(col);
    column.sort((x, y) => fedFrom(x) - fedFrom(y) || (x < y ? -1 : x > y ? 1 : 0));
    let next = 0;
    for (const n of column) { row[n] = Math.max(next, Math.round(fedFrom(n))); next = row[n] + 1; }
  }
  const cells = new Map();
  const put = (col, r, item) => {
    const key = `${col},${r}`;
    if (!cells.has(key)) cells.set(key, { col, row: r, items: [] });
    cells.get(key).items.push(item);
  };
  for (const n of names) put(layer[n], row[n], { kind: "device", id: n });
  for (const peer of state.peers) put(layer[peer.device] + (peer.role === "in" ? -1 : 1), row[peer.device], { kind: "peer", id: peer.id, peer });
  const low = Math.min(...[...cells.values()].map((c) => c.col));
  return [...cells.values()].map((c) => ({ ...c, col: c.col - low }));
}

function structureKey(state) {
  return JSON.stringify({
    actions: state.actions,
    regions: state.regions.map((r) => r.host),
    devices: state.devices.map((d) => [d.device, d.host, d.instances.map((i) => i.name),
      d.sockets.map((s) => [s.role, s.type, s.bind, s.connect])]),
    edges: state.edges.map((e) => e.id),
    peers: state.peers.map((p) => [p.id, p.endpoints]),
  });
}

// -- building ------------------------------------------------------------------------------

function build(state) {
  const root = $("regions");
  root.replaceChildren();
  const hosts = state.regions.length ? state.regions.map((r) => r.host) : [null];
  for (const host of hosts) {
    const region = el("div", { class: "region", "data-host": host });
    if (host !== null) region.append(el("div", { class: "region-name" }, host));
    const subset = {
      ...state,
      devices: state.devices.filter((d) => d.host === host),
    };
    const here = new Set(subset.devices.map((d) => d.device));
    subset.edges = state.edges.filter((e) => here.has(e.from.device) && here.has(e.to.device));
    subset.peers = state.peers.filter((p) => here.has(p.device));
    const grid = el("div", { class: "grid" });
    for (const cell of layout(subset)) {
      const node = el("div", { class: "cell" });
      node.style.gridColumn = String(cell.col + 1);   // CSSOM: allowed by the page's CSP
      node.style.gridRow = String(cell.row + 1);
      for (const item of cell.items) node.append(item.kind === "device" ? deviceCard(state.devices.find((d) => d.device === item.id), state) : peerPill(item.peer));
      grid.append(node);
    }
    region.append(grid);
    root.append(region);
  }
}

function peerPill(peer) {
  const label = peer.kind === "clients" ? "clients" : "service";
  return el("div", { class: "peer", "data-peer": peer.id, title: peer.endpoints.join("\n") },
    `${label} · ${peer.endpoints.join(", ")}`);
}

function deviceCard(group, state) {
  const many = group.instances.length > 1;
  const card = el("div", { class: "card device", "data-device": group.device });
  card.append(el("div", { class: "head" },
    el("span", { class: "name" }, group.device),
    el("span", { class: "kind" }, group.kind + (many ? ` ×${group.instances.length}` : "")),
    el("span", { class: "badge state" })));
  const sockets = el("div", { class: "sockets" });
  for (const s of group.sockets) {
    const eps = [...s.bind.map((e) => `bind ${e}`), ...s.connect.map((e) => `connect ${e}`)];
    sockets.append(el("div", { class: "socket", "data-role": s.role },
      el("span", { class: "role" }, s.role),
      el("span", { class: "type" }, s.type || ""),
      el("span", { class: "eps" }, eps.join("\n") || "-"),
      s.rates ? el("span", { class: "rates" }) : null));
  }
  card.append(sockets);
  const spark = svg("svg", { class: "spark", viewBox: "0 0 140 26", preserveAspectRatio: "none" });
  spark.append(svg("polyline", { class: "in" }), svg("polyline", { class: "out" }));
  card.append(el("div", { class: "traffic" }, spark, el("span", { class: "total" })));
  if (many && state.actions) card.append(actionBar(group.device));
  const list = el("div", { class: "instances" });
  for (const instance of group.instances) list.append(instanceRow(instance, state));
  if (many) {
    list.hidden = !expanded.has(group.device);
    card.append(el("button", {
      class: "expand", type: "button",
      onclick: () => {
        if (expanded.has(group.device)) expanded.delete(group.device); else expanded.add(group.device);
        list.hidden = !expanded.has(group.device);
        drawEdges();
      },
    }, `${group.instances.length} replicas`));
  }
  card.append(list);
  return card;
}

function instanceRow(instance, state) {
  const row = el("div", { class: "instance", "data-instance": instance.name });
  row.append(el("div", { class: "line" },
    el("span", { class: "iname" }, instance.name),
    el("span", { class: "badge state" }),
    el("span", {}, "pid ", el("span", { class: "pid" })),
    el("span", {}, "up ", el("span", { class: "uptime" })),
    el("span", {}, "restarts ", el("span", { class: "restarts" }))));
  row.append(el("div", { class: "last-exit" }), el("div", { class: "transitions" }));
  if (state.actions) row.append(actionBar(instance.name));
  return row;
}

function actionBar(name) {
  const bar = el("div", { class: "actions" });
  for (const action of ACTIONS) {
    bar.append(el("button", { type: "button", "data-action": action, "data-target": name, onclick: () => confirmAction(action, name) }, action));
  }
  return bar;
}

// -- updating in place ---------------------------------------------------------------------

function setText(node, text) { if (node && node.textContent !== text) node.textContent = text; }

function stateLabel(instance) {
  if (instance.state === "RUNNING" && instance.paused) return "RUNNING (paused)";
  if (instance.state === "RUNNING" && instance.blocked) return `RUNNING (blocked on ${instance.blocked.side})`;
  return instance.state;
}

function updateInstance(row, instance) {
  row.dataset.state = instance.state;
  row.dataset.paused = String(Boolean(instance.paused && instance.state === "RUNNING"));
  setText(row.querySelector(".badge"), stateLabel(instance));
  setText(row.querySelector(".pid"), instance.pid ? String(instance.pid) : "-");
  setText(row.querySelector(".uptime"), duration(instance.uptime));
  setText(row.querySelector(".restarts"), String(instance.restarts));
  setText(row.querySelector(".last-exit"), instance.last_exit ? `last exit: ${instance.last_exit}` : "");
  const recent = (instance.transitions || []).slice(-3).map((t) => `${t.from}→${t.to}`).join(" · ");
  setText(row.querySelector(".transitions"), recent);
}

function updateGroupState(card, instances) {
  const state = worstState(instances);
  card.dataset.state = state;
  card.dataset.paused = String(instances.every((i) => i.paused && i.state === "RUNNING"));
  const running = instances.filter((i) => i.state === "RUNNING").length;
  const label = instances.length > 1 ? `${running}/${instances.length} RUNNING` : stateLabel(instances[0]);
  setText(card.querySelector(".head .badge"), label);
}

function sparkline(card, history) {
  // Spread over the history there is (at least a minute, at most the server's 5 minutes).
  const series = history || { t: [], in: [], out: [] };
  const width = 140, height = 26, window = Math.max(60, ...series.t);
  const top = Math.max(1, ...series.in, ...series.out);
  for (const direction of ["in", "out"]) {
    const points = series.t.map((ago, k) => `${(width * (1 - ago / window)).toFixed(1)},${(height - 2 - (height - 4) * series[direction][k] / top).toFixed(1)}`);
    card.querySelector(`.spark .${direction}`).setAttribute("points", points.join(" "));
  }
}

function update(state) {
  for (const group of state.devices) {
    const card = document.querySelector(`.card[data-device="${CSS.escape(group.device)}"]`);
    if (!card) continue;
    for (const instance of group.instances) {
      const row = card.querySelector(`.instance[data-instance="${CSS.escape(instance.name)}"]`);
      if (row) updateInstance(row, instance);
    }
    updateGroupState(card, group.instances);
    for (const s of group.sockets) {
      const node = card.querySelector(`.socket[data-role="${s.role}"] .rates`);
      if (node && s.rates) setText(node, `in ${perSecond(s.rates.in)}/s · out ${perSecond(s.rates.out)}/s`);
    }
    setText(card.querySelector(".total"), `in ${perSecond(group.rates.in)}/s · out ${perSecond(group.rates.out)}/s`);
    sparkline(card, group.history);
  }
  const sup = state.supervisor;
  setText($("supervisor"), state.all ? `every host: ${state.regions.map((r) => r.host).join(", ")}` : sup ? `supervisor pid ${sup.pid}, up ${duration(sup.uptime)} · ${state.run_dir}` : `run dir ${state.run_dir}`);
  setText($("mode"), state.actions ? "actions allowed" : "read-only");
  const problems = [state.error, state.topology && state.topology.error ? `topology: ${state.topology.error}` : null].filter(Boolean);
  $("problem").hidden = problems.length === 0;
  setText($("problem"), problems.join(" · "));
  for (const r of state.regions) {  // web --all: a host that does not answer is greyed alone
    const region = document.querySelector(`.region[data-host="${CSS.escape(r.host)}"]`);
    if (!region) continue;
    region.classList.toggle("unreachable", r.reachable === false);
    region.dataset.reachable = String(r.reachable !== false);
    region.title = r.error || "";
  }
  $("graph").classList.toggle("unreachable", !state.reachable);
  document.body.dataset.reachable = String(state.reachable);
}

// -- arrows --------------------------------------------------------------------------------

function anchor(device, role) {
  const card = document.querySelector(`.card[data-device="${CSS.escape(device)}"]`);
  if (!card) return null;
  const socket = card.querySelector(`.socket[data-role="${role}"]`) || card;
  const base = $("graph").getBoundingClientRect();
  const c = card.getBoundingClientRect(), s = socket.getBoundingClientRect();
  const left = role === "in";
  const graph = $("graph");
  return {
    x: (left ? c.left : c.right) - base.left + graph.scrollLeft,
    y: s.top + s.height / 2 - base.top + graph.scrollTop,
    dir: left ? -1 : 1,
  };
}

function peerAnchor(peer, towards) {
  const node = document.querySelector(`.peer[data-peer="${CSS.escape(peer.id)}"]`);
  if (!node) return null;
  const base = $("graph").getBoundingClientRect(), r = node.getBoundingClientRect();
  const graph = $("graph");
  const right = towards.x > r.left - base.left + r.width / 2;
  return { x: (right ? r.right : r.left) - base.left + graph.scrollLeft, y: r.top + r.height / 2 - base.top + graph.scrollTop, dir: right ? 1 : -1 };
}

function curve(a, b) {
  const bend = Math.max(40, Math.abs(b.x - a.x) / 2);
  return `M ${a.x} ${a.y} C ${a.x + a.dir * bend} ${a.y}, ${b.x + b.dir * bend} ${b.y}, ${b.x} ${b.y}`;
}

function socketOf(device, role) {
  const group = current.devices.find((d) => d.device === device);
  return group && group.sockets.find((s) => s.role === role);
}

function drawEdges() {
  if (!current) return;
  const layer = $("edge-paths");
  layer.replaceChildren();
  const area = $("graph");
  const box = $("edges");
  box.setAttribute("width", area.scrollWidth);
  box.setAttribute("height", area.scrollHeight);
  const label = (a, b, rates) => {
    if (!rates) return;
    const text = svg("text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 4, "text-anchor": "middle" });
    text.textContent = `→${perSecond(rates.out)}/s ←${perSecond(rates.in)}/s`;
    layer.append(text);
  };
  for (const edge of current.edges) {
    const a = anchor(edge.from.device, edge.from.role), b = anchor(edge.to.device, edge.to.role);
    if (!a || !b) continue;
    layer.append(svg("path", { class: "edge", d: curve(a, b), "marker-end": "url(#arrow)", "data-edge": edge.id }));
    const s = socketOf(edge.from.device, edge.from.role);
    label(a, b, s && s.rates);
  }
  for (const peer of current.peers) {
    const socket = anchor(peer.device, peer.role);
    if (!socket) continue;
    const p = peerAnchor(peer, socket);
    if (!p) continue;
    // clients connect to the device's socket; the device's socket connects to a service.
    const [a, b] = peer.kind === "clients" ? [p, socket] : [socket, p];
    layer.append(svg("path", { class: "edge peer", d: curve(a, b), "marker-end": "url(#arrow)", "data-edge": peer.id }));
  }
}

// -- events, actions -----------------------------------------------------------------------

function describeEvent(e) {
  const time = new Date((e.time || 0) * 1000).toLocaleTimeString("en-GB");
  if (e.type === "state") return `${time} ${e.instance}: ${e.from} → ${e.to}${e.pid ? ` (pid ${e.pid})` : ""}`;
  if (e.type === "decision") return `${time} ${e.instance}: ${e.action} (${e.reason})`;
  if (e.type === "command") return `${time} command ${e.command} ${Object.values(e.args || {}).join(" ")}`;
  if (e.type === "supervisor") return `${time} supervisor ${e.state} (pid ${e.pid})`;
  return null;
}

function onEvent(e) {
  const line = describeEvent(e);
  if (line) {
    const list = $("events");
    list.prepend(el("li", { "data-type": e.type }, line));
    while (list.children.length > 60) list.lastChild.remove();
  }
  if (e.type !== "state" || !current) return;
  // Applied at once: the snapshot that follows fills in pid, uptime, restarts.
  for (const group of current.devices) {
    const instance = group.instances.find((i) => i.name === e.instance);
    if (!instance) continue;
    instance.state = e.to;
    if (e.to !== "RUNNING") instance.uptime = null;
    const card = document.querySelector(`.card[data-device="${CSS.escape(group.device)}"]`);
    const row = card && card.querySelector(`.instance[data-instance="${CSS.escape(e.instance)}"]`);
    if (row) {
      row.dataset.state = e.to;
      setText(row.querySelector(".badge"), e.to);
      if (e.to !== "RUNNING") setText(row.querySelector(".uptime"), "-");
    }
    if (card) updateGroupState(card, group.instances);
  }
}

function onState(state) {
  current = state;
  const key = structureKey(state);
  if (key !== structure) {
    structure = key;
    build(state);
  }
  update(state);
  drawEdges();
}

let pending = null;
function confirmAction(action, name) {
  pending = { action, name };
  setText($("confirm-text"), `${action} ${name}?`);
  $("confirm").showModal();
}

$("confirm").addEventListener("close", async () => {
  const chosen = pending;
  pending = null;
  if (!chosen || $("confirm").returnValue !== "ok") return;
  try {
    const response = await fetch(`/api/devices/${encodeURIComponent(chosen.name)}/${chosen.action}`, {
      method: "POST",
      headers: { "X-Procdevices-Action": "1" },
      credentials: "same-origin",
    });
    const body = await response.json();
    toast(body.ok ? `${chosen.action} ${chosen.name}: done` : `${chosen.action} ${chosen.name}: ${body.error}`);
  } catch (err) {
    toast(`${chosen.action} ${chosen.name}: ${err}`);
  }
});

let toastTimer = null;
function toast(text) {
  const node = $("toast");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 4000);
}

function connect() {
  const stream = new EventSource("/api/events");
  stream.addEventListener("open", () => { $("stream").dataset.live = "true"; setText($("stream"), "live"); });
  stream.addEventListener("error", () => { $("stream").dataset.live = "false"; setText($("stream"), "stream: reconnecting"); });
  stream.addEventListener("state", (m) => onState(JSON.parse(m.data)));
  stream.addEventListener("event", (m) => onEvent(JSON.parse(m.data)));
}

window.addEventListener("resize", drawEdges);
connect();
