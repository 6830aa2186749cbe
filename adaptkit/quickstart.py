"""The quickstart: training methods compared side by side on the embedded demo, in about a minute on a CPU.

1. data: UDHR text (from the `notofonttools` package) in a source language (default English) and
   a target language (default Hausa), split into training and held-out paragraphs;
2. a byte-level BPE tokenizer trained on both, and a tiny model (default Llama, 4 layers) first
   trained on the source language with full fine-tuning: the stand-in for a source-centric base;
3. every requested method adapts that base to the target language on the one engine, with the
   same data, steps and optimizer settings (one `adaptkit train` run per method, in runs/);
4. each adapted model and the base are scored on held-out text of both languages: the mean
   token loss on target text (adaptation) and on source text (forgetting).

Writes <output>/results.json and <output>/results.md. Methods that need inputs the demo does not
make (a mask or calibration set) are refused up front; required method parameters get demo values
(layer-freeze: the lower half of the layers).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from adaptkit.errors import InputError


@dataclass
class QuickstartOptions:
    arch: str = "llama"
    source_lang: str = "en"
    target_lang: str = "ha"
    steps: int = 40
    pretrain_steps: int = 150
    seq_len: int = 64
    batch_size: int = 8
    lr: float = 3e-3
    layers: int = 4
    hidden: int = 64
    vocab_size: int = 512
    seed: int = 42


def runnable_methods() -> list[str]:
    """Registered methods the demo can run (those that need no mask or calibration set)."""
    from adaptkit.registry import get_registry

    specs = get_registry().specs.get("method", {})
    return [name for name, spec in sorted(specs.items()) if not ({"mask", "calibration"} & set(spec.needs))]


def resolve_methods(text: str, overrides: dict[str, dict[str, Any]], layers: int) -> dict[str, dict[str, Any]]:
    """Method name -> validated parameters for `--methods` and `--set METHOD.KEY=VALUE`; errors before any work."""
    from adaptkit.registry import get_spec

    names = runnable_methods() if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise InputError("--methods: give a comma list of methods (see `adaptkit plugins --kind method`) or 'all'")
    demo_values = {"layer-freeze": {"layers": f"0-{max(0, layers // 2 - 1)}"}}
    chosen: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        spec = get_spec("method", name, "--methods")
        missing = {"mask", "calibration"} & set(spec.needs)
        if missing:
            raise InputError(f"--methods: '{name}' needs a {' and a '.join(sorted(missing))} set, which the quickstart does not make; run it with `adaptkit train`")
        params = {**demo_values.get(name, {}), **overrides.get(name, {})}
        spec.validate_params(params, f"--set {name}.*")
        chosen[name] = params
    unknown = set(overrides) - set(chosen)
    if unknown:
        raise InputError(f"--set: parameters for '{sorted(unknown)[0]}', which is not among --methods ({', '.join(chosen)})")
    return chosen


def heldout_loss(model_dir: Path, text_file: Path, seq_len: int, batch_size: int = 16) -> float:
    """Mean next-token loss of a model on the held-out blocks of a text file."""
    import torch

    from adaptkit.data.corpus import load_blocks
    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model_source

    source = resolve_model_source(model_dir)
    model = load_causal_lm(source, torch.float32)
    blocks = load_blocks([str(text_file)], load_tokenizer(source), seq_len)
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, blocks.shape[0], batch_size):
            batch = blocks[start:start + batch_size]
            total += float(model(input_ids=batch, labels=batch).loss) * batch.shape[0]
            count += batch.shape[0]
    return total / max(1, count)


def _write_data(root: Path, options: QuickstartOptions) -> dict[str, Path]:
    from adaptkit import demo

    files = {}
    for role, lang in (("source", options.source_lang), ("target", options.target_lang)):
        train, test = demo.split_corpus(lang)
        files[role] = demo.write_lines(train, root / f"{role}-{lang}.txt")
        files[f"{role}-test"] = demo.write_lines(test, root / f"{role}-{lang}-test.txt")
    return files


def _train(run_dir: Path, model: Path, data: Path, method: str, params: dict, steps: int, options: QuickstartOptions, log) -> Any:
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train

    config = TrainConfig(
        model=str(model), data={"paths": [str(data)], "seq_len": options.seq_len}, method=method, method_params=params,
        batch_size=options.batch_size, max_steps=steps, optimizer={"lr": options.lr}, seed=options.seed,
        log_steps=max(1, steps // 4),
    )
    return train(config, run_dir, log=log)


def run_quickstart(output: Path, methods: dict[str, dict[str, Any]], options: QuickstartOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the demo under `output` and compare `methods`; returns the results (also in results.json/md)."""
    from adaptkit import demo
    from adaptkit.io.atomic import write_text_atomic

    output.mkdir(parents=True, exist_ok=True)
    (output / "data").mkdir(parents=True, exist_ok=True)
    data = _write_data(output / "data", options)
    texts = [line for role in ("source", "target") for line in data[role].read_text(encoding="utf-8").splitlines()]
    tokenizer = demo.train_tokenizer(texts, vocab_size=options.vocab_size)
    initial = output / "initial"
    demo.tiny_model(options.arch, len(tokenizer), seed=options.seed, hidden=options.hidden, layers=options.layers).save_pretrained(initial)
    tokenizer.save_pretrained(initial)
    log(f"pre-training the tiny {options.arch} on {options.source_lang} ({options.pretrain_steps} steps)")
    base = _train(output / "runs" / "base", initial, data["source"], "fft", {}, options.pretrain_steps, options, lambda m: None).final_dir
    rows = [{"method": "base", **_scores(base, data, options)}]
    for method, params in methods.items():
        log(f"adapting with {method} ({options.steps} steps)")
        result = _train(output / "runs" / method, base, data["target"], method, params, options.steps, options, log)
        rows.append({
            "method": method, "parameters": params, **_scores(result.final_dir, data, options),
            "trainable_fraction": result.trainable / max(1, result.total), "seconds": round(result.seconds, 3),
            "run": str(result.run_dir),
        })
    results = {"options": asdict(options), "rows": rows}
    write_text_atomic(output / "results.md", results_table(results))
    write_text_atomic(output / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def _scores(model_dir: Path, data: dict[str, Path], options: QuickstartOptions) -> dict[str, float]:
    return {
        "target_loss": heldout_loss(model_dir, data["target-test"], options.seq_len),
        "source_loss": heldout_loss(model_dir, data["source-test"], options.seq_len),
    }


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows: held-out losses (perplexities) per method and changes against the base model."""
    options = results["options"]
    base = results["rows"][0]
    target, source = options["target_lang"], options["source_lang"]
    columns = ["method", "trainable", f"{target} loss (ppl)", "change", f"{source} loss (ppl)", "change", "seconds"]
    rows = []
    for row in results["rows"]:
        cells = [row["method"], f"{100 * row['trainable_fraction']:.1f}%" if "trainable_fraction" in row else "-"]
        for key in ("target_loss", "source_loss"):
            cells.append(f"{row[key]:.3f} ({math.exp(row[key]):.1f})")
            cells.append("-" if row is base else f"{row[key] - base[key]:+.3f}")
        cells.append(f"{row['seconds']:.1f}" if "seconds" in row else "-")
        rows.append(cells)
    return columns, rows


def results_table(results: dict[str, Any]) -> str:
    """The comparison as a Markdown document."""
    options = results["options"]
    columns, rows = table_rows(results)
    lines = [
        f"# Quickstart: {options['source_lang']} -> {options['target_lang']}, tiny {options['arch']}, {options['steps']} steps per method",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["", f"Lower is better. Adaptation: lower {options['target_lang']} loss; forgetting: higher {options['source_lang']} loss than the base.", ""]
    return "\n".join(lines)
