"""Validate the Kubernetes manifests offline: `python deploy/k8s/check.py` (run by `make lint`).

Each kustomization (deploy/k8s/base, deploy/k8s/overlays/example) is rendered by the small
renderer below, and every object it yields is validated against the JSON schema of each
Kubernetes version in KUBERNETES_VERSIONS, bundled with the pinned `kubernetes-validate`
package, in strict mode: an unknown field is an error, like a wrong type or a missing
required field.
No network and no cluster are needed.

The renderer does what these kustomizations use, and refuses anything else rather than
render it wrongly: `resources` (files and kustomization directories), `namespace`,
`images` (newName, newTag, digest) and `patches` given by `path` holding a strategic merge
patch (maps merge; the lists Kubernetes merges by key -- containers and env by name,
volumeMounts by mountPath, ports by containerPort... -- merge by that key; other lists are
replaced). Where `kubectl` is installed its built-in kustomize renders the same
kustomizations too, and the two renderings must agree.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

#: The oldest Kubernetes the manifests promise to work on (fields added later are unknown to
#: its schema), and the newest whose schema the pinned package bundles (fields removed are
#: unknown to it). Every object must be valid for both.
KUBERNETES_VERSIONS = ("1.33", "1.37")

HERE = Path(__file__).resolve().parent
KUSTOMIZATIONS = (HERE / "base", HERE / "overlays" / "example")

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
#: Kinds without a namespace, which `namespace:` leaves alone.
CLUSTER_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
#: Lists a strategic merge patch merges item by item, and the key that identifies an item
#: (Kubernetes' patchMergeKey). Other lists are replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


class RenderError(Exception):
    """A kustomization this renderer cannot render (or that is wrong)."""


Obj = dict[str, Any]


# --- Rendering --------------------------------------------------------------------------


def load_documents(path: Path) -> list[Obj]:
    """Every non-empty YAML document in a file, which must each be a mapping."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise RenderError(f"{path}: cannot read ({exc})") from None
    objects = [document for document in documents if document is not None]
    for document in objects:
        if not isinstance(document, dict):
            raise RenderError(f"{path}: a document is not a mapping")
    return objects


def render(directory: Path) -> list[Obj]:
    """The objects a kustomization directory yields, in order."""
    kustomization = directory / "kustomization.yaml"
    documents = load_documents(kustomization)
    if len(documents) != 1:
        raise RenderError(f"{kustomization}: expected one document")
    spec = documents[0]
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(
            f"{kustomization}: not rendered by deploy/k8s/check.py: {', '.join(sorted(unknown))}"
        )
    if spec.get("kind") != "Kustomization" or not str(spec.get("apiVersion", "")).startswith(
        "kustomize.config.k8s.io/"
    ):
        raise RenderError(f"{kustomization}: not a kustomize.config.k8s.io Kustomization")

    objects: list[Obj] = []
    for entry in spec.get("resources") or []:
        target = (directory / str(entry)).resolve()
        if target.is_dir():
            objects.extend(render(target))
        elif target.is_file():
            objects.extend(load_documents(target))
        else:
            raise RenderError(f"{kustomization}: resource {entry!r} does not exist")
    _refuse_duplicates(objects, kustomization)

    for patch_entry in spec.get("patches") or []:
        if set(patch_entry) != {"path"}:
            raise RenderError(f"{kustomization}: only `patches: - path: <file>` is rendered")
        for patch in load_documents(directory / str(patch_entry["path"])):
            target_obj = _find(objects, patch)
            if target_obj is None:
                raise RenderError(f"{kustomization}: patch {_name(patch)} matches no resource")
            merged = strategic_merge(target_obj, patch)
            objects[objects.index(target_obj)] = merged

    for image in spec.get("images") or []:
        if not set(image) <= IMAGE_KEYS or "name" not in image:
            raise RenderError(f"{kustomization}: images take {', '.join(sorted(IMAGE_KEYS))}")
        for obj in objects:
            for container in _containers(obj):
                container["image"] = _retag(str(container.get("image", "")), image)

    namespace = spec.get("namespace")
    if namespace:
        for obj in objects:
            if obj.get("kind") not in CLUSTER_KINDS:
                obj.setdefault("metadata", {})["namespace"] = namespace
    return objects


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """`patch` merged into `original` (a copy), as a strategic merge patch does for the
    constructs these manifests use."""
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            merged[key] = strategic_merge(original[key], value, key) if key in original else value
        return merged
    key = MERGE_KEYS.get(field)
    if key and isinstance(original, list) and isinstance(patch, list):
        merged_list = copy.deepcopy(original)
        for item in patch:
            match = next(
                (i for i, old in enumerate(merged_list) if old.get(key) == item[key]), None
            )
            if match is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[match] = strategic_merge(merged_list[match], item)
        return merged_list
    return copy.deepcopy(patch)


def _retag(image: str, rule: dict[str, Any]) -> str:
    if "@" in image:
        name, tag = image.split("@", 1)
        tag = "@" + tag
    elif ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
        tag = ":" + tag
    else:
        name, tag = image, ""
    if name != rule["name"]:
        return image
    name = str(rule.get("newName", name))
    if "digest" in rule:
        tag = "@" + str(rule["digest"])
    elif "newTag" in rule:
        tag = ":" + str(rule["newTag"])
    return name + tag


def _containers(obj: Obj) -> Iterable[dict[str, Any]]:
    spec: dict[str, Any] = obj.get("spec") or {}
    if "jobTemplate" in spec:  # a CronJob
        spec = spec["jobTemplate"].get("spec") or {}
    pod: dict[str, Any] = (spec.get("template") or {}).get("spec") or {}
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def _name(obj: Obj) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def _find(objects: list[Obj], patch: Obj) -> Obj | None:
    for obj in objects:
        if obj.get("kind") == patch.get("kind") and (obj.get("metadata") or {}).get("name") == (
            patch.get("metadata") or {}
        ).get("name"):
            return obj
    return None


def _refuse_duplicates(objects: list[Obj], source: Path) -> None:
    seen: set[str] = set()
    for obj in objects:
        if _name(obj) in seen:
            raise RenderError(f"{source}: {_name(obj)} is defined twice")
        seen.add(_name(obj))


# --- Validating -------------------------------------------------------------------------


def validate(objects: list[Obj]) -> list[str]:
    """Problems with the rendered objects against the schema (strict); empty when valid."""
    problems = []
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path) or "(top level)"
                problems.append(f"{_name(obj)}: {where}: {exc.message} (Kubernetes {version})")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{_name(obj)}: {exc.message}")
            except (KeyError, TypeError) as exc:
                problems.append(f"{_name(obj)}: not a Kubernetes object ({type(exc).__name__})")
                break
    return problems


def kubectl_disagreement(directory: Path, objects: list[Obj]) -> str | None:
    """Where `kubectl` is installed: how its kustomize rendering differs from ours, if at
    all. None when they agree or there is no kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    result = subprocess.run(  # noqa: S603 - a fixed argument list
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return f"kubectl kustomize failed: {result.stderr.strip()[:500]}"
    theirs = {_name(obj): _canonical(obj) for obj in yaml.safe_load_all(result.stdout) if obj}
    ours = {_name(obj): _canonical(obj) for obj in objects}
    if theirs.keys() != ours.keys():
        return f"objects differ: kubectl {sorted(theirs)}, ours {sorted(ours)}"
    for name, canonical in ours.items():
        if canonical != theirs[name]:
            return f"{name} renders differently from kubectl kustomize"
    return None


def _canonical(value: Any, field: str = "") -> Any:
    """The object with merge-keyed lists in key order (a strategic merge may reorder them)."""
    if isinstance(value, dict):
        return {key: _canonical(item, key) for key, item in value.items()}
    if isinstance(value, list):
        items = [_canonical(item) for item in value]
        key = MERGE_KEYS.get(field)
        if key and all(isinstance(item, dict) for item in items):
            items.sort(key=lambda item: json.dumps(item.get(key), sort_keys=True))
        return items
    return value


def check(directories: Iterable[Path]) -> list[str]:
    """Every problem found in the kustomizations; empty when all render and validate."""
    problems: list[str] = []
    for directory in directories:
        try:
            objects = render(directory)
        except RenderError as exc:
            problems.append(str(exc))
            continue
        problems.extend(f"{directory}: {problem}" for problem in validate(objects))
        disagreement = kubectl_disagreement(directory, objects)
        if disagreement:
            problems.append(f"{directory}: {disagreement}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="*", type=Path, default=list(KUSTOMIZATIONS))
    args = parser.parse_args(argv)
    problems = check(args.directories)
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if problems:
        return 1
    counts = ", ".join(f"{len(render(d))} objects in {d.name}" for d in args.directories)
    also = " and match kubectl kustomize" if shutil.which("kubectl") else ""
    print(
        f"Kubernetes manifests valid for {' and '.join(KUBERNETES_VERSIONS)} (strict){also}: "
        + counts,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
