"""The token store and its sources: formats, bit-equal packing, parallel builds, caps, damage, nodes."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time

import numpy as np
import pytest
import torch

from adaptkit.data import corpus, sources, store
from adaptkit.errors import InputError

DOCS = [f"Kowa yana da hakki {i}. Everyone has the right to life, liberty and security {i * 7}." for i in range(60)]


def _expected_stream(tokenizer, docs):
    """Today's packing, computed here: each document's ids then EOS."""
    ids = []
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids)


def _pack(stream, seq_len):
    n = stream.numel() // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


@pytest.fixture
def files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    a, b = DOCS[:40], DOCS[40:]
    (tmp_path / "a.txt").write_text("\n".join(a) + "\n\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(b)))
    with gzip.open(tmp_path / "a.txt.gz", "wt") as handle:
        handle.write("\n".join(a) + "\n")
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((tmp_path / "b.jsonl").read_bytes()))
    pq.write_table(pa.table({"body": b, "n": list(range(len(b)))}), tmp_path / "b.parquet")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "1.txt").write_text("\n".join(a[:20]) + "\n")
    (tmp_path / "dir" / "2.txt").write_text("\n".join(a[20:]) + "\n")
    (tmp_path / "dir" / "notes.md").write_text("not data\n")
    return tmp_path


def test_blocks_equal_todays_packing_for_any_seq_len_from_one_store(files, tokenizer, monkeypatch):
    """Each source packed on its own, blocks concatenated; bit-equal to the in-memory recipe; one store for every seq_len."""
    paths = [str(files / "a.txt"), str(files / "b.jsonl")]
    streams = [_expected_stream(tokenizer, DOCS[:40]), _expected_stream(tokenizer, DOCS[40:])]
    first = corpus.load_blocks(paths, tokenizer, 16)
    monkeypatch.setattr(store, "encode", lambda *a, **k: pytest.fail("tokenized twice"))
    for seq_len in (16, 37, 64):
        blocks = corpus.load_blocks(paths, tokenizer, seq_len)
        expected = torch.cat([_pack(s, seq_len) for s in streams])
        assert blocks.shape == tuple(expected.shape) and len(blocks) == expected.shape[0]
        assert torch.equal(blocks[:], expected) and blocks[:].dtype == torch.long
        rows = torch.tensor([3, 0, expected.shape[0] - 1])
        assert torch.equal(blocks[rows], expected[rows]) and torch.equal(blocks[-1], expected[-1])
        assert torch.equal(blocks[torch.tensor(2)], expected[2]) and blocks.numel() == expected.numel()
    assert first.segments[0][0].dtype == np.uint16


def test_parallel_build_with_many_shards_gives_the_same_blocks(files, tokenizer, monkeypatch):
    monkeypatch.setattr(store, "CHUNK_CHARS", 300)  # a few documents per shard: blocks straddle shards
    blocks = corpus.load_blocks([str(files / "a.txt")], tokenizer, 29, use_cache=False, num_proc=2)
    assert len(blocks.segments[0][0].index["sources"][0]["shards"]) > 5
    assert torch.equal(blocks[:], _pack(_expected_stream(tokenizer, DOCS[:40]), 29))


@pytest.mark.parametrize("name, field", [("a.txt.gz", "text"), ("b.jsonl.zst", "text"), ("b.parquet", "body"), ("dir", "text"), ("*.txt", "text")])
def test_formats_give_the_same_stream(files, tokenizer, name, field):
    docs = DOCS[:40] if name in ("a.txt.gz", "dir", "*.txt") else DOCS[40:]
    stream = corpus.token_stream(str(files / name), tokenizer, text_field=field, use_cache=False)
    assert torch.equal(stream.long(), _expected_stream(tokenizer, docs))


def test_saved_dataset_and_records_for_calibration(files, tokenizer):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS[:5]}).save_to_disk(str(files / "ds"))
    assert list(corpus.iter_documents(files / "ds")) == DOCS[:5]
    assert [r for _, r in corpus.iter_records(files / "b.parquet")][0] == {"body": DOCS[40], "n": 0}
    assert [r for _, r in corpus.iter_records(files / "a.txt.gz")] == DOCS[:40]


def _corrupt(tmp_path):
    good = gzip.compress(("\n".join(DOCS) + "\n").encode())
    (tmp_path / "bad.txt.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "bad.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    (tmp_path / "data.csv").write_text("text\nhello\n")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    (tmp_path / "empty").mkdir()


@pytest.mark.parametrize("spec, field, message", [
    ("bad.txt.gz", "text", "bad.txt.gz' is not a readable gzip file"),
    ("bad.jsonl.zst", "text", "bad.jsonl.zst' is not a readable zstd file"),
    ("data.csv", "text", "unsupported format '.csv' (supported: .txt, .jsonl"),
    ("b.parquet", "text", "has no column 'text' (columns: body, n"),
    ("blank.jsonl", "text", "blank.jsonl' contains no text"),
    ("empty", "text", "holds no files of a supported format"),
    ("*.nothing", "text", "matches no files"),
])
def test_bad_sources_name_the_file(files, tokenizer, spec, field, message):
    _corrupt(files)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        corpus.load_blocks([str(files / spec)], tokenizer, 8, text_field=field, use_cache=False)
    assert "\n" not in str(info.value) and str(info.value).startswith("--data: ")


def _hub_layout(root, name="someone/tiny"):
    """A dataset repository as the Hub cache holds it: snapshots/<rev>/ with a README naming configs."""
    repo = root / "hub" / f"datasets--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("a" * 40)
    (snapshot / "ha").mkdir(parents=True)
    (snapshot / "ha" / "train.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in DOCS[:10]))
    (snapshot / "ha" / "dev.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in DOCS[10:15]))
    (snapshot / "README.md").write_text(
        "---\nconfigs:\n- config_name: ha\n  data_files:\n  - split: train\n    path: ha/train.jsonl\n"
        "  - split: dev\n    path: ha/dev.jsonl\n---\n"
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    return snapshot


def test_hub_dataset_from_the_offline_cache_and_a_local_repository(tmp_path, tokenizer, monkeypatch):
    import huggingface_hub.constants

    snapshot = _hub_layout(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    stream = corpus.token_stream("hub:someone/tiny:ha@dev", tokenizer, text_field="content", use_cache=False)
    assert torch.equal(stream.long(), _expected_stream(tokenizer, DOCS[10:15]))
    local = corpus.token_stream(f"hub:{snapshot}:ha", tokenizer, text_field="content", use_cache=False)
    assert torch.equal(local.long(), _expected_stream(tokenizer, DOCS[:10]))
    with pytest.raises(InputError, match="'someone/other' is not in the Hub cache and HF_HUB_OFFLINE is set; fetch it once online with `hf download someone/other"):
        corpus.load_blocks(["hub:someone/other@train"], tokenizer, 8)
    with pytest.raises(InputError, match="row 0 has no field 'text'"):
        corpus.load_blocks(["hub:someone/tiny:ha"], tokenizer, 8, use_cache=False)


def test_max_tokens_per_source_and_in_total(files, tokenizer):
    a, b = str(files / "a.txt"), str(files / "b.jsonl")
    full_a, full_b = _expected_stream(tokenizer, DOCS[:40]), _expected_stream(tokenizer, DOCS[40:])
    blocks = corpus.load_blocks([a, b], tokenizer, 10, max_tokens=[f"{a}=105", "0.2k"], use_cache=False)
    assert torch.equal(blocks[:], torch.cat([_pack(full_a[:105], 10), _pack(full_b[:95], 10)]))
    capped = blocks.segments[0][0].index["sources"][0]
    assert capped["tokens"] == 105 and capped["capped"] and capped["documents"] == int((torch.cumsum(torch.tensor(
        [len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in DOCS[:40]]), 0) < 105).sum()) + 1
    assert store.parse_count("200M") == 200_000_000 and store.parse_count("1.5B") == 1_500_000_000 and store.parse_count("50k") == 50_000
    for bad in ("12x", "-5", "0", "1.5.5", ""):
        with pytest.raises(InputError, match="--max-tokens"):
            store.parse_count(bad)
    with pytest.raises(InputError, match="--max-tokens: unknown source name 'c.txt'"):
        corpus.load_blocks([a], tokenizer, 10, max_tokens=["c.txt=5"])


def test_damaged_store_is_named_and_rebuilt_in_the_cache(files, tokenizer):
    blocks = corpus.load_blocks([str(files / "a.txt")], tokenizer, 16)
    path = blocks.segments[0][0].path
    shard = sorted(path.glob("s*.bin"))[0]
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 2)
    with pytest.raises(InputError, match=f"'{shard.name}' has {shard.stat().st_size} bytes, the index says"):
        store.TokenStore(path)
    again = corpus.load_blocks([str(files / "a.txt")], tokenizer, 16)  # the damaged cache entry is rebuilt
    assert torch.equal(again[:], blocks[:])
    index = json.loads((path / "index.json").read_text())
    index["tokens"] += 1
    (path / "index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="index.json is corrupt \\(checksum mismatch\\)"):
        store.TokenStore(path)
    (path / "index.json").write_text('{"format": "adaptkit-token-st')
    with pytest.raises(InputError, match="index.json is unreadable or corrupt"):
        store.TokenStore(path)


def test_uint32_ids_for_large_vocabularies():
    class Big:
        vocab_size = 70_000

        def __len__(self):
            return 70_000

    class Small(Big):
        vocab_size = 65_536

        def __len__(self):
            return 65_536

    assert store.id_dtype(Big()) == np.uint32 and store.id_dtype(Small()) == np.uint16


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_other_local_ranks_wait_for_rank_zero_and_share_its_failure(files, tokenizer, monkeypatch):
    monkeypatch.setattr(store, "_local_rank", lambda: (1, 2))
    key = "waiting-test"
    final = store.cache_dir() / "stores" / key

    def rank_zero():
        time.sleep(0.5)
        tmp = final.with_name(".tmp-waiting")
        tmp.mkdir(parents=True)
        store.write_store(tmp, [sources.resolve(str(files / "a.txt"))], tokenizer, ["text"], 1)
        os.rename(tmp, final)

    thread = threading.Thread(target=rank_zero)
    thread.start()
    opened = store.cached_store(key, lambda d: pytest.fail("local rank 1 must not build"), timeout=60)
    thread.join()
    assert opened.index["sources"][0]["tokens"] == len(_expected_stream(tokenizer, DOCS[:40]))
    failed = store.cache_dir() / "stores" / ".other-key.failed"
    failed.write_text(json.dumps({"launch": store._launch_token(), "message": "--data: 'x.txt' contains no text", "input": True}))
    with pytest.raises(InputError, match="'x.txt' contains no text"):
        store.cached_store("other-key", lambda d: pytest.fail("no build"), timeout=10)
    failed.write_text(json.dumps({"launch": "another launch", "message": "stale", "input": True}))
    with pytest.raises(Exception, match="timed out after 1s waiting for local rank 0"):
        store.cached_store("other-key", lambda d: pytest.fail("no build"), timeout=1)


NODE_RANK_SCRIPT = """
import os, sys, time
from adaptkit.data import store
from adaptkit.errors import AdaptkitError
try:
    store.cached_store("dead-builder", lambda directory: time.sleep(600), timeout=300)
except AdaptkitError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.slow  # two interpreters
def test_other_local_ranks_see_local_rank_zero_die_in_seconds(tmp_path):
    """Local rank 0 SIGKILLed while it builds: local rank 1 fails within seconds, not after the timeout."""
    import subprocess
    import sys

    env = {**os.environ, "ADAPTKIT_CACHE": str(tmp_path), "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "29555"}
    ranks = [subprocess.Popen([sys.executable, "-c", NODE_RANK_SCRIPT], env={**env, "LOCAL_RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        note = tmp_path / "stores" / ".dead-builder.builder"
        deadline = time.monotonic() + 60
        while not note.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(note.read_text())["pid"] == ranks[0].pid
        ranks[0].kill()
        ranks[0].wait(10)
        killed = time.monotonic()
        _, err = ranks[1].communicate(timeout=30)
        assert time.monotonic() - killed < 5
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait(10)
    assert ranks[1].returncode == 1
    assert f"local rank 0 (pid {ranks[0].pid}) died while building the token store" in err, err


def test_store_of_another_tokenizer_is_refused(files, tokenizer, corpora):
    from adaptkit import demo

    path = files / "store"
    path.mkdir()
    store.write_store(path, [sources.resolve(str(files / "a.txt"))], tokenizer, ["text"], 1)
    assert torch.equal(corpus.load_blocks([str(path)], tokenizer, 16)[:], _pack(_expected_stream(tokenizer, DOCS[:40]), 16))
    other = demo.train_tokenizer(corpora["en"].read_text().splitlines(), vocab_size=300)
    with pytest.raises(InputError, match="was made with another tokenizer"):
        corpus.load_blocks([str(path)], other, 16)
