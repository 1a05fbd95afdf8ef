"""One source for defaults: params.yaml names every knob, and every default in stages/params.py equals it, so a
params.yaml that lacks a key gets the value the committed file shows."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from stages.params import Params
from tests.conftest import REPO

# Params fields whose params.yaml value is the user's own declarations, not a default: their default ({}: none
# declared) is not params.yaml's example entries.
USER_DATA = {"datasets": "your own datasets (params.yaml ships the tweets example)",
             "unlabeled": "your own unlabeled text per task",
             "student.arch": "set per run from the top-level `archs` list (the matrix item), never in params.yaml"}


def differences(model: type[BaseModel], values: dict, where: str) -> list[str]:
    """Where the pydantic defaults of `model` and the params.yaml section `values` disagree, or a key is missing."""
    found = []
    for name, field in model.model_fields.items():
        key = f"{where}{name}"
        if key in USER_DATA:
            continue
        if name not in values:
            found.append(f"{key}: missing from params.yaml")
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += differences(field.annotation, values[name], f"{key}.")
            if field.default is not PydanticUndefined and field.default != field.annotation.model_validate(values[name]):
                found.append(f"{key}: the section default differs from params.yaml")
        elif field.default is PydanticUndefined:
            found.append(f"{key}: no default in stages/params.py")
        elif field.default != values[name]:
            found.append(f"{key}: stages/params.py says {field.default!r}, params.yaml says {values[name]!r}")
    found += [f"{where}{name}: in params.yaml but not in stages/params.py" for name in values
              if name not in model.model_fields]
    return found


def test_every_pydantic_default_equals_params_yaml_and_params_yaml_names_every_knob():
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert differences(Params, committed, "") == []


def test_an_empty_params_file_means_the_committed_defaults(tmp_path):
    from stages.params import load_params

    committed = load_params(REPO / "params.yaml")
    (tmp_path / "params.yaml").write_text("{}\n")
    empty = load_params(tmp_path / "params.yaml")
    assert empty.model_dump(exclude=set(USER_DATA)) == committed.model_dump(exclude=set(USER_DATA))


@pytest.mark.parametrize("section, key, planted", [("distill", "epochs", 10), ("teacher", "epochs", 0.5)])
def test_a_disagreeing_default_is_named(section, key, planted):
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    committed[section][key] = planted
    assert any(line.startswith(f"{section}.{key}: stages/params.py says") for line in differences(Params, committed, ""))
