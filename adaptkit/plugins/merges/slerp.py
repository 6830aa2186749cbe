"""SLERP: spherical linear interpolation between two models, tensor by tensor.

Shoemake 1985; as used for model merging by mergekit's `slerp`: each tensor is seen as a
flat vector, the angle comes from the normalized vectors, and nearly collinear pairs fall
back to linear interpolation. t=0 gives the first --model, t=1 the second.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Interpolation, MergeMethod, merge_spec
from adaptkit.specs import Params


class SlerpParams(Params):
    t: Interpolation = Field(0.5, description="Interpolation factor in [0, 1]: 0 = first --model, 1 = second.")


class Slerp(MergeMethod):
    name = "slerp"
    summary = "Spherical interpolation between exactly two models"
    reference = "Shoemake 1985, Animating rotation with quaternion curves; mergekit slerp"
    Params = SlerpParams
    base = "none"
    min_models = 2
    max_models = 2
    base_model_is_first_model = True  # mergekit's slerp: base_model is the t = 0 end

    def merge_tensor(self, tensors, base, params: SlerpParams, ctx):
        from adaptkit.merge.ops import slerp

        return slerp(tensors[0], tensors[1], params.t, in_place=True)  # the executor's copies and two blocks: not 7 tensors


SPEC = merge_spec(Slerp)
