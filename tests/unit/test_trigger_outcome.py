"""The outcome row a finished run leaves for CI (sagepipe trigger, the CodePipeline Lambda)."""

from __future__ import annotations

from typing import Any

import pytest

from sagepipe.flows.trigger import outcome_row

PACKAGE = "arn:aws:sagemaker:us-east-1:000000000000:model-package/demo/2"


@pytest.mark.parametrize(("record", "expected"), [
    ({"outcome": "deployed", "decision": {"summary": "deploy: better"},
      "model_package": {"arn": PACKAGE, "approval": "approved"},
      "endpoint": {"endpoint": "demo"}},
     {"decision": "deploy: better", "model_package_arn": PACKAGE, "endpoint": "demo"}),
    ({"outcome": "rejected", "decision": {"summary": "reject: worse"},
      "model_package": {"arn": PACKAGE, "approval": "rejected"}},
     {"decision": "reject: worse", "model_package_arn": PACKAGE, "endpoint": None}),
    ({"outcome": "unchanged", "decision": {"passed": None, "reasons": ["already live"]},
      "champion": {"package_arn": PACKAGE}},
     {"decision": "already live", "model_package_arn": PACKAGE, "endpoint": "demo"}),
    ({"outcome": "failed", "error": {"type": "DataError", "message": "no label"}},
     {"decision": "", "model_package_arn": None, "endpoint": None}),
])
def test_the_outcome_row_names_what_is_live(record: dict[str, Any],
                                            expected: dict[str, Any]) -> None:
    row = outcome_row({"run_id": "r1", "commit": "c1", "summary": "s", **record}, "demo")
    assert {k: row[k] for k in expected} == expected
    assert (row["flow_run_id"], row["outcome"], row["commit"]) == ("r1", record["outcome"], "c1")
