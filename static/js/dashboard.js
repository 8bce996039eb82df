/* EventFlow dashboard: live stats over Socket.IO, the throughput chart, htmx glue.
 *
 * The server emits `stats` on the /dashboard namespace about once a second. Every element
 * with data-stat="path.in.payload" shows that value (formatted by its data-format). The
 * overview's chart starts from the five minutes of `series` in the page and of `history` (one
 * list per metric) in the first `stats` after each (re)connect; later ones carry one new
 * `point` each, which the chart appends while dropping its oldest. When the DLQ or the
 * counters change, the body gets a `dlq-changed` / `totals-changed` event that htmx-driven
 * lists listen for.
 *
 * The Content-Security-Policy allows no inline script or style attribute: keep behaviour in
 * this file and styles in dashboard.css (setting element.style from here is fine).
 */
(function () {
  "use strict";

  const whole = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat("en-US", {
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  });
  const timeOfDay = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
  });
  const DASH = "—";

  const formats = {
    count: (v) => whole.format(v),
    rate: (v) => (v < 10 ? oneDecimal.format(v) : whole.format(v)),
    ms: (v) => {
      if (v < 1000) return whole.format(v) + " ms";
      if (v < 60000) return oneDecimal.format(v / 1000) + " s";
      return oneDecimal.format(v / 60000) + " min";
    },
    clock: (v) => timeOfDay.format(new Date(v * 1000)),
  };

  function lookup(payload, path) {
    return path.split(".").reduce((value, key) => (value == null ? value : value[key]), payload);
  }

  function formatValue(value, format) {
    if (value === null || value === undefined) return DASH;
    return (formats[format] || String)(value);
  }

  function renderStats(stats) {
    document.querySelectorAll("[data-stat]").forEach((el) => {
      const text = formatValue(lookup(stats, el.dataset.stat), el.dataset.format);
      if (el.textContent !== text) el.textContent = text;
    });
  }

  /* --- connection state -------------------------------------------------------------------- */

  const liveStatus = document.getElementById("live-status");
  const stateText = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    refused: "Not signed in: reload",
  };

  function setState(state) {
    if (!liveStatus) return;
    liveStatus.dataset.state = state;
    liveStatus.querySelector(".live-text").textContent = stateText[state];
  }

  /* --- toasts for failed htmx requests ----------------------------------------------------- */

  const toast = document.getElementById("toast");
  let toastTimer = null;

  function showToast(message) {
    if (!toast) return;
    toast.textContent = message;
    toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      toast.hidden = true;
    }, 6000);
  }

  document.body.addEventListener("htmx:responseError", (event) => {
    const status = event.detail.xhr.status;
    showToast("The server could not complete the request (HTTP " + status + "). Try again.");
  });
  document.body.addEventListener("htmx:sendError", () => {
    showToast("The server cannot be reached. Retrying when you act again.");
  });

  /* --- removable filter chips -------------------------------------------------------------- */

  // A chip's × is a link to the view without it (for when scripts are off); here it removes
  // the chip with its hidden field and re-sends the form, so the other filters stay as they are.
  document.addEventListener("click", (event) => {
    const remove = event.target.closest(".chip-remove");
    const form = remove && remove.closest("form");
    if (!form) return;
    event.preventDefault();
    remove.closest(".chip").remove();
    form.requestSubmit();
  });

  /* --- throughput chart -------------------------------------------------------------------- */

  const SERIES = [
    { key: "ingested", label: "Ingested", color: "#2563eb" },
    { key: "processed", label: "Processed", color: "#16a34a" },
    { key: "failed", label: "Failed", color: "#dc2626" },
    { key: "retried", label: "Retried", color: "#d97706" },
  ];
  const chartBox = document.getElementById("throughput-chart");
  let chart = null;
  let points = []; // the plotted seconds, oldest first: {t, ingested, processed, failed, ...}
  let windowSize = 0; // how many seconds the chart shows: as many as the history it was given

  function chartData() {
    return [points.map((b) => b.t)].concat(SERIES.map((s) => points.map((b) => b[s.key])));
  }

  function drawChart() {
    if (!chartBox || !window.uPlot) return;
    const data = chartData();
    if (chart === null) {
      chart = new window.uPlot(
        {
          width: Math.max(chartBox.clientWidth, 280),
          height: 260,
          series: [{}].concat(
            SERIES.map((s) => ({
              label: s.label,
              stroke: s.color,
              width: 2,
              points: { show: false },
              value: (u, v) => (v == null ? DASH : whole.format(v) + "/s"),
            }))
          ),
          scales: { y: { range: (u, min, max) => [0, Math.max(5, Math.ceil(max * 1.1))] } },
          axes: [
            {
              space: 70,
              values: (u, ticks) => ticks.map((t) => timeOfDay.format(new Date(t * 1000))),
            },
            {
              size: 56,
              label: "events / s",
              labelSize: 18,
              values: (u, ticks) => ticks.map((t) => whole.format(t)),
            },
          ],
          cursor: { drag: { x: false, y: false } },
        },
        data,
        chartBox
      );
      new ResizeObserver(() => {
        chart.setSize({ width: Math.max(chartBox.clientWidth, 280), height: 260 });
      }).observe(chartBox);
    } else {
      chart.setData(data);
    }
    // The caption sums the plotted series, so it moves exactly when the chart does.
    SERIES.forEach((s) => {
      const el = document.querySelector('[data-series-total="' + s.key + '"]');
      if (el) el.textContent = whole.format(points.reduce((sum, b) => sum + b[s.key], 0));
    });
    chartBox.dataset.firstSecond = points.length ? points[0].t : "";
    chartBox.dataset.lastSecond = points.length ? points[points.length - 1].t : "";
  }

  /* The whole window at once: from the page, and in the first `stats` after a (re)connect. */
  function resetChart(series) {
    if (!chartBox || !Array.isArray(series)) return;
    points = series.slice();
    windowSize = series.length;
    drawChart();
  }

  /* The history as the server sends it, {start, ingested: [...], ...}: one point per second. */
  function unpack(history) {
    const keys = Object.keys(history).filter((k) => Array.isArray(history[k]));
    const length = keys.length ? history[keys[0]].length : 0;
    const unpacked = [];
    for (let i = 0; i < length; i++) {
      const point = { t: history.start + i };
      keys.forEach((k) => (point[k] = history[k][i]));
      unpacked.push(point);
    }
    return unpacked;
  }

  /* One more second: appended (or, if the chart has it already, updated), oldest dropped. */
  function addPoint(point) {
    if (!chartBox || !point || windowSize === 0) return;
    const last = points.length ? points[points.length - 1].t : -Infinity;
    if (point.t > last) {
      points.push(point);
    } else {
      const index = points.findIndex((b) => b.t === point.t);
      if (index === -1) return; // older than the window
      points[index] = point;
    }
    const newest = points[points.length - 1].t;
    while (points.length && points[0].t <= newest - windowSize) points.shift();
    drawChart();
  }

  /* --- history chart (Overview): a range of the per-minute rollups, drawn once ------------- */

  const historyBox = document.getElementById("history-chart");
  const historyData = document.getElementById("history-data");

  function drawHistory() {
    if (!historyBox || !historyData || !window.uPlot) return;
    const history = JSON.parse(historyData.textContent);
    const pts = history.points;
    const step = history.step_seconds;
    const data = [pts.map((p) => Date.parse(p.t) / 1000)]
      .concat(SERIES.map((s) => pts.map((p) => p[s.key])))
      .concat([pts.map((p) => p.p95_ms)]);
    const dated = step >= 3600;
    const chartOf = new window.uPlot(
      {
        width: Math.max(historyBox.clientWidth, 280),
        height: 260,
        series: [{}]
          .concat(
            SERIES.map((s) => ({
              label: s.label,
              stroke: s.color,
              width: 2,
              points: { show: false },
              value: (u, v) => (v == null ? DASH : whole.format(v)),
            }))
          )
          .concat([
            {
              label: "p95 latency",
              stroke: "#6b7280",
              dash: [6, 4],
              scale: "ms",
              points: { show: false },
              value: (u, v) => (v == null ? DASH : whole.format(v) + " ms"),
            },
          ]),
        scales: { y: { range: (u, min, max) => [0, Math.max(5, Math.ceil(max * 1.1))] } },
        axes: [
          {
            space: 80,
            values: (u, ticks) =>
              ticks.map((t) =>
                dated
                  ? new Date(t * 1000).toLocaleDateString(undefined, { month: "short", day: "numeric" })
                  : timeOfDay.format(new Date(t * 1000))
              ),
          },
          {
            size: 56,
            label: "events / " + (step >= 3600 ? step / 3600 + " h" : step / 60 + " min"),
            labelSize: 18,
            values: (u, ticks) => ticks.map((t) => whole.format(t)),
          },
          { scale: "ms", side: 1, size: 56, grid: { show: false },
            values: (u, ticks) => ticks.map((t) => whole.format(t) + " ms") },
        ],
        cursor: { drag: { x: false, y: false } },
      },
      data,
      historyBox
    );
    historyBox.dataset.points = String(pts.length);
    new ResizeObserver(() => {
      chartOf.setSize({ width: Math.max(historyBox.clientWidth, 280), height: 260 });
    }).observe(historyBox);
  }
  if (window.uPlot) drawHistory();
  else window.addEventListener("load", drawHistory);

  /* --- live feed --------------------------------------------------------------------------- */

  let dlqKey = null;
  let totalsKey = null;

  function announceChanges(stats) {
    const t = stats.totals || {};
    const nextDlq = [stats.dlq_size, t.failed, t.replayed].join(":");
    const nextTotals = [
      t.ingested, t.processed, t.failed, t.retried, t.replayed,
      stats.queue_depth, stats.processing, stats.dlq_size,
    ].join(":");
    // After a (re)connect the first snapshot counts as a change: we may have missed some.
    if (window.htmx && nextDlq !== dlqKey) window.htmx.trigger(document.body, "dlq-changed");
    if (window.htmx && nextTotals !== totalsKey) {
      window.htmx.trigger(document.body, "totals-changed");
    }
    dlqKey = nextDlq;
    totalsKey = nextTotals;
  }

  const initial = document.getElementById("initial-stats");
  if (initial) {
    const stats = JSON.parse(initial.textContent);
    if (stats) resetChart(stats.series);
  }

  if (!window.io) {
    setState("reconnecting");
    return;
  }
  // WebSocket only: several web processes need no sticky sessions for it.
  const socket = window.io("/dashboard", { transports: ["websocket"] });
  socket.on("connect", () => {
    dlqKey = null;
    totalsKey = null;
    setState("live");
  });
  socket.on("disconnect", () => setState("reconnecting"));
  socket.on("connect_error", () => {
    // `active` is false when the server refused us (not an admin any more); else it retries.
    setState(socket.active ? "reconnecting" : "refused");
  });
  socket.on("stats", (stats) => {
    renderStats(stats);
    if (stats.history) resetChart(unpack(stats.history));
    else addPoint(stats.point);
    announceChanges(stats);
  });
})();
