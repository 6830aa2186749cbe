"""The mixture sampler (source replay) and the `adaptkit data` command."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from adaptkit.data.mixture import Mixture, apportion, parse_mixture, parse_source
from adaptkit.engine.batches import Batches
from adaptkit.errors import InputError


pytestmark = pytest.mark.slow  # CLI trainings over mixtures


def _blocks(n, seq_len=4, base=0):
    return torch.arange(base, base + n * seq_len).reshape(n, seq_len)


def test_one_source_is_exactly_the_engine_batches_order():
    """Batches (the one-source mixture) against the order written out: sample i of the run is block
    perm_e[i mod N], e = i // N, perm_e = randperm(N) seeded seed * 1_000_003 + e."""
    blocks = _blocks(13)
    for batch, micro, world in ((8, 2, 1), (8, 2, 2), (6, 3, 2)):
        for rank in range(world):
            engine = Batches(blocks, batch, micro, 5, rank, world)
            assert engine.accumulation == batch // (micro * world)
            for step in range(7):  # several epochs of 13 blocks
                for m in range(engine.accumulation):
                    start = step * batch + (m * world + rank) * micro
                    perms = {e: torch.randperm(13, generator=torch.Generator().manual_seed(5 * 1_000_003 + e)) for e in range(6)}
                    expected = blocks[torch.stack([perms[i // 13][i % 13] for i in range(start, start + micro)])]
                    assert torch.equal(engine.get(step, m), expected)


class _Recording:
    """A block reader that records which rows were read."""

    def __init__(self, blocks):
        self.blocks, self.read = blocks, []
        self.shape = blocks.shape

    def __getitem__(self, rows):
        self.read.extend(rows.tolist())
        return self.blocks[rows]


def test_each_process_reads_only_the_blocks_of_its_own_micro_batches():
    sources = {"ha": _blocks(50, base=0), "en": _blocks(9, base=10_000)}
    weights = {"ha": 0.8, "en": 0.2}
    one = Mixture(sources, weights, 8, 2, seed=1, period=20)
    for rank in range(2):
        readers = {name: _Recording(blocks) for name, blocks in sources.items()}
        mine = Mixture(readers, weights, 8, 2, seed=1, rank=rank, world_size=2, period=20)
        for step in range(6):
            for m in range(mine.accumulation):
                before = sum(len(r.read) for r in readers.values())
                batch = mine.get(step, m)
                assert sum(len(r.read) for r in readers.values()) - before == 2  # its own two rows, nothing else
                global_rows = torch.cat([one.get(step, k) for k in range(one.accumulation)])
                assert torch.equal(batch, global_rows[(m * 2 + rank) * 2:(m * 2 + rank) * 2 + 2])


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


MIX = ["--seq-len", "32", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-2", "--set", "log_steps=2", "--quiet"]


def _final_weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


def test_train_mixture_records_tokens_per_source_and_resumes_bit_identically(tmp_path, llama_dir, corpora, invoke, tokenizer):
    from adaptkit.data.corpus import load_blocks

    args = ["--model", llama_dir, "--data", f"ha={corpora['ha']}", "--data", f"en={corpora['en']}:0.25",
            "--max-tokens", "en=640", "--num-proc", "1", "--max-steps", "8", "--save-steps", "4", *MIX]
    assert invoke("train", *args, "-o", tmp_path / "straight").returncode == 0
    assert invoke("train", *args, "-o", tmp_path / "stopped").returncode == 0
    stopped = tmp_path / "stopped"
    shutil.rmtree(stopped / "final")  # as if killed after the checkpoint at step 4
    resumed = invoke("train", *args, "-o", stopped, "--resume", "--json")
    assert resumed.returncode == 0, resumed
    assert json.loads(resumed.stdout)["resumed_from"] == 4
    a, b = _final_weights(tmp_path / "straight"), _final_weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)

    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    for row in rows:  # cumulative, all samples accounted for
        assert set(row["tokens_by_source"]) == {"ha", "en"}
        assert sum(row["tokens_by_source"].values()) == row["step"] * 4 * 32
    again = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tokens_by_source"]) for r in again] == [(r["step"], r["tokens_by_source"]) for r in rows]
    en_tokens = rows[-1]["tokens_by_source"]["en"]
    assert 0 < en_tokens < rows[-1]["tokens_by_source"]["ha"]
    card = (tmp_path / "straight" / "run_card.md").read_text()
    en_blocks = 640 // 32  # the cap, cut into blocks
    ha_blocks = len(load_blocks([str(corpora["ha"])], tokenizer, 32))
    assert f"| en | `{corpora['en']}` sha256" in card and f"| ha | `{corpora['ha']}` sha256" in card
    assert f"| 0.25 (20.0%) | {en_tokens:,} | {en_tokens / 32 / en_blocks:.3f} |" in card
    ha_tokens = rows[-1]["tokens_by_source"]["ha"]
    assert f"| 1 (80.0%) | {ha_tokens:,} | {ha_tokens / 32 / ha_blocks:.3f} |" in card


def test_one_source_rows_and_the_config_file_mixture(tmp_path, llama_dir, corpora, invoke):
    from adaptkit.train_settings import build_config

    one = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--max-steps", "2", *MIX, "-o", tmp_path / "one")
    assert one.returncode == 0, one
    row = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["tokens_by_source"] == {"data": 2 * 4 * 32}
    config_file = tmp_path / "mix.yaml"
    config_file.write_text(f"model: {llama_dir}\ndata:\n  max_tokens: 3k\n  sources:\n"
                           f"    - {{name: ha, spec: {corpora['ha']}, max_tokens: 2k}}\n"
                           f"    - {{name: en, spec: {corpora['en']}, weight: 0.05, text_field: body}}\n")
    from_file = build_config(config_file, {}, None).data
    from_flags = build_config(None, {"model": str(llama_dir), "data": [f"ha={corpora['ha']}", f"en={corpora['en']}:0.05"],
                                     "max_tokens": ["3k", "ha=2k"], "text_field": ["en=body"]}, None).data
    assert from_file == from_flags
    assert [(s.name, s.weight, s.max_tokens, s.text_field) for s in from_file.sources] == [("ha", 1.0, 2000, None), ("en", 0.05, None, "body")]
    assert from_file.max_tokens == 3000
    # --data on the command line replaces the file's sources
    replaced = build_config(config_file, {"data": [str(corpora["en"])]}, None).data
    assert replaced.paths == [str(corpora["en"])] and not replaced.sources


@pytest.mark.slow
def test_two_processes_build_the_store_once_and_train_the_one_process_mixture(tmp_path, llama_dir, corpora, invoke):
    """torchrun, 2 gloo processes, raw sources: local rank 0 builds the one store (the other waits
    and maps it: see test_store's waiting tests), and the run equals the one-process run."""
    from _scale_helpers import env_with, launch

    args = ["train", "--model", llama_dir, "--data", f"ha={corpora['ha']}", "--data", f"en={corpora['en']}:0.25",
            "--max-steps", "4", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--quiet", "--json"]
    cache = tmp_path / "cache"
    result = launch("torchrun", 2, [*args, "-o", tmp_path / "two"], env_with(ADAPTKIT_CACHE=str(cache)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["processes"] == 2
    stores = sorted(p.name for p in (cache / "stores").iterdir())
    assert len(stores) == 1 and not stores[0].startswith("."), stores  # one store, nothing half-built left over
    index = json.loads((cache / "stores" / stores[0] / "index.json").read_text())
    assert [s["spec"] for s in index["sources"]] == [str(corpora["ha"]), str(corpora["en"])]
    one = invoke(*args, "--micro-batch-size", "2", "-o", tmp_path / "one")
    assert one.returncode == 0, one
    a, b = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=2e-5, rtol=0) for k in a)  # float summation order differs
    rows = [(tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1] for d in ("one", "two")]
    assert json.loads(rows[0])["tokens_by_source"] == json.loads(rows[1])["tokens_by_source"]


def test_per_source_flags_name_the_config_files_sources(tmp_path, llama_dir, corpora):
    from adaptkit.train_settings import build_config

    config_file = tmp_path / "mix.yaml"
    config_file.write_text(f"model: {llama_dir}\ndata:\n  sources:\n    - {{name: ha, spec: {corpora['ha']}}}\n"
                           f"    - {{name: en, spec: {corpora['en']}, weight: 0.05}}\n")
    data = build_config(config_file, {"max_tokens": ["en=1k"], "text_field": ["ha=body"]}, None).data
    assert [(s.name, s.weight, s.max_tokens, s.text_field) for s in data.sources] == [("ha", 1.0, None, "body"), ("en", 0.05, 1000, None)]
    with pytest.raises(InputError, match="--max-tokens: unknown source name 'fr' \\(sources: ha, en\\)"):
        build_config(config_file, {"max_tokens": ["fr=1k"]}, None)


def test_validation_fraction_holds_out_of_every_source_of_a_mixture(tmp_path, llama_dir, corpora, invoke, tokenizer):
    """--validation-fraction with a mixture: each source keeps the same seeded share out of training, and
    the held-out blocks of all sources are scored together as the eval set 'validation'."""
    from adaptkit.data.corpus import load_blocks
    from adaptkit.engine.evaluation import hold_out_validation, split_validation

    ha, en = (load_blocks([str(corpora[lang])], tokenizer, 32) for lang in ("ha", "en"))
    together = torch.cat([ha.tensor(), en.tensor()])
    sources, blocks, held = hold_out_validation({"ha": ha, "en": en}, together, 0.25, 7)
    for name, source in (("ha", ha), ("en", en)):
        train, out = split_validation(source, 0.25, 7)
        assert torch.equal(sources[name].tensor(), train.tensor())
    expected_held = torch.cat([split_validation(ha, 0.25, 7)[1].tensor(), split_validation(en, 0.25, 7)[1].tensor()])
    assert torch.equal(held.tensor(), expected_held)
    assert blocks.shape[0] + held.shape[0] == together.shape[0] and blocks.shape[0] == sum(s.shape[0] for s in sources.values())
    assert torch.equal(blocks.tensor(), torch.cat([sources["ha"].tensor(), sources["en"].tensor()]))

    run = invoke("train", "--model", llama_dir, "--data", f"ha={corpora['ha']}", "--data", f"en={corpora['en']}:0.25",
                 "--validation-fraction", "0.25", "--eval-steps", "2", "--max-steps", "2", *MIX, "-o", tmp_path / "run")
    assert run.returncode == 0, run
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("eval") == "validation"] == [0, 2]


def test_a_source_the_run_never_draws_from_is_warned_about():
    from adaptkit.data.mixture import Mixture

    blocks = {"ha": torch.zeros(40, 8, dtype=torch.long), "en": torch.ones(40, 8, dtype=torch.long)}
    starved_seeds = 0
    for seed in range(20):
        mixture = Mixture(blocks, {"ha": 0.95, "en": 0.05}, batch_size=4, micro_batch_size=4, seed=seed)
        drawn = {mixture.names[mixture.locate(i)[0]] for i in range(16)}  # the run's 4 steps x 4 samples, one by one
        warnings = mixture.starved(16)
        assert [w.split("'")[1] for w in warnings] == [n for n in mixture.names if n not in drawn], seed
        starved_seeds += bool(warnings)
        assert mixture.starved(10_000) == []  # a whole period draws every source
    assert starved_seeds > 0  # 5% of 16 samples is 0.8 expected: some seeds draw no English sample
    mixture = Mixture(blocks, {"ha": 0.95, "en": 0.05}, batch_size=4, micro_batch_size=4, seed=0)
    assert all("5.0%" in w and "0.80" in w and "--max-steps" in w for w in mixture.starved(16))
