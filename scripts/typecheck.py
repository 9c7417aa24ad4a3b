"""Type-check the `scorecast.*` namespace with mypy, under its real module names.

The folders gateway/, protocol/, publishers/, client/ and loadtest/ are installed
as scorecast.gateway, ... through setuptools' package-dir, and the editable
install resolves them with an import hook that mypy cannot follow. So this
script lays the namespace out as mypy expects it: a tree of symlinks in
.venv/typecheck/scorecast/ (a directory link per mapped folder, a link per
entry of scorecast/ itself), rebuilt from the package-dir tables of the
pyproject files on every run, so files added later are seen at once. mypy
reads it through `mypy_path` ([tool.mypy] in pyproject.toml) and checks
`-p scorecast`; the paths in its report are turned back into the real ones
(gateway/core.py, not .venv/typecheck/scorecast/gateway/core.py).

    .venv/bin/python scripts/typecheck.py                  # everything (make lint)
    .venv/bin/python scripts/typecheck.py gateway/core.py  # the modules of these files
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".venv" / "typecheck"
# Every distribution built from this repository, each with its own package-dir.
PYPROJECTS = ("pyproject.toml", "loadtest/pyproject.toml", "client/pyproject.toml")
TOP = "scorecast"
_PATH = re.compile(r"^([^:\s]+\.pyi?)(?=:)")


def package_dirs() -> dict[str, Path]:
    """Module name -> the folder it is installed from, over all distributions."""
    found: dict[str, Path] = {}
    for name in PYPROJECTS:
        pyproject = ROOT / name
        table = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
        for module, folder in table.items():
            path = (pyproject.parent / folder).resolve()
            if found.setdefault(module, path) != path:
                sys.exit(f"typecheck: {module} maps to {found[module]} and to {path}")
    return found


def build_tree(dirs: dict[str, Path]) -> None:
    """Symlink each mapped package to its folder under TREE (a real directory of
    per-entry links where a package has mapped subpackages of its own)."""
    shutil.rmtree(TREE, ignore_errors=True)
    for module in sorted(dirs):
        target = TREE.joinpath(*module.split("."))
        children = {m.rsplit(".", 1)[1] for m in dirs if m.rpartition(".")[0] == module}
        if not children:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(dirs[module], target_is_directory=True)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for entry in dirs[module].iterdir():
            if entry.name not in children and entry.name != "__pycache__":
                (target / entry.name).symlink_to(entry)


def module_of(file: str, dirs: dict[str, Path]) -> str:
    """The dotted module name a source file is installed under."""
    path = Path(file).resolve()
    best = max(
        (m for m, d in dirs.items() if path.is_relative_to(d)),
        key=lambda m: len(dirs[m].parts),
        default=None,
    )
    if best is None or path.suffix != ".py":
        sys.exit(f"typecheck: {file} is not a module of the {TOP} namespace")
    rest = path.relative_to(dirs[best]).with_suffix("").parts
    if rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join((best, *rest))


def real_paths(report: str, cwd: Path) -> str:
    """Report paths inside TREE (relative to ROOT) as the files' own, from cwd."""

    def fix(match: re.Match[str]) -> str:
        path = ROOT / match.group(1)
        if TREE not in path.parents:
            return match.group(1)
        return os.path.relpath(path.resolve(), cwd)

    return "\n".join(_PATH.sub(fix, line) for line in report.split("\n"))


def main(argv: list[str]) -> int:
    dirs = package_dirs()
    build_tree(dirs)
    options = [a for a in argv if a.startswith("-")]
    files = [a for a in argv if not a.startswith("-")]
    targets = [f"-m={module_of(f, dirs)}" for f in files] or [f"-p={TOP}"]
    cwd = Path.cwd()
    os.chdir(ROOT)  # mypy_path and cache_dir in pyproject.toml are relative to it
    out, err, status = api.run([*options, *targets])
    sys.stdout.write(real_paths(out, cwd))
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
