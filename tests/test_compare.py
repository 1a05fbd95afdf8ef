"""The compare stage's parts on known inputs: the frontier, the ship rule, the student-vs-alternative tests, and the
alternatives without a teacher (TF-IDF and static embeddings with logistic regression), including the errors that
name what an alternative lacks. The stage itself runs in the tiny project (tests/test_pipeline.py)."""

import math
import shutil
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from stages.compare import pareto_frontier, ship_choice, student_versus
from stages.data.tasks import get_task
from stages.errors import StageError
from stages.models import alternatives
from tests.conftest import SINGLE_WORDS, synthetic_raw


def test_the_frontier_keeps_only_models_nothing_beats_on_both_axes():
    points = {"teacher": (100, 0.80), "tfidf": (1000, 0.78), "student": (5000, 0.76), "slow": (900, 0.77),
              "same-speed-worse": (5000, 0.70), "fastest": (20000, 0.60), "twin": (1000, 0.78)}
    # `slow` is beaten by tfidf on both; `same-speed-worse` by student; two identical points both stay
    assert pareto_frontier(points) == {"teacher", "tfidf", "twin", "student", "fastest"}


def _row(name, kind, speed, dev, arch="bilstm"):
    return {"name": name, "kind": kind, "arch": arch, "sentences_per_s": speed, "dev": dev}


def test_ship_rule_takes_the_best_student_fast_enough_else_the_fastest():
    rows = [_row("teacher-onnx-int8", "teacher", 100, 0.80), _row("tfidf-lr", "alternative", 3000, 0.79),
            _row("student-bilstm", "student", 5000, 0.76), _row("student-cnn", "student", 900, 0.78, "cnn"),
            _row("student-ngram", "student", 40000, 0.75, "ngram")]
    choice = ship_choice(rows, 10)
    assert (choice["name"], choice["arch"], choice["rule_met"]) == ("student-bilstm", "bilstm", True)
    assert choice["eligible"] == ["student-bilstm", "student-ngram"]  # cnn is 9x the teacher: below the floor
    assert ship_choice(rows, 8)["name"] == "student-cnn"  # now fast enough, and the best on dev
    slow = ship_choice(rows, 1000)  # nobody is 1000x: the fastest ships, and the choice says the rule failed
    assert (slow["name"], slow["rule_met"], slow["eligible"]) == ("student-ngram", False, [])
    with pytest.raises(StageError, match="no distilled student"):
        ship_choice(rows[:2], 10)


def _model(name, scores: dict, predictions: dict):
    """A compared model as student_versus reads it: per-seed dev accuracy and per-seed class probabilities."""
    eye = np.eye(2)
    return SimpleNamespace(name=name, label=name, runtime="test",
                           metrics={"dev": {s: {"accuracy": v} for s, v in scores.items()}},
                           proba={"dev": {s: eye[np.array(p)] for s, p in predictions.items()}})


def test_student_against_a_deterministic_alternative_one_sample_t_and_mcnemar_of_the_vote():
    task = get_task("rt")
    labels = np.array([1, 1, 1, 1, 0, 0])
    student = _model("student-bilstm", {1: 0.80, 2: 0.82, 3: 0.84},
                     {1: [1, 1, 1, 1, 0, 1], 2: [1, 1, 1, 0, 0, 0], 3: [1, 1, 0, 1, 0, 1]})
    tfidf = _model("tfidf-lr", {None: 0.78}, {None: [0, 0, 0, 1, 0, 0]})
    result = student_versus(task, student, tfidf, labels, "dev")
    t = 2 * math.sqrt(3)
    assert result["points"] == 4.0 and result["test"] == "one-sample t over the student's seeds"
    assert result["one_sample_t"]["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    # the vote: [1, 1, 1, 1, 0, 1]: right where tfidf is wrong on rows 0-2; tfidf alone right on row 5
    assert (result["mcnemar_ensemble"]["a_only"], result["mcnemar_ensemble"]["b_only"]) == (3, 1)
    assert result["mcnemar_ensemble"]["p_value"] == pytest.approx(0.625)  # 2 * P(X <= 1 | 4, 1/2) = 2 * 5/16
    assert result["p_value"] == pytest.approx(0.625) and result["significant"] is False  # the larger p decides


def test_student_against_a_seeded_alternative_paired_t():
    task = get_task("rt")
    labels = np.array([1, 0])
    student = _model("student-bilstm", {1: 0.91, 2: 0.92, 3: 0.93}, {s: [1, 0] for s in (1, 2, 3)})
    baseline = _model("baseline-bilstm", {1: 0.80, 2: 0.80, 3: 0.81}, {s: [0, 0] for s in (1, 2, 3)})
    result = student_versus(task, student, baseline, labels, "dev")
    assert result["points"] == pytest.approx(11.67) and result["test"] == "paired t over seeds"
    # differences 0.11, 0.12, 0.12: mean 0.11667, sd 0.005774, t = 35.0 with 2 degrees of freedom
    assert result["paired_t"]["t"] == pytest.approx(35.0)
    assert result["p_value"] == pytest.approx(1 - 35 / math.sqrt(35 ** 2 + 2))
    assert result["significant"] is True
    other_seeds = _model("baseline-bilstm", {1: 0.8, 4: 0.8}, {1: [0, 0], 4: [0, 0]})
    with pytest.raises(StageError, match="seeds"):
        student_versus(task, student, other_seeds, labels, "dev")


def _static_dir(path, words):
    """A Model2Vec-format directory: a word-level tokenizer and one vector per word (first axis: sentiment)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path.mkdir()
    tokenizer.save(str(path / "tokenizer.json"))
    vectors = np.random.default_rng(0).normal(0, 0.1, (len(vocab), 4)).astype(np.float32)
    for w, i in vocab.items():
        vectors[i, 0] = 1.0 if w in SINGLE_WORDS[1] else -1.0 if w in SINGLE_WORDS[0] else 0.0
    save_file({"embeddings": vectors}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("name", ["tfidf", "static"])
def test_alternatives_learn_a_separable_task_deterministically_and_reload(tmp_path, name):
    task = get_task("rt")
    raw = synthetic_raw(tmp_path / "raw", task)
    train, dev = (pq.read_table(raw / f"{s}.parquet").to_pydict() for s in ("train", "dev"))
    words = sorted({w for text in train["text_a"] + dev["text_a"] for w in text.split()})
    features = (lambda: alternatives.TfidfFeatures((1, 2), (2, 5))) if name == "tfidf" else (
        lambda: alternatives.StaticFeatures(str(_static_dir(tmp_path / f"static-{len(list(tmp_path.iterdir()))}",
                                                            words))))
    fits = [alternatives.fit_logistic(features(), train["text_a"], None, np.array(train["label"]), c=10.0,
                                      max_iter=1000) for _ in range(2)]
    proba = [fit.predict_proba(dev["text_a"], None, batch_size=5) for fit in fits]
    assert (proba[0].argmax(-1) == np.array(dev["label"])).all()  # the sentiment word decides, and it is learnt
    np.testing.assert_array_equal(proba[0], proba[1])  # no seed: two fits are the same model
    alternatives.save_sklearn(fits[0], tmp_path / "model.joblib")
    reloaded = alternatives.load_sklearn(str(tmp_path / "model.joblib")).predict_proba(dev["text_a"])
    np.testing.assert_allclose(reloaded, proba[0], atol=1e-6)  # float32 sums over other batches: last-bit noise


def test_pair_features_put_both_sentences_and_their_overlap_side_by_side(tmp_path):
    rows = [("a good film", "a good movie"), ("bad", "fine plot")]
    tfidf = alternatives.TfidfFeatures((1, 1), (3, 3), pair=True).fit(rows)
    single = tfidf.union_.transform(["a good film"]).shape[1]
    assert tfidf.transform(rows).shape == (2, 3 * single)
    static = alternatives.StaticFeatures(str(_static_dir(tmp_path / "static", ["good", "bad", "film"])), pair=True)
    features = static.fit(rows).transform(rows)
    assert features.shape == (2, 16)  # [u, v, u*v, |u-v|] of 4-d vectors
    np.testing.assert_allclose(features[:, 12:], np.abs(features[:, :4] - features[:, 4:8]))


def test_a_missing_or_incomplete_static_directory_is_named(tmp_path):
    with pytest.raises(StageError, match=f"static embeddings not found at {tmp_path / 'none'}"):
        alternatives.load_static(tmp_path / "none")
    incomplete = _static_dir(tmp_path / "static", ["good"])
    (incomplete / "tokenizer.json").unlink()
    with pytest.raises(StageError, match=r"lack tokenizer.json \(the teacher vocabulary\);"):
        alternatives.load_static(incomplete)
    (incomplete / "model.safetensors").unlink()
    with pytest.raises(StageError, match=r"lack tokenizer.json \(the teacher vocabulary\) and embeddings.npy or "
                                         r"model.safetensors \(the vectors\)"):
        alternatives.load_static(incomplete)
    np.save(incomplete / "embeddings.npy", np.ones((3, 2), np.float16))  # the static student's own format
    (incomplete / "tokenizer.json").write_text("{}")
    with pytest.raises(StageError, match="not readable"):
        alternatives.load_static(incomplete)
    shutil.copy(_static_dir(tmp_path / "whole", ["good"]) / "tokenizer.json", incomplete / "tokenizer.json")
    tokenizer, vectors = alternatives.load_static(incomplete)  # float16 .npy in, float32 out
    assert vectors.dtype == np.float32 and vectors.shape == (3, 2) and tokenizer.get_vocab_size() == 2


def _fake_clock(monkeypatch):
    """stages.models.timing's clock, moved on by one second per call of the timed model: exact speeds."""
    from stages.models import timing

    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    calls = []

    def run(texts_a, texts_b, batch_size):
        calls.append(len(texts_a))
        now[0] += 1.0

    return timing, run, calls


def test_timing_runs_whole_batches_and_stops_a_slow_model_after_the_cap(monkeypatch):
    timing, run, calls = _fake_clock(monkeypatch)
    texts = [f"s{i}" for i in range(10)]
    speed = timing.measure_speed(run, texts, None, batch_size=3, latency_n=2, max_seconds=2.5)
    # warm-up (8 texts), then batches of 3, 3, 3: the third ends at 3 s >= 2.5 and the fourth (1 text) never runs
    assert calls == [8, 3, 3, 3, 1, 1]
    assert speed["sentences_timed"] == 9 and speed["sentences_per_s"] == 3.0
    assert speed["latency_ms_p50"] == 1000.0 and speed["latency_ms_p95"] == 1000.0
    calls.clear()
    uncapped = timing.measure_speed(run, texts, None, batch_size=3, latency_n=1)
    assert calls == [8, 3, 3, 3, 1, 1] and uncapped["sentences_timed"] == 10 and uncapped["sentences_per_s"] == 2.5
    calls.clear()
    one_batch = timing.measure_speed(run, texts, None, batch_size=4, latency_n=1, max_seconds=0.1)
    assert calls == [8, 4, 1] and one_batch["sentences_timed"] == 4  # at least one batch, however slow


# ------------------------------------------------------------------ the stage, in the tiny project (session fixture)

ARCHS = ("bilstm", "ngram", "static")  # tests/tiny_project.py's
COMPARED = {"tfidf-lr": "alternative", "static-lr": "alternative", **{f"baseline-{a}": "alternative" for a in ARCHS},
            **{f"student-{a}": "student" for a in ARCHS}, "teacher-onnx-fp32": "teacher", "teacher-onnx-int8": "teacher"}
FITTED = {"tfidf-lr", "static-lr"}  # the regressions compare fits itself (scikit-learn)
ROW_KEYS = {"name", "kind", "arch", "runtime", "label", "seeds", "dev", "sentences_per_s", "sentences_timed", "latency_ms_p50",
            "latency_ms_p95", "disk_mb", "peak_rss_mb", "on_frontier", "fit_seconds", "scores", "speedup_vs_teacher_int8",
            "shipped"}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sst2", "nli"])
def test_compare_writes_every_model_the_tests_the_choice_and_the_chart(tiny_project, task):
    import json

    result = json.loads((tiny_project / f"metrics/{task}/compare.json").read_text())
    rows = {row["name"]: row for row in result["models"]}
    assert {name: row["kind"] for name, row in rows.items()} == COMPARED
    metrics = ["accuracy"] if task == "sst2" else ["accuracy", "macro_f1"]
    for row in rows.values():
        assert set(row) == ROW_KEYS
        assert row["runtime"] == ("sklearn" if row["name"] in FITTED else "onnxruntime")
        assert row["sentences_per_s"] > 0 and row["latency_ms_p50"] > 0 and row["disk_mb"] > 0
        assert row["sentences_timed"] in (8, 16)  # whole batches of 8 out of 16 (the tiny models finish in time)
        assert row["peak_rss_mb"] is None  # peak_rss: false in the tiny project (measured in the test below)
        assert (row["fit_seconds"] is not None) == (row["name"] in FITTED)  # fitted by compare itself
        assert list(row["scores"]) == ["dev"] and list(row["scores"]["dev"]) == metrics  # GLUE test labels: hidden
        dev = row["scores"]["dev"]["accuracy"]
        assert row["dev"] == dev["mean"] and 0 <= dev["mean"] <= 1
        if row["seeds"] is None:  # deterministic: one score, no spread
            assert dev["n"] == 1 and dev["sd"] is None and dev["seeds"] is None
        else:
            assert row["seeds"] == [1, 2] and list(dev["seeds"]) == ["1", "2"]
            assert dev["mean"] == pytest.approx(sum(dev["seeds"].values()) / 2)
    # the frontier: a model is on it exactly when no other is at least as fast and as good, one strictly
    points = {n: (r["sentences_per_s"], r["dev"]) for n, r in rows.items()}
    assert {n for n, r in rows.items() if r["on_frontier"]} == pareto_frontier(points)
    assert rows["teacher-onnx-int8"]["speedup_vs_teacher_int8"] == 1.0
    assert rows["teacher-onnx-int8"]["disk_mb"] < rows["teacher-onnx-fp32"]["disk_mb"] / 2  # int8 weights
    assert result["skipped"] == []  # the static embeddings are there (inputs@<task>-static)
    test = result["best_student_vs_best_alternative"]
    best_alternative = max((r for r in rows.values() if r["kind"] == "alternative"), key=lambda r: r["dev"])
    best_student = max((r for r in rows.values() if r["kind"] == "student"), key=lambda r: r["dev"])
    assert (test["student"], test["name"]) == (best_student["name"], best_alternative["name"])
    assert test["points"] == pytest.approx(100 * (best_student["dev"] - best_alternative["dev"]), abs=0.006)
    assert ("one_sample_t" in test) == (best_alternative["seeds"] is None) and "mcnemar_ensemble" in test
    ship = result["ship"]
    assert ship == {**ship, **ship_choice([{k: r[k] for k in ("name", "kind", "arch", "sentences_per_s", "dev")}
                                           for r in result["models"]], ship["min_speedup"])}
    assert ship["name"] == f"student-{ship['arch']}" and ship["seed"] == 1
    assert [n for n, r in rows.items() if r["shipped"]] == [ship["name"]]
    # the table, the DVC plot's rows and the chart
    table = (tiny_project / f"metrics/{task}/compare.md").read_text()
    # which arch ships depends on the timings of this run (the tiny models are all fast): whichever it is, the
    # table marks that one, and only that one
    assert table.startswith(f"# {task}: what to ship") and table.count("(shipped)") == 1
    assert f"| **{rows[ship['name']]['label']}** (shipped) |" in table
    plot = json.loads((tiny_project / f"metrics/{task}/compare_plot.json").read_text())["models"]
    assert [p["model"] for p in plot] == [r["label"] for r in rows.values()]
    assert (tiny_project / f"metrics/{task}/compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # export shipped compare's choice, and its card says what it beat and by how much
    card = (tiny_project / f"models/export/{task}/README.md").read_text()
    beat = ship["versus_best_alternative"]
    verb = "beats" if beat["points"] > 0 else "trails"
    assert "## Why this model" in card and f"{verb} {beat['label']} ({beat['runtime']})" in card
    assert f"by {abs(beat['points']):.2f} points" in card


@pytest.mark.slow
def test_static_lr_follows_archs_not_a_table_left_on_disk(tiny_project, tmp_path):
    """static + LR runs exactly when archs lists static (its tables are then a product of this pipeline): a table
    left in models/inputs/ by another run adds no row, and a listed table that is missing is an error naming it."""
    from stages.compare import _alternatives, scored_splits
    from stages.models.static_model import embeddings_dir
    from stages.params import load_params

    task, raw = get_task("sst2"), tiny_project / "data/raw/sst2"
    table = embeddings_dir(tiny_project / "models/inputs/sst2/static", teacher=False)
    assert (table / "embeddings.npy").is_file()  # on disk: the tiny project lists static
    knobs, splits = load_params(tiny_project / "params.yaml").compare, scored_splits(task, raw)
    skipped: list[dict] = []
    left_out = _alternatives(task, raw, None, splits, tmp_path, knobs, skipped)  # archs without static
    assert [m.name for m in left_out] == ["tfidf-lr"]
    assert skipped == [{"name": "static-lr", "reason": "archs has no static, and the inputs stage builds the static "
                                                       "tables with it (dvc exp run -S 'archs=[bilstm,ngram,static]')"}]
    listed = _alternatives(task, raw, table, splits, tmp_path, knobs, skipped := [])
    assert [m.name for m in listed] == ["tfidf-lr", "static-lr"] and skipped == []
    with pytest.raises(StageError, match=f"static embeddings not found at {tmp_path / 'gone'}"):
        _alternatives(task, raw, tmp_path / "gone", splits, tmp_path, knobs, [])


@pytest.mark.slow
def test_a_compare_param_reruns_only_compare_and_what_reads_its_choice(tiny_project, tmp_path):
    import json

    import yaml

    from tests.tiny_project import copy_built, ran, run

    repo = copy_built(tiny_project, tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["compare"]["peak_rss"] = True  # off in the tiny project: this rerun measures it
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert set(json.loads(run(["dvc", "status", "--json"], repo))) == {"check", "compare@sst2", "compare@nli"}
    # one task's rerun (each compare is ~20 s with peak RSS): export reads compare.json (its timings are new numbers
    # each run); nothing upstream, nor evaluate, reruns
    rerun = ran(run(["dvc", "repro", "export@sst2"], repo))
    assert {"compare@sst2"} <= rerun <= {"check", "compare@sst2", "export@sst2"}
    rows = json.loads((repo / "metrics/sst2/compare.json").read_text())["models"]
    # each model's peak RSS, from a fresh interpreter with numpy and its runtime: tens of MB at least
    assert len(rows) == len(COMPARED) and all(row["peak_rss_mb"] > 20 for row in rows)


def test_the_model_card_says_what_the_shipped_model_beat_and_by_how_much():
    from stages.export import why_shipped

    choice = {"rule": "the best mean dev score among distilled students with at least 10x the teacher's ONNX int8 "
                      "sentences/s", "rule_met": True, "min_speedup": 10, "threads": 2,
              "versus_best_alternative": {"label": "TF-IDF + LR", "runtime": "sklearn", "points": 1.234,
                                          "test": "one-sample t over the student's seeds", "p_value": 0.0123,
                                          "significant": True},
              "versus_teacher_int8": {"points": -2.5, "speedup": 41.23}}
    text = why_shipped(choice, "accuracy")
    assert "it beats TF-IDF + LR (sklearn), the best model that needs no teacher, by 1.23 points " \
           "(one-sample t over the student's seeds, p = 0.0123: a win at p < 0.05)." in text
    assert "it is -2.50 points on dev accuracy and 41.2× its sentences/s (2 threads)" in text
    behind = {**choice, "rule_met": False, "versus_best_alternative": {**choice["versus_best_alternative"],
                                                                       "points": -0.5, "significant": False}}
    text = why_shipped(behind, "accuracy")
    assert "No distilled student reached 10× the teacher's ONNX int8 speed, so the fastest one ships." in text
    assert "it trails TF-IDF + LR (sklearn), the best model that needs no teacher, by 0.50 points" in text
    assert "not a win at p < 0.05" in text and why_shipped(None, "accuracy") == ""
