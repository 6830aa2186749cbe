"""Evaluation during training: eval rows in metrics.jsonl and curves.png, computed by the `ppl`
task's own function; chat sets over assistant turns; held-out validation blocks; resume; 2 processes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import env_with, launch

pytestmark = pytest.mark.slow  # CLI trainings with evaluation


TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>\n{% generation %}{{ m['content'] }}</s>\n{% endgeneration %}"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who has rights?"},
     {"role": "assistant", "content": "Everyone has the right to life."}, {"role": "user", "content": "And in Hausa?"},
     {"role": "assistant", "content": "Kowa yana da hakki."}],
    [{"role": "user", "content": "Say it"}, {"role": "assistant", "content": "All human beings are born free and equal."}],
    [{"role": "user", "content": "No one shall be held in slavery?"}, {"role": "assistant", "content": "No one shall be held in slavery or servitude."}],
]
TRAIN = ["--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--quiet", "--set", "log_steps=1"]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, make_model_dir) -> Path:
    """A tiny model whose tokenizer has a chat template marking the assistant turns ({% generation %})."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("chat-model") / "model"
    shutil.copytree(make_model_dir("llama"), directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "answers.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS), encoding="utf-8")
    return path


def independent_chat_nll(model, tokenizer, conversations) -> tuple[float, int]:
    """Summed NLL and count of the assistant tokens: the template applied by transformers, its own
    assistant-token mask, the non-assistant labels -100, the model's mean loss times the count."""
    nll, count = 0.0, 0
    for messages in conversations:
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = torch.tensor([encoded["input_ids"]])
        mask = torch.tensor([encoded["assistant_masks"]]).bool()
        labels = ids.masked_fill(~mask, -100)
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.double().item()
        scored = int(mask[0, 1:].sum())
        nll, count = nll + loss * scored, count + scored
    return nll, count


def _load(directory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(directory)


def _ppl_task(model, tokenizer, spec: str, **params) -> dict:
    """`adaptkit evaluate`'s ppl task on one model (the code path of the command)."""
    from adaptkit.evals.runner import ModelRef, prepare_tasks, run_evaluation

    run = run_evaluation([ModelRef("m", model=model, tokenizer=tokenizer)], prepare_tasks([f"ppl:{spec}"], {"ppl": params}))
    return next(iter(run.results["m"].values()))


def test_chat_perplexity_scores_only_the_assistant_turns(chat_model, chat_file):
    model, tokenizer = _load(chat_model)
    nll, count = independent_chat_nll(model, tokenizer, CONVERSATIONS)
    result = _ppl_task(model, tokenizer, f"chat={chat_file}")
    assert result["tokens"] == count > 0
    assert result["nll_sum"] == pytest.approx(nll, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    answers = [m["content"] + "</s>\n" for c in CONVERSATIONS for m in c if m["role"] == "assistant"]
    assert result["bytes"] == sum(len(a.encode()) for a in answers)  # the scored assistant text
    # windows shorter than a conversation: each assistant token is still predicted once
    short = _ppl_task(model, tokenizer, f"chat={chat_file}", block_size=8, stride=3)
    assert short["tokens"] == count


def _rows(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval" in r]


def test_eval_rows_curves_resume_and_one_implementation(tmp_path, chat_model, chat_file, corpora, invoke):
    args = ["train", "--model", chat_model, "--data", corpora["ha"], "--max-steps", "4", "--save-steps", "2", *TRAIN]
    evals = ["--eval-data", f"en={corpora['en-test']}:source", "--eval-data", f"ha={corpora['ha-test']}:target",
             "--eval-data", f"chat={chat_file}:source", "--validation-fraction", "0.1", "--eval-steps", "2"]
    run = tmp_path / "run"
    assert invoke(*args, *evals, "-o", run).returncode == 0
    training, rows = _rows(run)
    assert [r["step"] for r in training] == [1, 2, 3, 4] and all("eval" not in r for r in training)
    assert [(r["step"], r["eval"], r["role"]) for r in rows] == [
        (s, name, role) for s in (0, 2, 4) for name, role in (("en", "source"), ("ha", "target"), ("chat", "source"), ("validation", "train"))]
    assert all(math.isfinite(r["ppl"]) and r["bits_per_byte"] == pytest.approx(r["nll_per_token"] * r["tokens"] / (math.log(2) * r["bytes"])) for r in rows)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # step 0: the source model; the chat set against the independent computation
    model, tokenizer = _load(chat_model)
    nll, count = independent_chat_nll(model, tokenizer, CONVERSATIONS)
    chat0 = next(r for r in rows if r["step"] == 0 and r["eval"] == "chat")
    assert chat0["tokens"] == count and chat0["nll_per_token"] == pytest.approx(nll / count, rel=1e-6)
    # the last step: exactly what `adaptkit evaluate`'s ppl task gives for final/
    final_model, final_tokenizer = _load(run / "final")
    for name, spec in (("en", f"en={corpora['en-test']}"), ("chat", f"chat={chat_file}")):
        expected = _ppl_task(final_model, final_tokenizer, spec)
        row = next(r for r in rows if r["step"] == 4 and r["eval"] == name)
        assert (row["tokens"], row["bytes"]) == (expected["tokens"], expected["bytes"])
        assert row["ppl"] == pytest.approx(expected["ppl"], rel=1e-9) and row["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-9)
    ha = [r["ppl"] for r in rows if r["eval"] == "ha"]
    assert ha[-1] < ha[0]  # training on Hausa text lowers the Hausa perplexity

    # resume after the checkpoint at step 2: the same eval rows, bit for bit, and the same weights
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    shutil.rmtree(stopped / "final")
    resumed = invoke(*args, *evals, "-o", stopped, "--resume", "--json")
    assert resumed.returncode == 0, resumed
    assert json.loads(resumed.stdout)["resumed_from"] == 2
    assert _rows(stopped)[1] == rows
    a, b = load_file(str(run / "final" / "model.safetensors")), load_file(str(stopped / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # evaluation changes nothing in training: the run with only the validation set trains the same
    plain = tmp_path / "plain"
    assert invoke(*args, "--validation-fraction", "0.1", "-o", plain).returncode == 0
    c = load_file(str(plain / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert [r["loss"] for r in _rows(plain)[0]] == [r["loss"] for r in training]


def test_validation_blocks_are_held_out_of_training():
    from adaptkit.engine.batches import Batches
    from adaptkit.engine.evaluation import split_validation

    blocks = torch.arange(40 * 3).reshape(40, 3)
    train, held = split_validation(blocks, 0.1, seed=5)
    assert (len(train), len(held)) == (36, 4)
    held_rows = {tuple(r) for r in held.tensor().tolist()}
    train_rows = {tuple(r) for r in train.tensor().tolist()}
    assert not held_rows & train_rows and len(held_rows | train_rows) == 40
    again, other = split_validation(blocks, 0.1, seed=5)[1], split_validation(blocks, 0.1, seed=6)[1]
    assert torch.equal(again.tensor(), held.tensor()) and not torch.equal(other.tensor(), held.tensor())
    batches = Batches(train, batch_size=4, micro_batch_size=2, seed=0)
    seen = {tuple(r) for step in range(30) for micro in range(2) for r in batches.get(step, micro).tolist()}
    assert seen == train_rows  # every training block is trained on over 3 epochs, never a held-out one
    assert split_validation(blocks, 0.0, seed=5) == (blocks, None)


def test_generate_chat_format_is_an_eval_set(tmp_path, chat_model, invoke):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(["Who has rights?", "Kowa yana da"])))
    common = ["generate", "--model", chat_model, "--prompts", prompts, "--max-new-tokens", "5", "--quiet"]
    assert invoke(*common, "-o", tmp_path / "records.jsonl").returncode == 0
    assert invoke(*common, "--format", "chat", "-o", tmp_path / "chat.jsonl").returncode == 0
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    chats = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert [c["messages"] for c in chats] == [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}] for r in records]
    model, tokenizer = _load(chat_model)
    nll, count = independent_chat_nll(model, tokenizer, [c["messages"] for c in chats])
    result = _ppl_task(model, tokenizer, f"answers={tmp_path / 'chat.jsonl'}")
    assert result["tokens"] == count and result["nll_sum"] == pytest.approx(nll, rel=1e-6)


@pytest.mark.slow
def test_two_processes_evaluate_like_one(tmp_path, make_model_dir, corpora):
    model = make_model_dir("llama")
    args = ["train", "--model", model, "--data", corpora["ha"], "--max-steps", "2", *TRAIN,
            "--eval-data", f"en={corpora['en-test']}:source", "--validation-fraction", "0.1", "--eval-steps", "1",
            "--set", "eval.batch_size=3", "--set", "eval.block_size=24"]
    env = env_with()
    one = launch("python", 1, [*args, "-o", tmp_path / "one"], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("torchrun", 2, [*args, "-o", tmp_path / "two"], env)
    assert two.returncode == 0, two.stderr[-3000:]
    rows_one, rows_two = _rows(tmp_path / "one")[1], _rows(tmp_path / "two")[1]
    assert [(r["step"], r["eval"]) for r in rows_one] == [(r["step"], r["eval"]) for r in rows_two] and len(rows_one) == 6
    assert rows_one[:2] == rows_two[:2]  # step 0: the same model, the same sums
    for a, b in zip(rows_one[2:], rows_two[2:]):  # later: the training itself agrees to float tolerance
        assert (a["tokens"], a["bytes"]) == (b["tokens"], b["bytes"]) and a["ppl"] == pytest.approx(b["ppl"], rel=1e-4)
