// netplane's page: draws what /api and /api/events say. No framework, no
// build step: the file is compiled into the binary as it is.
"use strict";

// ---- Labels in English and Japanese (the guides exist in both) ----
const I18N = {
  en: {
    topology: "Topology", trace: "Trace a packet", ports: "SNAT ports",
    routes: "Route table (UDR)", counters: "Counters", flows: "Flows",
    from: "From pod", to: "To", source_ip: "Source IP (spoofed, optional)",
    trace_button: "Trace", clear: "Clear",
    trace_hint: "TO is a lab host or an address, with :PORT/tcp or :PORT/udp; no port: ping. The real programs run on a crafted packet against copies of the maps: nothing live changes.",
    ports_hint: "Per SNAT IP and port block: allocated of capacity now, the peak (line) and allocation failures. Updated live.",
    filter: "Node", all: "all", agent: "agent", event: "event", source: "source",
    destination: "destination", detail: "detail",
    footer: "JSON behind every view:",
    vnet: "VNet", node_subnet: "node subnet", pod_cidr: "pod CIDR",
    agent_running: "agent running", agent_down: "AGENT DOWN",
    load_balancer: "outbound load balancer", appliance: "appliance (userDefinedRouting)",
    frontends: "frontend IPs", internet: "internet", lab_host: "inet",
    snat_ip: "SNAT IP", port_range: "ports", block_of: "block of",
    capacity: "capacity", allocated: "allocated", peak: "peak", failures: "failures",
    evicted: "evicted", exhausted: "EXHAUSTED",
    all_nodes: "all nodes",
    address_prefix: "address prefix", next_hop_type: "next hop type", next_hop_ip: "next hop IP",
    node: "node", of_limit: (n, l) => `${n} of ${l} routes`,
    system_routes: "the subnet's other effective routes",
    path: "path", packets: "packets", drop_reason: "drop reason",
    forward: "Forward", reply: "Reply", decision: "decision", packet_in: "in", packet_out: "out",
    maps: "maps", outcome: "outcome",
    new_flow: "new flow", translation: "translated", drop: "dropped", expiry: "expired",
    no_agent: "No agent is running: start the lab (netplane lab up).",
    agents_down: (names) => `Agent down: ${names}. The data path keeps forwarding; the page shows what its pins hold.`,
    disconnected: "The page lost its connection to netplane ui; retrying…",
    summary: (t) => `${t.datapath} data path · ${t.nodes.length} nodes · ${t.nodes.reduce((a, n) => a + n.pods.length, 0)} pods${t.lab ? " · lab" : ""}`,
    nothing_moved: "no packets yet",
  },
  ja: {
    topology: "トポロジー", trace: "パケットのトレース", ports: "SNAT ポート",
    routes: "ルート テーブル (UDR)", counters: "カウンター", flows: "フロー",
    from: "送信元ポッド", to: "宛先", source_ip: "送信元 IP (なりすまし、任意)",
    trace_button: "トレース", clear: "消去",
    trace_hint: "宛先はラボのホスト名か IP アドレス。:ポート/tcp または :ポート/udp を付けます (ポートなしは ping)。実際のプログラムを、マップのコピーに対して作ったパケットで実行します。稼働中の状態は何も変わりません。",
    ports_hint: "SNAT IP とポート ブロックごとに、現在の割り当て数と容量、ピーク (線)、割り当て失敗。リアルタイムで更新されます。",
    filter: "ノード", all: "すべて", agent: "エージェント", event: "イベント", source: "送信元",
    destination: "宛先", detail: "詳細",
    footer: "各ビューの JSON:",
    vnet: "VNet", node_subnet: "ノード サブネット", pod_cidr: "ポッド CIDR",
    agent_running: "エージェント稼働中", agent_down: "エージェント停止",
    load_balancer: "送信ロード バランサー", appliance: "アプライアンス (userDefinedRouting)",
    frontends: "フロントエンド IP", internet: "インターネット", lab_host: "inet",
    snat_ip: "SNAT IP", port_range: "ポート", block_of: "持ち主",
    capacity: "容量", allocated: "割り当て済み", peak: "ピーク", failures: "失敗",
    evicted: "追い出し", exhausted: "枯渇",
    all_nodes: "全ノード",
    address_prefix: "アドレス プレフィックス", next_hop_type: "次ホップの種類", next_hop_ip: "次ホップ IP",
    node: "ノード", of_limit: (n, l) => `${n} / ${l} ルート`,
    system_routes: "サブネットのその他の有効なルート",
    path: "パス", packets: "パケット", drop_reason: "破棄の理由",
    forward: "往路", reply: "復路", decision: "判断", packet_in: "入力", packet_out: "出力",
    maps: "マップ", outcome: "結果",
    new_flow: "新規フロー", translation: "変換", drop: "破棄", expiry: "期限切れ",
    no_agent: "エージェントが動いていません: ラボを起動してください (netplane lab up)。",
    agents_down: (names) => `エージェント停止: ${names}。データパスは転送を続けます。ページはピン留めされたマップの内容を表示します。`,
    disconnected: "netplane ui との接続が切れました。再接続しています…",
    summary: (t) => `${t.datapath} データパス · ノード ${t.nodes.length} · ポッド ${t.nodes.reduce((a, n) => a + n.pods.length, 0)}${t.lab ? " · ラボ" : ""}`,
    nothing_moved: "まだパケットはありません",
  },
};

const params = new URLSearchParams(location.search);
let lang = params.get("lang") || localStorage.getItem("netplane-lang") || "en";
if (!I18N[lang]) lang = "en";

function t(key, ...args) {
  const v = I18N[lang][key] ?? I18N.en[key] ?? key;
  return typeof v === "function" ? v(...args) : v;
}

// ---- What the page last heard ----
const state = { topology: null, ports: null, stats: null, routes: null, flows: [], trace: null, error: null, connected: true };
const MAX_FLOWS = 300;

// ---- Small DOM helpers (text only: names come from the cluster) ----
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "style") e.setAttribute("style", v);
    else e[k] = v;
  }
  for (const c of children.flat()) if (c != null) e.append(c);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children.flat()) if (c != null) e.append(c);
  return e;
}
function text(x, y, s, attrs = {}) { return svg("text", { x, y, ...attrs }, String(s)); }

function table(headers, rows, numeric = []) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => el("td", numeric.includes(i) ? { class: "num" } : {}, String(c)))))));
}

async function getJson(url) {
  const r = await fetch(url);
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// ---- Topology: the VNet with its nodes and pods, the outbound hop, inet ----
// The VNet is drawn as a segment (a bus) that every node and the outbound
// hop attach to; each host's box is remembered by name so that a trace's
// walk can be drawn along those wires.
let layout = null;

function drawTopology() {
  const topo = state.topology;
  const host = document.getElementById("topology");
  host.replaceChildren();
  layout = null;
  if (!topo) return;
  const boxes = {};
  const podH = 26, nodeW = 230, gap = 28, perRow = 4;
  const maxPods = Math.max(1, ...topo.nodes.map((n) => n.pods.length));
  const nodeH = 76 + maxPods * (podH + 6);
  const rows = Math.max(1, Math.ceil(topo.nodes.length / perRow));
  const cols = Math.min(perRow, Math.max(1, topo.nodes.length));
  const vx = 20, vy = 20;
  const vnetW = cols * (nodeW + gap) + gap, vnetH = 50 + rows * (nodeH + gap) + 30;
  const busY = vy + vnetH - 26;
  const outW = 220, outH = 110, inetW = 170, inetH = 70;
  const ox = vx + vnetW + 50, oy = busY - outH / 2;
  const ix = ox + outW + 110, iy = busY - inetH / 2;
  const width = ix + inetW + 20;
  const height = Math.max(vy + vnetH, oy + outH) + 20;
  const g = svg("svg", { viewBox: `0 0 ${width} ${height}`, id: "topology-svg", role: "img" });
  g.append(svg("defs", {},
    ["forward", "reply"].map((k) => svg("marker", { id: `arrow-${k}`, viewBox: "0 0 10 10", refX: 8, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: k === "forward" ? "#1f6fd1" : "#d9730d" })))));
  // The VNet and its segment.
  g.append(svg("rect", { x: vx, y: vy, width: vnetW, height: vnetH, rx: 10, class: "box-vnet" }));
  g.append(text(vx + 14, vy + 26, `${t("vnet")} ${topo.vnet_cidr} · ${t("node_subnet")} ${topo.node_subnet}`, { "font-weight": 700, "font-size": 17 }));
  g.append(svg("line", { x1: vx + 12, y1: busY, x2: ox, y2: busY, stroke: "#7aa7d9", "stroke-width": 4 }));
  topo.nodes.forEach((n, i) => {
    const x = vx + gap + (i % perRow) * (nodeW + gap);
    const y = vy + 44 + Math.floor(i / perRow) * (nodeH + gap);
    const down = !n.agent.running;
    const cx = x + nodeW / 2;
    // Its wire to the segment (nodes of upper rows pass beside the lower).
    g.append(svg("line", { x1: cx, y1: y + nodeH, x2: cx, y2: busY, stroke: "#7aa7d9", "stroke-width": 2 }));
    const grp = svg("g", { id: `host-${n.name}`, "data-host": n.name, class: "host node" });
    grp.append(svg("rect", { x, y, width: nodeW, height: nodeH, rx: 8, class: `box-node${down ? " agent-down" : ""}` }));
    grp.append(text(x + 10, y + 22, n.name, { "font-weight": 700, "font-size": 17 }));
    grp.append(text(x + 10, y + 42, n.ip, { "font-size": 14 }));
    grp.append(text(x + 10, y + 60, `${t("pod_cidr")} ${n.pod_cidr}`, { "font-size": 13, fill: "#5b6472" }));
    grp.append(text(x + nodeW - 10, y + 22, down ? t("agent_down") : "●", { "text-anchor": "end", "font-size": 13, fill: down ? "#c62828" : "#2e8b57", class: "agent-state" }));
    g.append(grp);
    boxes[n.name] = { kind: "node", x, y, w: nodeW, h: nodeH, cx };
    n.pods.forEach((p, j) => {
      const py = y + 70 + j * (podH + 6);
      const pg = svg("g", { id: `host-${p.name}`, "data-host": p.name, class: "host pod" });
      pg.append(svg("rect", { x: x + 14, y: py, width: nodeW - 28, height: podH, rx: 5, class: "box-pod" }));
      pg.append(text(x + 24, py + 18, p.name, { "font-size": 14, "font-weight": 600 }));
      pg.append(text(x + nodeW - 24, py + 18, p.ip, { "font-size": 13, "text-anchor": "end" }));
      g.append(pg);
      boxes[p.name] = { kind: "pod", x: x + 14, y: py, w: nodeW - 28, h: podH, node: n.name };
    });
  });
  // The outbound hop on the segment, and the internet beyond it.
  const ob = topo.outbound;
  const og = svg("g", { id: `host-${ob.name}`, "data-host": ob.name, class: "host outbound" });
  og.append(svg("rect", { x: ox, y: oy, width: outW, height: outH, rx: 8, class: `box-lb${ob.agent.running ? "" : " agent-down"}` }));
  og.append(text(ox + 10, oy + 22, ob.name, { "font-weight": 700, "font-size": 17 }));
  og.append(text(ox + 10, oy + 40, ob.outbound_type === "userDefinedRouting" ? t("appliance") : t("load_balancer"), { "font-size": 12, fill: "#5b6472" }));
  if (ob.ip) og.append(text(ox + 10, oy + 60, ob.ip, { "font-size": 14 }));
  og.append(text(ox + 10, oy + 80, `${t("frontends")}:`, { "font-size": 12, fill: "#5b6472" }));
  og.append(text(ox + 10, oy + 98, ob.frontends.join(", "), { "font-size": 14, "font-weight": 600 }));
  if (!ob.agent.running) og.append(text(ox + outW - 10, oy + 22, t("agent_down"), { "text-anchor": "end", "font-size": 13, fill: "#c62828" }));
  g.append(og);
  boxes[ob.name] = { kind: "outbound", x: ox, y: oy, w: outW, h: outH };
  if (topo.inet) {
    g.append(svg("line", { x1: ox + outW, y1: busY, x2: ix, y2: busY, stroke: "#8a6bb8", "stroke-width": 3 }));
    const ig = svg("g", { id: "host-inet", "data-host": "inet", class: "host inet" });
    ig.append(svg("rect", { x: ix, y: iy, width: inetW, height: inetH, rx: 35, class: "box-inet" }));
    ig.append(text(ix + inetW / 2, iy + 30, t("internet"), { "text-anchor": "middle", "font-weight": 700, "font-size": 16 }));
    ig.append(text(ix + inetW / 2, iy + 50, `inet ${topo.inet}`, { "text-anchor": "middle", "font-size": 14 }));
    g.append(ig);
    boxes.inet = { kind: "inet", x: ix, y: iy, w: inetW, h: inetH };
  }
  host.append(g);
  layout = { boxes, busY };
  drawWalks();
}

// ---- Trace: the walk drawn over the topology, and hop by hop below it ----
function hostsOf(walk) {
  const seq = [walk.starts_at, ...walk.hops.map((h) => h.host), walk.ends_at];
  return seq.filter((h, i) => h && layout.boxes[h] && h !== seq[i - 1]);
}

// The way from a host's box down to the VNet segment.
function toBus(b, off) {
  const { boxes, busY } = layout;
  switch (b.kind) {
    case "pod": return [[b.x + b.w / 2 + off, b.y], ...toBus(boxes[b.node], off)];
    case "node": return [[b.cx + off, b.y + b.h], [b.cx + off, busY + off]];
    default: return [[b.x, busY + off]]; // the outbound hop's VNet side
  }
}

// The wires a packet follows from host a to host b: a pod and its node
// directly, the outbound hop and inet by their link, the rest over the
// segment.
function route(a, b, off) {
  const A = layout.boxes[a], B = layout.boxes[b];
  const busY = layout.busY;
  const podEnd = (pod, node) => [[pod.x + pod.w / 2 + off, pod.y], [pod.x + pod.w / 2 + off, node.y + 64]];
  if (A.kind === "pod" && A.node === b) return podEnd(A, B);
  if (B.kind === "pod" && B.node === a) return podEnd(B, A).reverse();
  if (A.kind === "outbound" && B.kind === "inet") return [[A.x + A.w, busY + off], [B.x, busY + off]];
  if (A.kind === "inet" && B.kind === "outbound") return [[A.x, busY + off], [B.x + B.w, busY + off]];
  return toBus(A, off).concat(toBus(B, off).reverse());
}

function drawWalks() {
  const g = document.getElementById("topology-svg");
  if (!g || !layout) return;
  g.querySelectorAll(".walk").forEach((w) => w.remove());
  g.querySelectorAll(".hop-on").forEach((h) => h.classList.remove("hop-on"));
  if (!state.trace) return;
  const walks = [["forward", state.trace.forward, -4], ["reply", state.trace.reply, 4]];
  for (const [kind, walk, off] of walks) {
    if (!walk) continue;
    const seq = hostsOf(walk);
    const wg = svg("g", { class: `walk walk-${kind}`, "data-walk": kind, "data-hosts": seq.join(" ") });
    for (let i = 0; i + 1 < seq.length; i++) {
      const pts = route(seq[i], seq[i + 1], off);
      wg.append(svg("path", { d: "M" + pts.map((p) => p.join(",")).join(" L"), fill: "none", "stroke-width": 4, "marker-end": `url(#arrow-${kind})`, opacity: 0.9 }));
      // The step's number on the longest stretch.
      let best = 0, bx = pts[0][0], by = pts[0][1];
      for (let j = 0; j + 1 < pts.length; j++) {
        const len = Math.hypot(pts[j + 1][0] - pts[j][0], pts[j + 1][1] - pts[j][1]);
        if (len > best) { best = len; bx = (pts[j][0] + pts[j + 1][0]) / 2; by = (pts[j][1] + pts[j + 1][1]) / 2; }
      }
      const shift = kind === "forward" ? -14 : 14;
      wg.append(svg("circle", { cx: bx + shift, cy: by, r: 11 }));
      wg.append(text(bx + shift, by + 4, i + 1, { "text-anchor": "middle", class: "step" }));
    }
    for (const h of seq) document.getElementById(`host-${h}`)?.classList.add("hop-on");
    g.append(wg);
  }
}

function walkList(kind, walk) {
  return [
    el("h3", { class: `walk-title ${kind}` }, `${t(kind)}: ${walk.starts_at} → ${walk.ends_at}`),
    el("ol", { class: "walk-list", "data-walk": kind },
      walk.hops.map((h) => el("li", { "data-host": h.host },
        el("strong", {}, `${h.host} · ${h.program}`), ` (${h.attached})`, el("br"),
        `${t("packet_in")}: `, el("span", { class: "packet" }, h.packet_in), el("br"),
        h.maps.length ? [el("span", { class: "maps" }, `${t("maps")}: ${h.maps.join(" · ")}`), el("br")] : null,
        `${t("decision")}: ${h.decision}`, el("br"),
        `${t("packet_out")}: `, el("span", { class: h.packet_out !== h.packet_in ? "packet changed" : "packet" }, h.packet_out)))),
    el("p", { class: "outcome" }, `${t("outcome")}: ${walk.outcome}`),
  ];
}

function drawTrace() {
  const out = document.getElementById("trace-result");
  out.replaceChildren();
  if (state.trace) {
    out.append(...walkList("forward", state.trace.forward));
    if (state.trace.reply) out.append(...walkList("reply", state.trace.reply));
  }
  drawWalks();
}

async function runTrace(ev) {
  ev.preventDefault();
  const err = document.getElementById("trace-error");
  err.hidden = true;
  const q = new URLSearchParams({ from: document.getElementById("trace-from").value, to: document.getElementById("trace-to").value.trim() });
  const src = document.getElementById("trace-source").value.trim();
  if (src) q.set("source_ip", src);
  try {
    state.trace = await getJson(`/api/trace?${q}`);
  } catch (e) {
    state.trace = null;
    err.textContent = e.message;
    err.hidden = false;
  }
  drawTrace();
}

function fillTraceForm() {
  const topo = state.topology;
  const from = document.getElementById("trace-from");
  const chosen = from.value;
  const pods = topo.nodes.flatMap((n) => n.pods.map((p) => p.name));
  from.replaceChildren(...pods.map((p) => el("option", { value: p }, p)));
  if (pods.includes(chosen)) from.value = chosen;
  const targets = [...pods.map((p) => `${p}:80/tcp`), ...topo.nodes.map((n) => n.name)];
  if (topo.inet) targets.unshift("inet:80/tcp", "inet:53/udp", "inet");
  document.getElementById("trace-targets").replaceChildren(...targets.map((v) => el("option", { value: v })));
}

// ---- SNAT ports: one bar per block, moving live ----
function drawPorts() {
  const host = document.getElementById("ports");
  host.replaceChildren();
  if (!state.ports) return;
  for (const [agent, slots] of Object.entries(state.ports.agents)) {
    host.append(el("div", { class: "agent-title" }, agent));
    host.append(el("div", { class: "port-row port-head" },
      el("span", {}, t("snat_ip")), el("span", {}, t("port_range")), el("span", {}, t("block_of")),
      el("span", {}, `${t("allocated")} / ${t("capacity")}`), el("span", {}, `${t("peak")} · ${t("failures")}`)));
    for (const s of slots) {
      const pct = s.capacity ? (100 * s.allocated) / s.capacity : 0;
      const peakPct = s.capacity ? Math.min(100, (100 * s.peak) / s.capacity) : 0;
      const full = s.capacity > 0 && s.allocated >= s.capacity;
      const fill = el("div", { class: `fill${full ? " full" : pct >= 80 ? " high" : ""}`, style: `width:${pct}%` });
      const owner = s.block_of === "all nodes" ? t("all_nodes") : s.block_of;
      host.append(el("div", {
        class: `port-row${full ? " exhausted" : ""}`, "data-agent": agent, "data-ports": s.ports,
        "data-allocated": s.allocated, "data-capacity": s.capacity, "data-failures": s.failures,
      },
      el("span", {}, s.snat_ip), el("span", {}, s.ports), el("span", {}, owner),
      el("div", { class: "bar" }, fill, el("div", { class: "peak", style: `left:calc(${peakPct}% - 1px)` }),
        el("span", { class: "label" }, `${s.allocated} / ${s.capacity}`)),
      el("span", {}, `${t("peak")} ${s.peak} · `,
        el("span", { class: s.failures > 0 ? "failures" : "" }, `${t("failures")} ${s.failures}`),
        s.evicted ? ` · ${t("evicted")} ${s.evicted}` : null,
        full ? [" ", el("span", { class: "badge-full" }, t("exhausted"))] : null)));
    }
  }
}

// ---- Routes: each agent's UDR, as Azure shows it ----
function drawRoutes() {
  const host = document.getElementById("routes");
  host.replaceChildren();
  if (!state.routes) return;
  for (const [agent, rt] of Object.entries(state.routes.nodes)) {
    // The UDR is the nodes' subnet's: the outbound hop holds none.
    if (state.topology && agent === state.topology.outbound.name) continue;
    host.append(el("div", { class: "agent-title", "data-agent": agent, "data-routes": rt.count }, `${agent}: ${t("of_limit", rt.count, rt.limit)}`));
    host.append(table([t("address_prefix"), t("next_hop_type"), t("next_hop_ip"), t("node")],
      rt.routes.map((r) => [r.address_prefix, r.next_hop_type, r.next_hop_ip, r.node])));
  }
  const first = Object.values(state.routes.nodes)[0];
  if (first) {
    host.append(el("div", { class: "hint" }, t("system_routes")));
    host.append(table(["source", t("address_prefix"), t("next_hop_type"), t("next_hop_ip")],
      first.system_routes.map((r) => [r.source, r.address_prefix, r.next_hop_type, r.next_hop_ip ?? "-"])));
  }
}

async function loadRoutes() {
  try {
    state.routes = await getJson("/api/routes");
  } catch (e) {
    state.routes = null;
  }
  drawRoutes();
}

// ---- Counters: packets per path and drops per reason, per node ----
function drawCounters() {
  const host = document.getElementById("counters");
  host.replaceChildren();
  if (!state.stats) return;
  const grid = el("div", { class: "counter-grid" });
  for (const [agent, c] of Object.entries(state.stats.nodes)) {
    const paths = c.paths.filter((p) => p.packets > 0).map((p) => [p.path, p.packets]);
    const drops = c.drops.filter((d) => d.packets > 0).map((d) => [`${d.reason} (${d.code})`, d.packets]);
    grid.append(el("div", { "data-agent": agent },
      el("div", { class: "agent-title" }, agent),
      paths.length ? table([t("path"), t("packets")], paths, [1]) : el("div", { class: "hint" }, t("nothing_moved")),
      drops.length ? table([t("drop_reason"), t("packets")], drops, [1]) : null));
  }
  host.append(grid);
}

// ---- Flows: the agents' events, newest first, filterable by node ----
function drawFlows() {
  const sel = document.getElementById("flows-node");
  const only = sel.value;
  const body = document.querySelector("#flows tbody");
  const rows = state.flows.filter((f) => !only || f.agent === only).slice(-MAX_FLOWS).reverse();
  body.replaceChildren(...rows.map((f) => {
    const detail = f.event === "drop" ? `${f.reason} (${f.code})` : f.translated ? `→ ${f.translated}` : "";
    return el("tr", { class: f.event, "data-agent": f.agent },
      el("td", {}, f.agent), el("td", {}, t(f.event)), el("td", {}, f.proto),
      el("td", {}, f.src), el("td", {}, f.dst), el("td", {}, detail));
  }));
}

function fillFlowFilter() {
  const sel = document.getElementById("flows-node");
  const chosen = sel.value;
  const agents = [...state.topology.nodes.map((n) => n.name), state.topology.outbound.name];
  sel.replaceChildren(el("option", { value: "" }, t("all")), ...agents.map((a) => el("option", { value: a }, a)));
  sel.value = agents.includes(chosen) ? chosen : "";
}

// ---- The banner: nothing running, agents down, connection lost ----
function drawBanner() {
  const b = document.getElementById("banner");
  let msg = null;
  if (!state.connected) msg = t("disconnected");
  else if (state.error) msg = state.error === "no agent is running" ? t("no_agent") : state.error;
  else if (state.topology) {
    const down = [...state.topology.nodes.map((n) => [n.name, n.agent]), [state.topology.outbound.name, state.topology.outbound.agent]]
      .filter(([, a]) => !a.running).map(([n]) => n);
    if (down.length && state.topology.lab) msg = t("agents_down", down.join(", "));
  }
  b.hidden = !msg;
  b.textContent = msg ?? "";
  document.getElementById("summary").textContent = state.topology ? t("summary", state.topology) : "";
}

// ---- Language ----
function applyLang() {
  document.documentElement.lang = lang;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  document.getElementById("lang").textContent = lang === "en" ? "日本語" : "English";
  drawAll();
}

function drawAll() {
  drawBanner();
  drawTopology();
  drawTrace();
  drawPorts();
  drawRoutes();
  drawCounters();
  drawFlows();
}

// ---- Live: server-sent events ----
function connect() {
  const es = new EventSource("/api/events");
  es.onopen = () => { state.connected = true; drawBanner(); };
  es.onerror = () => { state.connected = false; drawBanner(); };
  es.addEventListener("topology", (e) => {
    state.topology = JSON.parse(e.data);
    state.error = null;
    fillTraceForm();
    fillFlowFilter();
    drawBanner();
    drawTopology();
    loadRoutes();
  });
  es.addEventListener("ports", (e) => { state.ports = JSON.parse(e.data); state.error = null; drawBanner(); drawPorts(); });
  es.addEventListener("stats", (e) => { state.stats = JSON.parse(e.data); drawCounters(); });
  es.addEventListener("flows", (e) => {
    state.flows.push(...JSON.parse(e.data).events);
    if (state.flows.length > 4 * MAX_FLOWS) state.flows.splice(0, state.flows.length - MAX_FLOWS);
    drawFlows();
  });
  es.addEventListener("unavailable", (e) => {
    state.error = JSON.parse(e.data).error;
    state.ports = null;
    state.stats = null;
    drawAll();
  });
}

document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "en" ? "ja" : "en";
  localStorage.setItem("netplane-lang", lang);
  applyLang();
});
document.getElementById("trace-form").addEventListener("submit", runTrace);
document.getElementById("trace-clear").addEventListener("click", () => { state.trace = null; drawTrace(); });
document.getElementById("flows-node").addEventListener("change", drawFlows);
getJson("/api/flows?last=50").then((r) => { state.flows = r.events.concat(state.flows); drawFlows(); }).catch(() => {});
applyLang();
connect();
