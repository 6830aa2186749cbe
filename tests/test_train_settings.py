"""`adaptkit train`'s options and the settings they set: every option is mapped, and --help shows the
engine's defaults."""

from __future__ import annotations

import typer


def _train_command():
    from adaptkit.cli import build_app

    root = typer.main.get_command(build_app())
    return root.get_command(root.context_class(root), "train")


def test_train_help_shows_the_engine_defaults():
    """Each setting option's [default: ...] in `train --help` (written in the option, so that --help
    imports no pydantic) is TrainConfig's default, as YAML would print it."""
    from adaptkit.commands.train import FLAG_KEYS
    from adaptkit.engine.config import TrainConfig

    checked = 0
    for param in _train_command().params:
        key = FLAG_KEYS.get(param.name or "")
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
