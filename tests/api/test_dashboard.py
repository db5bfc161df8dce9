"""The dashboard and /docs in a real browser (headless Chromium over selenium) against a live
server under load, and /stats against the routes and the Prometheus registry it reads.

Screenshots go to test-artefacts/ at the repository's root (gitignored). Chromium and its driver
are Debian packages (chromium, chromium-driver; .ci/run installs them): missing, the browser
tests are skipped, and fail under CI=true.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.clipper.conftest import constant_model, write_callable
from tests.helpers import ServerProcess, admin_headers, eventually
from veloxserve.api import create_app
from veloxserve.api.dashboard import histogram_quantile
from veloxserve.api.routes import ROUTES
from veloxserve.serving.velox import Velox
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify

ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts"
DATA_PLANE = ("predict", "top_k", "observe", "/apps/{app}/predict", "/apps/{app}/observe")  # dashboard.js's
SELF = {"/stats", "/dashboard", "/docs", "/assets/{asset}", "/openapi.json", "other"}
HAS_ALERTS = any(r.path == "/models/{name}/alerts" for r in ROUTES)
HAS_PIPELINES = any(r.path == "/pipelines" for r in ROUTES)


# ---- histogram_quantile: Prometheus's estimate, against the samples themselves ----------------
def test_histogram_quantile_interpolates_inside_the_bucket_of_the_rank() -> None:
    bounds, counts = [1.0, 2.0, 4.0, math.inf], [2, 4, 4, 4]
    assert histogram_quantile(bounds, counts, 0.5) == 1.0
    assert histogram_quantile(bounds, counts, 0.75) == 1.5
    assert histogram_quantile(bounds, [0, 0, 0, 3], 0.5) == 4.0  # in the +inf bucket: the largest finite bound
    assert histogram_quantile(bounds, [0, 0, 0, 0], 0.5) is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.0, 30.0, allow_nan=False), min_size=1, max_size=200),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_histogram_quantile_lies_in_the_bucket_of_the_true_order_statistic(samples: list[float], q: float) -> None:
    bounds = [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, math.inf]
    values = np.sort(np.array(samples))
    cumulative = [int((values <= b).sum()) for b in bounds]
    truth = values[math.ceil(q * len(values)) - 1]  # the sample at rank ⌈q·n⌉
    bucket = next(i for i, b in enumerate(bounds) if truth <= b)
    estimate = histogram_quantile(bounds, cumulative, q)
    assert estimate is not None
    if math.isinf(bounds[bucket]):
        assert estimate == bounds[bucket - 1]
    else:
        lower = 0.0 if bucket == 0 else bounds[bucket - 1]
        assert lower <= estimate <= bounds[bucket]


# ---- /stats in-process: the other routes' answers and the registry, nothing of its own ----------
@pytest.fixture(scope="module")
def songs_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with `songs` (v1, then v2 retrained from logged feedback and promoted), drift detection on."""
    home = tmp_path_factory.mktemp("dashboard") / "home"
    with Velox(home) as velox:
        data = generate_catify(60, 50, n_ratings=2000, seed=3).ratings
        velox.train("songs", data, ALSConfig(rank=3, iterations=3))
        rng = np.random.default_rng(0)
        users, items, scores = rng.integers(0, 60, 200), rng.integers(0, 50, 200), rng.integers(1, 6, 200)
        velox.observe_many("songs", [(int(u), int(i), float(s)) for u, i, s in zip(users, items, scores)])
        velox.retrain("songs", promote="always")
        assert velox.retrainer.wait("songs", 120).state == "promoted"
        velox.set_policy("songs", {"drift": True})
    return home


def test_stats_is_the_model_routes_and_the_prometheus_counters_in_one_snapshot(songs_home: Path, tmp_path) -> None:
    home = tmp_path / "home"
    shutil.copytree(songs_home, home)
    with Velox(home) as velox, TestClient(create_app(velox), headers=admin_headers(home)) as client:
        for user in range(5):
            assert client.get("/models/songs/predict", params={"user": user, "item": 3}).status_code == 200
        assert client.post("/models/songs/observe", json={"user": 1, "item": 2, "score": 4}).status_code == 200
        assert client.get("/models/songs/predict", params={"user": 1}).status_code == 400
        assert client.get("/models/nope").status_code == 404
        scraped = client.get("/metrics").text  # a scrape is not counted in what it scrapes
        stats = client.get("/stats").json()  # /stats is counted once answered: its snapshot is the scrape's
        families = {f.name: f for f in text_string_to_metric_families(scraped)}
        statuses: dict[str, dict[str, int]] = {}
        for sample in families["veloxserve_requests"].samples:
            if sample.name.endswith("_total"):
                statuses.setdefault(sample.labels["route"], {})[sample.labels["status"]] = int(sample.value)
        assert {route: f["statuses"] for route, f in stats["requests"].items()} == statuses
        assert stats["requests"]["predict"]["statuses"] == {"200": 5, "400": 1}
        assert stats["requests"]["predict"]["errors"] == 1 and stats["requests"]["predict"]["shed"] == 0
        buckets = [s for s in families["veloxserve_request_seconds"].samples if s.name.endswith("_bucket")]
        predict = [(float(s.labels["le"]), s.value) for s in buckets if s.labels["route"] == "predict"]
        figures = stats["requests"]["predict"]
        assert figures["buckets"]["counts"] == [int(v) for _, v in predict]
        assert figures["buckets"]["le_ms"] == [b * 1000 if math.isfinite(b) else None for b, _ in predict]
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            expected = histogram_quantile([b * 1000 for b, _ in predict], [v for _, v in predict], q)
            assert figures["latency_ms"][name] == pytest.approx(expected)

        (model,) = stats["models"]
        assert {k: v for k, v in model.items() if k not in ("metrics", "drift_alarms")} == client.get(
            "/models/songs"
        ).json()
        metrics = client.get("/models/songs/metrics").json()
        assert model["metrics"]["prequential"] == metrics["prequential"]
        assert model["metrics"]["model_version"] == metrics["model_version"] == "v2"
        assert model["drift_alarms"] == 0  # detection is on, nothing drifted
        assert model["versions"][1]["parent"] == "v1" and model["versions"][1]["comparison"]["rows"] > 0
        assert stats["containers"] == client.get("/containers").json()["models"] == []
        assert stats["apps"] == client.get("/apps").json()["apps"] == []
        assert stats["health"] == client.get("/healthz").json()


def test_stats_counts_drift_alarms_and_says_null_while_detection_is_off(songs_home: Path, tmp_path) -> None:
    home = tmp_path / "home"
    shutil.copytree(songs_home, home)
    with Velox(home) as velox, TestClient(create_app(velox), headers=admin_headers(home)) as client:
        assert client.put("/models/songs/policy", json={"drift": False}).status_code == 200
        assert client.get("/stats").json()["models"][0]["drift_alarms"] is None
        policy = {"drift": True, "drift_threshold": 20.0, "drift_min_instances": 10, "promote": "never"}
        assert client.put("/models/songs/policy", json=policy).status_code == 200
        assert client.get("/stats").json()["models"][0]["drift_alarms"] == 0
        top = velox.server("songs").version.score_range[1]  # far off, yet a score the model accepts
        shifted = [{"user": u % 60, "item": (u * 7) % 50, "score": top} for u in range(30)]
        assert client.post("/models/songs/observe", json={"observations": shifted}).status_code == 200
        assert client.get("/stats").json()["models"][0]["drift_alarms"] >= 1
        velox.retrainer.wait("songs", 120)  # the retrain the alarm started


# ---- the browser --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        message = "chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # the test extra has it
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("selenium is not installed: pip install -e '.[test]'")

    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_script_timeout(30)
    ARTEFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


class Load:
    """Predictions and observations for `songs` and predictions and feedback for the app `shop`,
    from a background thread until stopped."""

    def __init__(self, url: str) -> None:
        self.url, self.done, self.answers = url, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.done.is_set():
                user, item = i % 40, (i * 7) % 50
                try:
                    client.get("/models/songs/predict", params={"user": user, "item": item})
                    client.post("/models/songs/observe", json={"user": user, "item": item, "score": 1 + i % 5})
                    client.get("/models/songs/top_k", params={"user": user, "k": 5})
                    client.post("/apps/shop/predict", json={"user": user, "input": [1.0, 2.0]})
                    if i % 3 == 0:
                        client.post("/apps/shop/observe", json={"user": user, "input": [1.0, 2.0], "label": 1.0})
                    if i % 4 == 0:  # a deadline no request can meet: shed by admission control (503)
                        params = {"user": user, "item": item}
                        client.get("/models/songs/predict", params=params, headers={"x-deadline-ms": "0.001"})
                except httpx.HTTPError:  # a slow answer on a busy machine: keep the load going
                    continue
                i += 1
                self.answers = i

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(60)


@pytest.fixture(scope="module")
def live(songs_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """A live server over a copy of songs_home, with two Clipper models and an application over them."""
    tmp = tmp_path_factory.mktemp("live")
    home = tmp / "home"
    shutil.copytree(songs_home, home)
    admin = admin_headers(home)
    server = ServerProcess(home, "--model-dir", str(tmp))
    try:
        server.wait_ready()
        for name, model in (("fast", constant_model(1.0)), ("slow", constant_model(0.0, sleep=0.002))):
            deployed = httpx.post(
                f"{server.url}/containers",
                json={"name": name, "framework": "callable", "model": str(write_callable(tmp / f"{name}.pkl", model))},
                headers=admin,
                timeout=120,
            )
            assert deployed.status_code == 200, deployed.text
        app = {"name": "shop", "models": ["fast", "slow"], "policy": "exp4", "objective_ms": 2000}
        created = httpx.post(f"{server.url}/apps", json=app, headers=admin, timeout=120)
        assert created.status_code == 200, created.text
        server.token = admin["authorization"].removeprefix("Bearer ")
        yield server
    finally:
        server.stop()


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=60)  # a busy CI machine: generous, the test waits for a state, not a speed


def _state(driver, expression: str):
    return driver.execute_script(f"const s = window.veloxDashboard; return {expression};")


def _full_page_screenshot(driver, name: str) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 200, 1000), 8000))
    path = ARTEFACTS / name
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def _same_origin_only(driver, url: str) -> None:
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(url + "/") for name in loaded), loaded
    for entry in driver.get_log("browser"):
        message = entry["message"]
        assert "Content Security Policy" not in message and "Refused to" not in message, message
        if entry["level"] == "SEVERE":  # only the optional routes this server may not have
            assert " 404 " in message and ("/alerts" in message or "/pipelines" in message), message


CHARTS = (
    "chart-rate",
    "chart-latency",
    "model-songs-rmse",
    "model-songs-obs",
    "model-songs-promotion",
    "container-fast-queue",
    "container-slow-queue",
    "app-shop-answers",
    "app-shop-weights",
)
_CHART_FIGURES = """
const c = s.charts[arguments[0]];
if (!c) return null;
const canvas = document.querySelector('#' + arguments[0] + ' canvas');
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
// pixels in the series' colours (axes and grid are grey): the data is drawn, not only the frame
const colours = c.series.slice(1).map((_, i) => s.palette[i % s.palette.length])
  .map(hex => [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16)));
let ink = 0, coloured = 0;
for (let i = 0; i < pixels.length; i += 4) {
  if (pixels[i + 3] === 0) continue;
  ink++;
  if (colours.some(rgb => rgb.every((v, k) => Math.abs(pixels[i + k] - v) < 24))) coloured++;
}
return {series: c.data.slice(1).map(v => v.filter(x => x !== null && isFinite(x)).length),
        points: c.data[0].length, ink, coloured, labels: c.series.slice(1).map(x => x.label)};
"""


def test_the_dashboard_draws_live_data_and_its_tiles_match_the_json_routes(browser, live) -> None:
    url = live.url
    with Load(url) as load:
        browser.get(f"{url}/dashboard?interval=400&token={live.token}")
        assert eventually(lambda: "token=" not in browser.current_url, within=30)  # not left in the address bar
        assert eventually(
            lambda: _state(browser, "s.polls >= 6 && (s.series['rate:predict'] || []).some(v => v > 0)"), within=90
        ), _state(browser, "document.getElementById('error').textContent")
        assert eventually(lambda: all(_state(browser, f"!!s.charts['{c}']") for c in CHARTS), within=60)
        for chart in CHARTS:
            figures = browser.execute_script("const s = window.veloxDashboard;" + _CHART_FIGURES, chart)
            assert figures["series"] and all(n > 0 for n in figures["series"]), (chart, figures)
            assert figures["ink"] > 500, (chart, figures)  # axes, grid and data drawn on the canvas
            assert figures["coloured"] > 50, (chart, figures)  # the series' lines or bars among them
        assert (
            "predict"
            in browser.execute_script("const s = window.veloxDashboard;" + _CHART_FIGURES, "chart-rate")["labels"]
        )

        assert eventually(lambda: _state(browser, "(s.series['shed:songs'] || []).some(v => v > 0)"), within=30)
        # The windowed figures are differences of the page's last two snapshots: recompute them here.
        snapshots, traffic = _state(browser, "[s.snapshots, s.traffic]")
        before, after = snapshots
        dt = after["time"] - before["time"]
        rate = sum(
            f["requests"] - before["requests"].get(r, {"requests": 0})["requests"]
            for r, f in after["requests"].items()
            if r not in SELF
        )
        assert traffic["total"]["rate"] == pytest.approx(rate / dt)
        merged = None
        for route in DATA_PLANE:
            if route in after["requests"]:
                now, then = after["requests"][route]["buckets"]["counts"], before["requests"].get(route)
                diff = np.array(now) - (np.array(then["buckets"]["counts"]) if then else 0)
                merged = diff if merged is None else merged + diff
        bounds = [math.inf if b is None else b for b in after["requests"]["predict"]["buckets"]["le_ms"]]
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            expected = histogram_quantile(bounds, list(merged), q)
            assert traffic["total"][name] == pytest.approx(expected) and expected is not None
            assert browser.execute_script(
                "return window.veloxDashboard.histogramQuantile(arguments[0], arguments[1], arguments[2])",
                after["requests"]["predict"]["buckets"]["le_ms"],
                list(map(int, merged)),
                q,
            ) == pytest.approx(expected)
        _full_page_screenshot(browser, "dashboard-under-load.png")
        load.stop()
        assert load.answers > 10

    # Quiet now: two more polls, then the tiles must say what the JSON routes say.
    polls = _state(browser, "s.polls")
    assert eventually(lambda: _state(browser, "s.polls") >= polls + 2, within=30)
    tiles = dict(
        browser.execute_script(
            "return [...document.querySelectorAll('.tile')].map(t => [t.dataset.key, t.dataset.value])"
        )
    )
    model = _get(f"{url}/models/songs").json()
    metrics = _get(f"{url}/models/songs/metrics").json()
    prequential = metrics["prequential"]
    assert tiles["model.songs.active_version"] == model["active_version"] == "v2"
    assert int(tiles["model.songs.n_users"]) == model["n_users"]
    assert int(tiles["model.songs.n_items"]) == model["n_items"]
    assert int(tiles["model.songs.observations"]) == prequential["observations"] > 0
    assert float(tiles["model.songs.rmse_1000"]) == pytest.approx(prequential["windows"]["1000"]["rmse"])
    assert float(tiles["model.songs.rmse"]) == pytest.approx(prequential["rmse"])
    assert int(tiles["model.songs.shed"]) == sum(metrics["admission"]["shed"].values()) > 0
    stats = _get(f"{url}/stats").json()
    assert int(tiles["traffic.shed"]) == sum(f["shed"] for f in stats["requests"].values()) > 0
    assert stats["requests"]["predict"]["statuses"]["503"] == metrics["admission"]["shed"]["deadline"]
    assert int(tiles["model.songs.drift_alarms"]) == _get(f"{url}/stats").json()["models"][0]["drift_alarms"]
    containers = {c["model"]: c for c in _get(f"{url}/containers").json()["models"]}
    for name, deployment in containers.items():
        assert int(tiles[f"container.{name}.replicas"]) == len(deployment["replicas"])
        assert int(tiles[f"container.{name}.queries"]) == sum(r["queries"] for r in deployment["replicas"]) > 0
    (shop,) = _get(f"{url}/apps").json()["apps"]
    assert int(tiles["app.shop.answered"]) == shop["answered"] > 0
    assert int(tiles["app.shop.defaults"]) == shop["defaults"]
    assert int(tiles["app.shop.observed"]) == shop["observed"] > 0

    # versions with lineage and why each was trained; the promotion comparison in the table
    lineage = browser.execute_script(
        "return [...document.querySelectorAll('#model-songs .lineage .node')].map(n => [n.dataset.version, n.className])"
    )
    assert [v for v, _ in lineage] == [v["version"] for v in model["versions"]] == ["v1", "v2"]
    assert [v for v, cls in lineage if "active" in cls] == ["v2"]
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#model-songs [data-role=versions] tbody tr')]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    v2 = next(row for row in rows if row[0] == "v2")
    assert v2[2] == "v1" and v2[3] == "manual" and v2[9].startswith("promoted: held-out RMSE")

    # optional routes: shown when this server has them, a note (not an error) when it has not
    assert _state(browser, "s.optional.alerts") == ("present" if HAS_ALERTS else "absent")
    if not HAS_ALERTS:
        assert browser.find_elements("css selector", "#model-songs [data-role=alerts-absent]")
    assert _state(browser, "document.getElementById('pipelines').hidden") is (not HAS_PIPELINES)
    assert not _state(browser, "!document.getElementById('error').hidden")
    _same_origin_only(browser, url)
    _full_page_screenshot(browser, "dashboard.png")


def test_docs_renders_every_route_of_the_table(browser, live) -> None:
    browser.get(f"{live.url}/docs")
    expected = {(r.method, r.path) for r in ROUTES}
    listed = """return [...document.querySelectorAll('.opblock')].map(b => [
        b.querySelector('.opblock-summary-method').textContent,
        b.querySelector('.opblock-summary-path').getAttribute('data-path')])"""
    assert eventually(lambda: len(browser.execute_script(listed)) == len(expected), within=60)
    assert {tuple(op) for op in browser.execute_script(listed)} == expected
    _same_origin_only(browser, live.url)
    _full_page_screenshot(browser, "docs.png")


# The answers of routes other parts of the server add (monitoring's alerts, pipelines), as the page
# would get them: fetch is wrapped before the page's scripts run (a script the browser injects is
# not subject to the page's CSP), so the panels are tested whether or not this server has the routes.
_FAKE_ROUTES = """
window.__requests = [];
const realFetch = window.fetch.bind(window);
const answers = %s;
window.fetch = (url, init) => {
  window.__requests.push([String(url), (init && init.headers && init.headers.Authorization) || null]);
  const path = new URL(url, location.href).pathname;
  for (const [route, status, body] of answers)
    if (path === route)
      return Promise.resolve(new Response(JSON.stringify(body), {status, headers: {"content-type": "application/json"}}));
  return realFetch(url, init);
};
"""
ALERT = {
    "name": "unknown_items",
    "cause": "12% of requested items are not in the catalogue",
    "threshold": 0.05,
    "value": 0.12,
    "window": 1000,
}
PIPELINE = {"name": "recs", "defaults": 3, "requests": 40, "stages": [{"name": "rank", "batch_size": 8, "replicas": 2}]}


def _with_fake_routes(browser, answers: list) -> str:
    return browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": _FAKE_ROUTES % json.dumps(answers)}
    )["identifier"]


@pytest.mark.parametrize(
    "alerts, pipelines",
    [
        ({"model": "songs", "alerts": [ALERT]}, {"pipelines": [{"name": "recs"}]}),
        ([ALERT], {"pipelines": {"recs": {"stages": 1}}}),  # other shapes: a bare list, a mapping by name
    ],
)
def test_alerts_and_pipelines_are_shown_when_the_server_has_the_routes(browser, live, alerts, pipelines) -> None:
    answers = [
        ("/models/songs/alerts", 200, alerts),
        ("/pipelines", 200, pipelines),
        ("/pipelines/recs", 200, PIPELINE),
    ]
    script = _with_fake_routes(browser, answers)
    try:
        browser.get(f"{live.url}/dashboard?interval=300&token=secret-token")
        assert eventually(lambda: _state(browser, "s.polls >= 2"), within=60)
        alerts = browser.execute_script(
            "return [...document.querySelectorAll('#model-songs [data-role=alert]')].map(a => a.textContent)"
        )
        assert len(alerts) == 1 and ALERT["cause"] in alerts[0]
        assert "threshold 0.0500" in alerts[0] and "value 0.120" in alerts[0] and "window: 1,000" in alerts[0]
        assert not _state(browser, "document.getElementById('pipelines').hidden")
        tiles = dict(
            browser.execute_script(
                "return [...document.querySelectorAll('.tile')].map(t => [t.dataset.key, t.dataset.value])"
            )
        )
        assert tiles["pipeline.recs.defaults"] == "3" and tiles["pipeline.recs.requests"] == "40"
        cells = browser.execute_script(
            "return [...document.querySelectorAll('[data-pipeline=recs] td')].map(c => c.textContent)"
        )
        assert cells == ["rank", "8", "2"]
        requests = browser.execute_script("return window.__requests")
        assert requests and all(auth == "Bearer secret-token" for _, auth in requests)  # the token, to every route
        _full_page_screenshot(browser, "dashboard-alerts-and-pipelines.png")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script})


def test_a_route_that_needs_a_token_says_so_and_the_rest_still_renders(browser, live) -> None:
    denied = {"error": "Unauthorized", "message": "needs an API token"}
    script = _with_fake_routes(browser, [("/models/songs/alerts", 401, denied), ("/pipelines", 403, denied)])
    try:
        browser.get(f"{live.url}/dashboard?interval=300")
        assert eventually(lambda: _state(browser, "s.polls >= 2"), within=60)
        assert _state(browser, "s.optional.alerts") == "needs token"
        assert "need a token" in browser.find_element("css selector", "#model-songs [data-role=alerts]").text
        assert "need a token" in browser.find_element("css selector", "#pipelines").text
        assert _state(browser, "!!s.charts['model-songs-rmse'] && document.getElementById('error').hidden")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script})
