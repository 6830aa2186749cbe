"""Source-Shielded Updates (SSU): score on source data, freeze the top columns, train the rest.

Each `ssu-<scorer>` method is the same composition, scorer + mask + the engine's masked
training, differing only in the scorer: ssu-wanda (the paper's SSU), ssu-mag, ssu-rand,
ssu-sparsegpt, ssu-fisher. With `--mask DIR` the saved mask set is used as it is (it
must come from the same scorer and fit the model). With `--calib DIR` the model is
scored and masked on the fly, exactly as `adaptkit score` + `adaptkit mask` with the
same settings would, and the scores and masks are saved in the run directory
(`scores/`, `mask/`), so both routes give identical runs.

Frozen entries get no update and no weight decay and the optimizer keeps no state for
them (the engine's compact parameters); embeddings and the LM head are not scored and
train in full unless `include_embeddings` is set (then the rows a `vocab extend` added train in full), as in the paper, except the rows of the
special and chat-template tokens, which the SSU repository keeps fixed (`--freeze_chat_template_tokens`
in every SSU script; the paper does not mention it): the run setting `freeze_special_tokens`, on by
default for every ssu-* method (engine/special_tokens.py; `--set freeze_special_tokens=false` trains them).

Reference: Yamaguchi et al. 2025, "Mitigating Catastrophic Forgetting in Target Language
Adaptation of LLMs via Source-Shielded Updates" (github.com/gucci-j/ssu).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field

from adaptkit.engine.embedding_rows import extension_rows, release_new_rows
from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.errors import InputError
from adaptkit.scoring.freeze import FreezeRatio
from adaptkit.specs import Need, Params, method_spec

DEFAULT_FREEZE_RATIO = 0.5


class SSUParams(Params):
    mask: Optional[str] = Field(None, description="Mask directory from `adaptkit mask` (--mask), used as it is.")
    calib: Optional[str] = Field(None, description="Calibration directory from `adaptkit calibrate` (--calib): score and mask on the fly.")
    freeze_ratio: Optional[FreezeRatio] = Field(None, description="Fraction of each matrix's columns to freeze (default 0.5; with --mask, the mask's own).")
    granularity: Optional[Literal["column", "row", "element"]] = Field(None, description="Mask unit (default column; row/element are the paper's ablations).")
    include_embeddings: bool = Field(False, description="Also score and mask the embeddings and LM head (the paper trains them in full).")
    calib_batch_size: int = Field(1, gt=0, description="Calibration blocks per forward pass while scoring on the fly.")
    scorer_params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the scorer (e.g. damp for sparsegpt).")
    fast_backward: bool = Field(True, description="Compute weight gradients of masked linear layers only for trainable columns (engine/masked_linear.py).")


class SourceShieldedUpdates(TrainingMethod):
    """The SSU composition; subclasses only name their scorer."""

    scorer: ClassVar[str] = "wanda"
    reference = "Yamaguchi et al. 2025, Source-Shielded Updates (arXiv:2512.04844; github.com/gucci-j/ssu)"
    Params = SSUParams
    needs = (Need(("mask", "calib"), "--mask DIR (from `adaptkit mask`) or --calib DIR (from `adaptkit calibrate`)"),)
    freeze_special_tokens = True  # as the SSU repository's SSU runs (--freeze_chat_template_tokens)

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        from adaptkit.scoring.freeze import frozen_table

        if self.params.mask and self.params.calib:
            raise InputError("--mask/--calib: give one of them: --mask DIR uses a saved mask set, --calib DIR scores and masks on the fly")
        if self.params.mask:
            masks = self._saved_masks(model, ctx)
        else:
            masks = self._ratio_masks(model) if ctx.dry_run and self.params.calib else self._masks_on_the_fly(model, ctx)
        if self.params.include_embeddings:  # rows added by `vocab extend` train in full
            release_new_rows(model, masks, extension_rows(ctx.config.model))
        plan = TrainingPlan.from_masks(model, masks)
        plan.compact_linear_grads = self.params.fast_backward
        if not plan.trainable:
            raise InputError("--freeze-ratio: freezing every scored unit of every parameter leaves nothing to train")
        _, table_total = frozen_table(masks)
        ratio = masks.metadata.get("freeze_ratio", "?")
        plan.summary = (f"SSU ({self.scorer} scores, freeze ratio {ratio}, {masks.metadata.get('mask_granularity', 'column')} masks): "
                        f"{100 * table_total[4]:.1f}% of scored entries frozen")
        return plan

    def _saved_masks(self, model, ctx: MethodContext):
        from adaptkit.io.mask_files import check_fingerprint

        masks = ctx.mask_set()
        meta = masks.metadata
        check_fingerprint(meta, model, "--mask")  # another model first: no other method would fit it either
        if meta.get("scorer") and meta["scorer"] != self.scorer:
            matching = METHOD_FOR_SCORER.get(meta["scorer"], "the matching ssu-* method")
            raise InputError(f"--mask: made from '{meta['scorer']}' scores, but --method {self.name} scores with '{self.scorer}' (use --method {matching})")
        masks.check_fits(model, "--mask")
        ratio = self.params.freeze_ratio
        if ratio is not None and "freeze_ratio" in meta and float(meta["freeze_ratio"]) != ratio:
            raise InputError(f"--freeze-ratio: {ratio} differs from the ratio {meta['freeze_ratio']} of --mask (drop --freeze-ratio, or give --calib to mask on the fly)")
        granularity = self.params.granularity
        if granularity is not None and meta.get("mask_granularity", granularity) != granularity:
            raise InputError(f"--set granularity={granularity}: differs from the {meta['mask_granularity']} masks of --mask")
        return masks

    def _ratio_masks(self, model):
        """A dry run's masks: as many units frozen per parameter as scores would freeze, chosen without
        scores (the first units; which ones does not change counts or memory)."""
        import json

        import torch

        from adaptkit.scoring.freeze import build_mask_set
        from adaptkit.scoring.parameters import scored_parameters
        from adaptkit.scoring.score_set import ScoreSet

        ratio = DEFAULT_FREEZE_RATIO if self.params.freeze_ratio is None else self.params.freeze_ratio
        granularity = self.params.granularity or "column"
        scores, shapes = {}, {}
        for sp in scored_parameters(model, self.params.include_embeddings):
            shape = tuple(sp.param.shape)
            unit = granularity if len(shape) == 2 else "element"
            size = {"column": shape[-1:], "row": shape[:1]}.get(unit, shape)
            scores[sp.name], shapes[sp.name] = {unit: torch.zeros(size)}, list(shape)
        return build_mask_set(ScoreSet(scores, {"scorer": self.scorer, "shapes": json.dumps(shapes)}), ratio, granularity)

    def _masks_on_the_fly(self, model, ctx: MethodContext):
        from adaptkit.calibration import load_calibration
        from adaptkit.engine.masks import MASKS_FILE, load_mask_set
        from adaptkit.io.atomic import atomic_dir
        from adaptkit.io.models import model_fingerprint
        from adaptkit.scoring.freeze import build_mask_set
        from adaptkit.scoring.run import compute_scores

        ratio = DEFAULT_FREEZE_RATIO if self.params.freeze_ratio is None else self.params.freeze_ratio
        granularity = self.params.granularity or "column"
        calibration = load_calibration(Path(self.params.calib), "--calib")
        mask_dir, scores_dir = ctx.output_dir / "mask", ctx.output_dir / "scores"
        if (mask_dir / MASKS_FILE).is_file():  # a resumed run: reuse the masks it started with
            saved = load_mask_set(mask_dir, "--resume")
            expected = {"scorer": self.scorer, "calibration_hash": calibration.hash, "freeze_ratio": repr(float(ratio)), "mask_granularity": granularity, "model_fingerprint": model_fingerprint(model)}
            if all(saved.metadata.get(k) == v for k, v in expected.items()):
                ctx.log(f"using the masks saved in {mask_dir}")
                return saved
        ctx.log(f"scoring with {self.scorer} on {calibration.blocks.shape[0]} calibration blocks of {calibration.blocks.shape[1]} tokens")
        scores = compute_scores(
            model,
            self.scorer,
            calibration,
            self.params.scorer_params,
            self.params.include_embeddings,
            granularities=(granularity,),
            batch_size=self.params.calib_batch_size,
            seed=ctx.seed,
            device=ctx.device,
            tokenizer=ctx.tokenizer,
        )
        masks = build_mask_set(scores, ratio, granularity)
        if ctx.is_main_process:
            with atomic_dir(scores_dir, overwrite=True) as tmp:
                scores.save(tmp)
            with atomic_dir(mask_dir, overwrite=True) as tmp:
                masks.save(tmp)
        return masks


class SSUWanda(SourceShieldedUpdates):
    name, scorer = "ssu-wanda", "wanda"
    summary = "SSU: freeze the top Wanda-scored columns (|W| * ||X||), train the rest"


class SSUMagnitude(SourceShieldedUpdates):
    name, scorer = "ssu-mag", "magnitude"
    summary = "SSU ablation: freeze the top columns by weight magnitude"


class SSURandom(SourceShieldedUpdates):
    name, scorer = "ssu-rand", "random"
    summary = "SSU ablation: freeze random columns (seeded)"


class SSUSparseGPT(SourceShieldedUpdates):
    name, scorer = "ssu-sparsegpt", "sparsegpt"
    summary = "SSU ablation: freeze the top columns by the SparseGPT-style score E[x_j^2] (SSU paper, App. B)"


class SSUFisher(SourceShieldedUpdates):
    name, scorer = "ssu-fisher", "fisher"
    summary = "SSU ablation: freeze the top columns by diagonal Fisher information"


VARIANTS = (SSUWanda, SSUMagnitude, SSURandom, SSUSparseGPT, SSUFisher)
METHOD_FOR_SCORER = {cls.scorer: cls.name for cls in VARIANTS}
SPECS = [method_spec(cls) for cls in VARIANTS]
