"""Build steps for ``deployments/prefect.yaml``: deployment parameters from the settings.

``prefect deploy --prefect-file deployments/prefect.yaml`` runs
:func:`settings_parameters` as a build step, so each deployment's default
``config`` is exactly the settings file ``env`` names (see
``sagepipe.flows.config.settings_path``), validated the same way
``sagepipe run --env <env>`` validates it: a bad settings file fails the
deploy, not the first run. The settings stay the one place to edit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sagepipe.flows.config import load_config
from sagepipe.tasks.errors import ConfigError

__all__ = ["settings_parameters"]


def settings_parameters(env: str, image: str | None = None,
                        image_variable: str = "SAGEPIPE_FLOW_IMAGE") -> dict[str, Any]:
    """Step output: ``config``, ``directory`` (where the deploy ran) and ``image`` if asked.

    ``image`` is the container image an ECS worker runs the flow in; prefect.yaml
    passes ``{{ $SAGEPIPE_FLOW_IMAGE }}``, which is empty when the variable is unset,
    and then the deploy stops here with what to set instead of registering a
    deployment whose runs could never start.
    """
    # the worker runs the flow in this folder (prefect.yaml's pull step), so the
    # settings' relative paths (state_dir, steps.*.source) resolve as they do here
    config = load_config(env)
    config.check_steps()
    output: dict[str, Any] = {"config": config.model_dump(mode="json"),
                              "directory": str(Path.cwd())}
    if image is not None:
        image = image.strip() or os.environ.get(image_variable, "").strip()
        if not image:
            raise ConfigError(f"A deployment with the {env!r} settings runs the flow in a "
                              f"container image: set {image_variable} to its URI (e.g. "
                              "<account>.dkr.ecr.<region>.amazonaws.com/sagepipe-flow:<tag>) "
                              "and deploy again.")
        output["image"] = image
    return output
