"""The check of a role's statements against what it needs, and against the reference.

:func:`compare` proves both directions (every need is allowed; every action and resource
pattern of every statement is used) and checks every statement against the Service
Authorization Reference: known actions, resource patterns of a type the action is
authorized on, condition keys the action takes. The matching follows IAM:
case-insensitive actions, ``*`` and ``?`` wildcards in ARNs, and a condition key that
the request does not carry fails the condition.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import iam_sar
from iam_model import DEPENDENT, DERIVED, Need

__all__ = ["Verdict", "compare", "format_table", "reference_problems", "source_counts"]


# ---------------------------------------------------------------- the check


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _matches(pattern: str, value: str, *, case: bool = True) -> bool:
    pattern = pattern.replace("[", "[[]")
    return (fnmatch.fnmatchcase(value, pattern) if case
            else fnmatch.fnmatchcase(value.lower(), pattern.lower()))


def _conditions_hold(statement: dict[str, Any], need: Need) -> bool:
    context = dict(need.context)
    for operator, tests in statement.get("Condition", {}).items():
        for key, expected in tests.items():
            if key not in context:
                return False  # a key the request does not carry fails the condition
            actual, allowed = context[key], _listed(expected)
            if operator in ("StringEquals", "ArnEquals", "Bool"):
                ok = actual in allowed
            elif operator in ("StringLike", "ArnLike"):
                ok = any(_matches(a, actual) for a in allowed)
            else:
                raise AssertionError(f"condition operator {operator} is not modelled")
            if not ok:
                return False
    return True


def _allows(statement: dict[str, Any], need: Need) -> str | None:
    """The resource pattern through which ``statement`` allows ``need``, if it does."""
    assert statement["Effect"] == "Allow", "the roles use Allow statements only"
    assert "NotAction" not in statement and "NotResource" not in statement
    if not any(_matches(a, need.action, case=False) for a in _listed(statement["Action"])):
        return None
    if not _conditions_hold(statement, need):
        return None
    return next((r for r in _listed(statement["Resource"]) if _matches(r, need.resource)),
                None)


def reference_problems(statements: list[dict[str, Any]]) -> list[str]:
    """What the reference says is wrong with the statements: an unknown action, an action
    none of whose resource patterns is of a type it is authorized on, a condition key it
    does not take."""
    problems = []
    for s in statements:
        for action in _listed(s["Action"]):
            if not iam_sar.is_action(action):
                problems.append(f"{s['Sid']}: {action} is not an action")
                continue
            patterns = iam_sar.arn_pattern(action)
            resources = _listed(s["Resource"])
            # as IAM reads a statement: each action with each resource; an action none
            # of whose resources is of a type it is authorized on is granted nothing
            if "*" not in resources and not any(p.match(r) for p in patterns
                                                for r in resources):
                problems.append(f"{s['Sid']}: {action} is authorized on none of "
                                f"{resources}")
            for tests in s.get("Condition", {}).values():
                problems += [f"{s['Sid']}: {action} takes no condition key {key}"
                             for key in tests if not iam_sar.takes_condition_key(action, key)]
    return problems


@dataclass
class Row:
    action: str
    sid: str
    resources: list[str]
    used_by: dict[str, int] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)


@dataclass
class Verdict:
    missing: list[Need]  # needs no statement allows
    unused_actions: list[tuple[str, str]]  # (Sid, action) that no need uses
    unused_resources: list[tuple[str, str]]  # (Sid, resource pattern) that no need uses
    rows: list[Row]
    problems: list[str]  # the statements against the reference
    needs: list[Need]


def compare(statements: list[dict[str, Any]], needs: Iterable[Need]) -> Verdict:
    needs = list(needs)
    missing: list[Need] = []
    used_actions: dict[str, set[str]] = defaultdict(set)
    used_resources: dict[str, set[str]] = defaultdict(set)
    rows: dict[tuple[str, str], Row] = {}
    for statement in statements:
        for action in _listed(statement["Action"]):
            rows[(statement["Sid"], action.lower())] = Row(
                action, statement["Sid"], _listed(statement["Resource"]))
    for need in needs:
        allowed = False
        for statement in statements:
            pattern = _allows(statement, need)
            if pattern is None:
                continue
            allowed = True
            sid = statement["Sid"]
            action = next(a for a in _listed(statement["Action"])
                          if _matches(a, need.action, case=False))
            used_actions[sid].add(action.lower())
            used_resources[sid].add(pattern)
            row = rows[(sid, action.lower())]
            row.used_by[need.because] = row.used_by.get(need.because, 0) + 1
            row.sources.add(need.source)
        if not allowed:
            missing.append(need)
    unused_actions = [(s["Sid"], a) for s in statements for a in _listed(s["Action"])
                      if a.lower() not in used_actions[s["Sid"]]]
    unused_resources = [(s["Sid"], r) for s in statements for r in _listed(s["Resource"])
                        if r not in used_resources[s["Sid"]]]
    return Verdict(missing, unused_actions, unused_resources, list(rows.values()),
                   reference_problems(statements), needs)


def source_counts(verdict: Verdict) -> dict[str, int]:
    """Distinct actions the role needs, by where the need came from: ``derived`` (an
    operation's action or a dependent action, from the reference) or ``hand`` (stated,
    with its AWS page). An action needed both ways counts as derived."""
    by_action: dict[str, set[str]] = defaultdict(set)
    for need in verdict.needs:
        by_action[need.action.lower()].add(need.source)
    derived = sum(1 for s in by_action.values() if s & {DERIVED, DEPENDENT})
    return {"derived": derived, "hand": len(by_action) - derived}


def _short(arn: str) -> str:
    """An ARN without partition, region and account, for the table."""
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn":
        return f"{parts[2]}:{parts[5]}" if parts[2] != "s3" else parts[5]
    return arn


def _operation(because: str) -> str:
    """The request or service activity behind a need, without the object it names."""
    return because.split(" (")[0] if not because.startswith("SageMaker") else (
        "SageMaker " + ("runs a job" if "runs" in because else "hosts a model")
        + (f" ({because.rsplit('(', 1)[1]}" if "(" in because else ""))


def format_table(role: str, verdict: Verdict) -> str:
    """Operations vs grants, one line per granted action."""
    counts = source_counts(verdict)
    lines = [f"{role}: {counts['derived']} actions derived from {iam_sar.SAR_SOURCE}, "
             f"{counts['hand']} hand-stated",
             f"{'action':<34} {'statement':<26} {'source':<9} {'granted on':<60} used by"]
    for row in verdict.rows:
        ops: dict[str, int] = defaultdict(int)
        for because, count in row.used_by.items():
            ops[_operation(because)] += count
        used = "; ".join(f"{op} x{n}" for op, n in sorted(ops.items())) or "UNUSED"
        resources = ", ".join(_short(r) for r in row.resources)
        source = "derived" if row.sources & {DERIVED, DEPENDENT} else (
            "hand" if row.sources else "")
        lines.append(f"{row.action:<34} {row.sid:<26} {source:<9} {resources:<60} {used}")
    for need in verdict.missing:
        lines.append(f"MISSING {need.action} on {need.resource} for {need.because}")
    lines += [f"REFERENCE {problem}" for problem in verdict.problems]
    return "\n".join(lines)

