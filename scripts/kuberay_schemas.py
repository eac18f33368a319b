"""Extract the OpenAPI schemas of KubeRay's CRDs into infra/schemas/ (run when KubeRay moves).

The manifests in infra/ are validated offline in the tests against these schemas
(tests/unit/test_manifests.py), so the schemas live in the repository, named by the KubeRay
release they come from. From a KubeRay checkout:

    python scripts/kuberay_schemas.py /path/to/kuberay v1.7.0

reads ``ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,rayservices}.yaml`` at that
tag (``git show``) and writes each kind's ``v1`` ``openAPIV3Schema`` as sorted JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
OUT = Path(__file__).resolve().parents[1] / "infra" / "schemas"


def main(checkout: str, tag: str) -> None:
    folder = OUT / f"kuberay-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, plural in KINDS.items():
        path = f"{tag}:ray-operator/config/crd/bases/ray.io_{plural}.yaml"
        text = subprocess.run(
            ["git", "-C", checkout, "show", path], check=True, capture_output=True, text=True
        ).stdout
        crd = yaml.safe_load(text)
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = version["schema"]["openAPIV3Schema"]
        out = folder / f"{kind}.json"
        out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{out}: {kind} ray.io/v1 from KubeRay {tag}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
