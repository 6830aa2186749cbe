"""The released layouts of the SSU paper's generation data: FLORES-200 (MT) and XL-SUM (SUM).

FLORES-200 (Costa-jussà et al. 2022; NLLB team): a directory with `dev/` and `devtest/`,
one aligned sentence per line in `dev/<code>.dev` and `devtest/<code>.devtest`, codes such
as `eng_Latn`, `hau_Latn`, `amh_Ethi`, `npi_Deva`, `kir_Cyrl`, `ibo_Latn` (the
`flores200_dataset` folder of the release tarball). The paper evaluates on devtest and draws
its shots from dev.

XL-SUM (Hasan et al. 2021): a directory of `<language>_<split>.jsonl` files (`hausa_test.jsonl`,
`hausa_val.jsonl`, `english_train.jsonl`, ...), records with `text` and `summary` (and `id`,
`url`, `title`). Evaluation reads `test`; shots, when any, come from `val`.

Readers return plain `(input, reference, id)` triples; every problem is an InputError naming
the flag and the file.

The SSU reference's item choices (gucci-j/ssu preprocessing/src), as orders over the rows (the
first 500 are its items):
- MT (`generate_mt_data.py`): the devtest rows of `openlanguagedata/flores_plus` in id order, then
  pandas' `DataFrame.sample(n=500, random_state=42)`, which takes the first 500 positions of
  numpy's `RandomState(42).permutation(rows)`; a FLORES-200 devtest file's line i is flores_plus
  devtest id i, so the same positions of the local files are the reference's items;
- SUM (`generate_sum_data.py`): XL-SUM `test+validation` (test rows, then validation rows), ranked
  by the token count of `text` under the OLMo-2 tokenizer (`tokenizer.encode`, special tokens
  included), shortest first, ties in file order (Python's stable sort).
"""

from __future__ import annotations

from pathlib import Path

from adaptkit.errors import InputError

FLORES_CODES = {"en": "eng_Latn", "ha": "hau_Latn", "am": "amh_Ethi", "ne": "npi_Deva", "ky": "kir_Cyrl", "ig": "ibo_Latn"}
XLSUM_NAMES = {"en": "english", "ha": "hausa", "am": "amharic", "ne": "nepali", "ky": "kyrgyz", "ig": "igbo"}
FLORES_HOW = "FLORES-200: download and unpack https://dl.fbaipublicfiles.com/nllb/flores200_dataset.tar.gz (or the Hub's openlanguagedata/flores_plus as dev/devtest text files)"
XLSUM_HOW = "XL-SUM: download https://huggingface.co/datasets/csebuetnlp/xlsum (the <language>_<split>.jsonl files of its data/ archives)"

Pair = tuple[str, str, object]


def split_layout_spec(path: str, where: str) -> tuple[Path, str] | None:
    """'DIR:LANGS' -> (DIR, LANGS) when DIR is a directory, else None (a JSONL file)."""
    head, sep, tail = path.rpartition(":")
    if sep and tail and Path(head).expanduser().is_dir():
        return Path(head).expanduser(), tail.strip()
    if Path(path).expanduser().is_dir():
        raise InputError(f"{where}: '{path}' is a directory; name the languages after it: DIR:SRC-TGT for FLORES-200 (e.g. {path}:ha-en), DIR:LANG for XL-SUM")
    return None


def flores_code(root: Path, lang: str, where: str) -> str:
    """The FLORES-200 file code of `lang` (a canonical code or an explicit `xxx_Scrp`) present in `root/dev`."""
    from adaptkit.evals.langcodes import canonical

    if "_" in lang:
        return lang
    codes = sorted(p.stem for p in (root / "dev").glob("*.dev"))
    found = [c for c in codes if canonical(c) == lang]
    preferred = FLORES_CODES.get(lang)
    if preferred in found or len(found) == 1:
        return preferred if preferred in found else found[0]
    if len(found) > 1:
        raise InputError(f"{where}: '{lang}' has several FLORES-200 files ({', '.join(found)}); name one, e.g. {found[0]}")
    return preferred or lang


def _lines(path: Path, where: str) -> list[str]:
    if not path.is_file():
        raise InputError(f"{where}: '{path}' is missing; expected the FLORES-200 layout (dev/<code>.dev, devtest/<code>.devtest)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise InputError(f"{where}: '{path}' is empty; expected one sentence per line")
    return lines


def read_flores(root: Path, src: str, tgt: str, split: str, where: str) -> list[Pair]:
    """Aligned (source, target, line number) sentences of a FLORES-200 split (`dev` or `devtest`)."""
    files = [root / split / f"{flores_code(root, lang, where)}.{split}" for lang in (src, tgt)]
    sources, targets = (_lines(f, where) for f in files)
    if len(sources) != len(targets):
        raise InputError(f"{where}: '{files[0]}' has {len(sources)} lines and '{files[1]}' {len(targets)}; FLORES-200 files are aligned line by line")
    return [(s, t, i) for i, (s, t) in enumerate(zip(sources, targets))]


def xlsum_file(root: Path, lang: str, split: str) -> Path:
    """`root/<language>_<split>.jsonl` for a canonical code (`ha` -> hausa, else the English name in lower case)."""
    from adaptkit.evals.langcodes import name_of

    name = XLSUM_NAMES.get(lang) or name_of(lang).lower().replace(" ", "_")
    return root / f"{name}_{split}.jsonl"


def sampled_order(rows: int, seed: int = 42) -> list[int]:
    """Row positions in the order pandas' `DataFrame.sample(n, random_state=seed)` returns them (any n: its first n)."""
    import numpy

    return [int(i) for i in numpy.random.RandomState(seed).permutation(rows)]


def shortest_first(texts: list[str], tokenizer) -> list[int]:
    """Positions of `texts` by token count under `tokenizer` (`encode`, special tokens included), ties in order."""
    lengths = [len(tokenizer.encode(text)) for text in texts]
    return sorted(range(len(texts)), key=lengths.__getitem__)


def read_xlsum(root: Path, lang: str, split: str, where: str) -> list[Pair]:
    """(text, summary, id) records of an XL-SUM split (`test`, `val`, `train`)."""
    from adaptkit.evals.data import read_jsonl

    path = xlsum_file(root, lang, split)
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in root.glob("*.jsonl"))[:6]) or "no .jsonl files"
        raise InputError(f"{where}: '{path}' is missing; expected the XL-SUM layout <language>_<split>.jsonl (found: {present})")
    return [(r["text"], r["summary"], r.get("id", i)) for i, r in enumerate(read_jsonl(path, where, ("text", "summary")))]
