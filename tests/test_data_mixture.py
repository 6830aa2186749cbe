"""The mixture sampler (source replay) and the `adaptkit data` command."""

from __future__ import annotations

import json

import pytest
import torch

from adaptkit.data.mixture import Mixture, apportion, parse_mixture, parse_source
from adaptkit.engine.loop import Batches
from adaptkit.errors import InputError


def _blocks(n, seq_len=4, base=0):
    return torch.arange(base, base + n * seq_len).reshape(n, seq_len)


def test_one_source_is_exactly_the_engine_batches_order():
    blocks = _blocks(13)
    for batch, micro, world in ((8, 2, 1), (8, 2, 2), (6, 3, 2)):
        for rank in range(world):
            ours = Mixture({"data": blocks}, {"data": 1.0}, batch, micro, seed=5, rank=rank, world_size=world)
            engine = Batches(blocks, batch, micro, 5, rank, world)
            assert ours.accumulation == engine.accumulation
            for step in range(7):  # several epochs of 13 blocks
                for m in range(ours.accumulation):
                    assert torch.equal(ours.get(step, m), engine.get(step, m))


def _global_batch(mixture_for, step, world):
    rows = []
    for m in range(mixture_for(0, world).accumulation):
        for rank in range(world):
            rows.append(mixture_for(rank, world).get(step, m))
    return torch.cat(rows)


def test_weights_resume_and_process_counts_give_the_same_global_batches():
    sources = {"ha": _blocks(50, base=0), "en": _blocks(7, base=10_000)}
    weights = {"ha": 0.75, "en": 0.25}

    def make(rank, world):
        return Mixture(sources, weights, 8, 8 // world // 2 or 1, seed=3, rank=rank, world_size=world, period=40)

    one = [_global_batch(make, s, 1) for s in range(25)]
    two = [_global_batch(make, s, 2) for s in range(25)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    resumed = make(0, 1)
    assert torch.equal(_global_batch(lambda r, w: resumed, 17, 1), one[17])  # a fresh sampler at step 17: same batch
    drawn = torch.cat(one)
    from_en = int((drawn[:, 0] >= 10_000).sum())
    assert from_en == 25 * 8 // 4  # 200 samples, periods of 40 with exactly 10 English each
    seen = make(0, 1).seen(200)
    assert seen["en"]["samples"] == from_en and seen["ha"]["samples"] == 200 - from_en
    assert seen["en"]["epochs"] == pytest.approx(from_en / 7) and seen["en"]["tokens"] == from_en * 4
    en_rows = drawn[drawn[:, 0] >= 10_000][:, 0] // 4
    for epoch in range(from_en // 7):  # each epoch of the small source is a permutation of all its blocks
        assert sorted(en_rows[epoch * 7:(epoch + 1) * 7].tolist()) == [2500 + i for i in range(7)]
    assert not torch.equal(en_rows[:7], en_rows[7:14])  # re-shuffled per epoch
    assert not torch.equal(_global_batch(lambda r, w: Mixture(sources, weights, 8, 4, seed=4, period=40), 0, 1), one[0])  # the seed matters


def test_parse_sources_and_weights():
    assert parse_source("ha=tokens/hau") == parse_source("ha=tokens/hau:1")
    assert parse_source("en=hub:HuggingFaceFW/fineweb-edu@train:0.05").weight == 0.05
    assert parse_source("en=hub:HuggingFaceFW/fineweb-edu@train:0.05").spec == "hub:HuggingFaceFW/fineweb-edu@train"
    assert parse_source("hub:allenai/madlad-400:ha@clean").spec == "hub:allenai/madlad-400:ha@clean"
    assert [s.name for s in parse_mixture(["a=x.txt:3", "b=y.txt"])] == ["a", "b"]
    assert list(apportion([0.95, 0.05], 100)) == [95, 5] and list(apportion([1e-9, 1], 10)) == [1, 9]
    for values, message in (
        (["a=x.txt", "a=y.txt"], "duplicate source name 'a'"),
        (["a=x.txt:0"], "weight of source 'a' must be a positive number, got '0'"),
        (["a=x.txt:-2"], "positive number, got '-2'"),
        (["a=x.txt:nan"], "positive number, got 'nan'"),
        (["a=x.txt", "y.txt"], "'y.txt' needs a name"),
    ):
        with pytest.raises(InputError, match=message):
            parse_mixture(values)
    with pytest.raises(InputError, match="unknown source name 'fr'"):
        Mixture({"ha": _blocks(3)}, {"fr": 1.0}, 2, 1, 0)


def test_prepare_then_inspect_then_train_from_the_store(tmp_path, llama_dir, corpora, invoke, tokenizer):
    from adaptkit.data.corpus import load_blocks

    out = tmp_path / "tokens"
    result = invoke("data", "prepare", "--model", llama_dir, "--data", corpora["ha"], "--data", corpora["en"],
                    "--seq-len", "32", "--num-proc", "2", "--max-tokens", f"{corpora['ha']}=1.5k", "--max-tokens", "3k", "-o", out, "--json")
    assert result.returncode == 0, result
    prepared = json.loads(result.stdout)
    assert prepared["tokens"] == 3000 and [s["spec"] for s in prepared["sources"]] == [str(corpora["ha"]), str(corpora["en"])]
    assert [s["tokens"] for s in prepared["sources"]] == [1500, 1500] and prepared["blocks"] == 2 * (1500 // 32)
    shown = json.loads(invoke("data", "inspect", out, "--seq-len", "32", "--json").stdout)
    assert shown["documents"] == prepared["documents"] and shown["tokenizer"]["fingerprint"] == prepared["tokenizer"]["fingerprint"]
    assert shown["bytes_per_token"] == pytest.approx(shown["bytes"] / 3000)
    table = invoke("data", "inspect", out)
    assert table.returncode == 0 and "total" in table.stdout and "fingerprint" in table.stdout
    direct = load_blocks([str(corpora["ha"]), str(corpora["en"])], tokenizer, 32, max_tokens=[f"{corpora['ha']}=1500", "3000"])
    assert torch.equal(load_blocks([str(out)], tokenizer, 32)[:], direct[:])
    run = invoke("train", "--model", llama_dir, "--data", out, "-o", tmp_path / "run", "--max-steps", "1",
                 "--batch-size", "2", "--seq-len", "32", "--quiet")
    assert run.returncode == 0, run


@pytest.mark.parametrize("args, fragments", [
    (["--data", "x.csv"], ["--data", "unsupported format '.csv'"]),
    (["--max-tokens", "lots"], ["--max-tokens", "lots"]),
    (["--data", "hub:nobody/nothing"], ["--data", "not in the Hub cache", "hf download nobody/nothing"]),
])
def test_prepare_bad_input(tmp_path, llama_dir, corpora, invoke, args, fragments):
    (tmp_path / "x.csv").write_text("text\nhello\n")
    base = {"--data": str(corpora["ha"])}
    given = dict(zip(args[::2], args[1::2]))
    if "--data" in given and given["--data"] == "x.csv":
        given["--data"] = str(tmp_path / "x.csv")
    merged = {**base, **given}
    result = invoke("data", "prepare", "--model", llama_dir, *[x for kv in merged.items() for x in kv], "-o", tmp_path / "out")
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert not (tmp_path / "out").exists()
