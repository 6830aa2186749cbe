"""The bad-input matrix: every subcommand, fed wrong files, shapes, numbers, names and types.

Each case asserts: exit code 2, exactly one line on stderr naming the problem, no
traceback, and nothing written (the output path does not appear). Add a subcommand by
adding rows to CASES: (id, argv template, fragments expected in the error line).
Placeholders in argv: {out} the output path (must not exist afterwards), {model} a tiny
model dir, {data} a small Hausa text file, and {<fixture>} any name in `bad_files`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _scale_helpers import install_mask_file_plugin, write_mask_set

TRAIN = ["train", "--model", "{model}", "--data", "{data}", "-o", "{out}", "--max-steps", "1", "--seq-len", "16", "--batch-size", "2", "--quiet"]


def train(*extra: str, **replace: str) -> list[str]:
    """The train argv with some flags replaced (e.g. model="{missing}") and extra flags appended."""
    argv = list(TRAIN)
    for flag, value in replace.items():
        argv[argv.index("-o" if flag == "o" else "--" + flag.replace("_", "-")) + 1] = value
    return argv + list(extra)


CASES = [
    # --- train: model -------------------------------------------------------------------
    ("model-missing", train(model="{missing}"), ["--model", "does not exist"]),
    ("model-empty-dir", train(model="{empty_dir}"), ["--model"]),
    ("model-is-text-file", train(model="{text_file}"), ["--model"]),
    ("model-corrupt-safetensors", train(model="{corrupt_model}"), ["--model"]),
    ("model-corrupt-gguf", train(model="{bad_gguf}"), ["--model", "GGUF"]),
    # --- train: data --------------------------------------------------------------------
    ("data-missing", train(data="{missing}"), ["--data", "does not exist"]),
    ("data-empty", train(data="{empty_file}"), ["--data", "no text"]),
    ("data-directory", train(data="{empty_dir}"), ["--data"]),
    ("data-binary", train(data="{binary_file}"), ["--data", "UTF-8"]),
    ("data-bad-jsonl", train(data="{bad_jsonl}"), ["--data", "line 2", "JSON"]),
    ("data-jsonl-no-field", train(data="{jsonl_no_text}"), ["--data", "text"]),
    ("data-shorter-than-block", train("--seq-len", "100000"), ["--data", "--seq-len"]),
    # --- train: numbers -------------------------------------------------------------------
    ("lr-negative", train("--lr", "-1"), ["--lr", "greater than 0"]),
    ("lr-nan", train("--lr", "nan"), ["--lr"]),
    ("batch-size-zero", train(batch_size="0"), ["--batch-size"]),
    ("batch-not-multiple-of-micro", train("--micro-batch-size", "3", batch_size="4"), ["--batch-size", "--micro-batch-size"]),
    ("max-steps-negative", train(max_steps="-5"), ["--max-steps"]),
    ("warmup-ratio-above-one", train("--warmup-ratio", "1.5"), ["--warmup-ratio"]),
    ("seq-len-zero", train(seq_len="0"), ["--seq-len"]),
    # --- train: names -----------------------------------------------------------------------
    ("method-unknown", train("--method", "ffft"), ["--method", "ffft", "fft"]),
    ("precision-unknown", train("--precision", "fp16"), ["--precision"]),
    ("distributed-unknown", train("--distributed", "zero"), ["--distributed"]),
    ("schedule-unknown", train("--schedule", "cosinus"), ["--schedule"]),
    ("freeze-ratio-for-fft", train("--freeze-ratio", "0.5"), ["freeze_ratio"]),
    # --- train: configs ----------------------------------------------------------------------
    ("config-missing", train("--config", "{missing}"), ["--config"]),
    ("config-not-yaml", train("--config", "{bad_yaml}"), ["--config", "YAML"]),
    ("config-is-list", train("--config", "{yaml_list}"), ["--config", "mapping"]),
    ("config-wrong-type", train("--config", "{yaml_wrong_type}"), ["--config", "log_steps"]),
    ("config-unknown-key", train("--config", "{yaml_unknown_key}"), ["batch_sise", "batch_size"]),
    ("config-is-directory", train("--config", "{empty_dir}"), ["--config"]),
    ("set-unknown-key", train("--set", "optimizer.lrr=1"), ["--set", "lrr"]),
    ("set-malformed", train("--set", "optimizer.lr"), ["--set", "KEY=VALUE"]),
    ("set-wrong-type", train("--set", "batch_size=many"), ["batch_size"]),
    # --- train: masks -----------------------------------------------------------------------
    ("mask-required", train("--method", "mask-file"), ["--method mask-file", "--mask"]),
    ("mask-dir-without-masks", train("--method", "mask-file", "--mask", "{empty_dir}"), ["--mask", "masks.safetensors"]),
    ("mask-wrong-shapes", train("--method", "mask-file", "--mask", "{other_mask}"), ["--mask", "shape"]),
    ("mask-corrupt", train("--method", "mask-file", "--mask", "{corrupt_mask}"), ["--mask"]),
    # --- train: outputs and resume -------------------------------------------------------------
    ("output-is-file", train(o="{text_file}"), ["-o/--output", "is a file"]),
    ("resume-nothing", train("--resume"), ["--resume", "no run to resume"]),
    ("unknown-option", train("--learning-rate", "1"), ["--learning-rate"]),
    # --- plugins ------------------------------------------------------------------------------
    ("plugins-unknown-kind", ["plugins", "--kind", "metod"], ["--kind", "metod", "method"]),
    ("plugins-empty-kind", ["plugins", "--kind", ""], ["--kind"]),
    ("plugins-unknown-option", ["plugins", "--kinds", "method"], ["--kinds"]),
    ("plugins-extra-argument", ["plugins", "method"], ["method"]),
]

if os.geteuid() != 0:  # root reads everything: the permission case runs only as a normal user
    CASES.append(("data-unreadable", train(data="{unreadable}"), ["--data", "permission denied"]))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, make_model_dir, corpora) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    files: dict[str, Path] = {"missing": root / "no-such-file", "model": make_model_dir("llama"), "data": corpora["ha"]}
    (root / "empty-dir").mkdir()
    files["empty_dir"] = root / "empty-dir"
    files["text_file"] = root / "notes.txt"
    files["text_file"].write_text("not a model\n")
    corrupt = root / "corrupt-model"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((files["model"] / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    files["corrupt_model"] = corrupt
    files["bad_gguf"] = root / "model.gguf"
    files["bad_gguf"].write_bytes(b"GGUF not really")
    files["empty_file"] = root / "empty.txt"
    files["empty_file"].write_text("")
    files["binary_file"] = root / "binary.txt"
    files["binary_file"].write_bytes(bytes(range(128, 256)) * 4)
    files["bad_jsonl"] = root / "bad.jsonl"
    files["bad_jsonl"].write_text('{"text": "fine"}\n{"text": broken\n')
    files["jsonl_no_text"] = root / "notext.jsonl"
    files["jsonl_no_text"].write_text('{"body": "no text field"}\n')
    for name, text in {
        "bad_yaml": "batch_size: [1, 2\n",
        "yaml_list": "- a\n- b\n",
        "yaml_wrong_type": "log_steps: lots\n",
        "yaml_unknown_key": "batch_sise: 4\n",
    }.items():
        files[name] = root / f"{name}.yaml"
        files[name].write_text(text)
    write_mask_set(make_model_dir("llama", hidden=32), root / "other-mask")
    files["other_mask"] = root / "other-mask"
    (root / "corrupt-mask").mkdir()
    (root / "corrupt-mask" / "masks.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    files["corrupt_mask"] = root / "corrupt-mask"
    files["unreadable"] = root / "secret.txt"
    files["unreadable"].write_text("hidden\n")
    files["unreadable"].chmod(0)
    return files


@pytest.fixture(scope="module")
def mask_file_method(tmp_path_factory):
    """The entry-point test plugin `mask-file`, visible in this process."""
    import sys

    from adaptkit.registry import reset_registry

    site = install_mask_file_plugin(tmp_path_factory.mktemp("site"))
    sys.path.insert(0, str(site))
    reset_registry()
    yield
    sys.path.remove(str(site))
    reset_registry()


@pytest.mark.parametrize("case_id,argv,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, argv, fragments, bad_files, mask_file_method, tmp_path, invoke):
    from conftest import assert_input_error

    out = tmp_path / "out"
    values = {name: str(path) for name, path in bad_files.items()}
    values["out"] = str(out)
    args = [a.format(**values) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(*args)
    assert_input_error(result, *fragments)
    assert not out.exists(), f"{case_id}: wrote {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert result.stdout == ""


def test_matrix_is_large_enough():
    assert len(CASES) >= 40
