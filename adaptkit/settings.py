"""Settings: YAML files (and the packaged presets), `--set a.b=value` overrides, validation into pydantic models.

Precedence, lowest first: the model's defaults, the YAML file given with `--config`,
the command's explicit flags, then `--set` overrides. Every key is validated by the
pydantic model (`extra="forbid"`), so a misspelled key or a wrong type is an input
error naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from adaptkit.errors import InputError, first_line

M = TypeVar("M", bound=BaseModel)


PRESETS_DIR = Path(__file__).parent / "configs"


def presets() -> list[str]:
    """Names of the configuration presets shipped with adaptkit (`ssu-paper/ssu-wanda`, ...)."""
    return sorted(p.relative_to(PRESETS_DIR).with_suffix("").as_posix() for p in PRESETS_DIR.glob("*/*.yaml"))


def resolve_config_file(path: Path, flag: str = "--config") -> Path:
    """A YAML file as given, or a preset shipped inside the package: `ssu-paper/ssu-wanda` or the
    source-tree path `configs/ssu-paper/ssu-wanda.yaml` -> adaptkit/configs/ssu-paper/ssu-wanda.yaml."""
    path = Path(path)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("./").removeprefix("configs/").removesuffix(".yaml")
    preset = PRESETS_DIR / f"{name}.yaml"
    if preset.is_file():
        return preset
    raise InputError(f"{flag}: '{path}' is neither a readable file nor a preset (presets: {', '.join(presets())})")


def read_yaml_mapping(path: Path, flag: str = "--config") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag}: '{path}' is not a readable file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag}: '{path}' is not valid YAML ({first_line(exc)})") from None
    except OSError as exc:
        raise InputError(f"{flag}: cannot read '{path}' ({exc.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{flag}: '{path}' must hold a mapping of keys to values, not a {type(data).__name__}")
    return data


def parse_set_overrides(items: list[str] | None) -> list[tuple[list[str], Any]]:
    """Parse `a.b=value` strings; values are read as YAML scalars (numbers, booleans, lists)."""
    parsed = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set: expected KEY=VALUE (e.g. optimizer.lr=1e-4), got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append(([p for p in key.strip().split(".")], value))
    return parsed


def set_nested(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            if not isinstance(child, dict):
                raise InputError(f"--set: '{'.'.join(path)}': '{part}' is not a section")
            node[part] = child
        node = child
    node[path[-1]] = value


def fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (nested) model that `path[:-1]` leads to, for suggestions."""
    current: Any = model
    for part in path[:-1]:
        annotation = getattr(current, "model_fields", {}).get(part)
        annotation = annotation.annotation if annotation else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        current = annotation
    return list(getattr(current, "model_fields", {}))


def check_key(model: type[BaseModel], path: list[str]) -> bool:
    """True if `path` names a field of `model` (descending into nested models)."""
    current: Any = model
    for i, part in enumerate(path):
        fields = getattr(current, "model_fields", None)
        if fields is None:
            # a free-form dict field accepts any sub-key
            return True
        if part not in fields:
            return False
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if current is None and i < len(path) - 1:
            return True
    return True


def validate_config(model: type[M], data: dict[str, Any], source: str, flags: dict[str, str] | None = None) -> M:
    """Validate `data` with `model`; the first error becomes a one-line InputError.

    `flags` maps dotted keys to the CLI flags that set them, so errors name the flag.
    """
    from adaptkit.errors import did_you_mean
    from adaptkit.params import FieldError, validate

    def describe(error: FieldError) -> str:
        loc = error.loc or "(root)"
        flag = (flags or {}).get(loc) or (flags or {}).get(loc.rsplit(".", 1)[0])
        if flag:
            return f"{flag}: {error.msg} (got {error.input!r})"
        if error.type == "extra_forbidden":
            return f"{source}: unknown key '{loc}'{did_you_mean(loc.split('.')[-1], list(model.model_fields))}"
        return f"{source}: '{loc}': {error.msg}"

    return validate(model, data, describe)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
