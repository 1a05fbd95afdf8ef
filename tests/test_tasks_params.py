import re
from pathlib import Path

import pytest

from stages.errors import StageError
from stages.params import load_params
from stages.data.tasks import TASKS, get_task
from tests.conftest import REPO, write_params


def test_task_table_is_consistent():
    assert set(TASKS) == {"rt", "sst2", "qqp", "mnli", "mrpc", "rte"}
    for name, task in TASKS.items():
        assert task.name == name
        assert len(task.text_columns) in (1, 2)
        assert task.num_labels == len(task.label_names) >= 2
        assert task.eval_splits and task.test_splits
        assert task.source == "rt" or task.glue_config == name
        # the paper's per-task values: 20 rounds / batch 50 single, 10 rounds / batch 256 pairs
        assert (task.n_iter, task.student_batch_size) == ((10, 256) if task.is_pair else (20, 50))
    assert TASKS["mnli"].num_labels == 3
    assert list(TASKS["mnli"].eval_splits) == ["dev_matched", "dev_mismatched"]
    assert "f1" in TASKS["qqp"].metrics and "f1" in TASKS["mrpc"].metrics


def test_unknown_task_is_a_clear_error():
    with pytest.raises(StageError, match="unknown task 'sst3'.*rt, sst2"):
        get_task("sst3")


def test_nothing_outside_the_task_table_branches_on_task_names():
    names = "|".join(TASKS)
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?["'](?:{names})["']""")
    offenders = [
        f"{path.name}:{n}"
        for path in (REPO / "stages").glob("*.py")
        if path.name != "tasks.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_default_params_load_and_match_the_paper():
    p = load_params(REPO / "params.yaml")
    assert p.tasks == ["rt"]
    assert (p.augment.p_mask, p.augment.p_pos, p.augment.p_ng) == (0.1, 0.1, 0.25)
    assert (p.student.hidden, p.student.fc) == (150, 200)
    assert (p.distill.alpha, p.distill.loss, p.distill.optimizer, p.distill.lr, p.distill.rho) == (0.0, "mse", "adadelta", 1.0, 0.95)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"student": {"hidden": "wide"}}, r"student\.hidden: .*integer.*'wide'"),
        ({"augment": {"p_mask": 1.5}}, r"augment\.p_mask"),
        ({"student": {"hiden": 300}}, r"student\.hiden: Extra inputs"),
        ({"tasks": ["rt", "imdb"]}, r"unknown task.*imdb"),
        ({"device": "tpu"}, r"device"),
        ({"distill": {"loss": "l1"}}, r"distill\.loss"),
        ({"distill": {"batching": "random"}}, r"distill\.batching"),
        ({"seeds": []}, r"seeds: .*at least one seed"),
        ({"seeds": [1, 2, 1]}, r"seeds: .*distinct"),
        ({"evaluate": {"reference_architectures": ["gpt-2"]}}, r"evaluate\.reference_architectures\.0.*bert-base"),
    ],
)
def test_bad_overrides_name_the_parameter(tmp_path: Path, override, message):
    path = write_params(tmp_path / "params.yaml", **override)
    with pytest.raises(StageError, match=message):
        load_params(path)


def test_missing_or_broken_params_file(tmp_path: Path):
    with pytest.raises(StageError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [rt\n")
    with pytest.raises(StageError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize("baseline_epochs, expected", [(None, 3), (10, 10)])
def test_the_baseline_trains_with_its_own_epoch_budget_and_the_student_with_epochs(
        tmp_path: Path, monkeypatch, baseline_epochs, expected):
    import stages.student
    from stages.cli import baseline, student

    seen = {}

    def fake_train(task, train_path, raw_dir, out_dir, *, distill, use_teacher_logits, **kwargs):
        seen["student" if use_teacher_logits else "baseline"] = distill
        return {}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stages.student, "train_student", fake_train)
    path = write_params(tmp_path / "params.yaml", distill={"epochs": 3, "baseline_epochs": baseline_epochs})
    baseline(task="rt", arch="bilstm", seed=1, params=path)
    student(task="rt", arch="bilstm", seed=1, params=path)
    assert seen["baseline"].epochs == expected and seen["student"].epochs == 3
    # nothing else of the baseline's settings moves
    assert seen["baseline"].model_dump(exclude={"epochs"}) == seen["student"].model_dump(exclude={"epochs"})
