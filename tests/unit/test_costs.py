"""What a run costs: the estimate's arithmetic, the price table and its overrides, the budget
refusal, and the measured cost from Describe* responses.

Every expected number is computed by hand in the test from the table's prices, so a
change in the arithmetic (a missing 120 s, an hour counted as a minute, a month that is
not 730 hours) fails here.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from sagepipe.flows.cli import app
from sagepipe.flows.config import load_config
from sagepipe.flows.estimate import (
    endpoint_shapes,
    job_usages,
    measured_cost,
    measured_text,
    run_estimate,
)
from sagepipe.flows.plan import build_plan
from sagepipe.flows.report import cost_markdown
from sagepipe.tasks.costs import (
    BudgetSettings,
    EndpointShape,
    JobUsage,
    ServerlessShape,
    billable_seconds,
    check_budget,
    endpoint_monthly,
    job_actual,
    job_cost,
    serverless_monthly,
    warm_pool_actual,
    warm_pool_line,
)
from sagepipe.tasks.errors import ConfigError, OverBudget
from sagepipe.tasks.pricing import TABLE, PriceBook, PriceMissing, PricingSettings

M5 = 0.115  # us-east-1 ml.m5.large, every kind (the table's)
STORAGE = 0.14  # ML storage, USD per GB-month
LOG_GB = 0.50  # CloudWatch Logs ingestion, USD per GB
HOUR = 3600
MONTH = 730 * HOUR
T0 = datetime(2026, 12, 3, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def by_item(lines: list[Any]) -> dict[str, float | None]:
    return {line.item: line.usd for line in lines}


def test_the_table_holds_what_the_estimate_uses_with_region_date_and_source() -> None:
    for key, price in TABLE.items():
        assert price.key == key
        assert price.region == "us-east-1" and price.taken == "2026-12-03"
        assert price.source.startswith("https://"), key
    for kind in ("training", "processing", "hosting"):
        assert TABLE[f"{kind}/ml.m5.large"].usd == M5
    # provisioned concurrency is not in any stored copy of the page: no invented number
    assert TABLE["serverless/provisioned_gb_second"].usd is None
    assert TABLE["serverless/request"].usd == 0.0


def test_a_job_costs_instances_plus_its_volume_plus_its_logs_by_the_second() -> None:
    pricing = PricingSettings()
    usage = JobUsage("preprocess", "processing", "ml.m5.large", 1, 30, 3600)
    cost, _ = job_cost(usage, 3600, PriceBook(), pricing)
    assert cost == pytest.approx(M5 + 30 * STORAGE / 730 + 10 / 1024 * LOG_GB)
    two = JobUsage("train", "training", "ml.m5.large", 2, 0, 1800)
    quiet = PricingSettings(log_mb_per_job_hour=0)
    assert job_cost(two, 1800, PriceBook(), quiet)[0] == pytest.approx(2 * 0.5 * M5)
    # a training job is priced at its limit plus the 120 s SageMaker gives it to save
    assert two.seconds_limit == 1920 and usage.seconds_limit == 3600


def test_the_aws_examples_estimate_by_hand() -> None:
    config = load_config("aws")
    estimate = run_estimate(config)
    job = M5 + 30 * STORAGE / 730 + 10 / 1024 * LOG_GB  # one hour of ml.m5.large, 30 GB
    train = (M5 + 30 * STORAGE / 730 + 10 / 1024 * LOG_GB) * 3720 / 3600
    lines = by_item(estimate.run)
    assert lines["preprocess job"] == pytest.approx(job)
    assert lines["evaluate job"] == pytest.approx(job)
    assert lines["train job"] == pytest.approx(train)
    assert lines["image build"] == pytest.approx(60 * 0.005)
    assert lines["deploy to sagepipe-demo"] == pytest.approx(M5 * 3600 / 3600)
    assert lines["S3 requests"] == pytest.approx(1000 / 1000 * 0.005)
    assert estimate.total == pytest.approx(2 * job + train + 0.3 + 0.115 + 0.005)
    assert estimate.total == pytest.approx(0.8011, abs=1e-4)
    assert by_item(estimate.live) == {"production endpoint sagepipe-demo":
                                      pytest.approx(M5 * 730)}  # 83.95 USD a month
    assert estimate.likely_total is None
    text = "\n".join(estimate.text())
    assert "an estimate" in text and "83.95 USD/month" in text
    assert ("training/ml.m5.large: 0.115 USD per instance-hour (us-east-1, 2026-12-03, "
            "https://aws.amazon.com/sagemaker/pricing/)") in estimate.prices


def test_the_last_runs_durations_price_each_job_as_it_ran() -> None:
    config = load_config("aws", {"endpoint": {"staging_name": "demo-staging"}})
    estimate = run_estimate(config, {"preprocess": 12.0, "train": 30.0}, "run x")
    likely = {line.item: line.likely_usd for line in estimate.run}
    assert likely["preprocess job"] == pytest.approx(
        (M5 + 30 * STORAGE / 730 + 10 / 1024 * LOG_GB) * 12 / 3600)
    assert likely["train job"] == pytest.approx(
        (M5 + 30 * STORAGE / 730 + 10 / 1024 * LOG_GB) * 30 / 3600)
    assert likely["evaluate job"] is None  # unknown: the upper bound stands in the total
    upper = by_item(estimate.run)
    assert estimate.likely_total == pytest.approx(
        estimate.total - upper["preprocess job"] - upper["train job"]  # type: ignore[operator]
        + likely["preprocess job"] + likely["train job"])
    # a staging endpoint: a second deploy in the run, a second endpoint live
    assert "deploy to demo-staging" in upper
    assert by_item(estimate.live)["staging endpoint demo-staging"] == pytest.approx(M5 * 730)
    assert estimate.live_total == pytest.approx(2 * M5 * 730)


def test_the_estimate_prices_the_very_requests_the_run_sends() -> None:
    """job_usages (the estimate's) against the requests tasks/steps.py builds."""
    config = load_config("aws", {"jobs": {"spot": True, "training_instance_type":
                                          "ml.m5.xlarge", "max_runtime_seconds": 1800,
                                          "volume_size_gb": 50}})
    requests = {(c.params.get("ProcessingJobName") or c.params.get("TrainingJobName")): c
                for c in build_plan(config) if c.operation in ("CreateProcessingJob",
                                                               "CreateTrainingJob")}
    from_requests = [JobUsage.from_request(
        name.split("-")[2], "training" if call.operation == "CreateTrainingJob"
        else "processing", call.params) for name, call in requests.items()]
    assert sorted(from_requests, key=lambda u: u.step) == sorted(job_usages(config),
                                                                 key=lambda u: u.step)
    train = next(u for u in from_requests if u.step == "train")
    assert (train.spot, train.instance_type, train.max_runtime_seconds) == (
        True, "ml.m5.xlarge", 1800)


def test_prices_are_overridden_by_key_and_cited_as_settings() -> None:
    # --set splits keys on dots: pricing.prices.training/ml.m5.large=0.2 arrives nested
    config = load_config("aws", {"pricing": {"region": "eu-west-1", "prices": {
        "training/ml": {"m5": {"large": 0.2}}, "hosting/ml.m5.large": 0.128}},
        "runtime": {"region": "eu-west-1"}})
    assert config.pricing.prices == {"training/ml.m5.large": 0.2, "hosting/ml.m5.large": 0.128}
    estimate = run_estimate(config)
    assert by_item(estimate.live)["production endpoint sagepipe-demo"] == pytest.approx(
        0.128 * 730)
    assert ("training/ml.m5.large: 0.2 USD per instance-hour (eu-west-1, , settings "
            "(pricing.prices.training/ml.m5.large))") in estimate.prices
    assert not any("for us-east-1" in note for note in estimate.notes)
    # the default table in another region: said, not hidden
    other = run_estimate(load_config("aws", {"runtime": {"region": "eu-west-1"}}))
    assert any("the prices are for us-east-1, the runtime's region is eu-west-1" in n
               for n in other.notes)


@pytest.mark.parametrize(("prices", "message"), [
    ({"training/ml.m5.larg": 0.2}, "'ml.m5.larg' is not an instance type SageMaker offers "
     "for training. Did you mean training/ml.m5.large?"),
    ({"hosting/ml.t3.medium": 0.05}, "is not an instance type SageMaker offers for hosting"),
    ({"trainng/ml.m5.large": 0.2}, "'trainng/ml.m5.large' is not a price key"),
    ({"s3/put_per_100": 0.1}, "Did you mean 's3/put_per_1000'?"),
    ({"hosting/ml.m5.large": -1}, "a price is at least 0"),
])
def test_a_bad_price_key_or_value_is_refused_with_the_keys_there_are(
        prices: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match="pricing") as err:
        load_config("aws", {"pricing": {"prices": prices}})
    assert message in str(err.value)


def test_an_instance_type_without_a_price_says_how_to_set_one_and_blocks_a_budget() -> None:
    config = load_config("aws", {"jobs": {"training_instance_type": "ml.p5.48xlarge"}})
    estimate = run_estimate(config)
    train = next(line for line in estimate.run if line.item == "train job")
    assert train.usd is None
    assert "No price for training/ml.p5.48xlarge" in train.missing
    assert "--set pricing.prices.training/ml.p5.48xlarge=<USD>" in train.missing
    check_budget(estimate, BudgetSettings())  # no budget: nothing to check
    with pytest.raises(ConfigError, match=r"The budget cannot be checked: No price for "
                       r"training/ml\.p5\.48xlarge"):
        check_budget(estimate, BudgetSettings(max_usd_per_run=100))


def test_a_run_over_budget_is_refused_with_its_breakdown_and_the_runtime_that_fits() -> None:
    estimate = run_estimate(load_config("aws"))
    with pytest.raises(OverBudget) as err:
        check_budget(estimate, BudgetSettings(max_usd_per_run=0.5))
    message = str(err.value)
    assert "budget.max_usd_per_run 0.5000 USD" in message
    assert "could cost up to 0.8011 USD" in message and "Nothing was created" in message
    for item in ("preprocess job", "train job", "evaluate job", "image build",
                 "deploy to sagepipe-demo", "S3 requests"):
        assert f"  - {item}: " in message
    # by hand: jobs cost r per second each (the train job 120 s more); the rest is fixed
    rate = (M5 + 30 * STORAGE / 730 + 10 / 1024 * LOG_GB) / 3600
    fits = math.floor((0.5 - 0.3 - 0.115 - 0.005 - rate * 120) / (3 * rate))
    assert f"set jobs.max_runtime_seconds to {fits} or less" in message
    shorter = run_estimate(load_config("aws", {"jobs": {"max_runtime_seconds": fits}}))
    check_budget(shorter, BudgetSettings(max_usd_per_run=0.5))  # it does fit
    too_long = run_estimate(load_config("aws", {"jobs": {"max_runtime_seconds": fits + 2}}))
    with pytest.raises(OverBudget):
        check_budget(too_long, BudgetSettings(max_usd_per_run=0.5))
    # a budget not even a minute of jobs fits says so
    with pytest.raises(OverBudget, match="even jobs of a minute would not"):
        check_budget(estimate, BudgetSettings(max_usd_per_run=0.3))


def test_what_a_run_leaves_live_is_held_to_its_monthly_budget() -> None:
    estimate = run_estimate(load_config("aws", {"endpoint": {"staging_name": "s-1"}}))
    check_budget(estimate, BudgetSettings(max_usd_per_month_live=2 * M5 * 730 + 0.01))
    with pytest.raises(OverBudget) as err:
        check_budget(estimate, BudgetSettings(max_usd_per_month_live=100))
    assert "167.90 USD a month at rest" in str(err.value)
    assert "budget.max_usd_per_month_live 100.00 USD" in str(err.value)
    assert "staging endpoint s-1" in str(err.value)


def test_a_serverless_endpoint_costs_its_requests_and_its_provisioned_concurrency() -> None:
    book = PriceBook()
    shape = ServerlessShape(memory_mb=2048, max_concurrency=5)
    cost, _ = serverless_monthly(shape, requests=100_000, seconds_per_request=0.1,
                                 kb_per_request=4, book=book)
    data_gb = 100_000 * 4 / 1024 / 1024
    assert cost == pytest.approx(100_000 * 0.1 * 2 * 0.00002 + data_gb * 0.016)  # 0.4061
    idle, _ = serverless_monthly(shape, requests=0, seconds_per_request=0.1, kb_per_request=4,
                                 book=book)
    assert idle == 0.0  # at rest a serverless endpoint costs nothing
    warm = ServerlessShape(memory_mb=1024, max_concurrency=5, provisioned_concurrency=2)
    with pytest.raises(PriceMissing, match="serverless/provisioned_gb_second"):
        serverless_monthly(warm, requests=0, seconds_per_request=0.1, kb_per_request=4,
                           book=book)
    priced = PriceBook(PricingSettings(prices={"serverless/provisioned_gb_second": 0.000005,
                                               "serverless/provisioned_inference_gb_second":
                                               0.00001}))
    cost, how = serverless_monthly(warm, requests=1000, seconds_per_request=0.5,
                                   kb_per_request=0, book=priced)
    assert cost == pytest.approx(2 * 1 * MONTH * 0.000005 + 1000 * 0.5 * 1 * 0.00001)
    assert "provisioned 2 x 1 GB x 730 h" in how
    line = endpoint_monthly(EndpointShape("e", "production", serverless=warm), PriceBook(),
                            PricingSettings())
    assert line.usd is None and "pricing.prices.serverless/provisioned_gb_second" in line.missing


def test_an_autoscaled_endpoint_costs_its_minimum_at_rest_and_its_maximum_in_a_deploy() -> None:
    line = endpoint_monthly(EndpointShape("e", "production", "ml.m5.large", 2,
                                          why="autoscaling's min_instances at rest"),
                            PriceBook(), PricingSettings())
    assert line.usd == pytest.approx(2 * M5 * 730)
    assert "autoscaling's min_instances at rest" in line.detail
    shapes = endpoint_shapes(load_config("aws", {"endpoint": {"instance_count": 3}}))
    assert [(s.role, s.instances) for s in shapes] == [("production", 3)]
    # from the settings: production at rest is min_instances (2), not instance_count (3);
    # staging is never autoscaled, so it runs instance_count
    config = load_config("aws", {"endpoint": {
        "instance_count": 3, "staging_name": "demo-staging", "autoscaling": {
            "min_instances": 2, "max_instances": 4, "target_invocations_per_instance": 70}}})
    assert [(s.role, s.instances, s.why) for s in endpoint_shapes(config)] == [
        ("staging", 3, ""), ("production", 2, "autoscaling's min_instances at rest")]
    estimate = run_estimate(config)
    assert by_item(estimate.live) == {
        "staging endpoint demo-staging": pytest.approx(3 * 0.115 * 730),  # 251.85
        "production endpoint sagepipe-demo": pytest.approx(2 * 0.115 * 730)}  # 167.90
    assert estimate.live_total == pytest.approx(419.75)
    # a blue/green update keeps the count autoscaling reached (RetainAllVariantProperties):
    # production's new fleet is priced at max_instances for endpoint.timeout_seconds (3600)
    lines = by_item(estimate.run)
    assert lines["deploy to sagepipe-demo"] == pytest.approx(4 * 0.115)  # 0.46
    assert lines["deploy to demo-staging"] == pytest.approx(3 * 0.115)  # 0.345
    deploy = next(line for line in estimate.run if line.item == "deploy to sagepipe-demo")
    assert "x4, autoscaling's max_instances" in deploy.detail
    # staging_keep: false - the staging endpoint is deleted, production alone stays live
    gone = load_config("aws", {"endpoint": {
        "staging_name": "demo-staging", "staging_keep": False, "autoscaling": {
            "min_instances": 1, "max_instances": 4, "target_invocations_per_instance": 70}}})
    assert by_item(run_estimate(gone).live) == {
        "production endpoint sagepipe-demo": pytest.approx(0.115 * 730)}


def test_a_kept_warm_pool_is_priced_at_its_keep_alive_in_the_upper_bound() -> None:
    book = PriceBook()
    two = JobUsage("train", "training", "ml.m5.large", 2, 30, 3600, keep_alive_seconds=900)
    line = warm_pool_line(two, book)
    assert line is not None
    # instances only, for the whole keep-alive: 2 x 900 s x 0.115 USD/h
    assert line.usd == pytest.approx(2 * 900 / 3600 * M5)  # 0.0575
    assert line.step == "" and "900 s x 2 x 0.115 USD/h" in line.detail
    assert warm_pool_line(JobUsage("train", "training", "ml.m5.large", 1, 30, 3600),
                          book) is None  # no keep-alive, no pool
    assert warm_pool_line(JobUsage("evaluate", "processing", "ml.m5.large", 1, 30, 3600,
                                   keep_alive_seconds=900), book) is None
    config = load_config("aws", {"jobs": {"keep_alive_seconds": 1800}})
    # the estimate reads the keep-alive the training request carries
    train_request = next(c.params for c in build_plan(config)
                         if c.operation == "CreateTrainingJob")
    assert JobUsage.from_request("train", "training", train_request) == next(
        u for u in job_usages(config) if u.step == "train")
    assert train_request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    estimate = run_estimate(config)
    pool = 1800 / 3600 * M5  # 0.0575
    assert by_item(estimate.run)["train warm pool"] == pytest.approx(pool)
    assert estimate.total == pytest.approx(0.8011 + 0.0575, abs=1e-4)  # 0.8586
    # the budget counts it, and it does not shrink with jobs.max_runtime_seconds
    with pytest.raises(OverBudget) as err:
        check_budget(estimate, BudgetSettings(max_usd_per_run=0.5))
    message = str(err.value)
    assert "  - train warm pool: 0.0575 USD" in message
    rate = (M5 + 30 * STORAGE / 730 + 10 / 1024 * LOG_GB) / 3600
    fits = math.floor((0.5 - 0.3 - 0.115 - 0.005 - pool - rate * 120) / (3 * rate))
    assert f"set jobs.max_runtime_seconds to {fits} or less" in message
    assert "a shorter jobs.keep_alive_seconds" in message


def test_the_measured_cost_prices_the_warm_pools_retained_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config("aws", {"pricing": {"log_mb_per_job_hour": 0},
                                 "jobs": {"keep_alive_seconds": 1800}})
    record: dict[str, Any] = {
        "steps": {"preprocess": {"how": "cached"},
                  "train": {"how": "created", "job": "t", "billable_seconds": 90.0,
                            "billing": "BillableTimeInSeconds", "warm_pool": "Available",
                            "warm_pool_seconds": 600},
                  "evaluate": {"how": "created", "billable_seconds": 30.0,
                               "billing": "ProcessingEndTime - ProcessingStartTime"}}}
    measured = measured_cost(config, record)
    per_second = (M5 + 30 * STORAGE / 730) / 3600
    (pool,) = measured["warm_pools"]
    # ResourceRetainedBillableTimeInSeconds x InstanceCount x the training price
    assert pool["usd"] == pytest.approx(600 / 3600 * M5, abs=1e-8)  # 0.01917
    assert pool["up_to_usd"] == pytest.approx(1800 / 3600 * M5)  # still kept: up to 0.0575
    assert "still kept when the run ended" in pool["how"]
    assert measured["total_usd"] == pytest.approx(120 * per_second + 600 / 3600 * M5,
                                                  abs=1e-6)
    assert "train warm pool 600 s" in measured_text(measured)
    record["cost"] = {"estimate": run_estimate(config).as_dict(), "measured": measured}
    assert "| train warm pool | 600 |" in "\n".join(cost_markdown(record))
    # ended by its keep-alive: all of it, nothing more to come
    record["steps"]["train"].update(warm_pool="Terminated", warm_pool_seconds=1800)
    (ended,) = measured_cost(config, record)["warm_pools"]
    assert ended["usd"] == pytest.approx(1800 / 3600 * M5) and "up_to_usd" not in ended
    # a cached or reused job kept no pool in this run; an unknown time is not a zero
    for how, usd_ in (("cached", 0.0), ("reused", 0.0)):
        record["steps"]["train"]["how"] = how
        (again,) = measured_cost(config, record)["warm_pools"]
        assert again["usd"] == usd_ and "nothing billed in this run" in again["how"]
    unknown = warm_pool_actual(job_usages(config)[1], how="created", status="Available",
                               retained_seconds=None, book=PriceBook())
    assert unknown["usd"] is None
    # no keep-alive in the settings: no warm pool line
    assert "warm_pools" not in measured_cost(load_config("aws"), record)


def test_a_run_reads_its_warm_pools_retained_seconds_again_when_it_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool bills while kept: the run's record takes WarmPoolStatus from a describe made
    as the run ends (checked by Stubber against botocore's output shape)."""
    from types import SimpleNamespace

    import sagepipe.tasks.steps as steps
    from sagepipe.flows.pipeline import _warm_pools_now

    sm = boto3.client("sagemaker", region_name="us-east-1")
    stub = Stubber(sm)
    stub.add_response("describe_training_job", {
        "TrainingJobName": "t", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/t",
        "ModelArtifacts": {"S3ModelArtifacts": "s3://b/m"}, "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed", "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                           "VolumeSizeInGB": 30, "KeepAlivePeriodInSeconds": 1800},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": T0,
        "TrainingStartTime": T0, "TrainingEndTime": T0 + timedelta(seconds=90),
        "BillableTimeInSeconds": 90, "TrainingTimeInSeconds": 90,
        "WarmPoolStatus": {"Status": "Available", "ResourceRetainedBillableTimeInSeconds": 240}},
        {"TrainingJobName": "t"})
    monkeypatch.setattr(steps, "get_clients", lambda runtime: SimpleNamespace(sagemaker=sm))
    config = load_config("aws", {"jobs": {"keep_alive_seconds": 1800}})
    record: dict[str, Any] = {"steps": {
        "preprocess": {"how": "created", "job": "p"},  # no pool: not described
        "train": {"how": "created", "job": "t", "warm_pool": "Available",
                  "warm_pool_seconds": 0}}}
    with stub:
        _warm_pools_now(config, record)
    stub.assert_no_pending_responses()
    assert record["steps"]["train"]["warm_pool_seconds"] == 240
    assert record["steps"]["train"]["billable_seconds"] == 90.0


def describe(client: Any, operation: str, response: dict[str, Any], **params: Any) -> Any:
    """A Describe* response as boto3 returns it, checked against botocore's output shape."""
    with Stubber(client) as stub:
        stub.add_response(operation, response, params)
        return getattr(client, operation)(**params)


def test_billable_seconds_come_from_what_describe_reports() -> None:
    sm = boto3.client("sagemaker", region_name="us-east-1")
    common = {"TrainingJobName": "t", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:"
              "training-job/t", "ModelArtifacts": {"S3ModelArtifacts": "s3://b/m"},
              "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
              "AlgorithmSpecification": {"TrainingInputMode": "File"},
              "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 2,
                                 "VolumeSizeInGB": 30},
              "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": T0,
              "TrainingStartTime": T0, "TrainingEndTime": T0 + timedelta(seconds=500)}
    # managed spot: AWS's own example, 100 billable of 500 trained is an 80% saving
    spot = describe(sm, "describe_training_job", {**common, "BillableTimeInSeconds": 100,
                                                  "TrainingTimeInSeconds": 500},
                    TrainingJobName="t")
    assert billable_seconds("training", spot) == (100.0, "BillableTimeInSeconds")
    usage = JobUsage("train", "training", "ml.m5.large", 2, 30, 3600, spot=True)
    actual = job_actual(usage, how="created", seconds=100.0, source="BillableTimeInSeconds",
                        book=PriceBook(), pricing=PricingSettings(log_mb_per_job_hour=0),
                        training_seconds=500)
    assert actual["spot_savings_percent"] == 80.0
    assert actual["usd"] == pytest.approx(2 * 100 / 3600 * M5 + 2 * 30 * STORAGE * 100 / MONTH,
                                          abs=1e-6)
    # without BillableTimeInSeconds: AWS bills TrainingStartTime to TrainingEndTime
    plain = describe(sm, "describe_training_job", common, TrainingJobName="t")
    assert billable_seconds("training", plain) == (500.0,
                                                   "TrainingEndTime - TrainingStartTime")
    processing = describe(sm, "describe_processing_job", {
        "ProcessingJobName": "p", "ProcessingJobArn": "arn:aws:sagemaker:us-east-1:1:"
        "processing-job/p", "ProcessingJobStatus": "Completed", "CreationTime": T0,
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType":
                                                  "ml.m5.large", "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": "i"}, "ProcessingStartTime": T0,
        "ProcessingEndTime": T0 + timedelta(seconds=42)}, ProcessingJobName="p")
    assert billable_seconds("processing", processing) == (
        42.0, "ProcessingEndTime - ProcessingStartTime")
    running = {**common, "TrainingJobStatus": "InProgress"}
    del running["TrainingEndTime"]
    assert billable_seconds("training", running) == (None, "")
    cached = job_actual(usage, how="cached", seconds=None, source="", book=PriceBook(),
                        pricing=PricingSettings())
    assert cached["usd"] == 0.0 and "nothing billed in this run" in cached["how"]


def test_the_measured_cost_prices_the_seconds_a_run_recorded_and_renders() -> None:
    config = load_config("aws", {"pricing": {"log_mb_per_job_hour": 0}})
    record: dict[str, Any] = {
        "steps": {"preprocess": {"how": "cached", "seconds": 11.0},
                  "train": {"how": "created", "billable_seconds": 90.0,
                            "billing": "BillableTimeInSeconds", "training_seconds": 90.0},
                  "evaluate": {"how": "failed", "status": "failed", "billable_seconds": 30.0,
                               "billing": "ProcessingEndTime - ProcessingStartTime"}},
        "images": {"train": {"built": True, "build_seconds": 61.0},
                   "serve": {"built": False}}}
    measured = measured_cost(config, record)
    per_second = (M5 + 30 * STORAGE / 730) / 3600
    jobs = {job["step"]: job for job in measured["jobs"]}
    assert jobs["preprocess"]["usd"] == 0.0
    assert jobs["train"]["usd"] == pytest.approx(90 * per_second, abs=1e-6)
    assert jobs["evaluate"]["usd"] == pytest.approx(30 * per_second, abs=1e-6)  # failed: billed
    assert measured["build"] == {"minutes": 2, "usd": pytest.approx(2 * 0.005)}
    assert measured["total_usd"] == pytest.approx(120 * per_second + 0.01, abs=1e-5)
    assert measured_text(measured).endswith("(preprocess cached, train 90.0 s, evaluate 30.0 s, "
                                            "image build 2 min)")
    record["cost"] = {"estimate": run_estimate(config).as_dict(), "measured": measured}
    markdown = "\n".join(cost_markdown(record))
    assert "## Cost" in markdown and "**estimate**" in markdown
    assert "| train job | 90.0 |" in markdown and "BillableTimeInSeconds" in markdown
    assert "| production endpoint sagepipe-demo | 83.95 |" in markdown
    assert "https://aws.amazon.com/sagemaker/pricing/" in markdown


def test_plan_prints_the_estimate_and_refuses_a_run_over_budget() -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", "--env", "aws", "--no-last-run"])
    assert ok.exit_code == 0, ok.output
    assert "Estimated cost of this run (an estimate" in ok.stdout
    assert "0.8011 USD" in ok.stdout and "83.95 USD/month" in ok.stdout
    within = runner.invoke(app, ["plan", "--env", "aws", "--no-last-run", "--set",
                                 "budget.max_usd_per_run=1"])
    assert within.exit_code == 0, within.output
    assert "SageMaker stops each job at its MaxRuntimeInSeconds" in within.stdout
    over = runner.invoke(app, ["plan", "--env", "aws", "--no-last-run", "--set",
                               "budget.max_usd_per_run=0.5"])
    assert over.exit_code == 2, over.output
    assert "Over budget" in over.stderr and "budget.max_usd_per_run 0.5000 USD" in over.stderr
    assert "  - train job: " in over.stderr
    assert "Traceback" not in over.output
    # without credentials the last run cannot be read: said, and the estimate stands
    history = runner.invoke(app, ["plan", "--env", "aws"])
    assert history.exit_code == 0, history.output
    assert "no last run's durations: the run records could not be read" in history.stdout
