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
    row_statistics = True  # the angle of the whole tensors, then row by row

    def merge_tensor(self, tensors, base, params: SlerpParams, ctx):
        return self.merge_rows(tensors, base, params, ctx, self.statistics(tensors, base, params, ctx))

    def statistics(self, tensors, base, params: SlerpParams, ctx):
        from adaptkit.merge.ops import slerp_statistics

        return slerp_statistics(tensors[0], tensors[1])

    def merge_rows(self, tensors, base, params: SlerpParams, ctx, statistics):
        from adaptkit.merge.ops import slerp_from_statistics

        return slerp_from_statistics(tensors[0], tensors[1], params.t, statistics, in_place=True)  # into the executor's copies: not 7 tensors


SPEC = merge_spec(Slerp)
