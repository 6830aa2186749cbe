"""Layer-by-layer scoring and evaluation (adaptkit.streamed_model) against whole-model runs on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from adaptkit.calibration import load_calibration
from adaptkit.evals.perplexity import perplexity
from adaptkit.io.models import resolve_model_source
from adaptkit.streamed_model import OUTSIDE, LayerwiseModel, for_each_logits
from adaptkit.scoring.run import compute_scores
from adaptkit.scoring.score_set import load_scores
from helpers import load_model

LAYERS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def calibration(calib_dir):
    return load_calibration(calib_dir)


def _open(directory) -> LayerwiseModel:
    return LayerwiseModel.open(resolve_model_source(str(directory)))


def _assert_same_scores(whole, layered) -> None:
    assert whole.scores.keys() == layered.scores.keys()
    for name, by_granularity in whole.scores.items():
        for granularity, expected in by_granularity.items():
            got = layered.scores[name][granularity]
            assert torch.equal(got, expected), (name, granularity, (got - expected).abs().max())  # bit-identical, as docs/scale.md says
    for key in ("model_fingerprint", "shapes", "calibration_hash", "model_parameters"):
        assert whole.metadata[key] == layered.metadata[key], key
    assert layered.metadata["layer_by_layer"] == "true"


# tied embeddings (qwen2), biases (qwen2), q/k norms (olmo2)
ARCHITECTURES = {"llama": {}, "qwen2": {"tie_word_embeddings": True}, "olmo2": {}}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("scorer", ["wanda", "sparsegpt", "sparsegpt:saliency=obs", "magnitude", "random"])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_layer_by_layer_scores_equal_whole_model_scores(make_model_dir, calibration, arch, scorer):
    directory = make_model_dir(arch, layers=LAYERS, **ARCHITECTURES[arch])
    scorer, _, setting = scorer.partition(":")
    params = dict([setting.split("=")]) if setting else {}
    include_embeddings = scorer in ("wanda", "magnitude")  # embeddings (token counts) and the LM head (through the tail)
    whole = compute_scores(load_model(directory), scorer, calibration, params, include_embeddings=include_embeddings, batch_size=5, granularities=("column", "row", "element"))
    layered = compute_scores(_open(directory), scorer, calibration, params, include_embeddings=include_embeddings, batch_size=5, granularities=("column", "row", "element"))
    _assert_same_scores(whole, layered)
    assert any(float(t.abs().sum()) > 0 for by in layered.scores.values() for t in by.values())


@pytest.mark.parametrize("scorer", ["wanda", "magnitude"])
def test_layer_by_layer_finds_the_scored_parameters_once_per_stage(make_model_dir, calibration, monkeypatch, scorer):
    import adaptkit.scoring.run as run

    calls = []
    original = run.scored_parameters

    def counting(model, include_embeddings=False, only=None):
        calls.append(None if only is None else sorted(only))
        return original(model, include_embeddings, only)

    monkeypatch.setattr(run, "scored_parameters", counting)
    directory = make_model_dir("llama", layers=LAYERS)
    compute_scores(_open(directory), scorer, calibration, include_embeddings=True, batch_size=5)
    stages = [c for c in calls if c is not None]
    assert calls.count(None) == 1  # names and shapes, once
    assert len(stages) == LAYERS + 1 and len({tuple(c) for c in stages}) == LAYERS + 1  # each layer and the outside parts, once each


def test_only_one_decoder_layer_is_loaded_at_a_time(make_model_dir, calibration):
    directory = make_model_dir("llama", layers=LAYERS)
    stream = _open(directory)
    model = load_model(directory)
    sizes: dict[str, int] = {}
    for name, param in model.named_parameters():
        stage = stream.stage_of(name)
        sizes[stage] = sizes.get(stage, 0) + param.numel() * param.element_size()
    seen = []

    def after(stage: str) -> None:
        seen.append(stage)
        for name, param in stream.model.named_parameters():
            other = stream.stage_of(name)
            loaded = param.device.type != "meta"
            assert loaded == (other in (stage, OUTSIDE)), (stage, name, param.device)

    stream.run(list(calibration.blocks.split(4)), after=after)
    assert seen == [f"model.layers.{i}" for i in range(LAYERS)] + [OUTSIDE]
    largest_layer = max(size for stage, size in sizes.items() if stage != OUTSIDE)
    assert stream.peak_bytes == sizes[OUTSIDE] + largest_layer
    assert stream.peak_bytes < 0.6 * sum(sizes.values())
    assert all(p.device.type == "meta" for n, p in stream.model.named_parameters() if stream.stage_of(n) != OUTSIDE)


def test_fisher_is_refused_layer_by_layer(make_model_dir, calibration):
    from adaptkit.errors import InputError

    with pytest.raises(InputError, match="--layer-by-layer: scorer 'fisher' needs the whole model"):
        compute_scores(_open(make_model_dir("llama")), "fisher", calibration)


def _logits(model, inputs) -> list[torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for_each_logits(model, inputs, "cpu", lambda i, logits: out.__setitem__(i, logits.clone()))
    return [out[i] for i in range(len(inputs))]


def test_layer_arguments_come_from_the_decoder_per_layer(tmp_path, tokenizer):
    """Mixed sliding-window / full attention layers: each layer gets its own mask, as in a whole forward."""
    from adaptkit import demo

    mixed = dict(layers=3, use_sliding_window=True, sliding_window=4, layer_types=["full_attention", "sliding_attention", "full_attention"])
    demo.tiny_model("qwen2", len(tokenizer), **mixed).save_pretrained(tmp_path / "mixed")
    inputs = [torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    whole = _logits(load_model(tmp_path / "mixed"), inputs)
    layered = _logits(_open(tmp_path / "mixed"), inputs)
    full_only = _logits(demo.tiny_model("qwen2", len(tokenizer), layers=3).eval(), inputs)  # same weights (same seed), no sliding window
    for a, b, c in zip(whole, layered, full_only):
        assert torch.equal(a, b), (a - b).abs().max()
        assert not torch.allclose(a, c, atol=1e-3)  # the sliding-window mask really matters here


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_sharded_checkpoints_and_perplexity_in_several_passes(make_model_dir, tmp_path, corpora, tokenizer, monkeypatch):
    import adaptkit.streamed_model as streamed_model

    model = load_model(make_model_dir("llama", layers=LAYERS))
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="200KB")
    tokenizer.save_pretrained(sharded)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    texts = corpora["ha-test"].read_text().splitlines()[:12]
    expected = perplexity(model, tokenizer, texts, block_size=32, stride=8, batch_size=4)
    monkeypatch.setattr(streamed_model, "HIDDEN_CACHE_BYTES", 4 * 32 * 64 * 4 * 2)  # two batches of hidden states per pass
    got = perplexity(_open(sharded), tokenizer, texts, block_size=32, stride=8, batch_size=4)
    assert got.tokens == expected.tokens and got.bytes == expected.bytes
    assert got.nll_sum == expected.nll_sum


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_score_and_evaluate_commands_layer_by_layer(make_model_dir, calib_dir, corpora, tmp_path, invoke):
    directory = make_model_dir("llama", layers=LAYERS)
    for flag in ([], ["--layer-by-layer"]):
        result = invoke("score", "-m", directory, "--calib", calib_dir, "-o", tmp_path / f"scores{len(flag)}", "--json", *flag)
        assert result.returncode == 0, result.stderr
    whole, layered = load_scores(tmp_path / "scores0"), load_scores(tmp_path / "scores1")
    _assert_same_scores(whole, layered)
    assert json.loads(result.stdout)["peak_weight_bytes"] > 0
    for flag in ([], ["--layer-by-layer"]):
        result = invoke("evaluate", "-m", f"m={directory}", "--task", f"ppl:ha={corpora['ha-test']}",
                        "--set", "ppl.block_size=32", "--no-plots", "-o", tmp_path / f"eval{len(flag)}", "--quiet", *flag)
        assert result.returncode == 0, result.stderr
    ppl = [json.loads((tmp_path / f"eval{i}" / "results.json").read_text())["results"]["m"]["ha"]["ppl"] for i in (0, 1)]
    assert ppl[1] == ppl[0]


def _choice_task(directory, data, output_type: str = "multiple_choice") -> None:
    """A local lm-eval task over a JSONL file (offline)."""
    rows = [{"question": "Kowa yana da", "choices": [" hakki", " zzzz"], "label": 0},
            {"question": "Everyone has the", "choices": [" qqq", " right"], "label": 1},
            {"question": "All human beings are born", "choices": [" free", " xx"], "label": 0}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    directory.mkdir()
    body = "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n" if output_type == "multiple_choice" else \
        "doc_to_target: '{{choices[0]}}'\ngeneration_kwargs:\n  max_gen_toks: 4\nmetric_list:\n  - metric: exact_match\n"
    (directory / "tiny_task.yaml").write_text(
        f"task: tiny_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\noutput_type: {output_type}\ndoc_to_text: '{{{{question}}}}'\n{body}"
    )


def test_lm_eval_log_likelihoods_equal_hflm(make_model_dir):
    """The layer-by-layer lm-eval LM against lm-eval's own HFLM on the whole model."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from adaptkit.evals.layerwise_lm import LayerwiseLM
    from adaptkit.io.models import load_tokenizer

    directory = make_model_dir("llama", layers=LAYERS)
    tokenizer = load_tokenizer(resolve_model_source(str(directory)))
    model = load_model(directory)
    ours = LayerwiseLM(_open(directory), tokenizer, batch_size=2)
    greedy_pair = None
    for words in range(2, 30):  # a context whose argmax next token survives decode + encode (not a partial byte)
        text = " ".join(("Everyone has the right to life liberty and security of person " * 3).split()[:words])
        context = ours.tok_encode(text)  # as lm-eval encodes it
        with torch.no_grad():
            greedy = int(model(torch.tensor([context])).logits[0, -1].argmax())
        continuation = tokenizer.decode(context + [greedy])[len(tokenizer.decode(context)):]
        if continuation.strip() and ours.tok_encode(text + continuation) == context + [greedy]:
            greedy_pair = (text, continuation)
            break
    assert greedy_pair is not None
    pairs = [greedy_pair, ("Everyone has the ", "right"), ("All human beings are born", " free and equal"),
             ("", "Kowa yana da hakki"), ("Article 1. " * 40, " dignity")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu", max_length=64)
    ours.max_length = 64  # the long context is truncated from the left, as in HFLM
    expected, got = reference.loglikelihood(requests, disable_tqdm=True), ours.loglikelihood(requests)
    assert [g for _, g in got] == [g for _, g in expected] and got[0][1]  # the greedy continuation is recognized
    assert [lp for lp, _ in got] == [lp for lp, _ in expected]
    texts = [("Everyone has the right to life, liberty and security of person. " * 6), "Kowa yana da hakki."]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    assert ours.loglikelihood_rolling(rolling) == reference.loglikelihood_rolling(rolling, disable_tqdm=True)


@pytest.mark.slow
def test_evaluate_lm_eval_layer_by_layer(make_model_dir, tmp_path, invoke):
    directory = make_model_dir("llama", layers=LAYERS)
    _choice_task(tmp_path / "tasks", tmp_path / "choice.jsonl")
    for flag in ([], ["--layer-by-layer"]):
        result = invoke("evaluate", "-m", f"m={directory}", "--task", f"lm-eval:{tmp_path / 'tasks'}", "--no-plots", "-o", tmp_path / f"eval{len(flag)}", "--quiet", *flag)
        assert result.returncode == 0, result.stderr
    acc = [json.loads((tmp_path / f"eval{i}" / "results.json").read_text())["results"]["m"]["tiny_task"] for i in (0, 1)]
    assert acc[0] == acc[1]
    _choice_task(tmp_path / "gen-tasks", tmp_path / "gen.jsonl", output_type="generate_until")
    result = invoke("evaluate", "-m", directory, "--task", f"lm-eval:{tmp_path / 'gen-tasks'}", "--layer-by-layer", "-o", tmp_path / "gen", "--quiet")
    assert result.returncode == 2 and "generates text" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "gen").exists()


def test_prefetching_the_next_layer_changes_nothing(make_model_dir, calibration):
    directory = make_model_dir("llama", layers=LAYERS)
    results = []
    for prefetch in (False, True):
        stream = _open(directory)
        stream.prefetch = prefetch
        results.append(compute_scores(stream, "sparsegpt", calibration, batch_size=4))
        assert stream.resident_bytes == sum(p.numel() * 4 for n, p in stream.model.named_parameters() if stream.stage_of(n) == OUTSIDE)
    for name, by_granularity in results[0].scores.items():
        for granularity, tensor in by_granularity.items():
            assert torch.equal(tensor, results[1].scores[name][granularity])


@pytest.mark.slow
def test_device_map_with_offload_gives_the_same_results(make_model_dir, corpora, tmp_path, invoke):
    """--device-map auto with a tiny --max-memory puts the layers on disk (accelerate offload): same ppl, lm-eval and generations."""
    directory = make_model_dir("llama", layers=LAYERS)
    _choice_task(tmp_path / "tasks", tmp_path / "choice.jsonl")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "1", "prompt": "Everyone has the right"}\n{"id": "2", "prompt": "Kowa yana da"}\n')
    placed = ["--device-map", "auto", "--max-memory", "cpu=100KB"]
    for flags in ([], placed):
        name = "placed" if flags else "plain"
        result = invoke("evaluate", "-m", f"m={directory}", "--task", f"ppl:ha={corpora['ha-test']}", "--task", f"lm-eval:{tmp_path / 'tasks'}",
                        "--set", "ppl.block_size=32", "--no-plots", "--generate", prompts, "--max-new-tokens", "6", "-o", tmp_path / name, "--quiet", *flags)
        assert result.returncode == 0, result.stderr
        result = invoke("generate", "-m", directory, "--prompts", prompts, "--max-new-tokens", "6", "-o", tmp_path / f"{name}.jsonl", "--quiet", *flags)
        assert result.returncode == 0, result.stderr
    plain, placed_results = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("plain", "placed"))
    assert placed_results["config"]["device_map"] == "auto" and placed_results["config"]["max_memory"] == {"cpu": "100KB"}
    assert "disk" in placed_results["config"]["placed_on"]["m"]  # really offloaded
    assert placed_results["results"]["m"]["ha"]["ppl"] == plain["results"]["m"]["ha"]["ppl"]
    assert placed_results["results"]["m"]["tiny_task"] == plain["results"]["m"]["tiny_task"]
    for a, b in [(tmp_path / "plain" / "generations.jsonl", tmp_path / "placed" / "generations.jsonl"), (tmp_path / "plain.jsonl", tmp_path / "placed.jsonl")]:
        responses = [[json.loads(line)["response"] for line in f.read_text().splitlines()] for f in (a, b)]
        assert responses[0] == responses[1] and any(responses[0])
