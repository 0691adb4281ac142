"""Deployment files, checked by parsing them (Docker cannot run here): compose.yaml, Dockerfile, .env.example,
README.md and .ci/run.

These tests need no service; they read files only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from nubo.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
STORES = ("postgres", "mongo", "redis", "s3")
NUBO_IMAGE_SERVICES = ("api", "api2", "db-init")
SETTING_NAME = re.compile(r"\b(NUBO_[A-Z0-9_]+|JWT_SECRET|PORT)\b")
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def published_ports(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> published host port spec, from short ("127.0.0.1:8082:80") or long syntax."""
    ports: dict[int, str] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports[int(entry["target"])] = f"{entry.get('host_ip', '')}:{entry['published']}"
        else:
            *host, target = str(entry).split(":")
            ports[int(target.split("/")[0])] = ":".join(host)
    return ports


def host_port(spec: str) -> int:
    return int(spec.rsplit(":", 1)[-1])


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):  # short syntax only waits for "started"
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_compose_has_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_every_service_exists(services: dict[str, dict[str, Any]]) -> None:
    expected = {"api", "api2", "db-init", "postgres", "mongo", "redis", "pgadmin", "mongo-express"}
    assert expected <= set(services), f"missing: {expected - set(services)}"


@pytest.mark.parametrize(
    ("service", "port"), [("api", 8080), ("api2", 8081), ("pgadmin", 8082), ("mongo-express", 8083)]
)
def test_published_ports(services: dict[str, dict[str, Any]], service: str, port: int) -> None:
    hosts = [host_port(spec) for spec in published_ports(services[service]).values()]
    assert port in hosts, f"{service} publishes {hosts}, expected {port}"


def test_api_listens_on_8080_inside(services: dict[str, dict[str, Any]]) -> None:
    assert host_port(published_ports(services["api"])[8080]) == 8080
    assert host_port(published_ports(services["api2"])[8080]) == 8081


def test_store_ports_only_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name in STORES:
        for spec in published_ports(services[name]).values():
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} beyond loopback"


def test_api2_is_behind_a_profile(services: dict[str, dict[str, Any]]) -> None:
    assert services["api2"].get("profiles"), "api2 must be opt-in (profile) for cross-instance tests"
    assert "profiles" not in services["api"]


@pytest.mark.parametrize("service", ["api", "api2"])
def test_api_waits_for_db_init_and_healthy_stores(services: dict[str, dict[str, Any]], service: str) -> None:
    deps = dependencies(services[service])
    assert deps.get("db-init") == "service_completed_successfully"
    for store in STORES:
        assert deps.get(store) == "service_healthy", f"{service} must wait for {store} healthy"


def test_db_init_is_one_shot_nubo_db_init(services: dict[str, dict[str, Any]]) -> None:
    db_init = services["db-init"]
    assert db_init["command"] == ["nubo", "db", "init"]
    assert str(db_init.get("restart", "no")) == "no"
    deps = dependencies(db_init)
    for store in STORES:
        assert deps.get(store) == "service_healthy"


def test_nubo_services_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name].get("image") for name in NUBO_IMAGE_SERVICES}
    builds = {str(services[name].get("build")) for name in NUBO_IMAGE_SERVICES}
    assert len(images) == 1 and None not in images, images
    assert builds == {"."}, builds


@pytest.mark.parametrize("store", STORES)
def test_every_store_has_a_named_volume_and_a_healthcheck(compose: dict[str, Any], store: str) -> None:
    service = compose["services"][store]
    named = [str(v).split(":", 1)[0] for v in service.get("volumes", [])]
    assert any(name in (compose.get("volumes") or {}) for name in named), f"{store} has no named volume"
    test = service.get("healthcheck", {}).get("test")
    assert test and not service["healthcheck"].get("disable"), f"{store} has no healthcheck"


def test_mongo_is_a_single_node_replica_set(services: dict[str, dict[str, Any]]) -> None:
    mongo = services["mongo"]
    assert mongo["image"].startswith("mongo:7")
    command = mongo["command"] if isinstance(mongo["command"], list) else mongo["command"].split()
    assert command[command.index("--replSet") + 1] == "rs0"
    check = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate" in check and "rs0" in check


def test_store_images(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    redis_command = " ".join(services["redis"]["command"])
    assert "--maxmemory " in redis_command


@pytest.mark.parametrize("service", NUBO_IMAGE_SERVICES)
def test_nubo_services_get_store_urls_and_secret(services: dict[str, dict[str, Any]], service: str) -> None:
    env = env_of(services[service])
    assert re.fullmatch(r"postgresql://[^@/]+@postgres:5432/\w+", env["NUBO_POSTGRES_URL"])
    assert env["NUBO_MONGO_URL"].startswith("mongodb://mongo:27017")
    assert "replicaSet=rs0" in env["NUBO_MONGO_URL"]
    assert env["NUBO_REDIS_URL"].startswith("redis://redis:6379")
    assert env["NUBO_ENV"] == "prod"
    # Never a secret baked into the file: it must come from the environment / .env, and be required.
    assert re.fullmatch(r"\$\{JWT_SECRET:\?[^}]+\}", env["JWT_SECRET"]), env["JWT_SECRET"]


def test_postgres_credentials_match_the_api_url(services: dict[str, dict[str, Any]]) -> None:
    pg = env_of(services["postgres"])
    url = env_of(services["api"])["NUBO_POSTGRES_URL"]
    expected = f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert url == expected


def test_admin_uis_point_at_the_stores(services: dict[str, dict[str, Any]]) -> None:
    assert services["pgadmin"]["image"].startswith("dpage/pgadmin4")
    assert "mongo" in env_of(services["mongo-express"])["ME_CONFIG_MONGODB_URL"]
    assert dependencies(services["mongo-express"]).get("mongo") == "service_healthy"


@pytest.mark.parametrize("service", ["api", "api2"])
def test_api_has_a_healthcheck(services: dict[str, dict[str, Any]], service: str) -> None:
    check = " ".join(services[service]["healthcheck"]["test"])
    assert "/readyz" in check or "/healthz" in check


# --- Dockerfile ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(row.split(None, 1)[0].upper(), row.split(None, 1)[1] if " " in row else "") for row in rows]


def test_dockerfile_is_multi_stage(dockerfile: list[tuple[str, str]]) -> None:
    stages = [args for instr, args in dockerfile if instr == "FROM"]
    assert len(stages) >= 2, stages
    copies = [args for instr, args in dockerfile if instr == "COPY"]
    assert any("--from=" in args for args in copies), "the runtime stage must copy from the builder"


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [args.strip() for instr, args in dockerfile if instr == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users


def test_dockerfile_healthcheck_expose_and_cmd(dockerfile: list[tuple[str, str]]) -> None:
    found = dict(dockerfile)
    assert "/healthz" in found["HEALTHCHECK"]
    assert "8080" in found["EXPOSE"].split()
    assert found["CMD"].replace(" ", "") == '["nubo","serve"]'


def test_dockerfile_ships_schema_files(dockerfile: list[tuple[str, str]]) -> None:
    copies = " ".join(args for instr, args in dockerfile if instr == "COPY")
    envs = " ".join(args for instr, args in dockerfile if instr == "ENV")
    for folder, var in (("sql", "NUBO_SQL_DIR"), ("mongo", "NUBO_MONGO_DIR")):
        assert re.search(rf"(^|\s){folder}/?\s", copies), f"{folder}/ not copied"
        assert var in envs, f"{var} not set in the image"


def test_dockerignore_keeps_build_inputs() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".env", ".services"} <= ignored
    assert not {"nubo", "sql", "mongo", "pyproject.toml", "README.md"} & ignored


# --- .env.example -------------------------------------------------------------------------------------------


def example_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := ENV_LINE.match(line.strip()):
            entries[match.group(1)] = match.group(2)
    return entries


def names_read_by_nubo() -> set[str]:
    return set(SETTING_NAME.findall((ROOT / "nubo" / "settings.py").read_text()))


def test_env_example_documents_every_setting() -> None:
    missing = names_read_by_nubo() - set(example_entries())
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_names_are_all_read_somewhere() -> None:
    """No stale variable: each documented name is read by nubo/ or interpolated by compose.yaml."""
    sources = " ".join(path.read_text() for path in (ROOT / "nubo").rglob("*.py"))
    sources += (ROOT / "compose.yaml").read_text()
    stale = [name for name in example_entries() if not re.search(rf"\b{name}\b", sources)]
    assert not stale, f".env.example documents variables nothing reads: {stale}"


def test_env_example_defaults_are_the_real_defaults(tmp_path: Path) -> None:
    """Uncommenting every line gives exactly the built-in defaults (the file says comments show them)."""
    lines = [f"{name}={value}" for name, value in example_entries().items() if SETTING_NAME.fullmatch(name)]
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines) + "\n")
    loaded = load_settings({}, env_file=env_file)
    assert loaded == Settings(), "a default in .env.example differs from nubo/settings.py"


# --- README and CI ------------------------------------------------------------------------------------------


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up --build" in readme
    assert "scripts/test" in readme


def test_readme_documents_every_cli_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in (
        "nubo serve",
        "nubo db init",
        "nubo db purge",
        "nubo cache inspect",
        "nubo cache flush",
        "nubo token",
        "nubo chat",
        "bench/run",
    ):
        assert command in readme, f"README does not mention `{command}`"


def test_ci_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert ci.is_file(), ".ci/run is missing"
    lines = [line.split("#", 1)[0] for line in ci.read_text().splitlines()]
    calls = [line for line in lines if re.search(r"(^|[\s/\"'])scripts/test\b", line)]
    assert calls, ".ci/run does not call scripts/test"
