"""BPF datapath counters, read at scrape time (no BPF import here).

Contract: `BpfCountersCollector(reader)` is a prometheus_client collector. At each scrape it
calls `reader()`, which returns `{"drops": {reason: count}, "forwarded": count}` where a
reason is a `DropReason` name or its number (the per-CPU sums the redirect/ layer reads from
the counters map), and yields:
- `l7gate_datapath_drops_total{reason}` (reason = DropReason name, unknown numbers UNKNOWN),
- `l7gate_datapath_forwarded_total`.
A reader that raises does not break the scrape: the families are skipped for that scrape and
`l7gate_datapath_read_errors_total` (counted by the collector) says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from policy.types import DropReason

log = logging.getLogger(__name__)

CounterReader = Callable[[], Mapping[str, Any]]


def reason_name(reason: str | int) -> str:
    if isinstance(reason, int) or (isinstance(reason, str) and reason.lstrip("-").isdigit()):
        try:
            return DropReason(abs(int(reason))).name
        except ValueError:
            return "UNKNOWN"
    name = str(reason).upper()
    return name if name in DropReason.__members__ else "UNKNOWN"


class BpfCountersCollector(Collector):
    def __init__(self, reader: CounterReader) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self.read_errors = 0

    def describe(self) -> Iterator[CounterMetricFamily]:
        # Described without reading the map: registering must not touch BPF.
        yield CounterMetricFamily("l7gate_datapath_drops", "Packets dropped by the datapath",
                                  labels=["reason"])
        yield CounterMetricFamily("l7gate_datapath_forwarded",
                                  "Packets the datapath let through")
        yield CounterMetricFamily("l7gate_datapath_read_errors",
                                  "Scrapes where the BPF counters could not be read")

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            data = self._reader()
            drops: dict[str, float] = {}
            for reason, count in dict(data.get("drops", {})).items():
                name = reason_name(reason)
                drops[name] = drops.get(name, 0.0) + float(count)
            forwarded = float(data.get("forwarded", 0))
        except Exception as exc:  # the scrape must go on; logged and counted
            log.warning("reading BPF counters failed: %s", exc)
            with self._lock:
                self.read_errors += 1
        else:
            fam = CounterMetricFamily("l7gate_datapath_drops", "Packets dropped by the datapath",
                                      labels=["reason"])
            for name in sorted(drops):
                fam.add_metric([name], drops[name])
            yield fam
            yield CounterMetricFamily("l7gate_datapath_forwarded",
                                      "Packets the datapath let through", value=forwarded)
        yield CounterMetricFamily("l7gate_datapath_read_errors",
                                  "Scrapes where the BPF counters could not be read",
                                  value=self.read_errors)
