"""Test-wide settings: hypothesis profiles and the root-only marker.

`HYPOTHESIS_PROFILE=fast|deep` picks the profile (fast is the default; CI uses fast).
Tests that need root (netns, tc, BPF) carry `@pytest.mark.root`; they are skipped with a
reason when not root. CI runs as root and therefore runs them.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "fast", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_root = pytest.mark.skip(reason="needs root (network namespaces, tc, BPF); CI runs as root")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)
