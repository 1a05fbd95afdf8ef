"""`check` stage: validate params.yaml whole (types, ranges, cross-field rules) before any other stage runs.

Every other stage comes after it in dvc.yaml, so a bad `dvc exp run -S` value stops the pipeline before any
stage removes its outputs. Its output's content never changes, so a good edit reruns nothing else.
"""

from __future__ import annotations

from pathlib import Path

from stages import paths
from stages.data.io import atomic_path
from stages.params import ARCHS, arch_params_text, load_params


def run(params_file: Path) -> None:
    """Load and validate params_file (a StageError names every bad key), then write data/params-checked.txt and
    data/arch-params/<arch>.json, each arch's knobs: that arch's `inputs` stage depends on its file alone, so a knob
    of one arch reruns that arch's stages only (dvc.yaml cannot pick a params section per matrix item)."""
    params = load_params(params_file)
    with atomic_path(paths.PARAMS_CHECKED) as tmp:
        tmp.write_text(f"{Path(params_file).name} is valid\n")
    for arch in ARCHS:
        with atomic_path(paths.arch_params_file(arch)) as tmp:
            tmp.write_text(arch_params_text(params, arch))
