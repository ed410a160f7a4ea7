"""Counting cards shown off the request path: never raises into a hook call, never holds back
a card, keeps what it can when part of a burst is bad, and stays bounded."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from fasciculation_cds.service import feedback
from fasciculation_cds.service.feedback import FeedbackStore


def _card(uuid: str, rule_id: str = "electrolyte.hypokalemia") -> dict[str, Any]:
    return {"uuid": uuid, "source": {"topic": {"code": rule_id}}}


def _shown(store: FeedbackStore) -> dict[str, int]:
    return {row["rule_id"]: row["shown"] for row in store.report()}


def test_a_bad_card_in_a_burst_costs_only_itself(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    with caplog.at_level(logging.ERROR, logger="fasciculation_cds.service.feedback"):
        store.count_shown("svc", [_card("a"), {"uuid": "b"}, _card("c", "mnd.red-flags")])
        assert _shown(store) == {"electrolyte.hypokalemia": 1, "mnd.red-flags": 1}
    assert "1 card(s) without uuid or topic" in caplog.text
    store.close()


def test_counting_after_close_does_not_raise(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    store.close()
    store.count_shown("svc", [_card("a")])  # a call finishing while the service stops


def test_counts_waiting_for_a_stuck_database_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(feedback, "MAX_PENDING_CALLS", 5)
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    release = threading.Event()
    real = store._store_shown

    def stuck(rows: list[dict[str, Any]]) -> None:
        release.wait(timeout=30)
        real(rows)

    monkeypatch.setattr(store, "_store_shown", stuck)
    store.count_shown("svc", [_card("first")])  # the writer takes it and hangs
    for index in range(20):
        store.count_shown("svc", [_card(f"c{index}")])
    with store._pending_lock:
        assert len(store._pending) <= 5
    assert "calls already wait for the feedback database" in caplog.text
    release.set()
    store.flush()
    assert 2 <= _shown(store)["electrolyte.hypokalemia"] <= 6
    store.close()
