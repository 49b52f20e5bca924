"""A user's project: settings found in its folder, `sagepipe init`, and the user's step code
bundled with what the container needs (sagepipe.tasks.stepsource)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sagepipe.flows.cli import app
from sagepipe.flows.config import SETTINGS_DIR, build_config, load_config
from sagepipe.flows.scaffold import init_project, project_name
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.local.containers import container_command
from sagepipe.tasks.stepsource import (
    DEFAULT_CONTAINERS,
    StepsSettings,
    check_steps,
    code_files,
    step_folders,
)


def steps(**by_step: dict[str, str]) -> StepsSettings:
    return StepsSettings.model_validate(by_step)


def user_train(folder: Path, entry: str = "fit.py", body: str = "print('fit')\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / entry).write_text(body)
    (folder / "helpers.py").write_text("X = 1\n")
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"junk")
    (folder / ".venv" / "lib").mkdir(parents=True, exist_ok=True)
    (folder / ".venv" / "lib" / "site.py").write_text("junk = True\n")
    return folder


def test_the_settings_of_the_project_folder_are_found_by_themselves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config().project == "sagepipe-demo"  # not a project: the packaged example
    (tmp_path / "sagepipe.yaml").write_text("project: churn-model\n")
    (tmp_path / "sagepipe.aws.yaml").write_text("project: churn-model-aws\n")
    assert load_config().project == "churn-model"
    assert load_config("aws").project == "churn-model-aws"  # the project's, not the example
    assert load_config("iris").project == load_config(str(SETTINGS_DIR / "iris.yaml")).project
    with pytest.raises(ConfigError, match=r"this project's: sagepipe\.aws\.yaml, sagepipe\.yaml"):
        load_config("staging")
    with pytest.raises(ConfigError, match=r"^No settings named 'staging': no "
                       r"\./sagepipe\.staging\.yaml here, and no example of that name\. "):
        load_config("staging")  # not the path of a file inside sagepipe's installation
    with pytest.raises(ConfigError, match=r"^No settings file nowhere/x\.yaml\. "):
        load_config("nowhere/x.yaml")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0 and '"project": "churn-model"' in result.output
    (tmp_path / "steps").mkdir()
    monkeypatch.chdir(tmp_path / "steps")  # a subfolder: not the example by surprise
    inside = subprocess.run([sys.executable, "-m", "sagepipe.flows.cli", "status"],
                            capture_output=True, text=True, timeout=120)
    assert inside.returncode == 2, inside.stderr
    assert f"inside the sagepipe project {tmp_path}: run sagepipe there (cd {tmp_path})" \
        in inside.stderr
    assert "--env" not in inside.stderr  # its relative state_dir would mean a new, empty one
    assert not (tmp_path / "steps" / ".sagepipe").exists()
    # the project's settings gone (renamed, deleted): not the example's by surprise
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sagepipe.yaml").rename(tmp_path / "kept.yaml")
    with pytest.raises(ConfigError, match=r"no sagepipe\.yaml, but it looks like a sagepipe "
                       r"project \(sagepipe\.aws\.yaml\): restore it"):
        load_config()
    assert load_config("kept.yaml").project == "churn-model"  # --env still names any file
    (tmp_path / "steps" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"\(steps/train, sagepipe\.aws\.yaml\)"):
        load_config()
    assert "Traceback" not in inside.stderr


def test_init_writes_a_project_that_validates_and_never_overwrites(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "My Model_2"
    project.mkdir()
    (project / "prefect.yaml").write_text("# mine\n")
    result = init_project(project, ["serve"])
    assert result.kept == [Path("prefect.yaml")]
    assert (project / "prefect.yaml").read_text() == "# mine\n"
    assert sorted(map(str, result.written)) == [
        ".gitignore", "buildspecs/flow-image.yml", "buildspecs/tests.yml",
        "deployments/flow-image/Dockerfile", "deployments/flow-image/exclude",
        "sagepipe.aws.yaml", "sagepipe.yaml", "steps/serve/inference.py",
        "steps/serve/requirements.txt", "steps/train/hyperparameters.py",
        "steps/train/requirements.txt", "steps/train/train.py", "two_models.py"]
    # the Build stage's files: sagepipe's flow image buildspec as it is, the Dockerfile with
    # this sagepipe's version (tests/integration/test_flow_image.py builds it)
    assert (project / "buildspecs/flow-image.yml").read_bytes() == \
        (DEFAULT_CONTAINERS.parent / "buildspecs" / "flow-image.yml").read_bytes()
    dockerfile = (project / "deployments/flow-image/Dockerfile").read_text()
    assert 'ARG SAGEPIPE_REQUIREMENT="sagepipe==' in dockerfile
    assert "FROM ${PYTHON_IMAGE}" in dockerfile and "$requirement" not in dockerfile
    tests = yaml.safe_load((project / "buildspecs/tests.yml").read_text())
    assert "sagepipe plan --env aws --no-last-run" in " ".join(tests["phases"]["build"][
        "commands"])
    # the copied training script is the default one, so it runs as-is
    assert (project / "steps/train/train.py").read_bytes() == \
        (DEFAULT_CONTAINERS / "train/train.py").read_bytes()
    monkeypatch.chdir(project)
    config = load_config()
    assert config.project == project_name(project) == "my-model-2"
    assert config.steps.train.source == "steps/train"
    assert config.steps.serve.entry_point == "inference.py"
    assert config.steps.preprocess.source is None  # sagepipe's default
    config.check_steps()
    assert load_config("aws").runtime.kind == "aws"
    prefect = yaml.safe_load((project / "sagepipe.yaml").read_text())
    assert prefect["endpoint"]["name"] == "my-model-2"
    # again: everything exists, nothing is touched
    assert init_project(project).written == []


def test_init_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No step trian"):
        init_project(tmp_path, ["trian"])
    with pytest.raises(ConfigError, match="Project name 'X'"):
        init_project(tmp_path, project="X")
    runner = CliRunner().invoke(app, ["init", str(tmp_path / "p"), "--steps", "serving"])
    assert runner.exit_code == 2 and "No step serving" in runner.output
    assert not (tmp_path / "p").exists()  # refused before writing anything


def test_a_user_step_is_bundled_with_sagepipes_dockerfile_for_its_entry_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    user_train(tmp_path / "src" / "train")
    settings = steps(train={"source": "src/train", "entry_point": "fit.py"})
    folders = step_folders(settings, DEFAULT_CONTAINERS, tmp_path / "work")
    assert folders["preprocess"] == DEFAULT_CONTAINERS / "preprocess"  # no source: default
    bundle = folders["train"]
    assert sorted(p.relative_to(bundle).as_posix() for p in code_files(bundle)) == [
        "Dockerfile", "fit.py", "helpers.py", "requirements.txt"]  # no cache, no venv
    dockerfile = (bundle / "Dockerfile").read_text()
    assert "ENV SAGEMAKER_PROGRAM=fit.py" in dockerfile and "train.py" not in dockerfile
    assert (bundle / "requirements.txt").read_bytes() == \
        (DEFAULT_CONTAINERS / "train/requirements.txt").read_bytes()
    # the local runtime starts the user's entry point, as sagemaker-training would
    command = container_command(bundle, tmp_path / "job", mode="train",
                                hyperparameters={"model": "linear"})
    assert command[1:] == [str(bundle / "fit.py"), "--model", "linear"]
    # content-addressed: the same code is the same bundle, changed code a new one
    assert step_folders(settings, DEFAULT_CONTAINERS, tmp_path / "work")["train"] == bundle
    (tmp_path / "src/train/fit.py").write_text("print('fit v2')\n")
    changed = step_folders(settings, DEFAULT_CONTAINERS, tmp_path / "work")["train"]
    assert changed != bundle and (changed / "fit.py").read_text() == "print('fit v2')\n"


def test_a_users_own_dockerfile_and_requirements_are_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "prep"
    source.mkdir()
    (source / "clean.py").write_text("print('clean')\n")
    (source / "reqs").mkdir()
    (source / "reqs" / "prod.txt").write_text("polars==1.0\n")
    serve = tmp_path / "serve"
    serve.mkdir()
    (serve / "handlers.py").write_text("def model_fn(d):\n    return d\n")
    (serve / "Dockerfile").write_text("FROM mine\n")
    settings = steps(preprocess={"source": "prep", "entry_point": "clean.py",
                                 "requirements": "reqs/prod.txt"},
                     serve={"source": "serve", "entry_point": "handlers.py"})
    folders = step_folders(settings, DEFAULT_CONTAINERS, tmp_path / "work")
    prep = folders["preprocess"]
    assert (prep / "requirements.txt").read_text() == "polars==1.0\n"
    assert '"/opt/ml/code/clean.py"' in (prep / "Dockerfile").read_text()
    command = container_command(prep, tmp_path / "job", mode="process",
                                arguments=["--input-dir", "/opt/ml/processing/input"])
    assert command[1:] == [str(prep / "clean.py"), "--input-dir",
                           str(tmp_path / "job/processing/input")]
    served = folders["serve"]
    assert (served / "Dockerfile").read_text() == "FROM mine\n"  # theirs, verbatim
    # the HTTP server is sagepipe's; the user's module holds the handlers
    server = (DEFAULT_CONTAINERS / "serve/serve.py").read_bytes()
    assert (served / "serve.py").read_bytes() == server


def test_step_settings_that_cannot_work_are_refused_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    user_train(tmp_path / "t", entry="fit.py", body="def main(:\n    pass\n")
    cases = {
        "steps.train.source 'nope' is not a folder": {"train": {"source": "nope"}},
        "t/train.py does not exist (Python files there: fit.py, helpers.py)":
            {"train": {"source": "t"}},
        "must be a .py file inside the source folder":
            {"train": {"source": "t", "entry_point": "../x.py"}},
        "steps.train.requirements: t/requirements.txt does not exist":
            {"train": {"source": "t", "entry_point": "helpers.py",
                       "requirements": "requirements.txt"}},
        "t/fit.py, line 1: SyntaxError": {"train": {"source": "t", "entry_point": "fit.py"}},
        "entry_point and requirements need a source folder (steps.serve.source)":
            {"serve": {"entry_point": "x.py"}},
    }
    for message, by_step in cases.items():
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")
                           .replace(")", r"\)")):
            check_steps(steps(**by_step), DEFAULT_CONTAINERS)
    with pytest.raises(ConfigError, match=r"unknown key 'steps\.train\.entrypoint'"):
        build_config({"steps": {"train": {"source": "t", "entrypoint": "fit.py"}}})


def test_the_users_own_hyperparameter_rules_apply_and_none_means_the_job_decides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    user_train(tmp_path / "t", entry="train.py")
    config = build_config({"steps": {"train": {"source": "t"}},
                           "hyperparameters": {"depth": 3}})
    assert config.check_hyperparameters("binary") is None  # no hyperparameters.py: no check
    (tmp_path / "t" / "hyperparameters.py").write_text(
        "def resolve(values, problem):\n"
        "    if values.get('depth', 0) > 2:\n"
        "        raise ValueError('depth must be at most 2 in my model')\n"
        "    return values\n")
    with pytest.raises(ConfigError, match="depth must be at most 2 in my model"):
        build_config({"steps": {"train": {"source": "t"}}, "hyperparameters": {"depth": 3}})


def test_the_public_api_resolves_every_name_and_imports_lazily() -> None:
    code = ("import sys, sagepipe.tasks as t\n"
            "assert 'sagepipe.tasks.steps' not in sys.modules, 'imported eagerly'\n"
            "missing = [n for n in t.__all__ if getattr(t, n, None) is None]\n"
            "assert not missing, missing\n"
            "from sagepipe.tasks import run_step, decide\n"
            "assert run_step.name == 'run-job' and callable(decide)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_same_relative_state_dir_in_two_projects_is_two_states(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sagepipe.tasks.runtime import RuntimeSettings, get_clients

    settings = RuntimeSettings(kind="local", state_dir=".sagepipe")
    roots = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        roots.append(get_clients(settings).local_root)
    assert roots == [(tmp_path / n / ".sagepipe").resolve() for n in ("a", "b")]
