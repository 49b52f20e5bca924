"""Validate local requests against botocore's own service models.

Two layers, as with the real service:

* client side: botocore's ``ParamValidator`` (types, required members, minimum
  lengths) raises ``ParamValidationError`` exactly as a boto3 client would;
* server side: the checks AWS does after the request arrives (maximum lengths,
  ``pattern``, ``enum``, numeric ranges) raise a ``ClientError`` with code
  ``ValidationException``, the error a real endpoint would return.

So a request that AWS would reject is rejected locally too, before any work.

botocore is loaded on the first request checked or error built, not when this module is
imported: the local runtime's own processes (a job's runner, an endpoint's supervisor)
import the modules that use this one but serve no requests, and botocore's import is most
of their start-up (~0.13 s of ~0.2 s).
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import botocore.session
    from botocore.exceptions import ClientError
    from botocore.model import OperationModel, ServiceModel, Shape

__all__ = ["check_endpoint_config", "client_error", "operation_model", "validate_request"]


@cache
def _session() -> botocore.session.Session:
    import botocore.session

    return botocore.session.get_session()


@cache
def service_model(service: str) -> ServiceModel:
    return _session().get_service_model(service)


@cache
def operation_model(service: str, operation: str) -> OperationModel:
    """``operation`` in the model's spelling, e.g. ``CreateTrainingJob``."""
    return service_model(service).operation_model(operation)


@cache
def _pattern(regex: str) -> re.Pattern[str] | None:
    try:
        return re.compile(regex)
    except re.error:  # a few model patterns use Java-only syntax; skip those
        return None


def validate_request(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise as boto3 + AWS would for an invalid request to ``operation``."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import ParamValidator

    op = operation_model(service, operation)
    shape = op.input_shape
    if shape is None:
        return
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        raise ParamValidationError(report=report.generate_report())
    problems: list[str] = []
    _check_server_side(params, shape, operation, problems, path=shape.name)
    if problems:
        raise client_error(
            operation,
            "ValidationException",
            f"{len(problems)} validation error(s) detected: " + "; ".join(problems[:5]),
        )


def _check_server_side(
    value: Any, shape: Shape, operation: str, problems: list[str], *, path: str
) -> None:
    type_name = shape.type_name
    meta = shape.metadata
    if type_name == "structure" and isinstance(value, dict):
        members = shape.members  # type: ignore[attr-defined]
        for name, member_value in value.items():
            if name in members:
                _check_server_side(
                    member_value, members[name], operation, problems, path=f"{path}.{name}"
                )
    elif type_name == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"Value at '{path}' failed to satisfy constraint: "
                            f"Member must have length less than or equal to {meta['max']}")
        member = shape.member  # type: ignore[attr-defined]
        for i, item in enumerate(value):
            _check_server_side(item, member, operation, problems, path=f"{path}.{i + 1}")
    elif type_name == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"Value at '{path}' failed to satisfy constraint: "
                            f"Map must have at most {meta['max']} entries")
        for key, item in value.items():
            _check_server_side(key, shape.key, operation, problems, path=f"{path}.key")  # type: ignore[attr-defined]
            _check_server_side(item, shape.value, operation, problems, path=f"{path}.{key}")  # type: ignore[attr-defined]
    elif type_name == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"Value '{value[:40]}' at '{path}' failed to satisfy constraint: "
                            f"Member must have length less than or equal to {meta['max']}")
        enum = shape.enum  # type: ignore[attr-defined]
        if enum and value not in enum:
            problems.append(f"Value '{value}' at '{path}' failed to satisfy constraint: "
                            f"Member must satisfy enum value set: [{', '.join(enum)}]")
        regex = meta.get("pattern")
        compiled = _pattern(regex) if regex else None
        if compiled is not None and not compiled.fullmatch(value):
            problems.append(f"Value '{value[:60]}' at '{path}' failed to satisfy constraint: "
                            f"Member must satisfy regular expression pattern: {regex}")
    elif (type_name in ("integer", "long", "float", "double")
          and isinstance(value, int | float) and "max" in meta and value > meta["max"]):
        problems.append(f"Value '{value}' at '{path}' failed to satisfy constraint: "
                        f"Member must have value less than or equal to {meta['max']}")


def check_endpoint_config(params: dict[str, Any],
                          models: dict[str, dict[str, Any]]) -> None:
    """What SageMaker checks in a CreateEndpointConfig beyond the model's shapes, for
    serverless variants (``models``: the variants' stored models by name).

    * ProductionVariant.ServerlessConfig "Specifies a serverless endpoint configuration
      instead of an instance-based endpoint configuration": not both;
    * ProductionVariantServerlessConfig: MemorySizeInMB "in 1 GB increments" (1024-6144,
      the range the service model checks), ProvisionedConcurrency "less than or equal to
      MaxConcurrency";
    * Serverless Inference, Feature exclusions: no "KMS keys, VPC configuration, network
      isolation, data capture, multiple production variants".
    """
    variants = params.get("ProductionVariants", [])
    serverless = [v for v in variants if "ServerlessConfig" in v]
    if not serverless:
        return
    problems: list[str] = []
    if len(variants) > 1:
        problems.append("a serverless endpoint configuration holds one production variant "
                        f"(got {len(variants)})")
    for key in ("KmsKeyId", "DataCaptureConfig"):
        if key in params:
            problems.append(f"{key} is not supported for Serverless Inference")
    for variant in serverless:
        name, config = variant["VariantName"], variant["ServerlessConfig"]
        both = [k for k in ("InstanceType", "InitialInstanceCount") if k in variant]
        if both:
            problems.append(f"variant {name} sets ServerlessConfig and {', '.join(both)}: a "
                            "serverless variant has no instances")
        if config["MemorySizeInMB"] % 1024:
            problems.append(f"variant {name}: MemorySizeInMB {config['MemorySizeInMB']} is "
                            "not one of 1024, 2048, 3072, 4096, 5120, 6144")
        provisioned = config.get("ProvisionedConcurrency")
        if provisioned is not None and provisioned > config["MaxConcurrency"]:
            problems.append(f"variant {name}: ProvisionedConcurrency {provisioned} is more "
                            f"than MaxConcurrency {config['MaxConcurrency']}")
        model = models.get(variant["ModelName"]) or {}
        if model.get("EnableNetworkIsolation"):
            problems.append(f"model {variant['ModelName']}: network isolation is not "
                            "supported for Serverless Inference")
        if model.get("VpcConfig"):
            problems.append(f"model {variant['ModelName']}: VPC configuration is not "
                            "supported for Serverless Inference")
    if problems:
        raise client_error("CreateEndpointConfig", "ValidationException",
                           "; ".join(problems) + ".")


def client_error(operation: str, code: str, message: str, *, status: int = 400,
                 extra: dict[str, Any] | None = None) -> ClientError:
    """A ``ClientError`` shaped like the one botocore builds from an AWS reply."""
    from botocore.exceptions import ClientError

    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    if extra:
        response.update(extra)
    return ClientError(response, operation)  # type: ignore[arg-type]
