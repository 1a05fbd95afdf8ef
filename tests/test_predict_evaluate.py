import pytest

from stages.errors import StageError
from stages.evaluate import markdown, tradeoff_rows
from stages.predict import split_pairs
from stages.tasks import get_task
from tests.conftest import run_cli


def test_split_pairs():
    assert split_pairs(["a b", "c"], pair=False) == (["a b", "c"], None)
    assert split_pairs(["a\tb", "c d\te"], pair=True) == (["a", "c d"], ["b", "e"])
    with pytest.raises(StageError, match=r"line\(s\) \[2, 3\] are not 'first<TAB>second'"):
        split_pairs(["a\tb", "no tab", "x\t "], pair=True)


def test_predict_without_a_model_is_a_clear_error(tmp_path):
    result = run_cli("predict", "--model", str(tmp_path / "none"), "great film", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not a saved student" in result.stderr
    result = run_cli("predict", "--model", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1 and "nothing to classify" in result.stderr


def _summary():
    model = lambda acc, params, speed: {"dev_matched": {"accuracy": acc}, "dev_mismatched": {"accuracy": acc - 0.01},
                                        "params_all": params, "params_without_embeddings": params // 2,
                                        "disk_mb": 1.0, "sentences_per_s": speed}
    return {"models": {"teacher": model(0.8, 22_000_000, 100.0), "baseline": model(0.6, 1_000_000, 9000.0),
                       "student": model(0.7, 1_000_000, 9000.0)},
            "student_vs_teacher": {}, "student_vs_baseline": {}, "throughput_sentences": 10, "batch_size": 512,
            "device": "cpu", "threads": 2, "references": {}}


def test_summary_table_and_plot_rows_follow_the_task_table():
    task = get_task("mnli")
    text = markdown(_summary(), task)
    assert "| dev_matched accuracy | dev_mismatched accuracy |" in text
    assert "| student | 70.00 | 69.00 | 1.00M | 0.50M | 1.0 | 9,000 |" in text
    rows = tradeoff_rows(_summary(), task)
    assert rows[0] == {"model": "teacher", "accuracy": 0.8, "params_millions": 22.0, "sentences_per_s": 100.0}


def test_reference_names_in_params_match_the_shape_table():
    from typing import get_args

    from stages.evaluate import REFERENCE_SHAPES
    from stages.params import EvaluateParams

    (literal,) = get_args(EvaluateParams.model_fields["reference_architectures"].annotation)
    assert set(get_args(literal)) == set(REFERENCE_SHAPES)


def test_summary_lists_the_timing_yardsticks():
    summary = {**_summary(), "references": {"bert-large": {"weights": "random (timing only)", "params_all": 335_143_938,
                                                           "sentences_per_s": 12.34, "student_speedup": 729.3}}}
    text = markdown(summary, get_task("mnli"))
    assert "| bert-large | 335.14M | 12.3 | 729.3x |" in text
    assert "Timing-only" not in markdown({**_summary(), "references": {}}, get_task("mnli"))
