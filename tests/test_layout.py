"""The layout's promises (issue 13): one import namespace, imports that only
point down, and a client that installs and runs on its own."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import RawPublisher, ws_url

REPO = Path(__file__).resolve().parents[1]
RUNTIME = ("gateway", "protocol", "publishers", "client")
# the command line, and the tools for SREs: never imported by what they run
ABOVE_RUNTIME = ("scorecast.cli", "scorecast.dev", "scorecast.cluster", "scorecast.loadtest")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offenders(folders: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in _imports(path):
                if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                    found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


def test_every_module_imports_inside_the_one_namespace():
    generic = ("gateway", "protocol", "publishers", "loadtest", "client")
    folders = (*RUNTIME, "loadtest", "scorecast", "tests")
    assert _offenders(folders, generic) == []


def test_the_runtime_never_imports_the_command_line_or_the_load_tools():
    assert _offenders(RUNTIME, ABOVE_RUNTIME) == []


def test_the_protocol_imports_no_other_part():
    parts = ("scorecast.gateway", "scorecast.publishers", "scorecast.client", "scorecast.cli")
    assert _offenders(("protocol",), parts) == []


@pytest.mark.slow
async def test_the_client_installs_alone_and_connects(tmp_path, gateway, js):
    """`pip install ./client` into a fresh venv: no nats-py, aiohttp or
    prometheus-client, and it follows a topic on a real gateway."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(REPO / "client")],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    await RawPublisher(js).publish("match.1", {"home": 1}, kind="goal")
    script = textwrap.dedent(
        f"""
        import asyncio, importlib.util
        for server_only in ("nats", "aiohttp", "prometheus_client", "scorecast.gateway"):
            assert importlib.util.find_spec(server_only.split(".")[0]) is None or (
                server_only.startswith("scorecast.") and
                importlib.util.find_spec(server_only) is None), server_only
        from scorecast.client import ScorecastClient

        async def main():
            async with ScorecastClient({ws_url(gateway)!r}, topics=["match.1"]) as client:
                async for update in client.updates():
                    print(update.topic, update.seq, update.state)
                    return

        asyncio.run(asyncio.wait_for(main(), 20))
        """
    )
    process = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        script,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().startswith("match.1 1 {'home': 1}")


def test_without_the_load_tools_their_commands_say_how_to_get_them(monkeypatch, capsys):
    """The runtime wheel has no scorecast.loadtest (loadtest/pyproject.toml):
    `scorecast storm` then names the install, one line, exit 2."""
    from scorecast.cli import main

    for name in [n for n in sys.modules if n.startswith("scorecast.loadtest")] + [
        "scorecast.loadtest"
    ]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(SystemExit) as stopped:
        main(["storm", "--connections", "10"])
    assert stopped.value.code == 2
    assert "pip install ./loadtest" in capsys.readouterr().err


def test_a_runtime_command_does_not_load_the_load_tools():
    """`scorecast gateway --help` (any command but storm, bench, report)
    never imports scorecast.loadtest, whether it is installed or not."""
    script = (
        "import sys\n"
        "from scorecast.cli import main\n"
        "try:\n"
        "    main(['gateway', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('scorecast.loadtest'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
