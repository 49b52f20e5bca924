"""The flow image's buildspec (buildspecs/flow-image.yml), run as CodeBuild runs it.

The buildspec's commands run under bash, phase by phase, in a copy of this repository as
CodePipeline hands it over (what git tracks), with stand-ins for ``aws`` and
``docker`` that keep a registry in a file: a pushed tag is there for the next build, as
in ECR. What CodeBuild exports at the end (``env: exported-variables``) is read from the
shell the commands ran in. The last test deploys infra/sagepipe.yaml into moto and proves
the flow image project's role grants what those commands need and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aws_helpers import ACCOUNT, PROJECT, REGION, DeployedStack, deploy_stack, load_template
from iam_check import compare, format_table
from iam_model import CODEBUILD_ROLE_DOC, ECR_PUSH_DOC, HAND, Need
from moto import mock_aws

from sagepipe.flows.scaffold import init_project

BUILDSPEC = PROJECT / "buildspecs" / "flow-image.yml"
REPOSITORY = "sagepipe-flow"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TAG = re.compile(r"^c-[0-9a-f]{20}$")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None,
                                reason="needs bash and tar")

FAKE_AWS = r"""#!/usr/bin/env bash
echo "aws $*" >> "$FAKE_CALLS"
case "$1 $2" in
  "sts get-caller-identity") echo 123456789012 ;;
  "ecr get-login-password") echo secret-password ;;
  "ecr describe-images")
    tag=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --repository-name) repo="$2"; shift ;;
        --image-ids) tag="${2#imageTag=}"; shift ;;
      esac
      shift
    done
    if [ -n "${FAKE_LOOKUP_ERROR:-}" ]; then
      echo "An error occurred ($FAKE_LOOKUP_ERROR) when calling the DescribeImages operation" >&2
      exit 254
    fi
    if [ -z "$tag" ]; then  # the newest image (--query sort_by(imagePushedAt)[-1])
      last="$(grep "^$repo:" "$FAKE_REGISTRY" | tail -n 1 | cut -d' ' -f2)"
      echo "${last:-None}"; exit 0
    fi
    found="$(grep "^$repo:$tag " "$FAKE_REGISTRY" | cut -d' ' -f2)"
    if [ -n "$found" ]; then echo "$found"; exit 0; fi
    echo "An error occurred (ImageNotFoundException) when calling the DescribeImages" \
         "operation: The image with imageId {imageTag:'$tag'} does not exist" >&2
    exit 254 ;;
  *) echo "fake aws: unexpected $*" >&2; exit 2 ;;
esac
"""

FAKE_DOCKER = r"""#!/usr/bin/env bash
echo "docker $*" >> "$FAKE_CALLS"
case "$1" in
  login) [ "$(cat)" = secret-password ] || { echo "wrong password" >&2; exit 1; } ;;
  build)
    [ -z "${FAKE_BUILD_FAILS:-}" ] || { echo "ERROR: failed to solve" >&2; exit 1; }
    file=""; context="${*: -1}"
    while [ $# -gt 0 ]; do
      case "$1" in --file) file="$2"; shift ;; esac
      shift
    done
    [ -f "$file" ] || { echo "no Dockerfile $file" >&2; exit 1; }
    seen="$FAKE_SEEN/$(ls "$FAKE_SEEN" | wc -l)"
    cp -a "$context" "$seen" ;;
  push)
    digest="sha256:$(printf '%s' "$2" | sha256sum | cut -c1-64)"
    echo "${2##*/} $digest" >> "$FAKE_REGISTRY"
    echo "$2: digest: $digest size: 1234" ;;
  inspect)
    uri="${*: -1}"
    digest="$(grep "^${uri##*/} " "$FAKE_REGISTRY" | cut -d' ' -f2)"
    echo "python@sha256:$(printf '%064d' 1) ${uri%:*}@$digest" ;;
  *) echo "fake docker: unexpected $*" >&2; exit 2 ;;
esac
"""


@dataclass
class BuildRun:
    returncode: int
    output: str
    calls: list[str]
    exported: dict[str, str]  # what CodeBuild hands CodePipeline as the action's variables
    contexts: list[Path]  # what each `docker build` was given, as it was given


class CodeBuild:
    """Runs the buildspec against one registry, build after build."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "fake-bin"
        self.bin.mkdir(parents=True)
        for name, text in (("aws", FAKE_AWS), ("docker", FAKE_DOCKER)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.registry = root / "registry.txt"
        self.registry.write_text("")
        self.runs = 0

    def run(self, source: Path, **env: str) -> BuildRun:
        """Phase by phase in one bash, each command's status checked, the first failure
        ending the build; then the exported variables as the shell holds them."""
        spec = yaml.safe_load(BUILDSPEC.read_text())
        script = ["set +e"]
        for phase in ("install", "pre_build", "build", "post_build"):
            for command in (spec["phases"].get(phase) or {}).get("commands", []):
                script += [command, f'rc=$?; if [ "$rc" -ne 0 ]; then echo "[Container] '
                           f'{phase} failed: exit status $rc" >&2; exit "$rc"; fi']
        script += [f'echo "EXPORTED {name}=${{{name}:-}}"'
                   for name in spec["env"]["exported-variables"]]
        self.runs += 1
        work = self.root / f"build-{self.runs}"
        seen = work / "seen"
        seen.mkdir(parents=True)
        calls = work / "calls.txt"
        calls.write_text("")
        environment = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(work),
            "TMPDIR": str(work), "CODEBUILD_SRC_DIR": str(source),
            "AWS_DEFAULT_REGION": REGION, "AWS_ACCOUNT_ID": ACCOUNT,
            "FLOW_IMAGE_REPOSITORY": REPOSITORY, "CODEBUILD_RESOLVED_SOURCE_VERSION": COMMIT,
            "FAKE_CALLS": str(calls), "FAKE_REGISTRY": str(self.registry),
            "FAKE_SEEN": str(seen), **env}
        environment = {k: v for k, v in environment.items() if v != ""}
        done = subprocess.run([str(shutil.which("bash")), "-c", "\n".join(script)],
                              cwd=source, env=environment, capture_output=True, text=True,
                              timeout=120, check=False)
        output = done.stdout + done.stderr
        exported = dict(re.findall(r"^EXPORTED (\w+)=(.*)$", done.stdout, re.M))
        return BuildRun(done.returncode, output, calls.read_text().splitlines(), exported,
                        sorted(seen.iterdir(), key=lambda p: int(p.name)))


# what a checkout holds that git does not: CodePipeline's source zip has none of it (the
# suite also runs from that zip, without .git, in the pipeline's Build stage)
_NOT_IN_GIT = shutil.ignore_patterns(".git", ".venv*", ".sagepipe", "build", "dist",
                                     "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
                                     ".mypy_cache", ".ruff_cache", "results", "*.ipynb",
                                     ".ipynb_checkpoints")


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    """The repository as CodePipeline's source action hands it over: the committed files,
    symlinks kept."""
    target = tmp_path / "src"
    shutil.copytree(PROJECT, target, symlinks=True, ignore=_NOT_IN_GIT)
    return target


@pytest.fixture()
def codebuild(tmp_path: Path) -> CodeBuild:
    return CodeBuild(tmp_path / "codebuild")


def code_hash(context: Path) -> str:
    """The hash the buildspec documents, computed here independently."""
    files, links, executables = [], [], []
    for folder, dirs, names in os.walk(context):
        for name in [*dirs, *names]:
            path = Path(folder, name)
            rel = "./" + path.relative_to(context).as_posix()
            if path.is_symlink():
                links.append(f"link {rel} -> {os.readlink(path)}\n")
            elif path.is_file():
                files.append((rel.encode(), f"{hashlib.sha256(path.read_bytes()).hexdigest()}"
                                            f"  {rel}\n"))
                if path.stat().st_mode & 0o100:
                    executables.append(f"executable {rel}\n")
    text = "".join(line for _, line in sorted(files)) + "".join(sorted(links)) \
        + "".join(sorted(executables))
    return "c-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def builds(run: BuildRun) -> list[str]:
    return [c for c in run.calls if c.startswith("docker build")]


def test_a_push_builds_the_flow_image_and_exports_it_by_digest(
        source: Path, codebuild: CodeBuild) -> None:
    run = codebuild.run(source)
    assert run.returncode == 0, run.output

    tag = run.exported["FLOW_CODE_HASH"]
    assert TAG.match(tag)
    uri = f"{REGISTRY}/{REPOSITORY}:{tag}"
    [pushed] = [c for c in run.calls if c.startswith("docker push")]
    assert pushed == f"docker push {uri}"
    digest = "sha256:" + hashlib.sha256(uri.encode()).hexdigest()  # the fake registry's
    # by digest: what the run is given cannot move
    assert run.exported["FLOW_IMAGE"] == f"{REGISTRY}/{REPOSITORY}@{digest}"
    [build] = builds(run)
    assert "--provenance=false --sbom=false" in build
    assert f"--build-arg SAGEPIPE_COMMIT={COMMIT}" in build
    assert f"--build-arg SAGEPIPE_CODE_HASH={tag}" in build
    assert "--cache-from" not in build  # the repository was empty
    context_dir = build.split()[-1]
    assert build.endswith(f"--file {context_dir}/deployments/flow-image/Dockerfile "
                          f"--tag {uri} {context_dir}")

    # what docker was given: the code the flow runs, not the tests, docs or local state
    [context] = run.contexts
    assert (context / "deployments" / "flow-image" / "Dockerfile").is_file()
    assert (context / "containers" / "train" / "train.py").is_file()
    assert os.readlink(context / "sagepipe" / "flows") == "../flows"
    for left_out in ("tests", "README.md", "infra", "bench", "Makefile", ".git"):
        assert not (context / left_out).exists(), left_out
    # the tag is the hash of exactly that context, as the buildspec's header defines it
    assert code_hash(context) == tag


def test_an_unchanged_tree_reuses_its_image_and_builds_nothing(
        source: Path, codebuild: CodeBuild) -> None:
    first = codebuild.run(source)
    assert first.returncode == 0, first.output
    # a later commit that changes only what the image leaves out
    (source / "README.md").write_text("# sagepipe, reworded\n")
    (source / "tests" / "test_new.py").write_text("def test_x() -> None:\n    pass\n")
    (source / "flows" / "__pycache__").mkdir(exist_ok=True)
    (source / "flows" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    second = codebuild.run(source, CODEBUILD_RESOLVED_SOURCE_VERSION="feedbeef" * 5)

    assert second.returncode == 0, second.output
    assert second.exported == first.exported  # the same image, by the same digest
    assert not builds(second)
    assert not [c for c in second.calls if c.startswith("docker push")]
    assert f"exists {REGISTRY}/{REPOSITORY}:{first.exported['FLOW_CODE_HASH']}" in \
        second.output


@pytest.mark.parametrize("change", ["training script", "executable bit", "symlink", "new file"])
def test_a_code_change_builds_a_new_tag_on_the_previous_image_as_cache(
        source: Path, codebuild: CodeBuild, change: str) -> None:
    first = codebuild.run(source)
    assert first.returncode == 0, first.output
    script = source / "containers" / "train" / "train.py"
    if change == "training script":
        script.write_text(script.read_text() + "\n# tuned\n")
    elif change == "executable bit":
        script.chmod(script.stat().st_mode | 0o100)
    elif change == "symlink":
        (source / "sagepipe" / "flows").unlink()
        (source / "sagepipe" / "flows").symlink_to("../tasks")
    else:
        (source / "containers" / "train" / "features.py").write_text("X = 1\n")
    second = codebuild.run(source)

    assert second.returncode == 0, second.output
    tag = second.exported["FLOW_CODE_HASH"]
    assert TAG.match(tag) and tag != first.exported["FLOW_CODE_HASH"]
    assert second.exported["FLOW_IMAGE"] != first.exported["FLOW_IMAGE"]
    [build] = builds(second)
    # the previous image's layers as a cache: only the code's layers are built again
    assert f"--cache-from {first.exported['FLOW_IMAGE']}" in build
    assert code_hash(second.contexts[0]) == tag


@pytest.mark.parametrize(("env", "phase"), [
    ({"FLOW_IMAGE_REPOSITORY": ""}, "pre_build"),
    ({"FLOW_IMAGE_DOCKERFILE": "no/Dockerfile"}, "pre_build"),
    ({"AWS_ACCOUNT_ID": "none"}, "pre_build"),
    ({"FAKE_BUILD_FAILS": "1"}, "build"),
    ({"FAKE_LOOKUP_ERROR": "AccessDeniedException"}, "build"),
])
def test_a_failed_step_fails_the_build_and_exports_no_image(
        source: Path, codebuild: CodeBuild, env: dict[str, str], phase: str) -> None:
    run = codebuild.run(source, **env)
    assert run.returncode != 0
    assert f"{phase} failed" in run.output
    assert not run.exported.get("FLOW_IMAGE")
    assert not [c for c in run.calls if c.startswith("docker push")]
    if phase == "pre_build":
        assert not [c for c in run.calls if c.startswith("docker")]


def test_an_exclude_list_that_leaves_out_the_dockerfile_is_refused(
        source: Path, codebuild: CodeBuild) -> None:
    exclude = source / "deployments" / "flow-image" / "exclude"
    exclude.write_text(exclude.read_text() + "deployments  # everything\n")
    run = codebuild.run(source)
    assert run.returncode != 0 and "leaves out deployments/flow-image/Dockerfile" in run.output
    assert not [c for c in run.calls if c.startswith("docker")]


def test_a_project_made_by_sagepipe_init_builds_its_flow_image_the_same_way(
        tmp_path: Path, codebuild: CodeBuild) -> None:
    """The user's repository: `sagepipe init` writes the Dockerfile, the exclude list and
    the buildspec the stack's Build stage runs."""
    project = tmp_path / "credit-model"
    init_project(project)
    (project / ".sagepipe" / "step-code").mkdir(parents=True)  # local state: left out
    (project / ".sagepipe" / "step-code" / "x.txt").write_text("local\n")
    first = codebuild.run(project)
    assert first.returncode == 0, first.output
    [context] = first.contexts
    assert (context / "steps" / "train" / "train.py").is_file()
    assert (context / "sagepipe.aws.yaml").is_file() and (context / "prefect.yaml").is_file()
    assert not (context / ".sagepipe").exists()
    assert code_hash(context) == first.exported["FLOW_CODE_HASH"]

    (project / "steps" / "train" / "train.py").write_text("print('my model')\n")
    second = codebuild.run(project)
    assert second.returncode == 0, second.output
    assert second.exported["FLOW_CODE_HASH"] != first.exported["FLOW_CODE_HASH"]
    assert len(builds(second)) == 1


# ---------------------------------------------------------------- the project's role


@pytest.fixture()
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[DeployedStack]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield deploy_stack()


ECR_PULL_DOC = ("https://docs.aws.amazon.com/AmazonECR/latest/userguide/"
                "security_iam_id-based-policy-examples.html")


def needs_of(run: BuildRun, *, repository_arn: str, artifact: str, log_stream: str,
             key_arn: str) -> list[Need]:
    """What IAM checks for the build: CodeBuild's own work (deduced), then each command."""
    via_s3 = (("kms:ViaService", f"s3.{REGION}.amazonaws.com"),)

    def hand(action: str, resource: str, because: str, doc: str,
             context: tuple[tuple[str, str], ...] = ()) -> Need:
        return Need(action, resource, because, context, HAND, doc)

    needs = [  # CodeBuild downloads the CodePipeline source artifact and writes the log
        hand("s3:GetObject", artifact, "CodeBuild: source artifact", CODEBUILD_ROLE_DOC),
        hand("s3:GetObjectVersion", artifact, "CodeBuild: source artifact",
             CODEBUILD_ROLE_DOC),
        hand("kms:Decrypt", key_arn, "CodeBuild: source artifact (SSE-KMS)",
             CODEBUILD_ROLE_DOC, via_s3),
        hand("logs:CreateLogStream", log_stream, "CodeBuild: build log", CODEBUILD_ROLE_DOC),
        hand("logs:PutLogEvents", log_stream, "CodeBuild: build log", CODEBUILD_ROLE_DOC)]
    # ECR user guide, "IAM permissions for pushing an image" (push) and for pulling (cache)
    push = ("ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload",
            "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage")
    for call in run.calls:
        if call.startswith("aws ecr get-login-password"):
            needs.append(Need("ecr:GetAuthorizationToken", "*", "aws ecr get-login-password"))
        elif call.startswith("aws ecr describe-images"):
            needs.append(Need("ecr:DescribeImages", repository_arn, "aws ecr describe-images"))
        elif call.startswith("docker push"):
            needs += [hand(a, repository_arn, "docker push", ECR_PUSH_DOC) for a in push]
        elif call.startswith("docker build") and "--cache-from" in call:
            needs += [hand(a, repository_arn, "docker build --cache-from", ECR_PULL_DOC)
                      for a in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")]
        elif call.startswith("aws "):
            raise AssertionError(f"no IAM mapping for {call}")
    return needs


def test_the_flow_image_role_grants_exactly_what_the_build_uses(
        stack: DeployedStack, source: Path, codebuild: CodeBuild,
        capsys: pytest.CaptureFixture[str]) -> None:
    template = load_template()
    project = template["Resources"]["FlowImageBuildProject"]["Properties"]
    variables = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert variables["FLOW_IMAGE_REPOSITORY"] == {"Ref": "FlowImageRepository"}
    repository = stack.physical("FlowImageRepository")
    # a first build (push) and a second after a code change (cache, push): every command
    first = codebuild.run(source, FLOW_IMAGE_REPOSITORY=repository)
    (source / "containers" / "train" / "train.py").write_text("print('changed')\n")
    second = codebuild.run(source, FLOW_IMAGE_REPOSITORY=repository)
    assert first.returncode == second.returncode == 0, first.output + second.output

    outputs = stack.outputs
    bucket, project_name = outputs["BucketName"], stack.parameters["ProjectName"]
    log_group = stack.physical("FlowImageBuildLogGroup")
    common = {"repository_arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repository}",
              "artifact": f"arn:aws:s3:::{bucket}/{project_name}/SourceCode/Ab1cD2e",
              "log_stream": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{log_group}:log-stream:"
                            f"{project_name}-flow-image/0f4c2b7e",
              "key_arn": outputs["KmsKeyArn"]}
    verdict = compare(stack.role_statements("FlowImageBuildRole"),
                      needs_of(first, **common) + needs_of(second, **common))
    with capsys.disabled():
        print("\n" + format_table("FlowImageBuildRole (the flow image build)", verdict))
    assert not verdict.missing, verdict.missing
    assert not verdict.unused_actions, verdict.unused_actions
    assert not verdict.unused_resources, verdict.unused_resources
    assert not verdict.problems, verdict.problems
