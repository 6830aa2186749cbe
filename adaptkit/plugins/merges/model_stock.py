"""Model Stock: interpolate between the base and the average of fine-tuned models by their angle.

Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models" (arXiv 2403.19522),
as mergekit's `model_stock`: with the task vectors d_i = theta_i - theta_0 of N >= 2 models and
cos the mean pairwise cosine of the d_i (of whole tensors, or of each row with `filter_wise`),
t = N cos / (1 + (N - 1) cos) and the merge is t * mean_i theta_i + (1 - t) * theta_0. Where
1 + (N - 1) cos is 0 (|.| < 1e-6) the base is kept, as mergekit does.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import MergeMethod, merge_spec
from adaptkit.specs import Params


class ModelStockParams(Params):
    filter_wise: bool = Field(False, description="One angle per row (output filter) instead of one per tensor.")


class ModelStock(MergeMethod):
    name = "model-stock"
    summary = "Model Stock: base-to-average interpolation set by the angle between task vectors"
    reference = "Jang et al. 2024, Model Stock, arXiv 2403.19522"
    Params = ModelStockParams
    base = "required"
    min_models = 2

    def merge_tensor(self, tensors, base, params: ModelStockParams, ctx):
        import torch

        shape = base.shape
        flat = (lambda t: t.unsqueeze(0) if t.dim() == 1 else t) if params.filter_wise else (lambda t: t.reshape(-1))
        w0, ws = flat(base), [flat(t) for t in tensors]
        offsets = [w - w0 for w in ws]
        cosines = []
        for i, a in enumerate(offsets):
            for b in offsets[i + 1:]:
                norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
                cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
        cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
        n = len(ws)
        denominator = 1 + (n - 1) * cos
        singular = denominator.abs() < 1e-6
        t = torch.where(singular, torch.zeros_like(cos), (n * cos) / torch.where(singular, torch.ones_like(denominator), denominator))
        average = sum(ws) / n
        return (t * average + (1 - t) * w0).reshape(shape)


SPEC = merge_spec(ModelStock)
