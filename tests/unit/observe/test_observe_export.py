"""FlowExporter: JSON lines, filter, size rotation with N backups, counted losses."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from observe.export import FlowExporter
from observe.flow import Flow, FlowVerdict


def _read(path: Path) -> list[Flow]:
    return [Flow.from_json(json.loads(x)) for x in path.read_text().splitlines()]


def test_writes_json_lines_only_on_flush(tmp_path: Path, flows: list[Flow]) -> None:
    path = tmp_path / "sub" / "flows.json"
    ex = FlowExporter(str(path))
    for f in flows:
        ex.offer(f)
    assert not path.exists()  # offer() never does file I/O
    assert ex.flush() == len(flows)
    assert _read(path) == flows
    assert ex.exported_total == len(flows) and ex.lost_total == 0
    assert ex.flush() == 0


def test_allow_deny_filter(tmp_path: Path, flows: list[Flow]) -> None:
    path = tmp_path / "f.json"
    spec = {"allow": [{"verdict": ["DROPPED"]}], "deny": [{"event_type": ["l7"]}]}
    ex = FlowExporter(str(path), spec=spec)
    for f in flows:
        ex.offer(f)
    ex.close()
    want = [f for f in flows if f.verdict is FlowVerdict.DROPPED and f.kind.value != "l7"]
    assert _read(path) == want and want
    assert ex.filtered_total == len(flows) - len(want)


def test_rotation_keeps_n_backups(tmp_path: Path, flows: list[Flow]) -> None:
    path = tmp_path / "f.json"
    line_len = max(len(json.dumps({"flow": f.to_json()}, separators=(",", ":"))) + 1
                   for f in flows)
    ex = FlowExporter(str(path), max_size_bytes=3 * line_len, max_backups=2)
    written: list[Flow] = []
    for _ in range(5):
        for f in flows:
            ex.offer(f)
            written.append(f)
        ex.flush()
    files = sorted(os.listdir(tmp_path))
    assert files == ["f.json", "f.json.1", "f.json.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 3 * line_len
    # The newest flows are in f.json, preceded by .1 then .2, in order, without gaps.
    kept = _read(tmp_path / "f.json.2") + _read(tmp_path / "f.json.1") + _read(path)
    assert kept == written[-len(kept):]
    assert ex.rotations_total > 2


def test_rotation_without_backups(tmp_path: Path, flows: list[Flow]) -> None:
    path = tmp_path / "f.json"
    ex = FlowExporter(str(path), max_size_bytes=1, max_backups=0)
    for f in flows[:3]:
        ex.offer(f)
    ex.flush()
    assert os.listdir(tmp_path) == ["f.json"]
    assert _read(path) == flows[2:3]


def test_buffer_bound_and_write_errors_are_counted(tmp_path: Path, flows: list[Flow]) -> None:
    lost: list[int] = []
    ex = FlowExporter(str(tmp_path), max_buffered=2, on_lost=lost.append)  # a directory
    for f in flows[:5]:
        ex.offer(f)
    assert ex.lost_total == 3  # buffer full
    ex.flush()  # open() of a directory fails
    assert ex.lost_total == 5 and sum(lost) == 5 and ex.exported_total == 0


def test_run_flushes_periodically_and_on_cancel(tmp_path: Path, flows: list[Flow]) -> None:
    path = tmp_path / "f.json"
    ex = FlowExporter(str(path))

    async def scenario() -> None:
        task = asyncio.create_task(ex.run(interval_s=0.01))
        ex.offer(flows[0])
        for _ in range(2000):  # bounded wait for the first periodic flush
            if ex.exported_total:
                break
            await asyncio.sleep(0.005)
        ex.offer(flows[1])
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(scenario())
    assert _read(path) == flows[:2]
