"""The image (`Dockerfile`, `.dockerignore`) checked against the code, without a Docker engine.

This machine cannot build the image, so what the build would do is proven piece by piece:
the Dockerfile is parsed and every command it runs is checked against the product (the
management commands and their flags, the Celery app, the requirement files, the probe path,
STATIC_ROOT); the build context is computed from `.dockerignore` with Docker's matching rules;
and the collectstatic step runs here, as the Dockerfile writes it, on a copy of that context,
proving that it works on the production path without a real service and bakes no secret
(`.local/secret_key`, `.local/audit_hmac_key`) into the image.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Packages that compile code; none may be installed in the final stage.
COMPILERS = ("gcc", "g++", "cpp", "clang", "make", "build-essential", "libc6-dev", "binutils")
# Inside a container the web process listens on every interface of its own network namespace.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


# --- a small Dockerfile parser -----------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, or None for the shell form."""
        text = self.arguments.strip()
        if not text.startswith("["):
            return None
        value = ast.literal_eval(text)
        assert isinstance(value, list)
        return [str(item) for item in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def args(self) -> dict[str, str]:
        """ARG defaults of this stage."""
        values: dict[str, str] = {}
        for instruction in self.all("ARG"):
            name, _, default = instruction.arguments.partition("=")
            values[name.strip()] = default.strip()
        return values

    def env(self) -> dict[str, str]:
        """ENV of this stage (the `NAME=value ...` form only, which is what the file uses)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.arguments):
                name, sep, value = token.partition("=")
                assert sep, f"ENV must use the NAME=value form: {instruction.arguments!r}"
                values[name] = value
        return values


def logical_lines(text: str) -> Iterator[str]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults, and the stages in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            name, _, default = arguments.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return global_args, stages


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text
    )


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = STAGES[-1]
BUILDER = STAGES[0]


def final_run_commands() -> list[str]:
    return [i.arguments for i in FINAL.all("RUN")]


def workdir() -> PurePosixPath:
    (instruction,) = FINAL.all("WORKDIR")
    return PurePosixPath(instruction.arguments)


def collectstatic_run() -> str:
    (command,) = [c for c in final_run_commands() if "collectstatic" in c]
    return command


def leading_assignments(command: str) -> dict[str, str]:
    """The `NAME=value` words in front of a shell command (its own environment)."""
    values: dict[str, str] = {}
    for word in shlex.split(command):
        name, sep, value = word.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            break
        values[name] = value
    return values


# --- .dockerignore, with Docker's matching rules -----------------------------------------------


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line: `*` and `?` stay within a path segment, `**` spans
    any number of them, a leading `!` re-includes; patterns are relative to the context."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((exception, re.compile(regex + r"\Z")))
    return patterns


PATTERNS = ignore_patterns()


def excluded(path: str) -> bool:
    """Whether a file at this context-relative path is left out of the build context: the
    last pattern matching the path or one of its parent directories decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exception, regex in PATTERNS:
        if any(regex.match(candidate) for candidate in candidates):
            verdict = not exception
    return verdict


def build_context() -> list[str]:
    """Every file of the working tree the build would send (the `.git` and `.venv` trees are
    skipped for speed: test_dockerignore_keeps_local_state_out proves they are excluded)."""
    files: list[str] = []
    for directory, subdirectories, names in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT)
        if relative == Path("."):
            subdirectories[:] = [d for d in subdirectories if d not in {".git", ".venv"}]
        for name in names:
            path = (relative / name).as_posix()
            if not excluded(path):
                files.append(path)
    return sorted(files)


# --- the stages --------------------------------------------------------------------------------


def test_the_image_is_built_in_two_stages_on_a_pinned_slim_python_311() -> None:
    assert len(STAGES) >= 2
    assert BUILDER.name == "builder"
    for stage in STAGES:
        # A full version and a Debian release in the tag: a rebuild gets the same base.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)", stage.base), stage.base
    # The final stage starts from the slim base again, not from the builder.
    assert FINAL.base == BUILDER.base
    assert FINAL.name != "builder"


def test_the_final_stage_installs_no_compiler() -> None:
    # The builder has the compilers, so this test is about leaving them behind...
    builder_runs = " ".join(i.arguments for i in BUILDER.all("RUN"))
    assert "build-essential" in builder_runs
    # ...the final stage installs no system package at all...
    for command in final_run_commands():
        assert not re.search(r"\b(apt-get|apt|apk|dnf|yum)\b", command), command
        for compiler in COMPILERS:
            assert not re.search(rf"(?<![\w-]){re.escape(compiler)}(?![\w-])", command), command
    # ...and takes only the venv from the builder.
    copies_from_builder = [
        i.arguments for i in FINAL.all("COPY") if i.arguments.startswith("--from=")
    ]
    assert copies_from_builder == ["--from=builder /opt/venv /opt/venv"]
    assert FINAL.env()["PATH"].startswith("/opt/venv/bin:")


def test_the_builder_installs_the_production_requirements_it_copies() -> None:
    copied: dict[str, str] = {}  # destination path -> source in the context
    for instruction in BUILDER.all("COPY"):
        *sources, destination = instruction.arguments.split()
        for source in sources:
            assert (ROOT / source).is_file(), f"COPY {source}: no such file"
            assert not excluded(source), f"COPY {source}: .dockerignore leaves it out"
            copied[str(PurePosixPath(destination) / PurePosixPath(source).name)] = source
    (install,) = [i.arguments for i in BUILDER.all("RUN") if "pip install" in i.arguments]
    (requirement,) = re.findall(r"-r\s+(\S+)", install)
    assert copied[requirement] == "requirements/prod.txt"
    # Files it includes (`-r base.txt`) are copied beside it, recursively.
    pending = [requirement]
    while pending:
        in_image = PurePosixPath(pending.pop())
        in_context = ROOT / copied[str(in_image)]
        for line in in_context.read_text(encoding="utf-8").splitlines():
            if line.startswith("-r "):
                included = str(in_image.parent / line.split()[1])
                assert included in copied, f"{in_context.name} includes {line}: not copied"
                pending.append(included)
    # Development tools never go into the image.
    assert "requirements/dev.txt" not in copied.values()


def test_the_app_runs_as_a_fixed_non_root_user() -> None:
    args = FINAL.args()
    (user,) = FINAL.all("USER")
    uid, _, gid = expand(user.arguments, args).partition(":")
    assert uid.isdigit() and gid.isdigit(), "USER names numeric ids (runAsNonRoot can check)"
    assert int(uid) != 0 and int(gid) != 0
    (create,) = [c for c in final_run_commands() if "useradd" in c]
    assert f'--uid "{user.arguments.split(":")[0]}"' in create
    assert f'--gid "{user.arguments.split(":")[1]}"' in create
    # Nothing after USER runs as root, and the code stays root's (read-only for the app).
    position = FINAL.instructions.index(user)
    assert not [i for i in FINAL.instructions[position:] if i.keyword in {"RUN", "COPY"}]
    assert not [i for i in FINAL.all("COPY") if "--chown" in i.arguments]


def test_the_default_command_is_the_web_process_on_the_exposed_port() -> None:
    (cmd,) = FINAL.all("CMD")
    argv = cmd.exec_form()
    assert argv == ["python", "manage.py", "serve", "--host", ALL_INTERFACES, "--port", "8000"]
    # `serve` is the product's command and accepts exactly these flags.
    from django.core.management import get_commands, load_command_class

    app = get_commands()["serve"]
    assert app == "accounts"
    parser = load_command_class(app, "serve").create_parser("manage.py", "serve")
    options = parser.parse_args(argv[3:])
    assert (options.host, options.port) == (ALL_INTERFACES, "8000")
    (expose,) = FINAL.all("EXPOSE")
    assert expose.arguments == options.port
    assert not FINAL.all("ENTRYPOINT"), "worker and beat override CMD alone"


def test_the_health_check_asks_the_products_liveness_probe(client: Client) -> None:
    from observability import health
    from observability.middleware import PROBES

    (check,) = FINAL.all("HEALTHCHECK")
    options, _, command = check.arguments.partition("CMD ")
    argv = Instruction("CMD", command).exec_form()
    assert argv is not None and argv[:2] == ["python", "-c"]
    ast.parse(argv[2])  # valid Python
    assert "urllib.request" in argv[2], "python's urllib: the slim image has no curl"
    (url,) = re.findall(r"'(http://[^']+)'", argv[2])
    assert url == "http://127.0.0.1:8000/healthz"
    assert PROBES["/healthz"] is health.healthz
    # Liveness answers on the address the check uses, whatever ALLOWED_HOSTS says.
    response = client.get("/healthz", HTTP_HOST="127.0.0.1:8000")
    assert response.status_code == 200
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout and int(re.findall(r"timeout=(\d+)\)", argv[2])[0]) < int(timeout.group(1))


def test_static_root_is_where_the_settings_look_for_it() -> None:
    from django.conf import settings

    env = FINAL.env()
    default = Path(settings.BASE_DIR, "staticfiles").relative_to(settings.BASE_DIR)
    assert env["STATIC_ROOT"] == str(workdir() / default.as_posix())
    source = (ROOT / "enterprise_ai" / "settings.py").read_text(encoding="utf-8")
    assert 'env.str("STATIC_ROOT"' in source, "the settings read STATIC_ROOT"


def test_collectstatic_runs_on_the_production_path_with_throwaway_values_only() -> None:
    run = collectstatic_run()
    own = leading_assignments(run)
    # The production path (STATIC_ROOT exists only there), without a reachable service...
    assert own["DATABASE_URL"].startswith("postgres://")
    assert "@127.0.0.1:9/" in own["DATABASE_URL"]  # the discard port: nothing answers
    # ...and with both keys given, so the settings generate neither...
    for name in ("SECRET_KEY", "AUDIT_HMAC_KEY", "ENCRYPTION_MASTER_KEY"):
        assert own[name].startswith("build-only-"), name
        assert len(own[name]) >= 32
    # ...into a LOCAL_DATA_DIR the same RUN proves untouched.
    assert f"test ! -e {own['LOCAL_DATA_DIR']}" in run
    # The values belong to that RUN only: none is in the image's environment.
    image_env = {**FINAL.env(), **FINAL.args()}
    for name in ("DATABASE_URL", "SECRET_KEY", "AUDIT_HMAC_KEY", "ALLOWED_HOSTS", "REDIS_URL"):
        assert name not in image_env
    # The command is the product's.
    from django.core.management import get_commands

    assert get_commands()["collectstatic"] == "django.contrib.staticfiles"
    assert "manage.py collectstatic --noinput" in run


# --- the build context -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".local/secret_key",
        ".local/audit_hmac_key",
        ".local/db.sqlite3",
        ".git/HEAD",
        ".env",
        ".env.example",
        "accounts/__pycache__/models.cpython-311.pyc",
        "accounts/models.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        ".mypy_cache/3.11/cache.db",
        ".hypothesis/examples/x",
        "test-artifacts/trace.zip",
        "bench/results/chat.json",
        "bench-results/chat.json",
        "bench/chat_bench.py",
        "tests/test_dispatch.py",
        "accounts/tests/test_models.py",
        "conftest.py",
        "staticfiles/admin/css/base.css",
        "deploy/nginx/certs/server.key",
        "requirements/dev.txt",
        "docs/configuration.md",
        "Dockerfile",
        "enterprise_ai/.env",
    ],
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert excluded(path)


def test_dockerignore_sends_every_app_and_the_files_the_product_reads() -> None:
    from django.conf import settings

    for app in settings.INSTALLED_APPS:
        package = app.split(".")[0]
        if (ROOT / package).is_dir():
            assert not excluded(f"{package}/__init__.py"), package
            assert not excluded(f"{package}/apps.py"), package
    for needed in ("manage.py", "requirements/prod.txt", "requirements/base.txt"):
        assert not excluded(needed), needed
    for directory in ("static", "templates", "accounts/management/commands"):
        for path in (ROOT / directory).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert not excluded(path.relative_to(ROOT).as_posix()), path


# --- the collectstatic step, as the Dockerfile runs it -----------------------------------------


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the build context laid out as WORKDIR is in the image."""
    app = tmp_path_factory.mktemp("image") / "app"
    for path in build_context():
        target = app / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
    return app


def image_environment(app: Path, home: Path) -> dict[str, str]:
    """The final stage's ENV with the image's paths moved into the copy (nothing inherited
    from this shell, so no developer service or secret leaks in)."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    for name, value in FINAL.env().items():
        if name in {"PATH", "VIRTUAL_ENV"}:
            continue
        env[name] = value.replace(str(workdir()), str(app))
    env["LOCAL_DATA_DIR"] = str(home / "image-local-data-dir")
    return env


def test_the_build_context_holds_no_test_and_no_secret(image_tree: Path) -> None:
    files = [p.relative_to(image_tree).as_posix() for p in image_tree.rglob("*") if p.is_file()]
    assert "manage.py" in files
    assert not [f for f in files if "/tests/" in f or f.startswith("tests/")]
    assert not [f for f in files if PurePosixPath(f).name in {"secret_key", "audit_hmac_key"}]
    assert not [f for f in files if f.endswith((".sqlite3", ".pyc", ".pem", ".key"))]


def test_collectstatic_as_built_gathers_the_static_files_and_writes_no_secret(
    image_tree: Path, tmp_path: Path
) -> None:
    run = collectstatic_run()
    local = leading_assignments(run)["LOCAL_DATA_DIR"]
    moved_local = tmp_path / "collectstatic-local"
    command = run.replace(local, str(moved_local)).replace(str(workdir()), str(image_tree))
    env = image_environment(image_tree, tmp_path)
    result = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=image_tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    static_root = Path(env["STATIC_ROOT"])
    assert (static_root / "admin" / "css" / "base.css").is_file()
    for source in (ROOT / "static").rglob("*"):
        if source.is_file():
            assert (static_root / source.relative_to(ROOT / "static")).is_file(), source
    # No key, database or log was generated anywhere: not in the build-only directory (the
    # RUN's own `test ! -e` passed), not in the image's LOCAL_DATA_DIR, not in the tree.
    assert not moved_local.exists()
    assert not Path(env["LOCAL_DATA_DIR"]).exists()
    assert not (image_tree / ".local").exists()
    generated = {"secret_key", "audit_hmac_key", "db.sqlite3"}
    assert not [p for p in image_tree.rglob("*") if p.name in generated]


def test_worker_and_beat_find_their_tasks_in_the_image_tree(
    image_tree: Path, tmp_path: Path
) -> None:
    """`celery -A enterprise_ai worker|beat` load this app; every routed and scheduled task
    must be importable from what the image holds."""
    env = image_environment(image_tree, tmp_path)
    env.update(
        DATABASE_URL="postgres://probe@127.0.0.1:9/probe",
        REDIS_URL="redis://127.0.0.1:9/0",
        SECRET_KEY="probe-only-not-a-secret-0123456789abcdef",
        AUDIT_HMAC_KEY="probe-only-not-a-secret-0123456789abcdef",
        ENCRYPTION_MASTER_KEY="test-only-encryption-key-not-for-production",
        ALLOWED_HOSTS="probe.invalid",
    )
    probe = (
        "import django; django.setup()\n"
        "from enterprise_ai import celery_app as app\n"
        "from django.conf import settings\n"
        "app.loader.import_default_modules()\n"
        "names = set(settings.CELERY_TASK_ROUTES)"
        " | {e['task'] for e in settings.CELERY_BEAT_SCHEDULE.values()}\n"
        "missing = sorted(n for n in names if n not in app.tasks)\n"
        "assert not missing, missing\n"
        "print(app.main, len(names))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=image_tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "enterprise_ai"
    assert not (image_tree / ".local").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
def test_the_health_check_passes_against_the_web_process_of_the_image_tree(
    image_tree: Path, tmp_path: Path
) -> None:
    """The HEALTHCHECK command, run as written (only the port moved), exits 0 while the
    image's web command serves from the image's files, and 1 once it has stopped. The tree is
    run the documented try-out way (embedded default): no service is needed for liveness."""
    port = str(free_port())
    env = image_environment(image_tree, tmp_path)
    env.pop("STATIC_ROOT")
    (check,) = FINAL.all("HEALTHCHECK")
    argv = Instruction("CMD", check.arguments.partition("CMD ")[2]).exec_form()
    assert argv is not None
    check_argv = [sys.executable, *(a.replace(":8000/", f":{port}/") for a in argv[1:])]
    (cmd,) = FINAL.all("CMD")
    web = cmd.exec_form()
    assert web is not None
    web = [sys.executable, *web[1:]]
    web[web.index("--host") + 1] = "127.0.0.1"  # loopback here: nothing else can reach it
    web[web.index("--port") + 1] = port
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=image_tree,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = tmp_path / "web.log"
    with log.open("wb") as output:
        server = subprocess.Popen(web, cwd=image_tree, env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 30
        while True:
            healthy = subprocess.run(check_argv, env=env, capture_output=True, timeout=10)
            if healthy.returncode == 0:
                break
            assert healthy.returncode == 1, healthy.stderr  # 2 is reserved by Docker
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    stopped = subprocess.run(check_argv, env=env, capture_output=True, timeout=10)
    assert stopped.returncode == 1


# --- the documentation -------------------------------------------------------------------------


def test_the_readme_documents_the_processes_as_the_makefile_and_the_image_run_them() -> None:
    readme = (ROOT / "docker" / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    # The worker's flags are `make worker`'s.
    (worker,) = re.findall(
        r"\$\(BIN\)/(celery -A enterprise_ai worker [^$]+)--concurrency", makefile
    )
    flat = " ".join(readme.replace("\\\n", " ").split())
    assert " ".join(worker.replace("\\", " ").split()) + " --concurrency 200" in flat
    assert "WORKER_CONCURRENCY" in FINAL.env()
    # The web command is the image's CMD; beat writes its schedule where it may write.
    (cmd,) = FINAL.all("CMD")
    assert " ".join(cmd.exec_form() or []) in readme
    assert "celery -A enterprise_ai beat --loglevel=INFO --schedule /tmp/" in readme
    uid, _, gid = expand(FINAL.all("USER")[0].arguments, FINAL.args()).partition(":")
    assert f"UID {uid}, GID {gid}" in readme
    assert f"`{FINAL.base}`" in readme
    assert FINAL.env()["STATIC_ROOT"] in readme
