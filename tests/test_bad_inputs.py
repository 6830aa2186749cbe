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

pytestmark = pytest.mark.slow  # the CLI bad-input matrix: ~130 CLI runs over models, calibration and score files built once


TRAIN = ["train", "--model", "{model}", "--data", "{data}", "-o", "{out}", "--max-steps", "1", "--seq-len", "16", "--batch-size", "2", "--quiet"]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
    ("model-hub-id-offline-not-cached", train(model="nobody/nothing"), ["--model", "nobody/nothing", "offline"]),
    ("model-without-tokenizer", train(model="{model_no_tokenizer}"), ["--model", "no tokenizer files"]),
    # --- train: data --------------------------------------------------------------------
    ("data-missing", train(data="{missing}"), ["--data", "does not exist"]),
    ("data-empty", train(data="{empty_file}"), ["--data", "no text"]),
    ("data-directory", train(data="{empty_dir}"), ["--data"]),
    ("data-binary", train(data="{binary_file}"), ["--data", "UTF-8"]),
    ("data-bad-jsonl", train(data="{bad_jsonl}"), ["--data", "line 2", "JSON"]),
    ("data-jsonl-no-field", train(data="{jsonl_no_text}"), ["--data", "text"]),
    ("data-shorter-than-block", train(data="{text_file}", seq_len="512"), ["--data", "--seq-len"]),
    ("seq-len-above-context", train(seq_len="100000"), ["--seq-len", "100000", "context length of 1024"]),
    ("seq-len-above-small-context", train(model="{short_model}", seq_len="16"), ["--seq-len", "16", "context length of 8"]),
    # --- train: evaluation during training -------------------------------------------------
    ("eval-steps-without-eval-data", train("--eval-steps", "2"), ["--eval-steps", "--eval-data", "--validation-fraction"]),
    ("eval-data-empty", train("--eval-data", "dev={empty_file}:source"), ["--eval-data dev", "empty"]),
    ("eval-data-missing", train("--eval-data", "dev={missing}"), ["--eval-data dev", "does not exist"]),
    ("eval-data-role-typo", train("--eval-data", "dev={data}:sauce"), ["--eval-data", "unknown role 'sauce'", "source, target"]),
    ("eval-data-duplicate-name", train("--eval-data", "dev={data}", "--eval-data", "dev={data}"), ["--eval-data", "duplicate", "'dev'"]),
    ("eval-data-chat-no-assistant", train("--eval-data", "chat={chat_no_assistant}"), ["--eval-data chat", "line 1", "assistant"]),
    ("validation-fraction-one", train("--validation-fraction", "1"), ["--validation-fraction"]),
    # --- train: mixtures, token caps, stores ----------------------------------------------
    ("data-duplicate-source-name", train("--data", "ha={data}", data="ha={data}"), ["--data", "duplicate source name 'ha'"]),
    ("data-mixture-unnamed-source", train("--data", "{data}", data="ha={data}"), ["--data", "needs a name"]),
    ("data-weight-zero", train(data="ha={data}:0"), ["--data", "weight of source 'ha'", "positive number", "'0'"]),
    ("data-weight-negative", train("--data", "en={data}:-0.5", data="ha={data}"), ["--data", "weight of source 'en'", "positive number"]),
    ("data-weight-nan", train(data="ha={data}:nan"), ["--data", "positive number", "'nan'"]),
    ("max-tokens-unknown-source", train("--max-tokens", "fr=1k", data="ha={data}"), ["--max-tokens", "unknown source name 'fr'", "ha"]),
    ("text-field-unknown-source", train("--text-field", "fr=body", data="ha={data}"), ["--text-field", "unknown source name 'fr'"]),
    ("max-tokens-not-a-count", train("--max-tokens", "lots"), ["--max-tokens", "token count", "'lots'"]),
    ("max-tokens-zero", train("--max-tokens", "ha=0", data="ha={data}"), ["--max-tokens", "positive token count"]),
    ("data-store-of-another-tokenizer", train(data="{other_store}"), ["--data", "another tokenizer", "prepare it again"]),
    # --- train: numbers -------------------------------------------------------------------
    ("lr-negative", train("--lr", "-1"), ["--lr", "greater than 0"]),
    ("lr-nan", train("--lr", "nan"), ["--lr"]),
    ("lr-inf", train("--lr", "inf"), ["--lr", "finite", "inf"]),
    ("set-lr-inf", train("--set", "optimizer.lr=inf"), ["--set", "optimizer.lr", "finite"]),
    ("set-yaml-inf", train("--set", "max_grad_norm=.inf"), ["--set", "max_grad_norm", "finite"]),
    ("max-grad-norm-nan", train("--max-grad-norm", "nan"), ["--max-grad-norm", "finite"]),
    ("method-param-inf", train("--method", "lora", "--set", "lora.alpha=inf"), ["--set", "alpha", "finite"]),
    ("batch-size-zero", train(batch_size="0"), ["--batch-size"]),
    ("batch-not-multiple-of-micro", train("--micro-batch-size", "3", batch_size="4"), ["--batch-size", "--micro-batch-size"]),
    ("max-steps-negative", train(max_steps="-5"), ["--max-steps"]),
    ("warmup-ratio-above-one", train("--warmup-ratio", "1.5"), ["--warmup-ratio"]),
    ("seq-len-zero", train(seq_len="0"), ["--seq-len"]),
    ("seq-len-one", train(seq_len="1"), ["--seq-len", "greater than or equal to 2", "got 1"]),
    ("threads-zero", train("--set", "threads=0"), ["--set", "threads", "greater than 0"]),
    # --- train: names -----------------------------------------------------------------------
    ("method-unknown", train("--method", "ffft"), ["--method", "ffft", "fft"]),
    ("train-embeddings-new-only-not-extended", train("--set", "train_embeddings=new-only"), ["--set train_embeddings=new-only", "adaptkit_vocab.json", "vocab extend"]),
    ("train-embeddings-unknown", train("--set", "train_embeddings=old"), ["train_embeddings", "new-only"]),
    ("embedding-lr-zero", train("--set", "embedding_lr=0"), ["embedding_lr", "greater than 0"]),
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
    ("output-missing", ["train", "--model", "{model}", "--data", "{data}", "--quiet"], ["-o/--output", "required"]),
    ("model-missing-flag", ["train", "--data", "{data}", "-o", "{out}"], ["--model", "required"]),
    ("print-config-unknown-key", ["train", "--print-config", "--set", "optimizer.lrr=1"], ["--set", "lrr"]),
    ("unknown-option", train("--learning-rate", "1"), ["--learning-rate"]),
    # --- outputs that cannot be written (every command with -o), refused before any work --------
    ("train-output-in-proc", train(o="/proc/adaptkit-run"), ["-o/--output", "/proc/adaptkit-run", "cannot write"]),
    ("train-output-in-sys", train(o="/sys/adaptkit/run"), ["-o/--output", "cannot write"]),
    ("calibrate-output-in-proc", ["calibrate", "-m", "{model}", "-d", "{data}", "-o", "/proc/adaptkit-calib"], ["-o/--output", "cannot write"]),
    ("score-output-in-sys", ["score", "-m", "{model}", "--scorer", "magnitude", "-o", "/sys/adaptkit-scores"], ["-o/--output", "cannot write"]),
    ("mask-output-in-proc", ["mask", "--scores", "{scores}", "-o", "/proc/adaptkit-mask"], ["-o/--output", "cannot write"]),
    ("merge-output-in-proc", ["merge", "linear", "-m", "{model}", "-m", "{model_b}", "-o", "/proc/adaptkit-merge"], ["-o/--output", "cannot write"]),
    ("iv-extract-output-in-sys", ["instruct-vector", "extract", "--base", "{model}", "--instruct", "{model_b}", "-o", "/sys/adaptkit-iv"], ["-o/--output", "cannot write"]),
    ("evaluate-output-in-proc", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "-o", "/proc/adaptkit-eval"], ["-o/--output", "cannot write"]),
    ("generate-output-in-sys", ["generate", "-m", "{model}", "-p", "{prompts}", "-o", "/sys/adaptkit-gens.jsonl"], ["-o/--output", "cannot write"]),
    ("codemix-output-in-proc", ["codemix", "-i", "{generations}", "--expected-lang", "en", "-o", "/proc/adaptkit-codemix"], ["-o/--output", "cannot write"]),
    ("quickstart-output-in-proc", ["quickstart", "-o", "/proc/adaptkit-demo"], ["-o/--output", "cannot write"]),
    # --- devices (every command with --device) ------------------------------------------------
    ("train-device-absent-gpu", train("--device", "cuda:99"), ["--device", "cuda:99", "not available", "available: cpu"]),
    ("train-device-unknown", train("--device", "tpu"), ["--device", "tpu", "cuda:N"]),
    ("score-device-absent-gpu", ["score", "-m", "{model}", "--scorer", "magnitude", "--device", "cuda:99", "-o", "{out}"], ["--device", "not available"]),
    ("evaluate-device-absent-gpu", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--device", "cuda:99", "-o", "{out}"], ["--device", "cuda:99", "available: cpu"]),
    ("evaluate-device-unknown", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--device", "gpu", "-o", "{out}"], ["--device", "gpu"]),
    ("evaluate-device-and-device-map", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--device", "cpu", "--device-map", "auto", "-o", "{out}"], ["--device", "--device-map"]),
    ("generate-device-absent-gpu", ["generate", "-m", "{model}", "-p", "{prompts}", "--device", "cuda:99", "-o", "{out}"], ["--device", "not available"]),
    # --- plugins ------------------------------------------------------------------------------
    ("plugins-unknown-kind", ["plugins", "--kind", "metod"], ["--kind", "metod", "method"]),
    ("plugins-empty-kind", ["plugins", "--kind", ""], ["--kind"]),
    ("plugins-unknown-option", ["plugins", "--kinds", "method"], ["--kinds"]),
    ("plugins-extra-argument", ["plugins", "method"], ["method"]),
    # --- calibrate ------------------------------------------------------------------------------
    ("calibrate-model-missing", ["calibrate", "-m", "{missing}", "-d", "{data}", "-o", "{out}"], ["--model", "does not exist"]),
    ("calibrate-data-empty", ["calibrate", "-m", "{model}", "-d", "{empty_file}", "-o", "{out}"], ["--data"]),
    ("calibrate-data-bad-jsonl", ["calibrate", "-m", "{model}", "-d", "{bad_jsonl}", "-o", "{out}"], ["--data", "line 2"]),
    ("calibrate-format-unknown", ["calibrate", "-m", "{model}", "-d", "{data}", "--format", "chatt", "-o", "{out}"], ["--format", "chatt"]),
    ("calibrate-block-size-above-context", ["calibrate", "-m", "{model}", "-d", "{data}", "--block-size", "4096", "-o", "{out}"], ["--block-size", "4096", "context length of 1024"]),
    ("calibrate-block-size-above-small-context", ["calibrate", "-m", "{short_model}", "-d", "{data}", "--block-size", "16", "-o", "{out}"], ["--block-size", "16", "context length of 8"]),
    ("calibrate-block-size-zero", ["calibrate", "-m", "{model}", "-d", "{data}", "--block-size", "0", "-o", "{out}"], ["--block-size"]),
    ("calibrate-template-missing-file", ["calibrate", "-m", "{model}", "-d", "{chat_jsonl}", "--template", "{missing}.jinja", "-o", "{out}"], ["--template"]),
    ("calibrate-template-file-missing-text-data", ["calibrate", "-m", "{model}", "-d", "{data}", "--format", "text", "--template", "{missing}", "-o", "{out}"], ["--template", "Jinja template file"]),
    # --- score --------------------------------------------------------------------------------
    ("score-scorer-unknown", ["score", "-m", "{model}", "--calib", "{calib}", "--scorer", "wandaa", "-o", "{out}"], ["--scorer", "wandaa", "did you mean", "wanda"]),
    ("score-calib-longer-than-context", ["score", "-m", "{short_model}", "--calib", "{calib}", "-o", "{out}"], ["--calib", "16 tokens", "context length of 8"]),
    ("score-calib-empty-dir", ["score", "-m", "{model}", "--calib", "{empty_dir}", "-o", "{out}"], ["--calib", "not a calibration directory"]),
    ("score-calib-is-file", ["score", "-m", "{model}", "--calib", "{text_file}", "-o", "{out}"], ["--calib"]),
    ("score-model-corrupt", ["score", "-m", "{corrupt_model}", "--scorer", "magnitude", "-o", "{out}"], ["--model"]),
    ("score-batch-size-zero", ["score", "-m", "{model}", "--calib", "{calib}", "--batch-size", "0", "-o", "{out}"], ["--batch-size"]),
    ("score-dtype-unknown", ["score", "-m", "{model}", "--scorer", "magnitude", "--dtype", "fp8", "-o", "{out}"], ["--dtype", "fp8"]),
    ("score-layer-by-layer-fisher", ["score", "-m", "{model}", "--calib", "{calib}", "--scorer", "fisher", "--layer-by-layer", "-o", "{out}"], ["--layer-by-layer", "fisher", "whole model"]),
    ("score-layer-by-layer-missing-tensor", ["score", "-m", "{model_missing_tensor}", "--scorer", "magnitude", "--layer-by-layer", "-o", "{out}"], ["--model", "model.layers.1.mlp.up_proj.weight", "safetensors"]),
    # --- mask ---------------------------------------------------------------------------------
    ("mask-freeze-ratio-above-one", ["mask", "--scores", "{scores}", "--freeze-ratio", "1.5", "-o", "{out}"], ["--freeze-ratio", "1.5"]),
    ("mask-freeze-ratio-nan", ["mask", "--scores", "{scores}", "--freeze-ratio", "nan", "-o", "{out}"], ["--freeze-ratio"]),
    ("mask-granularity-unknown", ["mask", "--scores", "{scores}", "--freeze-ratio", "0.5", "--granularity", "colum", "-o", "{out}"], ["--granularity", "colum", "column"]),
    ("mask-scores-empty-dir", ["mask", "--scores", "{empty_dir}", "--freeze-ratio", "0.5", "-o", "{out}"], ["--scores"]),
    ("mask-scores-missing", ["mask", "--scores", "{missing}", "--freeze-ratio", "0.5", "-o", "{out}"], ["--scores"]),
    ("mask-scores-from-other-model", ["mask", "--scores", "{scores}", "--freeze-ratio", "0.5", "-m", "{narrow_model}", "-o", "{out}"], ["--scores", "different model"]),
    # --- merge --------------------------------------------------------------------------------
    ("merge-method-unknown", ["merge", "tie", "-m", "{model}", "-o", "{out}"], ["tie"]),
    ("merge-different-hidden-size", ["merge", "linear", "-m", "{model}", "-m", "{narrow_model}", "-o", "{out}"], ["shape"]),
    ("merge-lambda-nan", ["merge", "task-arithmetic", "--base", "{model}", "-m", "{model_b}", "--lambda", "nan", "-o", "{out}"], ["lambda", "finite"]),
    ("merge-density-zero", ["merge", "ties", "--base", "{model}", "-m", "{model_b}", "--density", "0", "-o", "{out}"], ["density", "greater than 0"]),
    ("merge-model-is-file", ["merge", "linear", "-m", "{model}", "-m", "{text_file}", "-o", "{out}"], ["--model", "notes.txt"]),
    ("merge-config-is-list", ["merge", "--config", "{yaml_list}", "-o", "{out}"], ["--config", "mapping"]),
    ("merge-config-method-unsupported", ["merge", "--config", "{merge_yaml_bad_method}", "-o", "{out}"], ["merge_method", "arcee_fusion"]),
    ("merge-config-missing", ["merge", "--config", "{missing}", "-o", "{out}"], ["--config"]),
    ("merge-config-is-directory", ["merge", "--config", "{empty_dir}", "-o", "{out}"], ["--config"]),
    ("merge-group-set-with-method", ["merge", "--set", "lambda=0.5", "task-arithmetic", "--base", "{model}", "-m", "{model_b}", "-o", "{out}"], ["--set", "--config", "task-arithmetic"]),
    ("merge-group-dtype-with-method", ["merge", "--dtype", "bfloat16", "linear", "-m", "{model}", "-m", "{model_b}", "-o", "{out}"], ["--dtype", "after the method name"]),
    ("merge-group-output-with-method", ["merge", "-o", "{out}", "linear", "-m", "{model}", "-m", "{model_b}", "-o", "{out}"], ["-o/--output", "after the method name"]),
    ("merge-group-seed-with-method", ["merge", "--seed", "3", "dare-linear", "--base", "{model}", "-m", "{model_b}", "-o", "{out}"], ["--seed"]),
    ("merge-group-shard-size-with-method", ["merge", "--shard-size", "1MB", "linear", "-m", "{model}", "-m", "{model_b}", "-o", "{out}"], ["--shard-size"]),
    ("merge-group-config-with-method", ["merge", "--config", "{merge_yaml_bad_method}", "linear", "-m", "{model}", "-o", "{out}"], ["--config", "not both"]),
    ("merge-set-after-method", ["merge", "task-arithmetic", "--set", "lambda=0.5", "--base", "{model}", "-m", "{model_b}", "-o", "{out}"], ["--set"]),
    ("evaluate-max-new-tokens-without-generate", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--max-new-tokens", "8", "-o", "{out}"], ["--max-new-tokens", "--generate"]),
    # --- instruct-vector ------------------------------------------------------------------------
    ("iv-extract-different-hidden-size", ["instruct-vector", "extract", "--base", "{model}", "--instruct", "{narrow_model}", "-o", "{out}"], ["shape"]),
    ("iv-extract-base-missing", ["instruct-vector", "extract", "--base", "{missing}", "--instruct", "{model}", "-o", "{out}"], ["--base"]),
    ("iv-apply-alpha-nan", ["instruct-vector", "apply", "-m", "{model}", "--base", "{model}", "--instruct", "{model_b}", "--alpha", "nan", "-o", "{out}"], ["--alpha", "finite"]),
    ("iv-apply-vector-empty-dir", ["instruct-vector", "apply", "-m", "{model}", "--vector", "{empty_dir}", "-o", "{out}"], ["--vector"]),
    ("iv-apply-vector-other-model", ["instruct-vector", "apply", "-m", "{narrow_model}", "--vector", "{vector}", "-o", "{out}"], ["shape"]),
    # --- evaluate -------------------------------------------------------------------------------
    ("evaluate-backend-unknown", ["evaluate", "-m", "{model}", "--task", "ppx:{data}", "-o", "{out}"], ["--task", "ppx", "did you mean: ppl"]),
    ("evaluate-ppl-window-above-context", ["evaluate", "-m", "{short_model}", "--task", "ppl:{data}", "--set", "ppl.block_size=64", "-o", "{out}"], ["ppl.block_size", "64", "context length of 8"]),
    ("evaluate-ppl-stride-above-window", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--set", "ppl.block_size=32", "--set", "ppl.stride=64", "-o", "{out}"], ["ppl.stride", "64", "32"]),
    ("evaluate-task-file-empty", ["evaluate", "-m", "{model}", "--task", "ppl:{empty_file}", "-o", "{out}"], ["--task", "is empty"]),
    ("evaluate-task-no-spec", ["evaluate", "-m", "{model}", "--task", "ppl", "-o", "{out}"], ["--task", "BACKEND:SPEC"]),
    ("evaluate-model-corrupt", ["evaluate", "-m", "{corrupt_model}", "--task", "ppl:{data}", "-o", "{out}"], ["--model"]),
    ("evaluate-layer-by-layer-generation-task", ["evaluate", "-m", "{model}", "--task", "mt:{mt_file}", "--layer-by-layer", "-o", "{out}"], ["--layer-by-layer", "'mt'", "ppl and lm-eval"]),
    ("evaluate-device-map-unknown", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--device-map", "everywhere", "-o", "{out}"], ["--device-map", "everywhere", "auto"]),
    ("evaluate-max-memory-malformed", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--device-map", "auto", "--max-memory", "cpu=lots", "-o", "{out}"], ["--max-memory", "cpu=lots", "70GiB"]),
    ("evaluate-max-memory-without-device-map", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--max-memory", "0=10GiB", "-o", "{out}"], ["--max-memory", "--device-map"]),
    ("evaluate-device-map-and-layer-by-layer", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--device-map", "auto", "--layer-by-layer", "-o", "{out}"], ["--device-map", "--layer-by-layer"]),
    ("generate-device-map-gguf", ["generate", "-m", "{bad_gguf}", "--prompts", "{prompts}", "--device-map", "auto", "-o", "{out}"], ["--model"]),
    ("evaluate-config-is-list", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--config", "{yaml_list}", "-o", "{out}"], ["--config", "mapping"]),
    # --- generate -------------------------------------------------------------------------------
    ("generate-prompts-missing", ["generate", "-m", "{model}", "-p", "{missing}", "-o", "{out}"], ["--prompts"]),
    ("generate-output-is-dir-overwrite", ["generate", "-m", "{model}", "-p", "{prompts}", "-o", "{results_dir}", "--overwrite"],
     ["-o/--output", "is a directory", "expected a file path"]),
    ("generate-prompts-not-utf8", ["generate", "-m", "{model}", "-p", "{latin1_prompts}", "-o", "{out}"], ["--prompts", "latin1-prompts.jsonl", "line 2", "not UTF-8"]),
    ("codemix-input-not-utf8", ["codemix", "-i", "{latin1_generations}", "--expected-lang", "en", "-o", "{out}"], ["--input", "latin1-generations.jsonl", "line 2", "not UTF-8"]),
    ("generate-prompts-no-field", ["generate", "-m", "{model}", "-p", "{jsonl_no_text}", "-o", "{out}"], ["--prompts", "prompt"]),
    ("generate-decoding-unknown", ["generate", "-m", "{model}", "-p", "{prompts}", "--decoding", "sample", "-o", "{out}"], ["--decoding", "sample"]),
    ("generate-max-new-tokens-zero", ["generate", "-m", "{model}", "-p", "{prompts}", "--max-new-tokens", "0", "-o", "{out}"], ["--max-new-tokens"]),
    ("generate-model-without-tokenizer", ["generate", "-m", "{model_no_tokenizer}", "-p", "{prompts}", "-o", "{out}"], ["--model", "no tokenizer files"]),
    ("generate-hub-id-offline-not-cached", ["generate", "-m", "nobody/nothing", "-p", "{prompts}", "-o", "{out}"], ["--model", "offline"]),
    ("evaluate-model-without-tokenizer", ["evaluate", "-m", "{model_no_tokenizer}", "--task", "ppl:{data}", "-o", "{out}"], ["--model", "no tokenizer files"]),
    ("calibrate-hub-id-offline-not-cached", ["calibrate", "-m", "nobody/nothing", "-d", "{data}", "-o", "{out}"], ["--model", "offline"]),
    ("score-model-without-tokenizer", ["score", "-m", "{model_no_tokenizer}", "--scorer", "magnitude", "-o", "{out}"], ["--model", "no tokenizer files"]),
    # --- codemix --------------------------------------------------------------------------------
    ("codemix-threshold-two", ["codemix", "-i", "{generations}", "--expected-lang", "en", "--threshold", "2", "-o", "{out}"], ["--threshold", "between 0 and 1"]),
    ("codemix-lid-unknown", ["codemix", "-i", "{generations}", "--expected-lang", "en", "--lid", "langid", "-o", "{out}"], ["--lid", "langid", "did you mean"]),
    ("codemix-lang-unknown", ["codemix", "-i", "{generations}", "--expected-lang", "xx", "-o", "{out}"], ["--expected-lang", "xx"]),
    ("codemix-input-bad-jsonl", ["codemix", "-i", "{bad_jsonl}", "--field", "text", "--expected-lang", "en", "-o", "{out}"], ["--input", "line 2"]),
    ("codemix-field-missing", ["codemix", "-i", "{generations}", "--expected-lang", "en", "--field", "answer", "-o", "{out}"], ["--input", "no text field 'answer'"]),
    ("codemix-input-is-directory", ["codemix", "-i", "{empty_dir}", "--expected-lang", "en", "-o", "{out}"], ["--input"]),
    # --- quickstart -----------------------------------------------------------------------------
    ("quickstart-method-unknown", ["quickstart", "-o", "{out}", "--methods", "fft,sssu-wanda"], ["--methods", "did you mean: ssu-wanda"]),
    ("quickstart-lang-unknown", ["quickstart", "-o", "{out}", "--target-lang", "xx"], ["--target-lang", "xx"]),
    ("quickstart-same-langs", ["quickstart", "-o", "{out}", "--target-lang", "en", "--source-lang", "en"], ["--target-lang", "--source-lang"]),
    ("quickstart-freeze-ratio-above-one", ["quickstart", "-o", "{out}", "--freeze-ratio", "1.5"], ["--freeze-ratio"]),
    ("quickstart-model-missing", ["quickstart", "-o", "{out}", "-m", "{missing}"], ["--model"]),
]

if not _cuda_available():  # the case: a machine without a GPU asked for one
    CASES += [
        ("train-device-cuda-without-gpu", train("--device", "cuda"), ["--device", "'cuda' is not available", "available: cpu"]),
        ("evaluate-device-cuda-without-gpu", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "--device", "cuda", "-o", "{out}"], ["--device", "available: cpu"]),
    ]

if os.geteuid() != 0:  # root reads everything: the permission case runs only as a normal user
    CASES.append(("data-unreadable", train(data="{unreadable}"), ["--data", "permission denied"]))
    CASES.append(("train-output-read-only-parent", train(o="{read_only_dir}/run"), ["-o/--output", "not writable"]))
    CASES.append(("evaluate-output-read-only-parent", ["evaluate", "-m", "{model}", "--task", "ppl:{data}", "-o", "{read_only_dir}/eval/x"], ["-o/--output", "not writable"]))


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
    files["chat_no_assistant"] = root / "chat_no_assistant.jsonl"
    files["chat_no_assistant"].write_text('{"messages": [{"role": "user", "content": "hello"}]}\n')
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
    files["read_only_dir"] = root / "read-only"
    files["read_only_dir"].mkdir()
    files["read_only_dir"].chmod(0o555)
    _add_pipeline_files(root, files, make_model_dir, corpora)
    files["other_store"] = _other_tokenizer_store(root / "other-store", corpora)
    return files


def _other_tokenizer_store(path: Path, corpora) -> Path:
    """A token store of the Hausa text made with a tokenizer other than the models' (a real build)."""
    from adaptkit import demo
    from adaptkit.data import sources, store

    path.mkdir()
    other = demo.train_tokenizer(corpora["en"].read_text().splitlines(), vocab_size=300)
    store.write_store(path, [sources.resolve(str(corpora["ha"]))], other, ["text"], 1)
    return path


def _run_ok(*args) -> None:
    """Run a real command in this process to build a fixture (its output must be valid)."""
    from adaptkit.cli import main

    try:
        main([str(a) for a in args] + ["--quiet"])
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)


def _add_pipeline_files(root: Path, files: dict[str, Path], make_model_dir, corpora) -> None:
    """A second model, a narrower one, and calibration / score / vector dirs made by the real commands."""
    model = files["model"]
    files["model_b"] = make_model_dir("llama", 1)
    files["narrow_model"] = make_model_dir("llama", 1, hidden=32)
    files["short_model"] = make_model_dir("llama", max_position_embeddings=8)  # a context of 8 tokens
    files["calib"] = root / "calib"
    _run_ok("calibrate", "-m", model, "-d", corpora["en"], "--format", "text", "--pool", "200", "--num-samples", "4", "--block-size", "16", "-o", files["calib"])
    files["scores"] = root / "scores"
    _run_ok("score", "-m", model, "--scorer", "magnitude", "-o", files["scores"])
    files["vector"] = root / "vector"
    _run_ok("instruct-vector", "extract", "--base", model, "--instruct", files["model_b"], "-o", files["vector"])
    files["prompts"] = root / "prompts.jsonl"
    files["prompts"].write_text('{"id": "1", "prompt": "Hello"}\n')
    files["chat_jsonl"] = root / "chat.jsonl"
    files["chat_jsonl"].write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    files["generations"] = root / "generations.jsonl"
    files["generations"].write_text('{"id": "1", "response": "All human beings are born free and equal in dignity and rights."}\n')
    files["results_dir"] = root / "results-dir"  # a directory that --overwrite must not turn into a file
    files["results_dir"].mkdir()
    (files["results_dir"] / "keep.txt").write_text("kept\n")
    for name in ("prompts", "generations"):  # a Latin-1 'é' on line 2
        files[f"latin1_{name}"] = root / f"latin1-{name}.jsonl"
        files[f"latin1_{name}"].write_bytes(files[name].read_bytes() + '{"prompt": "caf\xe9", "response": "caf\xe9"}\n'.encode("latin-1"))
    files["mt_file"] = root / "mt.jsonl"
    files["mt_file"].write_text('{"src": "All human beings are born free.", "tgt": "Dukkan mutane an haife su a yantacce.", "src_lang": "en", "tgt_lang": "ha"}\n')
    files["model_missing_tensor"] = _model_without(model, "model.layers.1.mlp.up_proj.weight", root / "model-missing-tensor")
    files["model_no_tokenizer"] = root / "model-no-tokenizer"
    files["model_no_tokenizer"].mkdir()
    for name in ("config.json", "model.safetensors"):
        (files["model_no_tokenizer"] / name).write_bytes((model / name).read_bytes())
    files["merge_yaml_bad_method"] = root / "merge-bad-method.yaml"
    files["merge_yaml_bad_method"].write_text(f"merge_method: arcee_fusion\nbase_model: {model}\nmodels:\n  - model: {files['model_b']}\n")


def _model_without(model: Path, tensor: str, directory: Path) -> Path:
    """A copy of a model directory whose safetensors file lacks one tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model, directory)
    tensors = load_file(directory / "model.safetensors")
    del tensors[tensor]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


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
    assert (bad_files["results_dir"] / "keep.txt").is_file()

