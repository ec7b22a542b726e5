"""The registered models the recommend path builds on: the serving ALS parameters and the versions."""

from __future__ import annotations

import logging

from watchnext.config import Config
from watchnext.models.als import AlsParams

log = logging.getLogger(__name__)


def model_versions(cfg: Config) -> tuple[AlsParams, dict[str, str]]:
    """The ALS parameters of the registered serving model (``als.registered_model@model_alias``: the
    als stage logs its chosen parameters as ``best.*``) and the registry versions the lists come from.
    Without MLflow, or before the als stage registered a version, the ``als`` config section."""
    params = AlsParams.from_config(cfg.als)
    versions: dict[str, str] = {}
    if not cfg.mlflow.enabled:
        return params, versions
    import mlflow

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(cfg.als.registered_model, cfg.als.model_alias)
    except mlflow.exceptions.MlflowException:
        log.warning(
            "no %s@%s in the registry: ALS parameters from the config",
            cfg.als.registered_model,
            cfg.als.model_alias,
        )
    else:
        versions["als"] = str(mv.version)
        logged = {
            k.removeprefix("best."): v
            for k, v in (client.get_run(mv.run_id).data.params if mv.run_id else {}).items()
            if k.startswith("best.")
        }
        if logged:
            params = AlsParams.model_validate({**params.model_dump(), **logged})
    found = client.search_model_versions(f"name = '{cfg.clusters.registered_model}'")
    if found:
        versions["clusters"] = str(max(int(v.version) for v in found))
    return params, versions
