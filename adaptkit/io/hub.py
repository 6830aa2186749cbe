"""Uploading an output to the Hugging Face Hub (`--push-to-hub REPO_ID`, `--private`, `--revision`).

The token is the one huggingface_hub finds itself (`hf auth login`, or the HF_TOKEN
environment variable); adaptkit never reads it into a message or a file. `check_target`
runs before any work, so a bad id, offline mode (HF_HUB_OFFLINE=1) or a missing login is
a one-line error before a model is loaded; `push` runs after a successful run and makes
one commit (create the repository if needed, the branch if `--revision` names one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adaptkit.errors import AdaptkitError, InputError, first_line


@dataclass(frozen=True)
class HubTarget:
    repo_id: str
    private: bool = False
    revision: Optional[str] = None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_target(repo_id: Optional[str], private: bool = False, revision: Optional[str] = None) -> Optional[HubTarget]:
    """The upload target, checked before any work; None without --push-to-hub."""
    if repo_id is None:
        if private or revision:
            raise InputError(f"{'--private' if private else '--revision'}: only with --push-to-hub REPO_ID")
        return None
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InputError(f"--push-to-hub: '{repo_id}' is not a Hub repository id; expected NAME or OWNER/NAME") from None
    if _offline():
        raise InputError("--push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or drop --push-to-hub")
    if get_token() is None:
        raise InputError("--push-to-hub: no Hub token; log in with `hf auth login` or set HF_TOKEN")
    return HubTarget(repo_id, private, revision or None)


def output_files(directory: Path, prefix: str = "") -> dict[str, Path]:
    """Every file of an output directory by its path in the repository (hidden partial files left out)."""
    directory = Path(directory)
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files[f"{prefix}{relative.as_posix()}"] = path
    return files


def push(target: HubTarget, files: dict[str, Path], message: str) -> str:
    """Upload `files` (repository path -> local file) in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    try:
        api.create_repo(target.repo_id, repo_type="model", private=target.private, exist_ok=True)
        if target.revision:
            api.create_branch(target.repo_id, branch=target.revision, repo_type="model", exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        info = api.create_commit(target.repo_id, operations, commit_message=message, repo_type="model", revision=target.revision)
    except Exception as exc:  # network, permissions, quota: the output stays where it was written
        raise AdaptkitError(f"--push-to-hub: uploading to '{target.repo_id}' failed ({first_line(exc)}); the output is kept locally") from None
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{target.repo_id}")
