"""Wanda as the SSU paper writes it vs as its reference code computes it: how many frozen columns they share.

    python benchmarks/bench_wanda_variants.py --model /path/to/SmolLM2-135M-Instruct [--blocks 16] [--block-size 256]

Runs the CLI as a user would: `adaptkit calibrate` (UDHR English + Hausa, plain text), `adaptkit score
--scorer wanda` (paper: |W_ij| * ||X_j||_2, summed over rows) and `--set variant=reference`
(gucci-j/ssu: ||W_:,j||_2 * mean_t x_tj^2; 1-D parameters |w| * (1 + E[x^2])) on the same calibration
set, then `adaptkit mask --freeze-ratio 0.5` for both. Prints, per parameter kind and overall, the
share of frozen units that both variants freeze (columns of matrices, entries of 1-D parameters;
both variants freeze the same number k per parameter, so share = |A ∩ B| / k), and the share two
independent random masks of the same k would have in expectation (the ratio, 0.5) for reference.
`--json` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def adaptkit(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "adaptkit", *args, "--overwrite"], check=True, env=env, stdout=subprocess.DEVNULL)


def frozen_units(mask_dir: Path) -> dict[str, tuple[str, "object"]]:
    """Parameter name -> (granularity, bool tensor True where the unit is frozen)."""
    from adaptkit.io.mask_files import load_mask_file

    masks, _ = load_mask_file(mask_dir)
    return {name: (unit, ~trainable.bool()) for name, (unit, trainable) in masks.items()}


def overlap_rows(paper: dict, reference: dict) -> list[dict]:
    """Rows {kind, parameters, frozen, shared, share} per module kind, then matrices, 1-D parameters and the total."""
    from adaptkit.scoring.parameters import module_group

    groups: dict[str, list[int]] = {}
    units: dict[str, str] = {}
    for name, (unit, frozen) in paper.items():
        units[module_group(name)] = unit
        row = groups.setdefault(module_group(name), [0, 0, 0])
        row[0] += 1
        row[1] += int(frozen.sum())
        row[2] += int((frozen & reference[name][1]).sum())
    rows = [{"kind": kind, "parameters": n, "frozen": f, "shared": s, "share": s / max(f, 1)} for kind, (n, f, s) in groups.items()]
    subsets = {"matrices (columns)": [r for r in rows if units[r["kind"]] == "column"],
               "1-D (entries)": [r for r in rows if units[r["kind"]] == "element"], "total": list(rows)}
    for label, members in subsets.items():
        n, f, s = (sum(r[key] for r in members) for key in ("parameters", "frozen", "shared"))
        rows.append({"kind": label, "parameters": n, "frozen": f, "shared": s, "share": s / max(f, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF model directory (e.g. a dequantized SmolLM2-135M-Instruct)")
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--freeze-ratio", type=float, default=0.5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from adaptkit import demo

    with tempfile.TemporaryDirectory(prefix="bench-wanda-") as tmp:
        root = Path(tmp)
        text = demo.write_lines(demo.split_corpus("en")[0] + demo.split_corpus("ha")[0], root / "udhr-en-ha.txt")
        adaptkit("calibrate", "--model", args.model, "--data", str(text), "--format", "text",
                 "--num-samples", str(args.blocks), "--block-size", str(args.block_size), "-o", str(root / "calib"))
        frozen = {}
        for variant in ("paper", "reference"):
            adaptkit("score", "--model", args.model, "--calib", str(root / "calib"), "--scorer", "wanda",
                     "--set", f"variant={variant}", "-o", str(root / f"scores-{variant}"))
            adaptkit("mask", "--scores", str(root / f"scores-{variant}"), "--freeze-ratio", str(args.freeze_ratio),
                     "-o", str(root / f"masks-{variant}"))
            frozen[variant] = frozen_units(root / f"masks-{variant}")
    rows = overlap_rows(frozen["paper"], frozen["reference"])
    if args.json:
        print(json.dumps({"model": args.model, "blocks": args.blocks, "block_size": args.block_size,
                          "freeze_ratio": args.freeze_ratio, "rows": rows}, indent=1))
        return
    print(f"wanda paper vs reference, freeze ratio {args.freeze_ratio}, {args.blocks} x {args.block_size} tokens (UDHR en+ha)")
    print(f"{'kind':<26}{'params':>7}{'frozen units':>14}{'shared':>12}{'share':>9}")
    for r in rows:
        print(f"{r['kind']:<26}{r['parameters']:>7}{r['frozen']:>14,}{r['shared']:>12,}{r['share']:>9.2%}")
    print(f"(two independent random masks freezing the same k per parameter would share {args.freeze_ratio:.0%} in expectation)")


if __name__ == "__main__":
    main()
