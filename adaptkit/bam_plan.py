"""Branch-and-Merge's settings (rounds, branches, the merge of a round's branches) and their check, shared by
`adaptkit bam` (adaptkit/branch_merge.py) and study grid entries with `bam:` (adaptkit/study/spec.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaptkit.errors import InputError


@dataclass
class BamPlan:
    rounds: int
    branches: int
    merge: str = "slerp"
    merge_params: dict[str, Any] = field(default_factory=dict)

    @property
    def slices(self) -> int:
        return self.rounds * self.branches


def check_plan(plan: BamPlan) -> None:
    """The counts and the merge method (its parameters validated), before anything is loaded."""
    from adaptkit.merge.base import validate_params
    from adaptkit.registry import get_spec

    for flag, value in (("--rounds", plan.rounds), ("--branches", plan.branches)):
        if value < 1:
            raise InputError(f"{flag}: expected at least 1 (got {value})")
    spec = get_spec("merge method", plan.merge, flag="--merge")
    method = spec.load()()
    if not method.min_models <= plan.branches <= (method.max_models or plan.branches):
        raise InputError(f"--merge {plan.merge}: merges {method.min_models}-{method.max_models or 'any'} models, not {plan.branches} branches")
    if method.base == "required":
        raise InputError(f"--merge {plan.merge}: needs a base model; choose a merge of the branches themselves (slerp, linear, ...)")
    validate_params(spec, dict(plan.merge_params), "--merge-set")
