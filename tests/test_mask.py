"""Masks from scores: exact k per matrix, rounding and ties, granularities, the table, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adaptkit.engine.masks import load_mask_set
from adaptkit.scoring.freeze import build_mask_set, freeze_top, frozen_count, frozen_table
from adaptkit.scoring.run import compute_scores
from adaptkit.scoring.score_set import ScoreSet, load_scores
from conftest import assert_input_error
from helpers import load_model


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory, make_model_dir, calib_dir):
    """Wanda scores of the tiny Llama with column, row and element scores."""
    from adaptkit.calibration import load_calibration

    directory = tmp_path_factory.mktemp("scores")
    model = load_model(make_model_dir("llama"))
    compute_scores(model, "wanda", load_calibration(calib_dir), granularities=("column", "row", "element"), batch_size=12).save(directory)
    return directory


def test_rounding_rule_is_round_half_up():
    assert [frozen_count(0.5, n) for n in (1, 2, 3, 5)] == [1, 1, 2, 3]
    assert frozen_count(0.125, 12) == 2 and frozen_count(0.125, 4) == 1 and frozen_count(0.875, 4) == 4
    assert frozen_count(0.0, 7) == 0 and frozen_count(1.0, 7) == 7


def test_top_scores_are_frozen_and_ties_go_to_the_lower_index():
    trainable = freeze_top(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]), 0.4)  # k = 2 of three tied 3.0s
    assert trainable.tolist() == [True, False, False, True, True]
    assert freeze_top(torch.zeros(6), 0.5).tolist() == [False, False, False, True, True, True]
    assert freeze_top(torch.arange(4.0), 1.0).sum() == 0 and freeze_top(torch.arange(4.0), 0.0).all()


@pytest.mark.parametrize("granularity", ["column", "row", "element"])
def test_exact_k_per_matrix_for_the_paper_ratios(scores_dir, granularity):
    scores = load_scores(scores_dir)
    for ratio in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875):
        masks = build_mask_set(scores, ratio, granularity)
        for name, mask in masks.masks.items():
            unit = granularity if len(scores.shapes[name]) == 2 else "element"
            assert mask.granularity == unit
            values = scores.scores[name][unit]
            frozen = ~mask.trainable
            k = math.floor(ratio * values.numel() + 0.5)
            assert int(frozen.sum()) == k
            if 0 < k < values.numel():
                assert values[frozen].min() >= values[~frozen].max()
    assert masks.metadata["scorer"] == "wanda" and masks.metadata["freeze_ratio"] == "0.875"


def test_mask_command_table_and_files(tmp_path, scores_dir, llama_dir, invoke):
    out = tmp_path / "mask"
    result = invoke("mask", "--scores", scores_dir, "--freeze-ratio", "0.25", "-o", out, "--model", llama_dir)
    assert result.returncode == 0, result
    for module in ("q_proj", "down_proj", "input_layernorm", "norm", "total"):
        assert module in result.stdout  # a result: on stdout
    masks = load_mask_set(out)
    assert masks.metadata["freeze_ratio"] == "0.25" and masks.metadata["mask_granularity"] == "column"
    column = masks.masks["model.layers.1.mlp.down_proj.weight"]
    assert column.granularity == "column" and column.trainable.shape == (160,) and int((~column.trainable).sum()) == 40
    rows, total = frozen_table(masks)
    assert all(abs(r[4] - 0.25) < 0.02 for r in rows) and total[0] == "total"
    result = invoke("mask", "--scores", scores_dir, "--freeze-ratio", "0.5", "--granularity", "row", "-o", tmp_path / "rows", "--json")
    report = json.loads(result.stdout)
    assert report["modules"]["gate_proj"]["frozen_fraction"] == 0.5 and 0 < report["frozen_fraction_of_model"] < 0.5


def test_ratio_zero_and_one_mean_what_they_say(scores_dir):
    scores = load_scores(scores_dir)
    assert all(m.all_trainable for m in build_mask_set(scores, 0.0).masks.values())
    assert all(m.all_frozen for m in build_mask_set(scores, 1.0, "row").masks.values())


def test_mask_bad_input(tmp_path, scores_dir, olmo2_dir, make_model_dir, calib_dir, invoke):
    out = tmp_path / "mask"
    column_only = tmp_path / "column-only"
    from adaptkit.calibration import load_calibration

    compute_scores(load_model(make_model_dir("llama")), "wanda", load_calibration(calib_dir), granularities=("column",), batch_size=12).save(column_only.mkdir() or column_only)
    cases = [
        (["--scores", scores_dir, "--freeze-ratio", "1.5"], ["--freeze-ratio", "between 0 and 1"]),
        (["--scores", scores_dir, "--freeze-ratio", "-0.1"], ["--freeze-ratio"]),
        (["--scores", scores_dir, "--granularity", "block"], ["--granularity", "block"]),
        (["--scores", column_only, "--granularity", "element"], ["--scores", "element scores", "--element-scores"]),
        (["--scores", tmp_path / "nothing"], ["--scores", "scores.safetensors"]),
        (["--scores", scores_dir, "--model", olmo2_dir], ["--scores", "different model"]),
    ]
    for args, fragments in cases:
        assert_input_error(invoke("mask", *args, "-o", out), *fragments)
        assert not out.exists()


def test_scores_must_be_finite():
    scores = ScoreSet({"w": {"column": torch.tensor([1.0, float("nan")])}}, {"scorer": "x", "shapes": json.dumps({"w": [2, 2]})})
    with pytest.raises(Exception, match="NaN"):
        build_mask_set(scores, 0.5)
