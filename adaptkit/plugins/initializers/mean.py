"""`mean`: transformers' `resize_token_embeddings(mean_resizing=True)`. New rows are drawn from a
normal distribution with the old rows' mean and `covariance_scale` (1e-9) times their covariance
(centered rows' Gram matrix / rows); when that matrix is not positive definite, every new row is
the mean (Hewitt 2021, https://nlp.stanford.edu/~johnhew/vocab-expansion.html)."""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

from adaptkit.specs import Params
from adaptkit.vocab.initializers import Initializer, initializer_spec


class MeanParams(Params):
    covariance_scale: float = Field(1e-9, gt=0, description="Scale of the old rows' covariance for the noise (transformers: 1e-9).")


class MeanInit(Initializer):
    name = "mean"
    summary = "mean of all old rows plus tiny seeded noise (transformers' mean resizing)"
    reference = "Hewitt 2021, Initializing new word embeddings for pretrained language models"
    Params = MeanParams

    def rows(self, weight, pieces: Sequence[Sequence[int] | None], config: Any):
        import torch
        from torch.distributions import constraints
        from torch.distributions.multivariate_normal import MultivariateNormal

        mean = weight.mean(dim=0)
        centered = weight - mean
        covariance = centered.T @ centered / weight.shape[0]
        scaled = self.params.covariance_scale * covariance
        if not constraints.positive_definite.check(scaled).all():
            return mean[None, :].repeat(len(pieces), 1)
        return MultivariateNormal(mean, covariance_matrix=scaled).sample(sample_shape=(len(pieces),)).to(torch.float32)


SPEC = initializer_spec(MeanInit)
