"""The one error tree of l7gate (STYLE.md §5). No I/O here.

Every module converts third-party exceptions into one of these at the point where it calls
the third-party code (see `map_errors`). Callers at the edge (CLI, servers) turn them into a
protocol answer, an exit code or a log line; nothing below the edge swallows them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass


class L7gateError(Exception):
    """Base of every error l7gate raises on purpose."""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem found in a policy file: where it is and what is wrong."""

    file: str
    line: int  # 1-based; 0 when the position is unknown
    message: str
    field: str = ""  # dotted path such as "spec.ingress[0].toPorts[0].ports[0].port"
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        what = f"{self.field}: {self.message}" if self.field else self.message
        return f"{where}: {'warning: ' if self.warning else ''}{what}"


class PolicyError(L7gateError):
    """Bad policy input; the previously active policy stays in force.

    Carries every problem found (a file with several bad rules names them all).
    """

    def __init__(self, problems: list[PolicyProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [PolicyProblem(file="", line=0, message=problems)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(L7gateError):
    """Bad topology, endpoints or agent configuration file (FILE:LINE: message)."""


class RemoteProtocolError(L7gateError):
    """The peer sent junk: answer 400 / FORMERR, then close."""


class UpstreamError(L7gateError):
    """Connect/read timeout or reset upstream."""


class RedirectError(L7gateError):
    """BPF load, tc attach, map update or routing-rule failure."""


class ProtocolStateError(L7gateError):
    """An event arrived in a state that does not accept it (a bug, not peer input)."""


@contextlib.contextmanager
def map_errors(mapping: dict[type[Exception], type[L7gateError]]) -> Iterator[None]:
    """Re-raise third-party exceptions as our own, keeping the cause chained."""
    try:
        yield
    except tuple(mapping) as exc:
        target = next(v for k, v in mapping.items() if isinstance(exc, k))
        raise target(str(exc)) from exc
