"""Dynamic batching: concurrent requests become one onnxruntime call.

One worker task takes the oldest request, waits at most ``max_delay_s`` for more (less when
the batch fills), groups the requests whose tensors differ only in the batch dimension,
concatenates each group along dim 0 up to ``max_batch_size`` rows, runs it in a worker
thread and splits the outputs back. While a batch runs, new requests queue up and form the
next one, so a busy server batches without waiting. ``max_batch_size=1`` (a model with a
static batch dimension) runs every request on its own, in arrival order. A request larger
than ``max_batch_size`` runs alone. When a batch fails, its requests are retried one by
one so only the request at fault gets the error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]


@dataclass
class _Item:
    feeds: Feeds
    rows: int
    future: asyncio.Future
    alone: bool = False
    """Its inputs disagree on the batch dimension: never concatenated with others."""

    @property
    def signature(self) -> tuple:
        if self.alone:
            return (id(self),)
        return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in self.feeds.items()))


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self._on_batch = on_batch or (lambda rows: None)
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._worker: asyncio.Task | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._worker is None:
            return
        await self._queue.put(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None
        self._pool.shutdown(wait=True)

    async def submit(self, feeds: Feeds) -> Feeds:
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        leading = {int(v.shape[0]) if v.ndim else None for v in feeds.values()}
        rows = next(iter(leading)) if len(leading) == 1 and None not in leading else None
        item = _Item(feeds, rows or 1, asyncio.get_running_loop().create_future(), alone=rows is None)
        await self._queue.put(item)
        return await item.future

    # ---- worker ---------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            items, rows = [first], first.rows
            deadline = loop.time() + self.max_delay_s
            while rows < self.max_batch_size:
                remaining = deadline - loop.time()
                try:
                    item = (
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                if item is None:
                    stopping = True
                    break
                items.append(item)
                rows += item.rows
            for batch in self._plan(items):
                await self._execute(batch)
        while not self._queue.empty():  # stop() drains: nothing queued is left unanswered
            item = self._queue.get_nowait()
            if item is not None:
                await self._execute([item])

    def _plan(self, items: list[_Item]) -> list[list[_Item]]:
        """Compatible items together (arrival order kept), each batch at most max rows."""
        groups: dict[tuple, list[list[_Item]]] = {}
        order: list[list[_Item]] = []
        for item in items:
            key = item.signature if self.max_batch_size > 1 and not item.alone else (id(item),)
            batches = groups.setdefault(key, [])
            if not batches or sum(i.rows for i in batches[-1]) + item.rows > self.max_batch_size:
                batches.append([])
                order.append(batches[-1])
            batches[-1].append(item)
        return order

    async def _execute(self, batch: list[_Item]) -> None:
        batch = [i for i in batch if not i.future.done()]  # a client that gave up
        if not batch:
            return
        loop = asyncio.get_running_loop()
        try:
            if len(batch) == 1:
                results = [await loop.run_in_executor(self._pool, self._run, batch[0].feeds)]
            else:
                feeds = {k: np.concatenate([i.feeds[k] for i in batch]) for k in batch[0].feeds}
                outputs = await loop.run_in_executor(self._pool, self._run, feeds)
                total = sum(i.rows for i in batch)
                if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
                    raise ValueError("the outputs do not follow the batch dimension")
                bounds = np.cumsum([i.rows for i in batch])[:-1]
                parts = {k: np.split(v, bounds) for k, v in outputs.items()}
                results = [{k: p[n] for k, p in parts.items()} for n in range(len(batch))]
        except Exception as err:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(err)
                return
            for item in batch:  # find the request at fault: the others still get answers
                await self._execute([item])
            return
        self._on_batch(sum(i.rows for i in batch))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
