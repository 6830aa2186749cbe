"""Benchmark: adaptkit perplexity vs lm-eval's loglikelihood_rolling, and codemix throughput.

Both perplexity implementations score the same model on the same documents in the same
run (same block size, disjoint windows, BOS/EOT prefix), and their NLL sums are compared.
Codemix throughput is measured on UDHR paragraphs (English, Hausa and mixed).

    python benchmarks/bench_eval.py [--block-size 256] [--batch-size 8] [--repeats 3] [--responses 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def best_of(repeats: int, fn):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--responses", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from adaptkit import demo
    from adaptkit.evals.codemix import analyze
    from adaptkit.evals.lid import load_lid
    from adaptkit.evals.perplexity import perplexity

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    en, ha = list(demo.udhr_paragraphs("en")), list(demo.udhr_paragraphs("ha"))
    texts = en + ha
    tokenizer = demo.train_tokenizer(texts, vocab_size=2000)
    model = demo.tiny_model("llama", len(tokenizer), hidden=args.hidden, layers=args.layers, heads=4).eval()
    params = sum(p.numel() for p in model.parameters())
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu", max_length=args.block_size)
    scenarios = {"paragraphs": texts, "long documents": [" ".join(en), " ".join(ha)] * 2}
    ppl_rows = {}
    for scenario, docs in scenarios.items():
        requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(docs)]
        ours_s, ours = best_of(args.repeats, lambda: perplexity(model, tokenizer, docs, block_size=args.block_size,
                                                                stride=args.block_size, batch_size=args.batch_size))
        with contextlib.redirect_stderr(io.StringIO()):
            theirs_s, theirs = best_of(args.repeats, lambda: -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True)))
        ppl_rows[scenario] = {"documents": len(docs), "tokens_scored": ours.tokens, "adaptkit_ppl_s": ours_s,
                              "lm_eval_rolling_s": theirs_s, "speedup_vs_lm_eval": theirs_s / ours_s,
                              "nll_rel_diff": abs(ours.nll_sum - theirs) / abs(theirs), "ppl": ours.ppl}

    rows = []
    for i in range(args.responses):
        j = i % min(len(en), len(ha))
        kind = i % 3
        rows.append({"model": ["en", "ha", "mixed"][kind], "response": [en[j], ha[j], en[j] + " " + ha[j]][kind]})
    codemix = {}
    for backend, detail in (("py3langid", False), ("py3langid", True), ("pycld2", False), ("pycld2", True)):
        lid = load_lid(backend)
        seconds, report = best_of(1, lambda: analyze(rows, lid, "en", ["ha"], 0.9, detail=detail))
        codemix[f"{backend}{' +sentence/word detail' if detail else ''}"] = {
            "responses_per_s": len(rows) / seconds, "pct_code_mixed": report["summary"]["pct_code_mixed"]}

    result = {
        "model_parameters": params,
        "block_size": args.block_size,
        "batch_size": args.batch_size,
        "perplexity": ppl_rows,
        "codemix": codemix,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model: llama {args.layers}x{args.hidden}, {params / 1e6:.2f}M parameters; UDHR en+ha; block {args.block_size}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, best of {args.repeats}")
    for scenario, r in ppl_rows.items():
        print(f"perplexity [{scenario}: {r['documents']} docs, {r['tokens_scored']} tokens]  adaptkit {r['adaptkit_ppl_s']:.3f} s   "
              f"lm-eval loglikelihood_rolling {r['lm_eval_rolling_s']:.3f} s   speed ratio {r['speedup_vs_lm_eval']:.2f}x "
              f"(NLL rel. diff {r['nll_rel_diff']:.1e})")
    for name, c in codemix.items():
        print(f"codemix  {name:<32} {c['responses_per_s']:8.0f} responses/s   ({c['pct_code_mixed']:.1f}% code-mixed of {len(rows)})")


if __name__ == "__main__":
    main()
