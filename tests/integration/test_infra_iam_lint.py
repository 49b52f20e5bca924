"""parliament on every IAM role of infra/sagepipe.yaml (infra/lint_iam.py, make infra-check)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from aws_helpers import PROJECT, TEMPLATE


def lint_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sagepipe_lint_iam",
                                                  PROJECT / "infra" / "lint_iam.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_finding_on_the_roles_is_suppressed_with_a_reason_and_none_is_stale() -> None:
    lint = lint_module()
    found = {(role, sid, issue) for role, sid, issue, _ in lint.findings()}
    assert found - set(lint.SUPPRESSED) == set()
    # a suppression whose finding is gone hides the next one: drop it
    assert set(lint.SUPPRESSED) - found == set()
    assert all(len(reason) > 40 for reason in lint.SUPPRESSED.values())
    # the statements granted only with an option enabled are linted too
    assert {sid for _, sid, _ in found} >= {"JobNetworkInterfaces",
                                            "JobsKeyForVolumesAndOutputs"}


def test_a_broken_statement_is_a_finding(tmp_path: Path) -> None:
    lint = lint_module()
    broken = tmp_path / "sagepipe.yaml"
    text = TEMPLATE.read_text()
    # an action that does not exist, and a deploy grant without the endpoint config
    text = text.replace("sagemaker:DescribeEndpointConfig,", "sagemaker:DescribeEndpointConfigs,")
    config = ('                  - !Sub "arn:${AWS::Partition}:sagemaker:${AWS::Region}:'
              '${AWS::AccountId}:endpoint-config/${ProjectName}-*"\n')
    text = text.replace(config + "              - Sid: RetireStaging",
                        "              - Sid: RetireStaging")
    broken.write_text(text)
    issues = {(sid, issue) for _, sid, issue, _ in lint.findings(broken)}
    assert ("EndpointConfigs", "UNKNOWN_ACTION") in issues
    assert ("DeployEndpoints", "RESOURCE_MISMATCH") in issues
    assert lint.main(["lint_iam.py", str(broken)]) == 1
