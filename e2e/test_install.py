"""``manifests/install.yaml`` and the example CaptureTask against the real API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from e2e.infra.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "manifests" / "install.yaml"
EXAMPLE = ROOT / "manifests" / "examples" / "capturetask.yaml"
CRD = "capturetasks.otus.firestige.xyz"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_object_of_install_yaml_passes_a_server_dry_run(cluster: Cluster) -> None:
    docs = _docs(INSTALL)
    namespace = docs[0]
    assert namespace["kind"] == "Namespace"
    # A dry run of an object in a namespace that does not exist fails: create that one for real.
    cluster.apply(namespace)
    for flags in (("--dry-run=server",), ("--server-side", "--dry-run=server")):
        out = cluster.kubectl("apply", *flags, "-f", str(INSTALL)).splitlines()
        assert len(out) == len(docs), out
        assert all(line.endswith("(server dry run)") for line in out), out
    # Nothing but the namespace was created.
    missing = cluster.kubectl_run("get", "crd", CRD)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_example_capturetask_passes_the_crd_schema_and_rules(cluster: Cluster) -> None:
    crd = next(d for d in _docs(INSTALL) if d["kind"] == "CustomResourceDefinition")
    cluster.apply(crd)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}")
    (example,) = _docs(EXAMPLE)
    ns = example["metadata"]["namespace"]
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    out = cluster.kubectl("apply", "--dry-run=server", "-f", str(EXAMPLE))
    assert out == "capturetask.otus.firestige.xyz/sip-capture created (server dry run)"
