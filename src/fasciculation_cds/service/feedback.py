"""Card feedback, stored durably (SQLAlchemy: SQLite by default, any database URL works), and
the per-rule report an informaticist uses to fight alert fatigue."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .cards import OVERRIDE_REASONS as _OWN_REASONS
from .settings import default_feedback_database

log = logging.getLogger("fasciculation_cds.service.feedback")
MAX_PENDING_CALLS = 10_000  # calls whose cards wait to be counted; beyond, counts are dropped
metadata = MetaData()
cards_shown = Table(
    "cards_shown", metadata,
    Column("uuid", String(64), primary_key=True),
    Column("rule_id", String(120), nullable=False, index=True),
    Column("service", String(64), nullable=False),
    Column("shown_at", DateTime(timezone=True), nullable=False),
)
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card", String(64), nullable=False, index=True),
    Column("service", String(64), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("reason_code", String(120)),
    Column("reason_display", String(255)),
    Column("comment", Text),
    Column("accepted_suggestions", Text),
    Column("outcome_timestamp", String(40)),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


def _sqlite_write_ahead_log(connection: Any, _: Any) -> None:
    """WAL with synchronous=NORMAL: a commit no longer waits for the disk (a counter of cards
    shown must not cost each hook call a flush); the database stays consistent on a crash,
    and at worst the last moments of counts are lost."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class FeedbackStoreError(Exception):
    """The feedback database failed; the message never carries what was being stored."""


def _private_file(path: Path) -> None:
    """The SQLite file (clinicians' comments) readable by the service's user only, whatever the
    umask: a folder the service creates is 0700, the file 0600 (SQLite gives its -wal and -shm
    files the database file's mode)."""
    if not path.is_absolute():
        raise FeedbackStoreError(f"the feedback database path is not absolute ({path}); set "
                                 "feedback_database_url (is HOME set?)")
    try:
        missing = [folder for folder in [path.parent, *path.parent.parents]
                   if not folder.exists()]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path == default_feedback_database():  # the service's own folder, made 0755 before
            missing.append(path.parent)
        for folder in missing:
            folder.chmod(0o700)
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(descriptor)
        path.chmod(0o600)
    except OSError as exc:
        raise FeedbackStoreError(f"the feedback database {path} cannot be created "
                                 f"({exc.strerror or type(exc).__name__}); set "
                                 "feedback_database_url to a writable place") from None


class FeedbackStore:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "",
                                                                            ":memory:"):
            _private_file(Path(parsed.database).expanduser())
        # hide_parameters: a database error must never echo a comment into a log line
        self.engine: Engine = create_engine(url, future=True, hide_parameters=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_write_ahead_log)
        metadata.create_all(self.engine)
        self.location = parsed.render_as_string(hide_password=True)
        # Cards shown are counted off the request path, by one writer, many calls a statement.
        self._pending: list[tuple[str, list[dict[str, Any]], datetime]] = []
        self._pending_lock = threading.Lock()
        self._dropped = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fasciculation-shown")

    def count_shown(self, service: str, cards: list[dict[str, Any]]) -> None:
        """Count `cards` as shown, later: the hook answer never waits for the database. A
        failure is logged (no card content) and never holds back a card."""
        if not cards:
            return
        with self._pending_lock:
            if len(self._pending) >= MAX_PENDING_CALLS:  # the database is not keeping up
                self._dropped += 1
                if self._dropped % 1000 == 1:
                    log.warning("cards shown not recorded: %d calls already wait for the "
                                "feedback database (%d dropped)", len(self._pending),
                                self._dropped)
                return
            self._pending.append((service, cards, datetime.now(timezone.utc)))
        try:
            self._writer.submit(self._write_pending)
        except RuntimeError:  # the service is stopping: the writer takes no more
            log.warning("cards shown not recorded: the service is stopping")

    def flush(self) -> None:
        """Wait until every card counted so far is in the database."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def _write_pending(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        rows: dict[str, dict[str, Any]] = {}
        unreadable = 0
        for service, cards, now in batch:  # counted twice in a burst: its first showing
            for card in cards:
                try:
                    uuid, rule_id = str(card["uuid"]), str(card["source"]["topic"]["code"])
                except (KeyError, TypeError):
                    unreadable += 1
                    continue
                rows.setdefault(uuid, {"uuid": uuid, "rule_id": rule_id, "service": service,
                                       "shown_at": now})
        if unreadable:
            log.error("cards shown not recorded: %d card(s) without uuid or topic", unreadable)
        try:
            self._store_shown(list(rows.values()))
        except FeedbackStoreError as exc:
            log.warning("cards shown not recorded: %s", exc)
        except Exception as exc:  # nobody reads this thread's results: say it here
            log.error("cards shown not recorded (%s)", type(exc).__name__)

    def _store_shown(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            try:
                self._insert_shown(rows)
            except IntegrityError:  # the same card counted by a concurrent call: count once
                self._insert_shown(rows)
        except SQLAlchemyError as exc:
            raise FeedbackStoreError(f"feedback database error ({type(exc).__name__})") from None

    def _insert_shown(self, rows: list[dict[str, Any]]) -> None:
        if self.engine.dialect.name in ("sqlite", "postgresql"):
            # one statement for the lot: a card already counted is left as it is
            dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
            with self.engine.begin() as db:
                db.execute(dialect.insert(cards_shown).on_conflict_do_nothing(), rows)
            return
        with self.engine.begin() as db:
            known = set(db.scalars(select(cards_shown.c.uuid).where(
                cards_shown.c.uuid.in_([row["uuid"] for row in rows]))))
            fresh = [row for row in rows if row["uuid"] not in known]
            if fresh:
                db.execute(cards_shown.insert(), fresh)

    def record(self, service: str, items: list[dict[str, Any]]) -> int:
        self.flush()  # a card's showing is stored before any feedback on it
        now = datetime.now(timezone.utc)
        rows = []
        for item in items:
            reason = (item.get("overrideReason") or {}).get("reason") or {}
            rows.append({
                "card": str(item["card"]), "service": service, "outcome": str(item["outcome"]),
                "reason_code": reason.get("code"), "reason_display": reason.get("display"),
                "comment": (item.get("overrideReason") or {}).get("userComment"),
                "accepted_suggestions": json.dumps(item.get("acceptedSuggestions") or []),
                "outcome_timestamp": item.get("outcomeTimestamp"), "received_at": now})
        try:
            with self.engine.begin() as db:
                db.execute(feedback.insert(), rows)
        except SQLAlchemyError as exc:
            raise FeedbackStoreError(f"feedback database error ({type(exc).__name__})") from None
        return len(rows)

    def report(self) -> list[dict[str, Any]]:
        """Per rule: cards shown, accepted, overridden, and the top override reasons."""
        self.flush()
        with self.engine.connect() as db:
            per_rule = select(cards_shown.c.rule_id, func.count()).group_by(cards_shown.c.rule_id)
            shown: dict[str, int] = {rule: int(n) for rule, n in db.execute(per_rule).all()}
            rows = db.execute(select(cards_shown.c.rule_id, feedback.c.outcome,
                                     feedback.c.reason_display, feedback.c.reason_code).join(
                feedback, feedback.c.card == cards_shown.c.uuid)).all()
        outcomes: dict[str, Counter[str]] = {}
        reasons: dict[str, Counter[str]] = {}
        # the reasons the cards offered: their display when the EHR sends a code back bare
        displays = {r.code: r.display for r in _OWN_REASONS if r.display}
        displays |= {code: display for *_, display, code in rows if code and display}
        for rule_id, outcome, display, code in rows:
            outcomes.setdefault(rule_id, Counter())[outcome] += 1
            if outcome == "overridden" and (display or code):
                # a reason by its display: as sent, else as sent with the same code elsewhere
                # or as the card offered it; its code only when no display is known at all
                label = display or displays.get(code) or code
                reasons.setdefault(rule_id, Counter())[label] += 1
        report = []
        for rule_id in sorted(set(shown) | set(outcomes)):
            counts = outcomes.get(rule_id, Counter())
            report.append({"rule_id": rule_id, "shown": int(shown.get(rule_id, 0)),
                           "accepted": counts["accepted"], "overridden": counts["overridden"],
                           "top_override_reasons": reasons.get(rule_id, Counter()).most_common(3)})
        return report
