// veloxserve dashboard: polls /stats (and, where the server has them, /models/{name}/alerts and
// /pipelines), keeps a short history in the page and draws it with uPlot (charts.js). Rates and
// windowed latency quantiles are differences of two successive snapshots. All URLs are relative:
// same origin only.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const SELF = new Set(["/stats", "/dashboard", "/docs", "/assets/{asset}", "/openapi.json", "other"]);
  const DATA_PLANE = ["predict", "top_k", "observe", "/apps/{app}/predict", "/apps/{app}/observe"];
  const { PALETTE, histogramQuantile, fmt, el, tile, table, text, badge, entries, guarded } = window.veloxCharts;

  // ---- the token: from ?token= (then dropped from the address bar) or typed in the page ----
  if (params.has("token")) {
    sessionStorage.setItem("veloxserve-token", params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  const interval = Math.max(200, Number(params.get("interval")) || 2000);

  const state = {
    interval,
    snapshots: [], // the last two /stats answers
    last: null,
    times: [], // x axis of every chart: the server's time of each snapshot (s)
    series: {}, // id -> values aligned with times
    bars: {}, // id -> one value per retrained version (the promotion comparison)
    charts: {}, // element id -> uPlot
    optional: {}, // route -> "present" | "absent" | "needs token"
    alerts: {}, // model -> the last /models/{name}/alerts answer
    pipelines: null,
    polls: 0,
    histogramQuantile,
    palette: PALETTE, // series i is drawn in PALETTE[i % PALETTE.length]
  };
  window.veloxDashboard = state;
  const { record, trim, plot } = window.veloxCharts.over(state);

  function token() {
    return sessionStorage.getItem("veloxserve-token") || "";
  }

  async function get(path) {
    const headers = token() ? { Authorization: "Bearer " + token() } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { status: response.status, body };
  }

  // ---- traffic ----
  function traffic(prev, cur) {
    const dt = prev ? cur.time - prev.time : 0;
    const out = { rate: {}, shed: {}, p50: {}, p99: {}, total: { rate: null, shed: null, p50: null, p99: null } };
    let merged = null, rate = 0, shed = 0;
    for (const [route, figures] of Object.entries(cur.requests)) {
      const before = prev && prev.requests[route];
      if (!(dt > 0)) continue;
      const n = figures.requests - (before ? before.requests : 0);
      out.rate[route] = n / dt;
      out.shed[route] = (figures.shed - (before ? before.shed : 0)) / dt;
      const counts = figures.buckets.counts.map((c, i) => c - (before && before.buckets.counts[i] ? before.buckets.counts[i] : 0));
      out.p50[route] = histogramQuantile(figures.buckets.le_ms, counts, 0.5);
      out.p99[route] = histogramQuantile(figures.buckets.le_ms, counts, 0.99);
      if (!SELF.has(route)) {
        rate += out.rate[route];
        shed += out.shed[route];
      }
      if (DATA_PLANE.includes(route)) merged = merged ? merged.map((c, i) => c + counts[i]) : counts.slice();
    }
    if (dt > 0) {
      const bounds = (cur.requests.predict || Object.values(cur.requests)[0] || { buckets: { le_ms: [] } }).buckets.le_ms;
      out.total = {
        rate,
        shed,
        p50: merged ? histogramQuantile(bounds, merged, 0.5) : null,
        p99: merged ? histogramQuantile(bounds, merged, 0.99) : null,
      };
    }
    return out;
  }

  function renderTraffic(cur, t) {
    const routes = Object.keys(cur.requests).filter((r) => !SELF.has(r)).sort();
    for (const route of routes) {
      record("rate:" + route, t.rate[route]);
      record("p50:" + route, t.p50[route]);
      record("p99:" + route, t.p99[route]);
    }
    const cache = cur.models.length ? cur.models[0].metrics.feature_cache : null;
    const errors = Object.entries(cur.requests).reduce((n, [r, f]) => n + (SELF.has(r) ? 0 : f.errors), 0);
    const shedTotal = Object.values(cur.requests).reduce((n, f) => n + f.shed, 0);
    document.getElementById("traffic-tiles").replaceChildren(
      tile("traffic.rate", "requests / s", t.total.rate),
      tile("traffic.p50", "p50 latency (ms)", t.total.p50),
      tile("traffic.p99", "p99 latency (ms)", t.total.p99),
      tile("traffic.shed_rate", "shed / s (503)", t.total.shed),
      tile("traffic.shed", "shed since start", shedTotal),
      tile("traffic.errors", "4xx/5xx since start", errors),
      tile("traffic.feature_cache_hit_rate", "feature cache hits", cache ? cache.hit_rate : null, cache && cache.hits + cache.misses ? (100 * cache.hit_rate).toFixed(1) + " %" : "–"),
      tile("traffic.models", "models", cur.models.length),
      tile("traffic.containers", "Clipper models", cur.containers.length),
    );
    plot("chart-rate", routes.map((r) => "rate:" + r), routes, { unit: "/s" });
    const data = routes.filter((r) => DATA_PLANE.includes(r) && cur.requests[r].requests > 0);
    plot("chart-latency", data.flatMap((r) => ["p50:" + r, "p99:" + r]), data.flatMap((r) => [r + " p50", r + " p99"]), { unit: " ms", log: true });
    const rows = Object.entries(cur.requests)
      .sort()
      .map(([route, f]) => [route, f.requests, t.rate[route] ?? null, f.shed, f.errors, f.latency_ms.p50, f.latency_ms.p99]);
    document.getElementById("routes").replaceChildren(...table(["route", "requests", "per s", "shed", "errors", "p50 ms (all time)", "p99 ms (all time)"], rows).childNodes);
  }

  // ---- models ----
  function shedCount(admission) {
    return admission && admission.shed ? Object.values(admission.shed).reduce((n, v) => n + v, 0) : 0;
  }

  // Versions oldest first, an arrow from each one's parent; a parent other than the previous
  // version (a retrain after a rollback) is named.
  function lineage(versions, active) {
    const chain = el("div", { class: "lineage", "data-role": "lineage" });
    versions.forEach((v, i) => {
      const previous = i ? versions[i - 1].version : null;
      if (i) chain.append(el("span", { class: "arrow", text: v.parent === previous ? "→" : "·" }));
      const from = v.parent && v.parent !== previous ? ` (from ${v.parent})` : "";
      chain.append(el("span", { class: "node" + (v.version === active ? " active" : ""), "data-version": v.version, title: `${v.status}; trained because: ${v.reason || "initial"}`, text: v.version + from }));
    });
    return chain;
  }

  function renderModel(model, prev, dt) {
    const name = model.name, metrics = model.metrics, pq = metrics.prequential;
    const id = "model-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
    const windows = Object.keys(pq.windows);
    for (const w of windows) record(`rmse:${name}:${w}`, pq.windows[w].rmse);
    record(`rmse:${name}:all`, pq.rmse);
    const before = prev && prev.models.find((m) => m.name === name);
    record(`obs:${name}`, before && dt > 0 ? (pq.observations - before.metrics.prequential.observations) / dt : null);
    const shed = shedCount(metrics.admission);
    record(`shed:${name}`, before && dt > 0 ? (shed - shedCount(before.metrics.admission)) / dt : null);

    let card = document.getElementById(id);
    if (!card) {
      card = el("article", { class: "card model", id, "data-model": name });
      card.append(
        el("h3", {}, el("span", { text: name }), el("span", { class: "badge active", "data-role": "active" })),
        el("div", { class: "tiles", "data-role": "tiles" }),
        el("div", { class: "charts" },
          el("figure", {}, el("figcaption", { text: "Prequential RMSE: each observation predicted, then learned (sliding windows)" }), el("div", { class: "chart", id: id + "-rmse" })),
          el("figure", {}, el("figcaption", { text: "Observations learned and requests shed (admission control) per second" }), el("div", { class: "chart", id: id + "-obs" })),
          el("figure", {}, el("figcaption", { text: "Retrains: held-out RMSE of the candidate vs its parent (promotion comparison)" }), el("div", { class: "chart", id: id + "-promotion" })),
        ),
        el("div", { "data-role": "alerts" }),
        el("h4", { text: "Versions" }),
        el("div", { "data-role": "lineage" }),
        el("div", { "data-role": "versions" }),
        el("div", { "data-role": "retrain" }),
      );
      document.getElementById("model-list").append(card);
    }
    card.querySelector('[data-role="active"]').textContent = model.active_version;
    const admission = metrics.admission, job = model.retrain;
    card.querySelector('[data-role="tiles"]').replaceChildren(
      tile(`model.${name}.active_version`, "active version", model.active_version, model.active_version),
      tile(`model.${name}.n_users`, "users", model.n_users),
      tile(`model.${name}.n_items`, "items", model.n_items),
      tile(`model.${name}.observations`, "observations (prequential)", pq.observations),
      tile(`model.${name}.rmse`, "RMSE, all", pq.rmse),
      ...windows.map((w) => tile(`model.${name}.rmse_${w}`, `RMSE, last ${w}`, pq.windows[w].rmse)),
      tile(`model.${name}.drift_alarms`, "drift alarms", model.drift_alarms, model.drift_alarms === null ? "off" : fmt(model.drift_alarms)),
      tile(`model.${name}.in_flight`, "in flight", admission.in_flight),
      tile(`model.${name}.shed`, "shed: deadline / full", shed, admission.shed ? `${fmt(admission.shed.deadline)} / ${fmt(admission.shed.in_flight)}` : fmt(shed)),
      tile(`model.${name}.retrain`, "last retrain", job ? job.state : null, job ? job.state : "none"),
    );
    plot(id + "-rmse", [...windows.map((w) => `rmse:${name}:${w}`), `rmse:${name}:all`], [...windows.map((w) => "last " + w), "all"]);
    plot(id + "-obs", [`obs:${name}`, `shed:${name}`], ["observations / s", "shed / s"], { unit: "/s" });

    // the promotion comparison of every retrained version, as bars
    const compared = model.versions.filter((v) => v.comparison && v.comparison.rows);
    const xs = compared.map((_, i) => i);
    xs.names = compared.map((v) => v.version);
    state.bars[`cand:${name}`] = compared.map((v) => v.comparison.candidate_rmse);
    state.bars[`parent:${name}`] = compared.map((v) => v.comparison.parent_rmse);
    plot(id + "-promotion", compared.length ? [`cand:${name}`, `parent:${name}`] : [], ["candidate", "parent"], { bars: true, xs });

    card.querySelector('[data-role="lineage"]').replaceChildren(lineage(model.versions, model.active_version));
    const rows = model.versions
      .slice()
      .reverse()
      .map((v) => [
        v.version,
        badge(v.status),
        v.parent || "–",
        v.reason || "initial",
        v.created_at || v.started_at || "–",
        v.rows_trained ?? null,
        v.data ? `${fmt(v.data.base_rows)} base + ${fmt(v.data.log_rows)} logged` : v.source || "–",
        v.heldout_rmse ?? null,
        v.comparison && v.comparison.rows ? `${fmt(v.comparison.candidate_rmse)} vs ${fmt(v.comparison.parent_rmse)} (${v.comparison.rows} rows)` : "–",
        el("span", { class: "decision", text: v.decision || v.error || v.evaluation || "" }),
      ]);
    card.querySelector('[data-role="versions"]').replaceChildren(
      table(["version", "status", "parent", "why trained", "created", "rows trained", "data", "held-out RMSE", "candidate vs parent RMSE", "decision"], rows),
    );
    const policy = model.policy;
    const schedule = [policy.every_observations ? `every ${policy.every_observations} observations` : null, policy.every_seconds ? `every ${policy.every_seconds} s` : null, policy.drift ? "on drift (Page–Hinkley)" : null].filter(Boolean);
    card.querySelector('[data-role="retrain"]').replaceChildren(
      el("p", { class: "note", text: `Retrains ${schedule.length ? schedule.join(", ") : "by hand only"}; promotes ${policy.promote}.` + (job ? ` Last retrain: ${job.version} (${job.reason}) ${job.state}${job.seconds ? " in " + fmt(job.seconds) + " s" : ""}${job.detail ? ": " + job.detail : ""}.` : "") }),
    );
    guarded(card.querySelector('[data-role="alerts"]'), () => renderAlerts(card, name));
  }

  function renderAlerts(card, name) {
    const box = card.querySelector('[data-role="alerts"]');
    const answer = state.alerts[name];
    const where = state.optional.alerts;
    if (where === "needs token") {
      box.replaceChildren(el("p", { class: "note", "data-role": "alerts-token", text: "Alerts need a token: enter one above." }));
      return;
    }
    if (where === "absent" || answer === undefined) {
      box.replaceChildren(el("p", { class: "note", "data-role": "alerts-absent", text: where === "absent" ? "Alerts: this server has no /models/{name}/alerts route." : "" }));
      return;
    }
    const alerts = entries(answer, "alerts");
    if (!alerts.length) {
      box.replaceChildren(el("p", { class: "note", "data-role": "alerts-none", text: "No alerts." }));
      return;
    }
    const items = alerts.map((a) => {
      const extra = Object.entries(a).filter(([k, v]) => !["cause", "message", "threshold", "value", "name", "kind"].includes(k) && typeof v !== "object");
      return el("li", { "data-role": "alert" }, badge("alert"), " ", el("strong", { text: a.name || a.kind || "alert" }), " ", text(a.cause ?? a.message ?? ""), a.threshold !== undefined ? ` (value ${fmt(a.value)}, threshold ${fmt(a.threshold)})` : "", extra.length ? " · " + extra.map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") : "");
    });
    box.replaceChildren(el("h4", { text: "Alerts" }), el("ul", { class: "alerts" }, ...items));
  }

  // ---- Clipper ----
  function renderContainers(cur) {
    const list = document.getElementById("container-list");
    if (!cur.containers.length) {
      list.replaceChildren(el("p", { class: "note", text: "No Clipper models deployed (POST /containers)." }));
    } else list.querySelectorAll(".note").forEach((note) => note.remove());
    const seen = new Set();
    for (const d of cur.containers) {
      const id = "container-" + d.model.replace(/[^A-Za-z0-9_-]/g, "_");
      seen.add(id);
      const replicas = d.replicas;
      record(`queue:${d.model}`, replicas.reduce((n, r) => n + r.queue_length, 0));
      record(`batch:${d.model}`, replicas.length ? replicas.reduce((n, r) => n + r.batch_size, 0) / replicas.length : null);
      record(`lastbatch:${d.model}`, replicas.length ? replicas.reduce((n, r) => n + (r.last_batch || 0), 0) / replicas.length : null);
      let card = document.getElementById(id);
      if (!card) {
        card = el("article", { class: "card container", id, "data-container": d.model },
          el("h3", {}, el("span", { text: d.model }), el("span", { class: "badge", "data-role": "version" })),
          el("div", { class: "tiles", "data-role": "tiles" }),
          el("div", { class: "charts" }, el("figure", {}, el("figcaption", { text: "Queue length (all replicas) and batch sizes (mean over replicas)" }), el("div", { class: "chart", id: id + "-queue" }))),
          el("div", { "data-role": "replicas" }),
        );
        list.append(card);
      }
      const cache = d.cache, lookups = cache.hits + cache.misses;
      card.querySelector('[data-role="version"]').textContent = d.version + " · " + d.framework;
      card.querySelector('[data-role="tiles"]').replaceChildren(
        tile(`container.${d.model}.replicas`, "replicas", replicas.length),
        tile(`container.${d.model}.queue`, "queued", replicas.reduce((n, r) => n + r.queue_length, 0)),
        tile(`container.${d.model}.batch_size`, "AIMD batch size (mean)", replicas.length ? replicas.reduce((n, r) => n + r.batch_size, 0) / replicas.length : null),
        tile(`container.${d.model}.queries`, "queries computed", replicas.reduce((n, r) => n + r.queries, 0)),
        tile(`container.${d.model}.dropped`, "dropped (deadline)", replicas.reduce((n, r) => n + r.dropped, 0)),
        tile(`container.${d.model}.cache_hit_rate`, "prediction cache hits", lookups ? cache.hits / lookups : null, lookups ? ((100 * cache.hits) / lookups).toFixed(1) + " %" : "–"),
        tile(`container.${d.model}.objective_ms`, "objective (ms)", d.objective_ms),
      );
      plot(id + "-queue", [`queue:${d.model}`, `batch:${d.model}`, `lastbatch:${d.model}`], ["queued", "batch size limit", "last batch"]);
      card.querySelector('[data-role="replicas"]').replaceChildren(
        table(["replica", "pid", "ready", "batch size", "last batch", "queue", "batches", "queries", "dropped", "restarts", "batch p50 ms", "batch p99 ms"],
          replicas.map((r, i) => [i, r.pid, r.ready ? "yes" : "no", r.batch_size, r.last_batch, r.queue_length, r.batches, r.queries, r.dropped, r.restarts, r.batch_latency_ms ? r.batch_latency_ms.p50 : null, r.batch_latency_ms ? r.batch_latency_ms.p99 : null])),
      );
    }
    for (const card of [...list.querySelectorAll("article")]) if (!seen.has(card.id)) card.remove();
  }

  function renderApps(cur, prev, dt) {
    const list = document.getElementById("app-list");
    const seen = new Set();
    for (const app of cur.apps) {
      const id = "app-" + app.name.replace(/[^A-Za-z0-9_-]/g, "_");
      seen.add(id);
      const before = prev && prev.apps.find((a) => a.name === app.name);
      record(`answered:${app.name}`, before && dt > 0 ? (app.answered - before.answered) / dt : null);
      record(`defaults:${app.name}`, before && dt > 0 ? (app.defaults - before.defaults) / dt : null);
      const weights = app.state.weights || app.state.probabilities || null;
      if (weights) weights.forEach((w, i) => record(`weight:${app.name}:${i}`, w));
      let card = document.getElementById(id);
      if (!card) {
        card = el("article", { class: "card app", id, "data-app": app.name },
          el("h3", {}, el("span", { text: "application " + app.name }), el("span", { class: "badge", text: app.policy })),
          el("div", { class: "tiles", "data-role": "tiles" }),
          el("div", { class: "charts" },
            el("figure", {}, el("figcaption", { text: "Answers and defaults served per second" }), el("div", { class: "chart", id: id + "-answers" })),
            el("figure", {}, el("figcaption", { text: "Policy weights over the linked models" }), el("div", { class: "chart", id: id + "-weights" }))),
        );
        list.append(card);
      }
      card.querySelector('[data-role="tiles"]').replaceChildren(
        tile(`app.${app.name}.answered`, "answered", app.answered),
        tile(`app.${app.name}.defaults`, "defaults served", app.defaults),
        tile(`app.${app.name}.default_share`, "default share", app.answered ? app.defaults / app.answered : null, app.answered ? ((100 * app.defaults) / app.answered).toFixed(1) + " %" : "–"),
        tile(`app.${app.name}.observed`, "feedback", app.observed),
        tile(`app.${app.name}.objective_ms`, "objective (ms)", app.objective_ms),
        tile(`app.${app.name}.models`, "models", app.models.length, app.models.join(", ")),
      );
      plot(id + "-answers", [`answered:${app.name}`, `defaults:${app.name}`], ["answered / s", "defaults / s"], { unit: "/s" });
      plot(id + "-weights", weights ? weights.map((_, i) => `weight:${app.name}:${i}`) : [], app.models);
    }
    for (const card of [...list.querySelectorAll("article")]) if (!seen.has(card.id)) card.remove();
  }

  // ---- pipelines (a route another part of the server may add): shown when present ----
  function renderPipelines() {
    const section = document.getElementById("pipelines");
    const answer = state.pipelines;
    if (state.optional.pipelines !== "present" || !answer) {
      section.hidden = state.optional.pipelines !== "needs token";
      if (!section.hidden) document.getElementById("pipeline-list").replaceChildren(el("p", { class: "note", text: "Pipelines need a token: enter one above." }));
      return;
    }
    section.hidden = false;
    const pipelines = entries(answer, "pipelines");
    const cards = pipelines.map((p) => {
      const detail = (state.pipelineDetails || {})[p.name] || p;
      const scalars = Object.entries(detail).filter(([, v]) => v === null || typeof v !== "object");
      const nested = Object.entries(detail).filter(([, v]) => Array.isArray(v) && v.length && typeof v[0] === "object");
      return el("article", { class: "card pipeline", "data-pipeline": p.name },
        el("h3", { text: "pipeline " + p.name }),
        el("div", { class: "tiles" }, ...scalars.map(([k, v]) => tile(`pipeline.${p.name}.${k}`, k.replace(/_/g, " "), v))),
        ...nested.map(([k, rows]) => {
          const keys = [...new Set(rows.flatMap((r) => Object.keys(r).filter((c) => typeof r[c] !== "object" || r[c] === null)))];
          return el("div", {}, el("h4", { text: k }), table(keys, rows.map((r) => keys.map((c) => r[c] ?? null))));
        }),
      );
    });
    document.getElementById("pipeline-list").replaceChildren(...(cards.length ? cards : [el("p", { class: "note", text: "No pipelines." })]));
  }

  async function optional(kind, path) {
    const answer = await get(path);
    state.optional[kind] = answer.status === 200 ? "present" : answer.status === 401 || answer.status === 403 ? "needs token" : answer.status === 404 ? "absent" : state.optional[kind];
    return answer.status === 200 ? answer.body : undefined;
  }

  async function pollOptional(cur) {
    if (state.optional.alerts !== "absent") {
      for (const model of cur.models) {
        const body = await optional("alerts", `models/${encodeURIComponent(model.name)}/alerts`);
        if (state.optional.alerts === "absent") break;
        state.alerts[model.name] = body;
      }
    }
    if (state.optional.pipelines !== "absent" || state.polls % 15 === 0) {
      state.pipelines = await optional("pipelines", "pipelines");
      const list = entries(state.pipelines, "pipelines");
      state.pipelineDetails = {};
      for (const p of list) {
        if (!p || !p.name) continue;
        const detail = await get(`pipelines/${encodeURIComponent(p.name)}`);
        if (detail.status === 200) state.pipelineDetails[p.name] = detail.body;
      }
    }
  }

  // ---- the loop ----
  async function poll() {
    try {
      const answer = await get("stats");
      if (answer.status !== 200) throw new Error(`/stats answered ${answer.status}: ${answer.body && answer.body.message}`);
      const cur = answer.body, prev = state.snapshots.length ? state.snapshots[state.snapshots.length - 1] : null;
      await pollOptional(cur);
      // snapshots and the traffic figures drawn from them change together, after the await: a reader
      // between the two (a test, a tile) never sees new snapshots beside the previous poll's figures
      const dt = prev ? cur.time - prev.time : 0;
      const t = traffic(prev, cur);
      state.snapshots = [prev, cur].filter(Boolean);
      state.last = cur;
      state.times.push(cur.time);
      state.traffic = t;
      renderTraffic(cur, t);
      const models = document.getElementById("model-list");
      if (!cur.models.length && !models.querySelector(".note"))
        models.replaceChildren(el("p", { class: "note", text: "No models yet: `veloxserve train --home <home> --ratings <file>`." }));
      else if (cur.models.length) models.querySelectorAll(".note").forEach((note) => note.remove());
      for (const model of cur.models) renderModel(model, prev, dt);
      for (const card of [...document.querySelectorAll("#model-list article")]) if (!cur.models.some((m) => card.dataset.model === m.name)) card.remove();
      renderContainers(cur);
      renderApps(cur, prev, dt);
      guarded(document.getElementById("pipeline-list"), renderPipelines);
      trim();
      const health = document.getElementById("health");
      health.textContent = cur.health.status;
      health.className = "badge " + cur.health.status;
      health.title = cur.health.degraded ? JSON.stringify(cur.health.degraded) : "";
      document.getElementById("updated").textContent = "updated " + new Date(cur.time * 1000).toLocaleTimeString();
      document.getElementById("error").hidden = true;
      state.polls += 1;
    } catch (error) {
      const box = document.getElementById("error");
      box.textContent = "Could not refresh: " + error.message;
      box.hidden = false;
    } finally {
      setTimeout(poll, state.interval);
    }
  }

  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    sessionStorage.setItem("veloxserve-token", input.value.trim());
    input.value = "";
    state.optional = {};
  });
  document.getElementById("token").placeholder = token() ? "token set (enter another)" : "token (for admin-only data)";
  poll();
})();
