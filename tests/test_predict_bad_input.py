"""`predict` on bad input (docs/reliability.md): bytes that are not UTF-8 on stdin, in a file or in an argument,
empty texts, malformed pairs, a corrupt export config.json. A bad line gets a per-line error in its place; the
other lines are answered; the exit status is 1; never a traceback. Torch and ONNX, text and --json."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from typer.testing import CliRunner

from stages.cli import app
from stages.errors import StageError
from stages.export import export_student
from stages.predict import answer, read_lines
from stages.params import DistillParams, EvaluateParams, StudentParams
from stages.student import train_student
from stages.models.onnx_student import OnnxStudent
from stages.data.tasks import get_task
from tests.conftest import REPO
from tests.test_export import _report
from tests.test_student import CPU, SMALL, paraphrase_rows, sentiment_rows, write_raw

RANDOM_BYTES = bytes(range(256)) * 4 + b"\n\xff\xfe a line \xc3\x28 here\n"  # every byte value, invalid UTF-8


def _tiny(task_name: str, root: Path) -> Path:
    """A tiny student (random embeddings, one epoch on 40 rows): only its plumbing is under test."""
    task = get_task(task_name)
    rows = (lambda n, s: {**paraphrase_rows(n, seed=s), "idx": list(range(n))}) if task.is_pair else sentiment_rows
    write_raw(root / "raw" / "train.parquet", rows(40, 1))
    write_raw(root / "raw" / "dev.parquet", rows(20, 2))
    train_student(task, root / "raw" / "train.parquet", root / "raw", root / "student",
                  student=StudentParams(**SMALL, embeddings="random", embedding_mode="rand"),
                  distill=DistillParams(batch_size=10, epochs=1), device=CPU, seed=3, use_teacher_logits=False)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny rt student (PyTorch) and its ONNX export, and a tiny pair student (mrpc)."""
    root = _tiny("rt", tmp_path_factory.mktemp("rt"))
    export_student(get_task("rt"), root / "student", root / "raw", root / "export", seed=3,
                   report=_report(get_task("rt"), 3, 0.8), teacher={"model": "m", "dev": {"accuracy": 0.9}},
                   data={"splits": {}}, params=EvaluateParams(batch_size=16, throughput_sentences=10))
    pair = _tiny("mrpc", tmp_path_factory.mktemp("mrpc"))
    return {"torch": root / "student", "onnx": root / "export", "pair": pair / "student"}


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


def predict(*args: str | bytes, stdin: bytes = b"") -> Ran:
    """The CLI in this process (fast): argv as Python hands it over (an invalid byte becomes a lone surrogate),
    stdin as bytes. A StageError is what main() prints as one line; any other exception fails the test."""
    argv = [a.decode("utf-8", "surrogateescape") if isinstance(a, bytes) else a for a in args]
    result = CliRunner().invoke(app, ["predict", *argv], input=stdin)
    if result.exception is not None and not isinstance(result.exception, (StageError, SystemExit)):
        raise result.exception
    error = f"error: {result.exception}\n" if isinstance(result.exception, StageError) else ""
    return Ran(1 if error else result.exit_code, result.stdout_bytes, error.encode())


def predict_process(*args: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in its own process: bytes in, bytes out."""
    argv = [sys.executable.encode(), b"-m", b"stages", b"predict",
            *[a if isinstance(a, bytes) else a.encode() for a in args]]
    return subprocess.run(argv, input=stdin, capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_real_process_answers_random_bytes_without_a_traceback(models):
    stdin = b"a good film\n" + RANDOM_BYTES + b"\nbad bad\n"
    result = predict_process("--backend", "onnx", "--model", str(models["onnx"]), "--file", "-", b"caf\xe9", stdin=stdin)
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    assert result.stderr.decode().startswith("error: ") and len(result.stderr.decode().splitlines()) == 1
    out = result.stdout.decode().splitlines()
    assert out[0] == "ERROR\targument 1: not valid UTF-8 (byte 0xe9 at column 4)"
    assert out[1].endswith("\ta good film") and out[-1].endswith("\tbad bad")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("as_json", [False, True])
def test_random_bytes_on_stdin_get_per_line_errors_and_the_good_lines_answers(models, backend, as_json):
    stdin = b"a good film\n" + RANDOM_BYTES + b"\nbad bad\n"
    result = predict("--backend", backend, "--model", str(models[backend]), "--file", "-",
                     *(["--json"] if as_json else []), stdin=stdin)
    stderr, stdout = result.stderr.decode(), result.stdout.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr
    assert "input(s) refused" in stderr
    out = stdout.splitlines()
    if as_json:
        rows = [json.loads(line) for line in out]
        answered = [r["text"] for r in rows if "label" in r]
        errors = [r for r in rows if "error" in r]
        assert answered[0] == "a good film" and answered[-1] == "bad bad"
        assert errors and all(r["input"].startswith("line ") and "not valid UTF-8" in r["error"] for r in errors)
    else:
        assert out[0].endswith("\ta good film") and out[-1].endswith("\tbad bad")
        assert any(line.startswith("ERROR\tline ") and "not valid UTF-8" in line for line in out)


def test_the_error_names_the_line_and_the_byte(models):
    result = predict("--model", str(models["torch"]), "--file", "-", "--json", stdin=b"fine\n\nok \xe9t\xe9\nyes\n")
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert rows[1] == {"input": "line 3", "error": "line 3: not valid UTF-8 (byte 0xe9 at column 4); "
                                                   "the line is skipped"}
    assert [r.get("text") for r in rows] == ["fine", None, "yes"]  # line 2 was blank: skipped, as training does


def test_a_binary_file_is_answered_line_by_line_without_a_traceback(models, tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(RANDOM_BYTES)
    result = predict("--backend", "onnx", "--model", str(models["onnx"]), "--file", str(binary))
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert b"not valid UTF-8" in result.stdout


def test_an_argument_with_an_invalid_byte_and_an_empty_argument_are_refused(models):
    result = predict("--model", str(models["torch"]), "--json", "fine film", b"caf\xe9", "   ", "good")
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert [r.get("text") for r in rows] == ["fine film", None, None, "good"]
    assert rows[1]["error"] == "argument 2: not valid UTF-8 (byte 0xe9 at column 4)"
    assert rows[2]["error"] == "argument 3: empty text (nothing to classify)"


def test_a_pair_line_without_one_tab_is_refused_alone(models):
    result = predict("--model", str(models["pair"]), "--json", "--file", "-",
                     stdin=b"a b\tc d\nno tab here\nx\ty\tz\ne\tf\n")
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r.get("text") for r in rows] == ["a b\tc d", None, None, "e\tf"]
    assert rows[1]["error"] == "line 2: this student classifies sentence pairs: expected 'first<TAB>second'"


def test_only_good_input_exits_zero(models):
    result = predict("--backend", "onnx", "--model", str(models["onnx"]), "--file", "-", stdin=b"\xef\xbb\xbfgood\n")
    assert result.returncode == 0 and result.stdout.decode().endswith("\tgood\n")  # a UTF-8 BOM is not text


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"pair": false}', b'{"label_names": "ab", "pair": 1}'])
def test_a_corrupt_export_config_is_a_clear_error(models, tmp_path, content):
    export = tmp_path / "export"
    export.mkdir()
    for f in models["onnx"].iterdir():
        (export / f.name).write_bytes(f.read_bytes())
    (export / "config.json").write_bytes(content)
    with pytest.raises(StageError, match=r"export/config\.json .*rerun the export stage"):
        OnnxStudent(export)
    result = predict("--backend", "onnx", "--model", str(export), "fine")
    assert result.returncode == 1 and b"config.json" in result.stderr


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode), backend=st.sampled_from(["torch", "onnx"]))
def test_property_any_bytes_get_an_answer_or_an_error_per_line(models, data, backend):
    """A clear StageError or a correct result, never another exception: one row per non-blank line, in order,
    probabilities that sum to 1."""
    items = read_lines(data)
    if not items:
        return
    rows = answer(models[backend], items, backend=backend)
    assert len(rows) == len(items)
    for item, row in zip(items, rows):
        if item.error is not None:
            assert row == {"input": item.where, "error": item.error}
        else:
            assert row["text"] == item.text and row["label"] in ("rotten", "fresh")
            assert abs(sum(row["probabilities"].values()) - 1) < 1e-3
