"""`checked_workdir`: the host directory a sandboxed command may write, refused when binding it
read-write would expose the system or the interpreter; `git_metadata`: the part of it the
command may only read."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def python_roots(python: Path) -> list[Path]:
    """The directories holding `python`'s installation: its prefix, resolved and as named.
    A directory above a link to the interpreter is one only if it is an installation or a
    virtual environment: codeyard started as `~/bin/python` (or uv's `~/.local/bin/python3.12`)
    bound the whole home directory, keys and all, into every sandbox."""
    named = {python.parent.parent, Path(os.path.realpath(python)).parent.parent}
    candidates = {path for path in named if _is_python_prefix(path)}
    if python == Path(sys.executable):
        for prefix in (sys.prefix, sys.base_prefix):
            candidates |= {Path(prefix), Path(os.path.realpath(prefix))}
    roots: list[Path] = []
    covered = [Path("/usr")]
    for candidate in sorted(candidates, key=lambda p: len(p.parts)):
        if len(candidate.parts) < 2 or any(candidate.is_relative_to(c) for c in covered):
            continue
        roots.append(candidate)
        covered.append(candidate)
    return roots


def _is_python_prefix(path: Path) -> bool:
    """Whether `path` holds a Python installation (its standard library) or is a virtual
    environment's root."""
    return (path / "pyvenv.cfg").is_file() or any(path.glob("lib/python3*/os.py"))


def checked_workdir(workdir: Path, also_protected: Iterable[Path] = ()) -> Path:
    """`workdir` resolved; raises when it is missing, not a directory, or holds system
    directories (/usr, /etc, /bin...) or `also_protected`, which the command could then change."""
    resolved = Path(workdir).resolve(strict=True)
    if not resolved.is_dir():
        raise NotADirectoryError(f"sandbox workdir is not a directory: {workdir}")
    protected = [Path("/usr"), Path("/etc"), *map(Path, SYSTEM_DIRS), *also_protected]
    if resolved == Path("/") or any(p.is_relative_to(resolved) for p in protected):
        raise ValueError(
            f"refusing {workdir} as a sandbox workdir: it contains system or interpreter "
            "directories that would become writable inside the sandbox"
        )
    return resolved


def git_metadata(workdir: Path) -> Path | None:
    """`workdir`'s `.git` directory, which backends bind read-only over the read-write workdir;
    None when there is none (or it is a symlink or a file, which no checkout of ours makes).

    Hooks and settings in it (`core.fsmonitor`, `core.hooksPath`, a `filter` or `diff.external`)
    are programs git runs: written by the sandboxed command, they would run on the host as soon
    as anything ran git on the tree afterwards. Nothing does today; this keeps it that way."""
    candidate = workdir / ".git"
    if candidate.is_symlink() or not candidate.is_dir():
        return None
    return candidate
