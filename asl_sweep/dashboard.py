"""`asl-sweep dashboard`: a local web app over the ledger that watches sweeps while their agents run.

Built on Starlette (routing, requests, responses) served by uvicorn: both widely used and maintained,
pure Python wheels, and sync endpoints run in a thread pool, so a slow ledger never blocks the server.
Pages are static HTML whose script polls a JSON endpoint every `POLL_S` seconds and redraws in place
with plotly.js, served from plotly's own package (no CDN: it works offline). The figures are the
report's (`figures.py`), drawn from the same data.

Reading is open to whoever reaches the port (127.0.0.1 by default); pausing, resuming, stopping or
canceling a sweep needs the token printed at start, as Jupyter does, sent in a header (a page from
another site cannot add it). A ledger that stops answering is said so on every page, with the last
data read kept on screen, and is asked again at the next poll: the dashboard never waits on it.
"""

from __future__ import annotations

import errno
import hashlib
import html
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from asl_sweep import storage
from asl_sweep.controller import shown_state
from asl_sweep.errors import UserError, one_line
from asl_sweep.ledger import CONTROL, Ledger, where
from asl_sweep.ranking import best_run, metric_value
from asl_sweep.records import Run, RunRecord
from asl_sweep.results import SweepData, swept_params
from asl_sweep.state import RunState
from asl_sweep.sweepfile import metric

POLL_S = 2.0  # how often a page asks for news; one ledger read serves every viewer within READ_REUSE_S
READ_REUSE_S = 1.0
REDRAW_S = 5.0  # figures are drawn again at most this often (headers and leaderboard follow every poll)
NICENESS = 10  # the dashboard's CPU priority below the agents' on a shared machine
TOKEN_HEADER = "X-Dashboard-Token"
log = logging.getLogger("asl_sweep")


class Lost(Exception):
    """The ledger did not answer (or its file is gone); the message is safe to show."""


class NotFound(Exception):
    """No such sweep or run in the ledger."""


class Refused(Exception):
    """A control action that does not apply to the sweep's state (resume a running sweep)."""


# ---------------------------------------------------------------- reading the ledger

def sweep_view(ledger: Ledger, sweep_id: str, only_run: str | None = None) -> SweepData | None:
    """The one place the dashboard turns ledger rows into what it shows: a sweep in the report's shape
    (`results.SweepData`), its state as every reader shows it; with `only_run`, that run alone."""
    sweep = ledger.find_sweep(sweep_id)
    if sweep is None:
        return None
    if only_run is None:
        runs = ledger.runs(sweep_id)
        state = shown_state(sweep, runs)
    else:
        runs, state = [r for r in [ledger.run(only_run)] if r is not None], sweep["state"]
    return SweepData(sweep_id, sweep["name"], state, sweep["config"], runs,
                     best_run(runs, *metric(sweep["config"])), ledger.display)


class Reader:
    """One connection to the ledger for the whole dashboard, used under a lock, dropped after any failure
    and opened again at the next read. Reads within READ_REUSE_S are shared between viewers."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.display = where(location)
        self.is_url = storage.is_url(location)
        self.ledger: Ledger | None = None
        self.lock = threading.Lock()
        self.recent: dict[tuple, tuple[float, Any]] = {}
        self.seen: dict[str, list[dict[str, Any]]] = {}  # run id -> states this dashboard saw it in, with when

    def _open(self) -> Ledger:
        ledger = Ledger(self.location, create=False)
        ledger.backend.can_reconnect = False  # a lost connection fails this read at once; the next one reconnects
        return ledger

    def read(self, key: tuple, work: Callable[[Ledger], Any]) -> Any:
        """`work(ledger)`'s value, or the one read less than READ_REUSE_S ago; Lost when the ledger fails."""
        with self.lock:
            hit = self.recent.get(key)
            if hit and time.monotonic() - hit[0] < READ_REUSE_S:
                return hit[1]
            value = self._use(work)
            self.recent[key] = (time.monotonic(), value)
            return value

    def write(self, work: Callable[[Ledger], Any]) -> Any:
        """`work(ledger)` now; what was read before it is read again."""
        with self.lock:
            self.recent.clear()
            return self._use(work)

    def _use(self, work: Callable[[Ledger], Any]) -> Any:
        if not self.is_url and not Path(self.location).is_file():  # an open file would still read, moved or not
            self.drop()
            raise Lost(f"no ledger at {self.display} (moved or deleted?)")
        try:
            self.ledger = self.ledger or self._open()
            return work(self.ledger)
        except (NotFound, Refused):
            raise
        except UserError as exc:
            self.drop()
            raise Lost(storage.scrub(one_line(exc, 300), self.location)) from None
        except Exception as exc:  # psycopg's and sqlite's errors: all mean "cannot read it now"
            self.drop()
            raise Lost(f"ledger {self.display}: {storage.scrub(one_line(exc, 300), self.location)}") from None

    def drop(self) -> None:
        if self.ledger is not None:
            try:
                self.ledger.close()
            except Exception:  # closing a connection that is already gone
                pass
        self.ledger = None
        self.recent.clear()

    def observe(self, runs: list[Run]) -> None:
        """Note each run's state and attempt when it differs from the last seen: the ledger keeps a run's
        counts of attempts and preemptions, not when each happened."""
        now = time.time()
        for r in runs:
            seen = self.seen.setdefault(r.id, [])
            if not seen or (seen[-1]["state"], seen[-1]["attempt"]) != (str(r.state), r.attempt):
                seen.append({"at": now, "state": str(r.state), "attempt": r.attempt})

    def sweep(self, sweep_id: str) -> SweepData:
        def work(ledger: Ledger) -> SweepData:
            data = sweep_view(ledger, sweep_id)
            if data is None:
                raise NotFound(f"unknown sweep id '{sweep_id}': not in {self.display}")
            return data

        data = self.read(("sweep", sweep_id), work)
        self.observe(data.runs)
        return data

    def sweeps(self) -> list[SweepData]:
        def work(ledger: Ledger) -> list[SweepData]:
            return [d for s in ledger.sweeps() if (d := sweep_view(ledger, s["id"])) is not None]

        return self.read(("sweeps",), work)

    def run(self, run_id: str) -> tuple[SweepData, Run, RunRecord | None]:
        """A run alone in its sweep's shape, and its record (None until it ends)."""
        def work(ledger: Ledger):
            row = ledger.run(run_id)
            if row is None:
                raise NotFound(f"unknown run id '{run_id}': not in {self.display}")
            return sweep_view(ledger, row.sweep_id, only_run=run_id), ledger.record(run_id)

        data, record = self.read(("run", run_id), work)
        self.observe(data.runs)
        return data, data.runs[0], record

    def control(self, sweep_id: str, action: str) -> str:
        """Pause, resume, stop or cancel (`Ledger.control`); NotFound for an unknown sweep."""
        def work(ledger: Ledger) -> str:
            if ledger.find_sweep(sweep_id) is None:
                raise NotFound(f"unknown sweep id '{sweep_id}': not in {self.display}")
            try:
                return ledger.control(sweep_id, action)
            except UserError as exc:
                if str(exc).startswith(f"cannot {action} sweep {sweep_id}:"):
                    raise Refused(str(exc)) from None
                raise

        return self.write(work)


# ---------------------------------------------------------------- what the pages show

def counts(data: SweepData) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in data.runs:
        out[str(r.state)] = out.get(str(r.state), 0) + 1
    return out


def summary(data: SweepData) -> dict[str, Any]:
    """A sweep's line on the home page and its sweep page's header."""
    best = data.best
    n = counts(data)
    return {"id": data.sweep_id, "name": data.name, "state": data.state, "method": data.config.get("method"),
            "metric": data.metric_name, "goal": data.goal, "counts": n, "runs": len(data.runs),
            "done": sum(v for k, v in n.items() if not RunState(k).is_active),
            "running": n.get("running", 0), "run_cap": data.config.get("run_cap"),
            "best": {"run": f"#{best.number} {best.id}", "run_id": best.id,
                     "value": metric_value(best, data.metric_name, data.goal)} if best else None,
            "swept": swept_params(data.config)}


def version(data: SweepData) -> str:
    """Changes whenever a figure would: a run's state, attempt or epochs."""
    key = json.dumps([data.state, [(r.id, str(r.state), r.attempt, len(r.history))
                                   for r in data.runs]])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def state_history(run: Run, seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the ledger says happened to a run, then what this dashboard saw change while it watched."""
    rows = [{"at": run.created_at, "what": f"created, attempt 1 claimed by {run.agent or 'an agent'}"
             if run.attempt == 1 else "created (attempt 1)"}]
    if run.preemptions:
        rows.append({"at": None, "what": f"preempted {run.preemptions}x (SIGTERM) and requeued: its epochs "
                                         "were dropped and the same configuration ran again as the same run"})
    if run.attempt > 1:
        rows.append({"at": None, "what": f"attempt {run.attempt} claimed by {run.agent or 'an agent'}"})
    if run.state == RunState.PENDING:
        rows.append({"at": None, "what": "waiting for the next free agent (requeued)"})
    elif run.state == RunState.RUNNING:
        rows.append({"at": run.heartbeat_at, "what": f"running on {run.agent or 'an agent'}: last heartbeat"})
    else:
        rows.append({"at": run.ended_at, "what": f"{run.state}" + (f": {run.error}" if run.error else "")})
    rows += [{"at": s["at"], "what": f"seen {s['state']} (attempt {s['attempt']}) by this dashboard"} for s in seen]
    return rows


def run_payload(data: SweepData, run: Run, record: RunRecord | None,
                seen: list[dict[str, Any]]) -> dict[str, Any]:
    from asl_sweep.robustness import SUITE

    robust = (record or {}).get("robustness") or {}
    s = run.summary
    return {"run": {"id": run.id, "number": run.number, "sweep_id": data.sweep_id, "sweep_name": data.name,
                    "state": str(run.state), "attempt": run.attempt, "preemptions": run.preemptions,
                    "agent": run.agent, "error": run.error, "epochs": len(run.history),
                    "metric": data.metric_name, "value": metric_value(run, data.metric_name, data.goal),
                    "wall_time": run.wall_time, "files": run.wandb_dir},
            "config": run.config,
            "robustness": [{"change": k, "what": SUITE[k][0] if k in SUITE else "", "accuracy": v}
                           for k, v in robust.items()],
            "robust_summary": {k: s[k] for k in ("val_robust_accuracy", "val_robust_worst", "val_robust_worst_change",
                                                 "val_background_accuracy", "val_background_worst") if k in s},
            "history": state_history(run, seen), "has_record": record is not None}


# ---------------------------------------------------------------- the web app

STYLE = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:auto;padding:1em;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}.note{color:#555}a{color:#1f5fa8}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:left}
th{background:#e8edf3}tr.best td{background:#d9f2d9}tr.broken td{background:#fadbd8}
#lost{background:#b71c1c;color:white;padding:.6em 1em;border-radius:4px;font-weight:600}
#notice{padding:.4em 1em;border-radius:4px}#notice.err{background:#fff3cd;color:#7a4b00}#notice.ok{background:#e3f4e3}
.controls button{margin-right:.5em;padding:.3em .9em}.mode{color:#555;font-size:90%}progress{width:320px}
"""

COMMON_JS = """
const POLL_MS = %(poll_ms)d;
const params = new URLSearchParams(location.search);
if (params.get('token')) { sessionStorage.setItem('asl-sweep-token', params.get('token'));
  params.delete('token'); history.replaceState(null, '', location.pathname + (params.toString() ? '?' + params : '')); }
const TOKEN = sessionStorage.getItem('asl-sweep-token');
let lostSince = null;
function esc(s) { return String(s ?? '').replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
function fmt(v) { if (v === null || v === undefined) return '–';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : (Math.abs(v) < 1e4 ? v.toPrecision(4) : v.toFixed(0));
  return String(v); }
function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ''; }
function lost(why) { lostSince = lostSince || new Date();
  const el = document.getElementById('lost'); el.hidden = false;
  el.textContent = `Ledger unreachable since ${lostSince.toLocaleTimeString()}: ${why}. Showing the last data read; trying again every ${POLL_MS / 1000} s.`; }
function found() { lostSince = null; document.getElementById('lost').hidden = true; }
async function poll(url, render) {
  try {
    const r = await fetch(url(), {cache: 'no-store'});
    const j = await r.json();
    if (r.status === 503) lost(j.error); else { found(); render(j); }
  } catch (e) { lost('the dashboard server does not answer'); }
  setTimeout(() => poll(url, render), POLL_MS);
}
function draw(id, fig) { Plotly.react(id, fig.data, fig.layout, {displaylogo: false, responsive: true}); }
"""


def page(title: str, body: str, script: str = "", plotly: bool = False) -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            + ("<script src='/static/plotly.min.js'></script>" if plotly else "")
            + f"</head><body><div id='lost' hidden></div>{body}"
            f"<script>{COMMON_JS % {'poll_ms': int(POLL_S * 1000)}}{script}</script></body></html>")


HOME_JS = """
poll(() => '/api/sweeps', j => {
  document.getElementById('ledger').textContent = j.ledger;
  const rows = j.sweeps.map(s => `<tr id="sweep-${esc(s.id)}"><td><a href="/sweep/${esc(s.id)}">${esc(s.id)}</a></td>
    <td>${esc(s.name)}</td><td>${esc(s.method)}</td><td>${esc(s.state)}</td><td>${s.done}</td><td>${s.running}</td>
    <td>${s.run_cap ?? '–'}</td><td>${esc(s.metric)} (${esc(s.goal)})</td>
    <td>${s.best ? fmt(s.best.value) + ' <a href="/run/' + esc(s.best.run_id) + '">' + esc(s.best.run) + '</a>' : '–'}</td></tr>`);
  document.getElementById('sweeps').innerHTML = rows.join('') ||
    '<tr><td colspan=9>no local sweep yet: asl-sweep sweep FILE --local creates one</td></tr>';
});
"""

SWEEP_JS = """
const SWEEP = %(sweep)s;
let version = '';
async function control(action) {
  const box = document.getElementById('notice');
  const r = await fetch(`/api/sweep/${SWEEP}/${action}`, {method: 'POST', headers: TOKEN ? {'X-Dashboard-Token': TOKEN} : {}});
  const j = await r.json();
  box.className = r.ok ? 'ok' : 'err'; box.hidden = false;
  box.textContent = r.ok ? `sweep ${SWEEP}: ${j.state}` : j.error;
}
function leaderboard(rows, best) {
  if (!rows.length) return '<p class="note">no runs yet</p>';
  const cols = Object.keys(rows[0]).filter(c => c !== 'run_id');
  const head = '<tr><th>rank</th>' + cols.map(c => `<th>${esc(c)}</th>`).join('') + '</tr>';
  const body = rows.map((row, i) => `<tr id="run-${esc(row.run_id)}" data-epochs="${row.epochs}"
      class="${row.run_id === best ? 'best' : (['failed', 'crashed'].includes(row.state) ? 'broken' : '')}"><td>${i + 1}</td>` +
    cols.map(c => c === 'run' ? `<td><a href="/run/${esc(row.run_id)}">${esc(row[c])}</a></td>`
                              : `<td class="col-${esc(c)}">${esc(fmt(row[c]))}</td>`).join('') + '</tr>');
  return `<table id="leaderboard-table">${head}${body.join('')}</table>`;
}
poll(() => `/api/sweep/${SWEEP}?since=${version}`, j => {
  const s = j.sweep;
  document.getElementById('state').textContent = s.state;
  const parts = Object.entries(s.counts).map(([k, n]) => `${n} ${k}`).join(', ') || 'no runs yet';
  document.getElementById('progress').innerHTML = `${s.done} done, ${s.running} running of ` +
    (s.run_cap ? `${s.run_cap} (run_cap) <progress value="${s.done}" max="${s.run_cap}"></progress>` : 'an open-ended sweep') +
    ` — ${esc(parts)}`;
  document.getElementById('best').innerHTML = s.best ?
    `best so far: <a href="/run/${esc(s.best.run_id)}">${esc(s.best.run)}</a> ${esc(s.metric)} = <b>${fmt(s.best.value)}</b>` : 'no best run yet';
  document.getElementById('leaderboard').innerHTML = leaderboard(j.leaderboard, s.best && s.best.run_id);
  document.getElementById('updated').textContent = new Date().toLocaleTimeString();
  if (j.figures) {
    for (const [id, fig] of Object.entries(j.figures)) draw(id, fig);
    document.getElementById('caveat').textContent = j.importance_caveat;
    version = j.version;
  }
});
document.getElementById('mode').textContent = TOKEN ? 'control enabled (token given)' :
  'read-only: open the URL with ?token= printed in the terminal to control the sweep';
"""

RUN_JS = """
const RUN = %(run)s;
let version = '';
function table(rows, cols) { return rows.length ? '<table>' + '<tr>' + cols.map(c => `<th>${esc(c)}</th>`).join('') + '</tr>' +
  rows.map(r => '<tr>' + cols.map(c => `<td>${esc(fmt(r[c]))}</td>`).join('') + '</tr>').join('') + '</table>'
  : '<p class="note">none yet (the run has not ended, or predates the robustness suite)</p>'; }
poll(() => `/api/run/${RUN}?since=${version}`, j => {
  const r = j.run;
  document.getElementById('title').innerHTML = `Run #${r.number} ${esc(r.id)} of sweep <a href="/sweep/${esc(r.sweep_id)}">${esc(r.sweep_name)} (${esc(r.sweep_id)})</a>`;
  document.getElementById('facts').textContent = `${r.state}${r.error ? ' (' + r.error + ')' : ''}; attempt ${r.attempt}, ` +
    `preempted ${r.preemptions}x; ${r.epochs} epochs; ${r.metric} ${fmt(r.value)}; wall time ${fmt(r.wall_time)} s; agent ${r.agent ?? '–'}; files ${r.files ?? '–'}`;
  document.getElementById('config').innerHTML = table(Object.entries(j.config).map(([k, v]) => ({key: k, value: v})), ['key', 'value']);
  document.getElementById('robustness').innerHTML = table(j.robustness, ['change', 'what', 'accuracy']) +
    (Object.keys(j.robust_summary).length ? '<p>' + Object.entries(j.robust_summary).map(([k, v]) => `${esc(k)} ${esc(fmt(v))}`).join(', ') + '</p>' : '');
  document.getElementById('history').innerHTML = table(j.history.map(h => ({when: when(h.at), what: h.what})), ['when', 'what']);
  if (j.figures) { for (const [id, fig] of Object.entries(j.figures)) draw(id, fig); version = j.version; }
});
"""


def home_page() -> str:
    body = ("<h1>asl-sweep dashboard</h1><p class='note'>Ledger <span id='ledger'></span>; updates every "
            f"{POLL_S:g} s.</p><table><tr><th>sweep</th><th>name</th><th>method</th><th>state</th><th>runs done</th>"
            "<th>running</th><th>run_cap</th><th>metric</th><th>best so far</th></tr><tbody id='sweeps'></tbody></table>")
    return page("asl-sweep dashboard", body, HOME_JS)


SWEEP_SECTIONS = (("best_so_far", "Best so far against time", "The best value of the metric any run had reached."),
                  ("parallel", "Parallel coordinates", "One line per run over every swept hyperparameter and the "
                   "robustness suite's numbers; the last axis is the metric. Drag on an axis to filter."),
                  ("importance", "Parameter importance", "Random forest and correlation, as in the report; refitted "
                   "when runs have ended, at most every 30 s."),
                  ("curves", "Training curves", "Every run's epochs; a running run's curve grows as it trains."))


def sweep_page(sweep_id: str) -> str:
    sid = html.escape(sweep_id)
    sections = "".join(f"<h2>{title}</h2><p class='note'>{note}"
                       + (" <span id='caveat' style='color:#b35900'></span>" if key == "importance" else "")
                       + f"</p><div id='{key}'></div>" for key, title, note in SWEEP_SECTIONS)
    body = (f"<p><a href='/'>all sweeps</a></p><h1>Sweep {sid}: <span id='state'></span></h1>"
            "<p id='progress'></p><p id='best'></p>"
            "<p class='controls'>" + "".join(f"<button id='{a}' onclick=\"control('{a}')\">{a}</button>" for a in CONTROL)
            + "<span id='mode' class='mode'></span></p><p id='notice' hidden></p>"
            "<h2>Leaderboard</h2><p class='note'>Every run, best first, with the robustness suite's columns; "
            "updated <span id='updated'></span>.</p><div id='leaderboard'></div>" + sections)
    return page(f"asl-sweep: sweep {sweep_id}", body, SWEEP_JS % {"sweep": json.dumps(sweep_id)}, plotly=True)


def run_page(run_id: str) -> str:
    body = ("<p><a href='/'>all sweeps</a></p><h1 id='title'></h1><p id='facts'></p>"
            "<h2>State history</h2><div id='history'></div><h2>Config</h2><div id='config'></div>"
            "<h2>Training curves</h2><div id='curves'></div><h2>Robustness</h2><div id='robustness'></div>"
            "<h2>Example predictions</h2><div id='images'></div><h2>Confusion matrix</h2><div id='confusion'></div>")
    return page(f"asl-sweep: run {run_id}", body, RUN_JS % {"run": json.dumps(run_id)}, plotly=True)


def error_page(title: str, why: str, status: int):
    from starlette.responses import HTMLResponse

    return HTMLResponse(page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(why)}</p>"
                                    "<p><a href='/'>all sweeps</a></p>"), status_code=status)


class Drawings:
    """Figures drawn for every viewer in a thread of their own, so that a page's header and leaderboard
    never wait for them: drawn again when the data changed, at most every REDRAW_S seconds, one drawing
    per page at a time; until then viewers get the last ones drawn."""

    def __init__(self) -> None:
        self.done: dict[tuple, tuple[str, float, dict[str, Any]]] = {}  # key -> (data version, when, figures)
        self.busy: set[tuple] = set()
        self.lock = threading.Lock()

    def get(self, key: tuple, ver: str, draw: Callable[[], dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
        """(the version the figures show, the figures); ('', None) before the first are drawn."""
        with self.lock:
            known = self.done.get(key)
            if (known is None or (known[0] != ver and time.monotonic() - known[1] >= REDRAW_S)) \
                    and key not in self.busy:
                self.busy.add(key)
                threading.Thread(target=self._draw, args=(key, ver, draw), daemon=True).start()
        return (known[0], known[2]) if known else ("", None)

    def _draw(self, key: tuple, ver: str, draw: Callable[[], dict[str, Any]]) -> None:
        try:
            figs = draw()
            with self.lock:
                self.done[key] = (ver, time.monotonic(), figs)
        except Exception:  # a figure that cannot be drawn must not stop the page: the next change tries again
            log.exception("dashboard: drawing %s failed", key)
        finally:
            with self.lock:
                self.busy.discard(key)


LOOPBACK = ("127.0.0.1", "localhost")  # Starlette's host check cannot parse an IPv6 Host header: ::1 goes unchecked


def make_app(reader: Reader, token: str, host: str = "127.0.0.1"):
    """The Starlette app: three pages, their JSON, plotly.js, and the control endpoint. Bound to loopback,
    it answers only requests that name a loopback host, so a web page whose name was pointed at 127.0.0.1
    (DNS rebinding) cannot read it."""
    from plotly.io.json import to_json_plotly
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    from asl_sweep import figures

    drawings = Drawings()

    def as_json(obj: Any, status: int = 200) -> Response:
        return Response(to_json_plotly(obj), status_code=status, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    def answer(request: Request, work: Callable[[], Any]) -> Response:
        try:
            return as_json(work())
        except NotFound as exc:
            return as_json({"error": str(exc)}, 404)
        except Lost as exc:
            return as_json({"error": str(exc), "ledger": reader.display}, 503)

    def api_sweeps(request: Request) -> Response:
        return answer(request, lambda: {"ledger": reader.display, "sweeps": [summary(d) for d in reader.sweeps()]})

    def api_sweep(request: Request) -> Response:
        def work() -> dict[str, Any]:
            data = reader.sweep(request.path_params["sweep_id"])
            ver, drawn = drawings.get(("sweep", data.sweep_id), version(data), lambda: figures.sweep_payload(data))
            out = {"sweep": summary(data), "version": ver, "leaderboard": figures.leaderboard_rows(data)}
            if drawn and request.query_params.get("since") != ver:
                out.update(figures=drawn["figures"], importance_caveat=drawn["importance_caveat"])
            return out

        return answer(request, work)

    def api_run(request: Request) -> Response:
        def work() -> dict[str, Any]:
            data, run, record = reader.run(request.path_params["run_id"])
            ver, drawn = drawings.get(("run", run.id), version(data) + str(record is not None),
                                      lambda: figures.run_figures(data, run, record))
            out = {**run_payload(data, run, record, reader.seen.get(run.id, [])), "version": ver}
            if drawn and request.query_params.get("since") != ver:
                out["figures"] = drawn
            return out

        return answer(request, work)

    def api_control(request: Request) -> Response:
        sweep_id, action = request.path_params["sweep_id"], request.path_params["action"]
        if action not in CONTROL:
            return as_json({"error": f"unknown action '{action}': one of {', '.join(CONTROL)}"}, 404)
        given = request.headers.get(TOKEN_HEADER, "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            return as_json({"error": "read-only: controlling a sweep needs the token printed in the terminal where "
                                     "`asl-sweep dashboard` started (open its URL with ?token=...)"}, 403)
        try:
            state = reader.control(sweep_id, action)
        except NotFound as exc:
            return as_json({"error": str(exc)}, 404)
        except Lost as exc:
            return as_json({"error": str(exc)}, 503)
        except Refused as exc:
            return as_json({"error": str(exc)}, 409)
        log.info("dashboard: sweep %s %s -> %s", sweep_id, action, state)
        return as_json({"state": state})

    def home(request: Request) -> Response:
        return HTMLResponse(home_page())

    def viewer(kind: str, look: Callable[[str], Any], draw: Callable[[str], str]):
        """A page of one sweep or run: a clear 404 for an id the ledger does not have; on a lost ledger the
        page itself says so, and shows the sweep once the ledger answers."""
        def endpoint(request: Request) -> Response:
            key = request.path_params["key"]
            try:
                look(key)
            except NotFound as exc:
                return error_page(f"Unknown {kind}", f"{exc}. The home page lists this ledger's sweeps.", 404)
            except Lost:
                pass
            return HTMLResponse(draw(key))

        return endpoint

    plotly_js: list[bytes] = []

    def static_plotly(request: Request) -> Response:
        if not plotly_js:
            from plotly.offline import get_plotlyjs

            plotly_js.append(get_plotlyjs().encode())
        return Response(plotly_js[0], media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    return Starlette(routes=[
        Route("/", home), Route("/sweep/{key}", viewer("sweep", reader.sweep, sweep_page)),
        Route("/run/{key}", viewer("run", reader.run, run_page)),
        Route("/api/sweeps", api_sweeps), Route("/api/sweep/{sweep_id}", api_sweep), Route("/api/run/{run_id}", api_run),
        Route("/api/sweep/{sweep_id}/{action}", api_control, methods=["POST"]),
        Route("/static/plotly.min.js", static_plotly),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK) if host in LOOPBACK else ["*"])])


# ---------------------------------------------------------------- starting it

def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is served: a port in use is one line, not a traceback
    from inside the server. Port 0 takes a free one."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UserError(f"dashboard: cannot listen on {host}: {exc.strerror} (--host takes a name or an IP address "
                        "of this machine)") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"dashboard: port {port} on {host} is in use (another dashboard?); choose another with "
                            "--port, or --port 0 for any free one") from None
        raise UserError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


@dataclass
class Dashboard:
    """A dashboard ready to serve: its socket is bound and the ledger answered."""

    app: Any
    sock: socket.socket
    token: str
    ledger: str  # the ledger's display form
    url: str  # the page to open (home, or the sweep asked for), without the token

    def serve(self) -> None:
        """Serve until Ctrl-C (uvicorn's own signal handling ends it cleanly), at a lower CPU priority than
        agents on this machine: drawing figures then waits for the cycles training leaves."""
        import os

        import uvicorn

        os.nice(NICENESS)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run(sockets=[self.sock])


def prepare(location: str, host: str = "127.0.0.1", port: int = 8765, sweep_id: str | None = None) -> Dashboard:
    """Check the ledger answers (and knows `sweep_id`), bind the port, make the token: every mistake is one
    line here, before the server starts."""
    reader = Reader(location)
    with Ledger(location, create=False) as ledger:
        if sweep_id is not None and ledger.find_sweep(sweep_id) is None:
            raise ledger.unknown(sweep_id)
    sock = listen(host, port)
    token = secrets.token_urlsafe(24)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/" + (f"sweep/{sweep_id}" if sweep_id else "")
    return Dashboard(make_app(reader, token, host), sock, token, reader.display, url)
