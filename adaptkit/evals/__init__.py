"""Evaluation library: perplexity, evaluation runs over several models, generation
tasks scored with chrF/chrF++, code-mixing analysis and the report (JSON, Markdown, plots).

Python API used by `adaptkit evaluate`, `adaptkit codemix` and `adaptkit quickstart`:

- `adaptkit.evals.perplexity.perplexity(model, tokenizer, texts, block_size, stride, batch_size)`
  -> `PerplexityResult(nll_sum, tokens, bytes, documents, ppl, bits_per_byte)`
- `adaptkit.evals.runner.run_evaluation(models, tasks, params)` -> `EvalRun`
- `adaptkit.evals.report.write_report(run, directory, baseline, source_tasks, target_tasks)`
- `adaptkit.evals.suites.expand_suite("ssu-paper", {"lang": "ha", "flores": DIR, ...})` -> `Suite`
  (tagged task arguments, the backend presets, and what cannot run with why)
- `adaptkit.evals.layouts.read_flores(...)` / `read_xlsum(...)`: the released FLORES-200 / XL-SUM layouts
- `adaptkit.evals.codemix.analyze(...)` and `adaptkit.evals.codemix.write_codemix_report(...)`

Modules here import torch / transformers / matplotlib inside functions only.
"""
