"""What code a run runs: its flow image, the image's digest and code hash, and the commit check.

A push's run is started in the image the pipeline's Build stage built from that push
(``buildspecs/flow-image.yml``), given to the run as the per-run job variable ``image``
(the trigger; ``sagepipe trigger --image``). The image carries, in its environment, the
commit it was built from and the content hash of its build context
(``deployments/flow-image/Dockerfile``). Before anything is spent the run checks that it
runs the code it was started for:

* the run's commit is the image's commit; or
* the run names the code hash it expects (``trigger["code_hash"]``, the Build stage's
  FLOW_CODE_HASH) and the image has exactly that hash: the Build stage reused the image
  of an earlier commit whose code is the same, byte for byte;
* anything else fails the run at once with :class:`ConfigError`, no job started.

A run without a commit (started by hand) or in an image that carries none (the local
runtime, an image built by hand) is not checked, and its record says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prefect import get_client, get_run_logger
from prefect.context import get_run_context

from sagepipe.tasks.errors import ConfigError

__all__ = ["IMAGE_CODE_HASH", "IMAGE_COMMIT", "check_running_code", "image_digest",
           "running_code", "same_commit"]

IMAGE_COMMIT = "SAGEPIPE_COMMIT"  # set by the flow image's Dockerfile
IMAGE_CODE_HASH = "SAGEPIPE_CODE_HASH"
_SHORT_SHA = 7  # git's shortest abbreviation: a shorter commit never matches a longer one
_SOURCES = {"run": "the run's job variables", "deployment": "the deployment's job variables"}


def image_digest(uri: str | None) -> str | None:
    """``sha256:...`` of an image referenced by digest (``repo@sha256:...``), else None."""
    if not uri or "@" not in uri:
        return None
    digest = uri.rsplit("@", 1)[1]
    return digest if digest.startswith("sha256:") else None


def same_commit(a: str, b: str) -> bool:
    """The same commit, given in full or abbreviated (at least 7 hex digits) on either side."""
    a, b = a.strip().lower(), b.strip().lower()
    short, full = sorted((a, b), key=len)
    return short == full or (len(short) >= _SHORT_SHA and full.startswith(short))


def check_running_code(commit: str | None, trigger: Mapping[str, Any] | None,
                       image: str | None, image_source: str | None,
                       environ: Mapping[str, str]) -> dict[str, Any]:
    """The run record's ``code``; raises ConfigError if the image is not the run's code."""
    image_commit = (environ.get(IMAGE_COMMIT) or "").strip() or None
    code_hash = (environ.get(IMAGE_CODE_HASH) or "").strip() or None
    expected = str((trigger or {}).get("code_hash") or "").strip() or None
    code: dict[str, Any] = {"image": image, "image_source": image_source,
                            "digest": image_digest(image), "code_hash": code_hash,
                            "image_commit": image_commit}
    # what the run asked for; the environment says what it got
    asked = f" (asked for: {image}, {_SOURCES.get(image_source or '', 'an image')})" \
        if image else ""
    # a per-run image the work pool did not apply (its job template has no `image`
    # variable, or a fixed task definition) leaves the deployment's image running
    pool = (" If the run asked for the right image, its work pool does not apply the per-run "
            "`image` job variable: check the pool's job template.") \
        if image_source == "run" else ""
    if commit and image_commit and same_commit(commit, image_commit):
        code["check"] = f"runs commit {commit}: the image was built from it"
    elif expected and code_hash and expected == code_hash:
        code["check"] = (f"runs the code of commit {commit or '(none given)'}: the image was "
                         f"built from commit {image_commit or '(unknown)'} with the same code "
                         f"hash {code_hash}")
    elif commit and image_commit:
        expects = f" (its code hash is {expected})" if expected else ""
        raise ConfigError(
            f"This run is for commit {commit}{expects}, but the flow image it runs in{asked} "
            f"was built from commit {image_commit} (code hash {code_hash or 'unknown'}): it "
            f"would run that commit's code. Start the run in the image the pipeline built for "
            f"{commit} (its Build stage exports FLOW_IMAGE and FLOW_CODE_HASH: `sagepipe "
            f"trigger --commit {commit} --image <FLOW_IMAGE> --code-hash <FLOW_CODE_HASH>`), "
            f"or without a commit to run the image's own code.{pool} No job was started.")
    elif expected and code_hash:
        raise ConfigError(
            f"This run expects the code hash {expected}, but the flow image it runs in{asked} "
            f"has {code_hash}: it is not the image the Build stage built for this run. Start "
            f"the run in that image.{pool} No job was started.")
    elif not commit:
        code["check"] = "not checked: the run has no commit (started by hand)"
    else:
        code["check"] = ("not checked: the image carries no commit (the local runtime, or an "
                         "image not built by the pipeline's Build stage)")
    return code


def running_code(commit: str | None, trigger: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`check_running_code` for the current flow run, its image found in Prefect."""
    image, source = _flow_image()
    code = check_running_code(commit, trigger, image, source, os.environ)
    get_run_logger().info("Flow image %s (digest %s, code hash %s, built from commit %s): %s",
             image or "none", code["digest"] or "-", code["code_hash"] or "-",
             code["image_commit"] or "-", code["check"])
    return code


def _flow_image() -> tuple[str | None, str | None]:
    """The image this run was started in: its per-run job variable, else its deployment's."""
    flow_run = getattr(get_run_context(), "flow_run", None)
    if flow_run is None:
        return None, None
    image = (flow_run.job_variables or {}).get("image")
    if image:
        return str(image), "run"
    if flow_run.deployment_id is None:
        return None, None
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment(flow_run.deployment_id)
    except Exception as exc:  # the record misses the image; the run itself is fine
        get_run_logger().warning("Could not read the deployment's image: %s: %s",
                                 type(exc).__name__, exc)
        return None, None
    image = (deployment.job_variables or {}).get("image")
    return (str(image), "deployment") if image else (None, None)
