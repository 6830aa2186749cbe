"""Data of benchmarks/study_smollm2.yaml: UDHR Hausa (train / held-out), English UDHR (replay and
calibration), held-out chat prompts and the source model's own answers to them (chat JSONL).

    python benchmarks/study_smollm2_data.py --model SMOLLM2_DIR -o benchmarks/study_data

Offline: the UDHR text comes from notofonttools; the answers from `adaptkit generate` (greedy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from adaptkit import demo

PROMPTS = [
    "What is the capital of France, and why is it famous?",
    "Explain in two sentences why the sky is blue.",
    "Give three tips for staying healthy.",
    "Write a short poem about the sea.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Summarize the story of Cinderella in three sentences.",
    "Why do we have seasons on Earth?",
    "List four common fruits and their colours.",
    "What does a computer's memory do?",
    "Describe a good way to learn a new language.",
    "What is photosynthesis?",
    "Write a polite email asking a colleague for a meeting.",
    "Why is sleep important?",
    "Explain what a noun is, with two examples.",
    "What should I pack for a day at the beach?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/study_data"))
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    for lang in ("ha", "en"):
        train, test = demo.split_corpus(lang)
        demo.write_lines(train, args.output / f"{lang}-train.txt")
        demo.write_lines(test, args.output / f"{lang}-test.txt")
    prompts = args.output / "chat-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "adaptkit", "--overwrite", "generate", "--model", args.model, "--prompts", str(prompts), "--format", "chat",
                    "--max-new-tokens", str(args.max_new_tokens), "-o", str(args.output / "chat-answers.jsonl")], check=True)


if __name__ == "__main__":
    main()
