"""Data sets by name through the real ``sagepipe`` command, in subprocesses, on the local runtime.

Two files pushed under two names keep their own versions (with rows and schema digest),
``data list`` shows both, bad and unknown names are refused with one message and exit 2,
and a run with ``--dataset NAME`` pins that data set, which its versions listing then shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sagepipe.flows.config import PipelineConfig, load_config
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import list_run_records

PROJECT = Path(__file__).resolve().parents[2]
SAGEPIPE = Path(sys.executable).with_name("sagepipe")
LOCAL_SETTINGS = PROJECT / "deployments" / "settings" / "local.yaml"
# enough rows per class for every split
ALPHA = "a,b,target\n" + "".join(f"{i}.0,{i % 7}.5,{i % 2}\n" for i in range(24))
ALPHA_2 = ALPHA + "".join(f"{i}.0,{i % 3}.5,{i % 2}\n" for i in range(24, 40))
BETA = "x;kind;target\n" + "".join(f"{i};k{i % 4};{'yes' if i % 3 else 'no'}\n"
                                   for i in range(30))


@dataclass
class Env:
    settings: Path
    state: Path
    env: dict[str, str]

    def sagepipe(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SAGEPIPE), *args, "--env", str(self.settings)],
                              env=self.env, cwd=self.settings.parent, text=True,
                              capture_output=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        done = self.sagepipe(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def table(self, *args: str) -> list[dict[str, str]]:
        """A `sagepipe data ...` table as dicts; "modified" is its date and time."""
        lines = self.ok(*args).splitlines()
        header = lines[0].split()
        rows = []
        for line in lines[1:]:
            cells = line.split()
            at = header.index("modified")
            cells[at:at + 2] = [" ".join(cells[at:at + 2])]
            rows.append(dict(zip(header, cells, strict=True)))
        return rows

    @property
    def config(self) -> PipelineConfig:
        return load_config(str(self.settings))


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    data = yaml.safe_load(LOCAL_SETTINGS.read_text())
    data["runtime"]["state_dir"] = str(tmp_path / "state")
    data["endpoint"]["name"] = f"ds-{uuid.uuid4().hex[:10]}"
    data["jobs"] = {**data.get("jobs", {}), "poll_first_seconds": 0.05, "poll_max_seconds": 0.2}
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(data))
    for name, text in (("alpha.csv", ALPHA), ("alpha2.csv", ALPHA_2), ("beta.csv", BETA)):
        (tmp_path / name).write_text(text)
    made = Env(settings, tmp_path / "state",
               {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    yield made
    if made.state.exists():
        teardown(made.state.resolve())


def pushed(stdout: str, name: str) -> tuple[str, str]:
    """(version, schema digest) from `sagepipe data push ... --dataset NAME`'s output."""
    lines = stdout.splitlines()
    prefix = f"Stored s3://sagepipe-local/datasets/{name}/data.csv version "
    assert lines[0].startswith(prefix), stdout
    rows = next(line for line in lines if line.startswith("Rows: "))
    return lines[0][len(prefix):], rows.split("schema digest: ")[1].split()[0]


def test_two_named_datasets_keep_their_own_versions_rows_and_digests(env: Env) -> None:
    a1, a1_schema = pushed(env.ok("data", "push", "alpha.csv", "--dataset", "alpha"), "alpha")
    b1, b1_schema = pushed(env.ok("data", "push", "beta.csv", "-d", "beta"), "beta")
    a2, a2_schema = pushed(env.ok("data", "push", "alpha2.csv", "--dataset", "alpha"), "alpha")
    assert a1_schema == a2_schema != b1_schema  # same columns and kinds; beta's differ
    assert len({a1, a2, b1}) == 3

    alpha = env.table("data", "versions", "--dataset", "alpha")
    assert [(r["key"], r["version"], r["latest"], r["bytes"], r["rows"], r["schema"], r["runs"])
            for r in alpha] == [
        ("datasets/alpha/data.csv", a2, "True", str(len(ALPHA_2)), "40", a2_schema, "-"),
        ("datasets/alpha/data.csv", a1, "False", str(len(ALPHA)), "24", a1_schema, "-")]
    beta = env.table("data", "versions", "--set", "dataset=beta")  # the same, as a setting
    assert [(r["version"], r["rows"], r["schema"]) for r in beta] == [(b1, "30", b1_schema)]
    assert env.table("data", "versions", "--dataset", "alpha", "--limit", "1")[0]["version"] == a2

    listed = env.table("data", "list")
    assert [(r["dataset"], r["file"], r["latest"], r["bytes"], r["rows"]) for r in listed] == [
        ("alpha", "data.csv", a2, str(len(ALPHA_2)), "40"),
        ("beta", "data.csv", b1, str(len(BETA)), "30")]
    # the configured data set (breast-cancer) was never pushed: nothing there
    assert env.ok("data", "versions") == "  no versions\n"


def test_bad_names_and_unknown_data_sets_are_refused_before_anything(env: Env) -> None:
    for command in (["data", "push", "alpha.csv"], ["data", "versions"], ["run"], ["plan"]):
        done = env.sagepipe(*command, "--dataset", "Not/Safe")
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "- dataset: 'Not/Safe' is not a data set name: use 1 to 63 lower-case " \
            "letters" in done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    assert not env.state.exists()  # nothing was made, not even the bucket

    pushed(env.ok("data", "push", "alpha.csv", "--dataset", "alpha"), "alpha")
    done = env.sagepipe("run", "--dataset", "nope")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "No dataset nope (s3://sagepipe-local/datasets/nope/data.csv); push it with "
        "`sagepipe data push FILE --dataset nope`, or see the data sets there are with "
        "`sagepipe data list`.")
    assert done.stdout == ""
    sm = get_clients(env.config.runtime).sagemaker
    assert sm.list_processing_jobs()["ProcessingJobSummaries"] == []
    assert [r["dataset"] for r in env.table("data", "list")] == ["alpha"]


@pytest.mark.flow
@pytest.mark.slow
def test_a_run_with_a_dataset_pins_it_and_its_versions_show_the_run(
        env: Env, prefect_server: None) -> None:
    from prefect.settings import PREFECT_API_URL

    env.env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    a1, _ = pushed(env.ok("data", "push", "alpha.csv", "--dataset", "alpha"), "alpha")
    env.ok("data", "push", "--example", "--dataset", "bc")
    bc = env.table("data", "versions", "--dataset", "bc")[0]["version"]

    done = env.sagepipe("run", "--dataset", "bc", "--set", "hyperparameters.model=linear",
                        timeout=600)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = env.config
    [record] = list_run_records(get_clients(config.runtime), config.artifacts_uri)
    assert record["data"]["source_uri"] == "s3://sagepipe-local/datasets/bc/data.csv"
    assert [o["version_id"] for o in record["data"]["objects"]] == [bc]
    run = record["run_name"] or record["run_id"]
    assert f"Run {run}: " in done.stdout
    assert [(r["version"], r["runs"]) for r in env.table("data", "versions", "-d", "bc")] == [
        (bc, run)]
    assert [(r["version"], r["runs"]) for r in env.table("data", "versions", "-d", "alpha")] \
        == [(a1, "-")]
