"""Spectrum's module-level score: the signal-to-noise ratio of each weight matrix (Hartford et al.,
arXiv 2406.06623; formula as in its reference code, see adaptkit/scoring/spectral.py).

A module-level score: every entry of a matrix carries its matrix's SNR (save with --granularity element
to keep it as it is; a column or row score sums it over the other dimension). 1-D parameters (norms,
biases) score 0: as a 1 x n matrix (the reference's reading) the single singular value is all signal and
the SNR infinite, which a score file cannot hold and which ranks nothing. No calibration data is used.
"""

from __future__ import annotations

from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, scorer_spec
from adaptkit.specs import Params


class SpectrumParams(Params):
    """Spectrum's scorer has no parameters."""


class SpectrumScorer(Scorer):
    name = "spectrum"
    summary = "SNR of each weight matrix from its singular values and the Marchenko-Pastur bound; module-level, no calibration data"
    reference = "Spectrum, Hartford et al., arXiv 2406.06623 (github.com/cognitivecomputations/spectrum)"
    Params = SpectrumParams
    needs_calibration = False

    def element_scores(self, sp: ScoredParam):
        import torch

        from adaptkit.scoring.spectral import matrix_snr

        if sp.param.ndim < 2:
            return torch.zeros(sp.param.shape, dtype=torch.float32)
        return torch.full(sp.param.shape, matrix_snr(sp.param), dtype=torch.float32)


SPEC = scorer_spec(SpectrumScorer)
