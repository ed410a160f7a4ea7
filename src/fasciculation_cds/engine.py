"""The one module that speaks to durable-rules.

durable-rules facts of life handled here: the host is not thread-safe (one lock serialises all
access), it keeps at most 1024 live sessions, and posting facts that match nothing raises
MessageNotHandledException (that simply means "no match"). The stock host starts background
dispatch threads that would race with callers; this host runs actions synchronously inside each
assert and starts none. Each evaluation uses the same session, emptied afterwards, so the
1024-live-session limit is never approached. Facts go to the C engine as orjson text and "no
match" is read from its status code: the stock path encodes each fact with the json module, and
again to build the exception for every fact that matches nothing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import durable_rules_engine
import orjson
from durable import engine as durable_engine

JsonDict = dict[str, Any]
PATIENT_SESSION = "patient"
RuleMatch = tuple[str, dict[str, JsonDict]]



def _plain_number(value: object) -> object:
    """durable-rules' C engine reads numbers only in plain decimal notation, and Python writes a
    float below 1e-4 or from 1e16 up in exponent form, which it refuses (a result a second
    before `as_of` has an age of 1e-05 days). No rule compares at such magnitudes, so they are
    carried as 0 or as 1e15 with their sign: every comparison with a rule's bound comes out the
    same."""
    if isinstance(value, float) and value != 0.0 and not 1e-4 <= abs(value) < 1e16:
        return 0.0 if abs(value) < 1e-4 else math.copysign(1e15, value)
    return value

class EngineError(RuntimeError):
    """The rule engine failed inside an action or rejected a ruleset."""


class _SyncHost(durable_engine.Host):  # type: ignore[misc]
    """A durable-rules host with no timer threads, whose single action records matches."""

    def __init__(self) -> None:
        self.collected: dict[str, list[RuleMatch]] = {}
        self.failures: list[str] = []
        super().__init__()

    def _run(self) -> None:  # no background dispatch: actions run inside assert_facts
        return None

    def get_action(self, action_name: str) -> Any:
        _, _, rule_name = action_name.partition(":")

        def emit(closure: Any) -> None:
            try:
                sid = str(closure.s["sid"])
                matched = {k: dict(v) for k, v in closure._m.items()}
                self.collected.setdefault(sid, []).append((rule_name, matched))
            except Exception as exc:  # durable-rules would swallow it silently
                self.failures.append(f"{rule_name}: {exc!r}")

        return emit


class RuleEngine:
    """Compiled rulesets, registered once, evaluated in one isolated session per patient."""

    def __init__(self, rulesets: Mapping[str, JsonDict]) -> None:
        self._lock = threading.Lock()
        self._session = PATIENT_SESSION
        self._generation = 0
        self._host = _SyncHost()
        try:
            self._host.set_rulesets({name: dict(rules) for name, rules in rulesets.items()})
        except Exception as exc:
            raise EngineError(f"durable-rules rejected the compiled rules: {exc}") from exc

    def run(self, ruleset: str, facts: Sequence[JsonDict]) -> list[RuleMatch]:
        """Assert `facts` into an empty session, collect every match, then empty the session."""
        if not facts:
            return []
        with self._lock:
            sid = self._session
            stored: list[str] = []
            rules = self._host.get_ruleset(ruleset)
            clean = False
            try:
                # One fact at a time: in a batch, one fact that matches no rule makes durable-rules
                # reject the whole batch.
                for fact in facts:
                    message = {**{k: _plain_number(v) for k, v in fact.items()}, "sid": sid}
                    self._post(rules, durable_rules_engine.assert_fact,
                               orjson.dumps(message).decode(), taken=stored)
                clean = True
            finally:
                # Retracting, not delete_state: deleting a session that holds partial matches
                # crashes durable-rules 2.0.28 (seen here); an emptied session is as good as new.
                for posted in stored:
                    try:
                        self._post(rules, durable_rules_engine.retract_fact, posted)
                    except EngineError:
                        clean = False
                if not clean:  # a fact may be left behind: the next patient gets a new session
                    self._generation += 1
                    self._session = f"{PATIENT_SESSION}-{self._generation}"
            matches = self._host.collected.pop(sid, [])
            if self._host.failures:
                failures, self._host.failures = self._host.failures, []
                raise EngineError("; ".join(failures))
        for _, bound in matches:
            for fact in bound.values():
                fact.pop("sid", None)
        return matches

    @staticmethod
    def _post(rules: Any, operation: Any, text: str, taken: list[str] | None = None) -> None:
        """Assert or retract one fact and run the actions it completes. Status 1 (no rule takes
        the fact) is a normal outcome. A fact the engine took is added to `taken` before its
        actions run, so that it is retracted even if they fail."""
        status, state = operation(rules._handle, text)[:2]
        if status == 1:
            return
        if status == 2:
            raise EngineError("durable-rules has already observed this fact")
        if taken is not None:
            taken.append(text)
        failure: list[BaseException] = []
        rules.do_actions(0 if status == 3 else state,
                         lambda error, _: failure.append(error) if error else None)
        if failure:
            raise EngineError(f"durable-rules failed: {failure[0]!r}")
