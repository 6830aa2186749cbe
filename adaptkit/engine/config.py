"""The training configuration: defaults from the SSU paper, validated by pydantic.

Paper defaults (SSU, continual pre-training): AdamW, lr 5e-5 with cosine decay, 5%
warmup, weight decay 0.01, 512-token blocks, batch 32. `batch_size` is the global
number of sequences per optimizer step, whatever the number of processes: the engine
derives gradient accumulation from it and `micro_batch_size`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Unknown keys are errors; so is a non-finite number (`--lr inf` would train to NaN weights)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _parse_count(value: Any) -> Any:
    """'200M' -> 200000000 (a YAML count as the CLI spells it); other values unchanged."""
    if isinstance(value, str):
        from adaptkit.data.store import parse_count
        from adaptkit.errors import InputError

        try:
            return parse_count(value)
        except InputError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
    return value


OneOrMany = Annotated[list[str], BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]
TokenCount = Annotated[Optional[int], BeforeValidator(_parse_count)]


class SourceConfig(Section):
    """One named source of a mixture (`--data NAME=SPEC[:WEIGHT]`)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    spec: OneOrMany = Field(min_length=1, description="A path, glob, token store or hub:ID[:CONFIG][@SPLIT]; or a list of them.")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="Share of the samples (normalized over the sources).")
    text_field: Optional[str] = Field(None, description="Its JSONL / parquet / dataset text field; default data.text_field.")
    max_tokens: TokenCount = Field(None, gt=0, description="Tokens to read from it at most (e.g. 200M).")


class DataConfig(Section):
    paths: OneOrMany = Field(default_factory=list, description="Text/JSONL files or HF dataset directories: one source.")
    sources: list[SourceConfig] = Field(default_factory=list, description="Named sources mixed by weight (instead of paths).")
    text_field: str = "text"
    seq_len: int = Field(512, gt=0, description="Tokens per packed block.")
    format: Literal["auto", "text", "jsonl", "hf"] = "auto"
    cache: bool = True
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="Blocks held out of training (seeded) as the eval set 'validation'.")
    max_tokens: TokenCount = Field(None, gt=0, description="Tokens of all sources together at most (e.g. 200M).")
    num_proc: Optional[int] = Field(None, gt=0, description="Tokenizer processes; default: the available cores.")
    packing: Literal["concat", "doc-mask"] = Field(
        "concat", description="concat: EOS-separated documents packed into blocks; doc-mask: also a block-diagonal attention mask and restarting positions."
    )

    @model_validator(mode="after")
    def _paths_or_sources(self) -> "DataConfig":
        if self.paths and self.sources:
            raise ValueError("give data.paths (one source) or data.sources (a mixture), not both")
        names = [s.name for s in self.sources]
        duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if duplicate is not None:
            raise ValueError(f"duplicate source name '{duplicate}'")
        return self

    def mixture(self) -> list[SourceConfig]:
        """The sources to train on: data.sources, or data.paths as the one source 'data'."""
        if self.sources:
            return list(self.sources)
        return [SourceConfig(name="data", spec=self.paths)] if self.paths else []


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
    train_embeddings: Literal["all", "new-only", "none"] = Field(
        "all", description="Input-embedding and LM-head rows a method that trains them updates: all; new-only (rows added by `adaptkit vocab extend`); none."
    )
    embedding_lr: Optional[float] = Field(None, gt=0, description="Peak learning rate of the input embeddings and LM head (default: optimizer.lr); the schedule scales it alike.")
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
    memory_check: bool = Field(True, description="Refuse, before anything loads, a run whose memory plan (train --dry-run) exceeds the free memory of its device.")
    peak_tflops: Optional[float] = Field(None, gt=0, description="Dense bf16 peak of one device in TFLOPS, for the MFU in metrics.jsonl (default: looked up for known GPUs; none on a CPU).")
    language: list[str] = Field(default_factory=list, description="Language codes of the trained model for its model card (e.g. [ha]).")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(default_factory=list, description="Experiment trackers: tensorboard, mlflow, wandb, trackio.")
    run_name: Optional[str] = Field(None, description="Run name in the trackers and the model card; default: the run directory's name.")
    project: str = Field("adaptkit", description="Tracker project (W&B, trackio) or experiment (MLflow).")

    @field_validator("language", "report_to", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
    eval: EvalConfig = Field(default_factory=EvalConfig)
