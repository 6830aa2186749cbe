"""Fidelity to the SSU reference code and the papers (issue 15): embeddings and LM head in the baselines,
special-token rows frozen for ssu-*/hft, pure-bf16 training, and the shipped paper presets.

Each claim is checked against an independent computation on tiny Llama and OLMo-2 models, with and
without tied embeddings: the token set from the tokenizer's own tables, rows compared bit for bit,
dtypes read from the optimizer and the saved files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _methods_helpers import TRAIN, weights
from conftest import assert_input_error

ENDS = ("model.embed_tokens.weight", "lm_head.weight")
SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|user|>")  # what the tokenizer below must yield
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory, tokenizer):
    """(arch, tied) -> a tiny model directory whose tokenizer has chat special tokens and a chat template:
    <|im_start|>/<|im_end|> special, <|user|> an added (non-special) token used by the template, and
    <|assistant|> only text of the template (several ordinary pieces, so never frozen)."""
    from transformers import AutoTokenizer

    from adaptkit import demo

    base = tmp_path_factory.mktemp("chat-tokenizer")
    tokenizer.save_pretrained(base)
    chat = AutoTokenizer.from_pretrained(base)
    chat.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat.add_tokens(["<|user|>"])
    chat.chat_template = TEMPLATE
    assert len(chat.encode("<|assistant|>", add_special_tokens=False)) > 1
    cache = {}
    for arch in ("llama", "olmo2"):
        for tied in (False, True):
            directory = tmp_path_factory.mktemp(f"chat-{arch}-{tied}")
            demo.tiny_model(arch, len(chat), tie_word_embeddings=tied).save_pretrained(directory)
            chat.save_pretrained(directory)
            cache[arch, tied] = directory
    return cache


def _expected_rows(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return sorted(tok.convert_tokens_to_ids(t) for t in SPECIAL)


def test_special_token_set_comes_from_the_tokenizer(chat_models):
    from transformers import AutoTokenizer

    from adaptkit.engine.special_tokens import special_token_ids

    model_dir = chat_models["llama", False]
    tok = AutoTokenizer.from_pretrained(model_dir)
    found = special_token_ids(tok)
    assert sorted(found) == _expected_rows(model_dir)
    assert sorted(found.values()) == sorted(SPECIAL)
    pieces = {i for word in ("user", "\n", "assistant", "<|assistant|>") for i in tok.encode(word, add_special_tokens=False)}
    assert pieces and not pieces & set(found)  # ordinary pieces of the template's text are never frozen
    tok.chat_template = None  # without a template: the declared special tokens only
    assert sorted(special_token_ids(tok).values()) == sorted(t for t in SPECIAL if t != "<|user|>")


def _reference_special_ids(tok):
    """The SSU code's _get_special_token_ids (training/src/utils/model_utils.py), transcribed: the declared special tokens,
    the special_tokens_map and the OLMo list (name hint 'olmo'), each kept only if its id differs from unk's."""
    ids = set()

    def add(token):
        token_id = tok.convert_tokens_to_ids(getattr(token, "content", token))
        if token_id is not None and token_id != tok.unk_token_id and token_id != -1:
            ids.add(int(token_id))

    for attr in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "additional_special_tokens"):
        value = getattr(tok, attr, None)
        for token in (value if isinstance(value, (list, tuple)) else [value]):
            if token is not None:
                add(token)
    for value in tok.special_tokens_map.values():
        for token in (value if isinstance(value, (list, tuple)) else [value]):
            add(token)
    for token in ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|endofprompt|>", "<|pad|>"):
        add(token)
    return ids


def test_reference_special_set_drops_eos_when_unk_is_eos(chat_models):
    """OLMo-2-1124-Instruct's tokenizer declares bos = eos = unk = <|endoftext|>: the reference's unk filter then drops the
    end-of-text token (and every marker that is not one vocabulary token), so its rows train there; adaptkit freezes them."""
    from transformers import AutoTokenizer

    from adaptkit.engine.special_tokens import special_token_ids

    tok = AutoTokenizer.from_pretrained(chat_models["llama", False])
    tok.name_or_path = "allenai/OLMo-2-1124-7B-Instruct"
    tok.add_special_tokens({"unk_token": tok.eos_token, "bos_token": tok.eos_token})
    eos = tok.eos_token_id
    reference, ours = _reference_special_ids(tok), set(special_token_ids(tok))
    assert eos not in reference and eos in ours
    assert reference <= ours


@pytest.mark.parametrize("arch, tied", [("llama", False), ("olmo2", False), ("llama", True), ("olmo2", True)])
@pytest.mark.parametrize("method, args, frozen", [
    ("ssu-wanda", [], True),
    ("hft", [], True),
    ("fft", ["--set", "freeze_special_tokens=true"], True),
    ("fft", [], False),
    ("lora", ["--set", "train_embeddings_and_head=true", "--set", "freeze_special_tokens=true"], True),
])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_special_token_rows_are_bit_identical(tmp_path, chat_models, corpora, invoke, arch, tied, method, args, frozen):
    from transformers import AutoConfig

    from adaptkit.calibration import build_calibration

    model_dir = chat_models[arch, tied]
    if method.startswith("ssu-"):
        from transformers import AutoTokenizer

        calib = tmp_path / "calib"
        build_calibration(AutoTokenizer.from_pretrained(model_dir), corpora["en"], fmt="text", pool=200, num_samples=6, block_size=32, seed=0).save(calib)
        args = ["--calib", str(calib), *args]
    run = tmp_path / "run"
    result = invoke("train", "--model", model_dir, "--data", corpora["ha"], "--method", method, "-o", run, *args, *TRAIN[:-1])
    assert result.returncode == 0, result
    before, after = weights(model_dir), weights(run / "final")
    rows = torch.tensor(_expected_rows(model_dir))
    others = torch.ones(before[ENDS[0]].shape[0], dtype=torch.bool)
    others[rows] = False
    names = [n for n in ENDS if n in before]
    assert names == ([ENDS[0]] if tied else list(ENDS))
    for name in names:
        changed = (before[name] != after[name]).any(dim=1)
        if frozen:
            assert torch.equal(before[name][rows], after[name][rows]), name
        else:  # all but the padding row, which is zero (padding_idx) and gets no gradient
            pad = AutoConfig.from_pretrained(model_dir).pad_token_id
            assert changed[[r for r in rows.tolist() if r != pad]].all(), name
        assert changed[others].all(), f"{name}: {int((~changed[others]).sum())} ordinary rows did not train"
    if frozen:
        assert f"freeze_special_tokens: {len(SPECIAL)} token rows frozen" in result.stderr
        assert all(f"'{t}'" in result.stderr for t in SPECIAL)
    else:
        assert "freeze_special_tokens" not in result.stderr


@pytest.mark.parametrize("arch, tied", [("llama", False), ("olmo2", True)])
@pytest.mark.parametrize("method, args, rule", [
    ("s2ft", ["--set", "ratio=0.05"], "down-columns"),
    ("adalora", ["--set", "tinit=0", "--set", "tfinal=0.34", "--set", "delta_t=1", "--set", "init_r=4", "--set", "target_r=2"], "adapted"),
    ("lota", ["--set", "calibration_steps=2"], "mask"),
])
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_baselines_train_embeddings_and_head_by_default(tmp_path, make_model_dir, corpora, invoke, arch, tied, method, args, rule):
    """Embeddings and LM head (one tensor when tied) train in full; the rest follows the method's rule;
    `train_embeddings_and_head=false` / `skip_embeddings_and_head=false` turns it off."""
    from safetensors.torch import load_file

    model_dir = make_model_dir(arch, layers=2, tie_word_embeddings=tied)
    before = weights(model_dir)
    off = "skip_embeddings_and_head=false" if method == "lota" else "train_embeddings_and_head=false"
    runs = {}
    for label, extra in (("on", []), ("off", ["--set", off])):
        runs[label] = tmp_path / label
        result = invoke("train", "--model", model_dir, "--data", corpora["ha"], "--method", method, "-o", runs[label], *args, *extra, *TRAIN)
        assert result.returncode == 0, result
    on, off_weights = weights(runs["on"] / "final"), weights(runs["off"] / "final")
    for name in (n for n in ENDS if n in before):
        assert (before[name] != on[name]).float().mean() > 0.99, name
        moved = float((before[name] != off_weights[name]).float().mean())
        assert moved == 0.0 if method != "lota" else moved < 0.5, (name, moved)
    for name, old in before.items():  # everything else follows the method's rule
        if name in ENDS:
            continue
        if rule == "mask":  # LoTA: exactly the saved mask's entries may move; the ends are all-trainable there
            keep = load_file(str(runs["on"] / "lota" / "masks.safetensors"))[name].bool()
            assert torch.equal(old[~keep], on[name][~keep]) and not bool(keep.all()), name
        elif rule == "down-columns":  # S2FT: only (whole) columns of the down projections
            if name.endswith("mlp.down_proj.weight"):
                columns = (old != on[name]).any(dim=0)
                assert 0 < int(columns.sum()) < columns.numel() and torch.equal(old[:, ~columns], on[name][:, ~columns]), name
            else:
                assert torch.equal(old, on[name]), name
        elif "norm" in name:  # AdaLoRA: adapters merged into the block linears; norms stay
            assert torch.equal(old, on[name]), name


# ---------------------------------------------------------------- pure bf16


def _engine_step(tmp_path, model_dir, data, precision, method, lr=1e-2):
    """The engine's phases up to one optimizer step; returns (training state, model)."""
    from adaptkit.train_settings import build_config, build_method
    from adaptkit.engine import loop

    config = build_config(None, {"model": str(model_dir), "data": [str(data)], "method": method, "seq_len": 32, "batch_size": 4,
                                 "max_steps": 1, "lr": lr, "warmup_ratio": 0.0, "precision": precision, "device": "cpu"},
                          ["ratio=0.25"] if method == "s2ft" else None)
    run = loop.set_up(config, tmp_path / f"step-{precision}", False, False, lambda m: None, None)
    plan, trainable = loop.make_plan(run, build_method(config))
    training = loop.make_training(run, plan, trainable)
    loop.train_step(run, training, 0)
    return training, run.model


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
def test_bf16_pure_keeps_bf16_weights_and_optimizer_state(tmp_path, make_model_dir, corpora, arch):
    model_dir = make_model_dir(arch)
    for precision, dtype in (("bf16-pure", torch.bfloat16), ("bf16", torch.float32)):
        training, model = _engine_step(tmp_path, model_dir, corpora["ha"], precision, "hft")
        optimized = [p for group in training.optimizer.param_groups for p in group["params"]]
        assert optimized and all(p.dtype == dtype for p in optimized), precision
        states = [v for s in training.optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
        assert len(states) == 2 * len(optimized) and all(v.dtype == dtype for v in states), precision
        assert all(p.dtype == dtype for p in model.parameters()), precision


@pytest.mark.parametrize("precision", ["bf16-pure", "bf16", "fp32"])
def test_s2ft_trains_its_selected_columns_through_an_fp32_copy_in_every_precision(tmp_path, llama_dir, corpora, precision):
    """The reference trains a zero-initialised fp32 delta (S2RowLinear.s2, torch.zeros without a dtype) beside bf16 weights:
    updates below bf16 resolution accumulate. Here the selected columns train through an fp32 copy in every mode."""
    from adaptkit.engine.precision import weight_dtype

    lr = 1e-5  # a step of about lr: below half the bf16 spacing of most weights (|w| > 2^-8 * 2 * lr ... ~ 0.005)
    training, model = _engine_step(tmp_path, llama_dir, corpora["ha"], precision, "s2ft", lr=lr)
    compact = training.trainable.compact
    assert compact and all(c.compact.dtype == torch.float32 for c in compact.values())
    states = [s for c in compact.values() for k, s in training.optimizer.state[c.compact].items() if k in ("exp_avg", "exp_avg_sq")]
    assert states and all(s.dtype == torch.float32 for s in states)
    assert all(p.dtype == weight_dtype(precision) for p in training.trainable.whole.values())  # embeddings, head: in place
    source = weights(llama_dir)
    for name, c in compact.items():
        start = c.take(source[name].to(weight_dtype(precision))).float()
        moved = (c.compact.detach() - start).abs()
        assert float(moved.max()) <= 1.01 * lr and float((moved > 0.5 * lr).float().mean()) > 0.9, name  # the fp32 copy holds the step
        if precision == "bf16-pure":  # ... which the bf16 weight itself mostly rounds away
            written = c.take(dict(model.named_parameters())[name].detach()).float()
            assert float((written != start).float().mean()) < 0.5, name


@pytest.mark.parametrize("arch, tied", [("llama", False), ("olmo2", True)])
def test_bf16_pure_output_is_bf16_and_frozen_entries_bit_identical(tmp_path, make_model_dir, corpora, invoke, arch, tied):
    model_dir = make_model_dir(arch, tie_word_embeddings=tied)
    run = tmp_path / "run"
    result = invoke("train", "--model", model_dir, "--data", corpora["ha"], "--method", "s2ft", "--set", "ratio=0.25",
                    "--precision", "bf16-pure", "-o", run, *TRAIN)
    assert result.returncode == 0, result
    before, after = weights(model_dir), weights(run / "final")
    assert all(t.dtype == torch.bfloat16 for t in after.values())
    for name, old in before.items():
        source = old.to(torch.bfloat16)  # the model as loaded in bf16
        if name in ENDS:  # trained; rows of tokens absent from the batches only decay, which bf16 rounding swallows
            assert (source != after[name]).float().mean() > (0.5 if name == "lm_head.weight" or tied else 0.2), name
        elif name.endswith("mlp.down_proj.weight"):
            columns = (source != after[name]).any(dim=0)
            assert 0 < int(columns.sum()) < columns.numel(), name
            assert torch.equal(source[:, ~columns], after[name][:, ~columns]), name
        else:
            assert torch.equal(source, after[name]), name


# ---------------------------------------------------------------- presets

STEPS, BATCH = 12208, 32
# Every gucci-j/ssu training/scripts/*.sh passes: --seed 42 --learning_rate 5e-5 --weight_decay 0.01 --warmup_ratio 0.05
# --max_steps 12208 --lr_scheduler_type cosine --bf16 (on a model loaded in bf16) --gradient_checkpointing True; the HF
# Trainer defaults they keep: adam_beta1 0.9, adam_beta2 0.999, adam_epsilon 1e-8, max_grad_norm 1.0; Table 8: sequence
# length 512; per_device_train_batch_size 32 x gradient_accumulation_steps 1 (gmt.sh: 8 x 4).
COMMON = {"data.seq_len": 512, "batch_size": 32, "max_steps": 12208, "optimizer.lr": 5e-5, "optimizer.weight_decay": 0.01,
          "optimizer.betas": (0.9, 0.999), "optimizer.eps": 1e-8, "schedule.name": "cosine", "schedule.warmup_ratio": 0.05,
          "precision": "bf16-pure", "max_grad_norm": 1.0, "seed": 42, "gradient_checkpointing": True}
# preset -> (method, method parameters as the script sets them, special-token rows frozen (--freeze_chat_template_tokens), run settings
# that differ from COMMON), transcribed from the script the preset names
SSU_PAPER = {
    "fft": ("fft", {}, False, {}),  # fft.sh
    "ssu-wanda": ("ssu-wanda", {"freeze_ratio": 0.5, "scorer_params": {"variant": "reference"}, "granularity": None}, True, {}),  # ssu.sh: ssu_based
    "ssu-wanda-row": ("ssu-wanda", {"freeze_ratio": 0.5, "scorer_params": {"variant": "reference"}, "granularity": "row"}, True, {}),  # ssu_rw.sh
    "ssu-wanda-element": ("ssu-wanda", {"freeze_ratio": 0.5, "scorer_params": {"variant": "reference"}, "granularity": "element"}, True, {}),  # ssu_ew.sh
    "ssu-mag": ("ssu-mag", {"freeze_ratio": 0.5, "scorer_params": {"variant": "reference"}}, True, {}),  # magnitude.sh: magnitude_based
    "ssu-rand": ("ssu-rand", {"freeze_ratio": 0.5}, True, {}),  # random.sh: random_based
    "ssu-sparsegpt": ("ssu-sparsegpt", {"freeze_ratio": 0.5, "scorer_params": {"saliency": "reference"}, "calib_batch_size": 1}, True, {}),  # ssu_sgpt.sh
    "ssu-fisher": ("ssu-fisher", {"freeze_ratio": 0.5}, True, {}),  # ssu_fisher.sh: fisher_based
    "hft": ("hft", {"freeze_ratio": 0.5}, True, {}),  # hft.sh: --freeze_ratio 0.5 --freeze_strategy hft_based
    # gmt.sh: --gmt_mask_ratio 0.5 (kept), GMTTrainer masks per micro-step and steps before the Trainer clips; 8 x 4
    "gmt": ("gmt", {"keep_ratio": 0.5, "every_micro_batch": True, "skip_embeddings_and_head": True}, False, {"max_grad_norm": None, "micro_batch_size": 8}),
    "lota": ("lota", {"calibration_steps": 100, "sparsity": 0.9, "skip_embeddings_and_head": True}, False, {}),  # lota.sh
    "s2ft": ("s2ft", {"variant": "down", "ratio": 0.015, "train_embeddings_and_head": True}, False, {}),  # s2ft_down.sh
    "s2ft-down-16": ("s2ft", {"variant": "down", "ratio": 0.03, "train_embeddings_and_head": True}, False, {}),  # s2ft_down_16.sh
    "s2ft-down-32": ("s2ft", {"variant": "down", "ratio": 0.055, "train_embeddings_and_head": True}, False, {}),  # s2ft_down_32.sh
    "s2ft-down-64": ("s2ft", {"variant": "down", "ratio": 0.11, "train_embeddings_and_head": True}, False, {}),  # s2ft_down_64.sh
    "s2ft-down-output": ("s2ft", {"variant": "down+output", "ratio": 0.015, "train_embeddings_and_head": True}, False, {}),  # --s2ft_include_attn_output
    # adalora.sh: --lora_r 12 --adalora_target_r 8 --lora_alpha 32 --lora_dropout 0.05 (all 7 projections), beta 0.85/0.85, orth 0.5,
    # delta_t 20; main.py never calls update_and_allocate
    "adalora": ("adalora", {"init_r": 12, "target_r": 8, "alpha": 32, "dropout": 0.05, "delta_t": 20, "beta1": 0.85, "beta2": 0.85,
                            "orth_reg_weight": 0.5, "allocate": False, "train_embeddings_and_head": True}, False, {}),
}
# LayRA paper §3.2 and Appendix A.4 Table 23
LAYRA = {"method_params": {"r": 8, "alpha": 16, "dropout": 0.05, "first": 10, "last": 2, "train_embeddings_and_head": True},
         "optimizer.lr": 3e-4, "schedule.name": "linear", "schedule.warmup_ratio": 0.05, "optimizer.weight_decay": 0.1,
         "optimizer.eps": 1e-5, "optimizer.betas": (0.9, 0.95), "data.seq_len": 2048, "epochs": 1}


def _value(config, dotted):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def test_every_shipped_preset_is_tested():
    from adaptkit.settings import presets

    assert presets() == sorted([f"ssu-paper/{n}" for n in SSU_PAPER] + ["layra-paper/layra"])


def _printed_config(invoke, name):
    """The preset as `adaptkit train --config NAME --print-config` prints it (YAML, usable as --config)."""
    import yaml

    result = invoke("train", "--config", name, "--print-config")
    assert result.returncode == 0, result
    return yaml.safe_load(result.stdout)


def _printed(config, dotted):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("name", list(SSU_PAPER))
def test_ssu_paper_presets_resolve_to_the_reference_scripts(name, llama_dir, corpora):
    from adaptkit.train_settings import build_config
    from adaptkit.settings import PRESETS_DIR
    from adaptkit.registry import get_spec

    flags = {"model": str(llama_dir), "data": [str(corpora["ha"])]}
    by_name = build_config(Path(f"ssu-paper/{name}"), flags, None)
    for spelled in (Path(f"configs/ssu-paper/{name}.yaml"), PRESETS_DIR / "ssu-paper" / f"{name}.yaml"):
        assert build_config(spelled, flags, None) == by_name
    method, params, freeze, run = SSU_PAPER[name]
    assert by_name.method == method and by_name.freeze_special_tokens is freeze
    for key, expected in {**COMMON, **run}.items():
        assert _value(by_name, key) == expected, key
    resolved = get_spec("method", method).validate_params(by_name.method_params)
    for key, expected in params.items():
        assert getattr(resolved, key) == expected, key
    micro = by_name.micro_batch_size or BATCH
    assert BATCH // micro == (4 if name == "gmt" else 1)  # GMT's accumulation interval
    if name == "adalora":
        assert (int(resolved.tinit * STEPS), int(resolved.tfinal * STEPS)) == (1000, 8546)
        assert resolved.target_modules == "all-linear"


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_print_config_shows_the_reference_values_for_every_preset(invoke):
    for name, (method, params, freeze, run) in SSU_PAPER.items():
        printed = _printed_config(invoke, f"ssu-paper/{name}")
        assert printed["method"] == method and printed["freeze_special_tokens"] is freeze, name
        for key, expected in {**COMMON, **run}.items():
            assert _printed(printed, key) == expected, (name, key)
        for key, expected in params.items():
            assert printed["method_params"].get(key, None) == expected, (name, key)
    printed = _printed_config(invoke, "layra-paper/layra")
    for key, expected in LAYRA.items():
        if key == "method_params":
            assert all(printed["method_params"][k] == v for k, v in expected.items())
        else:
            assert _printed(printed, key) == expected, key


def test_layra_preset_resolves_to_the_papers_setup(llama_dir, corpora):
    from adaptkit.train_settings import build_config
    from adaptkit.registry import get_spec

    config = build_config(Path("layra-paper/layra"), {"model": str(llama_dir), "data": [str(corpora["ha"])]}, None)
    params = get_spec("method", "layra").validate_params(config.method_params)
    assert config.method == "layra" and all(getattr(params, k) == v for k, v in LAYRA["method_params"].items())
    assert params.target_modules == "all-linear"
    for key, expected in LAYRA.items():
        if key != "method_params":
            assert _value(config, key) == expected, key
    assert config.max_steps is None  # one epoch (Table 23), not a step count


def test_layra_series_defaults_to_the_papers_lambda_prime():
    """The paper's Series rows equal the 0.5 rows of its lambda' sweep (LayRA paper, Appendix A.3), e.g. XNLI GlgSwa."""
    from adaptkit.registry import get_spec

    series_glgswa_xnli = (48.88, 54.74, 50.96, 48.63, 47.95, 44.82, 43.86, 52.01, 48.98)  # Table 1 row "Series (GlgSwa)"
    sweep = {0.4: (49.24, 54.78, 51.24, 49.64, 48.55, 44.30, 42.21, 53.24, 49.15), 0.5: (48.88, 54.74, 50.96, 48.63, 47.95, 44.82, 43.86, 52.01, 48.98)}
    assert [v for v, row in sweep.items() if row == series_glgswa_xnli] == [0.5]
    assert get_spec("merge method", "layra-series").validate_params({}).lambda_prime == 0.5


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_a_preset_trains_with_flags_overriding_it(tmp_path, make_model_dir, corpora, invoke):
    """The issue's command with the preset path; the tiny run overrides only the run length and sizes."""
    from transformers import AutoTokenizer

    from adaptkit.calibration import build_calibration

    model_dir = make_model_dir("olmo2")
    calib = tmp_path / "calib"
    build_calibration(AutoTokenizer.from_pretrained(model_dir), corpora["en"], fmt="text", pool=200, num_samples=6, block_size=32, seed=0).save(calib)
    run = tmp_path / "run"
    result = invoke("train", "--config", "configs/ssu-paper/ssu-wanda.yaml", "--model", model_dir, "--data", corpora["ha"], "--calib", calib,
                    "--max-steps", "2", "--batch-size", "4", "--seq-len", "32", "--no-gradient-checkpointing", "-o", run, "--quiet")
    assert result.returncode == 0, result
    saved = (run / "config.yaml").read_text()
    assert "precision: bf16-pure" in saved and "freeze_ratio: 0.5" in saved and "lr: 5.0e-05" in saved
    assert all(t.dtype == torch.bfloat16 for t in weights(run / "final").values())


def test_unknown_preset_is_one_line_naming_the_presets(tmp_path, llama_dir, corpora, invoke):
    result = invoke("train", "--config", "ssu-paper/ssu-wandaa", "--model", llama_dir, "--data", corpora["ha"], "-o", tmp_path / "run")
    assert_input_error(result, "--config", "ssu-paper/ssu-wandaa", "ssu-paper/ssu-wanda")
    assert not (tmp_path / "run").exists()
