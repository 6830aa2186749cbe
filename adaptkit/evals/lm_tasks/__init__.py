"""lm-eval task YAMLs shipped with adaptkit (the SSU paper's MRC and MMLU tasks); run as `--task lm-eval:ssu-belebele-hau`.

Their prompt functions and data loaders live in `ssu_prompts.py`, which lm-eval imports from this folder.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
