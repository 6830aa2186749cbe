"""Calibration sets: text / chat / Alpaca rendering, seeded sampling and packing, manifests, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from adaptkit.calibration import BUILTIN_TEMPLATES, build_calibration, load_calibration
from adaptkit.data.corpus import pack_blocks
from adaptkit.errors import InputError
from conftest import assert_input_error

CHAT_TEMPLATE = "{% for m in messages %}{{ '<s>' + m['role'] + ': ' + m['content'] + '</s>' }}{% endfor %}"


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, make_model_dir, tokenizer):
    """The tiny Llama with a chat template in its tokenizer."""
    import shutil

    directory = tmp_path_factory.mktemp("chat-model")
    shutil.copytree(make_model_dir("llama"), directory, dirs_exist_ok=True)
    chat_tokenizer = tokenizer.__class__.from_pretrained(str(directory))
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    chat_tokenizer.save_pretrained(directory)
    return directory


def _chat_records(corpus_lines: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]} for a, b in zip(corpus_lines[::2], corpus_lines[1::2])]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_text_calibration_blocks_are_the_packed_stream_seeded_and_reproducible(tmp_path, corpora, tokenizer, llama_dir, invoke):
    out = tmp_path / "calib"
    args = ["calibrate", "--model", llama_dir, "--data", corpora["en"], "--pool", "1000", "--num-samples", "8", "--block-size", "32", "--quiet"]
    result = invoke(*args, "-o", out, "--json")
    assert result.returncode == 0, result
    reported = json.loads(result.stdout)
    calibration = load_calibration(out)
    assert calibration.blocks.shape == (8, 32) and reported["num_samples"] == 8 and reported["blocks_sha256"] == calibration.hash
    documents = corpora["en"].read_text().splitlines()
    stream = [t for d in documents for t in tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    packed = pack_blocks(torch.tensor(stream), 32)  # pool > file: every document in order, each followed by EOS
    assert calibration.manifest["blocks_available"] == packed.shape[0] and calibration.manifest["examples_used"] == len(documents)
    rows = [int((packed == block).all(1).nonzero()[0]) for block in calibration.blocks]
    assert rows == sorted(rows) and len(set(rows)) == 8  # distinct blocks of the stream, in stream order
    again = invoke(*args, "-o", tmp_path / "again")
    other = invoke(*args[:-1], "--seed", "7", "--quiet", "-o", tmp_path / "other")
    assert again.returncode == 0 and other.returncode == 0
    assert load_calibration(tmp_path / "again").hash == calibration.hash
    assert load_calibration(tmp_path / "other").hash != calibration.hash


def test_pool_is_a_seeded_sample_of_raw_examples(tokenizer):
    documents = [f"document number {i} says hello" for i in range(50)]
    a = build_calibration(tokenizer, documents, fmt="text", pool=10, num_samples=100, block_size=8, seed=1)
    b = build_calibration(tokenizer, documents, fmt="text", pool=10, num_samples=100, block_size=8, seed=1)
    c = build_calibration(tokenizer, documents, fmt="text", pool=10, num_samples=100, block_size=8, seed=2)
    assert a.manifest["pool_sampled"] == 10 and a.manifest["examples_seen"] == 50
    assert a.hash == b.hash and a.hash != c.hash
    assert a.manifest["num_samples"] == a.manifest["blocks_available"] < 100  # fewer blocks than asked: all, recorded


def test_chat_and_alpaca_are_rendered_with_the_model_template(tmp_path, corpora, chat_model_dir, invoke):
    lines = corpora["en"].read_text().splitlines()[:20]
    chats = _chat_records(lines)
    alpaca = [{"instruction": lines[0], "input": lines[1], "output": lines[2]}, {"instruction": lines[3], "input": "", "output": lines[4]}]
    data = _write_jsonl(tmp_path / "mix.jsonl", chats + alpaca + [{"unrelated": 1}])
    out = tmp_path / "calib"
    result = invoke("calibrate", "--model", chat_model_dir, "--data", data, "--pool", "100", "--num-samples", "10000", "--block-size", "16", "-o", out, "--quiet")
    assert result.returncode == 0, result
    calibration = load_calibration(out)
    manifest = calibration.manifest
    assert manifest["examples_by_format"] == {"chat": len(chats), "alpaca": 2, "text": 0}
    assert manifest["examples_skipped"]["unrecognized"] == 1 and manifest["template"] == "model"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat_model_dir))
    messages = [c["messages"] for c in chats] + [
        [{"role": "user", "content": f"{lines[0]}\n\n{lines[1]}"}, {"role": "assistant", "content": lines[2]}],
        [{"role": "user", "content": lines[3]}, {"role": "assistant", "content": lines[4]}],
    ]
    stream = []
    for conversation in messages:
        text = "".join(f"<s>{m['role']}: {m['content']}</s>" for m in conversation)
        stream += tok(text, add_special_tokens=False)["input_ids"]
    expected = pack_blocks(torch.tensor(stream), 16)
    assert torch.equal(calibration.blocks, expected)


def _reference_group_texts(examples: dict, block_size: int) -> dict:
    """generate_calibration_data.py's group_texts, transcribed."""
    concatenated = {k: sum(examples[k], []) for k in examples.keys()}
    total_length = len(concatenated[list(examples.keys())[0]])
    if total_length >= block_size:
        total_length = (total_length // block_size) * block_size
    return {k: [t[i: i + block_size] for i in range(0, total_length, block_size)] for k, t in concatenated.items()}


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_reference_recipe_is_the_reference_scripts_packing_and_stride(tmp_path, corpora, chat_model_dir):
    """recipe=reference against generate_calibration_data.py (chat template text, tokenizer(texts, truncation=True,
    max_length=block), datasets.map(group_texts, batched=True) in batches of 1,000) and data_utils.py (blocks
    range(0, N, N // n)[:n]), on 1,500 examples so that two packing batches exist."""
    from transformers import AutoTokenizer

    lines = corpora["ha"].read_text().splitlines()
    chats = [{"messages": [{"role": "user", "content": lines[i % len(lines)][: 5 + i % 60]}, {"role": "assistant", "content": f"{i}"}]}
             for i in range(1500)]
    data = _write_jsonl(tmp_path / "chat.jsonl", chats)
    ours = build_calibration(chat_model_dir, data, pool=2000, num_samples=7, block_size=24, recipe="reference")
    tok = AutoTokenizer.from_pretrained(str(chat_model_dir))
    texts = [tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=False) for c in chats]
    tokenized = tok(texts, padding=False, truncation=True, max_length=24)["input_ids"]
    assert max(len(t) for t in tokenized) == 24 and min(len(t) for t in tokenized) < 24  # truncation acts
    blocks = []
    for start in range(0, len(tokenized), 1000):  # datasets' map(batched=True): 1,000 examples per call
        blocks += _reference_group_texts({"input_ids": tokenized[start:start + 1000]}, 24)["input_ids"]
    indices = list(range(0, len(blocks), max(1, len(blocks) // 7)))[:7]
    assert torch.equal(ours.blocks, torch.tensor([blocks[i] for i in indices]))
    assert ours.manifest["recipe"] == "reference" and ours.manifest["blocks_available"] == len(blocks)
    whole = pack_blocks(torch.tensor(sum(tokenized, [])), 24)
    assert whole.shape[0] != len(blocks) or not torch.equal(whole, torch.tensor(blocks))  # per-batch packing differs
    with pytest.raises(InputError, match="--recipe"):
        build_calibration(chat_model_dir, data, recipe="paper")


def test_chat_data_without_a_template_is_refused_unless_one_is_chosen(tmp_path, corpora, llama_dir, invoke):
    data = _write_jsonl(tmp_path / "chat.jsonl", _chat_records(corpora["en"].read_text().splitlines()[:40]))
    out = tmp_path / "calib"
    result = invoke("calibrate", "--model", llama_dir, "--data", data, "--block-size", "16", "-o", out)
    assert_input_error(result, "--template", "no chat template")
    assert not out.exists()
    result = invoke("calibrate", "--model", llama_dir, "--data", data, "--block-size", "16", "--template", "chatml", "-o", out, "--quiet")
    assert result.returncode == 0, result
    assert load_calibration(out).manifest["template"] == "chatml" and "chatml" in BUILTIN_TEMPLATES


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_dataset_directory_input(tmp_path, corpora, tokenizer):
    import datasets

    lines = corpora["ha"].read_text().splitlines()
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(tmp_path / "ds"))
    from_dir = build_calibration(tokenizer, tmp_path / "ds", pool=1000, num_samples=5, block_size=32, seed=3)
    from_file = build_calibration(tokenizer, corpora["ha"], pool=1000, num_samples=5, block_size=32, seed=3)
    assert torch.equal(from_dir.blocks, from_file.blocks)


def test_bad_calibration_data(tmp_path, llama_dir, invoke):
    no_usable = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}, {"messages": "not a list"}])
    too_short = tmp_path / "short.txt"
    too_short.write_text("A short line.\n")
    cases = [
        (["--data", no_usable], ["--data", "no usable examples"]),
        (["--data", too_short, "--block-size", "512"], ["--data", "fewer than one block", "--block-size"]),
        (["--data", too_short, "--format", "xml"], ["--format", "xml"]),
        (["--data", tmp_path / "missing.jsonl"], ["--data", "does not exist"]),
        (["--data", too_short, "--num-samples", "0"], ["--num-samples"]),
    ]
    for extra, fragments in cases:
        out = tmp_path / "out"
        assert_input_error(invoke("calibrate", "--model", llama_dir, *extra, "-o", out), *fragments)
        assert not out.exists()


def test_tampered_calibration_is_refused(tmp_path, calib_dir):
    import shutil

    copy = tmp_path / "calib"
    shutil.copytree(calib_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["blocks_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="--calib.*hash"):
        load_calibration(copy)
    with pytest.raises(InputError, match="not a calibration directory"):
        load_calibration(tmp_path)




def test_hub_dataset_is_read_through_the_source_layer(tmp_path, tokenizer, monkeypatch):
    """`hub:ID[:CONFIG][@SPLIT]` (and a bare ID) from the offline Hub cache, read by adaptkit.data.sources:
    the pool is the seeded streaming shuffle of the split, as `datasets` itself gives it."""
    import datasets
    import huggingface_hub.constants

    from adaptkit.calibration import HUB_SHUFFLE_BUFFER

    repo = tmp_path / "hub" / "datasets--someone--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    (snapshot / "ha").mkdir(parents=True)
    rows = [{"content": f"takarda ta {i} tana da kalmomi {' '.join(['na'] * (i % 7 + 3))}"} for i in range(40)]
    (snapshot / "ha" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (snapshot / "README.md").write_text("---\nconfigs:\n- config_name: ha\n  data_files:\n  - split: dev\n    path: ha/dev.jsonl\n---\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    stream = datasets.load_dataset(str(snapshot), "ha", split="dev", streaming=True)
    expected_pool = list(stream.shuffle(seed=3, buffer_size=HUB_SHUFFLE_BUFFER).take(100))
    expected = build_calibration(tokenizer, expected_pool, pool=100, num_samples=4, block_size=16, seed=3, text_field="content")
    from_hub = build_calibration(tokenizer, "hub:someone/tiny:ha@dev", pool=100, num_samples=4, block_size=16, seed=3, text_field="content")
    assert torch.equal(from_hub.blocks, expected.blocks)
    bare = build_calibration(tokenizer, "someone/tiny", pool=100, num_samples=4, block_size=16, seed=3, text_field="content", split="dev")
    assert torch.equal(bare.blocks, expected.blocks)
    with pytest.raises(InputError, match="'someone/other' is not in the Hub cache and HF_HUB_OFFLINE is set"):
        build_calibration(tokenizer, "hub:someone/other", pool=10, num_samples=1, block_size=16)


@pytest.mark.slow  # over ~0.3 s: two calibrations
def test_too_few_blocks_warning_says_whether_the_pool_or_the_data_is_the_limit(tmp_path, corpora, llama_dir, invoke):
    data = tmp_path / "ten.txt"
    data.write_text("\n".join(corpora["en"].read_text().splitlines()[:10]) + "\n")
    small_pool = invoke("calibrate", "--model", llama_dir, "--data", data, "--pool", "3", "--num-samples", "1000", "--block-size", "16", "-o", tmp_path / "a")
    all_data = invoke("calibrate", "--model", llama_dir, "--data", data, "--pool", "50", "--num-samples", "1000", "--block-size", "16", "-o", tmp_path / "b")
    assert small_pool.returncode == all_data.returncode == 0, (small_pool, all_data)
    assert "raise --pool (sampled 3 of 10 examples)" in small_pool.stderr
    warning = next(line for line in all_data.stderr.splitlines() if line.startswith("warning:"))
    assert "all 10 examples" in warning and "give more data" in warning and "raise --pool" not in warning
