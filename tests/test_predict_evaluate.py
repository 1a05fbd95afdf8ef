import pytest

from stages.errors import StageError
from stages.report.summary import curve_rows, markdown, summary_metrics, tradeoff_rows
from stages.predict import split_pairs
from stages.data.tasks import get_task
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


def _score(mean, sd=None, n=1, seeds=None):
    return {"n": n, "mean": mean, "sd": sd, "min": mean, "max": mean, "ci95": None if sd is None else [mean - sd, mean + sd],
            "seeds": seeds or {}}


def _report():
    """A report as stages.evaluate builds it, for mnli (two eval splits) and three seeds."""
    splits = ("dev_matched", "dev_mismatched")
    scores = {
        "teacher": {s: {"accuracy": {"mean": 0.8}} for s in splits},
        "baseline": {s: {"accuracy": _score(0.6, 0.01, 3, {1: 0.59, 2: 0.6, 3: 0.61})} for s in splits},
        "student": {s: {"accuracy": _score(0.7, 0.02, 3, {1: 0.68, 2: 0.7, 3: 0.72})} for s in splits},
    }
    gain = {s: {"accuracy": {"mean": 0.1, "sd": 0.01, "ci95": [0.075, 0.125],
                             "paired_t": {"mean_difference": 0.1, "t": 17.3, "p_value": 0.0033}},
                "mcnemar_ensemble": {"a_only": 30, "b_only": 10, "p_value": 0.0022}} for s in splits}
    size = lambda params, speed: {"params_all": params, "params_without_embeddings": params // 2, "disk_mb": 1.0,
                                  "sentences_per_s": speed}
    return {"task": "mnli", "seeds": [1, 2, 3], "scores": scores, "gain": gain,
            "sizes": {"teacher": size(22_000_000, 100.0), "baseline": size(1_000_000, 9000.0),
                      "student": size(1_000_000, 9000.0)},
            "student_vs_teacher": {"accuracy_ratio": 0.875, "speedup": 90.0, "params_ratio": 22.0},
            "throughput_sentences": 10, "batch_size": 512, "device": "cpu", "threads": 2, "references": {}}


def test_summary_table_shows_mean_sd_and_seeds_and_follows_the_task_table():
    task = get_task("mnli")
    text = markdown(_report(), task)
    assert "| dev_matched accuracy | dev_mismatched accuracy |" in text
    assert "| student | 70.00 ± 2.00 (3 seeds) | 70.00 ± 2.00 (3 seeds) | 1.00M | 0.50M | 1.0 | 9,000 |" in text
    assert "| teacher | 80.00 | 80.00 |" in text
    assert "- student dev_matched accuracy: 1: 68.00, 2: 70.00, 3: 72.00 (min 70.00, max 70.00, CI [68.00, 72.00])" in text
    assert "- dev_matched accuracy: +10.00 points, 95% CI [+7.50, +12.50]; paired t-test over seeds p = 0.0033" in text
    assert "student alone right on 30 sentences, the baseline alone on 10; exact McNemar p = 0.0022" in text
    rows = tradeoff_rows(_report(), task)
    assert rows[0] == {"model": "teacher", "accuracy": 0.8, "params_millions": 22.0, "sentences_per_s": 100.0}


def test_summary_metrics_lead_with_the_scores_and_hold_no_params():
    summary = summary_metrics(_report(), get_task("mnli"))
    assert list(summary) == ["student", "baseline", "teacher", "gain", "student_of_teacher", "speedup", "seeds"]
    assert summary["student"] == {"dev_matched_accuracy": 0.7, "dev_matched_accuracy_sd": 0.02,
                                  "dev_mismatched_accuracy": 0.7, "dev_mismatched_accuracy_sd": 0.02}
    assert summary["gain"] == {"points": 10.0, "p_paired_t": 0.0033, "p_mcnemar": 0.0022}
    assert (summary["student_of_teacher"], summary["speedup"], summary["seeds"]) == (0.875, 90.0, 3)


def test_summary_metrics_end_with_the_precisions_that_ran():
    report = {**_report(), "precision": {"teacher": "bf16", "label": "fp32"}}
    summary = summary_metrics(report, get_task("mnli"))
    assert list(summary)[-2:] == ["seeds", "precision"]
    assert summary["precision"] == {"teacher": "bf16", "label": "fp32"}


def test_curves_average_the_seeds_that_reached_each_epoch(tmp_path):
    def curve(kind, seed, values):
        path = tmp_path / kind / f"seed-{seed}" / "plots" / "metrics" / "dev" / "accuracy.tsv"
        path.parent.mkdir(parents=True)
        path.write_text("step\taccuracy\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))
        return path.parents[3]

    runs = {"student": [curve("student", 1, [0.5, 0.7, 0.8]), curve("student", 2, [0.6, 0.8])],
            "baseline": [curve("baseline", 1, [0.4, 0.5])]}
    assert curve_rows(runs, get_task("rt")) == [{"epoch": 1, "baseline": 0.4, "student": 0.55},
                                                 {"epoch": 2, "baseline": 0.5, "student": 0.75},
                                                 {"epoch": 3, "student": 0.8}]


def test_reference_names_in_params_match_the_shape_table():
    from typing import get_args

    from stages.evaluate import REFERENCE_SHAPES
    from stages.params import EvaluateParams

    (literal,) = get_args(EvaluateParams.model_fields["reference_architectures"].annotation)
    assert set(get_args(literal)) == set(REFERENCE_SHAPES)


def test_summary_lists_the_timing_yardsticks():
    report = {**_report(), "references": {"bert-large": {"weights": "random (timing only)", "params_all": 335_143_938,
                                                         "sentences_per_s": 12.34, "student_speedup": 729.3}}}
    text = markdown(report, get_task("mnli"))
    assert "| bert-large | 335.14M | 12.3 | 729.3x |" in text
    assert "Timing-only" not in markdown(_report(), get_task("mnli"))
