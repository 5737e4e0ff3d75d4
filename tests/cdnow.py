"""The CDNOW sample (Fader, Hardie & Lee 2005) and its published fits, for tests and ``make bench``.

The data (2,357 customers, 6,919 transactions) is read from the ``lifetimes`` package's data
directory without importing lifetimes (its import warns, and its fitter is not what we test).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

from scorestream.clv import BgNbdParams, GammaGammaParams

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS

# Fader, Hardie & Lee (2005), table/fig. of the CDNOW calibration fit (39 weeks, 2,357 customers).
PUBLISHED_BGNBD = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
PUBLISHED_BGNBD_LL = -9582.4
# Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value", same calibration data.
PUBLISHED_GG = GammaGammaParams(p=6.25, q=3.74, v=15.44)


def dataset(name: str) -> Path:
    spec = importlib.util.find_spec("lifetimes")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[dev]' (lifetimes==0.11.3)"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / name


def day_ms(yyyymmdd: str) -> int:
    day = dt.datetime.strptime(yyyymmdd, "%Y%m%d").replace(tzinfo=dt.UTC)
    return int(day.timestamp()) * 1000


CALIBRATION_END_MS = day_ms("19970930")


def purchases() -> dict[int, list[tuple[int, float]]]:
    """Customer id -> (day timestamp, dollars): dates only, so same-day purchases share a timestamp."""
    out: dict[int, list[tuple[int, float]]] = {}
    for line in dataset("CDNOW_sample.txt").read_text().splitlines():
        _master_id, customer, day, _cds, dollars = line.split()
        out.setdefault(int(customer), []).append((day_ms(day), float(dollars)))
    return out
