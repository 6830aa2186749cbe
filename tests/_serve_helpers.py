"""A real OpenAI-compatible server for the tests: `transformers serve` (the `serving` extra) on
127.0.0.1, serving a tiny chat model built here. conftest.py imports the fixtures, so every test
module that asks for `server` shares one server for the whole session (started on first use,
stopped at the end); a test module must not import them again (that would start its own).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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
