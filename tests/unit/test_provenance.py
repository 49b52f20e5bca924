"""The run's check of the flow image it runs in (sagepipe.flows.provenance).

The image's environment is what deployments/flow-image/Dockerfile bakes in
(SAGEPIPE_COMMIT, SAGEPIPE_CODE_HASH); the run's side is its commit parameter and, from
the trigger, the code hash the Build stage computed for that commit.
tests/integration/test_trigger.py runs the check in a deployment run on a real worker.
"""

from __future__ import annotations

from typing import Any

import pytest

from sagepipe.flows.provenance import check_running_code, image_digest, same_commit
from sagepipe.tasks.errors import ConfigError

A = "0123456789abcdef0123456789abcdef01234567"
B = "feedbeeffeedbeeffeedbeeffeedbeeffeedbeef"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/sagepipe-flow@{DIGEST}"
HASH, OTHER_HASH = "c-" + "1" * 20, "c-" + "2" * 20


def built_from(commit: str | None, code_hash: str | None = HASH) -> dict[str, str]:
    """The environment of an image the Build stage built from ``commit``."""
    return {k: v for k, v in (("SAGEPIPE_COMMIT", commit), ("SAGEPIPE_CODE_HASH", code_hash))
            if v is not None}


def check(commit: str | None, environ: dict[str, str], *, expected: str | None = None,
          image: str | None = IMAGE) -> dict[str, Any]:
    trigger = {"kind": "push", "commit": commit, "code_hash": expected} if expected else None
    return check_running_code(commit, trigger, image, "run", environ)


def test_the_commit_the_image_was_built_from_runs_and_the_record_says_what_ran() -> None:
    code = check(A, built_from(A))
    assert code == {"image": IMAGE, "image_source": "run", "digest": DIGEST,
                    "code_hash": HASH, "image_commit": A,
                    "check": f"runs commit {A}: the image was built from it"}


@pytest.mark.parametrize(("run", "image", "same"), [
    (A[:7], A, True), (A, A[:12].upper(), True),  # abbreviated, either side, any case
    (A[:6], A, False),  # shorter than git's shortest abbreviation
    (B, A, False), (A[:7] + "0", A, False)])
def test_commits_match_in_full_or_abbreviated(run: str, image: str, same: bool) -> None:
    assert same_commit(run, image) is same


def test_an_image_of_another_commit_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError) as refused:
        check(B, built_from(A))
    message = str(refused.value)
    assert f"This run is for commit {B}" in message
    assert f"was built from commit {A} (code hash {HASH})" in message
    assert f"(asked for: {IMAGE}, the run's job variables)" in message
    assert f"sagepipe trigger --commit {B} --image <FLOW_IMAGE>" in message
    assert "its work pool does not apply the per-run `image` job variable" in message
    assert message.endswith("No job was started.")
    assert "\n" not in message  # one paragraph for the CLI


def test_an_image_reused_for_the_same_code_runs_the_later_commit() -> None:
    """The Build stage reuses the image of an earlier commit with the same code hash (an
    unchanged tree): the run names that hash, and the image has it."""
    code = check(B, built_from(A), expected=HASH)
    assert code["check"] == (f"runs the code of commit {B}: the image was built from commit "
                             f"{A} with the same code hash {HASH}")
    with pytest.raises(ConfigError, match=f"its code hash is {OTHER_HASH}"):
        check(B, built_from(A), expected=OTHER_HASH)


def test_an_image_that_is_not_the_one_the_build_stage_built_is_refused() -> None:
    # the run's commit matches, so it runs that commit's code whatever the hash says
    assert check(A, built_from(A), expected=OTHER_HASH)["check"].startswith(f"runs commit {A}")
    # no commit to compare: the code hash decides (e.g. a pool that ignores `image`)
    with pytest.raises(ConfigError, match=f"expects the code hash {OTHER_HASH}.*has {HASH}"):
        check(None, built_from(None), expected=OTHER_HASH)


@pytest.mark.parametrize(("commit", "environ", "says"), [
    (None, built_from(A), "not checked: the run has no commit"),
    (B, {}, "not checked: the image carries no commit"),
    (B, built_from("", ""), "not checked: the image carries no commit"),  # built by hand
])
def test_what_cannot_be_checked_is_recorded_as_such(
        commit: str | None, environ: dict[str, str], says: str) -> None:
    assert check(commit, environ)["check"].startswith(says)


def test_the_digest_comes_from_an_image_given_by_digest_only() -> None:
    assert image_digest(IMAGE) == DIGEST
    assert image_digest("123456789012.dkr.ecr.us-east-1.amazonaws.com/sagepipe-flow:c-1") \
        is None
    assert image_digest(None) is None
    assert check(None, {}, image=None) == {
        "image": None, "image_source": "run", "digest": None, "code_hash": None,
        "image_commit": None, "check": "not checked: the run has no commit (started by hand)"}
