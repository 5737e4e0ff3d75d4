"""The run's Markdown tables: a row per latency run and kind of probe, a row per sustained rate."""

from __future__ import annotations

from bench import tables


def _part(p50: float, lost: int = 0) -> dict[str, object]:
    return {
        "probes": 3,
        "lost": lost,
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "p999_ms": None if lost else 3 * p50,
        "worker_p50_ms": 1.0,
        "worker_p99_ms": 2.0,
        "worker_p999_ms": 3.0,
        "api_p50_ms": 4.0,
        "api_p99_ms": 5.0,
        "api_p999_ms": 6.0,
    }


def test_latency_rows_per_run_and_kind() -> None:
    figures = {
        "latency_1000": {**_part(20.0), "achieved_background_events_per_s": 950, "identified": _part(20.0)},
        "latency_1000_spine_model": {**_part(12.0, lost=1), "achieved_background_events_per_s": 950},
        "service_500": {**_part(30.0), "achieved_background_events_per_s": 480, "anonymous": _part(40.0)},
        "throughput_spine": {"events_per_s": 1},
    }
    lines = tables.latency(figures)
    rows = [line for line in lines if line.startswith("| bench") or line.startswith("| whole")]
    assert rows == [
        "| bench | full | 1,000 | 950 | all | 3 | 0 | 20 / 40 / 60 | 1.0 / 2.0 / 3.0 | 4.0 / 5.0 / 6.0 |",
        "| bench | full | 1,000 | 950 | identified | 3 | 0 | 20 / 40 / 60 | 1.0 / 2.0 / 3.0 | 4.0 / 5.0 / 6.0 |",
        "| bench | spine | 1,000 | 950 | all | 3 | 1 | 12 / 24 / lost | 1.0 / 2.0 / 3.0 | 4.0 / 5.0 / 6.0 |",
        "| whole service | full | 500 | 480 | all | 3 | 0 | 30 / 60 / 90 | 1.0 / 2.0 / 3.0 | 4.0 / 5.0 / 6.0 |",
        "| whole service | full | 500 | 480 | anonymous | 3 | 0 | 40 / 80 / 120 | 1.0 / 2.0 / 3.0 | 4.0 / 5.0 / 6.0 |",
    ]
    assert tables.latency({"throughput_spine": {}}) == []


def test_sustained_rows_per_rate_tried_and_the_maximum() -> None:
    figures = {
        "sustained": {
            "max_sustained_events_per_s": 1000.0,
            "seconds_per_rate": 120,
            "tried": {
                "1000": {
                    "sustained": True,
                    "p50_ms": 20.0,
                    "p99_ms": 90.0,
                    "lost": 0,
                    "lag": {"growth": 5.0},
                    "why_not": [],
                },
                "2000": {
                    "sustained": False,
                    "p50_ms": 900.0,
                    "p99_ms": 4000.0,
                    "lost": 0,
                    "lag": {"growth": 50000.0},
                    "why_not": ["p99 4000.0 ms", "lag grew"],
                },
            },
        }
    }
    lines = tables.sustained(figures)
    assert "| bench | full | 1,000 | yes | 20 / 90 | 0 | 5.0 |  |" in lines
    assert "| bench | full | 2,000 | no | 900 / 4,000 | 0 | 50000.0 | p99 4000.0 ms; lag grew |" in lines
    assert "| bench | full | **max 1,000** | (120 s a rate) | | | | |" in lines


def test_throughput_rows_per_prefilled_size_with_the_ratios() -> None:
    figures = {
        "throughput_spine": {"events": 200_000, "events_per_s_after_startup": 15_000},
        "throughput_full_model": {"events": 200_000, "events_per_s_after_startup": 7_000},
        "hand_rolled_durable": {"events_per_s": 45_000},
        "stock_faust_table_per_event": {"events_per_s": 1_200},
        "quix_streams_peer": {"error": "FileNotFoundError"},
        "ratios": {
            "scorestream_vs_hand_rolled_durable": 0.33,
            "scorestream_vs_stock_faust_table_per_event": 12.5,
            "full_model_vs_hand_rolled_durable": 0.16,
            "full_model_vs_stock_faust_table_per_event": 5.83,
        },
        "throughput_spine_1000k": {"events": 1_000_000, "events_per_s_after_startup": 16_000},
        "ratios_1000k": {},
    }
    lines = tables.throughput(figures)
    assert "| 200,000 | 15,000 | 7,000 | 45,000 | 1,200 | - | 0.33 / 12.5 / - / 0.16 / 5.83 / - |" in lines
    assert "| 1,000,000 | 16,000 | - | - | - | - | - / - / - / - / - / - |" in lines
    assert tables.throughput({"throughput_spine": {}}) == []
