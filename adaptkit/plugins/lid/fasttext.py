"""`fasttext`: a fastText LID model from a local file, e.g. GlotLID (used by the SSU paper).

`--set model_path=/path/to/glotlid/model.bin` (required; nothing is downloaded). Labels
like `__label__hau_Latn` map to canonical codes (scripts of one language are summed).
As in the SSU paper's analysis, the identifier is restricted to the label set before
normalising: the softmax over the sentence vector times the output-matrix rows of the
set's labels, which equals the full softmax renormalised over those labels (computed
directly, it keeps the precision `predict` loses: fastText adds 1e-5 to each probability
it returns). Models trained with a loss other than softmax (no usable output matrix)
fall back to `predict(k=-1)` probabilities renormalised over the set.
Newlines are replaced by spaces (fastText predicts one line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from adaptkit.evals.lid import LIDBackend
from adaptkit.specs import LIDBackendSpec, Params


class FasttextParams(Params):
    model_path: str


class FasttextBackend(LIDBackend):
    name = "fasttext"

    def __init__(self, params: FasttextParams):
        super().__init__(params)
        from adaptkit.errors import InputError, require
        from adaptkit.evals.langcodes import canonical

        fasttext = require("fasttext", "glotlid", "the fastText/GlotLID language identifier")
        path = Path(params.model_path).expanduser()
        if not path.is_file():
            raise InputError(f"--set model_path: '{path}' is not a file; give a local fastText model such as GlotLID's model.bin")
        try:
            self._model = fasttext.load_model(str(path))
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"--set model_path: '{path}' is not a fastText model ({exc})") from None
        self._labels = list(self._model.get_labels())
        self._codes = [canonical(label) or label.replace("__label__", "").split("_")[0].lower() for label in self._labels]
        try:
            self._output = self._model.get_output_matrix()
        except Exception:  # hierarchical-softmax / OvA models
            self._output = None

    def languages(self) -> list[str]:
        return sorted(set(self._codes))

    def describe(self) -> str:
        return f"fasttext ({self.params.model_path}, {len(self._labels)} labels)"

    def rank(self, text: str, candidates: Sequence[str] | None = None) -> list[tuple[str, float]]:
        import numpy as np

        from adaptkit.evals.lid import normalize

        line = " ".join(text.split())
        wanted = set(candidates) if candidates is not None else None
        rows = [i for i, c in enumerate(self._codes) if wanted is None or c in wanted]
        if self._output is not None and rows:
            logits = self._output[rows] @ self._model.get_sentence_vector(line)
            probs = np.exp(logits - logits.max())
            pairs = zip((self._codes[i] for i in rows), probs / probs.sum())
        else:
            labels, probs = self._model.predict(line, k=-1)
            pairs = zip((self._codes[self._labels.index(label)] for label in labels), probs)
        return normalize(pairs, candidates)


SPEC = LIDBackendSpec(
    name="fasttext",
    factory="adaptkit.plugins.lid.fasttext:FasttextBackend",
    summary="fastText LID model from a local path (GlotLID, as used by the SSU paper)",
    reference="Kargaran et al. 2023 (GlotLID); Joulin et al. 2017 (fastText)",
    params=FasttextParams,
    extras=("fasttext",),
)
