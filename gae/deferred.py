"""Input checks whose verdict stays on the device until the host next waits (issue 14).

A check that reads its verdict back at once (`if bad.any(): raise`) makes the host wait for
the GPU to finish everything queued so far: at 1024 x 4096 that one sync cost `compute_gae`
3-6x its kernel on an H200 (231-445 us against 76 us). So on CUDA `compute_gae` queues, after its kernel, a copy of a
small check record into pinned host memory and an event, and returns. The record is read
when the host waits anyway, which is how PyTorch reports its own device-side errors
("CUDA kernel errors might be asynchronously reported at some other API call"), and how
`torch.linalg.cholesky_ex` leaves its `info` on the device unless asked to check.

A pending check raises its error (the eager check's message, word for word, and a note
saying where it came from), once, at the first of:

1. `gae.device.to_host(...).wait()`: the pipeline's next host copy, which waits anyway;
   the bad results are then never written to the store;
2. `raise_pending()` (also `gae.advantages.raise_pending`): waits for the pending checks;
3. the next deferred call in the same thread, if the earlier check has already finished on
   the device (it never waits for it).

Checks are pending per thread (a thread raises the errors of its own calls), in call order;
the first failed one is raised and all are cleared. Reading results by other means (`.cpu()`,
`.item()`, `.tolist()`) before one of the three does not check them: call `raise_pending()`
first, or use `check="eager"` (`GAE_CHECK=eager` makes every call eager, for debugging).
At most `MAX_PENDING` checks wait; a deferred call past that waits for the oldest.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import torch

MAX_PENDING = 64
# Records of at most this many rows are copied whole (16 bytes a row) and reduced on the host;
# longer ones are reduced on the device first (two more small launches).
COPY_ROWS = 4096
NOTE = (
    "[found by a deferred input check of {label}: it ran on the device and was read when the "
    "host next waited; check='eager' or GAE_CHECK=eager raises at the call]"
)


@dataclasses.dataclass
class _Pending:
    host: torch.Tensor  # (N, 2) int64 check records on the host, (key, value bits) per row
    event: object  # torch.cuda.Event after the copy, or None when `host` was written in place
    decode: Callable[[int, int], Exception | None]  # (key, value bits) -> the error or None
    label: str

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def error(self) -> Exception | None:
        if self.event is not None:
            self.event.synchronize()
        keys = self.host[:, 0]
        i = int(keys.argmin())
        err = self.decode(int(keys[i]), int(self.host[i, 1]))
        if err is None:
            return None
        return type(err)(f"{err} {NOTE.format(label=self.label)}")


_local = threading.local()


def _queue() -> list[_Pending]:
    q = getattr(_local, "queue", None)
    if q is None:
        q = _local.queue = []
    return q


def defer(
    record: torch.Tensor,
    decode: Callable[[int, int], Exception | None],
    *,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    label: str,
) -> None:
    """Hold the check `record` ((N, 2) int64 on any device) until the host next waits.

    `decode(key, value_bits)` names the problem (None: clean); `reduce` maps (N, 2) records to
    the (1, 2) one that decides, on the device. First raises, without waiting, an earlier
    pending check that has already failed (see the module docstring)."""
    poll()
    if record.device.type == "cuda":
        if record.shape[0] > COPY_ROWS:
            record = reduce(record)
        host = torch.empty(record.shape, dtype=torch.int64, pin_memory=True)
        host.copy_(record, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(record.device))
    else:
        # CPU (the Triton interpreter, the torch backend): the record is final already; other
        # devices copy it synchronously, having no event to wait on.
        host, event = record.to("cpu"), None
    queue = _queue()
    queue.append(_Pending(host, event, decode, label))
    if len(queue) > MAX_PENDING:
        _settle(len(queue) - MAX_PENDING)


def poll() -> None:
    """Settle the pending checks that have finished, in call order, without waiting; raise the
    first failed one."""
    queue = _queue()
    n = 0
    while n < len(queue) and queue[n].done():
        n += 1
    if n:
        _settle(n)


def raise_pending() -> None:
    """Wait for this thread's pending input checks and raise the first that failed (an
    `AdvantageInputError`, a ValueError naming the argument, `[b, t]` and value). A host sync:
    call it before reading results by other means than `gae.device.to_host`."""
    _settle(len(_queue()))


def pending() -> int:
    """How many checks this thread has pending."""
    return len(_queue())


def _settle(n: int) -> None:
    # The first n checks leave the queue whatever they hold: each error is raised once.
    queue = _queue()
    settled, queue[:n] = queue[:n], []
    errors = [e for e in (p.error() for p in settled) if e is not None]
    if errors:
        first = errors[0]
        if len(errors) > 1:
            first = type(first)(f"{first} ({len(errors) - 1} later call(s) failed their checks too)")
        raise first
