"""Several workers on one host share ``SCORESTREAM_DATA_DIR``: each holds a slot of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.settings import Settings
from streams.worker import SlotTaken, claim_slot


def test_workers_on_one_host_take_the_lowest_free_slots(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first, first_lock = claim_slot(settings)
    second, second_lock = claim_slot(settings)
    try:
        assert (first.worker_index, second.worker_index) == (0, 1)
        assert first.worker_dir == tmp_path / "worker" / "0"
        assert second.worker_dir == tmp_path / "worker" / "1"
        first_lock.close()  # that worker ended (a SIGKILL releases its lock the same way)
        third, third_lock = claim_slot(settings)
        assert third.worker_index == 0, "a freed slot (and its tables) is taken again"
        third_lock.close()
    finally:
        second_lock.close()


def test_a_slot_given_explicitly_is_refused_while_held(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_index=3)
    claimed, lock = claim_slot(settings)
    try:
        assert claimed.worker_dir == tmp_path / "worker" / "3"
        with pytest.raises(SlotTaken, match=r"slot 3 .* is held by the running worker"):
            claim_slot(settings)
    finally:
        lock.close()


def test_a_shadow_namespace_has_slots_of_its_own(tmp_path: Path) -> None:
    active, active_lock = claim_slot(Settings(data_dir=tmp_path))
    shadow, shadow_lock = claim_slot(Settings(data_dir=tmp_path, namespace="v2"))
    try:
        assert active.worker_dir == tmp_path / "worker" / "0"
        assert shadow.worker_dir == tmp_path / "worker-v2" / "0"
    finally:
        active_lock.close()
        shadow_lock.close()
