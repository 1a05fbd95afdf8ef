"""Beyond one machine (docs/scale-out.md): labeling on Ray, the teacher on two processes, an S3 remote shared
through push / fresh clone / pull, and a sweep on DVC's queue run from that clone. All on this machine: Ray is
a local instance started here, the S3 server is moto's on 127.0.0.1; nothing reaches any other address."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import stages.label as label_module
from stages.data.io import LABELED_SCHEMA, read_parquet
from stages.data.tasks import get_task
from stages.label import label
from stages.models.teacher_model import resolve_model
from stages.params import TeacherParams
from stages.teacher import train_teacher
from tests.conftest import REPO, run_cli, synthetic_raw, write_params
from tests.test_label import write_transfer
from tests.tiny_project import copy_built, ran, run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher3(tmp_path_factory):
    """An untrained 3-way head on the packaged encoder: a real teacher as far as labeling goes."""
    path = tmp_path_factory.mktemp("teacher3")
    source = resolve_model("all-MiniLM-L6-v2").location
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=3).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


def test_default_label_run_never_imports_ray(tmp_path, teacher3):
    write_transfer(tmp_path / "transfer.parquet", n=12, pair=True)
    script = (
        "import sys, torch; from pathlib import Path; from stages.label import label; "
        "from stages.data.tasks import get_task; "
        f"label(get_task('mnli'), Path('{tmp_path}/transfer.parquet'), Path('{teacher3}'), "
        f"Path('{tmp_path}/out.parquet'), device=torch.device('cpu'), cache_root=Path('{tmp_path}/cache')); "
        "print('ray' in sys.modules, any(m.startswith('ray.') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False False"
    assert read_parquet(tmp_path / "out.parquet", LABELED_SCHEMA).num_rows == 12


@pytest.mark.slow
def test_ray_engine_equals_local_and_resumes_a_killed_run(tmp_path, teacher3, monkeypatch):
    """Same rows, same logits (max |diff| <= 1e-4), same schema and order; a run killed after its first shard
    is finished by the ray engine, which labels only the shards left."""
    ray = pytest.importorskip("ray")
    from stages.ray_labeling import RaySettings

    task = get_task("mnli")
    transfer = write_transfer(tmp_path / "transfer.parquet", n=60, pair=True)
    args = dict(device=CPU, batch_size=7, shard_rows=16, cache_root=tmp_path / "cache")
    local = label(task, tmp_path / "transfer.parquet", teacher3, tmp_path / "local.parquet", **args)
    assert local["engine"] == "local" and local["rows_labeled_now"] == 60

    real, calls = label_module.batch_logits, []

    def dies_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(label_module, "batch_logits", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        label(task, tmp_path / "transfer.parquet", teacher3, tmp_path / "ray.parquet", **args)
    monkeypatch.setattr(label_module, "batch_logits", real)
    assert not (tmp_path / "ray.parquet").exists()  # nothing that looks complete

    def stuck(*_):
        raise TimeoutError("the ray engine made no progress in 180 s (a Ray Data task waiting for a CPU?)")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(180)
    try:  # two actors holding both CPUs (a pool that leaves no CPU free once hung): shards come back in order
        resumed = label(task, tmp_path / "transfer.parquet", teacher3, tmp_path / "ray.parquet", **args,
                        ray=RaySettings(workers=2, cpus_per_worker=1.0))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        ray.shutdown()
    assert resumed["engine"] == "ray"
    assert (resumed["rows_reused_from_cache"], resumed["rows_labeled_now"]) == (16, 44)
    a = read_parquet(tmp_path / "local.parquet", LABELED_SCHEMA)
    b = read_parquet(tmp_path / "ray.parquet", LABELED_SCHEMA)
    assert b.schema.equals(a.schema) and b.drop_columns(["logits"]).equals(a.drop_columns(["logits"]))
    assert b.select(["text_a", "source_idx"]).equals(transfer.select(["text_a", "source_idx"]))
    diff = np.abs(np.array(a["logits"].to_pylist()) - np.array(b["logits"].to_pylist())).max()
    assert diff <= 1e-4
    assert not any((tmp_path / "cache").iterdir())


def test_ray_workers_size_leaves_cpu_for_the_driver():
    from stages.ray_labeling import RaySettings, cpus_per_worker

    assert cpus_per_worker(RaySettings(workers=1), [2.0]) == 1.5  # one 2-core node: half a CPU stays free
    assert cpus_per_worker(RaySettings(workers=2), [2.0]) == 0.5
    assert cpus_per_worker(RaySettings(workers=8), [2.0]) == 0.25  # never below a quarter CPU
    assert cpus_per_worker(RaySettings(workers=2), [16.0, 16.0]) == 15.5  # one actor per node
    assert cpus_per_worker(RaySettings(workers=1, cpus_per_worker=3.0), [2.0]) == 3.0  # as given


@pytest.mark.slow
def test_teacher_on_two_processes_trains_saves_one_model_and_scores_like_one(tmp_path):
    """teacher.processes=2 relaunches the stage under torch.distributed.run (gloo on CPU) with the same
    global batch. Tolerance: the two runs see the same examples in a different order, so they differ like
    two seeds do; on 16 dev rows of a 24-example training set one example is 0.0625, and we allow two."""
    task = get_task("sst2")
    synthetic_raw(tmp_path / "data/raw/sst2", task, n_train=24, n_dev=16)
    teacher = {"epochs": 1, "batch_size": 8, "max_length": 24, "max_train_examples": 24, "evals_per_epoch": 1}
    write_params(tmp_path / "params.yaml", tasks=["sst2"], device="cpu", teacher={**teacher, "processes": 2})
    result = run_cli("teacher", "--task", "sst2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "metrics/sst2/teacher.json").read_text())
    assert two["processes"] == 2 and two["train_examples"] == 24
    assert sorted(p.name for p in (tmp_path / "models/teacher").iterdir()) == ["sst2"]  # one model, no leftovers
    one = train_teacher(task, tmp_path / "data/raw/sst2", tmp_path / "one", params=TeacherParams(**teacher),
                        device=CPU, seed=42)
    assert one["processes"] == 1 and one["best_step"] == two["best_step"]  # same global batch: same steps
    assert abs(two["dev"]["accuracy"] - one["dev"]["accuracy"]) <= 2 / 16
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "models/teacher/sst2")
    assert reloaded.config.num_labels == 2

    bad = write_params(tmp_path / "bad.yaml", tasks=["sst2"], device="cpu", teacher={**teacher, "processes": 3})
    failed = run_cli("teacher", "--task", "sst2", "--params", str(bad), cwd=tmp_path)
    assert failed.returncode == 1 and "teacher.batch_size=8 must be a multiple of teacher.processes=3" in failed.stderr


# --- a shared S3 remote and a queued sweep, from a fresh clone ------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


@pytest.fixture(scope="module")
def s3_server():
    moto_server = pytest.importorskip("moto.server")
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="team")
        yield endpoint
    finally:
        server.stop()


def _tracked_files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for top in ("data", "models")
            for p in sorted((repo / top).rglob("*")) if p.is_file() and "cache" not in p.parts}


@pytest.mark.slow
def test_s3_remote_fresh_clone_and_queued_sweep(tmp_path, tiny_project, s3_server, monkeypatch):
    """The tiny project's results pushed to an S3 remote, pulled byte-identical into a fresh clone, and a sweep
    run from that clone on DVC's queue. Its glue_dir is relative (`../glue`, as `../shared/glue` is in the
    README): it must resolve from the clone and from the queue's copies."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    repo, clone = copy_built(tiny_project, tmp_path), tmp_path / "clone"
    run(["dvc", "remote", "add", "-d", "team", "s3://team/store"], repo)
    run(["dvc", "remote", "modify", "team", "endpointurl", s3_server], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the team's remote"], repo)
    run(["dvc", "push"], repo)

    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    run(["dvc", "pull"], clone)
    pushed, pulled = _tracked_files(repo), _tracked_files(clone)
    assert "models/teacher/sst2/model.safetensors" in pulled and "data/labeled/sst2.parquet" in pulled
    assert pulled == pushed  # byte-identical
    assert "up to date" in run(["dvc", "status"], clone)
    assert ran(run(["dvc", "repro"], clone)) == set()

    # a sweep on DVC's queue, run from the clone: each experiment in its own temporary copy under .dvc/tmp/exps,
    # where only what depends on the student reruns (the relative glue_dir in such a copy: the test below)
    run(["dvc", "exp", "run", "--queue", "-S", "student.hidden=150,300", "-S", "seeds=[1]", "evaluate@sst2"], clone)
    run(["dvc", "queue", "start", "-j", "2"], clone)
    deadline = time.monotonic() + 300
    while True:
        status = run(["dvc", "queue", "status"], clone)
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, f"the queue did not finish in 300 s:\n{status}"
        time.sleep(3)
    tasks = [line.split()[0] for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
    assert len(tasks) == 2 and "Failed" not in status, status
    for task_id in tasks:
        stages = ran(run(["dvc", "queue", "logs", task_id], clone))
        assert {"student@sst2-bilstm-1", "baseline@sst2-bilstm-1", "evaluate@sst2"} <= stages, stages
        assert not stages & {"download@sst2", "teacher@sst2", "augment@sst2", "label@sst2"}, stages
        assert not any(stage.endswith("@nli") or "@nli-" in stage for stage in stages), stages  # the target's task only
    shown = list(csv.DictReader(io.StringIO(run([sys.executable, "-m", "stages", "show", "--csv"], clone))))
    experiments = [row for row in shown if row["Experiment"]]
    assert sorted(row["student.hidden"] for row in experiments) == ["150", "300"], shown
    for row in experiments:  # each queued experiment ran to its summary
        assert row["State"] == "Success" and 0 <= float(row["metrics/sst2/summary.json:student.dev_accuracy"]) <= 1


def test_a_relative_glue_dir_resolves_from_the_project_root_in_a_queued_experiment(tmp_path, monkeypatch):
    from stages.paths import outside_dir

    copy = tmp_path / "project/.dvc/tmp/exps/tmpab12cd"  # where DVC's queue runs an experiment's stages
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert Path(outside_dir("../shared/glue")) == tmp_path / "project/../shared/glue"
    assert outside_dir("/data/glue") == "/data/glue" and outside_dir(None) is None
    monkeypatch.chdir(tmp_path / "project")
    assert outside_dir("../shared/glue") == "../shared/glue"  # the project itself: as written
