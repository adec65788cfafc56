"""docker/compose.yaml (and the Kubernetes manifests under deploy/k8s/) checked against the code.

This machine has the docker CLI without the compose plugin and no engine, so `docker compose
config` cannot run here (the last test runs it wherever the plugin exists). Instead the file
is parsed and cross-checked: every command the app's containers run is a real management
command or the Celery app; every port matches what the command serves, its health check
probes and nginx addresses; every variable the app is given is documented in `.env.example`
and read by `enterprise_ai/settings.py` (`NAME_FILE` counts for `NAME`); no value looks like
a secret; `depends_on` targets exist with the health checks and one-shot shapes their
conditions need; named volumes are declared; the secret files are git-ignored; the nginx
template gets every variable it uses; and the secrets command of docs/deployment.md, run
here, makes every secret file the compose file names, consistent with each other.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from django.conf import settings
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
ENV_EXAMPLE = ROOT / ".env.example"
SETTINGS = ROOT / "enterprise_ai" / "settings.py"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "enterprise-ai.conf.template"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

#: What the compose file must run (issue 14).
REQUIRED_SERVICES = {"web-1", "web-2", "worker", "beat", "migrate", "postgres", "redis", "nginx"}
#: The services that must wait for the migrations.
AFTER_MIGRATIONS = {"web-1", "web-2", "worker", "beat"}

_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


# --- reading the files ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def interpolate(value: str) -> str:
    """Compose's interpolation with the defaults (`${NAME:-default}`), `$$` as a `$`."""

    def replace(match: re.Match[str]) -> str:
        op, arg = match.group("op"), match.group("arg")
        return arg if op in {":-", "-"} else ""

    return _INTERPOLATION.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def command(service: dict[str, Any]) -> list[str]:
    raw = service.get("command")
    if raw is None:
        return []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def app_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the root Dockerfile: the product's own processes."""
    return {
        name: service
        for name, service in data["services"].items()
        if isinstance(service.get("build"), dict)
        and (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    }


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document under deploy/k8s/ (none until the manifests land)."""
    documents: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")]):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict):
                documents.append((path, document))
    return documents


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def k8s_containers() -> list[tuple[str, dict[str, Any]]]:
    """(where, container) for every container and init container of every manifest."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path, document in k8s_documents():
        for node in _walk(document):
            for key in ("containers", "initContainers"):
                for container in node.get(key) or []:
                    if isinstance(container, dict) and "name" in container:
                        where = f"{path.relative_to(ROOT)}:{container['name']}"
                        found.append((where, container))
    return found


def k8s_config_maps_in_env() -> dict[str, dict[str, str]]:
    """The ConfigMaps containers take whole as variables (envFrom), by name: their data."""
    referenced = {
        ref["configMapRef"]["name"]
        for _, container in k8s_containers()
        for ref in container.get("envFrom") or []
        if isinstance(ref, dict) and "configMapRef" in ref
    }
    maps: dict[str, dict[str, str]] = {}
    for path, document in k8s_documents():
        if document.get("kind") == "ConfigMap":
            name = document.get("metadata", {}).get("name")
            if name in referenced:
                data = {str(k): str(v) for k, v in (document.get("data") or {}).items()}
                maps.setdefault(name, {}).update(data)
        for generator in document.get("configMapGenerator") or []:
            if generator.get("name") not in referenced:
                continue
            data = maps.setdefault(generator["name"], {})
            for literal in generator.get("literals") or []:
                key, _, value = str(literal).partition("=")
                data[key] = value
            for env_file in generator.get("envs") or []:
                for line in (path.parent / env_file).read_text(encoding="utf-8").splitlines():
                    if line.strip() and not line.lstrip().startswith("#"):
                        key, _, value = line.partition("=")
                        data[key.strip()] = value
    return maps


def k8s_app_containers() -> list[tuple[str, dict[str, Any]]]:
    """Containers running the product (manage.py or the Celery app), not sidecars."""
    return [
        (where, container)
        for where, container in k8s_containers()
        if _runs_product([*container.get("command", []), *container.get("args", [])])
        or "enterprise-ai" in str(container.get("image", ""))
    ]


def _runs_product(argv: list[str]) -> bool:
    text = " ".join(str(part) for part in argv)
    return "manage.py" in text or "enterprise_ai" in text


# --- what the product offers --------------------------------------------------------------------


def documented_variables() -> set[str]:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def settings_source() -> str:
    return SETTINGS.read_text(encoding="utf-8")


def base_name(variable: str) -> str:
    """`NAME_FILE` is `NAME` read from a file (enterprise_ai/env.py)."""
    return variable.removesuffix("_FILE")


def routed_queues() -> set[str]:
    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    queues |= {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    return queues


_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|HMAC_KEY|PRIVATE_KEY|_KEY$)")


def secret_looking(name: str, value: str) -> str | None:
    """Why a variable's literal value looks like a secret, or None."""
    value = value.strip()
    if not value:
        return None
    # A path names a file that holds the secret (EAI_TLS_KEY=/etc/nginx/certs/tls.key).
    if _SECRET_NAME.search(name) and not name.endswith("_FILE") and not value.startswith("/"):
        return "a secret's name with a literal value (use NAME_FILE and a secret)"
    parts = urlsplit(value)
    if parts.scheme and parts.password:
        return "a URL with a password in it"
    if "PRIVATE KEY" in value:
        return "a PEM private key"
    for token in re.findall(r"[A-Za-z0-9_\-+/=]{32,}", value):
        classes = sum(bool(re.search(p, token)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
        if classes >= 3 or re.fullmatch(r"[0-9a-f]{32,}", token):
            return "a long random-looking token"
    return None


def git_ignored(path: Path) -> bool:
    """Whether git ignores the path (for a directory not there yet: what it would hold)."""
    if not path.exists() and not path.suffix:
        return _git_ignored(path) or _git_ignored(path / "any-file")
    return _git_ignored(path)


def _git_ignored(path: Path) -> bool:
    result = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", str(path.relative_to(ROOT))],
        cwd=ROOT,
        check=False,
    )
    return result.returncode == 0


# --- the checks ---------------------------------------------------------------------------------


def test_compose_runs_every_process_of_the_production_path() -> None:
    data = compose()
    assert set(data["services"]) >= REQUIRED_SERVICES, set(data["services"])
    apps = app_services(data)
    assert {"web-1", "web-2", "worker", "beat", "migrate"} <= set(apps)
    # One image for all of them, so web, worker and beat never run different releases.
    assert len({service["image"] for service in apps.values()}) == 1
    for service in apps.values():
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (ROOT / service["build"]["dockerfile"]).is_file()
    assert command(data["services"]["migrate"]) == ["python", "manage.py", "migrate", "--noinput"]


def test_every_command_is_a_management_command_or_the_celery_app() -> None:
    from enterprise_ai.celery import app as celery_app

    commands = get_commands()
    runs: list[tuple[str, list[str]]] = [
        (name, command(service)) for name, service in app_services(compose()).items()
    ]
    runs += [
        (where, [*map(str, c.get("command", [])), *map(str, c.get("args", []))])
        for where, c in k8s_app_containers()
    ]
    assert runs
    subcommands = set()
    for where, argv in runs:
        assert argv, f"{where}: no command (say what the container runs)"
        if "manage.py" in argv:
            position = argv.index("manage.py")
            assert argv[position - 1 : position] == ["python"] or position == 0, (where, argv)
            name = argv[position + 1]
            assert name in commands, f"{where}: manage.py {name} is not a management command"
            continue
        assert argv[0] == "celery", f"{where}: runs {argv[0]!r}, not manage.py or celery"
        app = _option(argv, "-A", "--app")
        assert app == "enterprise_ai" and celery_app.main == "enterprise_ai", (where, app)
        subcommand = next(a for a in argv[1:] if a in {"worker", "beat"})
        subcommands.add(subcommand)
        if subcommand == "worker":
            queues = set((_option(argv, "-Q", "--queues") or "").split(","))
            assert routed_queues() <= queues, f"{where}: consumes {queues}, not every routed queue"
        if subcommand == "beat":
            # The image's working directory belongs to root: the schedule file goes elsewhere.
            assert _option(argv, "-s", "--schedule", required=False) not in {None, ""}, where
    assert {"worker", "beat"} <= subcommands


def _option(argv: list[str], *names: str, required: bool = True) -> str | None:
    for index, part in enumerate(argv):
        for name in names:
            if part == name and index + 1 < len(argv):
                return argv[index + 1]
            if part.startswith(f"{name}="):
                return part.split("=", 1)[1]
    if required:
        raise AssertionError(f"{names[0]} missing from {argv}")
    return None


def _served_port(argv: list[str]) -> int | None:
    if "serve" not in argv:
        return None
    return int(_option(argv, "--port", required=False) or 8000)  # serve's default


def test_every_port_matches_what_the_command_serves() -> None:
    data = compose()
    services = data["services"]
    served: dict[str, int] = {}
    for name, service in app_services(data).items():
        port = _served_port(command(service))
        if port is None:
            assert not service.get("ports") and not service.get("expose"), (
                f"{name} serves nothing but publishes a port"
            )
            continue
        served[name] = port
        assert [str(p) for p in service.get("expose", [])] == [str(port)], name
        assert not service.get("ports"), f"{name}: only nginx is published"
        assert "--host" in command(service) and _option(command(service), "--host") == "0.0.0.0"  # noqa: S104
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe, f"{name}: probes {probe!r}"
    assert {"web-1", "web-2"} <= set(served)

    nginx = environment(services["nginx"])
    upstreams = [nginx["EAI_WEB_1"], nginx["EAI_WEB_2"]]
    assert len(set(upstreams)) == 2
    for upstream in upstreams:
        host, _, upstream_port = upstream.rpartition(":")
        assert served.get(host) == int(upstream_port), (
            f"nginx sends to {upstream}: nothing serves it"
        )
    published = {str(p).rsplit(":", 1)[-1] for p in services["nginx"]["ports"]}
    assert published == {nginx["EAI_HTTPS_PORT"], nginx["EAI_HTTP_PORT"]}

    for where, container in k8s_app_containers():
        argv = [*map(str, container.get("command", [])), *map(str, container.get("args", []))]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}
        if env.get("WORKER_METRICS_PORT", "0") != "0":
            metrics = int(env["WORKER_METRICS_PORT"])
            assert metrics in ports.values(), f"{where}: metrics on {metrics}, not declared"
        port = _served_port(argv)
        if port is not None:
            assert port in ports.values(), f"{where}: serves {port}, declares {ports}"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            check = container.get(probe) or {}
            target = (check.get("httpGet") or check.get("tcpSocket") or {}).get("port")
            if target is not None:
                probed = ports.get(target, target)
                assert probed in ports.values(), f"{where}: {probe} on {target}, not declared"
                if check.get("httpGet"):
                    assert probed == port, f"{where}: {probe} on {target}, serves {port}"


def _app_variables() -> dict[str, list[tuple[str, str]]]:
    """Variable -> [(where, value)] for everything the product's processes are given."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name, service in app_services(compose()).items():
        for variable, value in environment(service).items():
            found.setdefault(variable, []).append((f"compose {name}", value))
    for where, container in k8s_app_containers():
        for entry in container.get("env") or []:
            found.setdefault(entry["name"], []).append((where, str(entry.get("value", ""))))
    for name, data in k8s_config_maps_in_env().items():
        for variable, value in data.items():
            found.setdefault(variable, []).append((f"ConfigMap {name}", value))
    return found


def _expanded_in_commands() -> dict[str, set[str]]:
    """Variables a Kubernetes container's own command line expands (`$(NAME)`), by container."""
    expanded: dict[str, set[str]] = {}
    for where, container in k8s_app_containers():
        argv = " ".join(map(str, [*container.get("command", []), *container.get("args", [])]))
        expanded[where] = set(re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", argv))
    return expanded


def test_every_variable_given_is_documented_and_read_by_the_settings() -> None:
    documented = documented_variables()
    source = settings_source()
    variables = _app_variables()
    # A variable the container's own command expands (the worker's `--concurrency
    # $(WORKER_CONCURRENCY)`) is read there, as `make worker` reads it, not by the settings.
    expanded = set().union(*_expanded_in_commands().values())
    assert {"DATABASE_URL_FILE", "REDIS_URL", "TRUSTED_PROXY_COUNT"} <= set(variables)
    problems = []
    for variable, uses in sorted(variables.items()):
        name = base_name(variable)
        where = ", ".join(sorted({w for w, _ in uses}))
        if name not in documented:
            problems.append(f"{variable} ({where}): not documented in .env.example")
        if f'"{name}"' not in source and variable not in expanded:
            problems.append(f"{variable} ({where}): not read by enterprise_ai/settings.py")
    assert not problems, "\n".join(problems)


def test_every_variable_a_command_expands_is_given_to_its_container() -> None:
    maps = k8s_config_maps_in_env()
    containers = dict(k8s_app_containers())
    for where, names in _expanded_in_commands().items():
        container = containers[where]
        given = {entry["name"] for entry in container.get("env") or []}
        for ref in container.get("envFrom") or []:
            given |= set(maps.get(ref.get("configMapRef", {}).get("name"), {}))
        # Kubernetes leaves an unknown $(NAME) as it is: the process would get the text.
        assert names <= given, f"{where}: expands {sorted(names - given)}, not given"


def test_the_app_runs_behind_one_proxy_on_the_production_path() -> None:
    for name, service in app_services(compose()).items():
        env = environment(service)
        assert env["TRUSTED_PROXY_COUNT"] == "1", name
        assert interpolate(env["ALLOWED_HOSTS"]) == "localhost,127.0.0.1", name
        assert interpolate(env["CSRF_TRUSTED_ORIGINS"]) == "https://localhost", name
        assert "*" not in interpolate(env["ALLOWED_HOSTS"])
        for required in ("DATABASE_URL", "SECRET_KEY", "AUDIT_HMAC_KEY", "ENCRYPTION_MASTER_KEY"):
            assert f"{required}_FILE" in env, f"{name}: {required} is not given as a file"


def test_no_value_looks_like_a_secret() -> None:
    problems = []
    for name, service in compose()["services"].items():
        for variable, value in environment(service).items():
            reason = secret_looking(variable, interpolate(value))
            if reason:
                problems.append(f"compose {name}: {variable}: {reason}")
    for where, container in k8s_containers():
        for entry in container.get("env") or []:
            reason = secret_looking(entry["name"], str(entry.get("value", "")))
            if reason:
                problems.append(f"{where}: {entry['name']}: {reason}")
    for path, document in k8s_documents():
        values: dict[str, Any] = {}
        if document.get("kind") in {"ConfigMap", "Secret"}:
            values = {**(document.get("data") or {}), **(document.get("stringData") or {})}
        for generator in [
            *(document.get("configMapGenerator") or []),
            *(document.get("secretGenerator") or []),
        ]:
            for literal in generator.get("literals") or []:
                key, _, value = str(literal).partition("=")
                values[key] = value
        for key, value in values.items():
            # A Secret's keys are lower-case names (secret-key); judge the value alone.
            reason = secret_looking(key.upper().replace("-", "_"), str(value))
            if reason and not (document.get("kind") == "Secret" and _placeholder(str(value))):
                problems.append(f"{path.relative_to(ROOT)}: {key}: {reason}")
    assert "PRIVATE KEY" not in COMPOSE.read_text(encoding="utf-8")
    assert not problems, "\n".join(problems)


def _placeholder(value: str) -> bool:
    return not value.strip() or bool(re.search(r"change|replace|example|placeholder", value, re.I))


def test_the_secret_detector_catches_what_it_must() -> None:
    assert secret_looking("SECRET_KEY", "x" * 40)
    assert secret_looking("OPENAI_API_KEY", "anything")
    assert secret_looking("DATABASE_URL", "postgres://app:hunter2@db:5432/app")
    assert secret_looking("CHAT_SYSTEM_PROMPT", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z")
    assert secret_looking("X", "-----BEGIN PRIVATE KEY-----")
    assert not secret_looking("SECRET_KEY_FILE", "/run/secrets/secret_key")
    assert not secret_looking("EAI_TLS_KEY", "/etc/nginx/certs/tls.key")
    assert not secret_looking("REDIS_URL", "redis://redis:6379/0")
    assert not secret_looking("REDIS_KEY_PREFIX", "eai")
    assert not secret_looking("ALLOWED_HOSTS", "localhost,127.0.0.1")


def test_every_dependency_exists_in_the_shape_its_condition_needs() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on {target}, which does not exist"
            condition = spec.get("condition", "service_started")
            other = services[target]
            if condition == "service_healthy":
                check = other.get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy; it has no health check"
                )
            elif condition == "service_completed_successfully":
                assert str(other.get("restart", "no")) == "no", f"{target} is not a one-shot"
            else:
                assert condition == "service_started", (name, target, condition)
    for name in AFTER_MIGRATIONS:
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name
    for one_shot in ("migrate", "static"):
        assert str(services[one_shot]["restart"]) == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_health_checks_probe_the_right_things() -> None:
    services = compose()["services"]
    postgres = " ".join(services["postgres"]["healthcheck"]["test"])
    # TCP, as the app connects: the image's first-start server listens on the socket only.
    assert "pg_isready -h 127.0.0.1" in postgres
    redis = services["redis"]
    assert "ping" in " ".join(redis["healthcheck"]["test"])
    # The broker's queued tasks survive a Redis restart.
    assert _option(command(redis), "--appendonly") == "yes"
    worker = " ".join(services["worker"]["healthcheck"]["test"])
    assert "celery -A enterprise_ai inspect ping" in worker
    for name in ("web-1", "web-2"):
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert "urllib.request" in probe and "/healthz" in probe  # liveness, not /readyz


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, target = str(volume).split(":")[:2]
            mounts.append((source, target))
    return mounts


def test_named_volumes_are_declared_and_bind_mounts_exist_or_are_generated() -> None:
    data = compose()
    declared = set(data.get("volumes") or {})
    used = set()
    for name, service in data["services"].items():
        for source, _target in _volume_mounts(service):
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                assert path.exists() or git_ignored(path), f"{name} mounts {source}: missing"
            else:
                assert source in declared, f"{name} mounts volume {source!r}, not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    assert {"postgres-data", "redis-data"} <= declared


def test_secrets_are_files_that_git_ignores_and_every_file_variable_is_mounted() -> None:
    data = compose()
    declared = data["secrets"]
    secrets_dir = COMPOSE.parent / "secrets"
    for name, spec in declared.items():
        path = (COMPOSE.parent / spec["file"]).resolve()
        assert path.parent == secrets_dir, f"secret {name} lives outside docker/secrets/"
        assert git_ignored(path), f"{path.relative_to(ROOT)} is not git-ignored"
    assert not git_ignored(secrets_dir / ".gitkeep")
    assert git_ignored(COMPOSE.parent / "certs" / "tls.key")
    for name, service in data["services"].items():
        mounted = set(service.get("secrets") or [])
        assert mounted <= set(declared), f"{name} mounts undeclared secrets"
        for variable, value in environment(service).items():
            if variable.endswith("_FILE") and value.startswith("/run/secrets/"):
                secret = PurePosixPath(value).name
                assert secret in mounted, f"{name}: {variable} names {secret}, not mounted"


def test_the_nginx_template_gets_every_variable_and_mount_it_uses() -> None:
    if not NGINX_TEMPLATE.exists():
        pytest.skip("deploy/nginx/enterprise-ai.conf.template has not landed yet")
    data = compose()
    nginx = data["services"]["nginx"]
    env = environment(nginx)
    used = set(re.findall(r"\$\{(EAI_[A-Z0-9_]+)\}", NGINX_TEMPLATE.read_text(encoding="utf-8")))
    assert used == set(env), f"template uses {sorted(used)}, compose gives {sorted(env)}"
    mounts = dict((target, source) for source, target in _volume_mounts(nginx))
    templates = [t for t in mounts if t.startswith("/etc/nginx/templates/")]
    assert len(templates) == 1 and templates[0].endswith(".conf.template")
    assert (COMPOSE.parent / mounts[templates[0]]).resolve() == NGINX_TEMPLATE
    certs = {PurePosixPath(env["EAI_TLS_CERT"]).parent, PurePosixPath(env["EAI_TLS_KEY"]).parent}
    assert certs == {PurePosixPath("/etc/nginx/certs")}
    assert mounts["/etc/nginx/certs"] == "./certs"
    # nginx serves the volume that the one-shot collectstatic fills, at the same path.
    assert mounts[env["EAI_STATIC_ROOT"]] == "static"
    static = data["services"]["static"]
    assert command(static) == ["python", "manage.py", "collectstatic", "--noinput"]
    static_root = environment(static)["STATIC_ROOT"]
    assert ("static", static_root) in _volume_mounts(static)
    assert nginx["depends_on"]["static"]["condition"] == "service_completed_successfully"


def _shell_block(after: str) -> str:
    """The first ```sh block after the line containing `after` in docs/deployment.md."""
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    start = text.index(after)
    match = re.search(r"```sh\n(.*?)```", text[start:], flags=re.DOTALL)
    assert match, f"no sh block after {after!r}"
    return match.group(1)


def test_the_documented_secrets_command_makes_every_secret_consistently(tmp_path: Path) -> None:
    script = _shell_block("<!-- compose-secrets -->")
    subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True, timeout=60)
    data = compose()
    made = tmp_path / "docker" / "secrets"
    values = {}
    for name, spec in data["secrets"].items():
        path = (tmp_path / "docker" / spec["file"]).resolve()
        assert path.is_file(), f"the command does not create {spec['file']}"
        values[name] = path.read_text(encoding="utf-8").rstrip("\n")
        assert values[name], name
    assert oct(made.stat().st_mode & 0o777) == "0o700"
    for key in ("secret_key", "audit_hmac_key"):
        assert len(values[key]) >= 32
    postgres = environment(data["services"]["postgres"])
    owner = urlsplit(values["database_owner_url"])
    app = urlsplit(values["database_url"])
    assert owner.username == postgres["POSTGRES_USER"]
    assert owner.password == values["postgres_password"]
    assert app.password == values["postgres_app_password"]
    assert app.username != owner.username
    role = data["configs"]["postgres_app_role"]["content"]
    assert f"CREATE ROLE {app.username} LOGIN" in role
    assert f"FOR ROLE {owner.username} " in role
    for url in (owner, app):
        assert url.hostname == "postgres" and url.port == 5432
        assert url.path == f"/{postgres['POSTGRES_DB']}"
    # Run twice, it keeps what exists (regenerating would lock the app out of its database).
    before = sorted(p.read_bytes() for p in made.iterdir())
    subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True, timeout=60)
    assert sorted(p.read_bytes() for p in made.iterdir()) == before


def test_the_documented_certificate_command_makes_what_nginx_reads(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    script = _shell_block("<!-- compose-certs -->")
    subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True, timeout=60)
    env = environment(compose()["services"]["nginx"])
    for variable in ("EAI_TLS_CERT", "EAI_TLS_KEY"):
        name = PurePosixPath(env[variable]).name
        assert (tmp_path / "docker" / "certs" / name).is_file(), name
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", "docker/certs/tls.crt"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:localhost" in text


def test_the_file_follows_the_compose_specification() -> None:
    """The Compose Specification's JSON schema, as check-jsonschema ships it (no network)."""
    import json
    from importlib import resources

    import jsonschema

    try:
        vendor = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
        schema = json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (which ships the compose-spec schema) is not installed")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if not docker:
        pytest.skip("no docker CLI here")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if version.returncode != 0:
        pytest.skip("the docker CLI here has no compose plugin: the checks above stand in for it")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q", "--no-interpolate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
