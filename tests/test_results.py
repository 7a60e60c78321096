"""What "best" means, in one place: the best epoch of a run and the best run of a sweep, by the
sweep's metric and goal; and which parameters a sweep varies."""

import math
import tempfile
from pathlib import Path

import pytest

from asl_sweep.data import cache_dir
from asl_sweep.errors import UserError
from asl_sweep.ranking import best_epoch, best_run, best_value
from asl_sweep.records import Run
from asl_sweep.results import local_model, swept_params
from asl_sweep.state import RunState


def run(rid, state, values, name="val_accuracy"):
    return Run(id=rid, number=0, state=state, config={}, history=[{"epoch": i + 1, name: v} for i, v in enumerate(values)])


def test_best_epoch_skips_missing_non_finite_and_boolean_values_and_keeps_the_first_of_equals():
    history = [{"epoch": 1, "m": math.nan}, {"epoch": 2, "m": 0.5}, {"epoch": 3}, {"epoch": 4, "m": True},
               {"epoch": 5, "m": 0.9}, {"epoch": 6, "m": 0.9}, {"epoch": 7, "m": math.inf}]
    assert best_epoch(history, "m", "maximize")["epoch"] == 5
    assert best_epoch(history, "m", "minimize")["epoch"] == 2
    assert best_epoch([{"epoch": 1}], "m", "maximize") is None


@pytest.mark.parametrize("goal, winner", [("maximize", "b"), ("minimize", "a")])
def test_best_run_ranks_runs_by_their_best_epoch_and_ignores_broken_ones(goal, winner):
    runs = [run("a", RunState.FINISHED, [0.2, 0.5]), run("b", "stopped", [0.9, 0.3]),
            run("c", "failed", [0.99]), run("d", "crashed", [0.01]), run("e", "pending", [])]
    assert best_run(runs, "val_accuracy", goal).id == winner
    assert best_value(runs[1], "val_accuracy", goal) == (0.9 if goal == "maximize" else 0.3)
    assert best_run([runs[2]], "val_accuracy", goal) is None


def test_run_states_have_one_type():
    assert [s for s in RunState if s.is_active] == [RunState.PENDING, RunState.RUNNING]
    assert RunState("crashed").is_broken and RunState.STOPPED.is_final and not RunState.STOPPED.is_broken
    assert RunState.FINISHED == "finished" and f"{RunState.FAILED:>7}" == " failed"


def test_swept_params_skip_fixed_values():
    config = {"parameters": {"a": {"values": [1, 2]}, "b": {"value": 3}, "c": {"values": [4]},
                             "d": {"distribution": "uniform", "min": 0, "max": 1}}}
    assert swept_params(config) == ["a", "d"]


class OneModel:
    """The part of a ledger that `local_model` reads: a stored copy of each run's model."""

    display = "test.db"

    def model(self, run_id: str) -> bytes | None:
        return b"weights of " + run_id.encode() if run_id != "lost" else None


def test_a_model_from_the_ledger_is_written_once_to_the_runs_cache_and_no_temporary_folder_is_left(
        tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # a temporary folder made on the way would appear here
    trained_here = tmp_path / "model.keras"
    trained_here.write_bytes(b"local")
    assert local_model(OneModel(), "abc", str(trained_here)) == str(trained_here)
    first = local_model(OneModel(), "abc", str(tmp_path / "elsewhere" / "model.keras"))
    again = local_model(OneModel(), "abc", None)
    assert first == again == str(cache_dir() / "runs" / "abc" / "model.keras")
    assert Path(first).read_bytes() == b"weights of abc"
    assert [p.name for p in Path(first).parent.iterdir()] == ["model.keras"] and not list(temp.iterdir())
    with pytest.raises(UserError, match="has no copy of it"):
        local_model(OneModel(), "lost", None)
