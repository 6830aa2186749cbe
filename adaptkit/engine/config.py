"""The training configuration: defaults from the SSU paper, validated by pydantic.

Paper defaults (SSU, continual pre-training): AdamW, lr 5e-5 with cosine decay, 5%
warmup, weight decay 0.01, 512-token blocks, batch 32. `batch_size` is the global
number of sequences per optimizer step, whatever the number of processes: the engine
derives gradient accumulation from it and `micro_batch_size`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """Unknown keys are errors; so is a non-finite number (`--lr inf` would train to NaN weights)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(Section):
    paths: list[str] = Field(default_factory=list, description="Text/JSONL files or HF dataset directories.")
    text_field: str = "text"
    seq_len: int = Field(512, gt=0, description="Tokens per packed block.")
    format: Literal["auto", "text", "jsonl", "hf"] = "auto"
    cache: bool = True
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="Blocks held out of training (seeded) as the eval set 'validation'.")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class OptimizerConfig(Section):
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    fused: Optional[bool] = Field(None, description="Fused AdamW kernel; default: on where torch supports it.")


class ScheduleConfig(Section):
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class EvalConfig(Section):
    """Evaluation during training: perplexity and bits per byte of each set (the `ppl` task's accounting)."""

    data: list[str] = Field(default_factory=list, description="Eval sets NAME=SPEC[:ROLE], ROLE source or target.")
    steps: Optional[int] = Field(None, gt=0, description="Evaluate every N steps (and at step 0 and the end).")
    block_size: Optional[int] = Field(None, ge=2, description="Window of model inputs (default: as `adaptkit evaluate`'s ppl).")
    batch_size: int = Field(8, gt=0, description="Windows per forward pass.")
    text_field: str = "text"

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TrainConfig(Section):
    model: str = Field("", description="Local HF directory, .gguf file or Hub id.")
    trust_remote_code: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    method: str = "fft"
    method_params: dict[str, Any] = Field(default_factory=dict, description="The method's parameters (--set KEY=V, --mask, --calib, --freeze-ratio).")
    freeze_special_tokens: Optional[bool] = Field(
        None, description="Keep the embedding and LM-head rows of the special and chat-template tokens fixed (any method); default: the method's (on for ssu-* and hft, as the SSU reference)."
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch_size: int = Field(32, gt=0, description="Sequences per optimizer step (global).")
    micro_batch_size: Optional[int] = Field(None, gt=0, description="Sequences per forward pass per process.")
    max_steps: Optional[int] = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "bf16-pure"] = Field(
        "auto", description="fp32; bf16 (autocast, fp32 master weights); bf16-pure (bf16 weights and optimizer state, the HF Trainer's --bf16 on a bf16 model); auto = bf16 on a GPU that has it, else fp32."
    )
    save_steps: Optional[int] = Field(None, ge=0, description="Checkpoint every N steps; default: every 10% of the steps (rounded up); 0: none.")
    save_total_limit: Optional[int] = Field(2, gt=0)
    log_steps: int = Field(10, gt=0)
    seed: int = 42
    device: str = "auto"
    attn_implementation: Optional[str] = None
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="With several processes: ddp (replicated) or fsdp (FSDP2 sharding); auto = ddp."
    )
    gradient_checkpointing: bool = False
    compile: bool = False
    eval: EvalConfig = Field(default_factory=EvalConfig)
