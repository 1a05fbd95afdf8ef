"""`serve`: the HTTP service around an exported student: the API in process, every bad-request class, the
dynamic batcher's grouping, a real `serve` process (no PyTorch, graceful SIGTERM) and the page in Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from stages.data.tasks import get_task
from stages.errors import StageError
from stages.models.onnx_student import MODEL_FILES, OnnxStudent
from stages.serving.app import Batching, Limits, create_app, parse_request, recommended_backend
from stages.serving.batcher import DynamicBatcher
from tests.conftest import REPO

SENTENCES = ["a good good film", "bad bad", "the cast was fine and lovely", "dull", "an awful awful movie ,"]


def _export(root: Path, task_name: str) -> Path:
    """A small export directory (random weights: serving needs the files, not a good model), built in seconds."""
    import torch

    from stages.models.onnx_export import export_onnx
    from stages.models.onnx_student import quantize_int8
    from stages.models.vocab import Vocab
    from stages.models.torch_student import Student, build_model

    task = get_task(task_name)
    torch.manual_seed(0)
    vocab = Vocab.build(SENTENCES * 2 + ["first second sentence number"], 40)
    config = {"task": task.name, "num_labels": task.num_labels, "label_names": list(task.label_names),
              "pair": task.is_pair, "vocab_size": len(vocab), "emb_dim": 8, "hidden": 8, "fc": 8, "dropout": 0.0,
              "embedding_mode": "rand", "embeddings": "random", "max_length": 16, "arch": "bilstm"}
    out = root / task_name
    out.mkdir(parents=True)
    export_onnx(Student(build_model(config), vocab, config, torch.device("cpu")), out / "model.onnx")
    quantize_int8(out / "model.onnx", out / "model.int8.onnx")
    vocab.save(out / "tokenizer.json")
    backend = "onnx-int8" if task.is_pair is False else "onnx"  # as an export would recommend
    (out / "config.json").write_text(json.dumps({**config, "recommended_backend": backend}))
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {name: _export(root, name) for name in ("rt", "mrpc")}


@pytest.fixture(scope="module")
def client(exports):
    from fastapi.testclient import TestClient

    app = create_app(exports["rt"], limits=Limits(max_texts=4, max_chars=50, max_body_bytes=2000))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def pair_client(exports):
    from fastapi.testclient import TestClient

    with TestClient(create_app(exports["mrpc"])) as c:
        yield c


def _probabilities(export: Path, variant: str, texts_a, texts_b=None) -> list[dict]:
    """What the service answers for one request sent alone: one padded call over its rows (int8 quantises
    activations per call, so its numbers depend on which rows share the call)."""
    from stages.serving.padded import PaddedStudent

    student = OnnxStudent(export, variant)
    names = student.config["label_names"]
    rows = PaddedStudent(student, export / MODEL_FILES[variant]).predict_proba(texts_a, texts_b)
    return [{n: round(float(p), 6) for n, p in zip(names, row)} for row in rows]


# --- the API in process ------------------------------------------------------------------------------------


def test_predict_health_and_page_in_process(client, exports):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() | {"batching": None, "limits": None, "connections": None, "model_calls": 0, "sentences": 0} == {
        "status": "ok", "task": "rt", "backend": "onnx-int8", "labels": ["rotten", "fresh"], "pair": False,
        "batching": None, "limits": None, "connections": None, "model_calls": 0, "sentences": 0,
        "auth": "none"}  # the backend the card recommends
    assert health.json()["batching"] == {"enabled": True, "max_batch": 64, "max_wait_ms": 2.0, "one_call_per_batch": True}
    assert health.json()["limits"] == {"max_texts": 4, "max_chars": 50, "max_body_bytes": 2000}
    answer = client.post("/predict", json={"texts": SENTENCES[:3]})
    assert answer.status_code == 200
    after = client.get("/health").json()  # one request of three sentences: one model call
    assert (after["model_calls"] - health.json()["model_calls"], after["sentences"] - health.json()["sentences"]) == (1, 3)
    expected = _probabilities(exports["rt"], "int8", SENTENCES[:3])
    predictions = answer.json()["predictions"]
    assert [p["probabilities"] for p in predictions] == expected  # input order, the model's own numbers
    assert [p["label"] for p in predictions] == [max(e, key=e.get) for e in expected]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="classify"' in page.text
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health"} <= set(schema["paths"])
    assert "texts" in json.dumps(schema["paths"]["/predict"]["post"]["requestBody"])


def test_pairs_in_process(pair_client, exports):
    pairs = [["first sentence", "second sentence"], ["a good film", "bad bad"]]
    answer = pair_client.post("/predict", json={"pairs": pairs})
    assert answer.status_code == 200, answer.text
    expected = _probabilities(exports["mrpc"], "fp32", [p[0] for p in pairs], [p[1] for p in pairs])
    assert [p["probabilities"] for p in answer.json()["predictions"]] == expected
    assert pair_client.get("/health").json()["backend"] == "onnx"


BAD = [  # (what, body, status, words in the error); limits: 4 texts, 50 characters, 2000 bytes
    ("invalid JSON", b'{"texts": ["a", }', 400, "not valid JSON"),
    ("not UTF-8", b'\xff\xfe{', 400, "not valid JSON"),
    ("not an object", b'["a good film"]', 422, "JSON object"),
    ("no texts", b'{}', 422, "missing field 'texts'"),
    ("unknown field", b'{"texts": ["a"], "text": "b"}', 422, "unknown field"),
    ("texts not a list", b'{"texts": "a good film"}', 422, "must be a list"),
    ("a text not a string", b'{"texts": ["a", 3]}', 422, "texts[1] must be a string"),
    ("empty list", b'{"texts": []}', 422, "is empty"),
    ("empty text", b'{"texts": ["a", "   "]}', 422, "texts[1] is empty"),
    ("too many texts", json.dumps({"texts": ["a"] * 5}).encode(), 413, "limit is 4"),
    ("text too long", json.dumps({"texts": ["a" * 51]}).encode(), 422, "51 characters; the limit is 50"),
    ("body too large", json.dumps({"texts": ["a"] * 1000}).encode(), 413, "the limit is 2000"),
    ("pairs to a single-sentence model", b'{"pairs": [["a", "b"]]}', 422, "classifies single sentences"),
]


@pytest.mark.parametrize("what, body, status, words", BAD, ids=[b[0] for b in BAD])
def test_every_bad_request_gets_a_4xx_json_error_and_the_service_keeps_serving(client, what, body, status, words):
    answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status and words in answer.json()["error"], answer.text
    assert "Traceback" not in answer.text
    assert client.post("/predict", json={"texts": ["a good film"]}).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_while_read(client):
    chunks = (b'{"texts": ["' + b"a" * 500 + b'"]}' for _ in range(8))  # no content-length: counted while read
    answer = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "over the limit of 2000 bytes" in answer.json()["error"]


def test_single_sentences_to_a_pair_model_and_malformed_pairs(pair_client):
    for body, words in [({"texts": ["a"]}, "classifies sentence pairs"), ({"pairs": [["a"]]}, "pairs[0] must be"),
                        ({"pairs": [["a", ""]]}, "pairs[0][1] is empty"), ({"pairs": ["ab"]}, "pairs[0] must be")]:
        answer = pair_client.post("/predict", json=body)
        assert answer.status_code == 422 and words in answer.json()["error"], (body, answer.text)
    for method, path, status in [("get", "/predict", 405), ("get", "/nowhere", 404)]:
        answer = getattr(pair_client, method)(path)
        assert answer.status_code == status and "error" in answer.json()


def test_parse_request_returns_the_columns():
    assert parse_request(b'{"texts": ["x", "y"]}', False, Limits()) == (["x", "y"], None)
    assert parse_request(b'{"pairs": [["x", "y"], ["z", "w"]]}', True, Limits()) == (["x", "z"], ["y", "w"])


def test_the_default_backend_is_the_exports_recommendation(tmp_path):
    from stages.export import recommended_backend as exported, recommended_variant

    task = get_task("rt")
    config = {"task": "rt", "label_names": list(task.label_names), "num_labels": 2, "pair": False, "max_length": 16}
    for cost, backend in [(0.1, "onnx-int8"), (3.0, "onnx")]:
        (tmp_path / "config.json").write_text(json.dumps({**config, "recommended_backend":
                                                          exported(recommended_variant(cost))}))
        assert recommended_backend(tmp_path) == backend
    (tmp_path / "config.json").write_text(json.dumps(config))  # an export written before the key existed
    assert recommended_backend(tmp_path) == "onnx"
    (tmp_path / "config.json").write_text(json.dumps({**config, "recommended_backend": "tensorrt"}))
    with pytest.raises(StageError, match=r"config\.json: recommended_backend 'tensorrt' is not one of onnx, onnx-int8"):
        recommended_backend(tmp_path)


@pytest.mark.parametrize("task_name", ["rt", "mrpc"])
def test_one_padded_call_gives_each_rows_own_logits(exports, task_name):
    from stages.serving.padded import PaddedStudent

    student = OnnxStudent(exports[task_name])
    padded = PaddedStudent(student, exports[task_name] / "model.onnx")
    texts_a = [s * k for k, s in enumerate(SENTENCES, 1)]  # 3 to 25 tokens: padded up to 16 (max_length)
    texts_b = list(reversed(texts_a)) if student.config["pair"] else None
    one_by_one = np.concatenate([student.predict_logits(texts_a[i:i + 1], texts_b[i:i + 1] if texts_b else None)
                                 for i in range(len(texts_a))])
    assert padded.padded and len(set(student.encode_ids(texts_a)[1].tolist())) > 2
    np.testing.assert_allclose(padded.predict_logits(texts_a, texts_b), one_by_one, atol=1e-5)


def test_padded_chunks_sort_by_length_and_cut_where_padding_would_waste():
    from stages.serving.padded import padded_chunks

    lengths = np.array([30, 3] * 10)
    chunks = padded_chunks(lengths)
    assert [sorted(c.tolist()) for c in chunks] == [list(range(1, 20, 2)), list(range(0, 20, 2))]
    assert [c.tolist() for c in padded_chunks(np.array([5, 4, 6]))] == [[1, 0, 2]]  # few rows: one call


# --- the dynamic batcher -----------------------------------------------------------------------------------


class CountingModel:
    def __init__(self, student: OnnxStudent):
        self.student, self.batches = student, []

    def __call__(self, texts_a, texts_b=None):
        self.batches.append(len(texts_a))
        return self.student.predict_proba(texts_a, texts_b)


def _run_concurrently(batcher: DynamicBatcher, requests: list[list[str]]) -> list[np.ndarray]:
    async def main():
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(r) for r in requests))
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_model_calls_and_get_their_own_rows(exports):
    student = OnnxStudent(exports["rt"])
    requests = [[SENTENCES[i % 5]] if i % 3 else [SENTENCES[i % 5], SENTENCES[(i + 2) % 5]] for i in range(12)]
    unbatched = [student.predict_proba(r) for r in requests]
    for max_batch, expected in [(64, [16]), (5, [4, 4, 4, 4])]:
        model = CountingModel(student)
        answers = _run_concurrently(DynamicBatcher(model, max_batch=max_batch, max_wait_ms=2), requests)
        assert model.batches == expected  # 12 requests, 16 sentences: cut at max_batch, a request never split
        for got, want in zip(answers, unbatched):
            np.testing.assert_allclose(got, want, atol=1e-6)
    model = CountingModel(student)
    answers = _run_concurrently(DynamicBatcher(model, enabled=False), requests)
    assert len(model.batches) == 12 and all(np.allclose(a, b, atol=1e-6) for a, b in zip(answers, unbatched))


def test_a_lone_request_does_not_wait_for_others(exports):
    model = CountingModel(OnnxStudent(exports["rt"]))
    batcher = DynamicBatcher(model, max_batch=64, max_wait_ms=5000)

    async def main():
        await batcher.start()
        start = time.perf_counter()
        await batcher.predict(["a good film"])
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert asyncio.run(main()) < 2.0 and model.batches == [1]  # nobody else was arriving: no 5 s wait


def test_requests_being_read_are_waited_for_up_to_max_wait(exports):
    model = CountingModel(OnnxStudent(exports["rt"]))
    batcher = DynamicBatcher(model, max_batch=64, max_wait_ms=2000)

    async def main():
        await batcher.start()
        batcher.arriving = 1  # a second request is being read by the server

        async def late():
            await asyncio.sleep(0.2)
            batcher.arriving = 0
            return await batcher.predict(["bad bad"])

        out = await asyncio.gather(batcher.predict(["a good film"]), late())
        await batcher.stop()
        return out

    asyncio.run(main())
    assert model.batches == [2]


# --- a real process: no PyTorch, /health, /predict, graceful SIGTERM; the page in Chromium --------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_until_serving(proc: subprocess.Popen, url: str, timeout: float = 90) -> dict:
    """/health's answer once a starting `serve` process answers it; a failure names serve's own error."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"serve did not start: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(exports):
    """`python -m stages serve` with `import torch` made to fail: the service must never import PyTorch."""
    port = _free_port()
    script = ("import sys; sys.modules['torch'] = None\n"
              "from stages.cli import main\n"
              f"sys.argv = ['stages', 'serve', '--export-dir', {str(exports['rt'])!r}, '--port', '{port}']\n"
              "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url)
    yield proc, url, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_page_in_a_real_browser_shows_the_apis_probabilities(server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable on PATH (Debian: apt-get install chromium); the page is not tested")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    _, url, _ = server
    sentence = "the cast was fine and lovely"
    expected = _post(url + "/predict", {"texts": [sentence]})["predictions"][0]
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('meta').textContent.includes('labels')")
            page.fill("#text-a", sentence)
            page.click("#classify")
            page.wait_for_selector("#bars .row")
            shown = {row.get_attribute("data-label"): float(row.query_selector(".value").inner_text())
                     for row in page.query_selector_all("#bars .row")}
            label = page.inner_text("#label")
        finally:
            browser.close()
    assert label == expected["label"]
    assert shown == {name: round(p, 4) for name, p in expected["probabilities"].items()}


def test_real_serve_process_answers_then_finishes_in_flight_requests_on_sigterm(server, exports):
    proc, url, port = server
    health = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())
    assert health["task"] == "rt" and health["backend"] == "onnx-int8" and health["labels"] == ["rotten", "fresh"]
    answer = _post(url + "/predict", {"texts": SENTENCES})
    assert [p["probabilities"] for p in answer["predictions"]] == _probabilities(exports["rt"], "int8", SENTENCES)
    # A request in flight: headers and half the body sent, then SIGTERM, then the rest of the body.
    body = json.dumps({"texts": ["a good good film"]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        s.sendall(body[10:])
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["predictions"][0]["label"] in ("rotten", "fresh")
    assert proc.wait(timeout=20) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)


def test_two_worker_processes_serve_the_same_answers_and_stop_on_sigterm(exports):
    """`serve --workers 2`: uvicorn's worker processes, each loading the model from the settings it is handed."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stages", "serve", "--export-dir", str(exports["rt"]),
                             "--port", str(port), "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 90
    try:
        while True:
            try:
                health = json.loads(urllib.request.urlopen(url + "/health", timeout=2).read())
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"serve --workers 2 did not start: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")
                time.sleep(0.3)
        assert health["backend"] == "onnx-int8" and health["labels"] == ["rotten", "fresh"]
        expected = _probabilities(exports["rt"], "int8", SENTENCES)
        for _ in range(4):  # new connections: the kernel hands them to either worker
            answer = _post(url + "/predict", {"texts": SENTENCES})
            assert [p["probabilities"] for p in answer["predictions"]] == expected
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_missing_export_in_one_line(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("serve", "--export-dir", str(tmp_path / "nowhere"), "--port", str(_free_port()))
    assert result.returncode == 1 and "is not an exported student" in result.stderr
    assert "Traceback" not in result.stderr
