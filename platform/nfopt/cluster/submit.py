"""Job submission to Ray clusters through the Ray Jobs API (``JobSubmissionClient``).

Authentication follows Ray's own: a cluster with token auth reads ``RAY_AUTH_MODE=token`` and
its token from the environment of the submitting shell, as ``ray job submit`` does.
"""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["ClusterUnreachableError", "client", "submit"]

EXCLUDES = [".venv", ".git", "runs", "mlflow.db", "mlruns", "__pycache__", "*.egg-info", ".pytest_cache"]


class ClusterUnreachableError(ConnectionError):
    """The Ray dashboard at the given address did not answer."""


def _check(address: str, timeout: float = 5.0) -> None:
    url = address.rstrip("/") + "/api/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            json.loads(r.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ClusterUnreachableError(
            f"no Ray cluster answers at {address} ({err}); start one with `ray start --head "
            "--dashboard-host=127.0.0.1` or pass the dashboard address (http://HOST:8265)"
        ) from None


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    _check(address)
    return JobSubmissionClient(address)


def submit(
    address: str,
    job: str,
    tune: bool = False,
    working_dir: str | Path = ".",
    agent_wait_s: float = 60.0,
    sets: list[str] | None = None,
) -> str:
    """Submit ``nfopt run|tune JOB [--set FIELD=VALUE ...]`` with ``working_dir`` (the repository: ``tasks/``,
    ``jobs/``, ``platform/``) as the runtime environment; returns the job id.

    Right after a head starts, its dashboard answers before a job agent has registered ("No
    available agent to submit job"); that answer is retried for up to ``agent_wait_s`` seconds."""
    command = "tune" if tune else "run"
    entrypoint = f"PYTHONPATH=platform python -m nfopt.cli {command} {shlex.quote(str(job))}"
    entrypoint += "".join(f" --set {shlex.quote(item)}" for item in sets or [])
    jobs = client(address)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return jobs.submit_job(
                entrypoint=entrypoint,
                runtime_env={
                    "working_dir": str(working_dir),
                    "excludes": EXCLUDES,
                    "env_vars": {"PYTHONPATH": "platform"},
                },
            )
        except RuntimeError as err:
            if "No available agent" not in str(err):
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{err} The head at {address} registered no job agent within {agent_wait_s:.0f} s: "
                    "if another Ray instance runs on that machine, start the head with its own "
                    "--dashboard-agent-listen-port (the default, 52365, may be taken)."
                ) from None
            time.sleep(1.0)
