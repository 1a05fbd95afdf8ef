"""`serve` at its edges: hostile bodies (arbitrary bytes and JSON, deep nesting, lone surrogates) get a 4xx and
never a 500; slow clients (half-sent headers, a stalled body, a silent connection) are closed within the
configured timeouts while normal requests are answered; the connection cap; the API key off the loopback.

The socket tests run one real `python -m stages serve` process bound to 0.0.0.0 (so it needs its key) with
short timeouts, reached on 127.0.0.1, with bounded numbers of connections.

The property test runs 300 examples by default; HYPOTHESIS_PROFILE=thorough runs 10,100
(at least the goal's 10,000 once duplicates are dropped).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.errors import StageError
from stages.serving.app import Limits, create_app
from stages.serving.auth import authorized, is_loopback, resolve_key
from tests.conftest import REPO, run_cli
from tests.test_serve import _export, _free_port, wait_until_serving

settings.register_profile("thorough", max_examples=10_100, deadline=None)  # >= 10,000 distinct
settings.register_profile("default", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

KEY = "k" * 12 + "-edge-test-key"
TIMEOUT = 1.0  # --header-timeout and --body-timeout of the real server below
SLACK = 2.0    # what a loaded 2-core machine may add before a close is seen


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("exports"), "rt")


@pytest.fixture(scope="module")
def client(export):
    from fastapi.testclient import TestClient

    with TestClient(create_app(export, limits=Limits(max_texts=4, max_chars=50, max_body_bytes=4000))) as c:
        yield c


def _one_line_json_error(answer) -> str:
    assert answer.headers["content-type"].startswith("application/json"), answer.text[:200]
    error = json.loads(answer.content)["error"]
    assert isinstance(error, str) and "\n" not in error and "Traceback" not in error
    return error


# --- hostile bodies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, status, words", [
    (b"[" * 3000, 400, "nests JSON"),
    (b'{"texts": ' + b"[" * 1900 + b"]" * 1900 + b"}", 400, "nests JSON"),
    (b'{"texts": ["\\ud800 film"]}', 422, "texts[0] is not valid Unicode (a lone surrogate at character 0)"),
    (b'{"texts": ["fine", "a \\udfff"]}', 422, "texts[1] is not valid Unicode (a lone surrogate at character 2)"),
    (b'{"\\ud800": ["a"]}', 422, "unknown field"),
], ids=["3000 [", "deep inside texts", "lone high surrogate", "lone low surrogate", "surrogate key"])
def test_deep_nesting_and_lone_surrogates_get_a_4xx(client, body, status, words):
    answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text[:300]
    assert words in _one_line_json_error(answer)
    assert client.post("/predict", json={"texts": ["a good film"]}).status_code == 200


def test_deep_nesting_under_the_body_limit_of_a_default_service(export):
    from fastapi.testclient import TestClient

    with TestClient(create_app(export)) as c:
        for depth in (3000, 100_000):
            answer = c.post("/predict", content=b"[" * depth, headers={"content-type": "application/json"})
            assert answer.status_code == 400 and "nests JSON" in _one_line_json_error(answer)


CHAR = st.one_of(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF),
                 st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))  # lone surrogates: often, not rarely
TEXT = st.lists(CHAR, max_size=60).map("".join)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=20)


def _body(draw_kind, value) -> bytes:
    if draw_kind == "bytes":
        return value
    # ensure_ascii: lone surrogates become \\ud800-style escapes, as a client's JSON encoder writes them
    return json.dumps(value, ensure_ascii=True).encode()


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(st.just("json"), JSON),
    st.tuples(st.just("json"), st.fixed_dictionaries({"texts": st.lists(TEXT, max_size=5)})),
    st.tuples(st.just("json"), st.fixed_dictionaries({"texts": st.lists(JSON, max_size=3)})),
    st.tuples(st.just("bytes"), st.integers(1, 5000).map(lambda n: b'{"texts": ' + b"[" * n)),
))
def test_arbitrary_bodies_never_get_a_500(client, kind_value):
    kind, value = kind_value
    answer = client.post("/predict", content=_body(kind, value), headers={"content-type": "application/json"})
    assert answer.status_code < 500, (value, answer.text[:300])
    if answer.status_code >= 400:
        _one_line_json_error(answer)
    else:
        assert len(answer.json()["predictions"]) == len(value["texts"])


# --- the API key ----------------------------------------------------------------------------------------------


def test_the_key_is_required_off_the_loopback_and_read_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("STAGES_API_KEY", raising=False)
    assert [is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "0.0.0.0", "10.0.0.5",
                                     "example.org")] == [True] * 5 + [False] * 3
    assert resolve_key("127.0.0.1", None, False) is None  # loopback: open unless a key is given
    with pytest.raises(StageError, match=r"--host 0.0.0.0 exposes the service .*\$STAGES_API_KEY"):
        resolve_key("0.0.0.0", None, False)
    assert resolve_key("0.0.0.0", None, True) is None  # the explicit flag
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert resolve_key("0.0.0.0", key_file, False) == KEY
    monkeypatch.setenv("STAGES_API_KEY", "x" * 20)
    assert resolve_key("10.0.0.5", None, False) == "x" * 20
    assert resolve_key("127.0.0.1", None, False) == "x" * 20  # given on the loopback: required there too
    monkeypatch.setenv("STAGES_API_KEY", "short")
    with pytest.raises(StageError, match="at least 16 printable characters"):
        resolve_key("0.0.0.0", None, False)
    with pytest.raises(StageError, match="cannot read the API key file"):
        resolve_key("0.0.0.0", tmp_path / "nowhere", False)
    with pytest.raises(StageError, match="contradict"):
        resolve_key("0.0.0.0", key_file, True)
    assert authorized(f"Bearer {KEY}", KEY) and authorized(f"bearer  {KEY}", KEY)
    assert not any(authorized(h, KEY) for h in (None, "", KEY, f"Basic {KEY}", f"Bearer {KEY}x", "Bearer "))


def test_serve_refuses_to_start_unprotected_off_the_loopback(export):
    env = {k: v for k, v in os.environ.items() if k != "STAGES_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "stages", "serve", "--export-dir", str(export), "--host", "0.0.0.0",
                             "--port", str(_free_port())], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "--host 0.0.0.0 exposes the service beyond this machine" in result.stderr
    assert run_cli("serve", "--api-key", KEY).returncode == 2  # no such option: a key never on the command line


# --- a real server: timeouts, the connection cap, the key ------------------------------------------------------


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "STAGES_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "stages", "serve", "--export-dir", str(export), "--host", "0.0.0.0",
                             "--port", str(port), "--api-key-file", str(key_file), "--header-timeout", str(TIMEOUT),
                             "--body-timeout", str(TIMEOUT), "--max-connections", "40"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "PYTHONPATH": str(REPO)})
    wait_until_serving(proc, f"http://127.0.0.1:{port}")
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def _predict(port: int, key: str | None, texts=("a good film",)) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", json.dumps({"texts": list(texts)}).encode(),
                                     headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes the socket or `seconds` pass: (closed, what it sent)."""
    s.settimeout(0.2)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def test_the_key_is_refused_and_accepted_and_health_stays_open(server):
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server}/health", timeout=10).read())
    assert health["auth"] == "bearer"
    assert health["connections"] == {"header_timeout_s": TIMEOUT, "body_timeout_s": TIMEOUT, "keep_alive_s": 5.0,
                                     "max_connections": 40}
    for key in (None, "wrong-" + KEY):
        status, answer = _predict(server, key)
        assert status == 401 and "API key" in answer["error"]
    status, answer = _predict(server, KEY)
    assert status == 200 and answer["predictions"][0]["label"] in ("rotten", "fresh")
    page = urllib.request.urlopen(f"http://127.0.0.1:{server}/", timeout=10).read().decode()
    assert 'id="api-key"' in page  # the page asks for the key


def test_half_sent_requests_are_closed_within_the_timeout_while_others_are_answered(server):
    sockets = []
    try:
        for i in range(30):  # 10 silent, 10 with half a request line and headers, 10 with a stalled body
            s = socket.create_connection(("127.0.0.1", server), timeout=5)
            if i % 3 == 1:
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif i % 3 == 2:
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          + f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"texts": ')
            sockets.append((i % 3, s, time.monotonic()))
        assert _predict(server, KEY)[0] == 200  # answered meanwhile
        for kind, s, opened in sockets:
            closed, sent = _closed_within(s, TIMEOUT + SLACK - (time.monotonic() - opened))
            assert closed, f"connection {kind} still open {time.monotonic() - opened:.1f} s after it was opened"
            if kind == 2:  # the app's own answer to a stalled body
                assert sent.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in sent, sent[:300]
            else:
                assert sent.startswith(b"HTTP/1.1 408") and b"headers did not arrive" in sent, sent[:300]
    finally:
        for _, s, _ in sockets:
            s.close()
    assert _predict(server, KEY)[0] == 200


def test_connections_over_the_cap_get_a_503_and_normal_service_resumes(server):
    held = [socket.create_connection(("127.0.0.1", server), timeout=5) for _ in range(40)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server), timeout=5)
        closed, sent = _closed_within(extra, 3)
        extra.close()
        assert closed and sent.startswith(b"HTTP/1.1 503") and b"limit of 40 connections" in sent, sent[:300]
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert _predict(server, KEY)[0] == 200


def test_a_body_that_trickles_into_a_route_that_never_reads_it_is_closed(server):
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < TIMEOUT + 1 + SLACK:
            try:
                s.sendall(b"c")  # a byte every 0.2 s: never done, never idle
            except OSError:
                closed = True
                break
            done, _ = _closed_within(s, 0.2)
            if done:
                closed = True
                break
        assert closed, "a trickling body held its connection"
