"""Resume is bit-identical for block expansion, Spectrum and the wsd / rewarm schedules."""

from __future__ import annotations

import pytest
from _methods_helpers import TRAIN, assert_resume_bit_identical

RUNS = {
    "block-expansion": ["--method", "block-expansion", "--set", "positions=1"],
    "spectrum": ["--method", "spectrum", "--set", "fraction=0.5"],
    "fft-wsd": ["--schedule", "wsd", "--set", "schedule.cooldown_ratio=0.5", "--set", "schedule.cooldown_shape=1-sqrt"],
    "fft-rewarm": ["--schedule", "rewarm", "--warmup-ratio", "0.3", "--set", "schedule.min_lr_ratio=0.1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("label", list(RUNS))
def test_resume_is_bit_identical(tmp_path, make_model_dir, corpora, invoke, label):
    tiny = [a for a in TRAIN if a not in ("--max-steps", "3", "--warmup-ratio", "0")]
    args = ["--model", make_model_dir("llama", layers=3), "--data", corpora["ha"], *tiny, *RUNS[label]]
    assert_resume_bit_identical(invoke, tmp_path, args)
