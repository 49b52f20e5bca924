"""The price table the cost estimate uses: each price with its unit, region, date and source.

The defaults are AWS's on-demand list prices for us-east-1, taken on the date in
:data:`TAKEN` from the pricing page each entry names. The stored copies of those pages
that this table was checked against are named in ``seen`` (AWS's pricing pages render
their tables with JavaScript, so several numbers were read from copies that quote
them, or from an AWS bill in an AWS sample repository). Prices change and differ by
region: ``pricing.prices`` in the settings overrides any entry by its key, and adds
instance types the table lacks::

    pricing:
      region: eu-west-1
      prices: {training/ml.m5.large: 0.128, hosting/ml.m5.large: 0.128}

Keys: ``training/<type>``, ``processing/<type>``, ``hosting/<type>`` (USD per
instance-hour) and the fixed keys of :data:`TABLE`. A key with no price (``usd`` None)
must be set before anything that needs it is priced.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .local.validation import service_model

__all__ = ["HOURS_PER_MONTH", "INSTANCE_KINDS", "TABLE", "TABLE_REGION", "TAKEN", "Price",
           "PriceBook", "PriceMissing", "PricingSettings"]

TABLE_REGION = "us-east-1"
TAKEN = "2026-12-03"
# the month AWS's pricing examples and calculator use: 730 hours
HOURS_PER_MONTH = 730.0

SAGEMAKER = "https://aws.amazon.com/sagemaker/pricing/"
SERVERLESS_DOC = "https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html"
CODEBUILD = "https://aws.amazon.com/codebuild/pricing/"
S3 = "https://aws.amazon.com/s3/pricing/"
CLOUDWATCH = "https://aws.amazon.com/cloudwatch/pricing/"
_SEEN_INSTANCES = ("this README's at-rest section (ml.m5.large 0.115); stored copies quoting "
                   "the page (us-east-1 tables in cost tools' price fallbacks: ml.m5.large "
                   "0.115, ml.m5.xlarge 0.23, ml.m5.2xlarge 0.461, ml.c5.xlarge 0.204, "
                   "ml.g4dn.xlarge 0.736, ml.t3.medium 0.05)")

INSTANCE_KINDS = ("training", "processing", "hosting")
InstanceKind = Literal["training", "processing", "hosting"]


@dataclass(frozen=True)
class Price:
    key: str
    usd: float | None  # None: not in the table; set pricing.prices.<key>
    unit: str
    source: str
    region: str = TABLE_REGION
    taken: str = TAKEN
    seen: str = ""

    def cite(self) -> str:
        """One line: key, price, unit, region, date, source."""
        if self.usd is None:
            return f"{self.key}: no price (set pricing.prices.{self.key}; see {self.source})"
        return (f"{self.key}: {self.usd:g} USD {self.unit} ({self.region}, {self.taken}, "
                f"{self.source})")


def _instances(kind: InstanceKind, prices: dict[str, float]) -> dict[str, Price]:
    return {f"{kind}/{t}": Price(f"{kind}/{t}", usd, "per instance-hour", SAGEMAKER,
                                 seen=_SEEN_INSTANCES) for t, usd in prices.items()}


TABLE: dict[str, Price] = {
    # On-demand ML instances, billed per second of use: training and processing jobs
    # from TrainingStartTime/ProcessingStartTime to their end, endpoints while they exist.
    **_instances("training", {"ml.m5.large": 0.115, "ml.m5.xlarge": 0.23,
                              "ml.m5.2xlarge": 0.461, "ml.c5.xlarge": 0.204,
                              "ml.g4dn.xlarge": 0.736}),
    **_instances("processing", {"ml.t3.medium": 0.05, "ml.m5.large": 0.115,
                                "ml.m5.xlarge": 0.23, "ml.m5.2xlarge": 0.461,
                                "ml.c5.xlarge": 0.204, "ml.g4dn.xlarge": 0.736}),
    **_instances("hosting", {"ml.m5.large": 0.115, "ml.m5.xlarge": 0.23,
                             "ml.m5.2xlarge": 0.461, "ml.c5.xlarge": 0.204,
                             "ml.g4dn.xlarge": 0.736}),
    "ml_storage/gb_month": Price(
        "ml_storage/gb_month", 0.14, "per GB-month of ML storage (a job's volume)", SAGEMAKER,
        seen="an AWS bill in aws-samples/sagemaker-ssh-helper Sample_Costs.md bills the job "
        "volumes as 'ML storage' per GB-Mo (eu-west-1: 0.154 training, 0.110 processing)"),
    # Serverless Inference: "you only pay for the compute capacity used to process
    # inference requests, billed by the millisecond, and the amount of data processed";
    # with provisioned concurrency also "based on the memory configured, duration
    # provisioned, and the amount of concurrency enabled" (SERVERLESS_DOC)
    "serverless/gb_second": Price(
        "serverless/gb_second", 0.00002, "per GB-second of on-demand inference duration "
        "(memory size x time)", SAGEMAKER,
        seen="a stored price list quoting the page: 'Serverless inference: $0.0000200 per "
        "second per GB memory'"),
    "serverless/data_gb": Price(
        "serverless/data_gb", 0.016, "per GB of data processed (in plus out)", SAGEMAKER,
        seen="the AWS bill above: '$0.016 per GB for Endpoint Data IN' and '... OUT'"),
    "serverless/request": Price(
        "serverless/request", 0.0, "per request: none (duration and data only)", SERVERLESS_DOC,
        seen="the page's billing sentence quoted above names no per-request charge"),
    "serverless/provisioned_gb_second": Price(
        "serverless/provisioned_gb_second", None, "per GB-second of provisioned concurrency "
        "(memory x concurrency x time provisioned)", SAGEMAKER,
        seen="not in the stored copies of the page"),
    "serverless/provisioned_inference_gb_second": Price(
        "serverless/provisioned_inference_gb_second", None, "per GB-second of inference "
        "duration on provisioned concurrency", SAGEMAKER, seen="not in the stored copies"),
    # CodeBuild: per build-minute by compute type; the stack's sagepipe-images project
    # runs BUILD_GENERAL1_SMALL with TimeoutInMinutes 60 (infra/sagepipe.yaml)
    "codebuild/BUILD_GENERAL1_SMALL": Price(
        "codebuild/BUILD_GENERAL1_SMALL", 0.005, "per build-minute (Linux)", CODEBUILD,
        seen="stored copies quoting the page: small 0.005, medium 0.01, large 0.02"),
    "codebuild/BUILD_GENERAL1_MEDIUM": Price(
        "codebuild/BUILD_GENERAL1_MEDIUM", 0.01, "per build-minute (Linux)", CODEBUILD,
        seen="as above"),
    "codebuild/BUILD_GENERAL1_LARGE": Price(
        "codebuild/BUILD_GENERAL1_LARGE", 0.02, "per build-minute (Linux)", CODEBUILD,
        seen="as above"),
    "s3/storage_gb_month": Price(
        "s3/storage_gb_month", 0.023, "per GB-month (S3 Standard, first 50 TB)", S3,
        seen="this README's at-rest section"),
    "s3/put_per_1000": Price(
        "s3/put_per_1000", 0.005, "per 1,000 PUT, COPY, POST or LIST requests", S3),
    "s3/get_per_1000": Price(
        "s3/get_per_1000", 0.0004, "per 1,000 GET and other requests", S3),
    "logs/ingest_gb": Price(
        "logs/ingest_gb", 0.50, "per GB ingested (standard log class)", CLOUDWATCH),
    "logs/storage_gb_month": Price(
        "logs/storage_gb_month", 0.03, "per GB-month stored", CLOUDWATCH,
        seen="this README's at-rest section"),
}

_INSTANCE_KEY = re.compile(r"^(training|processing|hosting)/(ml\.[a-z0-9.-]+)$")
# the instance types SageMaker accepts for each, from botocore's model
_ENUMS = {"training": "TrainingInstanceType", "processing": "ProcessingInstanceType",
          "hosting": "ProductionVariantInstanceType"}


def instance_types(kind: str) -> list[str]:
    shape: Any = service_model("sagemaker").shape_for(_ENUMS[kind])  # a StringShape
    return list(shape.enum)


class PriceMissing(ValueError):
    """A price the estimate needs is not in the table nor in the settings."""

    def __init__(self, key: str, what: str) -> None:
        self.key = key
        known = TABLE.get(key)
        where = known.source if known else SAGEMAKER
        super().__init__(f"No price for {key} ({what}). Look it up on {where} and set it: "
                         f"pricing: {{prices: {{{key}: <USD>}}}} in the settings, or "
                         f"--set pricing.prices.{key}=<USD>.")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``--set pricing.prices.training/ml.m5.large=0.2`` arrives split on its dots:
    {"training/ml": {"m5": {"large": 0.2}}}; join the parts back into the key."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class PricingSettings(BaseModel):
    """What the cost estimate assumes: price overrides and the usage it cannot know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str = Field(TABLE_REGION, description="the region the prices are for: the table's "
                        "defaults are us-east-1 list prices; for another region set this and "
                        "that region's prices in prices")
    prices: dict[str, float] = Field(
        default_factory=dict, description="USD by key, over the table's: training/<type>, "
        "processing/<type>, hosting/<type> (per instance-hour), ml_storage/gb_month, "
        "serverless/..., codebuild/<compute type>, s3/..., logs/... (`sagepipe plan` lists "
        "every price it used with its source)")
    build_compute_type: Literal["BUILD_GENERAL1_SMALL", "BUILD_GENERAL1_MEDIUM",
                                "BUILD_GENERAL1_LARGE"] = Field(
        "BUILD_GENERAL1_SMALL", description="the image build project's compute type (the "
        "stack's sagepipe-images: BUILD_GENERAL1_SMALL)")
    build_minutes: int = Field(60, ge=1, le=480, description="an image build's time limit: "
                               "the stack's TimeoutInMinutes and the flow's wait (60)")
    s3_requests_per_run: int = Field(
        1000, ge=0, description="allowance of S3 requests a run makes (data snapshot, job "
        "inputs and outputs, records), priced at the PUT rate")
    log_mb_per_job_hour: float = Field(
        10.0, ge=0, description="allowance of CloudWatch Logs a job writes per hour")
    requests_per_month: int = Field(
        0, ge=0, description="expected invocations per month, for serverless endpoints' cost")
    seconds_per_request: float = Field(0.1, gt=0, le=60,
                                       description="serverless: inference duration per request")
    kb_per_request: float = Field(4.0, ge=0, description="serverless: payload in plus out, KB")

    @field_validator("prices", mode="before")
    @classmethod
    def _joined_keys(cls, value: Any) -> Any:
        return _flatten(value) if isinstance(value, dict) else value

    @field_validator("prices")
    @classmethod
    def _known_keys(cls, value: dict[str, float]) -> dict[str, float]:
        for key, usd in value.items():
            instance = _INSTANCE_KEY.match(key)
            if instance and instance[2] not in instance_types(instance[1]):
                known = instance_types(instance[1])
                guess = difflib.get_close_matches(instance[2], known, n=1)
                hint = f" Did you mean {instance[1]}/{guess[0]}?" if guess else ""
                raise ValueError(f"{instance[2]!r} is not an instance type "
                                 f"SageMaker offers for {instance[1]}.{hint}")
            if key not in TABLE and not instance:
                guess = difflib.get_close_matches(key, list(TABLE), n=1)
                hint = f" Did you mean {guess[0]!r}?" if guess else ""
                fixed = sorted({k for k in TABLE if not _INSTANCE_KEY.match(k)})
                raise ValueError(
                    f"{key!r} is not a price key.{hint} Keys: "
                    "training/<instance type>, processing/<instance type>, hosting/<instance "
                    f"type> (e.g. training/ml.m5.large), {', '.join(fixed)}")
            if usd < 0:
                raise ValueError(f"{key}: a price is at least 0 (got {usd})")
        return value


class PriceBook:
    """The table with the settings' overrides; every price it hands out is remembered, so
    an estimate can cite exactly the prices it used."""

    def __init__(self, settings: PricingSettings | None = None) -> None:
        self.settings = settings or PricingSettings()
        self.used: dict[str, Price] = {}

    def price(self, key: str, what: str) -> float:
        """USD for ``key``; PriceMissing (saying how to set it) when there is none."""
        entry = self.entry(key)
        if entry.usd is None:
            raise PriceMissing(key, what)
        self.used[key] = entry
        return entry.usd

    def entry(self, key: str) -> Price:
        if key in self.settings.prices:
            return Price(key, self.settings.prices[key], TABLE[key].unit if key in TABLE
                         else "per instance-hour", f"settings (pricing.prices.{key})",
                         region=self.settings.region, taken="")
        return TABLE.get(key) or Price(key, None, "per instance-hour", SAGEMAKER)

    def instance_hour(self, kind: InstanceKind, instance_type: str) -> float:
        return self.price(f"{kind}/{instance_type}", f"{instance_type} for {kind}, USD per "
                          "instance-hour")
