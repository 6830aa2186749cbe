"""Scores from judge verdicts: position-swapped preferences, win rate with a confidence interval,
the length-controlled win rate (Dubois et al. 2024, arXiv:2404.04475) and per-turn grades.

Preferences are the model's: 1 (its answer won), 0 (the reference won), 0.5 (a tie). Every
pair is judged twice, the model's answer first (it is output A) and second (output B); the
item's preference is the mean of the parseable verdicts, which cancels a judge's bias for
a position (Zheng et al. 2023, arXiv:2306.05685).

Length control: AlpacaEval 2 fits a logistic model of the preference on a model indicator,
tanh of the standardised length difference (and an instruction-difficulty term estimated on
its own leaderboard, which a local evaluation does not have), then predicts the preference
with the length difference set to zero. Here, per (model, reference):

    logit P(model wins | item i) = theta + phi * tanh((len_model_i - len_ref_i) / sd(len diff))

fitted by maximum likelihood on the soft preferences (a small L2 penalty `ridge` keeps the
fit finite when one side wins every long or every short pair); the LC win rate is
100 * sigmoid(theta). Lengths are in characters, as in AlpacaEval.
"""

from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054


def verdict_preference(verdict: str | None, model_is: str) -> float | None:
    """The model's preference from one verdict ('A', 'B', 'C' = tie) when its answer was output `model_is`."""
    if verdict is None:
        return None
    if verdict == "C":
        return 0.5
    return 1.0 if verdict == model_is else 0.0


def swapped_preference(model_first: str | None, model_second: str | None) -> float | None:
    """The item's preference from the two orders (model as A, then as B); None when neither parsed."""
    values = [p for p in (verdict_preference(model_first, "A"), verdict_preference(model_second, "B")) if p is not None]
    return sum(values) / len(values) if values else None


def win_rate(preferences: Sequence[float]) -> dict[str, float]:
    """Win rate (%) with its standard error and a normal 95% interval (clipped to [0, 100])."""
    n = len(preferences)
    if n == 0:
        nan = float("nan")
        return {"win_rate": nan, "win_rate_se": nan, "win_rate_ci_low": nan, "win_rate_ci_high": nan}
    mean = sum(preferences) / n
    var = sum((p - mean) ** 2 for p in preferences) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n)
    return {"win_rate": 100 * mean, "win_rate_se": 100 * se,
            "win_rate_ci_low": max(0.0, 100 * (mean - Z95 * se)), "win_rate_ci_high": min(100.0, 100 * (mean + Z95 * se))}


def length_feature(len_model: Sequence[float], len_ref: Sequence[float]) -> list[float] | None:
    """tanh of the length differences over their sample standard deviation; None when they do not vary."""
    deltas = [float(a) - float(b) for a, b in zip(len_model, len_ref)]
    n = len(deltas)
    if n < 2:
        return None
    mean = sum(deltas) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1))
    return [math.tanh(d / sd) for d in deltas] if sd > 0 else None


def lc_win_rate(preferences: Sequence[float], len_model: Sequence[float], len_ref: Sequence[float], ridge: float = 1e-3) -> float:
    """Length-controlled win rate (%): 100 * sigmoid(theta) of the fit described in the module docstring."""
    if not preferences:
        return float("nan")
    feature = length_feature(len_model, len_ref)
    rows = [[1.0] if feature is None else [1.0, x] for x in (feature or [0.0] * len(preferences))]
    mean = sum(preferences) / len(preferences)
    if mean in (0.0, 1.0):  # one side won every pair: no length effect to remove
        return 100 * mean
    theta = _fit_logistic(rows, list(preferences), ridge)[0]
    return 100 * _sigmoid(theta)


def _fit_logistic(rows: list[list[float]], targets: list[float], ridge: float, steps: int = 100) -> list[float]:
    """Newton's method for the L2-penalised logistic log-likelihood with soft targets in [0, 1]."""
    k = len(rows[0])
    beta = [0.0] * k
    for _ in range(steps):
        grad = [ridge * b for b in beta]
        hess = [[ridge if i == j else 0.0 for j in range(k)] for i in range(k)]
        for x, y in zip(rows, targets):
            p = _sigmoid(sum(b * v for b, v in zip(beta, x)))
            w = p * (1 - p)
            for i in range(k):
                grad[i] += (p - y) * x[i]
                for j in range(k):
                    hess[i][j] += w * x[i] * x[j]
        step = _solve(hess, grad)
        beta = [b - s for b, s in zip(beta, step)]
        if max(abs(s) for s in step) < 1e-12:
            break
    return beta


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve a 1x1 or 2x2 linear system (the Newton step); a singular system gives a zero step."""
    if len(b) == 1:
        return [b[0] / a[0][0]] if a[0][0] > 0 else [0.0]
    det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
    if abs(det) < 1e-300:
        return [0.0, 0.0]
    return [(a[1][1] * b[0] - a[0][1] * b[1]) / det, (a[0][0] * b[1] - a[1][0] * b[0]) / det]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def grade_summary(grades_by_turn: Sequence[Sequence[float | None]]) -> dict[str, float]:
    """Mean grade per turn ('turn_1', ...), over all parsed grades ('score'), and unparsable counts."""
    metrics: dict[str, float] = {}
    parsed_all: list[float] = []
    for turn, grades in enumerate(grades_by_turn, start=1):
        parsed = [g for g in grades if g is not None]
        metrics[f"turn_{turn}"] = sum(parsed) / len(parsed) if parsed else float("nan")
        metrics[f"unparsable_turn_{turn}"] = float(len(grades) - len(parsed))
        parsed_all += parsed
    metrics["score"] = sum(parsed_all) / len(parsed_all) if parsed_all else float("nan")
    metrics["judged"] = float(len(parsed_all))
    metrics["unparsable"] = float(sum(metrics[f"unparsable_turn_{t}"] for t in range(1, len(grades_by_turn) + 1)))
    return metrics
