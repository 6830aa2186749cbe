"""Plugin discovery: entry points, in-process registration, duplicates, broken plugins, lookups."""

from __future__ import annotations

import json
import textwrap
import types
from pathlib import Path

import pytest

from adaptkit.errors import InputError, PluginError
from adaptkit.hookspecs import hookimpl
from adaptkit.registry import build_registry, get_registry, register_plugin, reset_registry, unregister_plugin
from adaptkit.specs import MethodSpec, Params


@pytest.fixture(autouse=True)
def fresh_registry():
    reset_registry()
    yield
    reset_registry()


def _method_plugin(name: str, method_name: str, summary: str = "test method"):
    module = types.ModuleType(name)

    @hookimpl
    def register_methods(register):
        register(MethodSpec(name=method_name, factory="adaptkit.plugins.methods.fft:FullFineTuning", summary=summary))

    module.register_methods = register_methods
    return module


def test_builtins_are_registered_from_the_catalog():
    registry = get_registry()
    assert registry.get("method", "fft").plugin == "builtin-methods"
    assert not registry.broken


def test_in_process_registration_and_unregistration():
    register_plugin(_method_plugin("my_plugin", "my-method"), name="my-plugin")
    spec = get_registry().get("method", "my-method")
    assert spec.plugin == "my-plugin"
    unregister_plugin("my-plugin")
    with pytest.raises(InputError, match="unknown method 'my-method'"):
        get_registry().get("method", "my-method")


def test_duplicate_names_name_both_plugins():
    register_plugin(_method_plugin("a", "twin"), name="plugin-a")
    register_plugin(_method_plugin("b", "twin"), name="plugin-b")
    with pytest.raises(PluginError) as info:
        get_registry().get("method", "twin")
    assert "plugin-a" in str(info.value) and "plugin-b" in str(info.value)
    # other names keep working
    assert get_registry().get("method", "fft")


def test_duplicate_of_a_builtin_is_reported_by_plugins_command(invoke):
    register_plugin(_method_plugin("c", "fft"), name="plugin-c")
    result = invoke("plugins", "--json")
    assert result.returncode == 0
    conflicts = json.loads(result.stdout)["conflicts"]
    assert conflicts == [{"kind": "method", "name": "fft", "plugins": ["builtin-methods", "plugin-c"]}]


def test_unknown_name_suggests_closest():
    with pytest.raises(InputError, match=r"did you mean: fft\b"):
        get_registry().get("method", "fftt", "--method")


def _raising_plugin(hook_name: str) -> types.ModuleType:
    """A plugin module whose registration hook `hook_name` raises."""
    module = types.ModuleType("bad")

    def hook(register):
        raise RuntimeError("oops")

    setattr(module, hook_name, hookimpl(hook))
    return module


def test_hook_that_raises_marks_plugin_broken_only():
    registry = register_plugin(_raising_plugin("register_methods"), name="bad-plugin")
    assert [b.name for b in registry.broken] == ["bad-plugin"]
    assert registry.get("method", "fft")


def test_a_broken_plugin_is_listed_once_however_often_specs_are_collected():
    bad = _raising_plugin("register_scorers")
    good = types.ModuleType("good")
    good.register_methods = hookimpl(lambda register: None)
    try:
        register_plugin(bad, name="bad-once")
        registry = register_plugin(good, name="good-after")
        registry.collect()
        assert [b.name for b in registry.broken] == ["bad-once"]
        registry.mark_load_failure("unloadable", "failed to load (x:y): ImportError")
        registry.collect()
        assert sorted(b.name for b in registry.broken) == ["bad-once", "unloadable"]  # load failures survive a collect
    finally:
        unregister_plugin("bad-once")
        unregister_plugin("good-after")
    assert [b.name for b in get_registry().broken] == ["unloadable"]


def test_params_are_validated_with_suggestions():
    class P(Params):
        rank: int = 8

    spec = MethodSpec(name="x", factory="a:b", params=P)
    assert spec.validate_params({"rank": 4}).rank == 4
    with pytest.raises(InputError, match="did you mean: rank"):
        spec.validate_params({"rnak": 4})
    with pytest.raises(InputError, match="'rank'"):
        spec.validate_params({"rank": "many"})


def _fake_distribution(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[adaptkit]\n{lines}\n")


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_broken_entry_point_is_reported_and_cli_keeps_working(tmp_path, cli):
    _fake_distribution(tmp_path, "broken-plugin", {"broken": "module_that_does_not_exist"})
    (tmp_path / "good_plugin.py").write_text(
        textwrap.dedent(
            """
            from adaptkit.hookspecs import hookimpl
            from adaptkit.specs import MethodSpec

            @hookimpl
            def register_methods(register):
                register(MethodSpec(name="good", factory="adaptkit.plugins.methods.fft:FullFineTuning", summary="ok"))
            """
        )
    )
    _fake_distribution(tmp_path, "good-plugin", {"good": "good_plugin"})
    env = {"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[1]}"}
    result = cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [b["plugin"] for b in listing["broken"]] == ["broken"]
    assert "good" in {p["name"] for p in listing["plugins"]}
    assert "plugin 'broken' is broken" in result.stderr

    disabled = cli("plugins", "--json", env={**env, "ADAPTKIT_DISABLE_PLUGINS": "1"})
    listing = json.loads(disabled.stdout)
    assert listing["broken"] == [] and "good" not in {p["name"] for p in listing["plugins"]}
    assert "fft" in {p["name"] for p in listing["plugins"]}  # built-ins still load

    only_broken_off = cli("plugins", "--json", env={**env, "ADAPTKIT_DISABLE_PLUGINS": "broken"})
    listing = json.loads(only_broken_off.stdout)
    assert listing["broken"] == [] and "good" in {p["name"] for p in listing["plugins"]}


def test_registry_without_entry_points_still_has_builtins():
    registry = build_registry(load_entry_points=False)
    assert "fft" in registry.names("method")


def test_plugin_catalog_is_what_the_builtin_modules_register():
    """adaptkit/plugins/catalog.py (read by the registry) equals what the built-in plugin modules register
    today; after changing a built-in plugin run `python scripts/write_plugin_catalog.py`."""
    from adaptkit.plugins.catalog import ENTRIES
    from adaptkit.registry import builtin_catalog

    assert ENTRIES == builtin_catalog()


def test_catalogued_spec_loads_its_module_on_first_use_only():
    """A built-in spec answers name, summary and parameters from the catalog; params (and everything
    else) come from the spec its module registers, loaded then."""
    from adaptkit.registry import build_registry
    from adaptkit.specs import CataloguedSpec

    registry = build_registry(load_entry_points=False)
    spec = registry.get("merge method", "slerp")
    assert isinstance(spec, CataloguedSpec) and spec.plugin == "builtin-merges"
    assert spec.param_summary() == "t=0.5" and spec.summary.startswith("Spherical") and spec.parameters()[0]["default"] == 0.5
    assert spec._real is None  # nothing loaded yet
    assert spec.params.__name__ == "SlerpParams" and spec._real is not None
    assert spec.real().factory == "adaptkit.plugins.merges.slerp:Slerp" and spec.real().plugin == "builtin-merges"
