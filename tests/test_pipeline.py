"""The whole pipeline, end to end, on the tiny two-task project of tests/tiny_project.py (GLUE sst2 through
the Hub layout; `nli`, a 3-class pair dataset declared in params.yaml with unlabeled pairs): the first
`dvc repro`, a rerun that does nothing, what a changed file or param reruns, and the experiment workflow
users rely on (`dvc exp run -S`, `dvc metrics diff`, `dvc exp show`, `python -m stages show`)."""

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from stages.report.exp_table import KEY_PARAMS
from tests.tiny_project import ARCHS, NLI_LABELS, SEEDED, TASKS, UNLABELED_PAIRS, copy_built, ran, run, stages_of

pytestmark = pytest.mark.slow

SUMMARY_COLUMNS = ["student.dev_accuracy", "student.dev_accuracy_sd", "baseline.dev_accuracy",
                   "baseline.dev_accuracy_sd", "teacher.dev_accuracy", "gain.points", "gain.p_paired_t",
                   "gain.p_mcnemar", "student_of_teacher", "speedup", "seeds", "precision.teacher", "precision.label"]
NLI_COLUMNS = ["student.dev_accuracy", "student.dev_accuracy_sd", "student.dev_macro_f1", "student.dev_macro_f1_sd",
               "baseline.dev_accuracy", "baseline.dev_accuracy_sd", "baseline.dev_macro_f1",
               "baseline.dev_macro_f1_sd", "teacher.dev_accuracy", "teacher.dev_macro_f1", "gain.points",
               "gain.p_paired_t", "gain.p_mcnemar", "student_of_teacher", "speedup", "seeds", "precision.teacher",
               "precision.label"]
PAIR = "first sentence number 1 .\tsecond sentence 1 ?"


def _flat(d: dict) -> list[str]:
    return [f"{k}.{kk}" if isinstance(v, dict) else k for k, v in d.items()
            for kk in (v if isinstance(v, dict) else [None])]


def test_first_repro_runs_every_stage_once_and_writes_every_output(tiny_project):
    assert ran((tiny_project.parent / "first-repro.log").read_text()) == (
        {"check", "sources"} | stages_of("sst2") | stages_of("nli"))
    for task in TASKS:
        report = json.loads((tiny_project / f"metrics/{task}/report.json").read_text())
        assert report["seeds"] == [1, 2] and set(report["scores"]) == {"teacher", "baseline", "student"}
        assert report["scores"]["student"]["dev"]["accuracy"]["n"] == 2
        scores = {kind: report["scores"][kind]["dev"]["accuracy"]["seeds"] for kind in SEEDED}
        differences = [scores["student"][s] - scores["baseline"][s] for s in ("1", "2")]
        assert report["gain"]["dev"]["accuracy"]["mean"] == pytest.approx(sum(differences) / 2)
        assert report["student_vs_teacher"]["speedup"] > 0  # timed, so only its presence: benchmarks measure speed
        # the timing-only yardstick has BERT-base's published size (109,482,240 + a head of the task's size)
        bert_base = report["references"]["bert-base"]
        assert bert_base["params_all"] == 109_482_240 + 769 * (2 if task == "sst2" else 3)
        assert bert_base["weights"] == "random (timing only)" and bert_base["student_speedup"] > 0
        assert (tiny_project / f"metrics/{task}/summary.md").read_text().startswith(f"# {task}")
        assert (tiny_project / f"metrics/{task}/results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tiny_project / f"models/student/{task}/bilstm/seed-2/model.pt").is_file()
        for arch in ARCHS:  # every arch's run metrics, the same file for all
            run_json = json.loads((tiny_project / f"metrics/{task}/student/{arch}/seed-2/run.json").read_text())
            assert run_json["arch"] == arch and run_json["seed"] == 2 and 0 <= run_json["dev"]["accuracy"] <= 1
    # the declared 3-class pair task: macro-F1 (not F1), its unlabeled pairs counted in its transfer set
    assert _flat(json.loads((tiny_project / "metrics/nli/summary.json").read_text())) == NLI_COLUMNS
    transfer = json.loads((tiny_project / "metrics/nli/augment.json").read_text())
    assert transfer["sources"]["unlabeled"] == UNLABELED_PAIRS
    assert transfer["unlabeled_input"]["rows_read"] == UNLABELED_PAIRS
    assert json.loads((tiny_project / "metrics/nli/label.json").read_text())["rows"] == transfer["rows"] <= 80


def test_reruns_touch_only_what_a_change_reaches(tiny_project, tmp_path):
    """Nothing reruns on an unchanged project; changed unlabeled text of one task rebuilds its transfer set and
    puts its labels (and so what follows them) out of date, never its download or teacher, and no stage of the
    other task; a changed declared-dataset param makes that dataset's stages, and none of the other task's, out
    of date."""
    repo = copy_built(tiny_project, tmp_path)
    second = run(["dvc", "repro"], repo)
    assert ran(second) == set() and "Data and pipelines are up to date" in second

    # the transfer set is rebuilt with the new pair; then `dvc status` names the one stage whose input changed,
    # nli's label, which the rest of nli follows (the whole rerun is a minute of stage processes, left out): not
    # download, teacher, inputs or the baselines, which never read the transfer set, and no stage of sst2
    with open(repo / "data/external/nli/more.tsv", "a") as f:
        f.write("a fifth sentence .\ta sixth sentence ?\n")
    assert ran(run(["dvc", "repro", "augment@nli"], repo)) == {"sources", "augment@nli"}
    assert json.loads((repo / "metrics/nli/augment.json").read_text())["sources"]["unlabeled"] == UNLABELED_PAIRS + 1
    assert set(json.loads(run(["dvc", "status", "--json"], repo))) == {"label@nli"}

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["datasets"]["nli"]["dev_fraction"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    # the params' own stages rerun; then `dvc status` names the stages whose inputs changed, which all the rest
    # follows: nli's download (so all of nli) and no stage of sst2 (nli's label is still out of date from above)
    assert ran(run(["dvc", "repro", "sources"], repo)) == {"check", "sources"}
    assert set(json.loads(run(["dvc", "status", "--json"], repo))) == {"download@nli", "label@nli"}


def test_experiments_rerun_only_what_depends_on_the_changed_params(tiny_project, tmp_path):
    repo = copy_built(tiny_project, tmp_path)

    # `dvc exp show`: the metrics are summary.json's alone, scores first; no params or split counts among them
    header = next(csv.reader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo))))
    assert header[:6] == ["Experiment", "rev", "typ", "Created", "parent", "metrics/sst2/summary.json:student.dev_accuracy"]
    workspace = json.loads(run(["dvc", "exp", "show", "--json"], repo))[0]["data"]
    assert list(workspace["metrics"]) == ["metrics/sst2/summary.json", "metrics/nli/summary.json"]
    for task, columns in (("sst2", SUMMARY_COLUMNS), ("nli", NLI_COLUMNS)):
        shown = workspace["metrics"][f"metrics/{task}/summary.json"]["data"]
        written = json.loads((repo / f"metrics/{task}/summary.json").read_text())
        assert _flat(written) == columns
        # DVC leaves out null metrics (a p-value that two identical seeds cannot give): the rest, in order
        null = {f"{k}.{kk}" for k, v in written.items() if isinstance(v, dict) for kk, vv in v.items() if vv is None}
        assert _flat(shown) == [c for c in columns if c not in null]

    # every curated plot renders and has at least two points
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo))["data"]
    assert len(plots) == 5
    for name, views in plots.items():
        assert len(views[0]["content"]["data"]["values"]) >= 2, name

    # the optimizer's rho (distill: every arch) makes every student and baseline of every task, arch and seed out
    # of date, and nothing else: never the teacher or the transfer set
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "distill": {**params["distill"], "rho": 0.9}}))
    stale = set(json.loads(run(["dvc", "status", "--json"], repo)))
    assert stale == {"check"} | {f"{s}@{t}-{a}-{seed}" for s in SEEDED for t in TASKS for a in ARCHS for seed in (1, 2)}
    run(["git", "checkout", "params.yaml"], repo)

    # a knob of one arch reaches that arch's stages alone: the student's size only the BiLSTM's, an n-gram knob
    # only the n-gram student's and baseline's (check rewrites every arch's knob file, the others byte for byte);
    # no other arch's run goes stale
    for section, knob, value, arch in (("student", "hidden", 12, "bilstm"), ("ngram", "max_chars", 500, "ngram")):
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, section: {**params[section], knob: value}}))
        assert ran(run(["dvc", "repro", f"inputs@sst2-{arch}", f"inputs@nli-{arch}"], repo)) == {
            "check", f"inputs@sst2-{arch}", f"inputs@nli-{arch}"}
        # stale: that arch's runs, and compare (it reads models/inputs/<task>/ for the static embeddings)
        assert set(json.loads(run(["dvc", "status", "--json"], repo))) == {
            f"{s}@{t}-{arch}-{seed}" for s in SEEDED for t in TASKS for seed in (1, 2)} | {f"compare@{t}" for t in TASKS}
        run(["git", "checkout", "params.yaml", "dvc.lock"], repo)
        run(["dvc", "checkout"], repo)  # back to the committed state, from the cache (nothing reruns)

    # one more seed and the labels' precision, as one experiment: label and what reads its output rerun, every
    # student (new labels), the baseline of the new seed only (baselines never read the transfer set), never
    # download, teacher or the transfer set (augment); the target keeps it to one task (evaluate reads the first
    # arch). int8 differs from what `auto` resolves to on any CPU, and summary.json shows the one that ran
    more = run(["dvc", "exp", "run", "-S", "seeds=[1,2,3]", "-S", "label.precision=int8", "evaluate@sst2"], repo)
    assert ran(more) == ({"check", "label@sst2", "evaluate@sst2", "baseline@sst2-bilstm-3"}
                         | {f"student@sst2-bilstm-{s}" for s in (1, 2, 3)})
    assert json.loads((repo / "metrics/sst2/report.json").read_text())["seeds"] == [1, 2, 3]
    assert json.loads((repo / "metrics/sst2/label.json").read_text())["precision"] == "int8"
    assert json.loads((repo / "metrics/sst2/summary.json").read_text())["precision"]["label"] == "int8"
    changed = json.loads(run(["dvc", "metrics", "diff", "--json"], repo))["metrics/sst2/summary.json"]
    assert (changed["seeds"]["old"], changed["seeds"]["new"]) == (2, 3)

    # `python -m stages show`: every metric, the key params, the params that differ between the rows (the
    # experiment's label.precision; seeds is a key param) and nothing else
    full = next(csv.reader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo))))
    shown = next(csv.reader(io.StringIO(run([sys.executable, "-m", "stages", "show", "--csv"], repo))))
    # DVC prefixes a name with its file only where two files share it (sst2's and nli's scores, `seeds`)
    metric_names = {*SUMMARY_COLUMNS, *NLI_COLUMNS}
    metrics = [c for c in full if c.split(":")[-1] in metric_names and not c.startswith("params.yaml:")]
    params = [c for c in full[5:] if c not in metrics and "/" not in c]
    assert len(full) > 100 and len(metrics) > len(NLI_COLUMNS) and "student.dev_macro_f1" in metrics
    assert shown == ["Experiment", "rev", "typ", "Created", "parent", *metrics,
                     *[c for c in params if c.split(":")[-1] in (*KEY_PARAMS, "label.precision")]]
    assert "params.yaml:seeds" in shown and "distill.lr" in params and "distill.lr" not in shown


def test_the_pair_student_predicts_the_same_through_pytorch_and_its_onnx_export(tiny_project):
    # compare picks the arch that ships from this run's timings and dev scores: the export is checked against
    # seed 1 of whichever it picked
    export = json.loads((tiny_project / "metrics/nli/export.json").read_text())
    predicted = run([sys.executable, "-m", "stages", "predict", "--model", f"models/student/nli/{export['arch']}/seed-1",
                     "--json", PAIR], tiny_project)
    row = json.loads(predicted.strip().splitlines()[-1])
    assert row["label"] in NLI_LABELS and abs(sum(row["probabilities"].values()) - 1) < 1e-3
    shipped = run([sys.executable, "-m", "stages", "predict", "--backend", "onnx", "--model", "models/export/nli",
                   "--json", PAIR], tiny_project)
    onnx_row = json.loads(shipped.strip().splitlines()[-1])
    assert onnx_row["probabilities"] == pytest.approx(row["probabilities"], abs=2e-4)  # seed 1 of both, exported
    assert export["seed"] == 1 and export["max_abs_logit_diff_fp32"] <= 1e-4
    assert (tiny_project / "models/export/nli/README.md").read_text().startswith("---\nlibrary_name: onnx")
