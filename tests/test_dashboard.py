"""`asl-sweep dashboard` (issue 25): the real command in its own process, read over HTTP, and its pages in
headless Chromium driven by Selenium (Debian's chromium and chromium-driver; nothing is downloaded).
Without the browser these tests skip here and fail in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from asl_sweep import dashboard, figures, report
from asl_sweep.ledger import Ledger
from tests.conftest import PASSWORD, database_name, skip_unless_ci, start_postgres
from tests.helpers_report import synthetic_sweep
from tests.test_multi_machine import wait_until
from tests.test_secrets import leaks, url_with_password

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CHROMEDRIVER = "/usr/bin/chromedriver"


class Server:
    """`python -m asl_sweep dashboard --port 0` for a ledger: its URL and token from what it prints."""

    def __init__(self, location: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "asl_sweep", "dashboard", *args, "--port", "0",
                                      "--ledger", location], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.printed = [self.proc.stdout.readline() for _ in range(3)]
        assert "with control:" in self.printed[2], self.printed + [self.proc.stderr.read()]
        self.url, self.token = self.printed[2].split()[-1].split("?token=")
        self.base = self.url.split("/sweep/")[0].rstrip("/")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=120) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, token: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.base + path, method="POST",
                                         headers={dashboard.TOKEN_HEADER: token} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture
def serve():
    started: list[Server] = []

    def start(location: str, *args: str) -> Server:
        started.append(Server(location, *args))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest.fixture
def browser(monkeypatch):
    """Headless Chromium through Debian's chromedriver; Selenium Manager is never asked for anything."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not Path(CHROMEDRIVER).is_file():
        skip_unless_ci("no chromium and chromium-driver (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_unless_ci("selenium is not installed (pip install -e '.[dev]')")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--window-size=1300,2000", "--proxy-server=http://127.0.0.1:9"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def fake_sweep(location: str, seeds: int = 3, epochs: int = 4) -> str:
    config = {"method": "grid", "metric": {"name": "val_accuracy", "goal": "maximize"},
              "parameters": {"seed": {"values": list(range(1, seeds + 1))}, "epochs": {"value": epochs}},
              "command": ["${interpreter}", str(HERE / "fake_train.py"), "${args}"]}
    with Ledger(location) as ledger:
        return ledger.create_sweep(config, "fake")


def start_agent(location: str, sweep_id: str, data_dir: Path, work: Path, epoch_s: float) -> subprocess.Popen:
    env = {**os.environ, "ASL_SWEEP_LEDGER": location, "FAKE_EPOCH_S": str(epoch_s), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "asl_sweep", "agent", sweep_id, "--quiet", "--subprocess",
                             "--data-dir", str(data_dir)], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def rows(driver) -> dict[str, int]:
    """The leaderboard as drawn: run id -> epochs."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#leaderboard-table tr[id]')]"
        ".map(tr => [tr.id.slice(4), Number(tr.dataset.epochs)]))")


@pytest.mark.slow
def test_the_sweep_page_shows_a_new_run_and_a_new_epoch_without_a_reload(browser, serve, isolated, dataset_dir,
                                                                        tmp_path):
    location = str(isolated / "asl-sweep.db")
    sweep_id = fake_sweep(location)
    agent = start_agent(location, sweep_id, dataset_dir, isolated, epoch_s=1.5)
    try:
        server = serve(location, sweep_id)
        with Ledger(location) as ledger:
            wait_until(lambda: ledger.runs(sweep_id), 90, "the agent's first run")
        browser.get(server.url)
        browser.execute_script("window.notReloaded = true")
        first = wait_until(lambda: rows(browser), 30, "the first run on the page")
        wait_until(lambda: any(rows(browser).get(r, 0) > n for r, n in first.items()), 30, "a new epoch on the page")
        wait_until(lambda: len(rows(browser)) > len(first), 60, "a new run on the page")
        assert browser.execute_script("return window.notReloaded") is True
        wait_until(lambda: browser.execute_script("return document.querySelectorAll('#curves .trace').length"),
                   30, "the curves")
        assert browser.find_element("id", "lost").is_displayed() is False
        agent.wait(timeout=120)
        wait_until(lambda: browser.find_element("id", "state").text == "finished", 30, "the finished sweep")
        browser.save_screenshot(str(tmp_path / "sweep.png"))
    finally:
        agent.kill()
        agent.wait()


@pytest.mark.slow
def test_a_control_button_without_the_token_changes_nothing(browser, serve, isolated):
    location = str(isolated / "asl-sweep.db")
    sweep_id = synthetic_sweep(Path(location), runs=3)
    server = serve(location)
    browser.get(f"{server.base}/sweep/{sweep_id}")
    wait_until(lambda: browser.find_element("id", "state").text, 30, "the sweep's state")
    assert "read-only" in browser.find_element("id", "mode").text
    browser.find_element("id", "pause").click()
    notice = wait_until(lambda: browser.find_element("id", "notice").text, 30, "the answer")
    assert "read-only" in notice and "token" in notice
    with Ledger(location) as ledger:
        assert ledger.sweep(sweep_id)["state"] == "running"
    browser.get(f"{server.base}/sweep/{sweep_id}?token={server.token}")  # the URL the terminal printed
    wait_until(lambda: "control enabled" in browser.find_element("id", "mode").text, 30, "control mode")
    assert "token" not in browser.current_url  # taken off the address bar, kept for this tab
    browser.find_element("id", "pause").click()
    wait_until(lambda: "paused" in browser.find_element("id", "notice").text, 30, "paused")
    with Ledger(location) as ledger:
        assert ledger.sweep(sweep_id)["state"] == "paused"
    wait_until(lambda: browser.find_element("id", "state").text == "paused", 30, "the page's state")


@pytest.mark.slow
def test_a_lost_database_is_said_on_the_page_and_the_page_recovers(browser, serve):
    pg = start_postgres()
    try:
        url = pg.create_database("lost")
        sweep_id = synthetic_sweep(url, runs=3)
        server = serve(url, sweep_id)
        browser.get(server.url)
        wait_until(lambda: rows(browser), 30, "the leaderboard")
        pg.stop("immediate")
        banner = wait_until(lambda: browser.find_element("id", "lost").text, 30, "the lost-ledger banner")
        assert "Ledger unreachable" in banner and "127.0.0.1" in banner
        assert len(rows(browser)) == 3  # the last data read stays on screen
        pg.start()
        wait_until(lambda: not browser.find_element("id", "lost").is_displayed(), 60, "the banner to go")
        with Ledger(url) as ledger:
            ledger.control(sweep_id, "pause")
        wait_until(lambda: browser.find_element("id", "state").text == "paused", 30, "news after the recovery")
    finally:
        pg.close()


def test_control_needs_the_token_and_says_what_does_not_apply(serve, isolated):
    location = str(isolated / "asl-sweep.db")
    sweep_id = synthetic_sweep(Path(location), runs=2)
    server = serve(location)
    code, body = server.post(f"/api/sweep/{sweep_id}/cancel")
    assert code == 403 and "token" in body["error"]
    code, body = server.post(f"/api/sweep/{sweep_id}/cancel", token="wrong")
    assert code == 403
    code, body = server.post(f"/api/sweep/{sweep_id}/resume", token=server.token)
    assert code == 409 and "cannot resume" in body["error"]
    code, body = server.post("/api/sweep/zzzz9999/pause", token=server.token)
    assert code == 404 and "unknown sweep id 'zzzz9999'" in body["error"]
    with Ledger(location) as ledger:
        assert ledger.sweep(sweep_id)["state"] == "running"
    assert server.post(f"/api/sweep/{sweep_id}/pause", token=server.token) == (200, {"state": "paused"})
    assert server.post(f"/api/sweep/{sweep_id}/resume", token=server.token) == (200, {"state": "running"})


def test_unknown_ids_get_a_clear_page_and_the_api_sends_figures_only_when_they_change(serve, isolated):
    location = str(isolated / "asl-sweep.db")
    sweep_id = synthetic_sweep(Path(location), runs=4, extra_running=True)
    server = serve(location)
    code, text = server.get("/sweep/zzzz9999")
    assert code == 404 and "unknown sweep id &#x27;zzzz9999&#x27;" in text
    code, text = server.get("/run/nope")
    assert code == 404 and "unknown run id" in text
    code, text = server.get("/")
    assert code == 200 and "asl-sweep dashboard" in text
    rebound = urllib.request.Request(server.base + "/api/sweeps", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError, match="400"):  # a page whose name points here reads nothing
        urllib.request.urlopen(rebound, timeout=30)
    code, text = server.get("/api/sweeps")
    assert json.loads(text)["sweeps"][0]["runs"] == 6
    first = wait_until(lambda: (j := json.loads(server.get(f"/api/sweep/{sweep_id}")[1])).get("figures") and j,
                       60, "the figures")
    assert set(first["figures"]) == {"best_so_far", "parallel", "importance", "curves"}
    assert first["sweep"]["running"] == 2 and first["sweep"]["done"] == 4 and len(first["leaderboard"]) == 6
    again = json.loads(server.get(f"/api/sweep/{sweep_id}?since={first['version']}")[1])
    assert "figures" not in again and again["version"] == first["version"]
    with Ledger(location) as ledger:
        running = next(r for r in ledger.runs(sweep_id) if r.state == "running" and r.history)
        ledger.append_epoch(running.id, {"epoch": 2, "val_accuracy": 0.3})
    news = wait_until(lambda: (j := json.loads(server.get(f"/api/sweep/{sweep_id}?since={first['version']}")[1]))
                      ["version"] != first["version"] and j, dashboard.REDRAW_S + 10, "figures drawn again")
    assert "figures" in news and news["leaderboard"] != first["leaderboard"]
    code, text = server.get(f"/run/{running.id}")
    assert code == 200
    run = wait_until(lambda: (j := json.loads(server.get(f"/api/run/{running.id}")[1])).get("figures") and j,
                     60, "the run's figures")
    assert run["run"]["epochs"] == 2 and set(run["figures"]) == {"curves", "images", "confusion"}
    assert any("running on" in h["what"] for h in run["history"])


def test_a_moved_sqlite_ledger_is_lost_until_it_is_back(serve, isolated):
    location = isolated / "asl-sweep.db"
    sweep_id = synthetic_sweep(location, runs=2)
    server = serve(str(location), sweep_id)
    assert server.get(f"/api/sweep/{sweep_id}")[0] == 200
    location.rename(isolated / "elsewhere.db")
    code, text = wait_until(lambda: (got := server.get(f"/api/sweep/{sweep_id}"))[0] == 503 and got, 30, "lost")
    assert "no ledger at" in json.loads(text)["error"]
    (isolated / "elsewhere.db").rename(location)
    assert server.get(f"/api/sweep/{sweep_id}")[0] == 200


def test_the_page_draws_the_reports_figure_data(isolated):
    """The same figures as the report: built by the report's own functions from the same data."""
    from asl_sweep.results import load_sweep

    sweep_id = synthetic_sweep(isolated / "asl-sweep.db", runs=5)
    data = load_sweep(sweep_id)
    payload = figures.sweep_payload(data)
    f = report.figure_data(data)
    assert payload["figures"]["parallel"] == figures.plotly_json(report.fig_parallel(f))
    assert payload["figures"]["curves"] == figures.plotly_json(report.fig_curves(f))
    assert [r["run"] for r in figures.leaderboard_rows(data)] == [r["run"] for r in f.leaderboard]
    steps = figures.best_so_far(data)
    assert [s["value"] for s in steps] == sorted(s["value"] for s in steps)


def test_importance_is_refitted_when_a_run_ends_not_on_every_epoch(isolated, monkeypatch):
    from asl_sweep.results import load_sweep

    sweep_id = synthetic_sweep(isolated / "asl-sweep.db", runs=4, extra_running=True)
    fits = []
    monkeypatch.setattr(report, "importance", lambda data: fits.append(1) or [])
    monkeypatch.setattr(figures, "IMPORTANCE_S", 0.0)
    figures.importance(load_sweep(sweep_id))
    with Ledger(isolated / "asl-sweep.db") as ledger:
        first, second = [r for r in ledger.runs(sweep_id) if r.state == "running"]
        ledger.append_epoch(first.id, {"epoch": 5, "val_accuracy": 0.9})
        figures.importance(load_sweep(sweep_id))
        assert len(fits) == 1
        ledger.finish_run(first.id, "finished")
        figures.importance(load_sweep(sweep_id))
        assert len(fits) == 2
        monkeypatch.setattr(figures, "IMPORTANCE_S", 3600.0)  # a run ended, but the last fit is recent
        ledger.finish_run(second.id, "finished")
        figures.importance(load_sweep(sweep_id))
        assert len(fits) == 2


def test_no_page_or_answer_shows_the_password(serve, password_server, request):
    name = database_name(request)
    password_server.create_database(name)
    url = url_with_password(password_server, name)
    sweep_id = synthetic_sweep(url, runs=2)
    server = serve(url, sweep_id)
    said = "".join(server.printed)
    assert "postgres:***@127.0.0.1" in said
    for path in ("/", f"/sweep/{sweep_id}", "/api/sweeps", f"/api/sweep/{sweep_id}", "/sweep/zzzz9999"):
        said += server.get(path)[1]
    password_server.stop("immediate")
    try:
        code, text = wait_until(lambda: (got := server.get(f"/api/sweep/{sweep_id}"))[0] == 503 and got, 30,
                                "the lost ledger")  # past the last read, shared for READ_REUSE_S
        assert "postgres:***@127.0.0.1" in text
        said += text + server.get("/api/sweeps")[1]
    finally:
        password_server.start()
    said += server.close()
    assert PASSWORD not in said and not leaks(said), said


@pytest.mark.slow
def test_the_sweep_page_draws_every_figure(browser, serve, isolated, tmp_path):
    """Also how docs/dashboard.png is made: DASHBOARD_SCREENSHOT=docs/dashboard.png pytest -k every_figure"""
    from PIL import Image

    location = isolated / "asl-sweep.db"
    sweep_id = synthetic_sweep(location, runs=12, extra_running=True)
    with Ledger(location) as ledger:  # the robustness suite's columns, as trained runs have them
        for r in ledger.runs(sweep_id)[:12]:
            robust = {"val_robust_accuracy": 0.4 + r.config["dropout"], "val_robust_worst": 0.2 + r.config["dropout"]}
            ledger.execute("UPDATE runs SET summary = ? WHERE id = ?", (json.dumps({**r.summary, **robust}), r.id))
    server = serve(str(location), sweep_id)
    browser.get(server.url)
    plots = "return document.querySelectorAll('.js-plotly-plot').length"
    wait_until(lambda: browser.execute_script(plots) == 4 and len(rows(browser)) == 14, 60, "every figure")
    assert "val_robust_worst" in browser.find_element("id", "leaderboard").text
    browser.set_window_size(1300, browser.execute_script("return document.body.scrollHeight") + 40)
    wait_until(lambda: browser.execute_script("return document.readyState") == "complete", 10, "the relayout")
    shot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "sweep.png")
    browser.save_screenshot(str(shot))
    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((130, 240)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # drawn charts, not a blank page
