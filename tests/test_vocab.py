"""`adaptkit vocab inspect / extend` through the CLI: byte-level BPE on tiny Llama, Qwen2 and OLMo-2,
BPE with byte fallback, identical logits on old tokens, a merge of the extended model, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_input_error
from helpers import run_ok, weights

TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    """Hausa and Amharic target text, English source text (UDHR)."""
    from adaptkit import demo

    root = tmp_path_factory.mktemp("vocab-texts")
    return {lang: demo.write_lines(demo.split_corpus(lang)[0], root / f"{lang}.txt") for lang in ("ha", "am", "en")}


def logits(directory: Path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def check_extended(source: Path, out: Path, added: int, target: Path) -> None:
    """Old ids, special tokens and template unchanged; new tokens from normal tokenization; old rows identical."""
    from transformers import AutoTokenizer

    old, new = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(out)
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    assert len(new_vocab) == len(old_vocab) + added
    assert new.all_special_tokens == old.all_special_tokens and new.all_special_ids == old.all_special_ids
    assert new.chat_template == old.chat_template
    assert set(new.added_tokens_decoder) == set(old.added_tokens_decoder)  # new tokens are not "added tokens"
    record = json.loads((out / "adaptkit_vocab.json").read_text())
    first = record["old_vocab_size"]
    assert record["new_token_ids"] == list(range(first, first + added))
    lines = target.read_text(encoding="utf-8").splitlines()
    ids = [i for line in lines for i in new(line, add_special_tokens=False)["input_ids"]]
    assert sum(i >= first for i in ids) > len(ids) // 10
    assert all(new.decode(new(line, add_special_tokens=False)["input_ids"]) == old.decode(old(line, add_special_tokens=False)["input_ids"]) for line in lines)
    before, after = weights(source), weights(out)
    for name, tensor in before.items():
        if tensor.shape == after[name].shape:
            assert torch.equal(tensor, after[name]), name
        else:
            assert after[name].shape[0] == record["new_vocab_size"] and torch.equal(after[name][: tensor.shape[0]], tensor), name


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True), ("olmo2", False)])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_extend_byte_level(invoke, make_model_dir, texts, tmp_path, arch, tied):
    source = tmp_path / "source"
    shutil.copytree(make_model_dir(arch, **({"tie_word_embeddings": True} if tied else {})), source)
    (source / "chat_template.jinja").write_text(TEMPLATE)
    out = tmp_path / "out"
    result = run_ok(invoke, "vocab", "extend", "--model", source, "--data", texts["ha"], "--add", "40", "--source-data", texts["en"], "-o", out, "--json")
    info = json.loads(result.stdout)
    assert info["added"] == 40 and info["tokenizer_kind"] == "byte-level BPE" and info["tied_embeddings"] is tied
    target, english = info["report"]
    assert target["after"]["tokens_per_word"] < target["before"]["tokens_per_word"]
    assert 0 <= info["source_changed_share"] < 0.1
    assert english["role"] == "source" and english["before"]["tokens"] > 0
    check_extended(source, out, 40, texts["ha"])
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).vocab_size == info["new_vocab_size"] == info["old_vocab_size"] + 40
    ids = list(range(4, info["old_vocab_size"], 7))  # a text made only of old tokens
    before, after = logits(source, ids), logits(out, ids)
    assert torch.equal(before, after[:, : before.shape[1]])


def test_inspect(invoke, make_model_dir, texts):
    result = run_ok(invoke, "vocab", "inspect", "--model", make_model_dir("llama"), "--data", texts["ha"], "--data", texts["am"], "--json")
    files = json.loads(result.stdout)["files"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_model_dir("llama"))
    lines = texts["am"].read_text(encoding="utf-8").splitlines()
    ids = [i for line in lines for i in tokenizer(line, add_special_tokens=False)["input_ids"]]
    words = sum(len([w for w in re.split(r"[\s\u1361]+", line) if w]) for line in lines)  # UDHR Amharic separates words with U+1361
    amharic = files[1]
    assert amharic["tokens"] == len(ids) and amharic["tokens_per_word"] == pytest.approx(len(ids) / words)
    assert amharic["bytes_per_token"] == pytest.approx(sum(len(line.encode()) for line in lines) / len(ids))
    partial = sum("\ufffd" in tokenizer.decode([i]) for i in ids)
    assert amharic["byte_share"] == pytest.approx(partial / len(ids)) and amharic["byte_share"] > 0.5  # Ge'ez is unseen
    assert files[0]["byte_share"] < amharic["byte_share"] and files[0]["unknown_share"] == 0


def byte_fallback_tokenizer(texts: list[str]):
    """A Llama-2-style BPE with byte fallback: metaspace normalizer, <0xXX> byte tokens in the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    draft.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # sentencepiece pieces for training only
    draft.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(draft.to_str())
    trained = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {t: i for i, (t, _) in enumerate(trained[:3])}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({t: 259 + i for i, (t, _) in enumerate(trained[3:])})
    spec["model"].update(vocab=vocab, byte_fallback=True, fuse_unk=True)
    spec["added_tokens"] = [dict(a, id=vocab[a["content"]]) for a in spec["added_tokens"]]
    spec["pre_tokenizer"] = None  # as in Llama 2 / Mistral conversions: the normalizer does the metaspace work
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def fallback_dir(tmp_path_factory, texts):
    from adaptkit import demo

    lines = texts["en"].read_text().splitlines() + texts["ha"].read_text().splitlines()
    tokenizer = byte_fallback_tokenizer(lines)
    directory = tmp_path_factory.mktemp("fallback-llama")
    demo.tiny_model("llama", len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=None).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_extend_byte_fallback(invoke, fallback_dir, texts, tmp_path):
    out = tmp_path / "out"
    result = run_ok(invoke, "vocab", "extend", "--model", fallback_dir, "--data", texts["am"], "--data", texts["ha"], "--add", "120",
                    "--min-frequency", "3", "--source-data", texts["en"], "-o", out, "--json")
    info = json.loads(result.stdout)
    assert info["tokenizer_kind"] == "BPE with byte fallback" and info["added"] == 120
    amharic = info["report"][0]
    assert amharic["before"]["byte_share"] > 0.9 and amharic["after"]["byte_share"] < amharic["before"]["byte_share"]
    assert amharic["after"]["tokens_per_word"] < amharic["before"]["tokens_per_word"] / 2
    record = json.loads((out / "adaptkit_vocab.json").read_text())
    singles = [t for t in record["new_tokens"] if len(t) == 1]
    assert len(singles) > 20 and sum("\u1200" <= c <= "\u139f" for c in singles) >= 0.9 * len(singles)  # Ge'ez characters that fell back to bytes
    assert not any("\u2581" in t[1:] for t in record["new_tokens"])  # merges stay inside sentencepiece pieces
    check_extended(fallback_dir, out, 120, texts["am"])
    assert info["source_changed_share"] < 0.1


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_extend_pads_rows_and_merges(invoke, make_model_dir, texts, tmp_path):
    base = make_model_dir("llama")
    out = tmp_path / "out"
    run_ok(invoke, "vocab", "extend", "--model", base, "--data", texts["ha"], "--add", "30", "--pad-to-multiple-of", "64", "-o", out, "-q")
    record = json.loads((out / "adaptkit_vocab.json").read_text())
    assert record["new_vocab_size"] == 448 and record["filler_ids"] == list(range(414, 448))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 448
    from adaptkit.errors import InputError
    from adaptkit.io.vocab_record import read_record

    assert read_record(out) == record and read_record(base) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adaptkit_vocab.json").write_text("{}")
    with pytest.raises(InputError, match="adaptkit_vocab.json"):
        read_record(tmp_path / "broken")
    run_ok(invoke, "merge", "task-arithmetic", "--base", base, "--model", out, "--lambda", "0.5", "-o", tmp_path / "merged", "-q")
    w0, we, wm = weights(base), weights(out), weights(tmp_path / "merged")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.allclose(wm[name][:384], w0[name] + 0.5 * (we[name][:384] - w0[name]), atol=1e-6)
        assert torch.equal(wm[name][384:], we[name][384:])
    assert torch.allclose(wm["model.norm.weight"], w0["model.norm.weight"] + 0.5 * (we["model.norm.weight"] - w0["model.norm.weight"]))


def _unsupported_tokenizer_dir(root: Path, kind: str) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from adaptkit import demo

    vocab = {"[UNK]": 0, "a": 1, "b": 2, "ab": 3}
    model = models.WordPiece(vocab, unk_token="[UNK]") if kind == "WordPiece" else models.Unigram([(t, -1.0) for t in vocab], 0)
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    directory = root / kind
    demo.tiny_model("llama", 4, bos_token_id=0, eos_token_id=0, pad_token_id=0).save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(directory)
    return directory


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_bad_input(invoke, make_model_dir, texts, tmp_path):
    model = make_model_dir("llama")
    out = tmp_path / "out"
    common = ("vocab", "extend", "--model", model, "-o", out)
    assert_input_error(invoke(*common, "--data", texts["ha"], "--add", "0"), "--add", "positive")
    assert_input_error(invoke(*common, "--data", texts["ha"], "--add", "many"), "--add")
    assert_input_error(invoke(*common, "--data", texts["ha"], "--add", "100000"), "--add", "supports only")
    assert_input_error(invoke(*common, "--data", texts["ha"], "--add", "5", "--init", "subword-men"), "--init", "subword-mean")
    empty, latin1 = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("\n \n")
    latin1.write_bytes("Gar\xe7on caf\xe9\n".encode("latin-1"))
    assert_input_error(invoke(*common, "--data", empty, "--add", "5"), "--data", "no text")
    assert_input_error(invoke(*common, "--data", latin1, "--add", "5"), "--data", "UTF-8")
    assert_input_error(invoke(*common, "--data", texts["ha"], "--source-data", empty, "--add", "5"), "--source-data")
    for kind in ("WordPiece", "Unigram"):
        directory = _unsupported_tokenizer_dir(tmp_path, kind)
        assert_input_error(invoke("vocab", "extend", "--model", directory, "-o", out, "--data", texts["ha"], "--add", "5"), "--model", f"'{kind}'")
    bare = tmp_path / "bare"
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    assert_input_error(invoke(*common[:3], bare, "-o", out, "--data", texts["ha"], "--add", "5"), "--model", "tokenizer")
    assert_input_error(invoke("vocab", "inspect", "--model", bare, "--data", texts["ha"]), "--model", "tokenizer")
    assert not out.exists() and not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_help(invoke):
    root = invoke("--help")
    assert root.returncode == 0 and "vocab" in root.stdout
    group = invoke("vocab", "--help")
    assert group.returncode == 0 and "inspect" in group.stdout and "extend" in group.stdout
    extend = invoke("vocab", "extend", "--help")
    for flag in ("--add", "--min-frequency", "--init", "--pad-to-multiple-of", "--source-data", "--data", "--output"):
        assert flag in extend.stdout, flag
