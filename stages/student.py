"""`student` and `baseline` stages: train the BiLSTM student, keep the best dev epoch, save it.

The student stage fits the teacher's logits on the labelled transfer set (data/labeled/<task>.parquet);
the baseline fits the hard labels of the original training set (data/raw/<task>/train.parquet) with
the same model, optimiser and selection, so the two differ only in what they learn from.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from stages import paths
from stages.models.bag_model import Optimizers, sparse_tables
from stages.models.checkpoint import EpochCheckpoint
from stages.errors import StageError
from stages.data.io import LABELED_SCHEMA, RAW_SCHEMA, atomic_path, input_key, read_parquet, write_json
from stages.report.metrics import task_metrics
from stages.params import DistillParams, Params, StudentParams
from stages.runtime import resolve_device, seed_everything
from stages.models.predictor import EVAL_BATCH
from stages.models.registry import EXPORTERS
from stages.models.student_model import StudentClassifier, count_parameters, distill_loss
from stages.models.torch_student import (CONFIG_FILE, MODEL_FILE, VOCAB_FILE, Examples, OnDevice, build_model,
                                         encode_texts, model_logits)
from stages.data.tasks import Task
from stages.models.vocab import Vocab, embedding_dim, load_embeddings



# --------------------------------------------------------------------------- data


@dataclass
class _Table:
    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray
    logits: np.ndarray | None
    vocab_rows: np.ndarray  # rows whose words build the vocabulary


def _texts(table: pa.Table, task: Task, path: Path) -> tuple[list[str], list[str] | None]:
    if table["text_a"].null_count:
        raise StageError(f"{path}: column 'text_a' has {table['text_a'].null_count} null value(s)")
    if not task.is_pair:
        return table["text_a"].to_pylist(), None
    if table["text_b"].null_count:
        raise StageError(f"{path}: task {task.name} is a sentence-pair task but 'text_b' has "
                         f"{table['text_b'].null_count} null value(s)")
    return table["text_a"].to_pylist(), table["text_b"].to_pylist()


def _labels(table: pa.Table, task: Task, path: Path) -> np.ndarray:
    column = table["label"]
    if column.null_count or not pa.types.is_integer(column.type):
        raise StageError(f"{path}: column 'label' must be integers without nulls (got {column.type})")
    labels = column.to_numpy().astype(np.int64)
    bad = (labels < -1) | (labels >= task.num_labels)
    if bad.any():
        raise StageError(f"{path}: label {labels[bad][0]} is outside -1..{task.num_labels - 1} for task {task.name}")
    return labels


def _teacher_logits(table: pa.Table, task: Task, path: Path) -> np.ndarray:
    column = table["logits"].combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)) or not pa.types.is_floating(column.type.value_type):
        raise StageError(f"{path}: column 'logits' must be a list of floats (got {column.type})")
    if column.null_count:
        raise StageError(f"{path}: column 'logits' has {column.null_count} null value(s)")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != task.num_labels)
    if len(wrong):
        raise StageError(f"{path}: row {wrong[0]} has {lengths[wrong[0]]} logits; task {task.name} has "
                         f"{task.num_labels} labels (was the teacher trained for another task?)")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(values).all():
        raise StageError(f"{path}: column 'logits' holds NaN or infinite values")
    return values.reshape(len(column), task.num_labels)


def _read_train(path: Path, task: Task, use_teacher_logits: bool) -> _Table:
    path = Path(path)
    if use_teacher_logits:
        table = read_parquet(path, LABELED_SCHEMA, hint="run the label stage first")
        logits = _teacher_logits(table, task, path)
        # Vocabulary from the original sentences only, so student and baseline share their words.
        originals = table["is_original"].to_numpy(zero_copy_only=False)
        vocab_rows = np.flatnonzero(originals) if originals.any() else np.arange(table.num_rows)
    else:
        table = read_parquet(path, RAW_SCHEMA, hint="run the download stage first")
        logits, vocab_rows = None, np.arange(table.num_rows)
    if table.num_rows == 0:
        raise StageError(f"{path} has no rows to train on")
    texts_a, texts_b = _texts(table, task, path)
    return _Table(texts_a, texts_b, _labels(table, task, path), logits, vocab_rows)


def _read_eval(dev_dir: Path, split: str, task: Task) -> _Table:
    path = Path(dev_dir) / f"{split}.parquet"
    table = read_parquet(path, RAW_SCHEMA, hint="run the download stage first")
    texts_a, texts_b = _texts(table, task, path)
    return _Table(texts_a, texts_b, _labels(table, task, path), None, np.arange(0))


def _encode(table: _Table, vocab: Vocab, max_length: int) -> Examples:
    return encode_texts(vocab, max_length, table.texts_a, table.texts_b, table.labels, table.logits)


@dataclass
class PreparedData:
    """What a student trains on: the encoded rows, its vocabulary and initial vectors, its config."""

    train: Examples
    evals: dict[str, Examples]
    vocab: Vocab
    embeddings: torch.Tensor | None  # (vocab, dim) initial vectors; None for embedding_mode "rand"
    coverage: float | None
    config: dict


def prepare_data(task: Task, train_path: Path, dev_dir: Path, student: StudentParams, *, seed: int,
                 use_teacher_logits: bool, needs_labels: bool = False) -> PreparedData:
    """Read and validate the training file and the eval splits, build the vocabulary from the original
    sentences, look up the pretrained vectors and encode every text (also used by the benchmarks)."""
    dim = embedding_dim(student.embeddings)  # fails early on an unknown name
    train_table = _read_train(train_path, task, use_teacher_logits)
    if needs_labels and not (train_table.labels >= 0).any():
        raise StageError(f"{train_path}: no row has a hard label, so cross-entropy (alpha=1) has nothing to learn")
    eval_tables = {split: _read_eval(dev_dir, split, task) for split in task.eval_splits}
    if not (eval_tables[task.selection_split].labels >= 0).any():
        raise StageError(f"{Path(dev_dir) / task.selection_split}.parquet has no labelled row to select the model on")

    vocab_texts = [train_table.texts_a[i] for i in train_table.vocab_rows]
    if train_table.texts_b is not None:
        vocab_texts += [train_table.texts_b[i] for i in train_table.vocab_rows]
    vocab = Vocab.build(vocab_texts, student.vocab_size)
    if student.embedding_mode == "rand":
        matrix, coverage = None, None  # Kim's "rand": no pretrained vectors, only their size
    else:
        matrix, coverage = load_embeddings(student.embeddings, vocab, seed)
        matrix = torch.from_numpy(matrix)
    config = {
        "task": task.name, "num_labels": task.num_labels, "label_names": list(task.label_names),
        "pair": task.is_pair, "vocab_size": len(vocab), "emb_dim": dim, "hidden": student.hidden,
        "fc": student.fc, "dropout": student.dropout, "embedding_mode": student.embedding_mode,
        "embeddings": student.embeddings, "max_length": student.max_length, "arch": student.arch,
        **({"widths": student.cnn_widths, "maps": student.cnn_maps} if student.arch == "cnn" else {}),
    }
    return PreparedData(_encode(train_table, vocab, student.max_length),
                        {split: _encode(table, vocab, student.max_length) for split, table in eval_tables.items()},
                        vocab, matrix, coverage, config)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy over the labelled rows (NaN when none is labelled)."""
    known = labels >= 0
    if not known.any():
        return float("nan")
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(logits[known]), torch.from_numpy(labels[known])))


# --------------------------------------------------------------------------- training


def make_optimizer(model: torch.nn.Module, distill: DistillParams):
    """distill.optimizer over the model's trainable parameters; a table that takes sparse gradients (the n-gram
    student's hidden layer, bag_model.sparse_tables) gets SparseAdam at distill.lr instead, stepped with the rest."""
    sparse = sparse_tables(model)
    trainable = [p for p in model.parameters() if p.requires_grad and all(p is not t for t in sparse)]
    # foreach: one multi-tensor kernel per update op instead of one per parameter (~8% faster per step on
    # a 2-core CPU, measured with benchmarks/student_throughput.py; CUDA already defaults to it)
    if distill.optimizer == "adadelta":
        dense = torch.optim.Adadelta(trainable, lr=distill.lr, rho=distill.rho, foreach=True)
    else:
        dense = torch.optim.Adam(trainable, lr=distill.lr, foreach=True)
    return Optimizers(dense, torch.optim.SparseAdam(sparse, lr=distill.lr)) if sparse else dense


def _open_live(live_dir: Path | None):
    if live_dir is None:
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None)


def _log_epoch(live, train_loss: float, dev: dict, dev_loss: dict) -> None:
    if live is None:
        return
    live.log_metric("train/loss", train_loss)
    for split, values in dev.items():
        for name, value in values.items():
            live.log_metric(f"{split}/{name}", value)
        live.log_metric(f"{split}/loss", dev_loss[split])
    live.next_step()


@dataclass
class _Training:
    """One training run's state: what an epoch updates and a checkpoint saves."""

    model: StudentClassifier
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    train: OnDevice
    evals: dict[str, OnDevice]
    best: dict
    history: list[dict]  # what each epoch logged, so a resumed run's curves are whole
    checkpoint: EpochCheckpoint | None


def _checkpoint(task: Task, train_path: Path, dev_dir: Path, *, student: StudentParams, distill: DistillParams,
                seed: int, use_teacher_logits: bool, device: torch.device, root: Path | None) -> EpochCheckpoint | None:
    """The resumable state's home, keyed by every input and setting that decides the result (None: no resuming)."""
    if root is None:
        return None
    kind = "student" if use_teacher_logits else "baseline"
    name = f"{task.name}-{kind}" + ("" if student.arch == "bilstm" else f"-{student.arch}")  # a run's own lock
    return EpochCheckpoint(root, f"{name}-seed-{seed}", input_key(
        [train_path, *sorted(p for p in Path(dev_dir).glob("*.parquet"))],
        {"student": student.model_dump(), "distill": distill.model_dump(), "seed": seed,
         "use_teacher_logits": use_teacher_logits, "device": device.type}))


def _restore(run: _Training, task: Task, device: torch.device) -> None:
    if run.checkpoint is None:
        return
    saved = run.checkpoint.restore(run.model, run.optimizer, run.generator, device)
    if saved is not None:
        run.best, run.history = saved["best"], saved["history"]
        print(f"{task.name}: resuming after epoch {len(run.history)} from {run.checkpoint.path}", file=sys.stderr)


def _dev_scores(task: Task, model: StudentClassifier, evals: dict[str, OnDevice]) -> tuple[dict, dict]:
    dev, dev_loss = {}, {}
    for split, ex in evals.items():
        logits = model_logits(model, ex)
        dev[split] = task_metrics(task, ex.examples.labels, logits.argmax(-1))
        dev_loss[split] = _cross_entropy(logits, ex.examples.labels)
    return dev, dev_loss


def _epochs(task: Task, run: _Training, distill: DistillParams, *, alpha: float, batch_size: int, live) -> int:
    """Train until distill.epochs or early stopping, keeping the best epoch on dev; returns the epochs run."""
    selection, metric = task.selection_split, task.metrics[0]
    epochs_run = len(run.history)
    for logged in run.history:
        _log_epoch(live, **logged)
    first = len(run.history) + 1
    if run.history and len(run.history) - run.best["epoch"] >= distill.patience:
        first = distill.epochs + 1  # it had already stopped early
    for epoch in range(first, distill.epochs + 1):
        epochs_run = epoch
        batches = run.train.examples.batches(distill.batching, batch_size, run.generator)
        train_loss = train_epoch(run.model, run.optimizer, run.train, batches, alpha=alpha,
                                 kind=distill.loss, temperature=distill.temperature,
                                 desc=f"{task.name} epoch {epoch}/{distill.epochs}")
        dev, dev_loss = _dev_scores(task, run.model, run.evals)
        # Ties on the metric (common on small dev sets) go to the lower dev cross-entropy, not the earlier epoch.
        score = (dev[selection][metric], -dev_loss[selection])
        improved = score > run.best["score"]
        if improved:
            state = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
            run.best = {"score": score, "epoch": epoch, "state": state, "dev": dev}
        print(f"{task.name} epoch {epoch}: train loss {train_loss:.4f}, {selection} {metric} {score[0]:.4f}, "
              f"{selection} loss {dev_loss[selection]:.4f}" + (" (best)" if improved else ""), file=sys.stderr)
        run.history.append({"train_loss": train_loss, "dev": dev, "dev_loss": dev_loss})
        _log_epoch(live, **run.history[-1])
        if run.checkpoint is not None:
            run.checkpoint.save(run.model, run.optimizer, run.generator, run.train.device, best=run.best,
                                history=run.history)
        if epoch - run.best["epoch"] >= distill.patience:
            break
    return epochs_run


def train_student(task: Task, train_path: Path, dev_dir: Path, out_dir: Path, *, student: StudentParams,
                  distill: DistillParams, device: torch.device, seed: int, use_teacher_logits: bool,
                  live_dir: Path | None = None, checkpoint_root: Path | None = None) -> dict:
    """Train a student (student.arch: the BiLSTM or the CNN) on train_path, select the best epoch on the task's
    selection split, save it.

    use_teacher_logits=True (student stage): train_path is the labelled transfer set and the loss is
    distill.alpha * CE + (1 - alpha) * logit loss. False (baseline stage): train_path is the raw
    training split and the loss is cross-entropy alone (alpha = 1).
    Writes out_dir/{model.pt, config.json, tokenizer.json}; returns the metrics. With `checkpoint_root`
    the training state is saved there after every epoch and a rerun on the same inputs resumes from it
    (stages/models/checkpoint.py).
    """
    start = time.perf_counter()
    seed_everything(seed)
    alpha = distill.alpha if use_teacher_logits else 1.0
    data = prepare_data(task, train_path, dev_dir, student, seed=seed, use_teacher_logits=use_teacher_logits,
                        needs_labels=alpha == 1)
    vocab, config, coverage = data.vocab, data.config, data.coverage
    model = build_model(config, pretrained=data.embeddings).to(device)
    run = _Training(model, make_optimizer(model, distill), torch.Generator().manual_seed(seed),
                    OnDevice(data.train, device), {split: OnDevice(ex, device) for split, ex in data.evals.items()},
                    {"score": (-np.inf, -np.inf), "epoch": 0, "state": None, "dev": None}, [],
                    _checkpoint(task, train_path, dev_dir, student=student, distill=distill, seed=seed,
                                use_teacher_logits=use_teacher_logits, device=device, root=checkpoint_root))
    del data
    _restore(run, task, device)
    batch_size = distill.batch_size or task.student_batch_size
    live = _open_live(live_dir)
    try:
        epochs_run = _epochs(task, run, distill, alpha=alpha, batch_size=batch_size, live=live)
    finally:
        if live is not None:
            live.end()

    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        torch.save(run.best["state"], tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        vocab.save(tmp / VOCAB_FILE)
    if run.checkpoint is not None:
        run.checkpoint.finish()

    counts = count_parameters(model)
    return {
        **run.best["dev"],
        "params_all": counts["all"],
        "params_without_embeddings": counts["without_embeddings"],
        "best_epoch": run.best["epoch"],
        "epochs_run": epochs_run,
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_rows": len(run.train.examples),
        "train_rows_with_label": int((run.train.examples.labels >= 0).sum()),
        "vocab_size": len(vocab),
        "embedding_coverage": None if coverage is None else round(coverage, 4),
        "alpha": alpha,  # the objective actually used: the baseline is always alpha 1, loss "ce"
        "loss": distill.loss if alpha < 1 else "ce",
        "batch_size": batch_size,  # resolved: distill.batch_size or the paper's for the task
        "device": str(device),
    }


def train_epoch(model: StudentClassifier, optimizer: torch.optim.Optimizer, train: OnDevice,
                 batches: list[np.ndarray], *, alpha: float, kind: str, temperature: float, desc: str) -> float:
    """One pass over `batches`; returns the mean training loss. The loss stays on the device until the
    end of the pass: a `.item()` per step would make every step wait for the device."""
    model.train()
    total, seen = torch.zeros((), device=train.device), 0
    with tqdm(total=len(batches), desc=desc, unit="batch", mininterval=1.0, leave=False) as bar:
        for rows, inputs in train.batches(batches):
            teacher = train.logits[rows] if alpha < 1 else None
            labels = train.labels[rows] if alpha > 0 else None
            loss = distill_loss(model(**inputs), teacher, labels, alpha, kind, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(rows)
            seen += len(rows)
            bar.update()
    return total.item() / max(seen, 1)


def run(task: Task, params: Params, arch: str, seed: int, distilled: bool) -> None:
    """The `student` (distilled=True: the teacher's logits on the transfer set) or `baseline` (the hard labels of
    the training split) stage for one task, arch and seed: models/<kind>/<task>/<arch>/seed-<n>/ and
    metrics/<task>/<kind>/<arch>/seed-<n>/ (run.json and the per-epoch curves), from params.yaml's arch section
    (`student` for bilstm and cnn, `ngram`, `static`), `distill` (the baseline: `distill.for_baseline()`) and
    `device`."""
    if arch not in params.archs:
        raise StageError(f"--arch {arch!r} is not in params.yaml's archs {params.archs}")
    kind = "student" if distilled else "baseline"
    train_path = paths.labeled_file(task.name) if distilled else paths.raw_dir(task.name) / "train.parquet"
    run_dir, out = paths.run_dir(kind, task.name, arch, seed), paths.run_model_dir(kind, task.name, arch, seed)
    distill = params.distill if distilled else params.distill.for_baseline()
    device = resolve_device(params.device)
    if arch in EXPORTERS:  # the bag students (ngram, static)
        inputs_dir = paths.inputs_dir(task.name, arch)
        if arch == "static":  # the fine-tuned teacher's token vectors, or the pretrained encoder's for the baseline
            from stages.models.static_model import embeddings_dir

            inputs_dir = embeddings_dir(inputs_dir, teacher=distilled)
        metrics = train_bag_student(task, arch, train_path, paths.raw_dir(task.name), inputs_dir,
                                    out, knobs=getattr(params, arch), distill=distill, device=device, seed=seed,
                                    use_teacher_logits=distilled, live_dir=run_dir,
                                    features_cache=paths.cache_dir("ngram-features") / task.name)
    else:
        metrics = train_student(task, train_path, paths.raw_dir(task.name), out,
                                student=params.student.model_copy(update={"arch": arch}), distill=distill,
                                device=device, seed=seed, use_teacher_logits=distilled, live_dir=run_dir,
                                checkpoint_root=paths.cache_dir("student"))
        metrics["arch"] = arch
    write_json({"task": task.name, "seed": seed, **metrics}, run_dir / "run.json")
    print(f"{kind} {task.name} {arch} seed {seed}: {metrics}")


# --------------------------------------------------------------------------- the bag students (ngram, static)


def _bag_rows(arch: str, table: _Table, inputs_dir: Path, knobs, ngram_rows=None) -> object:
    """One split's model inputs: a CSR matrix of tf-idf rows (ngram: through ngram_rows, a CachedFeatures) or a
    dense matrix of sentence vectors (static)."""
    if arch == "ngram":
        return ngram_rows.features(table.texts_a, table.texts_b)
    from stages.models.static_model import TOKENIZER_FILE, Pieces, load_embeddings, pair_features, pool

    vectors = load_embeddings(inputs_dir)
    pieces = Pieces(Path(inputs_dir) / TOKENIZER_FILE, knobs.max_length, len(vectors))
    pooled = [pool(vectors, pieces.bags(texts)) for texts in (table.texts_a, table.texts_b) if texts is not None]
    return pooled[0] if len(pooled) == 1 else pair_features(*pooled)


def _bag_batch(x, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    if isinstance(x, np.ndarray):
        return (torch.from_numpy(x[rows]).to(device),)
    part = x[rows]
    return (torch.from_numpy(part.indices.astype(np.int64)).to(device),
            torch.from_numpy(part.indptr[:-1].astype(np.int64)).to(device), torch.from_numpy(part.data).to(device))


@torch.inference_mode()
def _bag_logits(model: torch.nn.Module, x, device: torch.device, batch_size: int = EVAL_BATCH) -> np.ndarray:
    model.eval()
    n = x.shape[0]
    return np.concatenate([model(*_bag_batch(x, np.arange(s, min(s + batch_size, n)), device)).float().cpu().numpy()
                           for s in range(0, n, batch_size)]) if n else np.zeros((0, 0), np.float32)


def _bag_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, targets: dict, order: np.ndarray, *,
               batch_size: int, alpha: float, distill: DistillParams, device: torch.device, desc: str) -> float:
    """One pass over the bag student's training rows in `order`; the mean training loss."""
    model.train()
    total = 0.0
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", mininterval=1.0, leave=False):
        rows = order[s:s + batch_size]
        on_device = torch.from_numpy(rows).to(device)
        loss = distill_loss(model(*_bag_batch(x, rows, device)),
                            targets["teacher"][on_device] if alpha < 1 else None,
                            targets["labels"][on_device] if alpha > 0 else None, alpha, distill.loss, distill.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(rows)
    return total / max(len(order), 1)


def _bag_dev(task: Task, model: torch.nn.Module, x_evals: dict, eval_tables: dict, device) -> tuple[dict, dict]:
    dev, dev_loss = {}, {}
    for split, x in x_evals.items():
        logits = _bag_logits(model, x, device)
        dev[split] = task_metrics(task, eval_tables[split].labels, logits.argmax(-1))
        dev_loss[split] = _cross_entropy(logits, eval_tables[split].labels)
    return dev, dev_loss


def _bag_model(arch: str, n_features: int, task: Task, knobs, distill: DistillParams) -> torch.nn.Module:
    from stages.models.bag_model import SparseLinear, StaticHead

    if arch == "ngram":  # the hidden layer's columns x hidden table takes sparse gradients under Adam
        return SparseLinear(n_features, task.num_labels, knobs.hidden, knobs.dropout,
                            sparse=knobs.hidden > 0 and distill.optimizer == "adam")
    return StaticHead(n_features, task.num_labels, knobs.hidden, knobs.dropout)


def _save_bag(arch: str, model: torch.nn.Module, inputs_dir: Path, out_dir: Path, config: dict) -> int:
    """Write the trained bag student's files (stages/models/ngram_model.py or static_model.py); its embedding
    table's size (0 for ngram)."""
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        if arch == "ngram":
            from stages.models import ngram_model

            ngram_model.save(tmp, Path(inputs_dir) / ngram_model.FEATURES_FILE, model.layers(), config)
        else:
            from stages.models import static_model

            static_model.save(tmp, inputs_dir, model.layers(), config)
    return 0 if arch == "ngram" else int(np.prod(np.load(Path(out_dir) / "embeddings.npy", mmap_mode="r").shape))


def _bag_epochs(task: Task, arch: str, model, data: dict, distill: DistillParams, *, seed: int, alpha: float,
                batch_size: int, device: torch.device, live) -> tuple[dict, int]:
    """Train for up to distill.epochs with early stopping on the selection split; (best, epochs run)."""
    optimizer = make_optimizer(model, distill)
    generator = torch.Generator().manual_seed(seed)
    selection, metric = task.selection_split, task.metrics[0]
    best = {"score": (-np.inf, -np.inf), "epoch": 0, "state": None, "dev": None}
    epochs_run = 0
    for epoch in range(1, distill.epochs + 1):
        epochs_run = epoch
        order = torch.randperm(data["x"].shape[0], generator=generator).numpy()
        train_loss = _bag_epoch(model, optimizer, data["x"], data["targets"], order, batch_size=batch_size, alpha=alpha,
                                distill=distill, device=device, desc=f"{task.name} {arch} epoch {epoch}/{distill.epochs}")
        dev, dev_loss = _bag_dev(task, model, data["x_evals"], data["eval_tables"], device)
        score = (dev[selection][metric], -dev_loss[selection])
        improved = score > best["score"]
        if improved:
            best = {"score": score, "epoch": epoch, "dev": dev,
                    "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
        print(f"{task.name} {arch} epoch {epoch}: train loss {train_loss:.4f}, {selection} {metric} {score[0]:.4f}"
              + (" (best)" if improved else ""), file=sys.stderr)
        _log_epoch(live, train_loss, dev, dev_loss)
        if epoch - best["epoch"] >= distill.patience:
            break
    return best, epochs_run


def train_bag_student(task: Task, arch: str, train_path: Path, dev_dir: Path, inputs_dir: Path, out_dir: Path, *,
                      knobs, distill: DistillParams, device: torch.device, seed: int, use_teacher_logits: bool,
                      live_dir: Path | None = None, features_cache: Path | None = None) -> dict:
    """Train the ngram or static student (docs/students.md) as train_student trains the BiLSTM: the same loss
    (distill.alpha, loss, temperature), optimiser, batch size, epochs, patience and dev selection; the inputs
    (the n-gram featurizer, or the static embeddings) come from inputs_dir, made by the `inputs` stage.
    Writes the model files of stages/models/ngram_model.py or static_model.py to out_dir; returns the metrics.
    features_cache: where the n-gram rows are memoised between seeds (ngram_model.CachedFeatures); None: none."""
    start = time.perf_counter()
    seed_everything(seed)
    if hasattr(knobs, "distill_overrides"):  # the arch's own optimiser and objective (ngram.optimizer, ngram.alpha, …)
        distill = distill.model_copy(update=knobs.distill_overrides())
    alpha = distill.alpha if use_teacher_logits else 1.0
    train_table = _read_train(train_path, task, use_teacher_logits)
    if alpha == 1 and not (train_table.labels >= 0).any():
        raise StageError(f"{train_path}: no row has a hard label, so cross-entropy (alpha=1) has nothing to learn")
    eval_tables = {split: _read_eval(dev_dir, split, task) for split in task.eval_splits}
    ngram_rows = None
    if arch == "ngram":
        from stages.models.ngram_model import FEATURES_FILE, CachedFeatures

        ngram_rows = CachedFeatures(Path(inputs_dir) / FEATURES_FILE, features_cache)
    data = {"x": _bag_rows(arch, train_table, inputs_dir, knobs, ngram_rows), "eval_tables": eval_tables,
            "x_evals": {split: _bag_rows(arch, table, inputs_dir, knobs, ngram_rows)
                        for split, table in eval_tables.items()},
            "targets": {"labels": torch.from_numpy(train_table.labels).to(device),
                        "teacher": torch.from_numpy(train_table.logits).to(device)
                        if train_table.logits is not None else None}}
    model = _bag_model(arch, data["x"].shape[1], task, knobs, distill).to(device)
    batch_size = distill.batch_size or task.student_batch_size
    live = _open_live(live_dir)
    try:
        best, epochs_run = _bag_epochs(task, arch, model, data, distill, seed=seed, alpha=alpha,
                                       batch_size=batch_size, device=device, live=live)
    finally:
        if live is not None:
            live.end()
    model.load_state_dict(best["state"])
    config = {"task": task.name, "num_labels": task.num_labels, "label_names": list(task.label_names),
              "pair": task.is_pair, "knobs": knobs.model_dump(),
              "max_length": knobs.max_chars if arch == "ngram" else knobs.max_length}
    embeddings = _save_bag(arch, model, inputs_dir, out_dir, config)
    head = sum(p.numel() for p in model.parameters())
    return {**best["dev"], "params_all": int(head + embeddings), "params_without_embeddings": int(head),
            "best_epoch": best["epoch"], "epochs_run": epochs_run,
            "train_seconds": round(time.perf_counter() - start, 1), "train_rows": len(train_table.labels),
            "train_rows_with_label": int((train_table.labels >= 0).sum()),
            "vocab_size": int(data["x"].shape[1]) if arch == "ngram" else None, "embedding_coverage": None,
            "alpha": alpha, "loss": distill.loss if alpha < 1 else "ce", "batch_size": batch_size,
            "device": str(device), "arch": arch}
