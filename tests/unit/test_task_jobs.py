"""tasks.jobs on the local runtime: naming, re-attach, waits, timeouts, interruption."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest

from sagepipe.tasks.errors import JobFailed, JobTimeout
from sagepipe.tasks.jobs import TRAINING, WaitPolicy, job_name, run_job, start_or_attach
from sagepipe.tasks.runtime import Clients

FAST = WaitPolicy(first_poll=0.05, max_poll=0.2, timeout=60)


def clients_of(env: dict[str, Any]) -> Clients:
    c = env["clients"]
    return Clients(s3=c["s3"], sagemaker=c["sagemaker"], sagemaker_runtime=c["sagemaker-runtime"],
                   sns=c["sns"], logs=c["logs"], ecr=c["ecr"], codebuild=c["codebuild"],
                   local_root=env["root"])


def request(env: dict[str, Any], name: str, **hps: str) -> dict[str, Any]:
    return dict(env["training_request"](name, **hps))


@pytest.mark.parametrize("prefix,step", [("sagepipe-demo", "train"),
                                         ("a" * 80, "preprocess"), ("weird_name!", "x")])
def test_job_names_are_valid_sagemaker_names_even_with_retry_suffix(prefix: str,
                                                                    step: str) -> None:
    for attempt in (1, 2, 9):
        name = job_name(prefix, step, "0123456789abcdef", attempt)
        assert len(name) <= 63
        assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name), name
    assert job_name(prefix, step, "k" * 16) == job_name(prefix, step, "k" * 16)


def test_run_job_completes_and_forwards_the_job_log(fake_runtime: dict[str, Any],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.jobs")
    with caplog.at_level(logging.INFO, logger="test.jobs"):
        final = run_job(clients_of(fake_runtime), TRAINING, request(fake_runtime, "j-1"),
                        policy=FAST, log=log)
    assert final["TrainingJobStatus"] == "Completed"
    assert final["_how"] == "created"
    assert any("[j-1] training with []" in r.getMessage() for r in caplog.records)


def test_retry_reattaches_or_reuses_instead_of_creating_again(
        fake_runtime: dict[str, Any]) -> None:
    clients = clients_of(fake_runtime)
    log = logging.getLogger("test.jobs")
    created: list[str] = []
    real_create = clients.sagemaker.create_training_job

    def counting_create(**params: Any) -> Any:
        created.append(params["TrainingJobName"])
        return real_create(**params)

    clients.sagemaker.create_training_job = counting_create  # type: ignore[method-assign]
    try:
        # first attempt starts the job, then "crashes" before waiting
        assert start_or_attach(clients, TRAINING, request(fake_runtime, "j-2", sleep="1"),
                               log) == ("j-2", "created")
        # the retry finds it running and waits for it
        final = run_job(clients, TRAINING, request(fake_runtime, "j-2", sleep="1"),
                        policy=FAST, log=log)
        assert final["_how"] == "attached"
        # a later retry reuses the completed job
        again = run_job(clients, TRAINING, request(fake_runtime, "j-2", sleep="1"),
                        policy=FAST, log=log)
        assert again["_how"] == "reused"
    finally:
        del clients.sagemaker.create_training_job
    assert created == ["j-2"]


def test_a_failed_job_raises_with_its_reason_and_a_retry_gets_a_new_name(
        fake_runtime: dict[str, Any]) -> None:
    clients = clients_of(fake_runtime)
    log = logging.getLogger("test.jobs")
    with pytest.raises(JobFailed) as err:
        run_job(clients, TRAINING, request(fake_runtime, "j-3", crash="1"), policy=FAST, log=log)
    assert err.value.status == "Failed"
    assert err.value.reason == "AlgorithmError: ValueError: C must be positive, got -1"
    assert "j-3" in str(err.value)
    with pytest.raises(JobFailed) as err:
        run_job(clients, TRAINING, request(fake_runtime, "j-3", crash="1"), policy=FAST, log=log)
    assert err.value.job == "j-3-r2"


def test_timeout_stops_the_job(fake_runtime: dict[str, Any]) -> None:
    clients = clients_of(fake_runtime)
    policy = WaitPolicy(first_poll=0.05, max_poll=0.1, timeout=1.0)
    with pytest.raises(JobTimeout):
        run_job(clients, TRAINING, request(fake_runtime, "j-4", sleep="60"), policy=policy,
                log=logging.getLogger("test.jobs"))
    deadline = time.monotonic() + 20
    while (status := clients.sagemaker.describe_training_job(
            TrainingJobName="j-4")["TrainingJobStatus"]) != "Stopped":
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_an_interrupted_wait_stops_the_job(fake_runtime: dict[str, Any]) -> None:
    clients = clients_of(fake_runtime)
    calls = {"n": 0}

    def interrupting_sleep(seconds: float) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what a cancelled flow run or Ctrl-C looks like here
        time.sleep(seconds)

    with pytest.raises(KeyboardInterrupt):
        run_job(clients, TRAINING, request(fake_runtime, "j-5", sleep="60"), policy=FAST,
                log=logging.getLogger("test.jobs"), sleep=interrupting_sleep)
    status = clients.sagemaker.describe_training_job(TrainingJobName="j-5")["TrainingJobStatus"]
    assert status in ("Stopping", "Stopped")


def test_a_failure_is_told_in_the_containers_own_words() -> None:
    from sagepipe.tasks.jobs import failure_reason

    generic = "AlgorithmError: See job logs for more information"
    assert failure_reason({"FailureReason": generic, "ExitMessage": "ValueError: no label\n"},
                          ["noise"]) == f"ValueError: no label ({generic})"
    assert failure_reason({"FailureReason": generic}, ["loading", "", "KeyError: 'x'"]) == (
        f"{generic}; last log lines: loading | KeyError: 'x'")
    # a training container's failure file is in FailureReason already
    assert failure_reason({"FailureReason": "AlgorithmError: C must be > 0"}, ["x"]) == (
        "AlgorithmError: C must be > 0")
    assert failure_reason({}, []) is None
