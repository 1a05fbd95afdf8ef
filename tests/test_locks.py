"""Two runs of one task at once (docs/reliability.md): the second is refused with the holder's pid and command,
and the first's cache is untouched."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.data.locks import RunLock
from stages.errors import StageError
from stages.data.tasks import get_task
from stages.label import label
from stages.models.checkpoint import EpochCheckpoint
from tests.conftest import REPO

HOLD = ("import sys, time; from stages.data.locks import RunLock; "
        "lock = RunLock(sys.argv[1], sys.argv[2], 'x'); print('held', flush=True); time.sleep(60)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of (root, name) until the test ends."""
    started = []

    def start(root: Path, name: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), name], cwd=REPO, stdout=subprocess.PIPE,
                                text=True, env={"PYTHONPATH": str(REPO)})
        assert proc.stdout.readline().strip() == "held"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_second_label_run_of_one_task_is_refused_and_the_cache_kept(tmp_path, holder):
    cache_root = tmp_path / "cache"
    shard = cache_root / f"rt-{'a' * 20}" / "shard-00000-of-00002.parquet"  # the first run's finished work
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"finished shard")
    proc = holder(cache_root, "rt")
    with pytest.raises(StageError, match=rf"label rt is already running \(pid {proc.pid}: .* holds .*rt\.lock\)"):
        label(get_task("rt"), tmp_path / "transfer.parquet", tmp_path / "teacher", tmp_path / "out.parquet",
              device="cpu", cache_root=cache_root)
    assert shard.read_bytes() == b"finished shard"
    proc.kill()
    proc.wait()
    # the holder is gone (killed: no cleanup ran): the kernel dropped its lock, the next run goes on
    with pytest.raises(StageError, match=r"missing input file .*transfer\.parquet"):
        label(get_task("rt"), tmp_path / "transfer.parquet", tmp_path / "teacher", tmp_path / "out.parquet",
              device="cpu", cache_root=cache_root)


def test_a_second_student_run_of_one_seed_is_refused_and_its_checkpoint_kept(tmp_path, holder):
    root = tmp_path / "student"
    state = root / f"rt-student-seed-1-{'b' * 20}" / "epoch.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"epoch 3")
    proc = holder(root, "rt-student-seed-1")
    with pytest.raises(StageError, match=rf"the rt-student-seed-1 run is already running \(pid {proc.pid}: "):
        EpochCheckpoint(root, "rt-student-seed-1", "c" * 20)  # other inputs: would delete the state
    assert state.read_bytes() == b"epoch 3"
    other = EpochCheckpoint(root, "rt-student-seed-2", "c" * 20)  # another seed is another run
    assert other.lock.path.name == "rt-student-seed-2.lock"


def test_the_lock_is_released_when_its_holder_is_done(tmp_path):
    with RunLock(tmp_path, "rt", "label rt") as lock:
        assert "pid" in lock.path.read_text()
        with pytest.raises(StageError, match="label rt is already running"):
            RunLock(tmp_path, "rt", "label rt")
    assert not lock.path.exists()  # a finished run leaves no lock file
    RunLock(tmp_path, "rt", "label rt").release()
