"""Peak memory of reading a large unlabeled txt file the way the augment stage does.

    python benchmarks/unlabeled_read.py [--lines 5000000] [--dir /tmp]

Writes a txt file of --lines generated sentences (seeded; about 60 bytes a line, a few percent repeated, some
empty), then in a fresh subprocess per step reports the peak RSS (resource.getrusage ru_maxrss) of:
  imports:  the Python process with pyarrow and the stage modules imported, nothing read;
  read:     stages.data.unlabeled.read_unlabeled, the streaming reader (the texts kept as one Arrow column);
  augment:  read + the dedup keys and first occurrences (stages/data/dedup.py) + 20,000 rows taken, what the
            augment stage holds for unlabeled text (it takes only the rows that go into the transfer set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import typer

STEP = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, pyarrow as pa
from stages.data.unlabeled import UnlabeledSpec, read_unlabeled
from stages.data.dedup import first_occurrences, row_keys
step, name = sys.argv[1], sys.argv[2]
start = time.perf_counter()
out = {"step": step}
if step != "imports":
    table, empty = read_unlabeled("bench", UnlabeledSpec(files=[name]), 1)
    out.update(rows=table.num_rows, empty=empty, arrow_bytes=table.nbytes)
    if step == "augment":
        keys = row_keys(table["text_a"])
        keep = np.flatnonzero(first_occurrences(keys))  # augment keeps positions, and takes only the rows it samples
        sample = table.take(pa.array(np.sort(np.random.default_rng(0).choice(keep, 20000, replace=False))))
        out.update(unique=len(keep), sampled=sample.num_rows)
out["seconds"] = round(time.perf_counter() - start, 1)
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""

WORDS = ("the a film movie plot cast story acting director scene score funny dull bright slow long short great "
         "bad good moving tender cold warm script ending twist performance characters music camera").split()


def write_lines(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            lengths = rng.integers(4, 16, m)
            ids = rng.integers(0, len(WORDS), (m, 16))
            lines = [" ".join(WORDS[j] for j in ids[i, :lengths[i]]) for i in range(m)]
            for i in np.flatnonzero(rng.random(m) < 0.01):
                lines[i] = ""
            f.write("\n".join(lines) + "\n")


def main(lines: int = typer.Option(5_000_000), dir: Path = typer.Option(Path(tempfile.gettempdir()))) -> None:
    root = Path(tempfile.mkdtemp(dir=dir))
    external = root / "data/external"
    external.mkdir(parents=True)
    path = external / "big.txt"
    start = time.perf_counter()
    write_lines(path, lines)
    result = {"lines": lines, "file_mib": round(path.stat().st_size / 2**20, 1),
              "write_seconds": round(time.perf_counter() - start, 1), "steps": []}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        for step in ("imports", "read", "augment"):
            done = subprocess.run([sys.executable, "-c", STEP, step, "data/external/big.txt"], cwd=root, env=env,
                                  capture_output=True, text=True, check=True)
            result["steps"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        path.unlink()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
