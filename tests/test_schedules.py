"""The named learning-rate schedules against their closed forms, written out here step by step."""

from __future__ import annotations

import math

import pytest
import torch

from adaptkit.engine.config import ScheduleConfig
from adaptkit.engine.optim import build_schedule


def _multipliers(config: ScheduleConfig, total: int) -> list[float]:
    """What the engine's LambdaLR gives at each of the `total` optimizer steps (peak lr 1)."""
    scheduler = build_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), config, total)
    values = []
    for _ in range(total):
        values.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step(), scheduler.step()
    return values


def _wsd(step: int, total: int, warmup: int, cooldown: int, shape: str, floor: float) -> float:
    """Hägele et al. 2024: linear warmup, a constant peak, then the cooldown over the last `cooldown` steps."""
    if step < warmup:
        return step / warmup
    if step < total - cooldown:
        return 1.0
    x = (step - (total - cooldown)) / cooldown
    decay = {"linear": 1 - x, "cosine": (1 + math.cos(math.pi * x)) / 2, "1-sqrt": 1 - math.sqrt(x)}[shape]
    return floor + (1 - floor) * decay


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_wsd_matches_closed_form(shape, floor):
    total = 50  # warmup ceil(50 * 0.1) = 5 steps, cooldown ceil(50 * 0.3) = 15 steps
    config = ScheduleConfig(name="wsd", warmup_ratio=0.1, cooldown_ratio=0.3, cooldown_shape=shape, min_lr_ratio=floor)
    expected = [_wsd(s, total, 5, 15, shape, floor) for s in range(total)]
    assert _multipliers(config, total) == pytest.approx(expected, abs=1e-12)
    assert expected[5:35] == [1.0] * 30  # the stable phase


def test_wsd_cooldown_edges():
    """cooldown_ratio 0: constant after warmup to the end; 1 with no warmup: the cooldown is the whole run."""
    assert _multipliers(ScheduleConfig(name="wsd", warmup_ratio=0.0, cooldown_ratio=0.0), 10) == [1.0] * 10
    whole = _multipliers(ScheduleConfig(name="wsd", warmup_ratio=0.0, cooldown_ratio=1.0, cooldown_shape="1-sqrt"), 16)
    assert whole == pytest.approx([1 - math.sqrt(s / 16) for s in range(16)], abs=1e-12)


def test_rewarm_matches_closed_form():
    """Ibrahim et al. 2024: re-warm linearly from the floor eta_min to the peak, then re-decay by cosine to eta_min."""
    total, warmup, floor = 40, 4, 0.1  # warmup ceil(40 * 0.1) = 4
    expected = [floor + (1 - floor) * s / warmup if s < warmup
                else floor + (1 - floor) * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2
                for s in range(total)]
    got = _multipliers(ScheduleConfig(name="rewarm", warmup_ratio=0.1, min_lr_ratio=floor), total)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] == pytest.approx(floor) and max(got) == pytest.approx(1.0) and min(got) >= floor


@pytest.mark.parametrize("values, message", [
    ({"cooldown_ratio": 1.5}, "cooldown_ratio"),
    ({"cooldown_ratio": -0.1}, "cooldown_ratio"),
    ({"name": "wsd", "warmup_ratio": 0.5, "cooldown_ratio": 0.6}, "more than the whole run"),
    ({"cooldown_shape": "sqrt"}, "cooldown_shape"),
])
def test_bad_schedule_settings_are_one_line_errors(tmp_path, values, message):
    from adaptkit.train_settings import build_config
    from adaptkit.errors import InputError

    overrides = [f"schedule.{k}={v}" for k, v in values.items()]
    with pytest.raises(InputError) as err:
        build_config(None, {"model": "m", "data": ["d.txt"]}, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
