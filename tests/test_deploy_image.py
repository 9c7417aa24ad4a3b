"""The Dockerfile and its build context, checked without a container engine.

The Dockerfile is read by the `dockerfile` package, which wraps BuildKit's own
Go parser. The build context is what `.dockerignore` lets through (docker-py's
implementation of the same rules); the project is then built into a wheel from
exactly that context, as the image's `pip install .` would, and the wheel must
hold every package and the `scorecast` entry point.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dockerfile
import pytest
from docker.utils.build import exclude_paths

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "protocol", "publishers", "scorecast", "loadtest", "client")


def _installed_as(package: str) -> str:
    """Every folder is installed inside the one scorecast namespace."""
    return "scorecast/__init__.py" if package == "scorecast" else f"scorecast/{package}/__init__.py"


@pytest.fixture(scope="module")
def instructions() -> list:
    return list(dockerfile.parse_file(str(REPO / "Dockerfile")))


def stages(instructions) -> dict[str, list]:
    found: dict[str, list] = {}
    for command in instructions:
        if command.cmd == "FROM":
            name = command.value[2] if len(command.value) == 3 else command.value[0]
            found[name] = current = [command]
        elif found:
            current.append(command)
    return found


def last(stage: list, cmd: str):
    matches = [command for command in stage if command.cmd == cmd]
    return matches[-1] if matches else None


def build_args(instructions) -> dict[str, str]:
    args = {}
    for command in instructions:
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            args[name] = default
    return args


def test_runtime_is_the_default_target(instructions):
    found = stages(instructions)
    assert list(found)[-1] == "runtime", "`docker build .` builds the last stage"
    assert {"base", "build", "runtime", "load"} <= set(found)


def test_based_on_python_slim(instructions):
    base = stages(instructions)["base"][0].value[0]
    for name, default in build_args(instructions).items():
        base = base.replace("${" + name + "}", default)
    assert base.startswith("python:3.11-slim"), base


def test_runtime_runs_scorecast_as_non_root(instructions):
    runtime = stages(instructions)["runtime"]
    entrypoint = last(runtime, "ENTRYPOINT")
    assert entrypoint.json and list(entrypoint.value) == ["scorecast"]
    command = last(runtime, "CMD")
    assert command.json and command.value[0] == "gateway" and "0.0.0.0" in command.value
    user = last(runtime, "USER").value[0]
    assert user.split(":")[0] not in ("root", "0"), user
    assert user.split(":")[0].isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert "10001" in " ".join(stages(instructions)["base"][-1].value)  # the user is created


def test_load_image_runs_locust_as_non_root(instructions):
    load = stages(instructions)["load"]
    assert list(last(load, "ENTRYPOINT").value) == ["locust"]
    assert last(load, "USER").value[0].split(":")[0] == "10001"


def test_copies_from_earlier_stages_only(instructions):
    seen: list[str] = []
    for name, stage in stages(instructions).items():
        for command in stage:
            for flag in command.flags:
                if flag.startswith("--from="):
                    source = flag.removeprefix("--from=")
                    assert source in seen, f"stage {name} copies from {source}, not built before"
        seen.append(name)


def test_the_project_is_installed_with_pip(instructions):
    build = stages(instructions)["build"]
    runs = " ".join(c.value[0] for c in build if c.cmd == "RUN")
    assert "pip install ." in runs
    copies = [c.value for c in build if c.cmd == "COPY"]
    assert (".", ".") in copies


def context_files() -> list[str]:
    patterns = (REPO / ".dockerignore").read_text().splitlines()
    return sorted(exclude_paths(str(REPO), patterns))


def test_build_context_is_small_and_complete():
    files = context_files()
    assert "pyproject.toml" in files
    for package in PACKAGES:
        assert f"{package}/__init__.py" in files, f"{package} is not in the build context"
    assert "loadtest/locustfile.py" in files
    for secret_or_bulk in (".git", ".venv", "tests", ".ci", "docs"):
        assert not [f for f in files if f.split("/")[0] == secret_or_bulk], secret_or_bulk
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def test_the_context_builds_a_complete_wheel(tmp_path):
    """`pip install .` on the build context, short of downloading dependencies."""
    context = tmp_path / "context"
    for name in context_files():
        source = REPO / name
        if source.is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("scorecast-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for package in PACKAGES:
        if package == "loadtest":  # the SREs' tools: a distribution of their own
            assert not any(n.startswith("scorecast/loadtest/") for n in names), names
        else:
            assert _installed_as(package) in names, f"the wheel misses {package}"
    assert "scorecast = scorecast.cli:main" in scripts
    # the files the gateway serves (package data, not Python)
    for path in sorted((REPO / "gateway" / "static").glob("*")):
        assert f"scorecast/gateway/static/{path.name}" in names, f"the wheel misses {path}"
