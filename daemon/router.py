"""Routing: the YAML ``routes:`` list, evaluated top to bottom.

Every matching route fires; a route with ``final: true`` stops evaluation. A condition on
a missing attribute is false (only ``exists: false`` holds for it). For a multi-valued
attribute a condition holds when it holds for any of its values (or for the values
joined with a backslash, as DICOM writes them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .config import MatchOps, RouteConfig
from .item import TRANSPORT_FACTS, TransportFacts

_MISSING = object()

Predicate = Callable[[Any], bool]


@dataclass
class Route:
    name: str
    conditions: list[tuple[str, Predicate]]
    stages: list = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    final: bool = False

    def matches(self, header: Dataset, facts: TransportFacts) -> bool:
        return all(pred(lookup(key, header, facts)) for key, pred in self.conditions)


def lookup(key: str, header: Dataset, facts: TransportFacts):
    """The value for a match key: a transport fact or a DICOM attribute; _MISSING if absent."""
    if key in TRANSPORT_FACTS:
        v = facts.get(key)
        return _MISSING if v is None else v
    if key not in header:
        return _MISSING
    value = header[key].value
    return "" if value is None else value


def _values(value) -> list:
    """The candidate values to test: each value of a multi-valued element, and the join."""
    if isinstance(value, (MultiValue, list, tuple)):
        items = [_norm(v) for v in value]
        return items + ["\\".join(str(v) for v in items)]
    return [_norm(value)]


def _norm(v):
    if isinstance(v, (int, float, str)):
        return v
    if isinstance(v, bytes):
        return v.decode("ascii", "replace").rstrip("\x00 ")
    return str(v)


def _as_number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return None


def _equals(expected) -> Predicate:
    def test(v) -> bool:
        if isinstance(expected, bool) or isinstance(v, bool):
            return str(v).lower() == str(expected).lower()
        a, b = _as_number(v), _as_number(expected)
        if a is not None and b is not None and not isinstance(expected, str):
            return a == b
        return str(v).strip() == str(expected).strip()

    return test


def _compare(op: str, bound) -> Predicate:
    def test(v) -> bool:
        a, b = _as_number(v), _as_number(bound)
        if a is None or b is None:
            a, b = str(v), str(bound)
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]

    return test


def compile_condition(spec) -> Callable[[Any], bool]:
    """Turn one match value (scalar, list or operator mapping) into a predicate of a raw
    attribute value (or _MISSING)."""
    if isinstance(spec, MatchOps):
        tests: list[Callable[[Any], bool]] = []
        fields = spec.model_fields_set
        if "exists" in fields:
            want = spec.exists
            tests.append(lambda raw, want=want: (raw is not _MISSING) == want)
        if "regex" in fields and spec.regex is not None:
            rx = re.compile(spec.regex)
            tests.append(_any_value(lambda v, rx=rx: rx.search(str(v)) is not None))
        if "not_" in fields and spec.not_ is not None:
            inner = compile_condition(spec.not_)
            tests.append(lambda raw, inner=inner: raw is not _MISSING and not inner(raw))
        for op in ("lt", "le", "gt", "ge"):
            if op in fields and getattr(spec, op) is not None:
                tests.append(_any_value(_compare(op, getattr(spec, op))))
        return lambda raw: all(t(raw) for t in tests)
    if isinstance(spec, list):
        options = [_equals(x) for x in spec]
        return _any_value(lambda v: any(t(v) for t in options))
    return _any_value(_equals(spec))


def _any_value(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def pred(raw) -> bool:
        if raw is _MISSING:
            return False
        return any(test(v) for v in _values(raw))

    return pred


def compile_route(cfg: RouteConfig, stages: list) -> Route:
    conditions = [(key, compile_condition(spec)) for key, spec in cfg.match.items()]
    return Route(cfg.name, conditions, stages=stages, to=list(cfg.to), final=cfg.final)


def select_routes(routes: list[Route], header: Dataset, facts: TransportFacts) -> list[Route]:
    """Every matching route, in order, stopping after a matching ``final`` route."""
    matched = []
    for route in routes:
        if route.matches(header, facts):
            matched.append(route)
            if route.final:
                break
    return matched
