"""``sagepipe``: run the pipeline, look at what it made, talk to its endpoints.

    sagepipe init [DIR] [--steps train,serve]
    sagepipe run [--env local] [--dataset NAME] [--set gate.margin=0.01] [--commit SHA] [--force]
    sagepipe invoke <endpoint> <file|-> [--content-type text/csv]
    sagepipe status
    sagepipe run [--no-server] [--verbose] [--debug]   (exit codes: README)
    sagepipe models                             the registered versions, and which is live
    sagepipe approve|reject VERSION [--note T]  (a flow run paused for it gets the answer)
    sagepipe deploy VERSION [--endpoint NAME]   an older version: the rollback
    sagepipe promote                            staging's live version to production
    sagepipe data push <file> | --example [--dataset NAME]
    sagepipe data list                         sagepipe data versions [--dataset NAME]
    sagepipe data example <name> [-o file]
    sagepipe logs <job>
    sagepipe up                                 local endpoints back after a machine restart
    sagepipe down
    sagepipe trigger [ml-pipeline/local] [--set key=value] [--commit SHA] [--idempotency-key K]
                     [--image URI [--code-hash H]]
    sagepipe server up [--port 4200] | down
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import typer
import yaml

from sagepipe.flows.config import PipelineConfig, load_config
from sagepipe.tasks.data import inspect_dataset, parse_s3_uri, push_dataset
from sagepipe.tasks.endpoints import invoke as invoke_endpoint
from sagepipe.tasks.errors import DeployFailed, PipelineError
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.status import endpoint_rows, job_log_lines, model_rows, run_rows
from sagepipe.tasks.storage import ensure_local_resources

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="From git push to a safely deployed SageMaker endpoint.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset versions.")
app.add_typer(data_app, name="data")
server_app = typer.Typer(no_args_is_help=True,
                        help="A local Prefect server and process worker for deployments.")
app.add_typer(server_app, name="server")

EnvOption = typer.Option(
    None, "--env", "-e", help="settings: a YAML path, or a name: ./sagepipe.<name>.yaml, else "
    "the example <name> shipped with sagepipe (local, aws, iris, ...). Default: ./sagepipe.yaml "
    "in a project made by `sagepipe init`, else the example local")
SetOption = typer.Option(None, "--set", "-s", help="override a setting: key.sub=value (YAML)")
DatasetOption = typer.Option(
    None, "--dataset", "-d", help="a data set by name (`sagepipe data list`): dataset_uri with "
    "NAME as its folder, e.g. s3://<bucket>/datasets/NAME/data.csv; same as --set dataset=NAME")


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"{pair!r}: use key=value, e.g. gate.margin=0.01")
        path, raw = pair.split("=", 1)
        node = result
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def _config(env: str | None, pairs: list[str] | None = None,
            dataset: str | None = None) -> PipelineConfig:
    overrides = _overrides(pairs)
    if dataset is not None:
        overrides["dataset"] = dataset
    return load_config(env, overrides)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _table(rows: list[dict[str, Any]], empty: str) -> None:
    if not rows:
        typer.echo(f"  {empty}")
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    typer.echo("  " + "  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        typer.echo("  " + "  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


VerboseOption = typer.Option(False, "--verbose", "-v",
                             help="Prefect's full log stream instead of the steps' view")
NoServerOption = typer.Option(
    False, "--no-server", help="run on a temporary Prefect server that ends with the command "
    "(no UI afterwards; also SAGEPIPE_PREFECT_SERVER=temporary). Default: PREFECT_API_URL if "
    "set, else a local server sagepipe starts once and keeps (`sagepipe down` stops it)")


@app.command()
def run(env: str | None = EnvOption, set_: list[str] = SetOption,
        dataset: str | None = DatasetOption,
        commit: str = typer.Option(None, help="the git commit this run is for"),
        force: bool = typer.Option(False, help="run every job again, reusing nothing cached "
                                   "(images are reused: they are keyed on their content)"),
        verbose: bool = VerboseOption, no_server: bool = NoServerOption) -> None:
    """Run the whole pipeline once and print what it decided.

    Exit codes: 0 deployed or unchanged, 1 failed, 2 bad input, 4 no Prefect API,
    5 rejected, 6 deploy rolled back, 7 AWS refused, 130 interrupted (see README).
    """
    try:
        config = _config(env, set_, dataset)
        _preflight(config)
    except PipelineError as exc:
        _fail(str(exc), 2)
    from sagepipe.flows.runner import run_pipeline  # Prefect is slow to import: only here

    code = run_pipeline(config, commit=commit, force=force, verbose=verbose,
                        no_server=no_server or _env_says_temporary(), debug=DEBUG.on,
                        me=_me())
    if code:
        raise typer.Exit(code)


def _env_says_temporary() -> bool:
    return os.environ.get("SAGEPIPE_PREFECT_SERVER", "").lower() in ("temporary", "none", "off")


def _preflight(config: PipelineConfig) -> None:
    """The checks a run makes before its first job, made here first: bad data or settings
    that do not fit the data are refused in a second, with exit code 2, before Prefect
    starts at all."""
    from sagepipe.flows.estimate import budget_check, run_estimate

    config.check_steps()
    budget_check(config, run_estimate(config))  # over budget: refused before Prefect starts
    report = inspect_dataset(get_clients(config.runtime), config.dataset_uri,
                             config.data_rules())
    if report is not None and config.problem == "auto" and report.problem != "auto":
        config.settings_for(report.problem, exact=False)


def _me() -> str:
    """How the user can call this command again: `sagepipe` if on PATH, else its path."""
    import shutil

    found = shutil.which("sagepipe")
    if found and Path(found).resolve() == Path(sys.argv[0]).resolve():
        return "sagepipe"
    absolute = os.path.abspath(sys.argv[0])
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # another drive (Windows)
        return absolute
    # .venv/bin/sagepipe from the project; /abs/path rather than ../../../abs/path
    return relative if len(relative) <= len(absolute) else absolute


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="the project folder (made if absent)"),
         steps: str = typer.Option("train", help="whose code to copy in, comma-separated: "
                                   "train, preprocess, evaluate, serve; the rest run "
                                   "sagepipe's defaults"),
         project: str = typer.Option(None, help="project name (default: from the folder's)")
         ) -> None:
    """Make a folder a sagepipe project: settings, your step code, prefect.yaml, .gitignore."""
    from sagepipe.flows.scaffold import init_project

    try:
        result = init_project(directory, [s.strip() for s in steps.split(",") if s.strip()],
                              project)
    except PipelineError as exc:
        _fail(str(exc), 2)
    for path in result.written:
        typer.echo(f"  wrote {directory / path}")
    for path in result.kept:
        typer.secho(f"  kept  {directory / path} (exists; not overwritten)",
                    fg=typer.colors.YELLOW)
    go = "" if directory.resolve() == Path.cwd().resolve() else f"  cd {directory}\n"
    typer.echo(f"\nNext:\n{go}  {_me()} data push --example --if-missing   # or your own CSV\n"
               f"  {_me()} run\nYour training script: {directory / 'steps/train/train.py'}; "
               f"settings: {directory / 'sagepipe.yaml'}.")


@app.command()
def invoke(endpoint: str, source: str = typer.Argument(..., help="a file, or - for stdin"),
           content_type: str = typer.Option("text/csv", "--content-type", "-t"),
           accept: str = typer.Option("application/json", "--accept"),
           env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Send a payload to an endpoint and print the answer."""
    config = _config(env, set_)
    if source == "-":
        body = sys.stdin.buffer.read()
    else:
        path = Path(source)
        if not path.is_file():
            _fail(f"No file {source}; give a payload file or - to read standard input.", 2)
        body = path.read_bytes()
    try:
        typer.echo(invoke_endpoint(get_clients(config.runtime), endpoint, body,
                                   content_type=content_type, accept=accept).rstrip())
    except PipelineError as exc:
        hint = ""
        if content_type == "text/csv" and body.lstrip()[:1] in (b"{", b"["):
            hint = (" The payload looks like JSON but was sent as text/csv (the default): "
                    "add -t application/json.")
        _fail(str(exc) + hint)


@app.command()
def status(env: str | None = EnvOption, set_: list[str] = SetOption,
           limit: int = typer.Option(10, help="how many runs to show")) -> None:
    """Recent runs, model versions and endpoints."""
    config = _config(env, set_)
    clients = get_clients(config.runtime)
    typer.secho("Runs (newest first)", bold=True)
    _table(run_rows(clients, config.artifacts_uri, limit), "no runs yet: sagepipe run")
    typer.secho(f"\nModel versions ({config.model_package_group})", bold=True)
    _table(model_rows(clients, config.model_package_group), "no model registered yet")
    typer.secho("\nEndpoints", bold=True)
    endpoints = endpoint_rows(clients)
    _table(endpoints, "no endpoints")
    down = [row["endpoint"] for row in endpoints if row["status"] == "OutOfService"]
    if down:
        typer.secho(f"\nDown (their processes are gone, e.g. after a machine restart): "
                    f"{', '.join(down)}. `{_me()} up` starts them again.",
                    fg=typer.colors.YELLOW)


VersionArgument = typer.Argument(..., help="the version number (see `sagepipe models`) or a "
                                "model package ARN")
NoteOption = typer.Option("", "--note", "-n", help="why: kept in the registry's "
                          "ApprovalDescription with your user name")


@app.command()
def models(env: str | None = EnvOption, set_: list[str] = SetOption,
           limit: int = typer.Option(20, help="how many versions to show")) -> None:
    """The registered versions of the project's model, newest first, and where each is live."""
    from sagepipe.flows.lifecycle import model_versions

    config = _config(env, set_)
    staging = config.endpoint.staging_name
    typer.secho(f"Model versions of {config.model_package_group} (newest first); production "
                f"endpoint {config.endpoint.name}" + (f", staging {staging}" if staging else ""),
                bold=True)
    _table(model_versions(config, limit), "no model registered yet: sagepipe run")


@app.command()
def approve(version: str = VersionArgument, note: str = NoteOption,
            env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Approve a registered version; a flow run paused for it gets the answer and deploys it."""
    _decide(version, True, note, env, set_)


@app.command()
def reject(version: str = VersionArgument, note: str = NoteOption,
           env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Reject a registered version (it can no longer be deployed until approved again)."""
    _decide(version, False, note, env, set_)


def _decide(version: str, yes: bool, note: str, env: str | None, pairs: list[str]) -> None:
    from sagepipe.flows.lifecycle import decide

    try:
        answered = decide(_config(env, pairs), version, approve=yes, note=note)
    except PipelineError as exc:
        _fail(str(exc), 2)
    if answered.flow_run is not None:
        typer.echo(f"Answered flow run {answered.flow_run.name} ({answered.flow_run.id}), "
                   f"paused for version {answered.version}: it records the decision and "
                   + ("deploys the version." if yes else "ends rejected."))
        return
    typer.echo(f"Version {answered.version} is {answered.approval}: {answered.description}")
    if answered.api_problem:
        typer.secho("No Prefect API to look for a flow run paused for it "
                    f"({answered.api_problem}); the registry alone was updated.",
                    fg=typer.colors.YELLOW)
    if yes:
        typer.echo(f"To deploy it: {_me()} deploy {answered.version}")


@app.command()
def deploy(version: str = VersionArgument,
           endpoint: str = typer.Option(None, help="default: the settings' endpoint.name "
                                                   "(production); or endpoint.staging_name"),
           env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Deploy a registered, Approved version the way a run deploys: blue/green, verified,
    smoke-tested, put back if it does not serve. Deploying an older version is the rollback.

    Exit code: 0 deployed; 1 the endpoint did not take it (the previous model serves on);
    2 bad input (unknown version or endpoint, a version that is not Approved).
    """
    from sagepipe.flows.lifecycle import deploy_version

    try:
        deployed = deploy_version(_config(env, set_), version, endpoint=endpoint,
                                  log=_progress())
    except PipelineError as exc:
        _fail(str(exc), 1 if isinstance(exc, DeployFailed) else 2)
    _deployed(deployed)


@app.command()
def promote(env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Deploy the version live on staging (endpoint.staging_name) to production.

    Exit code: 0 promoted; 1 production did not take it; 2 no staging endpoint configured
    or nothing live there.
    """
    from sagepipe.flows.lifecycle import promote as promote_staging

    try:
        deployed = promote_staging(_config(env, set_), log=_progress())
    except PipelineError as exc:
        _fail(str(exc), 1 if isinstance(exc, DeployFailed) else 2)
    _deployed(deployed)


class _Echo(logging.Handler):
    """Log lines to the stderr of the moment (a StreamHandler keeps the one it was made with)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def _progress() -> logging.Logger:
    """The deploy's progress lines on stderr."""
    log = logging.getLogger("sagepipe.cli.deploy")
    if not log.handlers:
        handler = _Echo()
        handler.setFormatter(logging.Formatter("  %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def _deployed(deployed: Any) -> None:
    result = deployed.result
    was = deployed.previous_version
    how = ("already served it" if result.action == "unchanged" else
           f"{result.action}; rolled back from version {was}" if deployed.rollback else
           f"{result.action}" + (f"; was version {was}" if was is not None else ""))
    typer.secho(f"Version {deployed.version} is live on {deployed.endpoint} ({how}).",
                fg=typer.colors.GREEN)
    typer.echo(f"Smoke test answered: {result.smoke_test.strip()}")
    typer.echo(f"Record: {deployed.record_uri}")


@app.command()
def logs(job: str, env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Print a job's log."""
    config = _config(env, set_)
    lines = job_log_lines(get_clients(config.runtime), job)
    if not lines:
        _fail(f"No logs for job {job!r}. `sagepipe status` shows the jobs of recent runs.")
    for line in lines:
        typer.echo(line)


@app.command()
def up(env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Start the local endpoints again after a machine restart (each on the config it
    served), and any whose server kept exiting. Exit 1 if one does not come back."""
    config = _config(env, set_)
    if config.runtime.kind != "local":
        typer.echo("Endpoints on AWS are kept running by SageMaker: nothing to start.")
        return
    root = Path(config.runtime.state_dir).resolve()
    if not (root / "state.db").exists():
        typer.echo("No local endpoints here (nothing under "
                   f"{config.runtime.state_dir}).")
        return
    from sagepipe.tasks.local import bring_up

    rows = bring_up(root)
    if not rows:
        typer.echo("No local endpoints.")
    failed = False
    for row in rows:
        if row["before"] == row["after"] == "InService":
            typer.echo(f"{row['endpoint']}: InService (was running)")
        elif row["after"] == "InService":
            typer.echo(f"{row['endpoint']}: {row['before']} -> InService on {row['config']}")
        else:
            failed = True
            typer.secho(f"{row['endpoint']}: {row['before']} -> {row['after']}"
                        + (f": {row['reason']}" if row["reason"] else ""),
                        fg=typer.colors.RED, err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def down(env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Stop every process sagepipe started here: local endpoints and jobs, and the local
    Prefect server (and worker). Data, models, records and the server's history are kept."""
    from sagepipe.flows.runner import stop_temporary, temporary_servers
    from sagepipe.flows.server import down as server_down

    config = _config(env, set_)
    root = Path(config.runtime.state_dir).resolve()
    said = []
    if config.runtime.kind == "local" and (root / "state.db").exists():
        from sagepipe.tasks.local import teardown

        stopped = teardown(root)
        said.append(f"Deleted endpoints: {', '.join(stopped['endpoints']) or 'none'}; "
                    f"stopped jobs: {', '.join(stopped['jobs']) or 'none'}.")
    elif config.runtime.kind != "local":
        said.append("Endpoints and jobs on AWS are left alone (`aws sagemaker "
                    "delete-endpoint` deletes an endpoint).")
    server = server_down(root / "prefect")
    if server is not None:
        worker = f" and its worker (pid {server.worker_pid})" if server.worker_pid else ""
        said.append(f"Stopped the local Prefect server at {server.ui_url} (pid "
                    f"{server.server_pid}){worker}; its runs are kept for the next one.")
    left = [d for d in temporary_servers(root) if stop_temporary(d)]
    if left:
        said.append(f"Stopped {len(left)} temporary Prefect server(s) of interrupted "
                    "`--no-server` runs.")
    from sagepipe.warm import stop_all

    warm = stop_all()
    if warm:
        said.append(f"Stopped the warm process that starts `sagepipe run` faster (pid "
                    f"{', '.join(map(str, warm))}; the next run starts a new one).")
    typer.echo("\n".join(said) if said else "Nothing is running.")


@data_app.command("push")
def data_push(file: Path = typer.Argument(None, help="a CSV (, ; tab |, optionally gzip) or "
                                                      "Parquet file with a header row"),
              example: bool = typer.Option(False, help="push the example breast-cancer data"),
              if_missing: bool = typer.Option(False, help="do nothing if the dataset exists"),
              dataset: str | None = DatasetOption,
              trigger: bool = typer.Option(
                  True, help="announce the new version, as S3 does on AWS: with a Prefect "
                  "server and the sagepipe-data-arrived deployment, a run starts on it"),
              env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Store a new version of the dataset (checked first; bad data is refused).

    With --dataset NAME, a version of the data set NAME (made by its first push).
    """
    config = _config(env, set_, dataset)
    clients = get_clients(config.runtime)
    if config.runtime.kind == "local":
        ensure_local_resources(config.runtime, parse_s3_uri(config.dataset_uri)[0],
                               f"{config.project}-events")
    if if_missing and _dataset_exists(clients, config.dataset_uri):
        typer.echo(f"{config.dataset_uri} already has data; not pushing.")
        return
    if example == (file is not None):
        _fail("Give a CSV file or --example (one of them).", 2)
    from sagepipe.flows.examples import write_example  # pandas and scikit-learn: only when needed

    with tempfile.TemporaryDirectory() as tmp:
        path = file if file is not None else write_example("breast-cancer", Path(tmp))
        if not path.is_file():
            _fail(f"No file {path}.", 2)
        try:
            with _upload_progress(path) as progress:
                pushed = push_dataset(clients, path, config.dataset_uri, config.data_rules(),
                                      progress=progress)
        except PipelineError as exc:
            _fail(f"Refused: {exc}", 2)
    typer.echo(f"Stored {config.dataset_uri} version {pushed.version_id}")
    if config.runtime.kind == "local" and trigger and config.triggers.on_data:
        _announce(config, pushed.version_id)
    if pushed.report is not None:
        typer.echo(f"Data: {pushed.report.describe()}")
        typer.echo(f"Rows: {pushed.rows if pushed.rows is not None else '-'}; schema digest: "
                   f"{pushed.schema_digest or '-'} (stored with the version)")
        if config.problem == "auto":
            typer.echo("To override the problem type: problem: binary, multiclass or regression "
                       "in the settings, or --set problem=... on `sagepipe run`.")
            try:  # the data is fine; the settings may not be, and a run would refuse them
                config.settings_for(pushed.report.problem, exact=True)
            except PipelineError as exc:
                typer.secho(f"Before you run: {exc}", fg=typer.colors.YELLOW, err=True)


def _announce(config: PipelineConfig, version_id: str) -> None:
    """The local stand-in for S3 -> EventBridge -> relay: announce the pushed version to
    the Prefect API, then name the run the sagepipe-data-arrived deployment starts."""
    from sagepipe.flows.arrivals import current_versions, dataset_run_name
    from sagepipe.flows.server import running
    from sagepipe.tasks.local.events import announce_object

    api = os.environ.get("PREFECT_API_URL") or None
    if api is None:
        server = running(Path(config.runtime.state_dir) / "prefect")
        api = server.api_url if server is not None else None
    if api is None:  # nothing to announce to: runs start by hand (`sagepipe run`)
        return
    bucket, key = parse_s3_uri(config.dataset_uri)
    try:
        arrivals = httpx.get(f"{api.rstrip('/')}/deployments/name/sagepipe-data-arrived/local",
                             timeout=10)
        if arrivals.status_code == 404:
            typer.echo("(To have a push start a run: README, Retrain when new data arrives.)")
            return
        relayed = announce_object(get_clients(config.runtime).s3, bucket, key, version_id,
                                  api_url=api, region=config.runtime.region)
    except (httpx.HTTPError, PipelineError, OSError) as exc:
        typer.secho(f"Stored, but could not announce it to {api}: {exc}", err=True,
                    fg=typer.colors.YELLOW)
        return
    if not relayed.get("relayed"):
        typer.echo(f"Not announced: {relayed.get('reason')}")
        return
    quiet = config.triggers.quiet_seconds
    typer.echo(f"Announced: a run of ml-pipeline/local starts on it once the dataset has been "
               f"quiet for {quiet:g} s (--no-trigger: don't)")
    name = dataset_run_name(current_versions(config))
    deadline = time.monotonic() + quiet + 60
    while time.monotonic() < deadline:
        found = httpx.post(f"{api.rstrip('/')}/flow_runs/filter", timeout=10, json={
            "flow_runs": {"name": {"any_": [name]}}, "limit": 1}).json()
        if found:
            ui = api.rstrip("/").removesuffix("/api")
            typer.echo(f"Started {name}: {ui}/runs/flow-run/{found[0]['id']}")
            return
        time.sleep(1)
    typer.echo(f"No run {name} yet (another push may have followed this one, or no worker "
               "is running: `sagepipe server up`); see the Prefect UI.")


@data_app.command("example")
def data_example(name: str = typer.Argument(..., help="breast-cancer, iris, diabetes, churn, "
                                                       "churn-parquet"),
                 output: Path = typer.Option(Path("."), "--output", "-o",
                                             help="a file, or a folder for its own name")) -> None:
    """Write an example dataset: each has settings of the same name (--env NAME)."""
    from sagepipe.flows.examples import EXAMPLES, write_example

    if name not in EXAMPLES:
        rows = "\n".join(f"  {n:14} {what}" for n, (_, what, _) in EXAMPLES.items())
        _fail(f"No example {name!r}. Examples:\n{rows}", 2)
    path = write_example(name, output)
    typer.echo(f"Wrote {path} ({EXAMPLES[name][1]}). Next:\n"
               f"  {_me()} data push {path} --env {name}\n  {_me()} run --env {name}")


PROGRESS_FROM_BYTES = 16 * 1024 * 1024


@contextlib.contextmanager
def _upload_progress(path: Path) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on the terminal for an upload worth watching (16 MiB or more)."""
    size = path.stat().st_size if path.is_file() else 0
    if size < PROGRESS_FROM_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"Uploading {path.name}", total=size)
        yield lambda sent: bar.advance(task, sent)


def _dataset_exists(clients: Any, uri: str) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri)
    try:
        clients.s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


@data_app.command("versions")
def data_versions(env: str | None = EnvOption, set_: list[str] = SetOption,
                  dataset: str | None = DatasetOption,
                  limit: int = typer.Option(50, min=1, help="how many versions to show")
                  ) -> None:
    """The stored versions of the dataset, newest first: rows and schema digest as pushed,
    and the runs (of the last 50) that used each."""
    from sagepipe.tasks.datasets import dataset_rows

    config = _config(env, set_, dataset)
    _table(dataset_rows(get_clients(config.runtime), config.dataset_uri, config.artifacts_uri,
                        limit), "no versions")


@data_app.command("list")
def data_list(env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """The data sets beside the configured one (names for --dataset), latest versions."""
    from sagepipe.tasks.datasets import dataset_list_rows

    config = _config(env, set_)
    _table(dataset_list_rows(get_clients(config.runtime), config.dataset_uri,
                             config.artifacts_uri),
           "no data sets: sagepipe data push FILE --dataset NAME")


@app.command()
def plan(env: str | None = EnvOption, set_: list[str] = SetOption,
         dataset: str | None = DatasetOption,
         commit: str = typer.Option(None, help="the git commit the run would be for"),
         last_run: bool = typer.Option(True, help="price the jobs at the last run's "
                                       "durations too (reads the run records: on AWS, with "
                                       "your credentials when there are any)")) -> None:
    """Print the AWS requests a run would send, each checked against botocore's model, and
    what the run would cost (an estimate).

    Needs no credentials: run it before a first run on a new account. Exit codes: 0 valid,
    1 a request AWS would refuse, 2 bad settings or over budget.
    """
    from sagepipe.flows.estimate import budget_check, last_run_seconds, run_estimate
    from sagepipe.flows.plan import build_plan

    try:
        settings = _config(env, set_, dataset)
        calls = build_plan(settings, commit=commit)
    except PipelineError as exc:
        _fail(str(exc), 2)
    bad = 0
    for number, call in enumerate(calls, start=1):
        status = "INVALID" if call.problems else "valid"
        typer.secho(f"# {number}. {call.service} {call.operation} ({call.when}) - {status}",
                    bold=True, fg=typer.colors.RED if call.problems else None)
        typer.echo(json.dumps(call.params, indent=2, default=str))
        for problem in call.problems:
            typer.secho(f"  ! {problem}", fg=typer.colors.RED)
        bad += bool(call.problems)
    last, last_from = last_run_seconds(settings) if last_run else ({}, "")
    estimate = run_estimate(settings, last, last_from)
    typer.echo("\n" + "\n".join(estimate.text()))
    typer.echo(f"\n{len(calls)} requests, {bad} invalid. <placeholders> are known only at run "
               "time (data version, image digests, the champion).")
    try:
        budget_check(settings, estimate)
    except PipelineError as exc:
        _fail(str(exc), 2)
    budget = settings.budget
    if budget.max_usd_per_run is not None or budget.max_usd_per_month_live is not None:
        typer.secho(_within_budget(settings, estimate), fg=typer.colors.GREEN)
    if bad:
        raise typer.Exit(1)


def _within_budget(settings: PipelineConfig, estimate: Any) -> str:
    budget = settings.budget
    from sagepipe.tasks.costs import usd

    parts = []
    if budget.max_usd_per_run is not None:
        shares = ", ".join(f"{line.step} {usd(line.usd)}" for line in estimate.run
                           if line.step)
        parts.append(f"the run's upper bound {usd(estimate.total)} is within "
                     f"budget.max_usd_per_run {usd(budget.max_usd_per_run)}; SageMaker stops "
                     f"each job at its MaxRuntimeInSeconds, which keeps it within its share "
                     f"({shares})")
    if budget.max_usd_per_month_live is not None:
        parts.append(f"what it leaves live, {usd(estimate.live_total)} a month, is within "
                     f"budget.max_usd_per_month_live {usd(budget.max_usd_per_month_live)}")
    return "Budget: " + "; ".join(parts) + "."


@app.command()
def config(env: str | None = EnvOption, set_: list[str] = SetOption) -> None:
    """Print the effective config (settings file plus --set overrides)."""
    try:
        typer.echo(json.dumps(_config(env, set_).model_dump(), indent=2))
    except PipelineError as exc:
        _fail(str(exc), 2)


@app.command()
def trigger(deployment: str = typer.Argument("ml-pipeline/local",
                                             help="<flow>/<deployment> to run"),
            set_: list[str] = SetOption,
            commit: str = typer.Option(None, help="the commit (default: $GITHUB_SHA or "
                                                  "$CI_COMMIT_SHA when set)"),
            force: bool = typer.Option(False, help="ignore cached steps"),
            idempotency_key: str = typer.Option(
                None, help="one flow run per key: a retried CI job that passes the same key "
                           "follows the same run, e.g. \"gh-$GITHUB_RUN_ID\""),
            timeout: float = typer.Option(6 * 3600, help="stop following after this many "
                                                         "seconds (exit 3; the run goes on)"),
            poll: float = typer.Option(5.0, help="seconds between state checks"),
            follow: bool = typer.Option(True, help="wait for the end (else print the run "
                                                   "and exit 0)"),
            image: str = typer.Option(None, help="the flow image to run this commit in (the "
                                                 "Build stage's FLOW_IMAGE); default: the "
                                                 "deployment's"),
            code_hash: str = typer.Option(None, help="the code hash --image was built from "
                                                     "(FLOW_CODE_HASH): lets an image of an "
                                                     "earlier commit with the same code run "
                                                     "--commit")) -> None:
    """Start a deployment's flow run on the Prefect API and follow it: for any CI.

    Exit code: 0 completed; 1 failed, crashed or cancelled; 2 bad input or no API; 3 still
    running at --timeout; 4 the API went away while following. --set changes the
    deployment's config key by key.
    """
    from prefect.settings import get_current_settings

    from sagepipe.flows.trigger import follow_run, read_outcome, start_run

    sha = commit or os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA")
    try:
        run = start_run(deployment, overrides=_overrides(set_), commit=sha, force=force,
                        idempotency_key=idempotency_key, image=image, code_hash=code_hash)
    except PipelineError as exc:
        _fail(str(exc), 2)
    except httpx.HTTPError as exc:
        _fail(f"Could not reach the Prefect API at {get_current_settings().api.url}: {exc}", 2)
    typer.echo(f"Flow run {run.name} ({run.id}) of {deployment}"
               + (f" for commit {sha}" if sha else "") + (f" in {image}" if image else ""))
    if not follow:
        return

    def show(current: Any) -> None:
        typer.echo(f"  {time.strftime('%H:%M:%S')} {current.state.name if current.state else '?'}")

    try:
        followed = follow_run(run.id, timeout=timeout, poll=poll, on_change=show)
    except httpx.HTTPError as exc:
        _fail(f"Lost the Prefect API while following flow run {run.id}: {exc}", 4)
    link = f" {followed.url}" if followed.url else ""
    if not followed.finished:
        _fail(f"Still {followed.state_name} after {timeout:.0f} s; not following any longer."
              f"{link}", 3)
    if not followed.completed:
        _fail(f"Flow run {run.name} ended {followed.state_name}: {followed.message}{link}", 1)
    outcome = read_outcome(run.id)
    summary = outcome.get("summary") or "no outcome recorded"
    typer.secho(f"Flow run {run.name} completed: {summary}{link}", fg=typer.colors.GREEN)
    for key in ("outcome", "decision", "model_package_arn", "endpoint"):
        if outcome.get(key):
            typer.echo(f"  {key}: {outcome[key]}")


@server_app.command("up")
def server_up(port: int = typer.Option(None, help="the API and UI port on 127.0.0.1 "
                                        "(default: 4200, or the next free one)"),
              poll: float = typer.Option(5.0, help="seconds between the worker's polls"),
              ui: bool = typer.Option(True, help="serve the Prefect UI")) -> None:
    """Start a local Prefect server and a process worker for the `sagepipe-local` pool.

    The server is the one `sagepipe run` keeps (reused if it runs); `sagepipe down` or
    `sagepipe server down` stops both."""
    from sagepipe.flows.server import DEFAULT_DIR, up

    server = up(DEFAULT_DIR, port=port, poll_seconds=poll, ui=ui)
    typer.echo(f"Prefect server {server.api_url} (pid {server.server_pid}), worker for "
               f"{server.pool} (pid {server.worker_pid}); logs in {DEFAULT_DIR}.\n"
               f"UI: {server.ui_url}\nNext:\n  export PREFECT_API_URL={server.api_url}\n"
               f"  prefect deploy {_prefect_file()}--name ml-pipeline/local\n"
               "  prefect deployment run 'ml-pipeline/local'")


def _prefect_file() -> str:
    """`--prefect-file ...` unless this folder has its own prefect.yaml (a user project)."""
    return "" if Path("prefect.yaml").is_file() else "--prefect-file deployments/prefect.yaml "


@server_app.command("down")
def server_down() -> None:
    """Stop the local Prefect server and worker started by `sagepipe server up`."""
    from sagepipe.flows.server import DEFAULT_DIR, down

    stopped = down(DEFAULT_DIR)
    typer.echo("No local Prefect server was running." if stopped is None else
               f"Stopped the worker (pid {stopped.worker_pid}) and the server "
               f"(pid {stopped.server_pid}) at {stopped.api_url}.")


class _Debug:
    on = False


DEBUG = _Debug()


@app.callback()
def _options(debug: bool = typer.Option(
        False, "--debug", help="print the full traceback of a failure (anywhere on the "
        "command line; also SAGEPIPE_DEBUG=1)")) -> None:
    DEBUG.on = DEBUG.on or debug


def main() -> None:
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if "--debug" in sys.argv[1:]:  # accepted after the command too: `sagepipe run --debug`
        sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != "--debug")]
        DEBUG.on = True
    DEBUG.on = DEBUG.on or os.environ.get("SAGEPIPE_DEBUG", "") not in ("", "0", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # the server's own env
    # Prefect read its settings when this module imported it: a default set in os.environ
    # now would come too late. A loaded 2-core machine, or a first run that creates
    # Prefect's database, can need more than Prefect's 20 s to start its temporary server.
    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    updates = {} if timeout.name in os.environ else {timeout: 90}
    signal.signal(signal.SIGINT, _interrupted)  # `run` installs its own while it runs
    try:
        with temporary_settings(updates=updates):
            # the name usage lines show: click would say `python -m sagepipe.warm` in a
            # run started by the warm process (its __main__ is a module)
            app(prog_name="sagepipe")
    except Exception as exc:
        sys.exit(_unexpected(exc))


def _interrupted(signum: int, frame: Any) -> None:
    typer.secho("\nInterrupted.", fg=typer.colors.YELLOW, err=True)
    sys.exit(128 + signum)


def _unexpected(exc: BaseException) -> int:
    """An error nobody planned for: one paragraph, or a line and a saved report."""
    import traceback

    from sagepipe.flows.console import explain, save_report

    if DEBUG.on:
        typer.echo("".join(traceback.format_exception(exc)), err=True)
    explained = explain(exc)
    if isinstance(exc, PipelineError):  # config and data errors are the user's to fix
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        return 2 if explained is None or explained.code == 1 else explained.code
    if explained is not None:
        typer.secho(explained.text, fg=typer.colors.RED, err=True)
        return explained.code
    report = save_report(exc, Path(".sagepipe") / "errors")
    typer.secho(f"Unexpected error: {type(exc).__name__}: {exc}. The full report is in "
                f"{report}; please include it when you report this.", fg=typer.colors.RED,
                err=True)
    return 70


if __name__ == "__main__":
    main()
