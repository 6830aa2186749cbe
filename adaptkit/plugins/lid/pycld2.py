"""`pycld2`: Google's Compact Language Detector 2 (offline, 80+ languages).

CLD2 reports the share of the text's bytes in each of its top three languages rather
than a probability; that share, renormalized over the candidates, is the confidence
here. A text where CLD2 finds none of the candidates (short texts, single words) is
'und' (undetermined), with confidence 0 for the expected language. CLD2 is unreliable on
single words, so its per-word breakdown is mostly 'und'.
"""

from __future__ import annotations

from typing import Sequence

from adaptkit.evals.lid import LIDBackend
from adaptkit.specs import LIDBackendSpec, NoParams

CLD2_ALIASES = {"iw": "he", "jw": "jv", "sr-ME": "sr", "zh-Hant": "zh"}


class Pycld2Backend(LIDBackend):
    name = "pycld2"

    def __init__(self, params: NoParams):
        super().__init__(params)
        from adaptkit.errors import require

        self._cld2 = require("pycld2", "lid", "the pycld2 language identifier")

    def languages(self) -> list[str]:
        from adaptkit.evals.langcodes import canonical

        codes = {canonical(CLD2_ALIASES.get(code, code)) for _, code in self._cld2.LANGUAGES}
        return sorted(c for c in codes if c)

    def rank(self, text: str, candidates: Sequence[str] | None = None) -> list[tuple[str, float]]:
        from adaptkit.evals.langcodes import canonical
        from adaptkit.evals.lid import normalize

        try:
            _, _, details = self._cld2.detect(text)
        except self._cld2.error:
            details = ()
        pairs = [(canonical(CLD2_ALIASES.get(code, code)), percent / 100.0) for _, code, percent, _ in details]
        pairs = [(lang, share) for lang, share in pairs if lang and share > 0]
        ranked = normalize(pairs, candidates) if pairs else []
        if not any(p > 0 for _, p in ranked):  # nothing (or no candidate) detected: undetermined
            return [("und", 1.0)] + [(c, 0.0) for c in candidates or ()]
        return ranked


SPEC = LIDBackendSpec(
    name="pycld2",
    factory="adaptkit.plugins.lid.pycld2:Pycld2Backend",
    summary="Compact Language Detector 2 (byte share of the top-3 languages as confidence)",
    reference="Google CLD2; pycld2",
    extras=("pycld2",),
)
