"""sagepipe as a user installs it: a built wheel in a fresh venv, `sagepipe init` in a
project that has its own `tasks.py` and `flows/`, and a run of the user's edited script.

The wheel is built from this checkout and installed with ``--no-deps`` into a new venv;
the dependencies come from the test venv's site-packages through a ``.pth`` line (a path
line only: the test venv's editable-install finder is not loaded), so the fresh venv sees
the same pinned libraries without a minutes-long download, and ``sagepipe`` itself only
from the wheel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from prefect.settings import get_current_settings

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]

REPO = Path(__file__).resolve().parents[2]
MARKER = "USER-SCRIPT-7f3a"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--wheel-dir", str(out), str(REPO)], check=True, timeout=600,
                   capture_output=True)
    return next(out.glob("sagepipe-*.whl"))


def test_the_wheel_claims_one_import_name_and_ships_the_step_code(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"sagepipe", next(t for t in top if t.endswith(".dist-info"))}, top
    for data in ("sagepipe/containers/train/Dockerfile", "sagepipe/containers/train/train.py",
                 "sagepipe/containers/train/requirements.txt",
                 "sagepipe/containers/serve/serve.py", "sagepipe/deployments/settings/local.yaml",
                 "sagepipe/deployments/prefect.yaml", "sagepipe/buildspecs/build-images.yml",
                 "sagepipe/scaffold/sagepipe.yaml", "sagepipe/scaffold/gitignore",
                 "sagepipe/scaffold/two_models.py", "sagepipe/scaffold/flow-image.Dockerfile",
                 "sagepipe/scaffold/flow-image.exclude", "sagepipe/scaffold/tests.yml",
                 "sagepipe/buildspecs/flow-image.yml",
                 "sagepipe/tasks/local/framework_image/Dockerfile",
                 "sagepipe/flows/cli.py", "sagepipe/tasks/local/jobs.py", "sagepipe/warm.py"):
        assert data in names, data
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    # the console script: a stdlib-only client of the warm process, else the CLI itself
    assert "sagepipe = sagepipe.warm:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()


def fresh_venv(where: Path, wheel: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   timeout=120)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    return where / "bin"


def test_an_installed_sagepipe_runs_the_users_script_in_their_project(
        wheel: Path, tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    project = tmp_path / "credit-model"
    (project / "flows").mkdir(parents=True)
    # names Invoke, Celery and many projects use: sagepipe must never import them
    trap = "raise SystemExit('the user project module was imported by sagepipe')\n"
    (project / "tasks.py").write_text(trap)
    (project / "flows" / "__init__.py").write_text(trap)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PREFECT_API_URL=get_current_settings().api.url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false")

    def sagepipe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / "sagepipe"), *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(bin_dir / "python"), "-c",
                            "import sagepipe.flows.cli as c; print(c.__file__)"],
                           cwd=project, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout  # the wheel's copy

    init = sagepipe("init")
    assert init.returncode == 0, init.stderr
    script = project / "steps" / "train" / "train.py"
    text = script.read_text()
    edited = re.sub(r"^def main\(\) -> int:\n",
                    f"def main() -> int:\n    print({MARKER!r}, flush=True)\n", text,
                    flags=re.MULTILINE)
    assert edited != text
    script.write_text(edited)

    push = sagepipe("data", "push", "--example", "--if-missing")
    assert push.returncode == 0, push.stdout + push.stderr
    run = sagepipe("run")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "deployed" in run.stdout and "Endpoint credit-model is live" in run.stdout
    logs = list((project / ".sagepipe" / "logs").rglob("*.log"))
    train_logs = [p for p in logs if "TrainingJobs" in p.parts]
    assert train_logs and MARKER in "".join(p.read_text() for p in train_logs)
    try:
        status = sagepipe("status")
        assert "credit-model" in status.stdout and "InService" in status.stdout
    finally:
        assert sagepipe("down").returncode == 0
