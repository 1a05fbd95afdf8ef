"""Shipping the student: the `tokenizers` tokenizer against the hand-written one it replaced, ONNX parity for
single-sentence and pair students, int8, the model card, and `predict --backend onnx` without PyTorch."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stages.export import export_student, model_card, recommended_variant
from stages.models.onnx_student import OnnxStudent, length_groups
from stages.params import DistillParams, StudentParams
from stages.models.torch_student import load_student
from stages.student import train_student
from stages.data.tasks import get_task
from stages.models.vocab import Vocab
from tests.conftest import REPO, SHARED_GLUE
from tests.test_student import CPU, SMALL, paraphrase_rows, sentiment_rows, write_raw

# --- the tokenizer: the ids of the hand-written regex tokenizer it replaced, frozen here as the reference ---

_OLD_WORD = re.compile(r"\[MASK\]|\w+?(?=n't\b)|n't|'\w+|\w+(?:[.,]\w+)*|[^\w\s]", re.UNICODE)


def old_tokens(text: str) -> list[str]:
    return [t if t == "[MASK]" else t.lower() for t in _OLD_WORD.findall(text)]


def old_vocab(texts: list[str], size: int) -> dict[str, int]:
    counts = Counter(t for text in texts for t in old_tokens(text) if t != "[MASK]")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 3]
    return {"<pad>": 0, "<unk>": 1, "[MASK]": 2} | {w: i + 3 for i, (w, _) in enumerate(ranked)}


def old_ids(vocab: dict[str, int], text: str, max_length: int) -> list[int]:
    return [vocab.get(t, 1) for t in old_tokens(text)[:max_length]]


def _glue(task: str, split: str) -> list[str]:
    df = pd.read_parquet(SHARED_GLUE / task / f"{split}-00000-of-00001.parquet")
    return [t for c in ("sentence", "sentence1", "sentence2") if c in df for t in df[c]]


@pytest.mark.skipif(not SHARED_GLUE.exists(), reason="../shared/glue not beside the repo")
@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte"])
def test_tokenizer_ids_equal_the_old_tokenizer_on_every_dev_sentence(task):
    train, dev = _glue(task, "train"), _glue(task, "validation")
    vocab = Vocab.build(train, 50000)
    reference = old_vocab(train, 50000)
    assert vocab.index == reference
    assert vocab.encode_batch(dev, 64) == [old_ids(reference, t, 64) for t in dev]


def test_tokenizer_ids_equal_the_old_tokenizer_on_rt(tmp_path):
    from stages.download import download

    download(get_task("rt"), tmp_path)
    train, dev = (pq.read_table(tmp_path / f"{s}.parquet")["text_a"].to_pylist() for s in ("train", "dev"))
    vocab, reference = Vocab.build(train, 50000), old_vocab(train, 50000)
    assert vocab.index == reference
    assert vocab.encode_batch(dev + ["a [MASK] b", "x[MASK]y"], 64) == [old_ids(reference, t, 64) for t in dev] + \
        [old_ids(reference, "a [MASK] b", 64), old_ids(reference, "x[MASK]y", 64)]


def test_the_one_deliberate_difference_upper_case_contractions():
    vocab = Vocab.build(["do n't ca n't"], 10)
    # lower-cased before splitting: "DON'T" splits like "don't" (the old tokenizer split "DON" + "'T")
    assert vocab.encode("DON'T", 10) == vocab.encode("don't", 10) == [vocab.index["do"], vocab.index["n't"]]


def test_length_groups_hold_one_length_and_every_row_once():
    a = np.array([3, 1, 3, 2, 3, 3, 1])
    groups = length_groups(a, None, batch_size=3)
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))
    assert all(len(set(a[g])) == 1 and len(g) <= 3 for g in groups)
    b = np.array([1, 1, 2, 2, 1, 1, 1])
    assert all(len({(a[i], b[i]) for i in g}) == 1 for g in length_groups(a, b, batch_size=8))


# --- export: ONNX fp32 equals PyTorch, int8 runs, the card holds its fields ------------------------------


def _report(task, seed: int, score: float) -> dict:
    stat = {"mean": score, "sd": 0.01, "seeds": {str(seed): score}}
    split, metric = task.selection_split, task.metrics[0]
    return {"seeds": [seed], "scores": {"student": {split: {metric: stat}}, "baseline": {split: {metric: stat}}},
            "student_vs_teacher": {"accuracy_ratio": 0.95}}


def _train(task_name: str, root: Path, **student) -> Path:
    task = get_task(task_name)
    rows = (lambda n, s: {**paraphrase_rows(n, seed=s), "idx": list(range(n))}) if task.is_pair else sentiment_rows
    write_raw(root / "raw" / "train.parquet", rows(200, 1))
    write_raw(root / "raw" / "dev.parquet", rows(60, 2))
    train_student(task, root / "raw" / "train.parquet", root / "raw", root / "student",
                  student=StudentParams(**{**SMALL, "embeddings": "glove-6b-50d", "embedding_mode": "multichannel",
                                           **student}),
                  distill=DistillParams(batch_size=10, epochs=2), device=CPU, seed=3, use_teacher_logits=False)
    return root


@pytest.mark.parametrize("task_name", ["rt", "mrpc"])
def test_export_matches_pytorch_and_writes_a_card(tmp_path, task_name):
    task = get_task(task_name)
    root = _train(task_name, tmp_path)
    teacher = {"model": "all-MiniLM-L6-v2", "dev": {m: 0.9 for m in task.metrics}}
    data = {"splits": {"train": {"rows": 200}, "dev": {"rows": 60}}}
    result = export_student(task, root / "student", root / "raw", root / "export", seed=3,
                            report=_report(task, 3, 0.8), teacher=teacher, data=data, batch_size=16,
                            throughput_sentences=50)
    files = sorted(p.name for p in (root / "export").iterdir())
    assert files == ["README.md", "config.json", "model.int8.onnx", "model.onnx", "tokenizer.json"]
    assert result["max_abs_logit_diff_fp32"] <= 1e-4 and set(result["backends"]) == {"pytorch", "onnx-fp32", "onnx-int8"}
    import onnx

    ops = {node.op_type for node in onnx.load(str(root / "export/model.int8.onnx")).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops  # int8 weights in the recurrence

    dev = pq.read_table(root / "raw" / "dev.parquet").to_pydict()
    texts_b = dev["text_b"] if task.is_pair else None
    torch_logits = load_student(root / "student").predict_logits(dev["text_a"], texts_b)
    onnx = OnnxStudent(root / "export")
    np.testing.assert_allclose(onnx.predict_logits(dev["text_a"], texts_b, batch_size=7), torch_logits, atol=1e-4)
    single = onnx.predict_logits(dev["text_a"][:1] + [""], texts_b[:1] + ["x"] if texts_b else None)
    np.testing.assert_allclose(single[:1], torch_logits[:1], atol=1e-4)  # batch 1, and an empty text runs
    accuracy = result["backends"]["onnx-int8"]["scores"]["dev"]["accuracy"]
    assert accuracy == pytest.approx(float((OnnxStudent(root / "export", "int8").predict_logits(
        dev["text_a"], texts_b).argmax(-1) == np.array(dev["label"])).mean()), abs=1e-6)

    card = (root / "export" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: onnx\npipeline_tag: text-classification\n")
    assert result["recommended"] == recommended_variant(result["int8_cost_points"])
    backend = "onnx-int8" if result["recommended"] == "int8" else "onnx"
    for field in (f"# {task_name} BiLSTM student", "all-MiniLM-L6-v2", "seed 3 of [3]", "80.00 ± 1.00",
                  "| onnx-int8 |", f"python -m stages predict --backend {backend}", "ort.InferenceSession"):
        assert field in card, field
    snippet = card.split("```python\n")[1].split("```")[0]  # the card's "how to use" runs as written
    ran = subprocess.run([sys.executable, "-c", snippet], cwd=root / "export", capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.strip() in task.label_names, ran.stderr
    config = json.loads((root / "export" / "config.json").read_text())
    assert config["inputs"] == (["ids_a", "ids_b"] if task.is_pair else ["ids"]) and config["label_names"] == list(task.label_names)


@pytest.mark.parametrize("cost, variant", [(0.08, "int8"), (0.5, "int8"), (-1.2, "int8"), (0.51, "fp32"), (16.67, "fp32")])
def test_the_card_recommends_int8_only_within_its_cost(cost, variant):
    task = get_task("mrpc")
    backend = {"scores": {"dev": {"accuracy": 0.7, "f1": 0.8}}, "sentences_per_s": 100.0, "latency_ms_p50": 1.0,
               "latency_ms_p95": 2.0}
    comparison = {"backends": {"pytorch": backend, "onnx-fp32": backend, "onnx-int8": backend},
                  "max_abs_logit_diff_fp32": 1e-7, "int8_cost_points": cost, "batch_size": 512, "threads": 2,
                  "recommended": recommended_variant(cost)}
    config = {"hidden": 150, "fc": 200, "embeddings": "glove-6b-50d", "embedding_mode": "multichannel", "max_length": 64}
    card = model_card(task, config, 3, _report(task, 3, 0.8), comparison, {"model": "t", "dev": {"accuracy": 0.9}},
                      {"splits": {"train": {"rows": 10}}})
    assert comparison["recommended"] == variant
    used = "model.int8.onnx" if variant == "int8" else "model.onnx"
    assert f'ort.InferenceSession("{used}")' in card
    assert f"--backend {'onnx-int8' if variant == 'int8' else 'onnx'} " in card
    assert ("is kept for comparison" in card) == (variant == "fp32")


def test_predict_with_onnx_never_imports_torch(tmp_path):
    task = get_task("rt")
    root = _train("rt", tmp_path)
    export_student(task, root / "student", root / "raw", root / "export", seed=3, report=_report(task, 3, 0.8),
                   teacher={"model": "m", "dev": {"accuracy": 0.9}}, data={"splits": {}}, batch_size=16,
                   throughput_sentences=20)
    script = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
              "from stages.cli import main\n"
              f"sys.argv = ['stages', 'predict', '--backend', 'onnx-int8', '--model', {str(root / 'export')!r}, "
              "'--json', 'a good good film', 'bad bad']\n"
              "main()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a good good film", "bad bad"]
    assert all(r["label"] in ("rotten", "fresh") and abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)
    missing = subprocess.run([sys.executable, "-m", "stages", "predict", "--backend", "onnx", "--model",
                              str(tmp_path / "nowhere"), "x"], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 1 and "is not an exported student" in missing.stderr and "Traceback" not in missing.stderr
