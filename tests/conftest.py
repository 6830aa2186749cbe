"""Shared fixtures: a tokenizer trained on UDHR text, tiny model directories, small corpora.

Everything is built offline in the test session; models have a few hundred thousand
parameters so that the whole suite runs on two CPU cores.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one intra-op thread here and in every CLI subprocess: tiny models gain nothing from more, and OpenMP
# teams on busy cores stall training steps up to 100x (docs: PITFALLS)
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (by a plugin): the variable came too late
    sys.modules["torch"].set_num_threads(1)
# A harness started under `nohup` ignores SIGHUP, and an ignored signal stays ignored in every child: the
# tests that hang up a command (and the commands under test) need SIGHUP's default, as in a terminal.
signal.signal(signal.SIGHUP, signal.SIG_DFL)
if "ADAPTKIT_CACHE" not in os.environ:  # a private token cache, removed when the session ends
    _CACHE = tempfile.mkdtemp(prefix="adaptkit-test-cache-")
    atexit.register(shutil.rmtree, _CACHE, True)
    os.environ["ADAPTKIT_CACHE"] = _CACHE


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """English (source) and Hausa (target) UDHR text files, train and held-out."""
    from adaptkit import demo

    root = tmp_path_factory.mktemp("corpora")
    files = {}
    for lang in ("en", "ha"):
        train, test = demo.split_corpus(lang)
        files[lang] = demo.write_lines(train, root / f"{lang}.txt")
        files[f"{lang}-test"] = demo.write_lines(test, root / f"{lang}-test.txt")
    return files


@pytest.fixture(scope="session")
def hausa_tokenizer(corpora):
    """A tokenizer trained on the Hausa corpus only: the same special tokens and bytes as the tests' tokenizer,
    other merges at other ids (the vocabulary-merge and transplant tests)."""
    from adaptkit import demo

    return demo.train_tokenizer(corpora["ha"].read_text().splitlines(), vocab_size=320)


@pytest.fixture(scope="session")
def tokenizer(corpora):
    from adaptkit import demo

    texts = corpora["en"].read_text().splitlines() + corpora["ha"].read_text().splitlines()
    return demo.train_tokenizer(texts, vocab_size=384)


@pytest.fixture(scope="session")
def make_model_dir(tmp_path_factory, tokenizer):
    """make_model_dir(arch="llama", seed=0, **config) -> Path of a saved tiny model + tokenizer (cached)."""
    from adaptkit import demo

    cache: dict[tuple, Path] = {}

    def make(arch: str = "llama", seed: int = 0, **config) -> Path:
        key = (arch, seed, tuple(sorted(config.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"model-{arch}-{seed}")
            model = demo.tiny_model(arch, len(tokenizer), seed=seed, **config)
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            cache[key] = directory
        return cache[key]

    return make


@pytest.fixture
def llama_dir(make_model_dir) -> Path:
    return make_model_dir("llama")


@pytest.fixture
def olmo2_dir(make_model_dir) -> Path:
    return make_model_dir("olmo2")


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m adaptkit ARGS` in a subprocess (a real process: exit codes, stderr, imports)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "adaptkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture
def cli():
    return run_cli


def assert_input_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr mentioning each fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


class Invocation:
    def __init__(self, exit_code: int, stdout: str, stderr: str):
        self.returncode = exit_code
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Invocation(rc={self.returncode}, stdout={self.stdout[-500:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def invoke(capfd):
    """invoke(*args) runs the CLI in this process (fast: no torch re-import); returns rc, stdout, stderr."""
    from adaptkit.cli import main

    def run(*args: str) -> Invocation:
        capfd.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capfd.readouterr()
        return Invocation(code, out, err)

    return run


# --- the SSU tests' calibration sets (calibrate, scorers, mask, ssu, layer by layer, dry runs)

SSU_BLOCK = 32  # tokens per calibration block


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory, corpora, tokenizer) -> Path:
    """12 blocks of 32 English (source-side) tokens, saved as a calibration directory."""
    from adaptkit.calibration import build_calibration

    directory = tmp_path_factory.mktemp("calib") / "en"
    build_calibration(tokenizer, corpora["en"], fmt="text", pool=500, num_samples=12, block_size=SSU_BLOCK, seed=0).save(directory)
    return directory


@pytest.fixture(scope="session")
def other_calib_dir(tmp_path_factory, corpora, tokenizer) -> Path:
    """A calibration set from other (Hausa) text, to show that scorers consume their data."""
    from adaptkit.calibration import build_calibration

    directory = tmp_path_factory.mktemp("calib") / "ha"
    build_calibration(tokenizer, corpora["ha"], fmt="text", pool=500, num_samples=12, block_size=SSU_BLOCK, seed=0).save(directory)
    return directory


# --- a real OpenAI-compatible server: `transformers serve` (the `serving` extra) on 127.0.0.1, serving a
# tiny chat model built here; every test module that asks for `server` shares one for the whole session
# (started on first use, stopped at the end)

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def chat_model_dir(make_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama with a chat template (the judge, the served model and the evaluated model)."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("chat-model")
    shutil.copytree(make_model_dir("llama"), directory, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def server(chat_model_dir, tmp_path_factory):
    """`transformers serve DIR` on 127.0.0.1:PORT; yields (base_url, model id); stopped at the end."""
    executable = Path(sys.executable).parent / "transformers"
    if not executable.exists():
        pytest.skip("transformers serve is not installed (pip install 'adaptkit[serving]')")
    port = free_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(executable), "serve", str(chat_model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                             "--dtype", "float32"], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"transformers serve did not become healthy (exit {proc.poll()}): {Path(log.name).read_text()[-2000:]}")
        time.sleep(1)
    try:
        yield f"{base}/v1", str(chat_model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
