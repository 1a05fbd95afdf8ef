"""stages/models/torch_student.py and stages/models/registry.py: loading a saved student, and the arch registry."""

import json

import numpy as np
import pytest

from stages.errors import StageError
from stages.models.registry import BACKENDS, STUDENTS, load_predictor, student_arch
from stages.models.torch_student import Student, load_student
from stages.params import StudentParams


def test_load_student_rejects_missing_or_corrupt_dirs(tmp_path):
    with pytest.raises(StageError, match="is not a saved student.*model.pt"):
        load_student(tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.pt", "config.json", "tokenizer.json"):
        (broken / name).write_text("garbage")
    with pytest.raises(StageError, match="corrupt or incompatible"):
        load_student(broken)


def test_every_student_arch_has_a_loader_in_the_registry():
    from typing import get_args

    archs = set(get_args(StudentParams.model_fields["arch"].annotation))
    assert archs <= set(STUDENTS)
    assert BACKENDS == ("torch", "onnx", "onnx-int8")


def test_the_registry_loads_by_arch_and_names_an_unknown_one(tmp_path):
    assert student_arch(tmp_path / "nothing") == "bilstm"  # the loader then says what is missing
    with pytest.raises(StageError, match="is not a saved student"):
        load_predictor(tmp_path / "nothing")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"arch": "transformer"}))
    with pytest.raises(StageError, match=r"config\.json: unknown student arch 'transformer'; known: bilstm, cnn"):
        load_predictor(tmp_path / "odd")
    with pytest.raises(StageError, match=r"unknown backend 'tflite'; choose one of torch, onnx, onnx-int8"):
        load_predictor(tmp_path / "odd", "tflite")


def test_a_predictor_checks_pairs_and_counts_once_for_every_backend(tmp_path):
    """The checks live in Predictor: a single-sentence student refuses pairs, whatever its backend."""
    from stages.models.predictor import Predictor, softmax

    class Fixed(Predictor):
        config = {"task": "t", "label_names": ["a", "b"], "num_labels": 2, "pair": True, "max_length": 4}

        def compute_logits(self, texts_a, texts_b, batch_size):
            return np.array([[0.0, np.log(3.0)]] * len(texts_a), dtype=np.float32)

    fixed = Fixed()
    with pytest.raises(StageError, match="the t student expects sentence pairs"):
        fixed.predict_logits(["x"])
    with pytest.raises(StageError, match="2 first sentences but 1 second ones"):
        fixed.predict_logits(["x", "y"], ["z"])
    np.testing.assert_allclose(fixed.predict_proba(["x"], ["y"]), [[0.25, 0.75]], rtol=1e-6)
    assert fixed.labels == ["a", "b"] and fixed.pair
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])  # no overflow
    assert issubclass(Student, Predictor)
