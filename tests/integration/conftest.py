"""Fixtures shared by the datapath tests: one netns topology and one loaded datapath per
test module (see datapath_helpers.py), torn down at the module's end, also after failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration import datapath_helpers as H


@pytest.fixture(scope="module")
def topo() -> Iterator[H.Topology]:
    with H.topology() as t:
        yield t


@pytest.fixture(scope="module")
def dp(topo: H.Topology) -> Iterator[Any]:
    with H.datapath(topo) as d:
        yield d


@pytest.fixture(scope="module")
def reader(dp: Any) -> Any:
    from redirect.events import EventReader

    return EventReader(dp)


@pytest.fixture
def events(reader: Any) -> Callable[..., list[Any]]:
    return H.event_waiter(reader)
