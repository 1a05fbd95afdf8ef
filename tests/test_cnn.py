"""The CNN student (Kim 2014): shapes, padding never changes a row's features, a tiny distillation run for a
single-sentence and a pair task, and its ONNX export."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from stages.models.cnn_model import CNNClassifier
from stages.params import DistillParams, StudentParams
from stages.models.torch_student import load_student
from stages.student import train_student
from stages.models.student_model import count_parameters
from stages.data.tasks import get_task
from tests.test_export import _report, _train
from tests.test_student import CPU, SMALL, write_labeled, write_raw, paraphrase_rows


def cnn(pair=False, mode="multichannel", **kw) -> CNNClassifier:
    torch.manual_seed(0)
    return CNNClassifier(50, 3, emb_dim=6, fc=7, dropout=0.0, pair=pair, embedding_mode=mode, maps=4, **kw).eval()


def test_shapes_and_parameter_count():
    model = cnn()
    ids = torch.randint(3, 50, (5, 9))
    assert model.encode(ids).shape == (5, 3 * 4)
    assert model(ids, torch.full((5,), 9)).shape == (5, 3)
    # 2 embedding channels (one frozen) of 50 x 6; convs (12 in-channels) 4 maps of widths 3/4/5; head 12->7->3
    convs = sum(4 * 12 * w + 4 for w in (3, 4, 5))
    assert count_parameters(model) == {"all": 2 * 300 + convs + 12 * 7 + 7 + 7 * 3 + 3,
                                       "without_embeddings": convs + 12 * 7 + 7 + 7 * 3 + 3}
    pair = cnn(pair=True)
    assert pair(ids, torch.full((5,), 9), ids[:, :4], torch.full((5,), 4)).shape == (5, 3)
    assert pair.fc.in_features == 4 * 12


def test_padding_never_changes_a_rows_features():
    model = cnn()
    rows = [torch.randint(3, 50, (n,)) for n in (1, 2, 4, 5, 8)]
    width = 8
    padded = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    lengths = torch.tensor([len(r) for r in rows])
    batched = model.encode(padded, lengths)
    for i, r in enumerate(rows):  # alone, as a dense batch of its own length (shorter than a filter: zero-padded)
        torch.testing.assert_close(batched[i], model.encode(r[None])[0])
    assert model.encode(torch.zeros(1, 1, dtype=torch.long), torch.tensor([0])).shape == (1, 12)  # an empty text


@pytest.mark.parametrize("mode", ["rand", "static", "non-static", "multichannel"])
def test_embedding_modes_freeze_like_the_bilstm(mode):
    model = cnn(mode=mode)
    trained = [m.weight.requires_grad for m in model.embedding_modules()]
    assert trained == {"rand": [True], "static": [False], "non-static": [True], "multichannel": [True, False]}[mode]


def test_cnn_baseline_learns_and_reloads(tmp_path):
    from tests.test_student import sentiment_rows

    write_raw(tmp_path / "raw" / "train.parquet", sentiment_rows(300, seed=1))
    write_raw(tmp_path / "raw" / "dev.parquet", sentiment_rows(100, seed=2))
    metrics = train_student(get_task("rt"), tmp_path / "raw" / "train.parquet", tmp_path / "raw", tmp_path / "m",
                            student=StudentParams(**{**SMALL, "arch": "cnn", "cnn_maps": 8, "embeddings": "random",
                                                     "embedding_mode": "rand"}),
                            distill=DistillParams(batch_size=10, epochs=6, patience=6), device=CPU, seed=0,
                            use_teacher_logits=False)
    assert metrics["dev"]["accuracy"] >= 0.9
    student = load_student(tmp_path / "m")
    assert isinstance(student.model, CNNClassifier) and student.config["arch"] == "cnn"
    dev = pq.read_table(tmp_path / "raw" / "dev.parquet").to_pydict()
    accuracy = float((student.predict_logits(dev["text_a"]).argmax(1) == np.array(dev["label"])).mean())
    assert accuracy == metrics["dev"]["accuracy"]


def test_cnn_pair_student_distils_teacher_logits(tmp_path):
    train = write_labeled(tmp_path / "labeled" / "mrpc.parquet")
    dev = paraphrase_rows(80, seed=5)
    write_raw(tmp_path / "raw" / "dev.parquet", {**dev, "idx": list(range(80))})
    metrics = train_student(get_task("mrpc"), train, tmp_path / "raw", tmp_path / "out",
                            student=StudentParams(**{**SMALL, "arch": "cnn", "cnn_maps": 8, "embeddings": "glove-6b-50d",
                                                     "embedding_mode": "non-static"}),
                            distill=DistillParams(batch_size=10, epochs=5, patience=5), device=CPU, seed=0,
                            use_teacher_logits=True)
    assert metrics["loss"] == "mse" and metrics["dev"]["accuracy"] >= 0.8
    packed = load_student(tmp_path / "out").predict_logits(dev["text_a"], dev["text_b"], exact=False)
    exact = load_student(tmp_path / "out").predict_logits(dev["text_a"], dev["text_b"], exact=True)
    np.testing.assert_allclose(packed, exact, atol=1e-5)  # padded-and-masked batches equal dense ones


@pytest.mark.parametrize("task_name", ["rt", "mrpc"])
def test_cnn_exports_to_onnx(tmp_path, task_name):
    from stages.export import export_student
    from stages.models.onnx_student import OnnxStudent

    task = get_task(task_name)
    root = _train(task_name, tmp_path, arch="cnn", cnn_maps=8)
    result = export_student(task, root / "student", root / "raw", root / "export", seed=3, report=_report(task, 3, 0.8),
                            teacher={"model": "m", "dev": {m: 0.9 for m in task.metrics}}, data={"splits": {}},
                            batch_size=16, throughput_sentences=20)
    assert result["max_abs_logit_diff_fp32"] <= 1e-4
    card = (root / "export" / "README.md").read_text()
    assert f"# {task_name} CNN student" in card and "filter widths 3, 4, 5, 8 maps each" in card
    texts = ["good", "", "a good film", "one two three four five six seven"]  # shorter and longer than a filter
    second = ["x"] * 4 if task.is_pair else None
    np.testing.assert_allclose(OnnxStudent(root / "export").predict_logits(texts, second),
                               load_student(root / "student").predict_logits(texts, second), atol=1e-4)
