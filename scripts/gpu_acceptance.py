"""One-command acceptance run of adaptkit's GPU path (CUDA or ROCm), at most about 10 minutes.

    python scripts/gpu_acceptance.py [--peak-tflops T] [--work DIR] [--seq-len 2048] [--batch-size 8]

Nothing is downloaded: the tokenizer is trained on the UDHR text that notofonttools ships and every
model is built with random weights from a config (adaptkit.demo). Checks, each "pass", "fail" or
"skipped: why", with what was measured:

- bf16 and bf16-pure: a few `adaptkit train` steps with `--precision bf16` (autocast) and, where the
  installed adaptkit accepts it, `--precision bf16-pure`; the loss must be finite and fall.
- fused_adamw: torch's fused AdamW kernel on the device gives the unfused (foreach) update, and
  adaptkit's optimizer picks it by default on this device.
- flash_attention_2 (if the flash-attn package is installed): the loss of one batch through
  `flash_attention_2` equals the SDPA loss within bf16 tolerance (relative 1e-2).
- masked_linear: the compact backward of column-masked linear layers (engine/masked_linear.py)
  gives the trainable columns of the dense weight gradient, on the GPU.
- chunked_loss: the chunked LM loss (engine/lm_loss.py) against the model's own on a 128,256-token
  vocabulary (4 x 2048 tokens): loss and every gradient in fp32 (1e-5) and bf16 autocast (2e-2), and the
  step's peak memory (torch.cuda.max_memory_allocated), which must be at most half the plain one's.
- liger_loss (if liger-kernel is installed): `loss.kernel=liger` against the model's own loss and gradients.
- step_timing: tokens/s of `adaptkit train` logging every step against every 20 steps (the host reads the
  loss only at logging steps).
- compile: `--compile` against eager with the chunked loss: tokens/s after warm-up and the final loss.
- fft_1b and ssu_wanda_1b: tokens/s, MFU and peak memory (torch.cuda.max_memory_allocated, beside
  what `adaptkit train --dry-run` plans where that flag exists) of `adaptkit train` on a ~1B-parameter Llama (TinyLlama's shape, 22 layers, hidden 2048); SSU-Wanda's
  frozen columns must stay bit-identical to the source weights.
- ddp and fsdp (2 or more GPUs): `torchrun` with NCCL, 2 processes, the one-GPU weights within 1e-4.

MFU = tokens/s x model FLOPs per token / (devices x dense bf16 peak). Model FLOPs per token are the
standard training estimate of PaLM (Chowdhery et al. 2022, appendix B): 6 N + 12 L s d, with N the
parameters of the matrix multiplications a token goes through (everything but the input embedding;
the LM head counts), L layers, s the sequence length and d the hidden size (attention scores and
values, forward and backward, with no discount for the causal mask). The same model FLOPs are used
for SSU, so its MFU compares directly with FFT's (SSU skips the weight gradients of frozen columns).

Prints one JSON summary on stdout; exit 0 when no check failed, 1 when one did, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any, Callable, Optional

from adaptkit.engine.throughput import PEAK_BF16_TFLOPS, flops_per_token, matmul_parameters, mfu, peak_tflops  # noqa: F401 (the one home)

LLAMA_1B = dict(hidden=2048, layers=22, heads=32, num_key_value_heads=4, intermediate_size=5632)
SMALL = dict(hidden=256, layers=4, heads=8)
DIST_TOLERANCE = 1e-4  # NCCL's reduction order differs from one GPU's accumulation
FLASH_RTOL = 1e-2  # bf16 keeps 8 mantissa bits
CHUNK_MODEL = dict(hidden=512, layers=2, heads=8)  # a small body under Llama 3's 128,256-token head: the logits dominate
CHUNKED_FP32_RTOL = 1e-5  # fp32 (TF32 off): chunked and plain sum in different orders
CHUNKED_BF16_RTOL = 2e-2  # bf16 autocast: the head's matmul in bf16 either way, rounded differently per chunk


def run_check(name: str, check: Callable[[], dict], results: dict) -> None:
    """Record one check: its dict (status 'pass' unless it says otherwise), or 'fail' with the error."""
    began = time.perf_counter()
    try:
        outcome = check()
    except Exception as exc:  # a failed check is reported, the others still run
        outcome = {"status": "fail", "error": f"{type(exc).__name__}: {exc}"[:500]}
    outcome.setdefault("status", "pass")
    outcome["seconds"] = round(time.perf_counter() - began, 1)
    results[name] = outcome
    print(f"[gpu-acceptance] {name}: {outcome['status']}", file=sys.stderr)


def adaptkit_cli(args: list) -> str:
    """`adaptkit ARGS` in this process (so that its peak GPU memory can be read): its stdout; raises on a non-zero exit."""
    from adaptkit.cli import main

    code, out = 0, io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code or 0
    gc.collect()
    if code:
        raise RuntimeError(f"adaptkit {' '.join(map(str, args[:1]))} exited {code}")
    return out.getvalue()


def dry_run_plan(train_args: list) -> Any:
    """What `adaptkit train --dry-run` plans for these arguments (its JSON), where this adaptkit has the flag."""
    from adaptkit.commands import train

    if "dry_run" not in train.command.__code__.co_varnames:
        return "skipped: this adaptkit has no --dry-run"
    text = adaptkit_cli([*train_args, "--dry-run"])
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return text.strip()[-2000:]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


class Workspace:
    """Data, tokenizer and random-weight models under one directory."""

    def __init__(self, root: Path, seq_len: int):
        from adaptkit import demo

        self.root = root
        lines = demo.split_corpus("ha")[0] + demo.split_corpus("en")[0]
        self.tokenizer = demo.train_tokenizer(lines, vocab_size=2048)
        repeats = max(1, math.ceil(400_000 / max(1, sum(len(line) for line in lines))))
        self.data = demo.write_lines(lines * repeats, root / "data.txt")
        self.seq_len = seq_len
        self.models: dict[str, Path] = {}

    def model(self, kind: str, vocab: int = 0, **config) -> Path:
        """A saved random-weight Llama of the given shape (built once)."""
        from adaptkit import demo

        if kind not in self.models:
            directory = self.root / f"model-{kind}"
            config.setdefault("max_position_embeddings", max(2048, self.seq_len))
            model = demo.tiny_model("llama", vocab or len(self.tokenizer), seed=0, **config)
            model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
            del model
            gc.collect()
            self.models[kind] = directory
        return self.models[kind]

    def train_args(self, model: Path, out: Path, method: str, steps: int, seq_len: int, batch: int) -> list:
        return ["train", "--model", model, "--data", self.data, "--method", method, "--max-steps", steps,
                "--seq-len", seq_len, "--batch-size", batch, "--warmup-ratio", "0", "--lr", "1e-3", "--quiet",
                "--json", "--overwrite", "-o", out]


def check_precision(ws: Workspace, precision: str) -> dict:
    """A few training steps at `precision`: finite, falling loss."""
    from adaptkit.engine.config import TrainConfig

    if precision not in typing.get_args(TrainConfig.model_fields["precision"].annotation):
        return {"status": "skipped: not available in this adaptkit"}
    out = ws.root / f"run-{precision}"
    adaptkit_cli([*ws.train_args(ws.model("small", **SMALL), out, "fft", 8, 256, 8), "--precision", precision, "--set", "log_steps=1"])
    losses = [row["loss"] for row in metrics(out)]
    ok = all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    return {"status": "pass" if ok else "fail", "losses": [round(x, 4) for x in losses]}


def check_fused_adamw() -> dict:
    """Fused AdamW on the device equals the foreach update; adaptkit picks fused here by default."""
    import torch

    from adaptkit.engine.optim import fused_available

    device = torch.device("cuda")
    generator = torch.Generator(device).manual_seed(0)
    start = torch.randn(4096, 64, device=device, generator=generator)
    pairs = [(torch.nn.Parameter(start.clone()), fused) for fused in (True, False)]
    optimizers = [torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1, fused=fused, foreach=None if fused else True) for p, fused in pairs]
    for _ in range(5):
        grad = torch.randn(start.shape, device=device, generator=generator)
        for (p, _), optimizer in zip(pairs, optimizers):
            p.grad = grad.clone()
            optimizer.step()
    difference = float((pairs[0][0] - pairs[1][0]).abs().max())
    chosen = bool(fused_available(device))
    return {"status": "pass" if difference <= 1e-5 and chosen else "fail", "max_abs_difference": difference, "adaptkit_default_fused": chosen}


def batch_loss(model_dir: Path, attn: str, input_ids) -> float:
    import torch

    from adaptkit.io.models import load_causal_lm, resolve_model_source

    model = load_causal_lm(resolve_model_source(str(model_dir), "--model"), torch.bfloat16, False, attn).to("cuda")
    with torch.no_grad():
        loss = float(model(input_ids=input_ids, labels=input_ids).loss)
    del model
    gc.collect()
    return loss


def check_flash_attention(ws: Workspace) -> dict:
    """flash_attention_2 and SDPA give the same loss on the same batch (bf16 weights)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("flash_attn") is None:
        return {"status": "skipped: flash-attn is not installed"}
    model_dir = ws.model("small", **SMALL)
    ids = torch.randint(4, len(ws.tokenizer), (4, 512), generator=torch.Generator().manual_seed(0)).to("cuda")
    flash, sdpa = batch_loss(model_dir, "flash_attention_2", ids), batch_loss(model_dir, "sdpa", ids)
    ok = abs(flash - sdpa) <= FLASH_RTOL * abs(sdpa)
    return {"status": "pass" if ok else "fail", "loss_flash_attention_2": flash, "loss_sdpa": sdpa}


def check_masked_linear(device: str = "cuda") -> dict:
    """Column-masked linear layers: the compact backward gives the dense gradient's trainable columns."""
    import torch

    from adaptkit import demo
    from adaptkit.engine import masked_linear
    from adaptkit.engine.masks import MaskSet, UpdateMask
    from adaptkit.engine.optim import apply_plan
    from adaptkit.engine.plan import TrainingPlan

    worst = 0.0
    ids = torch.randint(4, 500, (2, 128), generator=torch.Generator().manual_seed(1)).to(device)
    dense = demo.tiny_model("llama", 512, seed=0, **SMALL).to(device)
    dense(input_ids=ids, labels=ids).loss.backward()
    model = demo.tiny_model("llama", 512, seed=0, **SMALL).to(device)
    columns = torch.rand(SMALL["hidden"], generator=torch.Generator().manual_seed(2)) > 0.5
    names = [n for n, _ in model.named_parameters() if n.endswith(("q_proj.weight", "gate_proj.weight"))]
    plan = TrainingPlan.from_masks(model, MaskSet({n: UpdateMask("column", columns) for n in names}, {}))
    plan.compact_linear_grads = True
    trainable = apply_plan(plan, sharded=False)
    switched = masked_linear.install_for_plan(plan, trainable)
    model(input_ids=ids, labels=ids).loss.backward()
    reference = dict(dense.named_parameters())
    for name in names:
        expected = reference[name].grad[:, columns.to(device)]
        got = trainable.compact[name].compact.grad
        worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
    ok = len(switched) == len(names) and worst <= 1e-4
    return {"status": "pass" if ok else "fail", "layers_switched": len(switched), "max_relative_difference": worst}


def _loss_and_grads(model, ids, loss_fn, autocast: bool) -> tuple[float, dict, int]:
    """One forward and backward through `loss_fn` (engine/lm_loss.py's LMLoss): the loss, the gradients
    and, on a GPU, the peak memory of the step over what was allocated before it."""
    import torch

    model.zero_grad(set_to_none=True)
    cuda = ids.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    context = torch.autocast(ids.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        loss = loss_fn(model, {"input_ids": ids, "labels": ids})
    loss.backward()
    peak = torch.cuda.max_memory_allocated() - before if cuda else 0
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads, peak


def _relative(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-30)) for n in b)


def check_chunked_loss(device: str = "cuda", vocab: int = 128256, batch: int = 4, seq_len: int = 2048) -> dict:
    """The chunked LM loss (loss.chunked=on) against the model's own: loss and every gradient (fp32 within
    CHUNKED_FP32_RTOL; bf16 autocast within CHUNKED_BF16_RTOL), and the step's peak memory (at most half)."""
    import torch

    from adaptkit import demo
    from adaptkit.engine.lm_loss import LMLoss

    torch.backends.cuda.matmul.allow_tf32 = False
    model = demo.tiny_model("llama", vocab, seed=0, **CHUNK_MODEL, max_position_embeddings=max(2048, seq_len)).to(device)
    ids = torch.randint(4, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(3)).to(device)
    result: dict[str, Any] = {"vocab": vocab, "tokens": batch * seq_len}
    ok = True
    for name, autocast, tolerance in (("fp32", False, CHUNKED_FP32_RTOL), ("bf16", True, CHUNKED_BF16_RTOL)):
        plain_loss, plain_grads, plain_peak = _loss_and_grads(model, ids, LMLoss(False), autocast)
        loss, grads, peak = _loss_and_grads(model, ids, LMLoss(True), autocast)
        worst = _relative(grads, plain_grads)
        result[name] = {"loss_plain": plain_loss, "loss_chunked": loss, "max_relative_grad_difference": worst,
                        "peak_step_gib_plain": round(plain_peak / 2**30, 3), "peak_step_gib_chunked": round(peak / 2**30, 3),
                        "peak_ratio": round(peak / plain_peak, 3) if plain_peak else None}
        ok &= abs(loss - plain_loss) <= tolerance * abs(plain_loss) and worst <= tolerance
        ok &= device != "cuda" or peak <= 0.5 * plain_peak
    return {"status": "pass" if ok else "fail", **result}


def check_liger_loss(device: str = "cuda") -> dict:
    """loss.kernel=liger (Liger-Kernel's fused linear cross-entropy) against the model's own loss, bf16 autocast."""
    import importlib.util

    import torch

    from adaptkit import demo
    from adaptkit.engine.lm_loss import LMLoss

    if importlib.util.find_spec("liger_kernel") is None:
        return {"status": "skipped: liger-kernel is not installed"}
    model = demo.tiny_model("llama", 128256, seed=0, **CHUNK_MODEL).to(device)
    ids = torch.randint(4, 128256, (2, 1024), generator=torch.Generator().manual_seed(4)).to(device)
    plain_loss, plain_grads, plain_peak = _loss_and_grads(model, ids, LMLoss(False), True)
    loss, grads, peak = _loss_and_grads(model, ids, LMLoss(True, "liger"), True)
    worst = _relative(grads, plain_grads)
    ok = abs(loss - plain_loss) <= CHUNKED_BF16_RTOL * abs(plain_loss) and worst <= CHUNKED_BF16_RTOL
    return {"status": "pass" if ok else "fail", "loss_plain": plain_loss, "loss_liger": loss, "max_relative_grad_difference": worst,
            "peak_ratio": round(peak / plain_peak, 3) if plain_peak else None}


def check_step_timing(ws: Workspace, steps: int = 40) -> dict:
    """Tokens/s of `adaptkit train` logging every step (a host read per step) and every `steps // 2` steps
    (none between logging steps), side by side, over the second half of the run."""
    rows = {}
    for log_steps in (1, steps // 2):
        out = ws.root / f"run-timing-{log_steps}"
        adaptkit_cli([*ws.train_args(ws.model("small", **SMALL), out, "fft", steps, 512, 8), "--precision", "bf16",
                      "--set", f"log_steps={log_steps}"])
        window = [r for r in metrics(out) if r["step"] > steps // 2]  # the second half: warm-up (and compiling) excluded
        rows[f"log_steps={log_steps}"] = round(sum(r["tokens_per_s"] for r in window) / len(window), 1)
    quiet, chatty = rows[f"log_steps={steps // 2}"], rows["log_steps=1"]
    return {"tokens_per_s": rows, "speedup_without_per_step_reads": round(quiet / chatty, 3)}


def check_compile(ws: Workspace) -> dict:
    """--compile against eager with the chunked loss (loss.chunked=on): tokens/s after warm-up, and the loss."""
    result = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = ws.root / f"run-{name}"
        adaptkit_cli([*ws.train_args(ws.model("small", **SMALL), out, "fft", 30, 512, 8), "--precision", "bf16",
                      "--set", "log_steps=10", "--set", "loss.chunked=on", *extra])
        rows = metrics(out)
        result[name] = {"tokens_per_s": round(rows[-1]["tokens_per_s"], 1), "final_loss": round(rows[-1]["loss"], 4)}
    losses = result["eager"]["final_loss"], result["compiled"]["final_loss"]
    ok = abs(losses[0] - losses[1]) <= 0.05 * abs(losses[0])
    return {"status": "pass" if ok else "fail", **result, "speedup": round(result["compiled"]["tokens_per_s"] / result["eager"]["tokens_per_s"], 3)}


def frozen_identical(run_dir: Path, source: Path) -> int:
    """Frozen entries (by the run's saved mask) compared with the source; returns how many; raises if one moved."""
    import torch
    from safetensors.torch import load_file

    from adaptkit.engine.masks import load_mask_set

    masks = load_mask_set(run_dir / "mask", "mask").masks
    final = load_file(str(run_dir / "final" / "model.safetensors"))
    before = load_file(str(source / "model.safetensors"))
    count = 0
    for name, mask in masks.items():
        frozen = ~mask.expand(tuple(before[name].shape))
        if not torch.equal(final[name][frozen], before[name][frozen]):
            raise AssertionError(f"frozen entries of {name} changed")
        count += int(frozen.sum())
    return count


def check_throughput(ws: Workspace, method: str, args: argparse.Namespace, peak: Optional[float]) -> dict:
    """tokens/s (last logging window: warm-up excluded), MFU and peak memory of a ~1B Llama run."""
    import torch

    from adaptkit import demo

    model_dir = ws.model("1b", vocab=32000, **LLAMA_1B)
    config = demo.tiny_config("llama", 32000, **LLAMA_1B)
    out, extra = ws.root / f"run-{method}", []
    if method.startswith("ssu"):
        calib = ws.root / "calib"
        adaptkit_cli(["calibrate", "-m", model_dir, "-d", ws.data, "-o", calib, "--num-samples", "16", "--block-size", "512", "--pool", "2000"])
        extra = ["--calib", calib]
    train_args = [*ws.train_args(model_dir, out, method, args.steps, args.seq_len, args.batch_size), "--precision", "bf16",
                  "--micro-batch-size", args.micro_batch_size, "--set", f"log_steps={args.steps // 2}", *extra]
    planned = dry_run_plan(train_args)  # the planned memory, beside the measured peak (no check: its format is the command's)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    adaptkit_cli(train_args)
    peak_bytes = torch.cuda.max_memory_allocated()
    tokens_per_s = metrics(out)[-1]["tokens_per_s"]
    with torch.device("meta"):
        n = matmul_parameters(__import__("transformers").AutoModelForCausalLM.from_config(config))
    per_token = flops_per_token(n, config.num_hidden_layers, args.seq_len, config.hidden_size)
    result = {"tokens_per_s": round(tokens_per_s, 1), "matmul_parameters": n, "model_flops_per_token": per_token,
              "mfu": None if peak is None else round(mfu(tokens_per_s, per_token, peak), 4),
              "mfu_in_metrics": metrics(out)[-1].get("mfu"),  # what the run itself logged (engine/metrics.py)
              "peak_memory_gib": round(peak_bytes / 2**30, 2), "dry_run_plan": planned}
    if method.startswith("ssu"):
        result["frozen_entries_bit_identical"] = frozen_identical(out, model_dir)
    return result


def check_distributed(ws: Workspace, mode: str, reference: dict) -> dict:
    """`torchrun` with 2 GPUs (NCCL) and --distributed MODE: the one-GPU weights within DIST_TOLERANCE."""
    import torch
    from safetensors.torch import load_file

    out = ws.root / f"run-{mode}"
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "adaptkit",
           *map(str, ws.train_args(ws.model("small", **SMALL), out, "fft", 6, 256, 4)), "--precision", "fp32", "--distributed", mode]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode:
        return {"status": "fail", "error": done.stderr[-800:]}
    weights = load_file(str(out / "final" / "model.safetensors"))
    worst = max(float((weights[k] - v).abs().max()) for k, v in reference.items())
    return {"status": "pass" if worst <= DIST_TOLERANCE else "fail", "max_abs_difference": worst, "tolerance": DIST_TOLERANCE}


def one_gpu_reference(ws: Workspace) -> dict:
    """The one-GPU run the multi-GPU runs must match (same global batch, two micro-batches)."""
    from safetensors.torch import load_file

    out = ws.root / "run-one-gpu"
    adaptkit_cli([*ws.train_args(ws.model("small", **SMALL), out, "fft", 6, 256, 4), "--precision", "fp32", "--micro-batch-size", "2"])
    return load_file(str(out / "final" / "model.safetensors"))


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of one device (default: looked up from its name)")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step of the ~1B runs")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="steps of the ~1B runs (tokens/s from the second half)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_acceptance: no CUDA or ROCm GPU is visible to torch; run it on a machine with one", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_tflops(name)
    summary: dict[str, Any] = {"device": name, "devices": torch.cuda.device_count(), "backend": "rocm" if torch.version.hip else "cuda",
                               "torch": torch.__version__, "peak_bf16_tflops": peak, "checks": {}}
    with tempfile.TemporaryDirectory(prefix="adaptkit-gpu-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ws, checks = Workspace(root, args.seq_len), summary["checks"]
        run_check("bf16", lambda: check_precision(ws, "bf16"), checks)
        run_check("bf16_pure", lambda: check_precision(ws, "bf16-pure"), checks)
        run_check("fused_adamw", check_fused_adamw, checks)
        run_check("flash_attention_2", lambda: check_flash_attention(ws), checks)
        run_check("masked_linear", check_masked_linear, checks)
        run_check("chunked_loss", check_chunked_loss, checks)
        run_check("liger_loss", check_liger_loss, checks)
        run_check("step_timing", lambda: check_step_timing(ws), checks)
        run_check("compile", lambda: check_compile(ws), checks)
        run_check("fft_1b", lambda: check_throughput(ws, "fft", args, peak), checks)
        run_check("ssu_wanda_1b", lambda: check_throughput(ws, "ssu-wanda", args, peak), checks)
        if torch.cuda.device_count() >= 2:
            reference: dict = {}
            run_check("one_gpu_reference", lambda: reference.update(one_gpu_reference(ws)) or {}, checks)
            for mode in ("ddp", "fsdp"):
                run_check(mode, lambda mode=mode: check_distributed(ws, mode, reference), checks)
        else:
            checks["ddp"] = checks["fsdp"] = {"status": "skipped: needs 2 or more GPUs"}
    failed = sorted(k for k, v in checks.items() if v["status"] == "fail")
    summary["failed"] = failed
    print(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
