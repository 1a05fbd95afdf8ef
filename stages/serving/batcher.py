"""Dynamic batching: requests that arrive while the model is busy, or within a few milliseconds of each other,
are answered by one model call.

One worker task takes the oldest waiting request, adds every request already queued (up to `max_batch`
sentences in all), and, while other requests are still being read by the server, waits for them up to
`max_wait_ms` after the oldest one arrived. The model then runs in a thread of its own, so the event loop keeps
reading new requests (which form the next batch) during the call. A lone request never waits: at concurrency 1
the latency is the model's own (a single sentence with nobody else waiting runs in the event loop itself, a
fraction of a millisecond, which saves the two thread switches). Each request gets its rows back in its own order.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# texts_a, texts_b (None for single-sentence models) -> class probabilities, one row per text
Model = Callable[[list[str], "list[str] | None"], np.ndarray]


@dataclass
class _Request:
    texts_a: list[str]
    texts_b: list[str] | None
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """`await batcher.predict(texts_a, texts_b)` -> probabilities; with enabled=False every request is its own
    model call (run in a thread pool, several at once), the baseline that batching is measured against."""

    def __init__(self, model: Model, *, max_batch: int = 64, max_wait_ms: float = 2.0, enabled: bool = True):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.model, self.max_batch, self.max_wait, self.enabled = model, max_batch, max_wait_ms / 1000, enabled
        self.calls = 0          # model calls so far (batches when enabled)
        self.sentences = 0      # sentences (or pairs) answered by those calls
        self.arriving = 0       # requests the server is reading that have not reached the queue yet
        self._queue: asyncio.Queue[_Request] | None = None
        self._held: _Request | None = None  # a request that did not fit in the previous batch
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1 if enabled else 8, thread_name_prefix="model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        if self.enabled:
            self._worker = asyncio.create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def predict(self, texts_a: list[str], texts_b: list[str] | None = None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self.calls += 1
            self.sentences += len(texts_a)
            return await loop.run_in_executor(self._pool, self.model, texts_a, texts_b)
        request = _Request(texts_a, texts_b, loop.create_future())
        self._queue.put_nowait(request)
        return await request.future

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._held is not None:
            request, self._held = self._held, None
            return request
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0 or self.arriving == 0:  # nobody else is on the way: waiting only adds latency
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _gather(self) -> list[_Request]:
        first = await self._next(None)
        batch, size = [first], len(first.texts_a)
        deadline = first.arrived + self.max_wait
        while size < self.max_batch:
            request = await self._next(deadline - time.perf_counter())
            if request is None:
                break
            if size + len(request.texts_a) > self.max_batch:
                self._held = request  # it opens the next batch
                break
            batch.append(request)
            size += len(request.texts_a)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            batch = [r for r in batch if not r.future.done()]  # a client that went away
            if not batch:
                continue
            texts_a = [t for r in batch for t in r.texts_a]
            texts_b = None if batch[0].texts_b is None else [t for r in batch for t in r.texts_b]
            self.calls += 1
            self.sentences += len(texts_a)
            try:
                if len(texts_a) == 1 and self.arriving == 0 and self._queue.empty() and self._held is None:
                    rows = self.model(texts_a, texts_b)  # one sentence, nobody waiting: skip two thread switches
                else:
                    rows = await loop.run_in_executor(self._pool, self.model, texts_a, texts_b)
            except Exception as e:  # the batch's requests fail, the service keeps serving
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            start = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(rows[start:start + len(r.texts_a)])
                start += len(r.texts_a)
