"""Fixtures of the SNP tests: the real vectors, and one simulated AMD-SP per product (its
RSA-4096 keys take a few seconds to make, so they are made once per test session)."""
import os
from datetime import datetime, timezone

import pytest

from ctpm.snp.report import Product

VECTORS = os.path.join(os.path.dirname(__file__), "vectors")
# every real certificate but the VLEK is valid here; the VLEK only in 2024-12-10 .. 2025-12-10
AT = datetime(2026, 6, 1, tzinfo=timezone.utc)
AT_VLEK = datetime(2025, 6, 1, tzinfo=timezone.utc)


def vector(name: str) -> bytes:
    with open(os.path.join(VECTORS, name), "rb") as f:
        return f.read()


@pytest.fixture(scope="session")
def sims(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    root = tmp_path_factory.mktemp("amd-sp")
    return {p: SimulatedSP(str(root / p.value), p) for p in Product}


@pytest.fixture(scope="session")
def milan(sims):
    return sims[Product.MILAN]
