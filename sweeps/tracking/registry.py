"""The MLflow Model Registry side: a sweep's best trial registered as a model anyone can load by name.

`rewarm best --register NAME` registers the winner's best weights (its `best_model/`, which
`from_pretrained` loads) as a new version of NAME and points the alias `best` at it:

    path = mlflow.artifacts.download_artifacts("models:/NAME@best")
    model = AutoModelForCausalLM.from_pretrained(path)

The version's source is the run's own artifact (nothing is copied); a checkpoint too large to
copy into MLflow (tracker.ARTIFACT_COPY_LIMIT_BYTES) is registered at its path on the shared
storage, where the trial left it.
"""

from __future__ import annotations

from pathlib import Path

from sweeps.tracking.tracker import SWEEP_TAG, TRIAL_TAG, checkpoint_artifact, checkpoint_tag
from trainers.errors import UserError

BEST_ALIAS = "best"
BEST_ARTIFACT = checkpoint_artifact("best")  # the trial's best_model/, copied by tracker.finish_child
BEST_CHECKPOINT_TAG = checkpoint_tag("best")  # its path on storage


class NothingToRegister(UserError):
    """The chosen trial has no best model in MLflow or on storage."""


def register_best(client, run_id: str, name: str) -> str:
    """Register the trial run's best model as a new version of `name`, alias `best`; the version."""
    from mlflow.exceptions import MlflowException

    run = client.get_run(run_id)
    trial = run.data.tags.get(TRIAL_TAG, run_id)
    if any(a.path == BEST_ARTIFACT for a in client.list_artifacts(run_id, Path(BEST_ARTIFACT).parent.as_posix())):
        source = f"{run.info.artifact_uri.rstrip('/')}/{BEST_ARTIFACT}"
    elif run.data.tags.get(BEST_CHECKPOINT_TAG) and Path(run.data.tags[BEST_CHECKPOINT_TAG]).exists():
        source = run.data.tags[BEST_CHECKPOINT_TAG]
    else:
        raise NothingToRegister(f"trial {trial} has no best model to register (no {BEST_ARTIFACT} artifact, and "
                                f"its {BEST_CHECKPOINT_TAG} path is missing); was it stopped before its first eval?")
    try:
        client.create_registered_model(name, description="Best continual pre-training configs found by Rewarm.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=source, run_id=run_id, tags={
        SWEEP_TAG: run.data.tags.get(SWEEP_TAG, ""), TRIAL_TAG: trial})
    client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return version.version
