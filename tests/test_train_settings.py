"""`adaptkit train`'s options and the settings they set: every option is mapped, and --help shows the
engine's defaults."""

from __future__ import annotations

import pytest
import typer


def _train_command():
    from adaptkit.cli import build_app

    root = typer.main.get_command(build_app())
    return root.get_command(root.context_class(root), "train")


def test_train_help_shows_the_engine_defaults():
    """Each setting option's [default: ...] in `train --help` (written in the option, so that --help
    imports no pydantic) is TrainConfig's default, as YAML would print it."""
    from adaptkit.train_settings import OPTION_SETTINGS
    from adaptkit.engine.config import TrainConfig

    checked = 0
    for param in _train_command().params:
        key = OPTION_SETTINGS.get(param.name or "")
        if key is None:
            continue
        model, default = TrainConfig, None
        for part in key.split("."):
            info = model.model_fields[part]
            default = info.get_default(call_default_factory=True)
            model = info.annotation if isinstance(info.annotation, type) else None
        if default in (None, "", [], False) or param.name == "distributed":  # 'auto': shown as what it means, ddp
            continue
        assert param.show_default == str(default), (param.name, param.show_default, default)
        checked += 1
    assert checked >= 10


# the options of `adaptkit train` that are not run settings: what to do, and where the result goes
COMMAND_OPTIONS = {"output", "resume", "print_config", "config", "set_", "push_to_hub", "private", "revision", "dry_run",
                   "processes", "overwrite", "json", "quiet", "debug", "progress"}


def test_every_train_option_is_mapped():
    """An option of `adaptkit train` is a setting (OPTION_SETTINGS), a data option, a method parameter
    or one of the command's own: a new or renamed option that is none of these fails here."""
    from adaptkit.train_settings import DATA_OPTIONS, METHOD_OPTIONS, OPTION_SETTINGS

    names = {param.name for param in _train_command().params}
    known = set(OPTION_SETTINGS) | set(DATA_OPTIONS) | set(METHOD_OPTIONS) | COMMAND_OPTIONS
    assert names - known == set()
    assert known - COMMAND_OPTIONS - names == set()  # and every mapped option exists


@pytest.mark.slow  # --print-config renders through the engine (imports torch): 7 s
def test_every_setting_option_reaches_its_setting(invoke, tmp_path):
    """`train --print-config` with every setting option given: each value is in the resolved settings
    (so the command passes each option on by name, none dropped)."""
    import yaml

    given = {
        "model": ("m-dir", "m-dir"), "method": ("lora", "lora"), "max_steps": ("7", 7), "epochs": ("2.5", 2.5),
        "seq_len": ("48", 48), "num_proc": ("3", 3), "packing": ("doc-mask", "doc-mask"), "batch_size": ("6", 6),
        "micro_batch_size": ("3", 3), "lr": ("0.001", 0.001), "weight_decay": ("0.2", 0.2), "schedule": ("linear", "linear"),
        "warmup_ratio": ("0.1", 0.1), "max_grad_norm": ("2.5", 2.5), "save_steps": ("5", 5), "precision": ("fp32", "fp32"),
        "device": ("cpu", "cpu"), "distributed": ("fsdp", "fsdp"), "seed": ("9", 9), "gradient_checkpointing": (None, True),
        "compile": (None, True), "trust_remote_code": (None, True), "report_to": ("tensorboard", ["tensorboard"]),
        "run_name": ("rn", "rn"), "project": ("pj", "pj"), "eval_data": ("x=e.txt:source", ["x=e.txt:source"]),
        "eval_steps": ("4", 4), "validation_fraction": ("0.1", 0.1), "ema_decay": ("0.9", 0.9), "lawa_k": ("3", 3),
    }
    from adaptkit.train_settings import OPTION_SETTINGS

    assert set(given) == set(OPTION_SETTINGS)
    args = ["train", "--print-config", "--data", "d.txt", "--text-field", "body", "--max-tokens", "1k"]
    for option, (text, _) in given.items():
        args += [f"--{option.replace('_', '-')}"] + ([text] if text is not None else [])
    result = invoke(*args)
    assert result.returncode == 0, result.stderr
    settings = yaml.safe_load(result.stdout)
    for option, (_, expected) in given.items():
        value = settings
        for part in OPTION_SETTINGS[option].split("."):
            value = value[part]
        assert value == expected, option
    assert (settings["data"]["paths"], settings["data"]["text_field"], settings["data"]["max_tokens"]) == (["d.txt"], "body", 1000)
