"""Every command with long work stops the same way on a signal: 128 + the signal number, one line,
no output and no partial sibling left, no child process left. The signal is sent once the work has
begun: the command runs with its main work step slowed (a line on stderr, then a long sleep before
the real step), so the signal lands inside that step, never in start-up. `data prepare` (with its
tokenizer processes) and `study` (with its training processes) have their own tests beside them.
"""

from __future__ import annotations

import os
import signal

import pytest

from helpers import assert_ended, children, end_group, start_cli, wait_for

SLOWED = """
import importlib, sys, time
module, name = sys.argv[1].rsplit(":", 1)
module = importlib.import_module(module)
original = getattr(module, name)
def slowed(*args, **kwargs):
    print("work begun", file=sys.stderr, flush=True)
    time.sleep(600)
    return original(*args, **kwargs)
setattr(module, name, slowed)
from adaptkit.cli import main
main(sys.argv[2:])
"""

# command -> (the step slowed, its arguments; {out} is the output)
COMMANDS = {
    "calibrate": ("adaptkit.calibration:build_calibration", ["calibrate", "-m", "{model}", "-d", "{en}", "-o", "{out}"]),
    "score": ("adaptkit.scoring.run:compute_scores", ["score", "-m", "{model}", "--scorer", "magnitude", "-o", "{out}"]),
    "evaluate": ("adaptkit.evals.runner:run_evaluation", ["evaluate", "-m", "{model}", "--task", "ppl:{en}", "-o", "{out}"]),
    "generate": ("adaptkit.evals.generation:generate_records", ["generate", "-m", "{model}", "-p", "{prompts}", "-o", "{out}"]),
    "merge": ("adaptkit.merge.executor:_merge_one", ["merge", "linear", "-m", "{model}", "-m", "{model_b}", "-o", "{out}"]),
    "quickstart": ("adaptkit.engine.loop:train_step", ["quickstart", "-o", "{out}", "--methods", "fft", "--source-steps", "30", "--steps", "6",
                                                        "--seq-len", "32", "--batch-size", "4", "--calib-samples", "4"]),
}
CASES = [(name, signal.SIGTERM, False) for name in COMMANDS] + [("merge", signal.SIGINT, True), ("quickstart", signal.SIGHUP, True)]


@pytest.mark.slow
@pytest.mark.parametrize("name, signum, to_group", CASES, ids=[f"{n}-{s.name}" for n, s, _ in CASES])
def test_a_signal_during_the_work_stops_the_command_cleanly(name, signum, to_group, tmp_path, make_model_dir, corpora):
    step, template = COMMANDS[name]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Everyone has the right"}\n')
    output = tmp_path / ("out.jsonl" if name == "generate" else "out")
    values = {"model": make_model_dir("llama"), "model_b": make_model_dir("llama", seed=1), "en": corpora["en"],
              "prompts": prompts, "out": output}
    args = [a.format(**values) for a in template]
    errors = tmp_path / "stderr"
    proc = start_cli(["-c", SLOWED, step, *args], errors, python_args=True)
    try:
        wait_for(lambda: "work begun" in errors.read_text(), 600, "the work to begin", proc)
        pids = [c.pid for c in children(proc.pid)]
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        proc.wait(60)
    finally:
        end_group(proc)
    lines = [line for line in errors.read_text().splitlines() if line.strip()]
    assert proc.returncode == 128 + signum, lines[-5:]
    # one line from adaptkit, the last one (progress lines before it are the command's usual stderr)
    assert [line for line in lines if line.startswith("adaptkit:")] == lines[-1:], lines[-5:]
    assert lines[-1].startswith(f"adaptkit: interrupted ({signal.Signals(signum).name})"), lines[-5:]
    assert "Traceback" not in errors.read_text()
    assert not output.exists() and not list(tmp_path.glob(f".{output.name}*")), sorted(p.name for p in tmp_path.iterdir())
    assert_ended(pids)
