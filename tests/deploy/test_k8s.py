"""The Kubernetes manifests (deploy/k8s): they render and validate, and say what the
product needs -- probes on its health endpoints, limits, a locked-down pod, one beat, secrets
by reference only, and only environment variables the settings read and .env.example
documents."""

from __future__ import annotations

import importlib.util
import re
import secrets
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_check", K8S / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["k8s_check"] = module
    spec.loader.exec_module(module)
    return module


checker = _load_checker()

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return checker.render(K8S / "base")


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return checker.render(K8S / "overlays" / "example")


def _all(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [obj for obj in _all(objects, kind) if obj["metadata"]["name"] == name]
    return found


def _pod(obj: Obj) -> Obj:
    pod: Obj = obj["spec"]["template"]["spec"]
    return pod


def _workloads(objects: list[Obj]) -> list[Obj]:
    return _all(objects, "Deployment") + _all(objects, "Job")


def _container(objects: list[Obj], kind: str, name: str) -> Obj:
    (container,) = _pod(_one(objects, kind, name))["containers"]
    return container


# --- The checker --------------------------------------------------------------------------


def test_shipped_manifests_render_and_validate() -> None:
    assert checker.check(checker.KUSTOMIZATIONS) == []


def test_shipped_manifests_validate_without_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checker.shutil, "which", lambda name: None)
    assert checker.check(checker.KUSTOMIZATIONS) == []


@pytest.fixture
def copy_of_manifests(tmp_path: Path) -> Path:
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "k8s"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "old", "new", "reported"),
    [
        # An unknown field (a typo) is an error in strict mode.
        (
            "base/web.yaml",
            "  revisionHistoryLimit: 5\n",
            "  revisionHistoryLimit: 5\n  replica: 3\n",
            "'replica' was unexpected",
        ),
        # A wrong type.
        ("base/web.yaml", "timeoutSeconds: 6", 'timeoutSeconds: "six"', "is not of type"),
        # A missing required field.
        (
            "base/pdb.yaml",
            "  minAvailable: 1\n  selector:",
            "  minAvailable: 1\n  selectr:",
            "selectr",
        ),
        # A kind that does not exist in that API version.
        (
            "base/hpa.yaml",
            "apiVersion: autoscaling/v2",
            "apiVersion: autoscaling/v9",
            "autoscaling/v9",
        ),
        # A kustomization feature the renderer does not implement is refused, not ignored.
        ("base/kustomization.yaml", "resources:", "namePrefix: x-\nresources:", "namePrefix"),
        # A resource file that is missing.
        ("base/kustomization.yaml", "  - pdb.yaml\n", "  - pdbs.yaml\n", "pdbs.yaml"),
        # A patch that matches nothing.
        (
            "overlays/example/hpa.yaml",
            "name: enterprise-ai-web",
            "name: enterprise-ai-webb",
            "matches no",
        ),
    ],
)
def test_a_broken_manifest_fails_the_check(
    copy_of_manifests: Path,
    capsys: pytest.CaptureFixture[str],
    file: str,
    old: str,
    new: str,
    reported: str,
) -> None:
    _edit(copy_of_manifests / file, old, new)
    directories = [copy_of_manifests / "base", copy_of_manifests / "overlays" / "example"]
    assert checker.main([str(d) for d in directories]) == 1
    assert reported in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_a_renderer_that_disagrees_with_kubectl_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Replacing env lists instead of merging them by name (a renderer bug) loses the
    # worker's other variables in the overlay; kubectl's rendering catches it.
    merge_keys = {k: v for k, v in checker.MERGE_KEYS.items() if k != "env"}
    monkeypatch.setattr(checker, "MERGE_KEYS", merge_keys)
    problems = checker.check([K8S / "overlays" / "example"])
    assert any("renders differently from kubectl kustomize" in p for p in problems), problems


def test_the_overlay_sets_the_image_namespace_and_merges_patches(overlay: list[Obj]) -> None:
    for workload in _workloads(overlay):
        for container in _pod(workload)["containers"]:
            assert container["image"] == "registry.example.com/enterprise-ai:1.0.0"
    for obj in overlay:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "enterprise-ai", obj["metadata"]["name"]
    worker = _container(overlay, "Deployment", "enterprise-ai-worker")
    env = {item["name"]: item for item in worker["env"]}
    assert env["WORKER_CONCURRENCY"]["value"] == "100"
    assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]  # merged, not replaced
    assert worker["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert _one(overlay, "HorizontalPodAutoscaler", "enterprise-ai-web")["spec"]["minReplicas"] == 3


def test_the_make_lint_target_runs_the_checker() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "deploy/k8s/check.py" in lint


# --- What the manifests say -------------------------------------------------------------


def test_web_probes_the_health_endpoints(base: list[Obj]) -> None:
    web = _container(base, "Deployment", "enterprise-ai-web")
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # /readyz answers within about 2 x READINESS_CHECK_TIMEOUT_SECONDS.
    config = _one(base, "ConfigMap", "enterprise-ai")["data"]
    check_timeout = float(config["READINESS_CHECK_TIMEOUT_SECONDS"])
    assert web["readinessProbe"]["timeoutSeconds"] > 2 * check_timeout
    assert web["command"] == ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104


def test_worker_probes_its_metrics_listener(base: list[Obj]) -> None:
    worker = _container(base, "Deployment", "enterprise-ai-worker")
    env = {item["name"]: item.get("value") for item in worker["env"]}
    (port,) = worker["ports"]
    assert int(env["WORKER_METRICS_PORT"]) == port["containerPort"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["tcpSocket"]["port"] == port["name"]


def test_worker_command_is_the_makefiles(base: list[Obj]) -> None:
    command = " ".join(_container(base, "Deployment", "enterprise-ai-worker")["command"])
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "celery -A enterprise_ai worker -Q llm,default --pool threads" in makefile
    assert command.startswith("celery -A enterprise_ai worker -Q llm,default --pool threads ")
    assert "--concurrency $(WORKER_CONCURRENCY)" in command


def test_beat_runs_exactly_once(base: list[Obj]) -> None:
    beat = _one(base, "Deployment", "enterprise-ai-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert _container(base, "Deployment", "enterprise-ai-beat")["command"][:4] == [
        "celery",
        "-A",
        "enterprise_ai",
        "beat",
    ]
    scaled = {
        hpa["spec"]["scaleTargetRef"]["name"] for hpa in _all(base, "HorizontalPodAutoscaler")
    }
    assert scaled == {"enterprise-ai-web", "enterprise-ai-worker"}
    assert "two would enqueue every scheduled task" in (K8S / "base" / "beat.yaml").read_text()


@pytest.mark.parametrize("kustomization", ["base", "overlays/example"])
def test_every_container_has_resources_and_a_locked_down_security_context(
    kustomization: str,
) -> None:
    objects = checker.render(K8S / kustomization)
    workloads = _workloads(objects)
    assert len(workloads) == 4
    for workload in workloads:
        pod = _pod(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            resources = container["resources"]
            for side in ("requests", "limits"):
                assert set(resources[side]) == {"cpu", "memory"}, workload["metadata"]["name"]
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["runAsNonRoot"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            # A read-only root: every directory the process writes is an emptyDir.
            assert "emptyDir" in volumes[mounts["/tmp"]]  # noqa: S108 - a mount path
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            if "PROMETHEUS_MULTIPROC_DIR" in env:
                assert "emptyDir" in volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]]


def test_web_and_worker_have_autoscalers_and_disruption_budgets(base: list[Obj]) -> None:
    for name in ("enterprise-ai-web", "enterprise-ai-worker"):
        deployment = _one(base, "Deployment", name)
        # The autoscaler owns the count: a count in the Deployment would be reset by every
        # `kubectl apply`.
        assert "replicas" not in deployment["spec"]
        hpa = _one(base, "HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["spec"]["minReplicas"] >= 2
        pdb = _one(base, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_ingress_allows_long_lived_sockets_and_chat_sized_bodies(overlay: list[Obj]) -> None:
    from django.conf import settings

    from enterprise_ai.daphne_server import MARGIN_BYTES

    ingress = _one(overlay, "Ingress", "enterprise-ai")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([km]?)", size).groups()  # type: ignore[union-attr]
    limit = int(number) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]
    # Above what the app accepts itself, so that its own error answers near the limit.
    assert limit >= settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert limit >= settings.CHAT_MAX_FRAME_BYTES + MARGIN_BYTES
    assert ingress["spec"]["tls"] == [
        {"hosts": ["chat.example.org"], "secretName": "chat-example-org-tls"}
    ]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = _one(overlay, "Service", backend["name"])
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    config = _one(overlay, "ConfigMap", "enterprise-ai")["data"]
    assert config["TRUSTED_PROXY_COUNT"] == "1"
    assert config["ALLOWED_HOSTS"] == "chat.example.org"


def test_network_policy_admits_the_ingress_controller_and_prometheus(base: list[Obj]) -> None:
    web = _one(base, "NetworkPolicy", "enterprise-ai-web")
    (rule,) = web["spec"]["ingress"]
    namespaces = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in rule["from"]
    }
    assert namespaces == {"ingress-nginx", "monitoring"}
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    every_pod = _one(base, "NetworkPolicy", "enterprise-ai")
    assert every_pod["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "enterprise-ai"}
    }
    assert every_pod["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = {port["port"] for rule in every_pod["spec"]["egress"] for port in rule["ports"]}
    assert ports == {53, 5432, 6379, 443}


# --- Secrets and environment --------------------------------------------------------------


@pytest.mark.parametrize("kustomization", ["base", "overlays/example"])
def test_no_secret_values_only_references(kustomization: str) -> None:
    objects = checker.render(K8S / kustomization)
    assert _all(objects, "Secret") == []
    for path in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in path.read_text(encoding="utf-8")
    for workload in _workloads(objects):
        pod = _pod(workload)
        for container in pod["containers"]:
            env = {item["name"]: item for item in container["env"]}
            assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]
            for name in (
                "SECRET_KEY",
                "AUDIT_HMAC_KEY",
                "ENCRYPTION_MASTER_KEY",
                "METRICS_TOKEN",
                "REDIS_URL",
            ):
                assert "value" not in env.get(name, {}), name


def test_file_secrets_are_mounted_from_the_secret(base: list[Obj]) -> None:
    config = _one(base, "ConfigMap", "enterprise-ai")["data"]
    files = {name: path for name, path in config.items() if name.endswith("_FILE")}
    assert set(files) == {
        "SECRET_KEY_FILE",
        "AUDIT_HMAC_KEY_FILE",
        "ENCRYPTION_MASTER_KEY_FILE",
        "METRICS_TOKEN_FILE",
    }
    for workload in _workloads(base):
        pod = _pod(workload)
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (container,) = pod["containers"]
        for path in files.values():
            directory, key = path.rsplit("/", 1)
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
            assert mount["readOnly"] is True
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "enterprise-ai"
            assert {"key": key, "path": key} in secret["items"]


def test_migrations_run_as_the_table_owner(base: list[Obj]) -> None:
    job = _container(base, "Job", "enterprise-ai-migrate")
    assert job["command"] == ["python", "manage.py", "migrate", "--noinput"]
    secrets_by_workload = {}
    for workload in _workloads(base):
        (container,) = _pod(workload)["containers"]
        env = {item["name"]: item for item in container["env"]}
        secrets_by_workload[workload["metadata"]["name"]] = env["DATABASE_URL"]["valueFrom"][
            "secretKeyRef"
        ]["name"]
    owner = secrets_by_workload.pop("enterprise-ai-migrate")
    assert owner == "enterprise-ai-migrate"
    # The application's pods never see the owning role's credentials.
    assert set(secrets_by_workload.values()) == {"enterprise-ai"}


def _env_names(objects: list[Obj]) -> dict[str, set[str]]:
    """Every variable the manifests set, with the `$(NAME)` references of the command that
    consumes it (empty for a variable only the settings read)."""
    names: dict[str, set[str]] = {}
    for config in _all(objects, "ConfigMap"):
        for name in config["data"]:
            names.setdefault(name, set())
    for workload in _workloads(objects):
        for container in _pod(workload)["containers"]:
            command = " ".join(container.get("command", []) + container.get("args", []))
            referenced = set(re.findall(r"\$\((\w+)\)", command))
            for item in container.get("env", []):
                names.setdefault(item["name"], set()).update(referenced & {item["name"]})
    return names


def test_every_variable_is_documented_and_read_by_the_settings(overlay: list[Obj]) -> None:
    env_example = (ROOT / ".env.example").read_text(encoding="utf-8")
    settings = (ROOT / "enterprise_ai" / "settings.py").read_text(encoding="utf-8")
    assert "Every variable can also be given as NAME_FILE" in env_example
    names = _env_names(overlay)
    assert len(names) > 15
    for name, used_by_command in names.items():
        # .env.example says once that any NAME may be given as NAME_FILE.
        documented_as = name.removesuffix("_FILE")
        assert re.search(rf"^#?\s*{documented_as}=", env_example, re.MULTILINE), (
            f"{name} is not documented in .env.example"
        )
        if used_by_command:
            # Expanded into the container's command line by Kubernetes (`$(NAME)`), as the
            # Makefile's target does with the same variable.
            continue
        # Any NAME can be given as NAME_FILE (enterprise_ai/env.py): the settings read NAME.
        read_as = name.removesuffix("_FILE")
        assert f'"{read_as}"' in settings, f"{read_as} is not read by enterprise_ai/settings.py"


# Stand-ins for the Secret's values: the settings are loaded, nothing is contacted.
_SECRET_STAND_INS = {
    "database-url": "postgres://enterprise_ai@127.0.0.1:9/enterprise_ai",
    "redis-url": "redis://127.0.0.1:9/0",
}


def _pod_environment(objects: list[Obj], workload: Obj, root: Path) -> dict[str, str]:
    """The environment a workload's container gets, its mounts made directories under
    `root` (secret files written there with stand-in values)."""
    configs = {config["metadata"]["name"]: config["data"] for config in _all(objects, "ConfigMap")}
    pod = _pod(workload)
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configs[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = _SECRET_STAND_INS[item["valueFrom"]["secretKeyRef"]["key"]]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    local_paths: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        local = local_paths[mount["mountPath"]] = root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        for item in volumes[mount["name"]].get("secret", {}).get("items", []):
            # The encryption master key is 256 bits exactly; the other secrets are longer.
            size = 32 if item["path"] == "encryption-master-key" else 50
            (local / item["path"]).write_text(secrets.token_urlsafe(size) + "\n")
    for name, value in env.items():
        for mount_path, local in local_paths.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                env[name] = str(local) + value[len(mount_path) :]
    return env


@pytest.mark.parametrize(
    "workload",
    ["enterprise-ai-web", "enterprise-ai-worker", "enterprise-ai-beat", "enterprise-ai-migrate"],
)
def test_the_settings_accept_each_pods_environment(
    overlay: list[Obj], tmp_path: Path, workload: str
) -> None:
    from tests.settings_probe import run_python

    (obj,) = [o for o in _workloads(overlay) if o["metadata"]["name"] == workload]
    env = _pod_environment(overlay, obj, tmp_path / "pod")
    assert "DATABASE_URL" in env and "SECRET_KEY_FILE" in env
    result = run_python(
        tmp_path,
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        unset=["CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR", "WORKER_METRICS_PORT"],
        **env,
    )
    assert result.returncode == 0, result.stderr
