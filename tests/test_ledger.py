"""The ledger's contract, on SQLite and on PostgreSQL: fencing, requeue, the database's clock, idempotent
writes, records and models kept in the ledger, copying sweeps between backends, older files upgraded, and
a silent run shown crashed by every reader."""

from __future__ import annotations

import time

import pytest

from asl_sweep import controller
from asl_sweep.agent import progress_line
from asl_sweep.errors import UserError
from asl_sweep.ledger import Ledger, copy_sweep
from asl_sweep.results import load_sweep
from asl_sweep.state import RunState, SweepState
from asl_sweep.status import status_table, sweeps_table
from asl_sweep.sync import sync_sweep

RANDOM = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"}, "run_cap": 4,
          "parameters": {"dropout": {"min": 0.0, "max": 0.8}}}


@pytest.fixture(autouse=True)
def backend(ledger_location: str) -> str:
    return ledger_location


def test_a_reaped_attempt_is_fenced_and_cannot_come_back(monkeypatch):
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "f")
    run = controller.claim_next(ledger, sid, "a")
    assert ledger.append_epoch(run.id, {"val_accuracy": 0.5}, attempt=run.attempt, step=1)
    ledger.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 1000 WHERE id = ?", (run.id,))
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", "0.5")
    time.sleep(0.5)  # a PostgreSQL server younger than the timeout grants every run that long (see below)
    controller.claim_next(ledger, sid, "b")  # reaps the silent run
    assert ledger.run(run.id).state == RunState.CRASHED
    assert not ledger.append_epoch(run.id, {"val_accuracy": 0.9}, attempt=run.attempt, step=2)
    assert not ledger.heartbeat(run.id, run.attempt)
    assert not ledger.finish_run(run.id, RunState.FINISHED, attempt=run.attempt, summary={"val_accuracy": 0.9})
    after = ledger.run(run.id)
    assert after.state == RunState.CRASHED and after.history == [{"val_accuracy": 0.5}] and after.summary == {}


def test_reaping_uses_the_database_clock_not_the_agents(monkeypatch):
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "c")
    run = controller.claim_next(ledger, sid, "a")
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", "60")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this agent's clock is an hour fast
    assert ledger.heartbeat(run.id, run.attempt)
    controller.claim_next(ledger, sid, "b")
    assert ledger.run(run.id).state == RunState.RUNNING
    assert abs(ledger.run(run.id).heartbeat_at - real()) < 30


def test_a_preempted_run_is_requeued_once_and_rerun_as_the_same_run():
    ledger = Ledger()
    sid = ledger.create_sweep({**RANDOM, "run_cap": 2}, "p")
    first = controller.claim_next(ledger, sid, "a")
    ledger.append_epoch(first.id, {"val_accuracy": 0.4}, attempt=1, step=1)
    assert ledger.requeue(first.id, 1, "preempted (SIGTERM); requeued")
    queued = ledger.run(first.id)
    assert queued.state == RunState.PENDING and queued.history == [] and queued.preemptions == 1
    assert not ledger.append_epoch(first.id, {"val_accuracy": 0.9}, attempt=1, step=2)  # the old attempt is fenced
    again = controller.claim_next(ledger, sid, "b")
    assert (again.id, again.number, again.attempt, again.config) == (first.id, 1, 2, first.config)
    second = controller.claim_next(ledger, sid, "c")
    assert second.number == 2 and controller.claim_next(ledger, sid, "d") is None  # run_cap counts it once
    for r in (again, second):
        assert ledger.finish_run(r.id, RunState.FINISHED, attempt=r.attempt)
    assert controller.claim_next(ledger, sid, "a") is None and ledger.sweep(sid)["state"] == "finished"
    assert [r.number for r in ledger.runs(sid)] == [1, 2]


def test_a_repeated_epoch_write_is_stored_once():
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "e")
    run = controller.claim_next(ledger, sid, "a")
    for _ in range(2):
        assert ledger.append_epoch(run.id, {"epoch": 1, "val_accuracy": 0.5}, attempt=1, step=1)
    assert ledger.run(run.id).history == [{"epoch": 1, "val_accuracy": 0.5}]


def test_record_and_model_live_in_the_ledger():
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "m")
    run = controller.claim_next(ledger, sid, "a")
    record = {"run_id": run.id, "state": "finished", "confusion_matrix": [[1]], "paths": {"model": None}}
    assert ledger.finish_run(run.id, RunState.FINISHED, attempt=1, record=record, model=b"\x00keras\xff")
    assert ledger.record(run.id) == record and ledger.model(run.id) == b"\x00keras\xff"


def test_a_restarted_database_gives_running_runs_time_to_reconnect(monkeypatch, ledger_location):
    """Heartbeats count from the server's start at the latest: after a database restart no run is reaped
    before its agent had `timeout` seconds to come back (SQLite has no server to restart)."""
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "r")
    run = controller.claim_next(ledger, sid, "a")
    ledger.execute("UPDATE runs SET heartbeat_at = 0 WHERE id = ?", (run.id,))  # silent since 1970
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", "3600")  # longer than this test server has been up
    controller.claim_next(ledger, sid, "b")
    expected = RunState.RUNNING if ledger_location.startswith("postgresql") else RunState.CRASHED
    assert ledger.run(run.id).state == expected


def test_copy_moves_a_sweep_between_backends_and_back(tmp_path, postgres_url, ledger_location):
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "copy")
    done = controller.claim_next(ledger, sid, "a")
    ledger.append_epoch(done.id, {"epoch": 1, "val_accuracy": 0.7}, attempt=1, step=1)
    ledger.finish_run(done.id, RunState.FINISHED, attempt=1, summary={"val_accuracy": 0.7},
                      record={"run_id": done.id}, model=b"weights")
    running = controller.claim_next(ledger, sid, "a")
    with pytest.raises(UserError, match="1 running run"):
        copy_sweep(sid, ledger_location, str(tmp_path / "other.db"))
    ledger.requeue(running.id, 1, "preempted")
    other = str(tmp_path / "other.db") if ledger_location.startswith("postgresql") else postgres_url
    assert copy_sweep(sid, ledger_location, other) == 2
    with pytest.raises(UserError, match=f"already has sweep {sid}"):
        copy_sweep(sid, ledger_location, other)
    back = str(tmp_path / "back.db")
    copy_sweep(sid, other, back)
    with Ledger(back) as copied:
        assert copied.runs(sid) == ledger.runs(sid)
        assert copied.model(done.id) == b"weights" and copied.record(done.id) == {"run_id": done.id}
        again = controller.claim_next(copied, sid, "cluster")  # the requeued run goes on where it was copied to
        assert again.id == running.id and again.attempt == 2


def test_a_requeued_run_cannot_be_ended_by_its_old_attempt_and_stop_ends_it():
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "s")
    run = controller.claim_next(ledger, sid, "a")
    ledger.requeue(run.id, 1, "preempted")
    assert not ledger.finish_run(run.id, RunState.FAILED, attempt=1, error="wandb.finish raised")
    assert ledger.run(run.id).state == RunState.PENDING  # still waiting for its rerun
    ledger.control(sid, "stop")  # no claim will come: it must not wait forever
    assert ledger.run(run.id).state == RunState.STOPPED


def test_the_heartbeat_survives_any_error_from_the_ledger(monkeypatch):
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_S", "0.05")
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "h")
    run = controller.claim_next(ledger, sid, "a")
    real, failures = Ledger.heartbeat, []

    def flaky(self, run_id, attempt=None):
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("read-only transaction after a failover")
        return real(self, run_id, attempt)

    monkeypatch.setattr(Ledger, "heartbeat", flaky)
    first = ledger.run(run.id).heartbeat_at
    with controller.LedgerReporter(ledger, sid, run) as reporter:
        deadline = time.time() + 10
        while ledger.run(run.id).heartbeat_at == first and time.time() < deadline:
            time.sleep(0.05)
        assert len(failures) == 2 and ledger.run(run.id).heartbeat_at > first and not reporter.fenced


def silent_timeout(ledger: Ledger) -> float:
    """A heartbeat timeout that a run silent for 1000 s has passed and a run that beat just now has not:
    under the server's age on PostgreSQL (a heartbeat counts from the server's start), 60 s on SQLite."""
    if not ledger.location.startswith("postgresql"):
        return 60.0
    age = ledger.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp() - pg_postmaster_start_time())::float8 AS s")
    return min(60.0, age.fetchone()["s"] / 2)


def dead_run_sweep(ledger: Ledger, monkeypatch, *, live_run: bool) -> tuple[str, dict[str, str]]:
    """run_cap runs: #1 finished (0.6), #2 silent for 1000 s with a better epoch (0.9), and with `live_run`
    #3 running and beating. Returns the sweep id and the run ids by role."""
    sid = ledger.create_sweep({**RANDOM, "run_cap": 3 if live_run else 2}, "dead")
    done, dead = controller.claim_next(ledger, sid, "a"), controller.claim_next(ledger, sid, "b")
    ledger.append_epoch(done.id, {"epoch": 1, "val_accuracy": 0.6}, attempt=1, step=1)
    ledger.finish_run(done.id, RunState.FINISHED, attempt=1, summary={"val_accuracy": 0.6})
    ledger.append_epoch(dead.id, {"epoch": 1, "val_accuracy": 0.9}, attempt=1, step=1)
    roles = {"done": done.id, "dead": dead.id}
    if live_run:
        roles["live"] = controller.claim_next(ledger, sid, "c").id
    ledger.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 1000 WHERE id = ?", (dead.id,))
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", str(silent_timeout(ledger)))
    return sid, roles


def sync_refusal(sid: str) -> str:
    with pytest.raises(UserError) as refused:
        sync_sweep(sid)
    return str(refused.value)


def loaded(sid: str) -> str:
    data = load_sweep(sid)
    return f"sweep {data.state}; best {data.best.id}; " + " ".join(f"{r.id} {r.state}" for r in data.runs)


# reader -> what it shows of the sweep: the sweep's and the runs' states, as text
READERS = {
    "status": status_table,
    "sweeps": lambda sid: sweeps_table(),
    "report and export (results.load_sweep)": loaded,
    "an agent's progress line": lambda sid: progress_line(Ledger(create=False), sid, time.time()),
    "sync": sync_refusal,
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("live_run", [False, True], ids=["last run dead", "another run live"])
def test_a_silent_run_is_shown_crashed_by_every_reader_and_its_sweep_ends_without_a_new_agent(reader, live_run,
                                                                                               monkeypatch):
    """Readers only show the reaping (the next claim records it): they need no write access or claim lock."""
    ledger = Ledger()
    sid, roles = dead_run_sweep(ledger, monkeypatch, live_run=live_run)
    shown = READERS[reader](sid)
    expected = {
        "status": [f"{roles['dead']} crashed", "random, running" if live_run else "random, finished"],
        "sweeps": ["running" if live_run else "finished"],
        "report and export (results.load_sweep)": [f"{roles['dead']} crashed", f"best {roles['done']}",
                                                   "sweep running" if live_run else "sweep finished"],
        "an agent's progress line": ["2/3 runs done, 1 running" if live_run else "2/2 runs done, 0 running"],
        "sync": ["still running" if live_run else "W&B is not reachable"],
    }[reader]
    assert all(words in " ".join(shown.split()) for words in expected), shown
    stored = ledger.execute("SELECT state FROM runs WHERE id = ?", (roles["dead"],)).fetchone()["state"]
    assert stored == "running" and ledger.sweep(sid)["state"] == "running"  # shown, not written
    assert controller.claim_next(ledger, sid, "new") is None  # a claim records what the readers showed
    raw = ledger.execute("SELECT state FROM runs WHERE id = ?", (roles["dead"],)).fetchone()["state"]
    assert raw == "crashed" and ledger.sweep(sid)["state"] == ("running" if live_run else "finished")


def test_a_claim_is_one_unit_of_work_around_any_search(ledger_location):
    """`Ledger.claim` takes the search as a function of (config, runs): the ledger owns the transaction,
    the lock and the sweep's state; the search only proposes values."""
    ledger = Ledger()
    sid = ledger.create_sweep(RANDOM, "unit")
    seen = []

    def two_runs(config, runs):
        seen.append((config["method"], len(runs)))
        return {"dropout": 0.1 * len(runs)} if len(runs) < 2 else None

    first = ledger.claim(sid, "a", two_runs)
    assert (first.number, first.config, first.state) == (1, {"dropout": 0.0}, RunState.RUNNING)
    assert ledger.claim(sid, "a", two_runs).number == 2
    assert ledger.claim(sid, "a", two_runs) is None and ledger.sweep(sid)["state"] == SweepState.RUNNING  # runs live
    for run in ledger.runs(sid):
        ledger.finish_run(run.id, RunState.FINISHED, attempt=1)
    assert ledger.claim(sid, "a", two_runs) is None and ledger.sweep(sid)["state"] == SweepState.FINISHED
    assert seen == [("random", 0), ("random", 1), ("random", 2), ("random", 2)]
    assert ledger.claim(sid, "a", lambda config, runs: pytest.fail("a finished sweep asks no search")) is None
