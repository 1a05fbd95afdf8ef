"""What a slow or hostile client may hold: read timeouts and a connection cap, enforced in uvicorn's HTTP protocol.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) and nothing else: a connection that sends
half its headers, or declares a body and stops sending it, is held forever, and every such connection holds a
file descriptor. `GuardedProtocol` (uvicorn's httptools protocol, subclassed) adds, per connection:

- a header timeout: from the connection's opening (or a new request's first byte on a kept-alive connection)
  until its headers are complete; past it the server answers 408 and closes;
- a body timeout: from the end of the headers until the body is complete. The app's `/predict` answers 408
  itself when its body read runs out of time (stages/serving/app.py); this protocol closes the connection one
  second later whatever the route, so a body that trickles in for a route that never reads it cannot hold it;
- a header-size cap (MAX_HEADER_BYTES; 431 beyond) and a connection cap: a connection over `max_connections`
  gets a 503 and is closed at once, before anything is read.

The limits travel with the app: its lifespan puts a `ConnectionLimits` in the ASGI lifespan state, which uvicorn
hands to each connection's protocol (`app_state`), so `serve --workers N` needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

STATE_KEY = "connection_limits"
MAX_HEADER_BYTES = 32 * 1024  # request line and headers; an API client sends a few hundred bytes
BACKSTOP_S = 1.0  # the protocol's body deadline is the app's plus this


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a request may take to arrive, and how many connections may be open at once."""
    header_timeout_s: float = 10.0  # connection opened (or a new request begun) -> headers complete
    body_timeout_s: float = 10.0    # headers complete -> body complete
    keep_alive_s: float = 5.0       # an idle kept-alive connection is closed after this (uvicorn's own)
    max_connections: int = 1000     # open connections; one more is answered 503 and closed


def _answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header and body timeouts, a header-size cap and a connection cap."""

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = app_state.get(STATE_KEY) or ConnectionLimits()
        self._deadline = None          # the pending timer (header or body phase)
        self._reading_headers = True
        self._header_bytes = 0

    def _arm(self, seconds: float, answer: bytes | None) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, answer)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, answer: bytes | None) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if answer is not None:
            self.transport.write(answer)
        self.transport.close()

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        self.transport.write(answer)
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(_answer(503, "Service Unavailable",
                                 f"the server holds its limit of {self.limits.max_connections} connections; retry"))
            return
        self._arm(self.limits.header_timeout_s, self._header_timeout_answer())

    def _header_timeout_answer(self) -> bytes:
        return _answer(408, "Request Timeout",
                       f"the request's headers did not arrive within {self.limits.header_timeout_s:g} s")

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        super().data_received(data)
        if self._reading_headers and not self.transport.is_closing():  # counted once parsed: a body is not
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(_answer(431, "Request Header Fields Too Large",
                                     f"the request line and headers are over {MAX_HEADER_BYTES} bytes"))

    def on_message_begin(self) -> None:  # a new request's first byte (the keep-alive timer was cancelled)
        super().on_message_begin()
        self._reading_headers, self._header_bytes = True, 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._header_timeout_answer())

    def on_headers_complete(self) -> None:
        self._reading_headers, self._header_bytes = False, 0
        self._arm(self.limits.body_timeout_s + BACKSTOP_S, None)  # /predict answers 408 itself before this
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


FILE_HEADROOM = 128  # descriptors beyond the connections: the model's files, the listening socket, pipes


def raise_file_limit(max_connections: int) -> None:
    """Make room for max_connections open sockets: raise this process's soft descriptor limit (RLIMIT_NOFILE)
    up to the hard limit when needed; a hard limit too low for the cap is a one-line error."""
    import resource

    from stages.errors import StageError

    needed = max_connections + FILE_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise StageError(f"--max-connections {max_connections} needs {needed} file descriptors; this process "
                             f"may open at most {hard} (ulimit -Hn): lower --max-connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
