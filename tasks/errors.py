"""The pipeline's exceptions: one small tree, meant to be caught by its bases.

    PipelineError
    ├── ConfigError          bad pipeline config: nothing was started
    │   └── OverBudget       the run's estimate is over budget.*: nothing was started
    ├── DataError            bad dataset: nothing was started (or preprocess refused it)
    ├── ImageBuildFailed     the image build did not succeed
    ├── JobFailed            a SageMaker job ended Failed or Stopped (reason: AWS's FailureReason)
    │   ├── JobTimeout       the wait gave up; the job was stopped
    │   └── JobMissing       a job the run suspended for is gone when it resumes
    ├── GateRejected         the new model did not clear the gate (raised only when asked to)
    ├── RegistryError        a model version is unknown, or not in the state an action needs
    ├── DeployFailed         the endpoint did not reach InService with the new config
    │   └── DeployRolledBack the update was rolled back: the old config still serves
    └── EndpointError        invoking an endpoint failed (unknown endpoint, model error)

Messages say what happened, to what, and what to do. Lower-layer errors
(botocore's ClientError) are chained with ``from``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DeployFailed",
    "DeployRolledBack",
    "EndpointError",
    "EndpointMissing",
    "GateRejected",
    "ImageBuildFailed",
    "JobFailed",
    "JobMissing",
    "JobTimeout",
    "OverBudget",
    "PipelineError",
    "RegistryError",
]


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    pass


class OverBudget(ConfigError):
    """The run's upper-bound estimate, or what it would leave live, is over the budget."""


class DataError(PipelineError):
    pass


class ImageBuildFailed(PipelineError):
    pass


class JobFailed(PipelineError):
    def __init__(self, job: str, status: str, reason: str | None, *, kind: str = "job") -> None:
        self.job, self.status, self.reason, self.kind = job, status, reason, kind
        super().__init__(f"{kind} {job} ended {status}: {reason or 'no reason given'}")


class JobTimeout(JobFailed):
    def __init__(self, job: str, waited: float, *, kind: str = "job") -> None:
        self.waited = waited
        super().__init__(job, "Stopped",
                         f"still running after {waited:.0f} s, the configured timeout; it was "
                         "stopped. Raise jobs.timeout_seconds if it needs longer.", kind=kind)


class JobMissing(JobFailed):
    def __init__(self, job: str, *, kind: str = "job") -> None:
        self.job, self.status, self.kind = job, "Missing", kind
        self.reason = ("it was started by this run, which suspended while it ran, and it no "
                       "longer exists (deleted with Delete" + kind.title().replace(" ", "")
                       + ", or the local runtime's state was cleaned)")
        PipelineError.__init__(
            self, f"{kind} {job} is gone: {self.reason}. Nothing was started again in its "
            "place; start a new run to run the step again.")


class GateRejected(PipelineError):
    pass


class RegistryError(PipelineError):
    """A model version is unknown, or not in the state asked of it (e.g. not Approved)."""

    def __init__(self, package: str, message: str) -> None:
        self.package = package
        super().__init__(message)


class DeployFailed(PipelineError):
    def __init__(self, endpoint: str, message: str) -> None:
        self.endpoint = endpoint
        super().__init__(message)


class DeployRolledBack(DeployFailed):
    pass


class EndpointError(PipelineError):
    def __init__(self, endpoint: str, message: str, *, status: int | None = None,
                 code: str | None = None) -> None:
        self.endpoint, self.status, self.code = endpoint, status, code  # code: AWS's error
        super().__init__(message)


class EndpointMissing(EndpointError):
    """There is no endpoint of that name."""
