import time

import pytest

import sweeps
from asl_sweep import controller
from asl_sweep.ledger import Ledger

GRID = {"method": "grid", "metric": {"name": "val_accuracy", "goal": "maximize"},
        "parameters": {"filters_1": {"values": [4, 8]}, "dropout": {"values": [0.1, 0.2, 0.3]}}}
BAYES = {"method": "bayes", "metric": {"name": "val_accuracy", "goal": "maximize"},
         "parameters": {"dropout": {"min": 0.0, "max": 0.8}}}


@pytest.fixture(autouse=True)
def backend(ledger_location: str) -> str:
    """Every controller test runs on SQLite and on PostgreSQL: one contract, two backends."""
    return ledger_location


def finish(ledger, run, values):
    for i, v in enumerate(values, 1):
        ledger.append_epoch(run.id, {"epoch": i, "val_accuracy": v})
    ledger.finish_run(run.id, "finished", summary={"val_accuracy": values[-1]})


def test_grid_is_exhausted_exactly():
    ledger = Ledger()
    sid = ledger.create_sweep(GRID, "g")
    seen = []
    while (run := controller.claim_next(ledger, sid, "a")) is not None:
        seen.append((run.config["filters_1"], run.config["dropout"]))
        finish(ledger, run, [0.5])
    assert sorted(seen) == sorted((f, d) for f in (4, 8) for d in (0.1, 0.2, 0.3))
    assert ledger.sweep(sid)["state"] == "finished"
    assert controller.claim_next(ledger, sid, "a") is None


def test_run_cap_holds():
    ledger = Ledger()
    sid = ledger.create_sweep({**BAYES, "method": "random", "run_cap": 3}, "r")
    runs = [controller.claim_next(ledger, sid, "a") for _ in range(5)]
    assert [r is not None for r in runs] == [True, True, True, False, False]
    assert ledger.sweep(sid)["state"] == "running"  # runs still active: not finished yet
    for r in runs[:3]:
        finish(ledger, r, [0.3])
    assert controller.claim_next(ledger, sid, "a") is None and ledger.sweep(sid)["state"] == "finished"


def test_bayes_receives_histories_and_summaries(monkeypatch):
    seen = []
    real = sweeps.next_run

    def spy(config, runs, *a, **k):
        seen.append(runs)
        return real(config, runs, *a, **k)

    monkeypatch.setattr(sweeps, "next_run", spy)
    ledger = Ledger()
    sid = ledger.create_sweep(BAYES, "b")
    for values in ([0.2, 0.4], [0.5, 0.9], [0.1, 0.3]):
        finish(ledger, controller.claim_next(ledger, sid, "a"), values)
    controller.claim_next(ledger, sid, "a")
    last = seen[-1]
    assert [r.state for r in last] == ["finished"] * 3
    assert [r.metric_extremum("val_accuracy", "maximum") for r in last] == [0.4, 0.9, 0.3]
    assert [len(r.history) for r in last] == [2, 2, 2]
    assert all("value" in r.config["dropout"] for r in last)


def test_bayes_moves_towards_good_results():
    """The engine uses the recorded metric: with accuracy peaking at dropout 0.8 it proposes high dropout."""
    ledger = Ledger()
    sid = ledger.create_sweep(BAYES, "b")
    proposals = []
    for _ in range(12):
        run = controller.claim_next(ledger, sid, "a")
        proposals.append(run.config["dropout"])
        finish(ledger, run, [1.0 - abs(run.config["dropout"] - 0.8)])
    assert sum(p > 0.5 for p in proposals[-6:]) >= 3  # a uniform draw: 0.375 each


def test_hyperband_flags_a_bad_running_run():
    config = {**BAYES, "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2}}
    ledger = Ledger()
    sid = ledger.create_sweep(config, "h")
    for values in ([0.5, 0.8, 0.9, 0.9], [0.6, 0.85, 0.9, 0.95], [0.4, 0.7, 0.8, 0.85]):
        finish(ledger, controller.claim_next(ledger, sid, "a"), values)
    bad, good = controller.claim_next(ledger, sid, "a"), controller.claim_next(ledger, sid, "a")
    for v in (0.1, 0.1):
        ledger.append_epoch(bad.id, {"val_accuracy": v})
    for v in (0.7, 0.9):
        ledger.append_epoch(good.id, {"val_accuracy": v})
    assert controller.apply_early_termination(ledger, sid) == [bad.id]
    assert ledger.should_stop(bad.id) and not ledger.should_stop(good.id)


def test_stale_runs_are_crashed_and_finished_runs_never_change(monkeypatch):
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", "0.2")
    ledger = Ledger()
    sid = ledger.create_sweep({**BAYES, "method": "random", "run_cap": 3}, "r")
    done = controller.claim_next(ledger, sid, "a")
    finish(ledger, done, [0.7])
    before = ledger.run(done.id)
    orphan = controller.claim_next(ledger, sid, "a")
    time.sleep(0.3)
    controller.claim_next(ledger, sid, "a")
    assert ledger.run(orphan.id).state == "crashed"
    assert not ledger.finish_run(done.id, "failed")
    ledger.append_epoch(done.id, {"val_accuracy": 0.0})
    assert ledger.run(done.id) == before


def test_unknown_sweep_is_a_clear_error():
    from asl_sweep.errors import UserError

    with pytest.raises(UserError, match="unknown sweep id 'nope'"):
        controller.claim_next(Ledger(), "nope", "a")


def test_metric_target_finishes_the_sweep_once_a_run_reaches_it():
    ledger = Ledger()
    sid = ledger.create_sweep({**BAYES, "method": "random", "metric": {**BAYES["metric"], "target": 0.9}}, "t")
    finish(ledger, controller.claim_next(ledger, sid, "a"), [0.5, 0.8])
    running = controller.claim_next(ledger, sid, "a")
    ledger.append_epoch(running.id, {"val_accuracy": 0.95})
    assert controller.claim_next(ledger, sid, "a") is None and ledger.sweep(sid)["state"] == "running"
    ledger.finish_run(running.id, "finished")
    assert controller.claim_next(ledger, sid, "a") is None and ledger.sweep(sid)["state"] == "finished"


def test_minimized_target_and_default_goal_is_minimize():
    ledger = Ledger()
    sid = ledger.create_sweep({**BAYES, "metric": {"name": "val_loss", "target": 0.2}}, "t")
    finish_loss = controller.claim_next(ledger, sid, "a")
    ledger.append_epoch(finish_loss.id, {"val_loss": 0.5})
    ledger.append_epoch(finish_loss.id, {"val_loss": 0.1})
    ledger.finish_run(finish_loss.id, "finished")
    assert controller.claim_next(ledger, sid, "a") is None


@pytest.mark.parametrize("action, before, after", [
    ("pause", "running", "paused"), ("resume", "paused", "running"), ("stop", "running", "finished"),
    ("stop", "paused", "finished"), ("cancel", "running", "canceled"),
])
def test_sweep_control_transitions(action, before, after):
    ledger = Ledger()
    sid = ledger.create_sweep(BAYES, "c")
    ledger.set_sweep_state(sid, before)
    assert ledger.control(sid, action) == after and ledger.sweep(sid)["state"] == after


@pytest.mark.parametrize("action, state", [("resume", "running"), ("pause", "finished"), ("cancel", "canceled")])
def test_sweep_control_refuses_what_does_not_apply(action, state):
    from asl_sweep.errors import UserError

    ledger = Ledger()
    sid = ledger.create_sweep(BAYES, "c")
    ledger.set_sweep_state(sid, state)
    with pytest.raises(UserError, match=f"cannot {action} sweep {sid}: it is {state}"):
        ledger.control(sid, action)


def test_paused_stopped_and_canceled_sweeps_give_no_run_and_cancel_stops_running_ones():
    ledger = Ledger()
    sid = ledger.create_sweep({**BAYES, "method": "random"}, "c")
    running = controller.claim_next(ledger, sid, "a")
    ledger.control(sid, "pause")
    assert controller.claim_next(ledger, sid, "a") is None and ledger.sweep(sid)["state"] == "paused"
    ledger.control(sid, "resume")
    assert controller.claim_next(ledger, sid, "a") is not None
    ledger.control(sid, "cancel")
    assert controller.claim_next(ledger, sid, "a") is None and ledger.should_stop(running.id)
    reporter = controller.LedgerReporter(ledger, sid, running)
    try:
        assert reporter.epoch({"val_accuracy": 0.5}) is True  # the run ends at this epoch boundary
    finally:
        reporter.close()


def test_hyperband_is_asked_only_when_a_run_reaches_one_of_its_bands(monkeypatch):
    """Its decisions cannot change in between, so no agent recomputes them on every epoch."""
    calls = []
    real = sweeps.stop_runs
    monkeypatch.setattr(sweeps, "stop_runs", lambda *a, **k: calls.append(1) or real(*a, **k))
    ledger = Ledger()
    config = {**BAYES, "method": "random", "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2}}
    sid = ledger.create_sweep(config, "hb")
    assert controller.hyperband_bands(config) >= {2, 4, 8, 16} and 3 not in controller.hyperband_bands(config)
    run = controller.claim_next(ledger, sid, "a")
    with controller.LedgerReporter(ledger, sid, run) as reporter:
        for epoch in range(1, 10):
            reporter.epoch({"epoch": epoch, "val_accuracy": 0.5})
    assert len(calls) == 3  # after epochs 2, 4 and 8
    max_iter = {**config, "early_terminate": {"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}}
    assert controller.hyperband_bands(max_iter) == {3, 9}
