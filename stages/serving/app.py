"""The HTTP service around an exported student: FastAPI on uvicorn.

    POST /predict  {"texts": ["...", ...]}   (pair models: {"pairs": [["first", "second"], ...]})
                   -> {"predictions": [{"label": "...", "probabilities": {"<label>": p, ...}}, ...]} in input order
    GET  /health   -> {"status": "ok", "task", "backend", "labels", "pair", "batching", "limits", "connections",
                        "auth"}
    GET  /         -> a page to type sentences and see the label and a bar per class probability
    GET  /docs     -> the OpenAPI page

Every bad request gets a 4xx JSON answer {"error": "..."} and the service keeps serving; an unexpected
failure is a 500 with a one-line JSON error, never a traceback. With an API key (stages/serving/auth.py),
/predict answers 401 without `Authorization: Bearer <key>`. The read timeouts and the connection cap are
enforced by the HTTP protocol (stages/serving/guard.py); /predict's body read has its own deadline (408).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from stages.errors import StageError
from stages.serving.auth import authorized
from stages.serving.batcher import DynamicBatcher
from stages.serving.guard import STATE_KEY, ConnectionLimits

PAGE = Path(__file__).parent / "static" / "index.html"


@dataclass(frozen=True)
class Limits:
    """What one request may hold; beyond these a request gets a 413 or 422, not an answer."""
    max_texts: int = 256           # texts (or pairs) per request
    max_chars: int = 2000          # characters per text (the student reads at most max_length tokens anyway)
    max_body_bytes: int = 1_000_000


@dataclass(frozen=True)
class Batching:
    enabled: bool = True
    max_batch: int = 64            # sentences (or pairs) per model call
    max_wait_ms: float = 2.0       # how long the oldest request may wait for others being read


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# Documentation only (the OpenAPI page): /predict reads and checks its body itself, to answer every bad
# request with the same one-line JSON error and to enforce the body limit while reading.
class PredictRequest(BaseModel):
    texts: list[str] | None = Field(None, description="single-sentence models: the sentences to classify")
    pairs: list[list[str]] | None = Field(None, description="pair models: [first, second] per example")


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def recommended_backend(export_dir: Path) -> str:
    """The backend the export recommends (config.json's `recommended_backend`, written by the export stage);
    onnx (fp32) for an export written before that key existed."""
    from stages.models.onnx_student import CONFIG_FILE, ONNX_BACKENDS, read_config

    path = Path(export_dir) / CONFIG_FILE
    if not path.is_file():
        return "onnx"  # the loader then names what the directory lacks
    backend = read_config(path).get("recommended_backend", "onnx")
    if backend not in ONNX_BACKENDS:
        raise StageError(f"{path}: recommended_backend {backend!r} is not one of "
                         f"{', '.join(ONNX_BACKENDS)}; rerun the export stage")
    return backend


def load_model(export_dir: Path, backend: str, threads: int | None = None):
    from stages.models.onnx_student import ONNX_BACKENDS

    if backend not in ONNX_BACKENDS:
        raise StageError(f"unknown backend {backend!r}; serve runs {' or '.join(ONNX_BACKENDS)}")
    from stages.models.registry import load_predictor

    return load_predictor(Path(export_dir), backend, threads=threads, spinning=False)


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    # ensure_ascii: the message may quote the client's input, which can hold lone surrogates (not UTF-8)
    return Response(json.dumps({"error": message}, ensure_ascii=True), status_code=status, headers=headers,
                    media_type="application/json")


def parse_request(body: bytes, pair: bool, limits: Limits) -> tuple[list[str], list[str] | None]:
    """The checked texts of a /predict body, or BadRequest naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"the body is not valid JSON ({e})") from None
    except RecursionError:
        raise BadRequest(400, "the body nests JSON arrays or objects too deeply to read") from None
    if not isinstance(data, dict):
        raise BadRequest(422, 'the body must be a JSON object: {"texts": [...]} or {"pairs": [[a, b], ...]}')
    key, other = ("pairs", "texts") if pair else ("texts", "pairs")
    unknown = sorted(set(data) - {"texts", "pairs"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}; send {key!r}")
    if key not in data:
        if other in data:
            kind = "sentence pairs" if pair else "single sentences"
            example = '{"pairs": [["first", "second"]]}' if pair else '{"texts": ["a sentence"]}'
            raise BadRequest(422, f"this model classifies {kind}: send {example}, not {other!r}")
        raise BadRequest(422, f"missing field {key!r}")
    items = data[key]
    if not isinstance(items, list):
        raise BadRequest(422, f"{key!r} must be a list, not {type(items).__name__}")
    if not items:
        raise BadRequest(422, f"{key!r} is empty: send at least one")
    if len(items) > limits.max_texts:
        raise BadRequest(413, f"{len(items)} {key} in one request; the limit is {limits.max_texts}")
    columns: list[list[str]] = [[], []] if pair else [[]]
    for i, item in enumerate(items):
        parts = item if pair else [item]
        if pair and not (isinstance(item, list) and len(item) == 2):
            raise BadRequest(422, f"pairs[{i}] must be a list of two strings [first, second]")
        for j, text in enumerate(parts):
            where = f"pairs[{i}][{j}]" if pair else f"texts[{i}]"
            if not isinstance(text, str):
                raise BadRequest(422, f"{where} must be a string, not {type(text).__name__}")
            if not text.strip():
                raise BadRequest(422, f"{where} is empty")
            if len(text) > limits.max_chars:
                raise BadRequest(422, f"{where} has {len(text)} characters; the limit is {limits.max_chars}")
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:  # JSON's \ud800 escapes: a lone surrogate is no character
                    raise BadRequest(422, f"{where} is not valid Unicode (a lone surrogate at character "
                                          f"{e.start})") from None
            columns[j].append(text)
    return columns[0], (columns[1] if pair else None)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body has {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _load_runner(export_dir: Path, backend: str, threads: int | None):
    """The export's student, the function the service calls per batch, and whether a batch of mixed lengths is
    one onnxruntime call (bilstm, cnn: where the graph allows; ngram, static: their graph takes bags always)."""
    from stages.models.onnx_student import MODEL_FILES, ONNX_BACKENDS, OnnxStudent
    from stages.serving.padded import PaddedStudent

    student = load_model(export_dir, backend, threads)
    if not isinstance(student, OnnxStudent):
        return student, student.predict_proba, True
    runner = PaddedStudent(student, Path(export_dir) / MODEL_FILES[ONNX_BACKENDS[backend]], threads)
    return student, runner.predict_proba, runner.padded


def _json_errors(app: FastAPI) -> None:
    """Every error the framework raises becomes a JSON {"error": ...} with its status."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(422, "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__})")


def _predict_route(app: FastAPI, batcher: DynamicBatcher, labels: list[str], pair: bool, limits: Limits,
                   connections: ConnectionLimits, api_key: str | None) -> None:
    """POST /predict: the key check, the body read under its deadline, the checks, one batched model call."""

    @app.post("/predict", summary="Classify sentences (or sentence pairs)", response_model=None,
              responses={200: {"model": PredictResponse}, 400: {"description": "invalid JSON"},
                         413: {"description": "too many texts, or the body is too large"},
                         422: {"description": "wrong types, empty list, empty or too long text, "
                                              "pairs sent to a single-sentence model or the reverse"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        if api_key is not None and not authorized(request.headers.get("authorization"), api_key):
            return _error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                          {"WWW-Authenticate": "Bearer", "Connection": "close"})
        batcher.arriving += 1
        try:
            try:
                async with asyncio.timeout(connections.body_timeout_s):  # no extra task, unlike wait_for
                    body = await _read_body(request, limits.max_body_bytes)
                texts_a, texts_b = parse_request(body, pair, limits)
            finally:
                batcher.arriving -= 1
        except BadRequest as e:
            return _error(e.status, e.message)
        except TimeoutError:
            return _error(408, f"the request's body did not arrive within {connections.body_timeout_s:g} s",
                          {"Connection": "close"})
        except ClientDisconnect:
            return _error(400, "the client went away before sending its whole body")
        probabilities = await batcher.predict(texts_a, texts_b)
        predictions = [{"label": labels[int(row.argmax())],
                        "probabilities": {name: round(float(p), 6) for name, p in zip(labels, row)}}
                       for row in probabilities]
        # Server-Timing: the time this request spent in the app (body read, queue, model, JSON), so that a load
        # test can tell the server's share of a latency from the network's and the client's
        return Response(json.dumps({"predictions": predictions}), media_type="application/json",
                        headers={"Server-Timing": f"app;dur={1000 * (time.perf_counter() - start):.3f}"})


def create_app(export_dir: Path, backend: str | None = None, *, batching: Batching = Batching(),
               limits: Limits = Limits(), threads: int | None = None,
               connections: ConnectionLimits = ConnectionLimits(), api_key: str | None = None) -> FastAPI:
    """The service for one export directory; the model is loaded here, before the first request.
    `connections` reach uvicorn's protocol (stages/serving/guard.py) through the lifespan state; `api_key`:
    /predict requires it (None: open)."""
    backend = backend or recommended_backend(export_dir)
    student, run, one_call = _load_runner(export_dir, backend, threads)
    config = student.config
    labels, pair = list(config["label_names"]), bool(config["pair"])

    batcher = DynamicBatcher(run, max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
                             enabled=batching.enabled)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        # The modules, the model and the tokenizer are ~70,000 long-lived objects that every full garbage
        # collection walks: a pause of tens of ms (100 ms on a loaded 2-core machine) that stalls every request
        # in flight. Frozen, they are never walked again; requests' own garbage is collected as before.
        gc.collect()
        gc.freeze()
        yield {STATE_KEY: connections}  # uvicorn hands the lifespan state to each connection's protocol
        await batcher.stop()

    app = FastAPI(title=f"{config['task']} student", lifespan=lifespan,
                  description=f"A distilled {config.get('arch', 'bilstm')} student for {config['task']} "
                              f"({', '.join(labels)}), run with onnxruntime ({backend}).")
    app.state.batcher, app.state.student = batcher, student
    health = {"status": "ok", "task": config["task"], "backend": backend, "labels": labels, "pair": pair,
              "batching": asdict(batching) | {"one_call_per_batch": one_call}, "limits": asdict(limits),
              "connections": asdict(connections), "auth": "bearer" if api_key else "none"}

    _json_errors(app)

    @app.get("/health", summary="The model's task, backend, labels, batching and limits, once loaded")
    async def get_health() -> dict:
        return health | {"model_calls": batcher.calls, "sentences": batcher.sentences}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    _predict_route(app, batcher, labels, pair, limits, connections, api_key)
    return app


SETTINGS_ENV = "STAGES_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app for each uvicorn worker process (`serve --workers N`): its settings come as JSON in an env var."""
    import os

    s = json.loads(os.environ[SETTINGS_ENV])
    return create_app(Path(s["export_dir"]), s["backend"], batching=Batching(**s["batching"]),
                      limits=Limits(**s["limits"]), threads=s.get("threads"),
                      connections=ConnectionLimits(**s["connections"]), api_key=s.get("api_key"))
