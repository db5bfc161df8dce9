"""Recent served lists in memory, so an observation's `decision` can be checked when it arrives.

An observation that names a decision is joined with that decision by off-policy evaluation: the
item's propensity in that list weighs the reward. A decision id that belongs to another user, or
an item that was not in the list, would put a reward where nothing was shown, so observe refuses
it (400) while the decision is remembered here. Decisions not remembered (older than the last
`decision_memory` lists of this process, served before a restart or by another process) cannot be
checked here: the observation is learned and logged, and training/offpolicy.py leaves it out of
the estimates unless the decision log shows that list, for that user, with that item.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from veloxserve.errors import invalid_parameter
from veloxserve.serving.exploration import ExplorationPolicy
from veloxserve.storage.decision_log import DecisionLog, new_decision_id

if TYPE_CHECKING:
    from veloxserve.serving.model_server import ModelServer, Recommendation


class RecentDecisions:
    """decision id -> (user, items shown) for the newest `capacity` decisions of one model."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._decisions: OrderedDict[str, tuple[str, frozenset[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._decisions)

    def remember(self, decision: str, user: str, items: Sequence[str]) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._decisions[decision] = (user, frozenset(items))
            if len(self._decisions) > self.capacity:
                self._decisions.popitem(last=False)

    def check(
        self, decisions: Sequence[str | None], users: Sequence[str], items: Sequence[str], where: str = "observe"
    ) -> None:
        """400 naming the first observation whose known decision was served to another user or
        did not show its item. Unknown decisions pass: they count as unmatched (module docstring)."""
        for i, decision in enumerate(decisions):
            if decision is None:
                continue
            served = self._decisions.get(decision)
            if served is None:
                continue
            user, shown = served
            if users[i] != user:
                raise invalid_parameter(
                    f"observations[{i}].decision",
                    where,
                    f"a decision served to user {users[i]!r} (this one was served to another user: send the "
                    "decision id of the top_k answer this user got, or leave decision out)",
                    decision,
                )
            if items[i] not in shown:
                raise invalid_parameter(
                    f"observations[{i}].item",
                    where,
                    f"one of the {len(shown)} items decision {decision!r} showed (observe an item outside a served "
                    "list without decision)",
                    items[i],
                )


def recommend_logged(
    server: ModelServer, recent: RecentDecisions, log: DecisionLog, user: Any, k: Any, **options: Any
) -> Recommendation:
    """`server`'s list under an exploration policy (`policy`, `epsilon`, `alpha` among `options`),
    given its decision id, remembered and logged with each item's propensity: Velox's and a reader
    worker's (`serve --workers N`) top-k, one way."""
    policy = ExplorationPolicy.parse(
        options.pop("policy", None), options.pop("epsilon", None), options.pop("alpha", None)
    )
    rec = server.recommend(user, k, policy=policy, **options)
    version_id = server.version_id
    rec.decision = new_decision_id()
    rec.model_version = version_id
    items = [str(i) for i in rec.items]
    recent.remember(rec.decision, rec.user, items)
    log.append(
        {
            "decision": rec.decision,
            "ts": time.time(),
            "model_version": version_id,
            "user": rec.user,
            "policy": rec.policy.describe(),
            "items": items,
            "scores": rec.scores,
            "propensities": rec.propensities,
        }
    )
    return rec
