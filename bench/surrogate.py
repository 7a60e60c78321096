"""A surrogate of the replay table (`bench/replay.py --surrogate`): a forest of trees fitted on the table's
trainings predicts a whole training (learning curves and times) for any configuration, with training
noise measured on the table's repeated configurations, so that a search is not limited to the table's
200 configurations: on the table itself, a 20-40 minute search tries nearly all of them and every method
finds the same few best (docs/replay.md).

Why a forest of trees (scikit-learn's extremely randomized trees): surrogate benchmarks of HPO
(Eggensperger et al., AAAI 2015; HPOBench's surrogates) found tree ensembles among the most faithful on a
few hundred points, and a forest is not the model any method here searches with (a GP surrogate would
flatter W&B's GP-based bayes). Of the forests tried, by 5-fold validation over the table's configurations
(`validate`, docs/replay.md), extra trees fitted on all features, leaves of one training, predicted the
best configurations closest.

How a training is predicted: the configuration is encoded as W&B's GP encodes it (each parameter's CDF,
as the table's nearest-configuration lookup does), the forest predicts the metric's and val_accuracy's
curves as the logit of their error, and the log of each time; then one draw of seed noise is added to
both curves: a per-training offset (seeds shift a whole curve) and a per-epoch jitter, each a normal
whose spread is measured robustly on the table (the offset from the repeated configurations, the jitter
from the last epochs' epoch-to-epoch changes). What it leaves out: a configuration that diverges with
one seed only (the forest averages its two trainings instead)."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import numpy as np

EPS = 1e-3  # accuracies are clipped to [EPS, 1 - EPS] before the logit: one validation image is ~2.7e-3


def logit_error(values: np.ndarray) -> np.ndarray:
    """log(error / (1 - error)) of an accuracy: where curves near 1.0 still differ."""
    error = np.clip(1.0 - values, EPS, 1.0 - EPS)
    return np.log(error / (1.0 - error))


def accuracy(logits: np.ndarray) -> np.ndarray:
    return 1.0 - 1.0 / (1.0 + np.exp(-logits))


def robust_sd(values: list[float], centre: float | None = None) -> float:
    """The standard deviation a normal with this median absolute deviation (from `centre`, by default
    the median) has: a few diverging trainings do not set the spread of all."""
    centre = statistics.median(values) if centre is None else centre
    return 1.4826 * statistics.median(abs(v - centre) for v in values)


class Forest:
    """The fitted surrogate: `predict(point, rng)` gives one training's curves and times."""

    def __init__(self, points: np.ndarray, curves: list[list[Any]], seed: int = 0, trees: int = 100) -> None:
        """`points[i]` is configuration i's encoding and `curves[i]` its trainings (`replay.Curve`)."""
        from sklearn.ensemble import ExtraTreesRegressor

        x, y, rows = [], [], []  # rows[i]: configuration i's trainings' row indices in y
        for point, trainings in zip(points, curves):
            rows.append(list(range(len(y), len(y) + len(trainings))))
            for c in trainings:
                x.append(point)
                y.append(self.targets(c))
        self.epochs = len(curves[0][0].metric)
        y_arr = np.asarray(y)
        self.mean, self.scale = y_arr.mean(axis=0), y_arr.std(axis=0) + 1e-9
        standard = (y_arr - self.mean) / self.scale
        split = 2 * self.epochs  # the curves and the times have forests of their own: one does not pick the other's splits
        self.models = []
        for cols in (slice(0, split), slice(split, None)):
            model = ExtraTreesRegressor(n_estimators=trees, max_features=1.0, random_state=seed, n_jobs=1)
            self.models.append(model.fit(np.asarray(x), standard[:, cols]))
        self.offset_sd, self.jitter_sd = self.noise(y_arr, rows)

    def targets(self, c: Any) -> np.ndarray:
        metric = np.asarray([v if math.isfinite(v) else 0.0 for v in c.metric])
        return np.concatenate([logit_error(metric), logit_error(np.asarray(c.accuracy)),
                               np.log(np.maximum(c.epoch_s, 1e-3)), np.log(np.maximum(c.fit_s, 1e-3)),
                               [math.log(max(c.setup_s, 1e-3)), math.log(max(c.end_s, 1e-3))]])

    def noise(self, y: np.ndarray, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(offset sd, jitter sd) of (metric, val_accuracy) in logit space, from `y` (the trainings'
        targets; `rows[i]`: configuration i's rows in it): the offset from the repeated configurations'
        last-5-epoch means (their difference, about 0 since which seed is first is arbitrary, over
        sqrt 2), the jitter from every training's last 10 epochs (epoch-to-epoch changes about their
        median, which is the curve's late trend, over sqrt 2)."""
        offset, jitter = [], []
        pairs = np.asarray([r[:2] for r in rows if len(r) >= 2])
        for i in range(2):  # the metric's columns, then val_accuracy's
            cols = y[:, i * self.epochs:(i + 1) * self.epochs]
            late = cols[:, -5:].mean(axis=1)
            offset.append(robust_sd([float(d) for d in late[pairs[:, 0]] - late[pairs[:, 1]]], 0.0) / math.sqrt(2))
            jitter.append(robust_sd([float(d) for d in np.diff(cols[:, -10:], axis=1).ravel()]) / math.sqrt(2))
        return np.asarray(offset), np.asarray(jitter)

    def mean_targets(self, point: np.ndarray) -> np.ndarray:
        standard = np.concatenate([m.predict(point[None, :])[0] for m in self.models])
        return standard * self.scale + self.mean

    def predict(self, point: np.ndarray, rng: random.Random) -> dict[str, Any]:
        """One training: the forest's mean plus one draw of seed noise (the offset shared by the two
        curves, as a seed moves both)."""
        y, e = self.mean_targets(point), self.epochs
        z = rng.gauss(0.0, 1.0)
        out: dict[str, Any] = {}
        for i, key in enumerate(("metric", "accuracy")):
            jitter = np.asarray([rng.gauss(0.0, float(self.jitter_sd[i])) for _ in range(e)])
            logits = y[i * e:(i + 1) * e] + z * self.offset_sd[i] + jitter
            out[key] = [round(float(v), 5) for v in accuracy(logits)]
        out["epoch_s"] = [float(v) for v in np.exp(y[2 * e:3 * e])]
        out["fit_s"] = [float(v) for v in np.exp(y[3 * e:4 * e])]
        out["setup_s"], out["end_s"] = float(math.exp(y[4 * e])), float(math.exp(y[4 * e + 1]))
        return out


def validate(points: np.ndarray, curves: list[list[Any]], folds: int = 5, seed: int = 0) -> dict[str, float]:
    """How faithful the forest is on configurations it was not fitted on (k-fold over configurations):
    the Spearman correlation of the predicted and the recorded best val_accuracy, and their median
    absolute error, over all and over those recorded at 0.9 or more (where the search is decided); beside it the same two numbers between two seeds of one configuration (the table's
    repeats), the ceiling any surrogate is held to."""
    from scipy.stats import spearmanr

    order = list(range(len(points)))
    random.Random(seed).shuffle(order)
    predicted, recorded = [], []
    for k in range(folds):
        held = set(order[k::folds])
        keep = [i for i in range(len(points)) if i not in held]
        forest = Forest(points[keep], [curves[i] for i in keep], seed=seed)
        for i in sorted(held):
            mean = forest.mean_targets(points[i])
            best = int(np.argmin(mean[:forest.epochs]))  # the lowest error of the metric
            predicted.append(float(accuracy(mean[forest.epochs + best])))
            recorded.append(statistics.mean(c.best()[1] for c in curves[i]))
    pairs = [(t[0].best()[1], t[1].best()[1]) for t in curves if len(t) >= 2]
    errors = [abs(a - b) for a, b in zip(predicted, recorded)]
    return {"spearman": float(spearmanr(predicted, recorded)[0]), "median_abs_error": statistics.median(errors),
            "top_median_abs_error": statistics.median(e for e, r in zip(errors, recorded) if r >= 0.9),
            "seeds_spearman": float(spearmanr(*zip(*pairs))[0]),
            "seeds_median_abs_error": statistics.median(abs(a - b) for a, b in pairs),
            "configurations": len(points)}
