"""Code-mixing of generated responses, as measured in the SSU paper (arXiv:2512.04844, §analysis).

For each response: newlines become spaces, a LID backend ranks the text over the label set
and the normalized probability of the expected language is its confidence. As in the paper
(GlotLID restricted to English + the target language before normalising, threshold 0.9) the
label set is restricted by default (`label_set`): the expected language plus `others`, or,
with no others, plus English; unrestricted, every language of the backend. The response
is code-mixed when that confidence is below `threshold`. A breakdown says which languages appear: each sentence's
top language, and the share of words whose top language is each language (word-level LID
is noisy; it shows where mixing happens, the decision uses the whole response).
Responses that are empty are reported as such and left out of the percentages.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from adaptkit.evals.lid import LIDBackend

SENTENCE_END = re.compile(r"(?<=[.!?।॥።፧؟。！？])\s+|\n+")
WORD = re.compile(r"[^\W\d_]{2,}")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s and s.strip()]


def analyze_response(
    lid: LIDBackend, text: str, expected: str, candidates: Sequence[str] | None, threshold: float, detail: bool = True
) -> dict[str, Any]:
    line = " ".join(text.split())
    if not line:
        return {"empty": True, "code_mixed": False, "expected_confidence": None, "top_language": None}
    ranking = lid.rank(line, candidates)
    confidence = dict(ranking).get(expected, 0.0)
    result: dict[str, Any] = {
        "empty": False,
        "expected_confidence": confidence,
        "code_mixed": confidence < threshold,
        "top_language": ranking[0][0],
        "ranking": [[code, prob] for code, prob in ranking[:3]],
    }
    if detail:
        sentences = []
        for sentence in split_sentences(text):
            top, prob = lid.rank(sentence, candidates)[0]
            sentences.append({"text": sentence if len(sentence) <= 120 else sentence[:117] + "...", "language": top, "confidence": prob})
        words = Counter(lid.rank(w, candidates)[0][0] for w in WORD.findall(text))
        total = sum(words.values())
        result["sentences"] = sentences
        result["sentence_languages"] = dict(Counter(s["language"] for s in sentences).most_common())
        result["word_languages"] = {k: v / total for k, v in words.most_common()} if total else {}
    return result


def _summary(records: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    scored = [r for r in records if not r["empty"]]
    mixed = sum(r["code_mixed"] for r in scored)
    sentence_langs: Counter = Counter()
    for r in scored:
        sentence_langs.update(r.get("sentence_languages", {}))
    return {
        "responses": len(records),
        "empty": len(records) - len(scored),
        "code_mixed": mixed,
        "pct_code_mixed": 100.0 * mixed / len(scored) if scored else 0.0,
        "mean_expected_confidence": sum(r["expected_confidence"] for r in scored) / len(scored) if scored else None,
        "languages_seen": dict(Counter(r["top_language"] for r in scored).most_common()),
        "sentence_languages": dict(sentence_langs.most_common()),
        "threshold": threshold,
    }


def label_set(expected: str, others: Sequence[str] = (), restrict: bool = True) -> tuple[list[str] | None, str]:
    """(the languages the identifier is restricted to, None for all of them; how that set was chosen)."""
    if not restrict:
        return None, "all languages of the identifier (--no-restrict)"
    if others:
        return sorted({expected, *others}), "the expected language and --other-lang"
    if expected != "en":
        return sorted({expected, "en"}), "the expected language and English (the SSU paper's pair)"
    return None, "all languages of the identifier (expected English and no --other-lang to pair it with)"


def analyze(
    rows: list[dict[str, Any]],
    lid: LIDBackend,
    expected: str,
    others: Sequence[str] = (),
    threshold: float = 0.9,
    field: str = "response",
    group_field: str = "model",
    detail: bool = True,
    restrict: bool = True,
) -> dict[str, Any]:
    """Per-response results and summaries (overall and per `group_field` value, e.g. per model)."""
    candidates, chosen = label_set(expected, others, restrict)
    records = []
    for index, row in enumerate(rows):
        record = {"index": index, **{k: row[k] for k in ("id", group_field) if k in row}}
        record.update(analyze_response(lid, row[field], expected, candidates, threshold, detail))
        records.append(record)
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if group_field in record:
            groups.setdefault(str(record[group_field]), []).append(record)
    return {
        "settings": {"lid": lid.name, "identifier": lid.describe(), "expected": expected, "candidates": candidates or "all",
                     "label_set": chosen, "threshold": threshold, "field": field},
        "summary": _summary(records, threshold),
        "groups": {name: _summary(group, threshold) for name, group in groups.items()},
        "responses": records,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    candidates = s["candidates"] if isinstance(s["candidates"], str) else ", ".join(s["candidates"])
    lines = [
        "# Code-mixing",
        "",
        f"LID: {s.get('identifier', s['lid'])}; expected language: {s['expected']}; label set: {candidates}"
        + (f" ({s['label_set']})" if s.get("label_set") else "")
        + f", normalised over it; code-mixed when the expected language's confidence < {s['threshold']}.",
        "",
        "| group | responses | empty | code-mixed | % code-mixed | mean confidence | top languages |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = list(report["groups"].items()) + [("all", report["summary"])]
    for name, g in rows:
        conf = "n/a" if g["mean_expected_confidence"] is None else f"{g['mean_expected_confidence']:.3f}"
        langs = ", ".join(f"{k} {v}" for k, v in list(g["languages_seen"].items())[:4])
        lines.append(f"| {name} | {g['responses']} | {g['empty']} | {g['code_mixed']} | {g['pct_code_mixed']:.1f} | {conf} | {langs} |")
    flagged = [r for r in report["responses"] if r["code_mixed"]][:20]
    if flagged:
        lines += ["", "## Code-mixed responses (first 20)", "", "| # | group | confidence | sentence languages | word languages |", "|---|---|---|---|---|"]
        for r in flagged:
            words = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(r.get("word_languages", {}).items())[:3])
            sents = ", ".join(f"{k} {v}" for k, v in r.get("sentence_languages", {}).items())
            lines.append(f"| {r['index']} | {r.get('model', '')} | {r['expected_confidence']:.3f} | {sents} | {words} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Left: % code-mixed per group; right: histogram of the expected language's confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = report["groups"] or {"all": report["summary"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.get_cmap("tab10").colors
    names = list(groups)
    values = [groups[n]["pct_code_mixed"] for n in names]
    bars = left.bar(range(len(names)), values, color=[colors[i % 10] for i in range(len(names))])
    counts = [f"{v:.0f}% ({groups[n]['code_mixed']}/{groups[n]['responses'] - groups[n]['empty']})" for n, v in zip(names, values)]
    left.bar_label(bars, labels=counts, fontsize=8, padding=2)
    left.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    left.set_ylim(0, 110)  # a share: the axis ends at 100%, with room for the labels
    left.set_yticks(range(0, 101, 20))
    left.set_ylabel("% code-mixed responses")
    left.set_title(f"code-mixed (confidence of '{report['settings']['expected']}' < {report['settings']['threshold']})", fontsize=9)
    bins = [i / 20 for i in range(21)]
    for i, name in enumerate(names):
        confidences = [r["expected_confidence"] for r in report["responses"]
                       if not r["empty"] and (name == "all" and not report["groups"] or str(r.get("model")) == name)]
        right.hist(confidences, bins=bins, alpha=0.55, label=name, color=colors[i % 10])
    right.axvline(report["settings"]["threshold"], color="red", ls="--", lw=1, label="threshold")
    right.set_xlabel(f"confidence of the expected language ({report['settings']['expected']})")
    right.set_ylabel("responses")
    right.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole responses, never 0.5
    right.legend(fontsize=8)
    right.set_title("confidence distribution", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_codemix_report(report: dict[str, Any], directory: Path, plots: bool = True) -> list[str]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "codemix.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / "codemix.md").write_text(markdown(report), encoding="utf-8")
    files = ["codemix.json", "codemix.md"]
    if plots:
        plot(report, directory / "codemix.png")
        files.append("codemix.png")
    return files
