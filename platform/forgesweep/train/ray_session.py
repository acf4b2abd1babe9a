"""Connecting to Ray: join the cluster named by ``RAY_ADDRESS`` (as ``ray job submit`` sets it),
else start a local instance.

Object-storage settings reach the workers. A local instance is started from this process, so
its workers inherit this environment. Workers of a cluster this process *joins* were started by
the cluster's raylets, without this process's ``AWS_*`` variables; a job that writes
checkpoints to ``s3://`` (an S3-compatible endpoint, keys from the environment) would then fail
inside its first trial. :func:`connect_ray` therefore hands them to the job's workers:

* the endpoint and region (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ``AWS_DEFAULT_REGION``,
  ``AWS_REGION``) as the job's runtime-env ``env_vars``;
* the credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``)
  through a ``worker_process_setup_hook`` that sets them when a worker process starts. Ray keeps
  a runtime env's ``env_vars`` in plain text in its logs (``runtime_env_agent.log`` prints every
  runtime env it creates) and on the dashboard; the hook itself is stored only in the cluster's
  internal key-value store, and its name is all that is logged. Ray Tune would copy the keys
  into every trial's runtime env as well (and so into that log):
  :func:`keep_credentials_out_of_tune_runtime_envs` stops it wherever the workers get them
  otherwise.

The driver's values replace the nodes' own (as runtime-env variables do). Nothing is forwarded
that a submitted job already sets in its own runtime env (Ray refuses to merge two values of one
variable), nor when ``FORGESWEEP_FORWARD_AWS_ENV=0``. Nodes with their own credentials (an
instance or pod role) need nothing forwarded: leave the variables unset.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Optional

import ray

# Non-secret settings: passed as plain runtime-env variables.
AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
# Credentials: only through the worker setup hook, never as plain variables.
AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
OPT_OUT_VAR = "FORGESWEEP_FORWARD_AWS_ENV"
_JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in a submitted job's driver


def connect_ray() -> str:
    """Initialise Ray once for this process and say where it runs.

    The dashboard stays on for a local instance: Train V2 relies on the State API it serves to
    clean up the workers of trials an early-stopping scheduler ended (without it a sweep hangs
    waiting for their CPUs).

    Returns:
        A short description (``"joined cluster at ..."`` or ``"started local Ray ..."``), naming
        the variables handed to the workers (names only, never values).
    """
    if ray.is_initialized():
        return "using the Ray instance already connected"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        runtime_env, forwarded = worker_runtime_env(os.environ)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env or None)
        if "worker_process_setup_hook" in runtime_env:
            keep_credentials_out_of_tune_runtime_envs()
        note = f"; workers get {', '.join(forwarded)} from this environment" if forwarded else ""
        return f"joined Ray cluster at {address}{note}"
    # A new trial's worker can wait for the CPUs of a finished trial's workers while they shut
    # down; on a loaded 2-core machine that took longer than Ray Train's 60 s default and failed
    # the trial. The raylet started here (and every process it starts) inherits this.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
             runtime_env={"worker_process_setup_hook": own_cluster_address_hook()})
    # The local raylet was started from this process: its workers inherit the credentials.
    keep_credentials_out_of_tune_runtime_envs()
    return f"started local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs"


def own_cluster_address_hook() -> Callable[[], None]:
    """A worker setup hook that points the worker's Ray clients at the instance it belongs to.

    A local instance started by ``ray.init()`` is found by Ray's clients inside its workers (the
    State API, which Ray Train's ``PlacementGroupCleaner`` polls to see whether a trial's
    controller is alive) by scanning the machine's processes for a GCS server. With a second
    local Ray instance on the machine (another user's job, a test head, a benchmark) that scan
    finds two and fails ("Found multiple active Ray instances"): the cleaner dies, the placement
    group of a trial that early stopping ended is never removed, its CPUs stay taken and the
    sweep's next trial waits for them forever. The hook sets ``RAY_ADDRESS`` in every worker
    process to the GCS address the worker is connected to, which is what the clients read first.

    A closure, so Ray pickles it by value: the worker needs nothing importable to run it.
    """

    def point_ray_clients_at_own_cluster() -> None:
        if not os.environ.get("RAY_ADDRESS"):
            import ray as ray_in_worker

            os.environ["RAY_ADDRESS"] = ray_in_worker.get_runtime_context().gcs_address

    return point_ray_clients_at_own_cluster


def keep_credentials_out_of_tune_runtime_envs() -> None:
    """Stop Ray Tune copying this process's AWS keys into every trial's runtime env.

    Tune copies ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` from
    the driver's environment into the ``env_vars`` of each trial actor, and Ray's runtime-env
    agent prints every runtime env it creates into ``runtime_env_agent.log``: the secret key
    would land in the cluster's logs. Called only where the workers get the keys otherwise (the
    setup hook of :func:`worker_runtime_env`, or a local raylet's inherited environment).
    Ray internals: if the list moves in another Ray version, nothing changes (Ray's own
    behaviour, the keys in that log, comes back).
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, set):
        propagated.difference_update(AWS_CREDENTIALS)


def worker_runtime_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The runtime env that gives a joined cluster's workers this process's AWS settings.

    Args:
        environ: this process's environment.

    Returns:
        ``(runtime_env, forwarded variable names)``; an empty runtime env when there is nothing
        to forward.
    """
    if environ.get(OPT_OUT_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}, []
    job_env = _submitted_job_runtime_env(environ)
    already = set(job_env.get("env_vars") or {})
    settings = {k: environ[k] for k in AWS_SETTINGS if environ.get(k) and k not in already}
    credentials = {k: environ[k] for k in AWS_CREDENTIALS if environ.get(k)}
    # Credentials travel as one set: not when the job sets some itself, nor when it has its own
    # setup hook (a job has one hook at most).
    if already.intersection(AWS_CREDENTIALS) or job_env.get("worker_process_setup_hook"):
        credentials = {}
    runtime_env: dict[str, Any] = {}
    if settings:
        runtime_env["env_vars"] = settings
    if credentials:
        runtime_env["worker_process_setup_hook"] = credentials_hook(credentials)
    return runtime_env, sorted(settings) + sorted(credentials)


def credentials_hook(credentials: Mapping[str, str]) -> Callable[[], None]:
    """A worker setup hook that gives the worker process exactly ``credentials``.

    Ray pickles the hook (with the values it closes over) into the cluster's internal store
    and runs it in every worker process of the job before the worker's first task.
    """
    values = dict(credentials)

    def set_aws_credentials() -> None:
        # The driver's credentials replace the node's, as runtime-env variables do; as a set,
        # so a node's session token is never paired with the driver's keys.
        for key in AWS_CREDENTIALS:
            if key in values:
                os.environ[key] = values[key]
            else:
                os.environ.pop(key, None)

    return set_aws_credentials


def _submitted_job_runtime_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The runtime env of the submitted job this driver runs in (``{}`` outside a job)."""
    raw: Optional[str] = environ.get(_JOB_CONFIG_VAR)
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError, TypeError):
        return {}
