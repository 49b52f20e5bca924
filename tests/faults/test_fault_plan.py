"""The fault suite's kill points: taken from a run's own call trail, reproducible by seed."""

from __future__ import annotations

from collections import Counter

import pytest
from fault_plan import (
    CI_NAMED,
    Anchor,
    Boundary,
    boundaries,
    ci_points,
    named_points,
    parse_trail,
    plan,
)

# a trail as the local runtime writes it (time, pid, program, service, operation, resource)
TRAIL = "\n".join([
    "100.000\t11\tsagepipe\tsns\tCreateTopic\t",
    "100.500\t11\tsagepipe\ts3\tCopyObject\tsagepipe-local/pipeline/data/x",
    "101.000\t11\tsagepipe\tsagemaker\tCreateProcessingJob\tsagepipe-demo-preprocess-1",
    "101.100\t11\tsagepipe\tsagemaker\tDescribeProcessingJob\tsagepipe-demo-preprocess-1",
    "101.400\t22\trunner.py\ts3\tListObjectsV2\tsagepipe-local",
    "102.000\t22\trunner.py\ts3\tPutObject\tsagepipe-local/jobs/preprocess-1/train/a.csv",
    "103.000\t11\tsagepipe\tsagemaker\tCreateTrainingJob\tsagepipe-demo-train-1",
    "104.000\t33\trunner.py\ts3\tPutObject\tsagepipe-local/jobs/train-1/model.tar.gz",
    "105.000\t11\tsagepipe\tsagemaker\tCreateProcessingJob\tsagepipe-demo-evaluate-1",
    "106.000\t11\tsagepipe\tsagemaker\tCreateModelPackage\t",
    "107.000\t11\tsagepipe\tsagemaker\tCreateEndpoint\tsagepipe-demo",
    "107.500\t11\tsagepipe\tsagemaker\tDescribeEndpoint\tsagepipe-demo",
    "110.000\t11\tsagepipe\tsagemaker-runtime\tInvokeEndpoint\tsagepipe-demo",
    "110.5\tbroken line",
])


def timeline(kind: str) -> list[Boundary]:
    text = TRAIL.replace("CreateEndpoint", "UpdateEndpoint") if kind == "update" else TRAIL
    return boundaries(parse_trail(text), started=99.0, ended=111.0)


TIMELINES = {"create": timeline("create"), "update": timeline("update"),
             "push": boundaries(parse_trail("50.0\t44\tsagepipe\ts3\tPutObject\tb/k"),
                                started=49.0, ended=51.0)}


def test_boundaries_are_the_calls_that_change_something_with_their_spans() -> None:
    found = [(str(b.anchor), b.t, b.span) for b in TIMELINES["create"]]
    assert found[0] == ("start", 0.0, 1.0)
    assert ("cli CreateProcessingJob #2", 6.0, 1.0) in found  # the evaluate job
    assert ("runner PutObject #2", 5.0, 1.0) in found  # the training job's model upload
    assert ("cli InvokeEndpoint #1", 11.0, 1.0) in found  # the last: its span runs to the end
    assert not any("Describe" in name for name, _, _ in found)  # reads mark nothing


def test_an_anchor_matches_its_own_occurrence_only() -> None:
    calls = parse_trail(TRAIL)
    anchor = Anchor("cli", "CreateProcessingJob", 2)
    seen: Counter[tuple[str, str]] = Counter()
    hits = [c for c in calls if anchor.matches(c, seen)]
    assert [c.resource for c in hits] == ["sagepipe-demo-evaluate-1"]


def test_the_named_points_come_first_and_the_ci_subset_is_eight_of_them() -> None:
    named = named_points(TIMELINES)
    assert {p.target for p in named} >= {"cli", "runner", "push", "server", "supervisor",
                                         "restart"}
    assert named[0].anchor == Anchor("cli", "CreateEndpoint", 1)  # the bug of issue 19
    assert ci_points(TIMELINES) == named[:CI_NAMED]
    lanes = plan(TIMELINES, total=0, seed=1, ci=True)
    assert sum(len(lane.points) for lane in lanes) == CI_NAMED == 8
    assert len(lanes) == 2  # the calibration lane, and one whose first run creates


def test_the_plan_is_reproducible_by_seed_and_every_lane_creates_first() -> None:
    first = plan(TIMELINES, total=30, seed=19, ci=False)
    again = plan(TIMELINES, total=30, seed=19, ci=False)
    other = plan(TIMELINES, total=30, seed=20, ci=False)
    as_rows = [[p.as_dict() for p in lane.points] for lane in first]
    assert as_rows == [[p.as_dict() for p in lane.points] for lane in again]
    assert as_rows != [[p.as_dict() for p in lane.points] for lane in other]
    points = [p for lane in first for p in lane.points]
    assert len(points) == 30 and len({p.id for p in points}) == 30
    assert first[0].calibration and all(p.kind == "update" for p in first[0].points)
    for lane in first[1:]:
        assert lane.points[0].kind == "create"
        assert all(p.kind == "update" for p in lane.points[1:])
    for point in points:  # a delay is its fraction of the calibrated span
        span = next(b.span for b in TIMELINES[point.kind] if b.anchor == point.anchor) \
            if point.target != "push" else TIMELINES["push"][1].span
        assert point.delay == pytest.approx(point.fraction * span, abs=1e-3)


def test_servers_are_only_killed_where_one_exists() -> None:
    lanes = plan(TIMELINES, total=60, seed=3, ci=False)
    create = {str(b.anchor): b.t for b in TIMELINES["create"]}
    for point in (p for lane in lanes for p in lane.points):
        if point.kind == "create" and point.target in ("server", "supervisor"):
            assert create[str(point.anchor)] >= create["cli CreateEndpoint #1"]
        if point.target == "runner":
            assert point.anchor.actor == "runner" or point.anchor.op.startswith("Create")


def test_a_delay_follows_this_runs_clock() -> None:
    """A machine busier (or quieter) than in calibration reaches the anchor later (sooner):
    the delay scales alike, so the kill lands at the same fraction of the step."""
    point = named_points(TIMELINES)[1]  # UpdateEndpoint + 0.3 of its span
    point.anchor_t, point.delay = 10.0, 2.0
    assert point.delay_now(20.0) == pytest.approx(4.0)
    assert point.delay_now(5.0) == pytest.approx(1.0)
    assert point.delay_now(100.0) == pytest.approx(6.0)  # at most three times
    point.anchor_t = 0.2  # an anchor at the very start: no clock to compare
    assert point.delay_now(5.0) == 2.0
