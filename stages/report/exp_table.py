"""`dvc exp show`, readable: the scores, the knobs an experiment usually turns, and whatever else differs.

Plain `dvc exp show` prints a column for every key of params.yaml and for the hash of every dependency
file (on the default pipeline over a hundred), and DVC has no setting to change that default. This
builds DVC's own column filters instead:

- kept always: every metric of summary.json (report.summary_metrics) and KEY_PARAMS;
- kept when it differs between the rows shown: any other param (`--only-changed`), so
  `dvc exp run -S distill.rho=0.9` shows its rho;
- never: the dependency hashes (file paths), which say only that something changed.
"""

from __future__ import annotations

import re

KEY_PARAMS = ("tasks", "seeds", "teacher.model", "teacher.epochs", "augment.max_examples", "archs",
              "student.embedding_mode", "student.hidden", "distill.loss", "distill.alpha", "distill.epochs")
# summary.json's metrics: scores on the dev split(s), the gain, the student/teacher and speed ratios, seeds, and the
# precisions the teacher trained and labelled at (label.precision `auto` resolves per machine)
SUMMARY_METRICS = (r"(student|baseline|teacher)\.dev_\w+", r"gain\.\w+", "student_of_teacher", "speedup", "seeds",
                   r"precision\.(teacher|label)")
ROW_COLUMNS = ("Experiment", "rev", "typ", "Created", "parent")  # not State/Executor: DVC drops them when empty


def keep_pattern() -> str:
    """Columns always shown; a name DVC prefixes with its file (`params.yaml:seeds`) matches too."""
    names = [*map(re.escape, ROW_COLUMNS), *SUMMARY_METRICS, *map(re.escape, KEY_PARAMS)]
    return rf"^([^:]*:)?({'|'.join(names)})$"


def exp_show_args() -> list[str]:
    """Arguments to `dvc exp show`: the kept columns, the changed ones, no dependency hashes."""
    return ["--only-changed", "--keep", keep_pattern(), "--drop", ".*/"]
