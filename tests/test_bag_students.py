"""The bag students (docs/students.md): `ngram` (tf-idf n-grams, a linear layer) and `static` (Model2Vec-style
embeddings from the teacher, a small head). Their features, that the n-gram student reproduces a teacher on a
separable set, the static embeddings' rule, and on the tiny project: export, predict and serve without PyTorch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stages.data.io import LABELED_SCHEMA
from stages.data.tasks import Task, get_task
from stages.errors import StageError
from stages.inputs import build_inputs
from stages.models.registry import load_predictor
from stages.models.ngram_model import CachedFeatures, NgramFeaturizer
from stages.params import EvaluateParams, DistillParams, NgramParams, StaticParams
from stages.student import train_bag_student
from tests.conftest import REPO
from tests.test_export import _report
from tests.test_student import CPU, sentiment_rows, write_raw

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NGRAM = NgramParams(min_df=1).model_dump()


def _labeled(path: Path, rows: dict, teacher: np.ndarray) -> Path:
    """A transfer set of original rows whose teacher logits are `teacher` (n, 2)."""
    n = len(rows["text_a"])
    table = {"text_a": rows["text_a"], "text_b": rows["text_b"], "is_original": [True] * n, "label": rows["label"],
             "source_idx": list(range(n)), "source": ["original"] * n,
             "logits": pa.array(teacher.tolist(), pa.list_(pa.float32())), "teacher_label": teacher.argmax(1).tolist()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table, schema=LABELED_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def separable(tmp_path_factory) -> Path:
    """300 sentences; the teacher says fresh exactly when "good" is in the text; the gold labels say the opposite."""
    root = tmp_path_factory.mktemp("separable")
    rows = sentiment_rows(300, seed=1)
    good = np.array(["good" in text.split() for text in rows["text_a"]])
    teacher = np.where(good[:, None], [[-3.0, 3.0]], [[3.0, -3.0]]).astype(np.float32)
    rows["label"] = (~good).astype(int).tolist()
    _labeled(root / "labeled.parquet", rows, teacher)
    write_raw(root / "raw" / "train.parquet", rows)
    write_raw(root / "raw" / "dev.parquet", sentiment_rows(60, seed=2))
    build_inputs(get_task("rt"), "ngram", root / "raw", root / "no-teacher", root / "inputs", knobs=NGRAM)
    return root


# ngram's own objective knobs null: distill's alpha, loss and temperature apply
DISTILL_OBJECTIVE = dict(alpha=None, loss=None, temperature=None)


@pytest.mark.parametrize("alpha, follows, where", [(0.0, "teacher", "distill"), (1.0, "gold", "distill"),
                                                   (1.0, "gold", "ngram")])
def test_the_ngram_student_reproduces_what_it_is_fitted_to(separable, tmp_path, alpha, follows, where):
    """alpha 0: the teacher's logits alone, every training sentence gets the teacher's label; alpha 1: the gold
    labels of the original sentences alone (here the teacher's opposite), every one of them reproduced. The alpha
    comes from `distill:` where ngram.alpha is null, and ngram.alpha wins over distill.alpha where it is set."""
    knobs = NgramParams(min_df=1, **DISTILL_OBJECTIVE) if where == "distill" else NgramParams(min_df=1, alpha=alpha)
    metrics = train_bag_student(get_task("rt"), "ngram", separable / "labeled.parquet", separable / "raw",
                                separable / "inputs", tmp_path / "m", knobs=knobs,
                                distill=DistillParams(alpha=alpha if where == "distill" else 0.0, batch_size=10,
                                                      epochs=6, patience=6, optimizer="adam", lr=0.1),
                                device=CPU, seed=0, use_teacher_logits=True)
    table = pq.read_table(separable / "labeled.parquet").to_pydict()
    target = np.array(table["teacher_label"] if follows == "teacher" else table["label"])
    predicted = load_predictor(tmp_path / "m").predict_logits(table["text_a"]).argmax(1)
    assert (predicted == target).all(), f"{(predicted != target).sum()} of {len(target)} differ"
    assert metrics["alpha"] == alpha and metrics["loss"] == ("mse" if alpha < 1 else "ce") and metrics["arch"] == "ngram"
    if follows == "teacher":
        assert metrics["dev"]["accuracy"] == 1.0  # the teacher's rule is the dev labels' rule


def test_the_hidden_layer_ngram_fits_the_teacher_and_its_onnx_graph_computes_what_numpy_does(separable, tmp_path):
    """ngram.hidden 8: weights.npz holds W (columns x 8), b, W1 (8 x 2) and b1; the student reproduces the teacher's
    label of every training sentence; the exported graph (ReLU between the layers) gives numpy's logits; a W1 of
    the wrong shape is an error naming it."""
    from stages.models import ngram_model

    metrics = train_bag_student(get_task("rt"), "ngram", separable / "labeled.parquet", separable / "raw",
                                separable / "inputs", tmp_path / "m", knobs=NgramParams(min_df=1, hidden=8, dropout=0.1,
                                                                                        **DISTILL_OBJECTIVE),
                                distill=DistillParams(alpha=0.0, batch_size=10, epochs=6, patience=6, optimizer="adam",
                                                      lr=0.03), device=CPU, seed=0, use_teacher_logits=True)
    columns = metrics["vocab_size"]
    with np.load(tmp_path / "m" / "weights.npz") as saved:
        assert {k: saved[k].shape for k in saved.files} == {"W": (columns, 8), "b": (8,), "W1": (8, 2), "b1": (2,)}
    table = pq.read_table(separable / "labeled.parquet").to_pydict()
    student = ngram_model.NgramStudent(tmp_path / "m")
    logits = student.compute_logits(table["text_a"], None, 64)
    assert (logits.argmax(1) == np.array(table["teacher_label"])).all()
    (tmp_path / "export").mkdir()
    config = ngram_model.export(tmp_path / "m", tmp_path / "export")
    assert config["params_all"] == columns * 8 + 8 + 8 * 2 + 2
    onnx_logits = ngram_model.OnnxNgram(tmp_path / "export").compute_logits(table["text_a"], None, 64)
    np.testing.assert_allclose(onnx_logits, logits, atol=1e-4)
    with np.load(tmp_path / "m" / "weights.npz") as saved:
        arrays = {k: saved[k] for k in saved.files}
    np.savez(tmp_path / "m" / "weights.npz", **{**arrays, "W1": arrays["W1"][:4]})
    with pytest.raises(StageError, match=r"W1 has shape \(4, 2\), the features and labels make \(8, 2\)"):
        ngram_model.NgramStudent(tmp_path / "m")


def test_a_hidden_layer_step_under_adam_moves_only_the_batchs_ngram_rows():
    """The hidden layer's columns x hidden table takes sparse gradients (SparseAdam: lazy Adam), so each step
    changes exactly the rows of the n-grams in its batch (dense Adam would keep moving the first batch's rows on
    their momentum), and the dense head moves too; without a hidden layer, or under Adadelta, nothing is sparse."""
    from stages.models.bag_model import sparse_tables
    from stages.student import _bag_model, make_optimizer

    task, distill = get_task("rt"), DistillParams(optimizer="adam", lr=0.01)
    torch.manual_seed(0)  # 16 units drawn from N(0, 0.1²): a sentence whose units were all dead would move no row
    model = _bag_model("ngram", 10, task, NgramParams(hidden=16), distill)
    assert sparse_tables(model) == [model.bag.weight]
    optimizer = make_optimizer(model, distill)

    def step(indices: list[int], offsets: list[int], labels: list[int]) -> tuple[list[int], bool]:
        table, head = model.bag.weight.detach().clone(), model.out.weight.detach().clone()
        optimizer.zero_grad()
        logits = model(torch.tensor(indices), torch.tensor(offsets), torch.ones(len(indices)))
        torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).backward()
        optimizer.step()
        moved = (model.bag.weight.detach() != table).any(1).nonzero().flatten().tolist()
        return moved, not torch.equal(model.out.weight.detach(), head)

    assert step([1, 3, 3], [0, 1], [0, 1]) == ([1, 3], True)
    assert step([5], [0], [1]) == ([5], True)
    assert sparse_tables(_bag_model("ngram", 10, task, NgramParams(hidden=0), distill)) == []
    assert sparse_tables(_bag_model("ngram", 10, task, NgramParams(hidden=4), DistillParams(optimizer="adadelta"))) == []


def test_ngram_sets_its_own_optimiser_and_objective_and_null_gives_back_distills():
    assert NgramParams().distill_overrides() == {"optimizer": "adam", "lr": 0.01, "alpha": 0.5, "loss": "kl",
                                                 "temperature": 2.0}
    assert NgramParams(optimizer=None, lr=0.5, **DISTILL_OBJECTIVE).distill_overrides() == {}
    assert NgramParams(loss=None, alpha=0.2).distill_overrides() == {"optimizer": "adam", "lr": 0.01, "alpha": 0.2,
                                                                    "temperature": 2.0}


def test_ngram_rows_are_read_back_from_the_cache_exactly_and_a_new_featurizer_or_text_misses(tmp_path):
    texts = ["a good film", "a bad film", "good good good", "the plot"]
    features = tmp_path / "features.json"
    NgramFeaturizer.fit(texts, NGRAM).save(features)
    fresh = NgramFeaturizer.load(features).features(texts[:2], texts[2:])
    cache = tmp_path / "cache"
    first = CachedFeatures(features, cache).features(texts[:2], texts[2:])
    [entry] = cache.iterdir()
    again = CachedFeatures(features, cache)
    read = again.features(texts[:2], texts[2:])
    assert again._featurizer is None  # read back: the featurizer was never loaded
    for x in (first, read):
        assert (x != fresh).nnz == 0 and x.dtype == fresh.dtype and x.shape == fresh.shape
    entry.write_bytes(b"torn")  # a file that cannot be read is computed again and rewritten
    assert (CachedFeatures(features, cache).features(texts[:2], texts[2:]) != fresh).nnz == 0
    assert len(list(cache.iterdir())) == 1 and entry.stat().st_size > 4
    CachedFeatures(features, cache).features(texts[:2])  # other texts: a second entry
    NgramFeaturizer.fit(texts, {**NGRAM, "word_ngrams": [1, 1]}).save(features)  # another featurizer: a third
    other = CachedFeatures(features, cache).features(texts[:2], texts[2:])
    assert len(list(cache.iterdir())) == 3 and other.shape[1] < fresh.shape[1]
    assert (CachedFeatures(features, None).features(texts[:2], texts[2:]) != other).nnz == 0  # no cache: computed


def test_ngram_features_are_unit_tfidf_rows_and_pairs_add_the_shared_ngrams():
    texts = ["a good film", "a bad film", "good good good", "the plot"]
    featurizer = NgramFeaturizer.fit(texts, NGRAM)
    x = featurizer.features(texts)
    np.testing.assert_allclose(np.sqrt(x.multiply(x).sum(1)).A1, 1, rtol=1e-6)
    words = featurizer.vocabularies["word"]
    assert {"good", "good film", "the plot"} <= set(words) and len(featurizer.vocabularies["char_wb"]) > 10
    pair = featurizer.features(["a good film", "the plot"], ["a bad film", "the plot"])
    width = featurizer.width
    assert pair.shape == (2, 3 * width)
    shared = pair[:, 2 * width:].toarray()
    film = featurizer.vocabularies["word"].index("film")  # word columns come first
    assert shared[0, film] > 0 and shared[0, words.index("good")] == 0  # "film" in both, "good" in one
    np.testing.assert_allclose(shared[1].sum(), 1, rtol=1e-5)  # the same sentence twice: x * x sums to |x|^2 = 1
    hashed = NgramFeaturizer.fit(texts, {**NGRAM, "features": "hashing", "hash_bits": 10})
    assert hashed.width == 2 * 2 ** 10 and hashed.vocabularies == {}
    with pytest.raises(StageError, match="lower ngram.min_df"):
        NgramFeaturizer.fit(texts, {**NGRAM, "min_df": 3, "char_ngrams": None})


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A small random BERT with the packaged teacher's word pieces (the rule, not the weights, is under test)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from stages.models.teacher_model import resolve_model

    path = tmp_path_factory.mktemp("teacher")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2").location)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_static_embeddings_are_the_teachers_token_vectors_rotated_and_zipf_weighted(tiny_teacher, tmp_path):
    """With every PCA component kept, PCA only centres and rotates: the distances between the rows, each divided by
    its Zipf weight log(1 + id), are the distances between the encoder's mean output states for [CLS] id [SEP]."""
    from transformers import AutoModel

    from stages.models.static_model import EMBEDDINGS_FILE, build_embeddings

    info = build_embeddings(tiny_teacher, tmp_path, dims=64, weighting="zipf", batch_size=100, device=CPU,
                            vocab_size=300)
    assert info["dims"] == 16 and info["vocab_size"] == 300  # at most the teacher's hidden size
    table = np.load(tmp_path / EMBEDDINGS_FILE).astype(np.float64)
    assert table.shape == (300, 16) and not table[0].any()  # [PAD] (id 0) has weight log(1) = 0
    ids = [5, 120, 299]
    encoder = AutoModel.from_pretrained(tiny_teacher).eval()
    with torch.inference_mode():
        states = encoder(input_ids=torch.tensor([[101, i, 102] for i in ids])).last_hidden_state.mean(1).numpy()
    unweighted = table[ids] / np.log1p(ids)[:, None]
    for i in range(3):
        for j in range(i + 1, 3):
            np.testing.assert_allclose(np.linalg.norm(unweighted[i] - unweighted[j]),
                                       np.linalg.norm(states[i] - states[j]), rtol=2e-3)


def test_models_without_a_teacher_read_the_pretrained_encoders_table_not_the_fine_tuned_teachers(tiny_project, tmp_path):
    """inputs@<task>-static writes two tables: the fine-tuned teacher's for the distilled student, and base/, the
    same method on the pretrained teacher.model, for the hard-label student (and compare's static + LR), so the
    "no teacher" models carry nothing the teacher learned."""
    from stages.models.static_model import EMBEDDINGS_FILE, INFO_FILE, build_embeddings
    from stages.models.teacher_model import resolve_model
    from tests.tiny_project import TINY

    inputs = tiny_project / "models/inputs/sst2/static"
    teacher_table, base_table = (np.load(d / EMBEDDINGS_FILE) for d in (inputs, inputs / "base"))
    assert teacher_table.shape == base_table.shape and not np.array_equal(teacher_table, base_table)
    assert json.loads((inputs / "base" / INFO_FILE).read_text())["source"].startswith("teacher.model 'all-MiniLM-L6-v2'")
    knobs = TINY["static"]
    rebuilt = build_embeddings(resolve_model("all-MiniLM-L6-v2").location, tmp_path, dims=knobs["dims"],
                               weighting="zipf", batch_size=1024, device=CPU, vocab_size=knobs["vocab_size"])
    assert rebuilt["vocab_size"] == len(base_table)
    np.testing.assert_allclose(np.load(tmp_path / EMBEDDINGS_FILE).astype(np.float32), base_table.astype(np.float32),
                               atol=2e-2 * float(np.abs(base_table).max()))
    for kind, table in (("student", teacher_table), ("baseline", base_table)):
        for seed in (1, 2):
            np.testing.assert_array_equal(np.load(tiny_project / f"models/{kind}/sst2/static/seed-{seed}" / EMBEDDINGS_FILE),
                                          table)


# --- on the tiny project: each arch's trained runs, exported, predicted and served --------------------------

ARCH_FILES = {"ngram": "features.json", "static": "tokenizer.json"}
PAIR = "first sentence number 1 .\tsecond sentence 1 ?"
# any `import torch` now raises ImportError; not sys.modules['torch'] = None, which scipy's array-API probe trips on
NO_TORCH = ("import sys\nclass NoTorch:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n            raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, NoTorch())\n")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ngram", "static"])
def test_each_bag_arch_trains_exports_predicts_and_serves_without_torch(tiny_project, tmp_path, arch):
    from stages.export import export_student

    outputs = {}
    for task_name in ("sst2", "nli"):
        task = get_task(task_name) if task_name == "sst2" else Task.from_dict(
            json.loads((tiny_project / "data/sources/nli.json").read_text())["task"])  # the declared pair task
        run_dir = tiny_project / f"models/student/{task_name}/{arch}/seed-1"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["arch"] == arch and config["task"] == task_name and config["label_names"]
        export = tmp_path / task_name
        result = export_student(task, run_dir, tiny_project / f"data/raw/{task_name}", export, seed=1,
                                report=_report(task, 1, 0.5), teacher={"model": "t", "dev": {m: 0.9 for m in task.metrics}},
                                data={"splits": {}}, params=EvaluateParams(batch_size=8, throughput_sentences=16))
        assert sorted(p.name for p in export.iterdir()) == sorted(
            ["README.md", "config.json", "model.int8.onnx", "model.onnx", ARCH_FILES[arch]])
        assert set(result["backends"]) == {"numpy", "onnx-fp32", "onnx-int8"} and result["arch"] == arch
        assert result["max_abs_logit_diff_fp32"] <= 1e-4
        card = (export / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: onnx") and f"--backend {'onnx-int8' if result['recommended'] == 'int8' else 'onnx'}" in card
        outputs[task_name] = (run_dir, export)

    # predict (both backends) and serve in one process where `import torch` fails
    script = NO_TORCH + f"""
import json
from fastapi.testclient import TestClient
from stages.predict import answer, read_arguments
from stages.serving.app import create_app
out = {{}}
for task, (run_dir, export, text) in {json.dumps({t: [str(r), str(e), PAIR if t == "nli" else "good movie"]
                                                   for t, (r, e) in outputs.items()})}.items():
    out[task] = {{"numpy": answer(run_dir, read_arguments([text]), backend="torch")[0],
                 "onnx": answer(export, read_arguments([text]), backend="onnx")[0]}}
    body = {{"pairs": [text.split("\\t")]}} if "\\t" in text else {{"texts": [text]}}
    with TestClient(create_app(export, "onnx")) as client:
        out[task]["served"] = client.post("/predict", json=body).json()["predictions"][0]
assert "torch" not in sys.modules
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for task_name, got in answers.items():
        numpy_p, onnx_p = got["numpy"]["probabilities"], got["onnx"]["probabilities"]
        assert list(numpy_p) == json.loads((outputs[task_name][0] / "config.json").read_text())["label_names"]
        assert onnx_p == pytest.approx(numpy_p, abs=2e-4) and got["served"]["probabilities"] == pytest.approx(numpy_p, abs=2e-4)
        assert got["served"]["label"] == got["numpy"]["label"] == max(numpy_p, key=numpy_p.get)
