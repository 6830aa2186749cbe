"""`py3langid`: langid.py's naive Bayes model (97+ languages, shipped with the package).

Probabilities are normalized (`norm_probs=True`); with candidates the model is restricted
to them before normalizing (`set_languages`), as the SSU paper restricts GlotLID.
"""

from __future__ import annotations

from typing import Sequence

from adaptkit.evals.lid import LIDBackend
from adaptkit.specs import LIDBackendSpec, NoParams


class Py3LangidBackend(LIDBackend):
    name = "py3langid"

    def __init__(self, params: NoParams):
        super().__init__(params)
        from adaptkit.errors import require

        module = require("py3langid.langid", "lid", "the py3langid language identifier")
        self._identifier = module.LanguageIdentifier.from_model_file(module.MODEL_FILE, norm_probs=True)
        self._all = list(self._identifier.nb_classes)
        self._current: tuple[str, ...] | None = None

    def describe(self) -> str:
        return f"py3langid ({len(self._all)} languages)"

    def languages(self) -> list[str]:
        from adaptkit.evals.langcodes import canonical

        return sorted({canonical(c) or c for c in self._all})

    def _labels_for(self, candidates: Sequence[str]) -> list[str]:
        from adaptkit.evals.langcodes import canonical

        return [label for label in self._all if (canonical(label) or label) in set(candidates)]

    def rank(self, text: str, candidates: Sequence[str] | None = None) -> list[tuple[str, float]]:
        from adaptkit.evals.langcodes import canonical
        from adaptkit.evals.lid import normalize

        wanted = tuple(sorted(candidates)) if candidates is not None else None
        if wanted != self._current:
            self._identifier.set_languages(self._labels_for(wanted) if wanted is not None else None)
            self._current = wanted
        return normalize(((canonical(label) or label, prob) for label, prob in self._identifier.rank(text)), candidates)


SPEC = LIDBackendSpec(
    name="py3langid",
    factory="adaptkit.plugins.lid.py3langid:Py3LangidBackend",
    summary="langid.py naive Bayes LID (ships its model; normalized probabilities)",
    reference="Lui & Baldwin 2012 (langid.py); py3langid",
    extras=("py3langid",),
)
