"""The one policy design: a class per policy, a shared base, one registry per family keyed by name.

Two families decide what is shown and learn from what users did: top-k exploration
(serving/exploration.py: greedy, epsilon-greedy, LinUCB, Thompson sampling) and Clipper's
correction policies over linked models (clipper/policies.py: single, Exp3, Exp4, personalised).
As in river's bandits (river/bandit/base.py), the base does what every policy shares and a policy
writes its rule: the base declares and checks the parameters (name, default, range), keeps them as
attributes and lists them for descriptions; a `PolicyRegistry` maps each name to its class and
parses a policy from JSON, with errors that name the field, what was expected and what was got.
A family's base adds the one method its caller uses (`slate` for top-k, `select`/`combine`/
`observe` for Clipper).

It lives in learning/ so that both serving/ and clipper/ can import it (both sit above learning).
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from veloxserve.errors import invalid_parameter


@dataclass(frozen=True)
class Parameter:
    """A policy's numeric knob: its default and the interval it must lie in.

    `low_open` / `high_open` say whether the ends are excluded; `expected` is how an error states
    the range to a client (e.g. "a number in [0, 1]")."""

    name: str
    default: float
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    expected: str = ""

    def admits(self, value: float) -> bool:
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below  # NaN fails both comparisons

    def check(self, value: Any, where: str) -> float:
        """`value` as a float, or InvalidInput naming this parameter (bools are not numbers)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.admits(float(value)):
            raise invalid_parameter(self.name, where, self.expected or self._interval(), value)
        return float(value)

    def _interval(self) -> str:
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {high}{')' if self.high_open else ']'}"


class Policy(abc.ABC):
    """Base of every policy: its `name` (the registry key and its JSON name) and its declared
    `parameters`, checked once in the constructor and kept as attributes of the same names."""

    name: ClassVar[str]
    parameters: ClassVar[tuple[Parameter, ...]] = ()

    def __init__(self, **params: Any) -> None:
        declared = {p.name: p for p in self.parameters}
        for key in params:
            if key not in declared:
                raise invalid_parameter(
                    key,
                    self.name,
                    f"one of {sorted(declared)}" if declared else "absent (this policy takes no parameters)",
                    params[key],
                )
        for parameter in self.parameters:
            value = params.get(parameter.name, parameter.default)
            setattr(self, parameter.name, parameter.check(value, self.name))

    @classmethod
    def check_parameters(cls, params: Mapping[str, Any], where: str) -> dict[str, float]:
        """The parameters this policy declares, checked (InvalidInput names the first bad one)."""
        declared = {p.name: p for p in cls.parameters}
        return {key: declared[key].check(value, where) for key, value in params.items() if key in declared}

    def parameter_values(self) -> dict[str, float]:
        """The declared parameters and their values, in declaration order (for descriptions)."""
        return {p.name: getattr(self, p.name) for p in self.parameters}

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.parameter_values().items())
        return f"{type(self).__name__}({params})"


P = TypeVar("P", bound=Policy)


class PolicyRegistry(Generic[P]):
    """One family's policies by name: registration, lookup, and parsing from JSON.

    `field` is the request field naming the policy ("policy"), `default` the policy an absent
    name means. A parameter the named policy does not declare is an error, unless `lenient`: then
    one that another policy of the family declares is checked and left out (a top-k request's
    `epsilon` with LinUCB is well formed, and unused). A null parameter means its default.
    """

    def __init__(self, field: str = "policy", default: str | None = None, lenient: bool = False) -> None:
        self.field = field
        self.default = default
        self.lenient = lenient
        self._classes: dict[str, type[P]] = {}

    def register(self, cls: type[P]) -> type[P]:
        """Class decorator: add a policy class under its `name`."""
        if cls.name in self._classes:
            raise ValueError(f"two policies named {cls.name!r}")
        self._classes[cls.name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def __iter__(self) -> Iterator[type[P]]:
        return iter(self._classes.values())

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, (str, enum.Enum)) and _key(name) in self._classes

    def __getitem__(self, name: str | enum.Enum) -> type[P]:
        return self._classes[_key(name)]

    def lookup(self, name: Any, where: str) -> type[P]:
        """The class registered as `name` (an absent name means the default), or InvalidInput."""
        if name is None and self.default is not None:
            name = self.default
        if not isinstance(name, (str, enum.Enum)) or _key(name) not in self._classes:
            raise invalid_parameter(self.field, where, " or ".join(self._classes), name)
        return self._classes[_key(name)]

    def parse(self, name: Any, params: Mapping[str, Any] | None = None, where: str = "policy", *args: Any) -> P:
        """The policy `name` with `params` (JSON values), checked; `args` go first to its constructor."""
        cls = self.lookup(name, where)
        params = {} if params is None else params
        known = {p.name: p for p in cls.parameters}
        if self.lenient:
            known = {p.name: p for policy in self._classes.values() for p in policy.parameters} | known
        for key, value in params.items():
            if key not in known:
                expected = f"one of {sorted(known)}" if known else f"absent (the {cls.name} policy takes no parameters)"
                raise invalid_parameter(key, where, expected, value)
            if value is not None:
                known[key].check(value, where)
        return cls(*args, **cls.check_parameters({k: v for k, v in params.items() if v is not None}, where))

    def from_dict(self, data: Any, where: str = "policy", key: str = "name", *args: Any) -> P:
        """A policy from its JSON object: `data[key]` names it, the other entries are parameters."""
        if not isinstance(data, Mapping):
            raise invalid_parameter(self.field, where, f"an object with {key!r} and the policy's parameters", data)
        return self.parse(data.get(key), {k: v for k, v in data.items() if k != key}, where, *args)


def _key(name: str | enum.Enum) -> str:
    """A name as registered: an enum member (Clipper's PolicyKind) by its value."""
    return str(name.value) if isinstance(name, enum.Enum) else name
