// The dashboard's toolbox: numbers, DOM helpers, and the history and charts (uPlot) of a page
// state. histogramQuantile is the twin of veloxserve/api/dashboard.py's histogram_quantile.
"use strict";
window.veloxCharts = (() => {
  const HISTORY = 300; // points kept per series
  const PALETTE = ["#1f6feb", "#d1495b", "#2a9d8f", "#e9a23b", "#7b4fc9", "#3d8b37", "#c2185b", "#00838f", "#6d4c41", "#5c6bc0"];

  // ---- numbers ----
  function histogramQuantile(bounds, cumulative, q) {
    const total = cumulative.length ? cumulative[cumulative.length - 1] : 0;
    if (!(total > 0)) return null;
    const rank = q * total;
    let lower = 0, below = 0;
    for (let i = 0; i < bounds.length; i++) {
      const bound = bounds[i] === null ? Infinity : bounds[i], count = cumulative[i];
      if (count >= rank && count > below) {
        if (!isFinite(bound)) return lower;
        return lower + ((bound - lower) * (rank - below)) / (count - below);
      }
      lower = bound;
      below = count;
    }
    return lower;
  }

  function fmt(value, digits = 3) {
    if (value === null || value === undefined || (typeof value === "number" && !isFinite(value))) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return value.toLocaleString("en");
    const abs = Math.abs(value);
    return abs >= 100 ? value.toFixed(1) : abs >= 1 ? value.toFixed(2) : value.toPrecision(digits);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (value !== undefined && value !== null) node.setAttribute(key, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function tile(key, label, value, text) {
    const node = el("div", { class: "tile", "data-key": key, "data-value": value === null || value === undefined ? "" : String(value) });
    node.append(el("div", { class: "label", text: label }), el("div", { class: "value", text: text ?? fmt(value), title: text ?? fmt(value) }));
    return node;
  }

  function table(headings, rows) {
    const head = el("tr", {}, ...headings.map((h) => el("th", { text: h })));
    const body = rows.map((row) => el("tr", {}, ...row.map((cell) => (cell instanceof Node ? el("td", {}, cell) : el("td", { text: fmt(cell) })))));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
  }

  function text(value) {
    return value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function badge(text) {
    return el("span", { class: "badge " + String(text).split(" ")[0], text });
  }

  // The entries of an answer another part of the server defines: a list, {key: [...]}, or {key: {name: {...}}}.
  function entries(answer, key) {
    const value = Array.isArray(answer) ? answer : answer && typeof answer === "object" ? answer[key] : null;
    if (Array.isArray(value)) return value.filter((v) => v && typeof v === "object");
    if (value && typeof value === "object") return Object.entries(value).map(([name, v]) => ({ name, ...(v && typeof v === "object" ? v : { value: v }) }));
    return [];
  }

  // A panel over an optional route must never stop the rest of the page.
  function guarded(box, render) {
    try {
      render();
    } catch (error) {
      if (box) box.replaceChildren(el("p", { class: "note", text: "Could not show this panel: " + error.message }));
    }
  }

  // ---- history and charts over a page state {times, series, bars, charts} ----
  function over(state) {
    function record(id, value) {
      let values = state.series[id];
      if (!values) values = state.series[id] = new Array(state.times.length - 1).fill(null);
      values.push(value === undefined ? null : value);
    }

    function trim() {
      const extra = state.times.length - HISTORY;
      if (extra > 0) {
        state.times.splice(0, extra);
        for (const values of Object.values(state.series)) values.splice(0, extra);
      }
      for (const values of Object.values(state.series)) while (values.length < state.times.length) values.push(null);
    }

    // One chart per element: re-created when its series change, otherwise given new data.
    function plot(id, ids, labels, { bars = false, xs = null, unit = "", log = false } = {}) {
      const target = document.getElementById(id);
      if (!target || typeof uPlot === "undefined") return;
      const x = xs || state.times;
      const source = xs ? state.bars : state.series; // bars: one value per version, not a time series
      const data = [x, ...ids.map((s) => (source[s] || []).slice(-x.length))];
      const key = labels.join("|") + (bars ? "|bars" + x.length : "") + (log ? "|log" : "");
      let chart = state.charts[id];
      if (!ids.length || !x.length) {
        if (chart) chart.destroy();
        delete state.charts[id];
        target.replaceChildren(el("div", { class: "empty", text: "no data yet" }));
        return;
      }
      const width = Math.max(300, target.clientWidth || target.parentElement.clientWidth - 16);
      if (!chart || chart.key !== key) {
        if (chart) chart.destroy();
        target.replaceChildren();
        const series = [
          xs ? { label: "version", value: (u, v) => (v === null ? "" : (xs.names || [])[v] ?? v) } : {},
          ...labels.map((label, i) => ({
            label,
            stroke: PALETTE[i % PALETTE.length],
            fill: bars ? PALETTE[i % PALETTE.length] + "99" : undefined,
            width: bars ? 0 : 1.5,
            spanGaps: true,
            // grouped bars: the first series left of each x, the second right of it
            paths: bars ? uPlot.paths.bars({ size: [0.35, 48], align: labels.length > 1 ? (i === 0 ? -1 : 1) : 0, gap: 2 }) : undefined,
            points: { show: bars ? false : undefined },
            value: (u, v) => (v === null ? "–" : fmt(v) + unit),
          })),
        ];
        const axes = xs
          ? [{ values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? (xs.names || [])[t] ?? "" : "")) }, { size: 55 }]
          : [{}, { size: 55 }];
        const options = { width, height: 220, series, axes, scales: { x: { time: !xs } }, legend: { live: true } };
        if (bars) {
          options.scales.x.range = () => [-0.6, x.length - 0.4]; // x is 0 … n-1 (one point: uPlot would widen it by 100)
          options.scales.y = { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] }; // bars start at 0
        }
        if (log) options.scales.y = { distr: 3 }; // p50 and p99 differ by orders of magnitude
        chart = new uPlot(options, data, target);
        chart.key = key;
        state.charts[id] = chart;
      } else {
        chart.setData(data);
        if (Math.abs(chart.width - width) > 20) chart.setSize({ width, height: 220 });
      }
    }

    return { record, trim, plot };
  }

  return { HISTORY, PALETTE, histogramQuantile, fmt, el, tile, table, text, badge, entries, guarded, over };
})();
