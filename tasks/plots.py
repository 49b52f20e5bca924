"""A run's pictures: the evaluate job's plots and the metric history of the model versions.

The evaluate container draws what it can see: two models and one test split (``roc.png``,
``confusion_matrix.png`` next to ``evaluation.json``). The history of the registered
versions needs the Model Registry, which a container never talks to, so it is drawn here,
from the registry, and stored with the run: ``<artifacts>/runs/<run_id>/plots/``.

For the Prefect UI every PNG is downscaled and inlined as a ``data:image/png;base64`` URI.
Prefect's UIs render a markdown image as an ``<img src>`` (v2 allows ``data:image/``
sources explicitly), and a browser can load a data URI wherever the outputs live; it
cannot load an ``s3://`` URI (the local runtime's, or any private bucket's), and a
presigned URL stops working after at most seven days.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from .data import parse_s3_uri
from .runtime import Clients, RuntimeSettings, get_clients, is_not_found

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib and PIL are imported where a plot is drawn: half a second of every
# `sagepipe run`'s start-up otherwise, also of runs that draw nothing (bench/, issue 16)
_WARMING: list[threading.Thread] = []


def warm_up() -> None:
    """Import the drawing libraries in a background thread (once per process).

    The pipeline calls it as the evaluate job starts: that job's script keeps one core
    busy, so on a 2-core machine the half second of imports happens on the other one
    instead of between the deploy and the run's end. Drawing works the same without it
    (the import is then paid where the plot is drawn)."""
    if _WARMING:
        return

    def load() -> None:
        try:
            import matplotlib.backends.backend_agg
            import matplotlib.figure  # noqa: F401
            import PIL.Image  # noqa: F401
        except Exception:  # drawing imports them again and reports the error there
            pass

    thread = threading.Thread(target=load, name="sagepipe-plots-warm-up", daemon=True)
    _WARMING.append(thread)
    thread.start()

__all__ = ["EVALUATE_PLOTS", "RunPlots", "VersionPoint", "data_uri", "draw_plots",
           "history_png", "model_history"]

# drawn by the evaluate container, by problem type
EVALUATE_PLOTS = ("roc", "confusion_matrix", "per_class_f1", "predicted_vs_actual", "residuals")
HISTORY_VERSIONS = 40  # the newest versions in the history plot
MAX_WIDTH = 640  # pixels of a plot inlined into the run record


class VersionPoint(BaseModel):
    """One registered model version and its gate metric."""

    version: int
    arn: str
    approval: str  # Approved | Rejected | PendingManualApproval
    value: float | None


class RunPlots(BaseModel):
    """Where a run's plots are stored (name -> s3 URI) and how the UI shows them."""

    uris: dict[str, str]
    images: dict[str, str]  # name -> data:image/png;base64,... (downscaled)


def model_history(clients: Clients, group: str, metric: str,
                  limit: int = HISTORY_VERSIONS) -> list[VersionPoint]:
    """The newest ``limit`` versions of ``group``, oldest first, with their ``metric``.

    The register step writes the gate metric into the package's metadata; a version
    registered under another gate metric is read from its evaluation.json instead.
    """
    summaries: list[dict[str, Any]] = []
    params: dict[str, Any] = {"ModelPackageGroupName": group, "SortBy": "CreationTime",
                              "SortOrder": "Descending", "MaxResults": 100}
    try:
        while len(summaries) < limit:
            page = clients.sagemaker.list_model_packages(**params)
            summaries += page["ModelPackageSummaryList"]
            if not page.get("NextToken"):
                break
            params["NextToken"] = page["NextToken"]
    except ClientError as exc:
        if is_not_found(exc):
            return []
        raise
    points = []
    for summary in reversed(summaries[:limit]):
        package = clients.sagemaker.describe_model_package(
            ModelPackageName=summary["ModelPackageArn"])
        points.append(VersionPoint(version=int(package["ModelPackageVersion"]),
                                   arn=package["ModelPackageArn"],
                                   approval=package["ModelApprovalStatus"],
                                   value=_metric_of(clients, package, metric)))
    return points


def _metric_of(clients: Clients, package: dict[str, Any], metric: str) -> float | None:
    stored = (package.get("CustomerMetadataProperties") or {}).get(metric)
    if stored is not None:
        return float(stored)
    statistics = (package.get("ModelMetrics") or {}).get("ModelQuality", {}).get("Statistics")
    if not statistics:
        return None
    bucket, key = parse_s3_uri(statistics["S3Uri"])
    try:
        body = clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError:
        return None  # the metrics were deleted since: the version is drawn without a value
    value = (json.loads(body).get("challenger") or {}).get(metric)
    return None if value is None else float(value)


def history_png(points: list[VersionPoint], *, metric: str, threshold: float,
                live_arn: str | None, current_arn: str | None) -> bytes:
    """The metric history (:func:`history_figure`) as a PNG."""
    out = io.BytesIO()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(history_figure(points, metric=metric, threshold=threshold,
                                   live_arn=live_arn, current_arn=current_arn)).print_png(out)
    return out.getvalue()


def history_figure(points: list[VersionPoint], *, metric: str, threshold: float,
                   live_arn: str | None, current_arn: str | None) -> Figure:
    """Approved versions as a line, the others as crosses, the live one starred."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.8), dpi=110, layout="constrained")
    ax = figure.subplots()
    scored = {p.arn: (p.version, p.value) for p in points if p.value is not None}

    def xy(arns: list[str]) -> tuple[list[int], list[float]]:
        return [scored[a][0] for a in arns], [scored[a][1] for a in arns]

    approved = [p.arn for p in points if p.arn in scored and p.approval == "Approved"]
    others = [p.arn for p in points if p.arn in scored and p.approval != "Approved"]
    ax.plot(*xy(approved), marker="o", color="tab:blue", linewidth=2,
            label="approved (deployed)")
    if others:
        ax.scatter(*xy(others), marker="x", s=60, color="tab:red", label="rejected / pending",
                   zorder=3)
    if current_arn in scored:
        ax.scatter(*xy([str(current_arn)]), marker="o", s=150, facecolors="none",
                   edgecolors="black", linewidths=1.5, label="this run", zorder=4)
    if live_arn in scored:
        ax.scatter(*xy([str(live_arn)]), marker="*", s=260, color="gold", edgecolors="black",
                   label="live now", zorder=5)
    ax.axhline(threshold, linestyle="--", color="grey", linewidth=1,
               label=f"gate threshold {threshold:g}")
    versions = [p.version for p in points]
    ax.set_xticks(versions[:: len(versions) // 20 + 1])
    ax.set(xlabel="model version", ylabel=metric,
           title=f"{metric} of the registered model versions")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return figure


def data_uri(png: bytes, max_width: int = MAX_WIDTH) -> str:
    """``png`` at most ``max_width`` wide, with a 256-colour palette, as a data URI."""
    from PIL import Image

    image: Image.Image = Image.open(io.BytesIO(png))
    image = image.convert("RGB")
    if image.width > max_width:
        height = round(image.height * max_width / image.width)
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.quantize(colors=256).save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _read(clients: Clients, uri: str) -> bytes:
    bucket, key = parse_s3_uri(uri)
    return bytes(clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@task(name="draw-plots", cache_policy=NO_CACHE)
def draw_plots(runtime: RuntimeSettings, *, evaluation_uri: str, evaluation: dict[str, Any],
               group: str, metric: str | None, threshold: float | None, live_arn: str | None,
               current_arn: str | None, run_uri: str) -> RunPlots:
    """Draw and store the metric history (of the gate's metric, when the gate decided);
    gather the evaluate job's plots for the UI."""
    clients = get_clients(runtime)
    log = get_run_logger()
    folder = evaluation_uri.rsplit("/", 1)[0]
    uris = {name: f"{folder}/{file}" for name, file in (evaluation.get("plots") or {}).items()
            if name in EVALUATE_PLOTS}
    if evaluation.get("plots_error"):
        log.warning("The evaluate job drew no plots: %s", evaluation["plots_error"])
    points = model_history(clients, group, metric) if metric and threshold is not None else []
    if points and metric and threshold is not None:
        history = f"{run_uri.rstrip('/')}/plots/metric_history.png"
        bucket, key = parse_s3_uri(history)
        clients.s3.put_object(Bucket=bucket, Key=key, ContentType="image/png",
                              Body=history_png(points, metric=metric, threshold=threshold,
                                               live_arn=live_arn, current_arn=current_arn))
        uris["metric_history"] = history
    images = {name: data_uri(_read(clients, uri)) for name, uri in uris.items()}
    log.info("Plots: %s", ", ".join(f"{n} ({len(i) // 1024} KiB inline)"
                                    for n, i in images.items()) or "none")
    return RunPlots(uris=uris, images=images)
