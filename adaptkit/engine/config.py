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
    seq_len: int = Field(512, ge=2, description="Tokens per packed block (at least 2: a token and the next one it predicts).")
    format: Literal["auto", "text", "jsonl", "hf"] = "auto"
    cache: bool = True
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="Blocks held out of training (seeded) as the eval set 'validation'.")
    max_tokens: TokenCount = Field(None, gt=0, description="Tokens of all sources together at most (e.g. 200M).")
    num_proc: Optional[int] = Field(None, gt=0, description="Tokenizer processes; default: the available cores.")
    slice: Optional[str] = Field(None, pattern=r"^\d+/\d+$", description="I/N: train on the I-th (from 0) of N equal consecutive parts of each source's blocks (Branch-and-Merge's data slices).")
    packing: Literal["concat", "doc-mask"] = Field(
        "concat", description="concat: EOS-separated documents packed into blocks; doc-mask: also a block-diagonal attention mask and restarting positions."
    )

    @model_validator(mode="after")
    def _paths_or_sources(self) -> "DataConfig":
        if self.slice is not None:
            index, count = map(int, self.slice.split("/"))
            if count < 1 or index >= count:
                raise ValueError(f"slice '{self.slice}': expected I/N with N >= 1 and 0 <= I < N")
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
    """The learning-rate multiplier over the run (engine/optim.py:lr_factor).

    cosine / linear / constant: linear warmup from 0, then that decay to `min_lr_ratio`.
    wsd (warmup-stable-decay, Hägele et al. 2024): warmup, constant peak, then a cooldown over the last
    `cooldown_ratio` of the steps to `min_lr_ratio`, shaped `cooldown_shape` (linear, cosine, 1-sqrt).
    rewarm (re-warming and re-decaying, Ibrahim et al. 2024): warmup from the floor `min_lr_ratio` (where
    a pre-training schedule ended) to the peak, then cosine back down to the floor.
    """

    name: Literal["cosine", "linear", "constant", "wsd", "rewarm"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Floor of the learning rate, a fraction of the peak (decays end there; rewarm starts there).")
    cooldown_ratio: float = Field(0.2, ge=0, le=1, description="wsd: fraction of the steps in the final cooldown.")
    cooldown_shape: Literal["linear", "cosine", "1-sqrt"] = Field("linear", description="wsd: shape of the cooldown.")

    @model_validator(mode="after")
    def _phases_fit(self) -> "ScheduleConfig":
        if self.name == "wsd" and self.warmup_ratio + self.cooldown_ratio > 1:
            raise ValueError(f"cooldown_ratio {self.cooldown_ratio} and warmup_ratio {self.warmup_ratio} add up to more than the whole run (at most 1)")
        return self


class AveragingConfig(Section):
    """Averaged weights written beside final/ (engine/averaging.py): final-ema/ and final-lawa/."""

    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="Exponential moving average of the weights after every step with this decay (e.g. 0.99): final-ema/.")
    lawa_k: Optional[int] = Field(None, ge=2, description="LAWA: the mean of the last K snapshots of the weights, one every lawa_interval steps and at the end: final-lawa/.")
    lawa_interval: Optional[int] = Field(None, gt=0, description="Steps between LAWA snapshots; default: the checkpoint interval.")


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


class LossConfig(Section):
    """The language-modelling loss of a training step (engine/lm_loss.py)."""

    chunked: Literal["auto", "on", "off"] = Field(
        "auto", description="Chunked linear cross-entropy (no full-vocabulary logits); auto = on when vocabulary x tokens per micro-batch >= 2^26 and the head allows it."
    )
    kernel: Literal["torch", "liger"] = Field("torch", description="torch: adaptkit's chunked loss; liger: Liger-Kernel's fused kernel (CUDA, the `liger` extra).")
    chunk_tokens: Optional[int] = Field(None, gt=0, description="Tokens per chunk; default: 2^25 logits per chunk (261 tokens at a 128k vocabulary).")

    @field_validator("chunked", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads `on`/`off` (`--set loss.chunked=on`, a config file's `chunked: on`) as true/false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


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
    averaging: AveragingConfig = Field(default_factory=AveragingConfig)
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
    threads: Optional[int] = Field(None, gt=0, description="CPU threads of torch's operators; default: OMP_NUM_THREADS, else the cores this process may use that others leave idle.")
    device: str = "auto"
    attn_implementation: Optional[str] = None
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="With several processes: ddp (replicated) or fsdp (FSDP2 sharding); auto = ddp."
    )
    gradient_checkpointing: bool = False
    compile: bool = False
    loss: LossConfig = Field(default_factory=LossConfig)
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
