"""The Parquet files of one split of a Hugging Face Hub dataset, from the Hub or from a local copy in its layout.

The Hub stores a Parquet dataset's split as `<dir>/<split>-00000-of-00001.parquet` (what `push_to_hub` writes,
and the layout of nyu-mll/glue) or `<dir>/<split>/0000.parquet` (the Hub's `refs/convert/parquet` revision,
which every public dataset has), where `<dir>` is the config name, or `data` / `default` without one.
"""

from __future__ import annotations

import re
from pathlib import Path

from stages.errors import StageError


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_hub_id(repo: str) -> str:
    """A Hub dataset id is owner/name: two plain names, so that <hub_dir>/<owner>/<name> stays inside hub_dir."""
    if not HUB_ID.match(repo) or ".." in repo.split("/") or any(part.endswith(".") for part in repo.split("/")):
        raise ValueError(f"{repo!r} is not a Hub dataset id: expected owner/name (letters, digits, '-', '_', '.')")
    return repo


def _dirs(config: str | None) -> list[str]:
    return [config] if config else ["data", "default"]


def _split_pattern(config: str | None, split: str) -> re.Pattern:
    dirs = "|".join(re.escape(d) for d in _dirs(config))
    return re.compile(rf"^(?:{dirs})/{re.escape(split)}(?:-\d+-of-\d+\.parquet|/\d+\.parquet)$")


def split_files(repo: str, split: str, *, config: str | None = None, revision: str = "main",
                local_root: str | Path | None = None, where: str = "") -> list[Path]:
    """The split's Parquet files, sorted: from `<local_root>/<repo>/` if given, else downloaded from the Hub."""
    try:
        check_hub_id(repo)
    except ValueError as e:
        raise StageError(f"{where}{e}") from None
    if local_root:
        root = Path(local_root) / repo
        if not root.is_dir():
            raise StageError(f"{where}{root} not found: data.hub_dir={str(local_root)!r} must hold the Hub dataset "
                             f"{repo} as {root}/ in the Hub's file layout")
    else:
        from huggingface_hub import snapshot_download

        patterns = [f"{d}/{split}{tail}" for d in _dirs(config) for tail in ("-*.parquet", "/*.parquet")]
        try:
            root = Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns))
        except Exception as e:  # offline, DNS, HTTP errors, a missing cache entry: all mean "not reachable"
            first = str(e).splitlines()[0] if str(e) else ""
            raise StageError(f"{where}could not fetch the Hub dataset {repo} (revision {revision}): "
                             f"{type(e).__name__}: {first}. Set data.hub_dir to a local copy in the Hub layout") from None
    pattern = _split_pattern(config, split)
    found = sorted(p for p in root.rglob("*.parquet") if pattern.match(p.relative_to(root).as_posix()))
    if local_root:  # a configured mirror: every file it gives must really be inside it (no symlink out)
        mirror = Path(local_root).resolve()
        for path in found:
            if not path.resolve().is_relative_to(mirror):
                raise StageError(f"{where}{path} resolves to {path.resolve()}, outside data.hub_dir={str(local_root)!r}")
    if not found:
        layouts = ", ".join(f"{d}/{split}-00000-of-00001.parquet or {d}/{split}/0000.parquet" for d in _dirs(config))
        raise StageError(f"{where}no Parquet files for split {split!r} of the Hub dataset {repo} in {root} "
                         f"(looked for {layouts}); for a dataset stored in another format use "
                         "revision: refs/convert/parquet")
    return found
