"""Where the fault suite kills: anchors taken from a run's own call trail, seeded offsets.

Every local API call is appended to the ``SAGEPIPE_LOCAL_CALL_LOG`` file before it is made
(time, pid, program, service, operation, resource). A calibration run (not killed) gives
the timeline of a pipeline run: its *boundaries* are the calls that change something
(creating a job, storing an object, registering, creating or updating the endpoint, ...)
plus the command's start. Each boundary is named by who made it and its ordinal among
that actor's calls of that operation (``cli CreateProcessingJob #2``: the evaluate job),
which is the same in every run of the same kind; the time to the next boundary is its
*span*. A kill point is a boundary and a fraction of its span: 0 kills at the boundary
itself, 0.4 inside the step that follows it. The plan is drawn from a seed, so the same
seed gives the same kill points on any machine (the seconds follow that machine's spans).

Pure functions and data only: the suite (``fault_suite.py``) runs them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Anchor", "Boundary", "Call", "KillPoint", "Lane", "boundaries", "ci_points",
           "parse_trail", "plan"]

# who made a call, from the program name in the trail
ACTORS = {"sagepipe": "cli", "runner.py": "runner", "supervise.py": "supervisor"}
# the calls that mark a step boundary: they change something, or (Invoke) use the endpoint
_MUTATING = ("Create", "Update", "Put", "Copy", "Delete", "Start", "Stop", "Publish",
             "Add", "Register", "Complete", "Upload")
_RUNNER_MARKS = ("ListObjectsV2", "PutObject")  # staging inputs, uploading outputs
TARGETS = ("cli", "runner", "server", "supervisor", "restart", "push")


@dataclass(frozen=True)
class Call:
    t: float
    pid: int
    actor: str
    service: str
    op: str
    resource: str


@dataclass(frozen=True)
class Anchor:
    """A boundary by name: ``actor`` ("start" for the command's start), ``op``, ordinal."""

    actor: str
    op: str = ""
    ordinal: int = 1

    def __str__(self) -> str:
        return "start" if self.actor == "start" else f"{self.actor} {self.op} #{self.ordinal}"

    def matches(self, call: Call, seen: Counter[tuple[str, str]]) -> bool:
        """Count ``call`` in ``seen``; True when it is this anchor's occurrence."""
        if call.actor != self.actor or call.op != self.op:
            return False
        seen[(call.actor, call.op)] += 1
        return seen[(call.actor, call.op)] == self.ordinal


@dataclass(frozen=True)
class Boundary:
    anchor: Anchor
    t: float  # seconds after the command started
    span: float  # seconds to the next boundary (or to the command's end)
    resource: str = ""


@dataclass
class KillPoint:
    id: str
    kind: str  # create: the run creates the endpoint; update: a blue/green update
    target: str  # one of TARGETS
    anchor: Anchor
    fraction: float  # of the anchor's span, as calibrated
    delay: float  # seconds after the anchor: fraction x span
    why: str  # "named by the issue: ..." or "seeded"
    anchor_t: float = 0.0  # when the anchor came in the calibration run (seconds)
    lane: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def delay_now(self, anchor_seen: float) -> float:
        """The delay on this run's clock: scaled by how much later (or sooner) the anchor
        came than in the calibration run, so a busier machine (or a quieter one) still
        kills at the same fraction of the step."""
        if self.anchor_t < 1.0 or anchor_seen <= 0:
            return self.delay
        return self.delay * min(max(anchor_seen / self.anchor_t, 0.3), 3.0)

    def describe(self) -> str:
        at = str(self.anchor) + (f" +{self.delay:.2f}s ({self.fraction:.2f} of its span)"
                                 if self.fraction else "")
        return f"{self.target} @ {at}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["anchor"] = str(self.anchor)
        return out


@dataclass
class Lane:
    """One local state, its points one after another: the first may create the endpoint,
    every later one updates it (a new data version each)."""

    index: int
    points: list[KillPoint]
    calibration: bool = False


def parse_trail(text: str, *, since: float = 0.0) -> list[Call]:
    calls = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 6:
            continue  # a line still being written
        try:
            t, pid = float(parts[0]), int(parts[1])
        except ValueError:
            continue
        if t < since:
            continue
        calls.append(Call(t, pid, ACTORS.get(parts[2], parts[2]), parts[3], parts[4],
                          parts[5]))
    return calls


def _is_boundary(call: Call) -> bool:
    if call.actor == "cli":
        return call.op.startswith(_MUTATING) or call.op == "InvokeEndpoint"
    if call.actor == "runner":
        return call.op in _RUNNER_MARKS
    return False


def boundaries(calls: list[Call], *, started: float, ended: float) -> list[Boundary]:
    """The run's boundaries in time order, each with its span; the first is the start."""
    seen: Counter[tuple[str, str]] = Counter()
    marks: list[tuple[Anchor, float, str]] = [(Anchor("start"), started, "")]
    for call in sorted(calls, key=lambda c: c.t):
        if not _is_boundary(call):
            continue
        seen[(call.actor, call.op)] += 1
        marks.append((Anchor(call.actor, call.op, seen[(call.actor, call.op)]), call.t,
                      call.resource))
    out = []
    for i, (anchor, t, resource) in enumerate(marks):
        following = marks[i + 1][1] if i + 1 < len(marks) else ended
        out.append(Boundary(anchor, round(t - started, 3), round(max(following - t, 0.0), 3),
                            resource))
    return out


def _first(timeline: list[Boundary], actor: str, op: str) -> Boundary | None:
    return next((b for b in timeline if b.anchor.actor == actor and b.anchor.op == op), None)


def _valid_for(target: str, kind: str, boundary: Boundary, timeline: list[Boundary]) -> bool:
    """Whether killing ``target`` there can hit something."""
    endpoint_op = "CreateEndpoint" if kind == "create" else "UpdateEndpoint"
    made = _first(timeline, "cli", endpoint_op)
    if target in ("server", "supervisor") and kind == "create":
        return made is not None and boundary.t >= made.t  # nothing serves before
    if target == "runner":  # from a job's creation to its runner's last upload
        return (boundary.anchor.actor == "runner"
                or boundary.anchor.op in ("CreateProcessingJob", "CreateTrainingJob"))
    return target != "push"  # push points come from the push timeline


def _point(kind: str, target: str, boundary: Boundary, fraction: float, why: str,
           **extra: Any) -> KillPoint:
    fraction = round(fraction, 3)
    return KillPoint(id="", kind=kind, target=target, anchor=boundary.anchor,
                     fraction=fraction, delay=round(fraction * boundary.span, 3),
                     why=why, anchor_t=boundary.t, extra=extra)


def named_points(timelines: dict[str, list[Boundary]]) -> list[KillPoint]:
    """The kill points the issue names, first: endpoint creation and blue/green update
    (CLI), a registration, a job's output upload (its runner), a data push, the endpoint's
    new and live servers, its supervisor, and a machine restart in the middle of a run."""
    create, update, push = timelines["create"], timelines["update"], timelines["push"]
    wanted: list[tuple[str, str, Boundary | None, float, str]] = [
        ("create", "cli", _first(create, "cli", "CreateEndpoint"), 0.0,
         "named by the issue: CLI killed as the endpoint is created"),
        ("update", "cli", _first(update, "cli", "UpdateEndpoint"), 0.3,
         "named by the issue: CLI killed during the blue/green update"),
        ("update", "cli", _first(update, "cli", "CreateModelPackage"), 0.0,
         "named by the issue: CLI killed during a registration"),
        ("update", "runner", _first(update, "runner", "PutObject"), 0.0,
         "named by the issue: job runner killed during its output upload (the first of "
         "the preprocess job's files)"),
        ("update", "push", _first(push, "cli", "PutObject"), 0.0,
         "named by the issue: CLI killed during data push"),
        ("update", "server", _first(update, "cli", "UpdateEndpoint"), 0.4,
         "named by the issue: the new (green) endpoint server killed while it starts"),
        ("update", "server", _first(update, "cli", "CreateTrainingJob"), 0.5,
         "named by the issue: the live endpoint server killed during a run"),
        ("update", "supervisor", _first(update, "cli", "UpdateEndpoint"), 0.2,
         "the endpoint's supervisor killed during the blue/green update"),
        ("update", "restart", _first(update, "cli", "CreateTrainingJob"), 0.5,
         "machine restart (every process killed) during a run"),
        ("create", "cli", _first(create, "cli", "CreateEndpoint"), 0.5,
         "named by the issue: CLI killed while the endpoint is being created"),
    ]
    points = []
    for kind, target, boundary, fraction, why in wanted:
        if boundary is None:
            raise ValueError(f"the {kind} calibration run has no boundary for {why}")
        points.append(_point(kind, target, boundary, fraction, why))
    return points


CI_NAMED = 8  # the CI subset: the first eight named points


def ci_points(timelines: dict[str, list[Boundary]]) -> list[KillPoint]:
    return named_points(timelines)[:CI_NAMED]


def seeded_points(timelines: dict[str, list[Boundary]], count: int, seed: int,
                  *, creates: int) -> list[KillPoint]:
    """``count`` points drawn from ``seed``: a target (mostly the CLI), a kind (``creates``
    of them create the endpoint), and where: a third of them at one of the run's boundaries
    where that target can be hit, the others at a moment drawn evenly over the run's time
    (so long steps - training, the deploy's wait - get most), named as the boundary before
    it plus that fraction of its span."""
    rng = random.Random(seed)
    weights = {"cli": 10, "runner": 4, "server": 3, "supervisor": 2, "restart": 1}
    kinds = ["create"] * creates + ["update"] * (count - creates)
    points = []
    for kind in kinds:
        timeline = timelines[kind]
        target = rng.choices(list(weights), weights=list(weights.values()))[0]
        choices = [b for b in timeline if _valid_for(target, kind, b, timeline)]
        if rng.random() < 1 / 3:
            boundary, fraction = rng.choice(choices), 0.0
        else:  # a moment inside a step, evenly over the time the valid boundaries span
            boundary = rng.choices(choices, weights=[max(b.span, 1e-3) for b in choices])[0]
            fraction = rng.uniform(0.02, 0.98)
            if target == "runner":  # the job may end within its span: aim at its first half
                fraction = min(fraction, 0.5)
        points.append(_point(kind, target, boundary, fraction,
                             "seeded: at a boundary" if fraction == 0 else
                             "seeded: inside a step"))
    return points


def plan(timelines: dict[str, list[Boundary]], *, total: int, seed: int, ci: bool,
         lane_length: int = 5) -> list[Lane]:
    """The suite's lanes of ``lane_length`` points (4 in CI). Lane 0 starts with the two
    calibration runs, so its points are all updates; every other lane starts with a point
    that creates the endpoint (a lane without one starts from a plain run)."""
    points = ci_points(timelines) if ci else named_points(timelines)
    length = 4 if ci else lane_length
    if not ci and total > len(points):
        lanes_needed = -(-total // length)
        creates = max(0, lanes_needed - 1 - sum(p.kind == "create" for p in points))
        extra = total - len(points)
        points += seeded_points(timelines, extra, seed, creates=min(creates, extra))
    creates = [p for p in points if p.kind == "create"]
    updates = [p for p in points if p.kind == "update"]
    lanes = [Lane(0, [], calibration=True)]
    for point in creates:
        lanes.append(Lane(len(lanes), [point]))
    while updates:  # round the lanes, lane 0 first
        room = [lane for lane in lanes if len(lane.points) < length]
        if not room:
            lanes.append(Lane(len(lanes), []))
            continue
        for lane in room:
            if updates:
                lane.points.append(updates.pop(0))
    number = 0
    for lane in lanes:
        for point in lane.points:
            number += 1
            point.id, point.lane = f"p{number:02d}", lane.index
    return [lane for lane in lanes if lane.points]
