"""JSON-lines flow exporter for the agent's `--flow-export-file PATH` (Hubble's exporter).

Contract:
- `offer(flow)` is called on the producer side (every flow the agent records, not the
  interactive ring). It applies the allow/deny filter spec (`observe.filters`), serialises the
  flow as `{"flow": {...}}` and appends it to an in-memory buffer. It never does file I/O and
  never blocks; when the buffer holds `max_buffered` lines the flow is dropped and counted.
- `flush()` writes the buffer to the file (blocking; run it off the loop with `run()` or
  `asyncio.to_thread`). Before a write would make the file exceed `max_size_bytes` the file is
  rotated: PATH -> PATH.1 -> ... -> PATH.<max_backups>, the oldest is removed.
- Lines that could not be written (OSError) are counted in `lost_total`, never retried, and
  reported through `on_lost(count)` so the agent can count them in a metric.
- `run(interval_s)` is the asyncio task that flushes periodically; `close()` flushes what is
  left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from observe.filters import compile_spec
from observe.flow import Flow

log = logging.getLogger(__name__)

# Hubble exporter defaults: --hubble-export-file-max-size-mb=10, ...-max-backups=5
DEFAULT_MAX_SIZE_MB = 10
DEFAULT_MAX_BACKUPS = 5
# Lines held between flushes; ~1 s of a busy node at 1 s flushes. Beyond it we drop (counted)
# rather than grow without bound when the disk stalls.
DEFAULT_MAX_BUFFERED = 16384
DEFAULT_FLUSH_INTERVAL_S = 1.0


class FlowExporter:
    def __init__(self, path: str, *, max_size_bytes: int = DEFAULT_MAX_SIZE_MB << 20,
                 max_backups: int = DEFAULT_MAX_BACKUPS, spec: dict[str, Any] | None = None,
                 max_buffered: int = DEFAULT_MAX_BUFFERED,
                 on_lost: Callable[[int], None] | None = None) -> None:
        if max_size_bytes < 1 or max_backups < 0:
            raise ValueError("max_size_bytes must be >= 1 and max_backups >= 0")
        self.path = path
        self.max_size_bytes = max_size_bytes
        self.max_backups = max_backups
        self.max_buffered = max_buffered
        self._pred = compile_spec(spec)
        self._on_lost = on_lost
        self._buf: list[bytes] = []
        self._buf_lock = threading.Lock()
        self._io_lock = threading.Lock()  # one flush at a time
        self.exported_total = 0
        self.filtered_total = 0
        self.lost_total = 0
        self.rotations_total = 0

    def offer(self, flow: Flow) -> None:
        if not self._pred(flow):
            self.filtered_total += 1
            return
        line = json.dumps({"flow": flow.to_json()}, separators=(",", ":")).encode() + b"\n"
        with self._buf_lock:
            if len(self._buf) >= self.max_buffered:
                dropped = True
            else:
                self._buf.append(line)
                dropped = False
        if dropped:
            self._lost(1)

    def flush(self) -> int:
        """Write buffered lines; returns how many were written. Blocking file I/O."""
        with self._buf_lock:
            lines, self._buf = self._buf, []
        if not lines:
            return 0
        written = 0
        with self._io_lock:
            try:
                size = _size(self.path)
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                f = open(self.path, "ab")
                try:
                    for line in lines:
                        if size and size + len(line) > self.max_size_bytes:
                            f.close()
                            self._rotate()
                            f = open(self.path, "ab")
                            size = 0
                        f.write(line)
                        size += len(line)
                        written += 1
                finally:
                    f.close()
            except OSError as exc:
                log.warning("flow export to %s failed: %s", self.path, exc)
                self._lost(len(lines) - written)
        self.exported_total += written
        return written

    async def run(self, interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        """Flush every `interval_s` in a worker thread until cancelled; flushes on exit."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await asyncio.to_thread(self.flush)
        finally:
            await asyncio.to_thread(self.flush)

    def close(self) -> None:
        self.flush()

    def _rotate(self) -> None:
        self.rotations_total += 1
        if self.max_backups == 0:
            os.unlink(self.path)
            return
        for i in range(self.max_backups - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")

    def _lost(self, n: int) -> None:
        if n <= 0:
            return
        self.lost_total += n
        if self._on_lost is not None:
            self._on_lost(n)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
