// flowbus dashboard: polls /api/stats every second and draws what it returns.
// Written for this page (no framework, no CDN): line plots on <canvas>, tables as plain DOM.
// The server keeps the history (flowbus/web/dashboard.py), so every poll redraws whole series.
// <body data-updates> counts successful polls and <body data-points> the points of the first
// plot: the browser test reads them to see the page update.
"use strict";

(function () {
  const POLL_INTERVAL_MS = 1000;
  const STATS_URL = "/api/stats";
  const PLOT_HEIGHT_PX = 180;
  const COLORS = ["#2e6fdb", "#e07a10", "#12a150", "#c0398a", "#6b4fd8"];

  const main = document.getElementById("main");
  const statusEl = document.getElementById("status");
  const titleEl = document.getElementById("title");
  const panels = new Map(); // panel id -> {section, body}
  let updates = 0;

  // -- formatting ---------------------------------------------------------------------------
  function formatNumber(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    const abs = Math.abs(value);
    if (abs >= 1e9) return (value / 1e9).toFixed(1) + "G";
    if (abs >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (abs >= 1e4) return (value / 1e3).toFixed(1) + "k";
    if (Number.isInteger(value)) return String(value);
    return value.toFixed(abs < 10 ? 2 : 1);
  }

  function formatBytes(value) {
    if (value === null || value === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = value;
    let unit = 0;
    while (Math.abs(v) >= 1024 && unit < units.length - 1) {
      v /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(Math.round(v)) : v.toFixed(1)) + " " + units[unit];
  }

  function clockTime(ms) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  // -- panels -------------------------------------------------------------------------------
  function panel(id, title, wide) {
    let found = panels.get(id);
    if (!found) {
      const section = document.createElement("section");
      section.id = "panel-" + id;
      if (wide) section.className = "wide";
      const heading = document.createElement("h2");
      heading.textContent = title;
      const body = document.createElement("div");
      section.appendChild(heading);
      section.appendChild(body);
      main.appendChild(section);
      found = { section: section, body: body };
      panels.set(id, found);
    }
    return found.body;
  }

  function renderTotals(id, title, items) {
    const body = panel(id, title, true);
    body.className = "totals";
    body.replaceChildren();
    for (const [label, value] of items) {
      const cell = document.createElement("div");
      const l = document.createElement("span");
      l.className = "label";
      l.textContent = label;
      const v = document.createElement("span");
      v.className = "value";
      v.textContent = value;
      cell.appendChild(l);
      cell.appendChild(v);
      body.appendChild(cell);
    }
  }

  // columns: [{title, key, num, format}]
  function renderTable(id, title, columns, rows, note, wide) {
    const body = panel(id, title, wide);
    body.replaceChildren();
    if (!rows || rows.length === 0) {
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = note || "none";
      body.appendChild(empty);
      return;
    }
    const wrap = document.createElement("div");
    wrap.className = "scroll";
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const column of columns) {
      const th = document.createElement("th");
      th.textContent = column.title;
      if (column.num) th.className = "num";
      head.appendChild(th);
    }
    const tbody = table.createTBody();
    for (const row of rows) {
      const tr = tbody.insertRow();
      for (const column of columns) {
        const td = tr.insertCell();
        const value = row[column.key];
        td.textContent = column.format ? column.format(value, row) : formatNumber(value);
        if (column.num) td.className = "num";
        if (column.highlight && column.highlight(row)) td.classList.add("local");
      }
    }
    wrap.appendChild(table);
    body.appendChild(wrap);
  }

  // -- plots --------------------------------------------------------------------------------
  // lines: [{label, values}]; times: ms since the epoch, one per value.
  function renderPlot(id, title, times, lines, format) {
    const body = panel(id, title, false);
    let canvas = body.querySelector("canvas");
    if (!canvas) {
      canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", title);
      body.appendChild(canvas);
      const legend = document.createElement("div");
      legend.className = "legend";
      lines.forEach((line, i) => {
        const item = document.createElement("span");
        const swatch = document.createElement("i");
        swatch.style.background = COLORS[i % COLORS.length];
        item.appendChild(swatch);
        item.appendChild(document.createTextNode(line.label));
        legend.appendChild(item);
      });
      body.appendChild(legend);
    }
    canvas.dataset.points = String(times.length);
    drawPlot(canvas, times, lines, format || formatNumber);
  }

  function drawPlot(canvas, times, lines, format) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(canvas.clientWidth, 200);
    const height = PLOT_HEIGHT_PX;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 56;
    const right = 8;
    const top = 8;
    const bottom = 22;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    let max = 0;
    for (const line of lines) {
      for (const v of line.values) if (v > max) max = v;
    }
    max = niceCeiling(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#667085";
    ctx.strokeStyle = "#e4e7ec";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(left + plotW, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(format((max * i) / 4), left - 6, y);
    }
    if (times.length === 0) {
      ctx.textAlign = "center";
      ctx.fillText("waiting for samples…", left + plotW / 2, top + plotH / 2);
      return;
    }
    const t0 = times[0];
    const t1 = times[times.length - 1];
    const span = Math.max(t1 - t0, 1);
    const x = (t) => left + ((t - t0) / span) * plotW;
    const y = (v) => top + plotH - (v / max) * plotH;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(clockTime(t0), left, top + plotH + 6);
    ctx.textAlign = "right";
    ctx.fillText(clockTime(t1), left + plotW, top + plotH + 6);
    lines.forEach((line, i) => {
      ctx.strokeStyle = COLORS[i % COLORS.length];
      ctx.lineWidth = 1.75;
      ctx.beginPath();
      const n = Math.min(line.values.length, times.length);
      for (let k = 0; k < n; k++) {
        const px = times.length === 1 ? left + plotW : x(times[k]);
        const py = y(line.values[k]);
        if (k === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      }
      ctx.stroke();
    });
  }

  // The smallest 1, 2 or 5 times a power of ten at or above value (at least 1): round axis labels.
  function niceCeiling(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  // -- the two kinds of page ----------------------------------------------------------------
  function renderWorker(stats) {
    titleEl.textContent = "flowbus worker · " + stats.app;
    document.title = "flowbus · " + stats.app;
    const t = stats.totals;
    renderTotals("worker-totals", "Worker " + (stats.web_url || ""), [
      ["events in", formatNumber(t.events_in)],
      ["events out", formatNumber(t.events_out)],
      ["assigned partitions", formatNumber(t.assigned)],
      ["commits", formatNumber(t.commits)],
      ["fencings", formatNumber(t.fencings)],
      ["guarantee", stats.guarantee],
    ]);
    const s = stats.series;
    renderPlot("events", "Events per second", s.t, [
      { label: "in", values: s.events_in_per_s },
      { label: "out", values: s.events_out_per_s },
    ]);
    renderPlot("lag", "Consumer lag (records)", s.t, [{ label: "lag", values: s.lag }]);
    renderTable("partitions", "Partitions and their owners", [
      { title: "topic", key: "topic", format: String },
      { title: "partition", key: "partition", num: true },
      { title: "owner", key: "owner", format: (v, row) => (row.local ? "this worker" : v || "–"),
        highlight: (row) => row.local },
      { title: "offset", key: "offset", num: true },
      { title: "lag", key: "lag", num: true },
    ], stats.partitions, "no partitions assigned yet");
    const group = stats.group;
    renderTable("group", group ? "Group " + group.id + " (" + group.state + ")" : "Group",
      [
        { title: "member", key: "client_id", format: String },
        { title: "host", key: "host", format: String },
        { title: "partitions", key: "partitions", num: true },
      ], group ? group.members : [], "not described yet");
    renderTable("topics", "Topics", [
      { title: "topic", key: "name", format: String },
      { title: "events in", key: "events_in", num: true },
      { title: "events out", key: "events_out", num: true },
    ], stats.topics, "no events yet");
    renderTable("tables", "Tables", [
      { title: "table", key: "name", format: String },
      { title: "kind", key: "kind", format: String },
      { title: "partitions", key: "partitions", num: true },
      { title: "owned here", key: "owned", format: (v) => (v && v.length ? v.join(", ") : "–") },
      { title: "keys here", key: "keys", num: true, format: (v, row) => (row.keys_capped ? "≥ " : "") + formatNumber(v) },
      { title: "on disk", key: "size_bytes", num: true, format: formatBytes },
    ], stats.tables, "no tables");
    if (stats.broker) renderBroker(stats.broker, "embedded broker · ");
  }

  function renderBroker(stats, prefix) {
    prefix = prefix || "";
    if (!prefix) {
      titleEl.textContent = "flowbus broker";
      document.title = "flowbus broker";
    }
    const t = stats.totals;
    const txn = stats.transactions;
    renderTotals("broker-totals", prefix + "Broker", [
      ["requests", formatNumber(t.requests)],
      ["connections", formatNumber(t.connections)],
      ["received", formatBytes(t.network_received_bytes)],
      ["sent", formatBytes(t.network_sent_bytes)],
      ["topics", formatNumber(t.topics)],
      ["partitions", formatNumber(t.partitions)],
      ["transactions committed", formatNumber(txn.committed)],
      ["aborted", formatNumber(txn.aborted)],
      ["open", formatNumber(txn.open)],
    ]);
    const s = stats.series;
    renderPlot("broker-requests", prefix + "Requests per second", s.t, [{ label: "requests", values: s.requests_per_s }]);
    renderPlot("broker-records", prefix + "Records per second", s.t, [
      { label: "in (produced)", values: s.records_in_per_s },
      { label: "out (fetched)", values: s.records_out_per_s },
    ]);
    renderPlot("broker-bytes", prefix + "Bytes per second", s.t, [
      { label: "in", values: s.bytes_in_per_s },
      { label: "out", values: s.bytes_out_per_s },
    ], formatBytes);
    renderPlot("broker-lag", prefix + "Group lag (records)", s.t, [{ label: "lag", values: s.group_lag }]);
    renderTable("broker-topics", prefix + "Topics", [
      { title: "topic", key: "name", format: String },
      { title: "partitions", key: "partitions", num: true },
      { title: "records", key: "end_offsets", num: true },
      { title: "size", key: "size_bytes", num: true, format: formatBytes },
      { title: "in", key: "records_in", num: true },
      { title: "out", key: "records_out", num: true },
    ], stats.topics, "no topics", true);
    renderTable("broker-groups", prefix + "Groups", [
      { title: "group", key: "id", format: String },
      { title: "state", key: "state", format: String },
      { title: "members", key: "members", num: true },
      { title: "lag", key: "lag", num: true },
    ], stats.groups, "no groups");
  }

  function render(stats) {
    if (stats.kind === "worker") renderWorker(stats);
    else renderBroker(stats, "");
    const first = stats.series && stats.series.t ? stats.series.t.length : 0;
    document.body.dataset.points = String(first);
    document.body.dataset.samples = String(stats.samples);
    if (stats.kind === "worker") document.body.dataset.eventsIn = String(stats.totals.events_in);
  }

  // -- polling ------------------------------------------------------------------------------
  async function poll() {
    try {
      const response = await fetch(STATS_URL, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const stats = await response.json();
      render(stats);
      updates += 1;
      document.body.dataset.updates = String(updates);
      statusEl.classList.remove("error");
      statusEl.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      // The process stopped or restarted: say so and keep trying (no console error for it).
      statusEl.classList.add("error");
      statusEl.textContent = "cannot reach " + STATS_URL + " (" + err.message + "), retrying";
    } finally {
      window.setTimeout(poll, POLL_INTERVAL_MS);
    }
  }

  poll();
})();
