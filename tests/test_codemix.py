"""codemix: LID backends, the code-mixing decision (SSU paper: confidence < 0.9), report and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # CLI runs and LID model loads


ENGLISH = [
    "Whereas disregard and contempt for human rights have resulted in barbarous acts which have outraged "
    "the conscience of mankind, and the advent of a world in which human beings shall enjoy freedom of speech "
    "and belief has been proclaimed as the highest aspiration of the common people.",
    "Whereas it is essential, if man is not to be compelled to have recourse, as a last resort, to rebellion "
    "against tyranny and oppression, that human rights should be protected by the rule of law.",
]
HAUSA = [
    "Ganin cewa ya kamata a kafa hukumomi waɗanda za su kula da kiyayewa da hakkokin ‘yan-adam, ta hanyar "
    "girka dokoki, domin kada tsananin iko da danniya su yi yawa har su kai mutane ga yin kara ko yin tawaye.",
    "Ganin cewa ƙasashen da Majalisar Ɗinkin Duniya ta ƙunsa sun ɗauki alkawalin cewa za su tabbatar da abin "
    "da zai sa ko'ina a duniya a kiyaye da dukkan muhimman hakkokin ‘yan-adam.",
]
MIXED = ENGLISH[0] + " " + HAUSA[0]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("backend", ["py3langid", "pycld2"])
def test_flags_mixed_english_hausa_and_passes_clean_english(backend):
    from adaptkit.evals.codemix import analyze_response
    from adaptkit.evals.lid import load_lid

    lid = load_lid(backend)
    for text in ENGLISH:
        clean = analyze_response(lid, text, "en", ["en", "ha"], 0.9)
        assert not clean["code_mixed"] and clean["expected_confidence"] >= 0.9, clean
    mixed = analyze_response(lid, MIXED, "en", ["en", "ha"], 0.9)
    assert mixed["code_mixed"] and mixed["expected_confidence"] < 0.9, mixed
    assert set(mixed["sentence_languages"]) == {"en", "ha"}
    if backend == "py3langid":  # CLD2 does not identify single words
        assert mixed["word_languages"]["ha"] > 0.2
    hausa = analyze_response(lid, HAUSA[1], "en", ["en", "ha"], 0.9)
    assert hausa["code_mixed"] and hausa["top_language"] == "ha"


def test_py3langid_confidence_is_normalized_over_candidates():
    import py3langid.langid as langid

    from adaptkit.evals.lid import load_lid

    reference = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
    reference.set_languages(["en", "ha"])
    expected = dict(reference.rank(MIXED))["en"]
    ranking = dict(load_lid("py3langid").rank(MIXED, ["en", "ha"]))
    assert ranking["en"] == pytest.approx(expected, abs=1e-6)
    assert sum(ranking.values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_codemix_cli_report(invoke, tmp_path):
    rows = [{"id": 0, "model": "fft", "response": MIXED}, {"id": 1, "model": "fft", "response": ENGLISH[1]},
            {"id": 2, "model": "ssu", "response": ENGLISH[0]}, {"id": 3, "model": "ssu", "response": ENGLISH[1]},
            {"id": 4, "model": "ssu", "response": "  "}]
    gens = write_jsonl(tmp_path / "gens.jsonl", rows)
    out = tmp_path / "codemix"
    result = invoke("codemix", "--input", gens, "--expected-lang", "eng", "--other-lang", "hau", "--threshold", "0.9", "-o", out, "--json")
    assert result.returncode == 0, result
    report = json.loads((out / "codemix.json").read_text())
    assert report["settings"]["candidates"] == ["en", "ha"]
    assert [r["code_mixed"] for r in report["responses"]] == [True, False, False, False, False]
    assert report["responses"][4]["empty"]
    assert report["groups"]["fft"]["pct_code_mixed"] == 50.0 and report["groups"]["ssu"]["pct_code_mixed"] == 0.0
    assert report["summary"]["languages_seen"] == {"en": 3, "ha": 1}
    assert "| fft | 2 | 0 | 1 | 50.0 |" in (out / "codemix.md").read_text()
    assert (out / "codemix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result.stdout)["summary"]["code_mixed"] == 1


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--threshold", "1.5"], ["--threshold", "between 0 and 1"]),
        (["--expected-lang", "hausa"], ["--expected-lang", "unknown language code 'hausa'", "ha"]),
        (["--other-lang", "xx"], ["--other-lang", "'xx'"]),
        (["--lid", "py3langidd"], ["--lid", "did you mean: py3langid"]),
        (["--field", "output"], ["--input", "line 1", "'output'"]),
    ],
)
def test_codemix_bad_input(invoke, tmp_path, args, fragments):
    from conftest import assert_input_error

    gens = write_jsonl(tmp_path / "gens.jsonl", [{"response": ENGLISH[0]}])
    out = tmp_path / "out"
    base = {"--expected-lang": "en"}
    flags = [x for k, v in base.items() if k not in args for x in (k, v)]
    result = invoke("codemix", "--input", gens, "-o", out, *flags, *args)
    assert_input_error(result, *fragments)
    assert not out.exists()


def _tiny_fasttext_model(fasttext, tmp_path: Path, languages=(("en", "eng_Latn"), ("ha", "hau_Latn"))) -> Path:
    """Train a tiny GlotLID-style fastText classifier on UDHR paragraphs (default: English and Hausa).

    Trained in a fresh interpreter: fastText's trainer can hit NaN in a process whose
    floating-point state other libraries (torch) have already changed.
    """
    import subprocess
    import sys

    from adaptkit import demo

    lines = [f"__label__{label} {p}" for lang, label in languages for p in demo.udhr_paragraphs(lang)]
    train = tmp_path / "lid-train.txt"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / f"lid-{len(languages)}.bin"
    code = (
        "import fasttext, sys\n"
        "model = fasttext.train_supervised(sys.argv[1], dim=16, epoch=60, lr=0.2, minn=2, maxn=4, bucket=20000, thread=1, seed=0, verbose=0)\n"
        "model.save_model(sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(train), str(path)], check=True, timeout=120)
    return path


def test_fasttext_backend_with_a_tiny_glotlid_style_model(tmp_path):
    fasttext = pytest.importorskip("fasttext", reason="the glotlid extra (fasttext) is not installed")
    import numpy as np

    from adaptkit.evals.codemix import analyze_response
    from adaptkit.evals.lid import load_lid

    path = _tiny_fasttext_model(fasttext, tmp_path)
    lid = load_lid("fasttext", {"model_path": str(path)})
    assert lid.languages() == ["en", "ha"]
    assert not analyze_response(lid, ENGLISH[1], "en", ["en", "ha"], 0.9)["code_mixed"]
    assert analyze_response(lid, HAUSA[0], "en", ["en", "ha"], 0.9)["code_mixed"]
    # restricted softmax = the SSU analysis: output rows of the candidates times the sentence vector
    raw = fasttext.load_model(str(path))
    logits = raw.get_output_matrix() @ raw.get_sentence_vector(MIXED)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    labels = raw.get_labels()
    assert dict(lid.rank(MIXED, ["en", "ha"]))["en"] == pytest.approx(float(probs[labels.index("__label__eng_Latn")]), rel=1e-5)


def test_fasttext_restriction_is_the_softmax_renormalised_over_the_label_set(tmp_path):
    fasttext = pytest.importorskip("fasttext", reason="the glotlid extra (fasttext) is not installed")
    import numpy as np

    from adaptkit.evals.lid import load_lid

    path = _tiny_fasttext_model(fasttext, tmp_path, (("en", "eng_Latn"), ("ha", "hau_Latn"), ("sw", "swh_Latn")))
    lid = load_lid("fasttext", {"model_path": str(path)})
    raw = fasttext.load_model(str(path))
    labels = raw.get_labels()
    logits = (raw.get_output_matrix() @ raw.get_sentence_vector(MIXED)).astype(np.float64)
    full = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()  # every label, then restricted below
    predicted = dict(zip(*raw.predict(MIXED, k=-1)))
    assert all(abs(predicted[label] - full[i]) < 2e-5 for i, label in enumerate(labels))  # the same distribution fastText predicts
    en, ha = full[labels.index("__label__eng_Latn")], full[labels.index("__label__hau_Latn")]
    restricted = dict(lid.rank(MIXED, ["en", "ha"]))
    assert set(restricted) == {"en", "ha"} and restricted["en"] == pytest.approx(en / (en + ha), rel=1e-5)
    unrestricted = dict(lid.rank(MIXED))
    assert unrestricted["en"] == pytest.approx(en, rel=1e-4) and abs(unrestricted["en"] - restricted["en"]) > 1e-3
    assert "lid-3.bin" in lid.describe() and "3 labels" in lid.describe()


def test_label_set_defaults_to_the_papers_pair_and_the_report_names_it():
    from adaptkit.evals.codemix import analyze, markdown
    from adaptkit.evals.lid import load_lid

    lid = load_lid("py3langid")
    rows = [{"response": HAUSA[0]}, {"response": MIXED}]
    paired = analyze(rows, lid, "ha")
    assert paired["settings"]["candidates"] == ["en", "ha"] and "English" in paired["settings"]["label_set"]
    assert analyze(rows, lid, "ha", ["sw"])["settings"]["candidates"] == ["ha", "sw"]
    everything = analyze(rows, lid, "ha", ["sw"], restrict=False)
    assert everything["settings"]["candidates"] == "all" and "--no-restrict" in everything["settings"]["label_set"]
    # the confidence is the expected language's probability over the set, as py3langid restricted natively computes it
    import py3langid.langid as langid

    reference = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
    reference.set_languages(["en", "ha"])
    assert paired["responses"][1]["expected_confidence"] == pytest.approx(dict(reference.rank(MIXED))["ha"], abs=1e-6)
    text = markdown(paired)
    assert "LID: py3langid (" in text and "label set: en, ha (the expected language and English" in text


def test_fasttext_backend_needs_its_extra_or_a_model_file(invoke, tmp_path):
    from conftest import assert_input_error

    gens = write_jsonl(tmp_path / "gens.jsonl", [{"response": ENGLISH[0]}])
    result = invoke("codemix", "--input", gens, "--expected-lang", "en", "--lid", "fasttext", "--set", f"model_path={tmp_path / 'nope.bin'}", "-o", tmp_path / "o")
    try:
        import fasttext  # noqa: F401

        assert_input_error(result, "model_path", "nope.bin")
    except ImportError:
        assert_input_error(result, "fasttext", "pip install 'adaptkit[glotlid]'")
    assert not (tmp_path / "o").exists()


def test_codemix_cli_label_set_flags(invoke, tmp_path):
    gens = write_jsonl(tmp_path / "gens.jsonl", [{"response": MIXED}, {"response": HAUSA[1]}])
    settings = {}
    for name, args in (("paired", ["--expected-lang", "ha"]), ("all", ["--expected-lang", "ha", "--no-restrict"]),
                       ("english", ["--expected-lang", "en"])):
        result = invoke("codemix", "--input", gens, *args, "--no-plots", "--no-details", "-o", tmp_path / name)
        assert result.returncode == 0, result
        settings[name] = (json.loads((tmp_path / name / "codemix.json").read_text())["settings"], result.stderr)
    assert settings["paired"][0]["candidates"] == ["en", "ha"] and "warning" not in settings["paired"][1]
    assert settings["all"][0]["candidates"] == "all" and settings["all"][0]["identifier"].startswith("py3langid (")
    assert settings["english"][0]["candidates"] == "all" and "warning: --expected-lang en without --other-lang" in settings["english"][1]
