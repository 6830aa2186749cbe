"""The tensor operations and the safetensors streaming under the merge executor."""

from __future__ import annotations

import pytest
import torch
from helpers import disjoint_merge
from safetensors.torch import load_file, save_file

from adaptkit.merge import ops
from adaptkit.merge.stream import PlannedTensor, RowBlocks, ShardedWriter, TensorSource


@pytest.fixture(params=[ops.CHUNK, 7], ids=["one-chunk", "many-chunks"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(ops, "CHUNK", request.param)
    return request.param


def test_trim_keeps_exactly_k_largest_even_with_ties(chunk):
    delta = torch.tensor([0.5, -0.5, 0.1, 0.5, -0.9, 0.0, 0.5, 0.2, -0.5, 0.3] * 5)
    for density in (0.1, 0.3, 0.55, 0.9):
        k = max(1, int(density * delta.numel()))
        kept = ops.magnitude_trim_(delta.clone(), density)
        assert int((kept != 0).sum()) == k
        assert torch.equal(kept[kept != 0], delta[kept != 0])  # survivors unchanged
        assert kept.abs().max() == delta.abs().max()
        if (kept == 0).any() and (kept != 0).any():
            assert delta[kept == 0].abs().max() <= delta[kept != 0].abs().min()
    assert torch.equal(ops.topk_mask(torch.tensor([3.0, 1.0, 3.0, 2.0]), 1), torch.tensor([True, False, False, False]))


def test_sign_consensus_matches_the_elementwise_definition(chunk):
    gen = torch.Generator().manual_seed(0)
    deltas = [torch.randn(6, 9, generator=gen) * (torch.rand(6, 9, generator=gen) > 0.3) for _ in range(3)]
    for weights in ([1.0, 1.0, 1.0], [0.5, -1.0, 2.0], [1.0, 0.0, 0.3]):
        for normalize in (True, False):
            expected = disjoint_merge(deltas, weights, normalize)
            actual = ops.sign_consensus([d.clone() for d in deltas], weights, normalize)
            assert torch.allclose(actual, expected, atol=1e-6), (weights, normalize)


def test_dare_drop_is_reproducible_and_rescales(chunk):
    delta = torch.randn(50, 40)
    first = ops.dare_drop_(delta.clone(), 0.3, torch.Generator().manual_seed(1))
    again = ops.dare_drop_(delta.clone(), 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    kept = first != 0
    assert torch.allclose(first[kept], delta[kept] / 0.3)
    assert abs(kept.float().mean().item() - 0.3) < 0.05


def test_sharded_writer_and_source_round_trip(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.bool: "BOOL", torch.float64: "F64", torch.int64: "I64"}
    plan = [PlannedTensor(n, names[t.dtype], tuple(t.shape)) for n, t in tensors.items()]
    writer = ShardedWriter(tmp_path, plan, max_shard_bytes=40)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    files = writer.finish()
    assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    loaded = {}
    for file in files:
        loaded.update(load_file(str(tmp_path / file)))  # the reference reader accepts our files
    source = TensorSource(tmp_path, "--model")
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor) and torch.equal(source.read(name), tensor), name
    source.close()
    save_file({"x": torch.ones(4)}, str(tmp_path / "single.safetensors"))
    assert torch.equal(TensorSource(tmp_path / "single.safetensors", "--mask").read("x"), torch.ones(4))


def test_row_blocks_are_written_as_the_whole_tensor_and_rows_read_back(tmp_path):
    """A tensor handed to the writer as blocks of rows is stored as the whole tensor would be;
    TensorSource.read_rows reads a row range; a block stream with the wrong rows is refused."""
    table, after = torch.randn(10, 3), torch.randn(2)
    plan = [PlannedTensor("table", "F32", (10, 3)), PlannedTensor("after", "F32", (2,))]
    writer = ShardedWriter(tmp_path, plan, max_shard_bytes=10**6)
    writer.write("table", RowBlocks(torch.float32, (10, 3), iter([table[:4], table[4:8], table[8:]])))
    writer.write("after", after)
    writer.finish()
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(loaded["table"], table) and torch.equal(loaded["after"], after)
    source = TensorSource(tmp_path, "--model")
    assert torch.equal(source.read_rows("table", 3, 7), table[3:7]) and torch.equal(source.read_rows("table", 9, 10), table[9:])
    source.close()
    short = ShardedWriter(tmp_path / "short", plan[:1], max_shard_bytes=10**6)
    (tmp_path / "short").mkdir()
    with pytest.raises(RuntimeError, match="9 rows written, planned 10"):
        short.write("table", RowBlocks(torch.float32, (10, 3), iter([table[:4], table[4:9]])))
    with pytest.raises(RuntimeError, match="a block of rows"):
        short.write("table", RowBlocks(torch.float32, (10, 3), iter([table[:, :2]])))


@pytest.mark.parametrize("collinear", [False, True])
def test_slerp_in_place_gives_the_same_floats_as_the_textbook_expression(collinear):
    """SLERP writes into its first input to hold fewer full-size temporaries; the floats equal
    a * sin((1-t)θ)/sin θ + b * sin(tθ)/sin θ (and torch.lerp for nearly collinear pairs), bit for bit."""
    import math

    from adaptkit.merge.ops import slerp

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 48, generator=generator)
    b = a * 1.5 + 1e-4 * torch.randn(64, 48, generator=generator) if collinear else torch.randn(64, 48, generator=generator)
    expected = slerp(a.clone(), b, 0.3)
    cos = float(torch.dot(a.reshape(-1) / a.norm(), b.reshape(-1) / b.norm()))
    if collinear:
        assert abs(cos) > 0.9995 and torch.equal(expected, torch.lerp(a, b, 0.3))
    else:
        theta = math.acos(cos)
        written_out = a * (math.sin(0.7 * theta) / math.sin(theta)) + b * (math.sin(0.3 * theta) / math.sin(theta))
        assert torch.allclose(expected, written_out, atol=1e-6, rtol=0)
    target = a.clone()
    assert torch.equal(slerp(target, b, 0.3, in_place=True), expected) and torch.equal(target, expected)


@pytest.mark.parametrize("collinear", [False, True])
def test_slerp_in_blocks_equals_the_whole_tensor_computation(monkeypatch, collinear):
    """SLERP's passes go block by block (its temporaries are blocks, not tensors): with blocks of 100
    elements (31 blocks, the last one short), a transposed input, and the angle computed independently
    in float64, the result is the textbook expression within float32 rounding and the cosine from the
    summed statistics equals the independent one."""
    import math

    from adaptkit.merge import ops

    generator = torch.Generator().manual_seed(1)
    a = torch.randn(61, 50, generator=generator)
    b = a * 1.5 + 1e-4 * torch.randn(61, 50, generator=generator) if collinear else torch.randn(61, 50, generator=generator)
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    cos = float(torch.dot(a64 / a64.norm(), b64 / b64.norm()))
    if collinear:
        expected = a.double() + 0.3 * (b.double() - a.double())
    else:
        theta = math.acos(cos)
        expected = a.double() * (math.sin(0.7 * theta) / math.sin(theta)) + b.double() * (math.sin(0.3 * theta) / math.sin(theta))
    monkeypatch.setattr(ops, "SLERP_BLOCK", 100)
    for first, second in ((a.clone(), b), (a.t().contiguous().t(), b)):  # contiguous, and a transposed view
        target = first.clone() if first.is_contiguous() else first
        merged = ops.slerp(target, second, 0.3, in_place=True)
        assert merged is target and torch.allclose(merged.double(), expected, atol=1e-6, rtol=0)
    squares_a, squares_b, dot = ops.slerp_statistics(a, b).tolist()
    assert abs(dot / math.sqrt(squares_a * squares_b) - cos) < 1e-12
