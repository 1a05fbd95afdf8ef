"""stages/student.py: the student and baseline stages' training (a tiny rt and a tiny pair task), resuming,
and the errors a bad input gives. The model, its losses and the vocabulary have their own files
(test_student_model.py, test_vocab.py, test_torch_student.py)."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stages.errors import StageError
from stages.params import DistillParams, StudentParams
from stages.data.io import LABELED_SCHEMA
from stages.models.torch_student import load_student
from stages.student import train_student
from stages.data.tasks import get_task
from stages.data.text import MASK
from stages.models.vocab import Vocab, load_embeddings

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- training

FILLER = "the a movie film story plot actor scene one it was is very quite rather".split()


def sentiment_rows(n: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        words = list(rng.choice(FILLER, size=rng.integers(3, 9)))
        label = int(rng.integers(2))
        words.insert(int(rng.integers(len(words) + 1)), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append(label)
    return {"text_a": texts, "text_b": [None] * n, "label": labels, "idx": list(range(n))}


def write_raw(path: Path, rows: dict) -> Path:
    from stages.data.io import RAW_SCHEMA

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows, schema=RAW_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def rt_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "rt"
    write_raw(root / "train.parquet", sentiment_rows(300, seed=1))
    write_raw(root / "dev.parquet", sentiment_rows(100, seed=2))
    return root


SMALL = dict(hidden=16, fc=16, vocab_size=100, max_length=16)


def baseline(rt_data: Path, out: Path, live_dir: Path | None = None, seed: int = 0, checkpoint_root: Path | None = None,
             **student) -> dict:
    return train_student(
        get_task("rt"), rt_data / "train.parquet", rt_data, out,
        student=StudentParams(**{**SMALL, "embeddings": "random", "embedding_mode": "rand", **student}),
        distill=DistillParams(batch_size=10, epochs=6, patience=6), device=CPU, seed=seed,
        use_teacher_logits=False, live_dir=live_dir, checkpoint_root=checkpoint_root,
    )


def test_baseline_learns_saves_reloads_and_repeats(rt_data, tmp_path):
    metrics = baseline(rt_data, tmp_path / "a", live_dir=tmp_path / "live")
    assert metrics["dev"]["accuracy"] >= 0.9
    assert (metrics["alpha"], metrics["loss"], metrics["batch_size"]) == (1.0, "ce", 10)
    assert metrics["train_rows"] == 300 and 1 <= metrics["best_epoch"] <= metrics["epochs_run"] == 6
    assert metrics["params_all"] - metrics["params_without_embeddings"] == metrics["vocab_size"] * 300
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "model.pt", "tokenizer.json"]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["label_names"] == ["rotten", "fresh"] and config["pair"] is False

    # DVCLive curves: one row per epoch
    loss_curve = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert len(loss_curve) == 1 + 6
    assert (tmp_path / "live" / "plots" / "metrics" / "dev" / "accuracy.tsv").exists()

    student = load_student(tmp_path / "a")
    dev = pq.read_table(rt_data / "dev.parquet").to_pydict()
    proba = student.predict_proba(dev["text_a"])
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    assert float((proba.argmax(1) == np.array(dev["label"])).mean()) == metrics["dev"]["accuracy"]
    assert student.predict_proba(["good good", "bad bad"]).argmax(1).tolist() == [1, 0]
    with pytest.raises(StageError, match="single sentences"):
        student.predict_proba(["a"], ["b"])

    again = baseline(rt_data, tmp_path / "b")
    drop = ("train_seconds",)
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in metrics.items() if k not in drop}
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_run_resumes_after_its_last_epoch_with_the_same_result(rt_data, tmp_path, monkeypatch):
    import stages.student as student_module

    def run(out: str, live: str, **student):
        return baseline(rt_data, tmp_path / out, live_dir=tmp_path / live, checkpoint_root=tmp_path / "ckpt",
                        dropout=0.3, **student)

    whole = baseline(rt_data, tmp_path / "whole", live_dir=tmp_path / "live-whole", dropout=0.3)

    # killed during epoch 4: epochs 1-3 are saved
    real_epoch, calls = student_module.train_epoch, []

    def dies_in_epoch_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(student_module, "train_epoch", dies_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        run("resumed", "live-resumed")
    assert not (tmp_path / "resumed").exists()
    (saved,) = (tmp_path / "ckpt").iterdir()
    assert saved.name.startswith("rt-baseline-seed-0-") and len(torch.load(saved / "epoch.pt", weights_only=False)["history"]) == 3
    other_seed = tmp_path / "ckpt" / ("rt-baseline-seed-01-" + "0" * 20)  # seed 01's state: not this run's
    other_seed.mkdir()

    # restarted: only epochs 4-6 train, and weights, metrics and curves equal the uninterrupted run's
    calls.clear()
    resumed = run("resumed", "live-resumed")
    assert len(calls) == 3
    drop = ("train_seconds",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in whole.items() if k not in drop}
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = lambda live: [line.split("\t")[-1] for line in
                          (tmp_path / live / "plots/metrics/dev/accuracy.tsv").read_text().splitlines()]
    assert curve("live-resumed") == curve("live-whole") and len(curve("live-whole")) == 1 + 6
    assert list((tmp_path / "ckpt").iterdir()) == [other_seed]  # a finished run leaves no state behind
    other_seed.rmdir()

    # state saved for other inputs (here another student size) is never resumed, and is deleted
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run("small", "live-small", hidden=8)
    assert len(list((tmp_path / "ckpt").iterdir())) == 1
    again = run("other", "live-other")  # the 5th call onwards: no more kills
    assert len(calls) == 4 + 6 and again["epochs_run"] == 6 and again["dev"] == whole["dev"]
    assert not any((tmp_path / "ckpt").iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_student_trains_on_cuda_and_reloads_on_the_cpu(rt_data, tmp_path):
    metrics = train_student(
        get_task("rt"), rt_data / "train.parquet", rt_data, tmp_path / "gpu",
        student=StudentParams(**SMALL, embeddings="random", embedding_mode="multichannel"),
        distill=DistillParams(batch_size=10, epochs=4, patience=4), device=torch.device("cuda"), seed=0,
        use_teacher_logits=False)
    assert metrics["dev"]["accuracy"] >= 0.9 and metrics["device"] == "cuda"
    texts = pq.read_table(rt_data / "dev.parquet")["text_a"].to_pylist()
    on_gpu = load_student(tmp_path / "gpu", "cuda")
    logits = on_gpu.predict_logits(texts, exact=True)
    # cuDNN's LSTM computes in TF32 by default (torch.backends.cudnn.allow_tf32): agreement to ~1e-4 relative
    np.testing.assert_allclose(on_gpu.predict_logits(texts, exact=False), logits, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(load_student(tmp_path / "gpu").predict_logits(texts), logits, rtol=1e-3, atol=1e-3)


def test_glove_multichannel_student_learns(rt_data, tmp_path):
    metrics = baseline(rt_data, tmp_path / "glove", embeddings="glove-6b-50d", embedding_mode="multichannel")
    assert metrics["dev"]["accuracy"] >= 0.9
    assert metrics["embedding_coverage"] == 1.0  # every word of the synthetic task is in GloVe
    state = torch.load(tmp_path / "glove" / "model.pt", weights_only=True)
    vocab = Vocab.load(tmp_path / "glove" / "tokenizer.json")
    matrix, _ = load_embeddings("glove-6b-50d", vocab, seed=0)
    np.testing.assert_array_equal(state["static_embedding.weight"].numpy(), matrix)  # frozen channel saved as is
    # the reloaded model needs no GloVe: its vectors come from model.pt
    assert load_student(tmp_path / "glove").model.static_embedding.weight.shape == (len(vocab), 50)


def paraphrase_rows(n: int, seed: int, augmented: bool = False) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    a, b, labels = [], [], []
    for _ in range(n):
        label = int(rng.integers(2))
        a.append(" ".join(rng.choice(FILLER, size=rng.integers(2, 6))))
        words = list(rng.choice(FILLER, size=rng.integers(2, 6)))
        words.insert(int(rng.integers(len(words) + 1)), "yes" if label else "no")
        b.append(" ".join(words if not augmented else [MASK if rng.random() < 0.1 else w for w in words]))
        labels.append(label)
    return {"text_a": a, "text_b": b, "label": labels}


def write_labeled(path: Path, n_orig: int = 150, n_aug: int = 150, logits_len: int = 2,
                  drop: str | None = None) -> Path:
    orig, aug = paraphrase_rows(n_orig, seed=3), paraphrase_rows(n_aug, seed=4, augmented=True)
    teacher_label = orig["label"] + aug["label"]
    rows = {
        "text_a": orig["text_a"] + aug["text_a"],
        "text_b": orig["text_b"] + aug["text_b"],
        "is_original": [True] * n_orig + [False] * n_aug,
        "label": orig["label"] + [-1] * n_aug,  # augmented rows have only the teacher's logits
        "source_idx": list(range(n_orig)) + [i % n_orig for i in range(n_aug)],
        "source": ["original"] * n_orig + ["augmented"] * n_aug,
        "logits": pa.array([[3.0, -3.0][:logits_len] if y == 0 else [-3.0, 3.0][:logits_len] for y in teacher_label],
                           pa.list_(pa.float32())),
        "teacher_label": teacher_label,
    }
    assert list(rows) == LABELED_SCHEMA.names
    if drop:
        del rows[drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def distill(train: Path, dev_dir: Path, out: Path, **overrides) -> dict:
    return train_student(
        get_task("mrpc"), train, dev_dir, out,
        student=StudentParams(**{**SMALL, "embeddings": "glove-6b-50d", "embedding_mode": "non-static"}),
        distill=DistillParams(**{"batch_size": 10, "epochs": 5, "patience": 5, **overrides}),
        device=CPU, seed=0, use_teacher_logits=True,
    )


def test_pair_student_distils_teacher_logits(tmp_path):
    train = write_labeled(tmp_path / "labeled" / "mrpc.parquet")
    dev = paraphrase_rows(80, seed=5)
    write_raw(tmp_path / "raw" / "dev.parquet", {**dev, "idx": list(range(80))})
    metrics = distill(train, tmp_path / "raw", tmp_path / "student")
    assert set(metrics["dev"]) == {"accuracy", "f1"}
    assert metrics["dev"]["accuracy"] >= 0.9
    assert (metrics["alpha"], metrics["loss"], metrics["batch_size"], metrics["train_rows"]) == (0.0, "mse", 10, 300)
    assert metrics["train_rows_with_label"] == 150
    student = load_student(tmp_path / "student")
    assert student.config["pair"] is True
    logits = student.predict_logits(dev["text_a"], dev["text_b"])
    teacher = np.where(np.array(dev["label"])[:, None] == 1, [-3.0, 3.0], [3.0, -3.0])
    # the student fits the teacher's logits, not just its labels: far closer than all-zero logits (18)
    assert ((logits - teacher) ** 2).sum(1).mean() < 3
    # exact-length inference batches and the earlier packed ones give the same logits
    np.testing.assert_allclose(student.predict_logits(dev["text_a"], dev["text_b"], exact=False), logits, atol=1e-5)
    with pytest.raises(StageError, match="sentence pairs"):
        student.predict_proba(["a"])
    # the kl variant and a mixed objective run on the same file
    kl = distill(train, tmp_path / "raw", tmp_path / "kl", loss="kl", temperature=2.0, alpha=0.5, epochs=1)
    assert (kl["loss"], kl["alpha"], kl["epochs_run"]) == ("kl", 0.5, 1)
    # the earlier mixed-length packed batches stay available as the reference
    windows = distill(train, tmp_path / "raw", tmp_path / "windows", batching="sorted-windows")
    assert windows["dev"]["accuracy"] >= 0.9


def test_bad_inputs_are_stage_errors_naming_the_file(tmp_path):
    write_raw(tmp_path / "raw" / "dev.parquet", {**paraphrase_rows(4, seed=5), "idx": list(range(4))})
    missing = tmp_path / "labeled" / "none.parquet"
    with pytest.raises(StageError, match=f"missing input file {missing}.*label stage"):
        distill(missing, tmp_path / "raw", tmp_path / "out")
    short = write_labeled(tmp_path / "short.parquet", logits_len=1)
    with pytest.raises(StageError, match=r"short\.parquet: row 0 has 1 logits; task mrpc has 2"):
        distill(short, tmp_path / "raw", tmp_path / "out")
    no_logits = write_labeled(tmp_path / "nologits.parquet", drop="logits")
    with pytest.raises(StageError, match=r"nologits\.parquet: missing column\(s\) \['logits'\]"):
        distill(no_logits, tmp_path / "raw", tmp_path / "out")
    good = write_labeled(tmp_path / "good.parquet", n_orig=4, n_aug=0)
    with pytest.raises(StageError, match=r"missing input file .*nowhere/dev\.parquet"):
        train_student(get_task("mrpc"), good, tmp_path / "nowhere", tmp_path / "out",
                      student=StudentParams(**SMALL), distill=DistillParams(), device=CPU, seed=0,
                      use_teacher_logits=True)
    # params.yaml refuses an unknown embeddings name when it is loaded (test_params_validation.py); a caller that
    # builds the params without validation still gets the stage's own one-line error
    with pytest.raises(StageError, match="unknown student.embeddings='glov'"):
        train_student(get_task("mrpc"), good, tmp_path / "raw", tmp_path / "out",
                      student=StudentParams.model_construct(**{**StudentParams(**SMALL).model_dump(),
                                                               "embeddings": "glov"}),
                      distill=DistillParams(), device=CPU, seed=0, use_teacher_logits=True)
    assert not (tmp_path / "out").exists()  # nothing half-written
