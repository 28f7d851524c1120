"""Generate the AdoreRound CustomResourceDefinition from schema.py.

Kubernetes wants a *structural* OpenAPI v3 schema: no $ref, no anyOf for
optional fields, boolean exclusiveMinimum. Pydantic emits JSON Schema 2020-12,
so this module rewrites one into the other.
"""
from __future__ import annotations

import copy

import yaml

from .schema import API_GROUP, API_VERSION, KIND, PLURAL, AdoreRoundSpec, AdoreRoundStatus

_DROP = {"title"}


def _to_openapi(node: object, defs: dict) -> object:
    if isinstance(node, list):
        return [_to_openapi(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _to_openapi(merged, defs)
    out: dict = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "anyOf":
            options = [o for o in value if o != {"type": "null"}]
            if len(options) == 1:
                inner = _to_openapi(options[0], defs)
                out.update(inner)
                out["nullable"] = True
                continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {k: _to_openapi(v, defs) for k, v in value.items()}
            continue
        if key == "default" and value is None:
            continue
        if key == "default" and isinstance(value, dict):
            # An absent field means null; a null inside an object default fails the apiserver's check of
            # that default against an enum (device, precision), so it is left out.
            out[key] = _without_nulls(value)
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas forbid it beside properties; the apiserver prunes unknown fields
        out[key] = _to_openapi(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("additionalProperties") is True:
        del out["additionalProperties"]
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def openapi_schema(model) -> dict:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _to_openapi(raw, defs)


def build_crd() -> dict:
    spec_schema = openapi_schema(AdoreRoundSpec)
    status_schema = openapi_schema(AdoreRoundStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": KIND.lower(), "shortNames": ["ar"]},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
                        {"name": "Quality", "type": "number", "jsonPath": ".status.quality", "description": "Student macro-F1 on dev"},
                        {"name": "Version", "type": "integer", "jsonPath": ".status.promotedVersion"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `adore crd` from workers/adore/schema.py. Do not edit by hand.\n"


def render_crd() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
