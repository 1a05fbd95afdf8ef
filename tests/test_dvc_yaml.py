"""dvc.yaml as a reader meets it: `dvc stage list` describes every stage, and the exported student is declared
as a model artifact that DVC resolves to the export stage's directory for the first task."""

import pytest
from dvc.repo import Repo

from stages.params import load_params
from tests.conftest import REPO


@pytest.fixture(scope="module")
def repo():
    with Repo(str(REPO)) as opened:
        yield opened


def test_every_stage_has_a_one_line_description(repo):
    stages = list(repo.index.stages)
    assert stages
    for stage in stages:
        assert stage.desc and "\n" not in stage.desc, f"{stage.addressing} has no one-line desc"


def test_the_exported_student_is_a_model_artifact_named_after_its_task(repo):
    task = load_params(REPO / "params.yaml").tasks[0]
    artifacts = repo.artifacts.read()["dvc.yaml"]
    export_outs = {str(out.def_path) for stage in repo.index.stages if stage.addressing == f"export@{task}"
                   for out in stage.outs}
    artifact = artifacts[f"{task}-student"]
    assert artifact.type == "model"
    assert artifact.path == f"models/export/{task}" and artifact.path in export_outs
    assert task in artifact.desc
