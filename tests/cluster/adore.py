"""Installing adore into a ControlPlane the way a user does: the CRD, then the operator's RBAC."""
from __future__ import annotations

import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def install_adore(cp, namespaces: list[str], timeout: float = 30.0) -> str:
    """Apply crds/adoreround.yaml (waits until Established) and operator/deploy/rbac.yaml,
    create `namespaces`, and return a kubeconfig with the operator ServiceAccount's token."""
    from kubernetes import client, utils

    api = cp.api_client()
    ext = client.ApiextensionsV1Api(api)
    crd = yaml.safe_load((REPO / "crds" / "adoreround.yaml").read_text())
    ext.create_custom_resource_definition(crd)
    end = time.monotonic() + timeout
    while not any(c.type == "Established" and c.status == "True"
                  for c in ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []):
        if time.monotonic() > end:
            raise TimeoutError("the AdoreRound CRD did not become Established")
        time.sleep(0.1)
    for ns in [*namespaces, "adore-system"]:
        cp.create_namespace(ns)
    utils.create_from_yaml(api, str(REPO / "operator" / "deploy" / "rbac.yaml"))
    return cp.token_for("adore-operator", "adore-system")
