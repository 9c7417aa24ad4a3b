"""Type-check the `scorecast.*` namespace with mypy, under its real module names.

The folders gateway/, protocol/, publishers/, client/ and loadtest/ are installed
as scorecast.gateway, ... through setuptools' package-dir, and the editable
install resolves them with an import hook that mypy cannot follow (with
ignore_missing_imports every `from scorecast.gateway.core import X` would be
Any, hiding most errors). So this script lays the namespace out as mypy
expects it: a tree of symlinks in .venv/typecheck/scorecast/ (a directory link
per mapped folder, a link per entry of scorecast/ itself), brought in line with
the package-dir tables of the pyproject files on every run, so files added
later are seen at once. mypy reads it through `mypy_path` ([tool.mypy] in
pyproject.toml) and checks `-p scorecast`; the paths in its report are turned
back into the real ones (gateway/core.py, not .venv/typecheck/.../core.py).

    .venv/bin/python scripts/typecheck.py                  # everything (make lint)
    .venv/bin/python scripts/typecheck.py gateway/core.py  # the modules of these files
    .venv/bin/python scripts/typecheck.py --warn-unreachable client/state.py
                                           # mypy options as --name or --name=value
"""

from __future__ import annotations

import contextlib
import os
import re
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


def wanted_links(dirs: dict[str, Path]) -> dict[Path, Path]:
    """Each link of the tree -> its target: a package with no mapped
    subpackages is one link to its folder; one with them is a directory of
    links to its entries, beside its mapped subpackages."""
    links: dict[Path, Path] = {}
    for module, folder in dirs.items():
        place = TREE.joinpath(*module.split("."))
        children = {m.rpartition(".")[2] for m in dirs if m.rpartition(".")[0] == module}
        if not children:
            links[place] = folder
            continue
        for entry in folder.iterdir():
            if entry.name not in children and entry.name != "__pycache__":
                links[place / entry.name] = entry
    return links


def build_tree(dirs: dict[str, Path]) -> None:
    """Bring TREE in line with the package-dir tables: links made, fixed or
    removed as needed (a no-op when nothing changed; safe to run twice at once)."""
    links = wanted_links(dirs)
    keep = set(links) | {parent for link in links for parent in link.parents}
    # stale entries go; the walk never enters a link, so nothing it points to is touched
    for top, folders, files in os.walk(TREE, topdown=False):
        for name in [*folders, *files]:
            path = Path(top, name)
            if path in keep:
                continue
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    for link, target in links.items():
        if link.is_symlink() and link.readlink() == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        with contextlib.suppress(FileExistsError):  # another run made it meanwhile
            link.symlink_to(target, target_is_directory=target.is_dir())


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
