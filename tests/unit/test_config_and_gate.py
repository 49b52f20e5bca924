"""Config refusal messages and the gate's decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagepipe.flows.config import PipelineConfig, build_config, load_config
from sagepipe.tasks.endpoints import EndpointSettings
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.gate import decide
from sagepipe.tasks.runtime import RuntimeSettings


def test_settings_files_load() -> None:
    local = load_config("local")
    assert local.runtime.kind == "local"
    assert load_config("aws").runtime.kind == "aws"


def test_unknown_key_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"gate": {"treshold": 0.8}})
    message = str(err.value)
    assert "unknown key 'gate.treshold'" in message
    assert "Did you mean 'threshold'?" in message


def test_unknown_top_level_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'datset_uri'.*dataset_uri"):
        build_config({"datset_uri": "s3://x/y"})


@pytest.mark.parametrize("gate,needle", [
    ({"threshold": 1.5}, "out of range for roc_auc"),
    ({"threshold": -0.1}, "gate.threshold"),
    ({"margin": 2}, "gate.margin"),
    ({"metric": "precision"}, "gate.metric"),
])
def test_out_of_range_gate_values_are_refused(gate: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_config({"gate": gate})


def test_log_loss_threshold_may_exceed_one() -> None:
    assert build_config({"gate": {"metric": "log_loss", "threshold": 2.0}}).gate.threshold == 2.0


def test_bad_yaml_and_missing_env_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"Examples shipped with sagepipe: .*local"):
        load_config("staging")


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("project: p\ngate:\n  margin: 0.01\nruntime:\n  kind: local\n"
                     "gate:\n  threshold: 0.8\n")
    with pytest.raises(ConfigError, match=r"the key 'gate' is given twice \(lines 2 and 6\)"):
        load_config(str(twice))
    nested = tmp_path / "nested.yaml"
    nested.write_text("gate:\n  margin: 0.01\n  margin: 0.02\n")
    with pytest.raises(ConfigError, match=r"the key 'margin' is given twice \(lines 2 and 3\)"):
        load_config(str(nested))
    merged = tmp_path / "merged.yaml"  # a YAML merge key is not a repeat
    merged.write_text("base: &b {margin: 0.01}\ngate:\n  <<: *b\n  threshold: 0.8\n")
    with pytest.raises(ConfigError, match="unknown key 'base'"):  # parsed; then validated
        load_config(str(merged))


def test_overrides_merge_into_the_settings_file() -> None:
    config = load_config("local", {"gate": {"margin": 0.05}})
    assert config.gate.margin == 0.05
    assert config.gate.threshold == load_config("local").gate.threshold


def test_config_is_a_prefect_friendly_json_schema() -> None:
    schema = PipelineConfig.model_json_schema()
    assert "gate" in schema["properties"]


EVAL = {"challenger": {"roc_auc": 0.95, "log_loss": 0.2},
        "champion": {"roc_auc": 0.94, "log_loss": 0.25}}


def test_first_run_only_needs_the_threshold() -> None:
    decision = decide({"challenger": {"roc_auc": 0.95}, "champion": None}, metric="roc_auc",
                      threshold=0.9, margin=0.01, has_champion=False)
    assert decision.passed
    assert "no live model yet" in decision.summary


def test_must_beat_the_champion_by_the_margin() -> None:
    assert decide(EVAL, metric="roc_auc", threshold=0.9, margin=0.005, has_champion=True).passed
    rejected = decide(EVAL, metric="roc_auc", threshold=0.9, margin=0.02, has_champion=True)
    assert not rejected.passed
    assert "does not beat the live model" in rejected.summary


def test_lower_is_better_for_log_loss() -> None:
    assert decide(EVAL, metric="log_loss", threshold=0.5, margin=0.01, has_champion=True).passed
    assert not decide(EVAL, metric="log_loss", threshold=0.1, margin=0.0,
                      has_champion=True).passed


def test_threshold_miss_rejects() -> None:
    decision = decide(EVAL, metric="roc_auc", threshold=0.99, margin=0, has_champion=True)
    assert not decision.passed
    assert "misses the threshold" in decision.summary


def test_an_unscorable_champion_rejects_with_the_reason() -> None:
    evaluation = {"challenger": {"roc_auc": 0.99}, "champion": None,
                  "champion_error": "expects features the test split lacks"}
    decision = decide(evaluation, metric="roc_auc", threshold=0.9, margin=0, has_champion=True)
    assert not decision.passed
    assert "expects features the test split lacks" in decision.summary


# SageMaker TrafficRoutingConfig (API reference): CanarySize at most 50% of the variant's
# instances, LinearStepSize 10-50%. Deployment guardrails: auto-rollback needs CloudWatch
# alarms ("If you do not have any CloudWatch alarms ... auto-rollback does not work").
@pytest.mark.parametrize(("endpoint", "message"), [
    ({"strategy": "canary", "alarms": ["a"]}, "one instance has no smaller batch"),
    ({"strategy": "linear", "alarms": ["a"], "instance_count": 1}, "instance_count: 2 or more"),
    ({"strategy": "canary", "instance_count": 2}, "without endpoint.alarms cannot roll back"),
    ({"strategy": "linear", "instance_count": 4, "alarms": ["a"], "linear_step_percent": 5},
     "greater than or equal to 10"),
    ({"alarms": [f"a{i}" for i in range(11)]}, "at most 10 items"),
])
def test_rollouts_sagemaker_cannot_carry_out_are_refused(endpoint: dict[str, object],
                                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"endpoint": endpoint})


def test_rollout_batches_are_whole_instances_within_sagemakers_bounds() -> None:
    from sagepipe.tasks.endpoints import EndpointSettings, deployment_config

    def batch(**settings: object) -> dict[str, object]:
        routing = deployment_config(EndpointSettings(alarms=["a"], **settings))[
            "BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
        return routing.get("CanarySize") or routing.get("LinearStepSize") or {}

    assert batch(strategy="canary", instance_count=2, canary_percent=10) == {
        "Type": "INSTANCE_COUNT", "Value": 1}  # at least one instance
    assert batch(strategy="canary", instance_count=20, canary_percent=10)["Value"] == 2
    assert batch(strategy="canary", instance_count=3, canary_percent=50)["Value"] == 1  # <= half
    assert batch(strategy="linear", instance_count=15, linear_step_percent=10)["Value"] == 2
    assert batch(strategy="linear", instance_count=2, linear_step_percent=25)["Value"] == 1
    config = deployment_config(EndpointSettings(alarms=["a", "b"]))
    assert config["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": "a"},
                                                              {"AlarmName": "b"}]}


def test_staging_has_its_own_alarms_or_none() -> None:
    from sagepipe.tasks.endpoints import EndpointSettings

    production = EndpointSettings(name="prod", staging_name="stage", strategy="canary",
                                  instance_count=2, alarms=["prod-5xx"])
    staging = production.for_staging()
    # production's alarms watch production: they must not roll staging back
    assert (staging.name, staging.alarms, staging.strategy) == ("stage", [], "all_at_once")
    watched = production.model_copy(update={"staging_alarms": ["stage-5xx"]}).for_staging()
    assert (watched.alarms, watched.strategy) == (["stage-5xx"], "canary")
    assert load_config("aws").endpoint.strategy == "all_at_once"  # the example can deploy


def test_the_local_runtime_polls_its_endpoints_at_its_own_pace_and_aws_keeps_its_own(
        ) -> None:
    """A local Describe is a database read and the endpoint's supervisor looks every
    0.05 s: unset endpoint polls on the local runtime are 0.05 s rising to 0.1 s (a 0.5 s
    cap cost a deploy up to 0.5 s, issue 16); on AWS they stay 1 s rising to 30 s; a
    value set is kept on either."""
    def polls(config: PipelineConfig) -> tuple[float, float]:
        return config.endpoint.poll_first_seconds, config.endpoint.poll_max_seconds

    assert polls(PipelineConfig()) == (0.05, 0.1)
    assert polls(load_config("local")) == (0.05, 0.1)
    assert polls(PipelineConfig(endpoint={"name": "e"})) == (0.05, 0.1)
    assert polls(PipelineConfig(endpoint={"poll_max_seconds": 2})) == (0.05, 2.0)
    assert polls(PipelineConfig(runtime={"kind": "aws"})) == (1.0, 30.0)
    assert polls(load_config("aws")) == (1.0, 30.0)
    assert polls(PipelineConfig(runtime={"kind": "aws"}, endpoint={"name": "e"})) == (1.0, 30.0)
    # settings objects: what a caller did not set is the runtime's
    assert polls(PipelineConfig(endpoint=EndpointSettings(poll_first_seconds=0.3))) == (0.3, 0.1)
    assert polls(PipelineConfig(runtime=RuntimeSettings(kind="aws"),
                                endpoint=EndpointSettings())) == (1.0, 30.0)
    again = PipelineConfig.model_validate(PipelineConfig().model_dump())  # as Prefect does
    assert polls(again) == (0.05, 0.1)
