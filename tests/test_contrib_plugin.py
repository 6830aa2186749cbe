"""The example third-party package in plugins_contrib/, discovered through its entry point."""

from __future__ import annotations

import pytest

import configparser
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "plugins_contrib" / "adaptkit-embed-tune"


def _install_metadata(site: Path) -> None:
    """What `pip install` would write for the contrib package: its dist-info with entry_points.txt."""
    pyproject = (CONTRIB / "pyproject.toml").read_text()
    import tomllib

    project = tomllib.loads(pyproject)["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    parser = configparser.ConfigParser()
    parser["adaptkit"] = project["entry-points"]["adaptkit"]
    with open(info / "entry_points.txt", "w") as handle:
        parser.write(handle)


@pytest.mark.slow
def test_contrib_plugin_is_listed_and_trains_through_the_cli(tmp_path, cli, llama_dir, corpora):
    site = tmp_path / "site"
    _install_metadata(site)
    env = {"PYTHONPATH": f"{site}:{CONTRIB}:{ROOT}"}
    listing = cli("plugins", "--kind", "method", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    entry = next(p for p in json.loads(listing.stdout)["plugins"] if p["name"] == "embed-tune")
    assert entry["plugin"] == "embed-tune" and {"name": "train_output_embeddings", "type": "bool", "default": True} in [
        {k: p[k] for k in ("name", "type", "default")} for p in entry["parameters"]]

    out = tmp_path / "run"
    result = cli("train", "--model", llama_dir, "--data", corpora["ha"], "--method", "embed-tune", "-o", out,
                 "--max-steps", "3", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--weight-decay", "0.1",
                 "--json", env=env)
    assert result.returncode == 0, result.stderr
    before, after = load_file(str(llama_dir / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    trained = {"model.embed_tokens.weight", "lm_head.weight"}
    for name in before:
        assert torch.equal(before[name], after[name]) != (name in trained), name
