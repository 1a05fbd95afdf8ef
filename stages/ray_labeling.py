"""The `ray` labeling engine (`label.engine: ray`): the teacher's logits computed by a Ray Data actor pool.

Imported only when label.engine is `ray`, so the default pipeline never imports Ray. stages/label.py keeps
its resumable shards, its cache key and its output: this module only turns the shards still to do into
logits, in order. The pending rows go to Ray as one Arrow dataset (through the object store, so worker
nodes need no shared filesystem), stream through `map_batches` to a pool of actors that each load the
teacher once, and come back in row order; every time a shard's worth of rows is back it is handed to
label.py, which writes it atomically, so a killed run keeps what it finished.

The teacher's files travel to the actors through the object store too: a worker node needs the project's
Python environment, not its checkout. An actor on a node that sees the teacher's directory itself (the driver's
own node: a one-machine Ray) reads it from disk instead, once its files' sizes and times match the driver's.

Rows are sorted by length (characters) within each shard before they are cut into blocks, and the logits put
back in row order when the shard is complete: a block then holds rows of similar length, so its batches are
padded as little as the local engine's, which sorts a whole shard by token length.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.errors import StageError

# CPU left to the driver (it streams the logits back and writes the shards) when the actors' size is chosen
# for you. The dataset itself needs no CPU of Ray's: its blocks are cut here and put in the object store, so
# no Ray Data task (each asks for a whole CPU) waits behind the actors; a pool that holds every CPU still runs.
RESERVED_CPUS = 0.5


@dataclass(frozen=True)
class RaySettings:
    address: Optional[str] = None  # None = start a local Ray; "auto" = the running cluster
    workers: int = 1
    cpus_per_worker: Optional[float] = None
    gpus_per_worker: float = 0.0


def cpus_per_worker(settings: RaySettings, node_cpus: list[float]) -> float:
    """The CPUs each actor asks for: as given, or an equal share of the biggest node (of the cluster when it
    is smaller) less RESERVED_CPUS, never under a quarter CPU."""
    if settings.cpus_per_worker is not None:
        return settings.cpus_per_worker
    if not node_cpus:
        raise StageError("label.engine=ray: the Ray cluster reports no CPUs")
    share = min(max(node_cpus), sum(node_cpus) / settings.workers) - RESERVED_CPUS
    return round(max(0.25, share), 2)


class _TeacherActor:
    """One copy of the teacher per actor: rows in (text_a, text_b), float32 logits out, in the same order."""

    def __init__(self, teacher_files, is_pair: bool, batch_size: int, max_length: int, threads: int,
                 precision: str = "fp32"):
        import ray
        import torch

        from stages.models.precision import with_precision
        from stages.models.teacher_model import ResolvedModel, load_for_classification

        torch.set_num_threads(threads)
        local_dir, stamp, files = teacher_files
        if _stamp(local_dir) == stamp:  # this node sees the driver's files: read them there
            self.dir = local_dir
        elif files is None:
            raise RuntimeError(f"the teacher {local_dir} is not on this actor's node, nor in the object store")
        else:
            self.dir = tempfile.mkdtemp(prefix="teacher-")
            files = ray.get(files) if isinstance(files, ray.ObjectRef) else files
            for name, data in files.items():
                path = Path(self.dir) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.tokenizer, model = load_for_classification(ResolvedModel(self.dir, self.dir, "local path"))
        self.model = with_precision(model.to(self.device).eval(), precision, self.device)
        self.is_pair, self.batch_size, self.max_length = is_pair, batch_size, max_length

    def __call__(self, rows: pa.Table) -> pa.Table:
        from stages.models.teacher_model import batch_logits, encode_pairs, length_sorted_batches

        texts_b = rows["text_b"].to_pylist() if self.is_pair else None
        encodings = encode_pairs(self.tokenizer, rows["text_a"].to_pylist(), texts_b, self.max_length)
        batches = length_sorted_batches(encodings, self.batch_size, self.tokenizer.pad_token_id)
        logits = batch_logits(self.model, batches, rows.num_rows, self.device)
        return pa.table({"logits": pa.FixedSizeListArray.from_arrays(logits.ravel(), logits.shape[1])})


def _teacher_files(teacher_dir: Path) -> dict[str, bytes]:
    root = Path(teacher_dir)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stamp(teacher_dir) -> list | None:
    """(name, size, mtime_ns) of each file of a teacher directory: the same on an actor's node as on the
    driver's means the same files (the driver's own node); None when the directory is not there."""
    root = Path(teacher_dir)
    if not root.is_dir():
        return None
    return [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()]


def _teacher_source(teacher_dir: Path, nodes: list[dict]) -> tuple:
    """What the actors get to find the teacher: (the driver's path, its stamp, the files in the object store).
    On a Ray of one node, the driver's, the files are not put in the object store (every actor reads the path)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    one_node = [n["NodeID"] for n in nodes] == [here]
    root = str(Path(teacher_dir).resolve())
    return root, _stamp(root), None if one_node else ray.put(_teacher_files(teacher_dir))


def _length_order(rows: pa.Table) -> np.ndarray:
    """Row indices by text length in characters (both texts of a pair), stable: a proxy for token length."""
    length = pc.fill_null(pc.utf8_length(rows["text_a"]), 0)
    if rows["text_b"].null_count < rows.num_rows:
        length = pc.add(length, pc.fill_null(pc.utf8_length(rows["text_b"]), 0))
    return np.argsort(np.asarray(length), kind="stable")


def _connect(address: Optional[str]) -> bool:
    """ray.init unless the caller already did; True when this call started (and so must stop) Ray."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning",
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = "a local Ray" if address is None else f"the Ray cluster at label.ray_address={address!r}"
        raise StageError(f"label.engine=ray: cannot start or reach {where}: {str(e).splitlines()[0]}") from None
    return True


def _quiet_console() -> None:
    """Ray Data's console handler raised to CRITICAL: its progress lines and the traceback it prints when a task
    fails would bury the stage's own one-line error. Its log file in the Ray session keeps everything."""
    import logging
    import sys

    for handler in logging.getLogger("ray.data").handlers:
        if getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.CRITICAL)


def _stream(dataset) -> Iterator[pa.Table]:
    """The dataset's batches in order; a failed actor or task becomes one StageError line."""
    import ray

    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    except ray.exceptions.RayError as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise StageError(f"label.engine=ray: the Ray job failed ({type(e).__name__}: {first[:300]}); the shards "
                         "finished before it are kept, a rerun labels only the rest") from None


def ray_shard_logits(pending: list[pa.Table], teacher_dir: Path, *, is_pair: bool, batch_size: int,
                     max_length: int, settings: RaySettings, progress=None,
                     precision: str = "fp32") -> Iterator[np.ndarray]:
    """Yield the logits of each table in `pending` (the shards still to label), in order, one array per shard."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise StageError("label.engine=ray needs Ray Data: pip install 'ray[data]' (the project's `ray` extra)") from None

    if not pending:
        return
    started = _connect(settings.address)
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        cpus = cpus_per_worker(settings, [n["Resources"].get("CPU", 0.0) for n in alive])
        threads = max(1, int(np.ceil(cpus)))
        orders = [_length_order(t) for t in pending]  # each shard sorted by length; put back in order below
        shards = [t.select(["text_a", "text_b"]).take(order) for t, order in zip(pending, orders)]
        n = sum(t.num_rows for t in pending)
        # One block = one model batch of batch_size rows of similar length, cut within a shard: a shard's blocks
        # are the same whichever shards are left to do, so a resumed run's logits are those of an uninterrupted one.
        blocks = [t.slice(start, batch_size) for t in shards for start in range(0, t.num_rows, batch_size)]
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # logits must come back in row order
        context.enable_progress_bars = False
        _quiet_console()
        # blocks cut here, not by .repartition(): that is a Ray Data task wanting a whole CPU, which never
        # starts while the actors hold more than half of a 2-core node
        dataset = ray.data.from_arrow(blocks)
        logits = dataset.map_batches(
            _TeacherActor, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,  # a block at a time
            fn_constructor_kwargs=dict(teacher_files=_teacher_source(teacher_dir, alive), is_pair=is_pair,
                                       batch_size=batch_size, max_length=max_length, threads=threads,
                                       precision=precision),
            compute=ray.data.ActorPoolStrategy(size=settings.workers), num_cpus=cpus, num_gpus=settings.gpus_per_worker or None,
            # a dead actor is not restarted nor its block retried: the stage stops with one error line and keeps
            # its finished shards, and a rerun labels the rest (rather than reloading the teacher in a loop)
            max_restarts=0, max_task_retries=0)
        sizes, shard_orders = iter(t.num_rows for t in pending), iter(orders)
        want, parts, have = next(sizes), [], 0
        for batch in _stream(logits):
            chunk = np.asarray(batch["logits"].combine_chunks().flatten()).reshape(batch.num_rows, -1)
            parts.append(chunk)
            have += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
            while want is not None and have >= want:
                done = np.concatenate(parts)
                shard = np.empty_like(done[:want])
                shard[next(shard_orders)] = done[:want]  # back in row order
                yield shard
                rest = done[want:]
                parts, have = ([rest] if len(rest) else []), len(rest)
                want = next(sizes, None)
        if want is not None:
            raise StageError(f"label.engine=ray returned fewer rows than the {n} sent; rerun to resume")
    finally:
        if started:
            ray.shutdown()
