"""Applying an LLM's file edits to a git working tree, all or nothing, and the diff they make.

Every edit is checked against the files as the earlier edits leave them before anything is
written, so an edit that does not apply leaves the tree untouched and its `EditError` can go
back to the model as is. The diff comes from git, so `git apply` takes it on the tree as it was.

The diff is what the safety gate reads before a merge (secret scan, path rules), so every change
in it is text: git is told to treat every file as text, and `.gitattributes` edits that would
change how git shows or stores contents (`binary`, `-diff`, drivers, filters) are refused.

Blocking (file I/O and a few short `git` processes): call it from a thread in async code.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from codeyard.agents.outputs import MAX_EDITS, FileEdit, ReplaceText
from codeyard.agents.safe_paths import UnsafePath, workspace_path
from codeyard.workspace.git import NO_PROGRAMS, git_environment

MAX_FILE_BYTES = 1_000_000
GIT_TIMEOUT_SECONDS = 60.0
# Plain, complete diffs whatever the user's git configuration says (prefixes, colour, renames).
# --text: every change as lines of text, even for a file git's attributes call binary; a `GIT
# binary patch` would hide the added content from the safety gate's secret scan and, lacking
# ---/+++ lines, its path from the gate's path rules. (Edits are UTF-8 text without NULs.)
_DIFF_OPTIONS = (
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--no-renames",
    "--no-relative",
    "--text",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)
# `.gitattributes` settings that change how git shows or stores a file's contents: `binary`
# and `-diff` turn a diff into "Binary files differ" or a binary patch; `diff=`, `filter=`,
# `merge=` and `working-tree-encoding=` hand contents to drivers or re-encode them, so what is
# diffed, merged or checked out is not the text the gate read; `-text` is part of `binary`.
# Each name maps to the forms refused: "" set, "-" unset, "=" set to a value.
_REFUSED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "binary": frozenset({"", "="}),
    "diff": frozenset({"-", "="}),
    "text": frozenset({"-"}),
    "filter": frozenset({"", "="}),
    "merge": frozenset({"="}),
    "working-tree-encoding": frozenset({"", "="}),
}


# The attributes that make git store and diff not the text written, however a file comes by
# them: a macro, a `.gitattributes` the repository had, `$GIT_DIR/info/attributes`. With a
# filter driver configured on the machine (git-lfs's, installed globally), the file would be
# committed as a pointer the gate cannot read, its content left on this disk.
_TRANSFORMING_ATTRIBUTES = ("filter", "working-tree-encoding")


class EditError(ValueError):
    """Edits that cannot be applied. `index` is the 0-based position of the edit at fault and
    `path` its path; both are unset when the batch failed as a whole (git refused it)."""

    def __init__(
        self, reason: str, *, index: int | None = None, edit: FileEdit | None = None
    ) -> None:
        self.reason = reason
        self.index = index
        self.path = edit.path if edit is not None else ""
        where = "edits"
        if index is not None and edit is not None:
            shown = edit.path if len(edit.path) <= 200 else edit.path[:200] + "..."
            where = f"edit {index + 1} ({edit.kind} {shown})"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class AppliedEdits:
    """What the edits changed: `diff` is a unified diff (git format, `a/` and `b/` prefixes);
    paths are relative to the repository root, in the order first edited."""

    diff: str
    created: tuple[str, ...]
    modified: tuple[str, ...]


@dataclass
class _Change:
    path: str
    target: Path
    original: bytes | None  # None: the file does not exist yet
    text: str | None  # the content after the edits so far; None while it does not exist
    # Every line of the original ends in CRLF. The model is shown such a file with LF endings
    # (`read_files`), so its edits of it are written with CRLF, as the file's lines are.
    crlf: bool = False


def apply_edits(
    root: Path, edits: Sequence[FileEdit], *, max_file_bytes: int = MAX_FILE_BYTES
) -> AppliedEdits:
    """Apply `edits` in order to the git work tree at `root` (its top level) and return the diff.

    Raises `EditError` naming the first edit that does not apply, having written nothing; if
    writing or diffing fails midway, the files already written are restored first.
    """
    if len(edits) > MAX_EDITS:
        raise EditError(f"{len(edits)} edits; at most {MAX_EDITS} can be applied at once")
    root = root.resolve()
    _require_top_level(root)
    planned = _plan(root, edits, max_file_bytes)
    changes = [c for c in planned if c.text is not None and c.text.encode() != c.original]
    if not changes:
        return AppliedEdits(diff="", created=(), modified=())
    created = tuple(c.path for c in changes if c.original is None)
    modified = tuple(c.path for c in changes if c.original is not None)
    # A scratch index holding only the edited files as they are now: the diff against it is
    # exactly this change, whatever is staged or modified in the repository already, and the
    # repository's own index is never touched.
    with tempfile.TemporaryDirectory(prefix="codeyard-edits-") as scratch:
        index = Path(scratch) / "index"
        if modified:
            _seed_index(root, index, [c for c in changes if c.original is not None])
        written: list[_Change] = []
        made_dirs: list[Path] = []
        try:
            for change in changes:
                made_dirs += _make_parents(change.target, root)
                written.append(change)  # before writing, so a half-written file is restored
                change.target.write_bytes((change.text or "").encode())
            if created:
                # Intent-to-add makes new files show in the diff; --force includes ignored ones,
                # which the edits named explicitly.
                _git(root, index, "add", "--intent-to-add", "--force", "--", *created)
            _check_transforming_attributes(root, index, edits, [c.path for c in changes])
            diff = _git(root, index, "diff", *_DIFF_OPTIONS)
            # git silently leaves out what it will not track; then the diff is not the change.
            listed = set(_git(root, index, "diff", "--name-only", "-z", *_DIFF_OPTIONS).split("\0"))
            if unlisted := [path for path in (*created, *modified) if path not in listed]:
                raise EditError(f"git leaves {', '.join(unlisted)} out of the diff")
        except BaseException:
            _restore(written, made_dirs)
            raise
    return AppliedEdits(diff=diff, created=created, modified=modified)


def _plan(root: Path, edits: Sequence[FileEdit], max_file_bytes: int) -> list[_Change]:
    """Every edit checked and applied in memory, one `_Change` per file in first-edit order."""
    changes: dict[str, _Change] = {}
    directories: set[str] = set()  # those holding the files edited so far
    for index, edit in enumerate(edits):
        try:
            _apply_in_memory(root, edit, changes, directories, max_file_bytes)
        except (UnsafePath, _Refused) as exc:
            raise EditError(str(exc), index=index, edit=edit) from None
    return list(changes.values())


class _Refused(Exception):
    """Why one edit does not apply; `_plan` turns it into an `EditError` naming the edit."""


def _apply_in_memory(
    root: Path,
    edit: FileEdit,
    changes: dict[str, _Change],
    directories: set[str],
    max_file_bytes: int,
) -> None:
    if edit.path not in changes:
        target = workspace_path(root, edit.path)
        parents = _parents(edit.path)
        _check_placement(root, edit.path, parents, changes, directories)
        original, text = _read_original(target, edit.path, max_file_bytes)
        crlf = text is not None and "\r\n" in text and text.count("\n") == text.count("\r\n")
        changes[edit.path] = _Change(edit.path, target, original, text, crlf)
        directories.update(parents)
    change = changes[edit.path]
    if isinstance(edit, ReplaceText):
        if change.text is None:
            raise _Refused(f"{edit.path} does not exist; create it with a write edit")
        search, replace = _line_ends(change, edit.search), _line_ends(change, edit.replace)
        count = _occurrences(change.text, search)
        if count == 0:
            raise _Refused(f"search text not found in {edit.path}")
        if count > 1:
            raise _Refused(
                f"search text found {count} times in {edit.path}; "
                "include more surrounding lines so it matches exactly once"
            )
        text = change.text.replace(search, replace, 1)
    else:
        text = _line_ends(change, edit.content)
    size = len(text.encode())
    if size > max_file_bytes:
        raise _Refused(
            f"{edit.path} would be {size} bytes, over the limit of {max_file_bytes} per file"
        )
    if "\0" in text:
        raise _Refused("the content contains a NUL character; only text files can be written")
    name = PurePosixPath(edit.path).name.casefold()
    if name == ".gitattributes":
        _check_attributes(edit.path, text)
    elif name == ".lfsconfig":
        raise _Refused(
            f"{edit.path} may not be written: git-lfs takes its server from it, so a checkout "
            "where git-lfs is installed would send requests wherever it says"
        )
    change.text = text


def _check_attributes(path: str, text: str) -> None:
    """Refuse `.gitattributes` content setting any of `_REFUSED_ATTRIBUTES`; macro definitions
    (`[attr]name binary`) are lines of attributes like any other."""
    # Lines and blanks as git reads them (`\n`; space, tab, CR): str.splitlines and str.strip
    # know more separators, so "\f# x binary" would pass for a comment that git reads as a rule.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        for token in _attribute_tokens(line):
            name, equals, _ = token.lstrip("-!").partition("=")
            form = "-" if token.startswith("-") else "!" if token.startswith("!") else equals
            if form in _REFUSED_ATTRIBUTES.get(name, ()):
                raise _Refused(
                    f"{path} line {number} sets {token!r}, which changes how git shows or stores "
                    "file contents: the diff must show every change as text for the safety "
                    "gate, so .gitattributes may not set binary, -diff, -text, diff=, filter=, "
                    "merge= or working-tree-encoding="
                )


def _check_transforming_attributes(
    root: Path, index: Path, edits: Sequence[FileEdit], paths: list[str]
) -> None:
    """Refuse the edits if git would store any of `paths` otherwise than as written (see
    `_TRANSFORMING_ATTRIBUTES`), by the attributes git resolves for it once they are written:
    `_check_attributes` reads only what the edits say, not a macro the repository defines."""
    fields = _git(root, index, "check-attr", "-z", *_TRANSFORMING_ATTRIBUTES, "--", *paths)
    parts = fields.split("\0")
    for path, name, value in zip(parts[0::3], parts[1::3], parts[2::3], strict=False):
        if value in ("unspecified", "unset"):
            continue
        index_of = next(n for n, edit in enumerate(edits) if edit.path == path)
        setting = name if value == "set" else f"{name}={value}"
        raise EditError(
            f"git's attributes give {path} {setting!r}, so git would not store the text "
            "written (a filter such as git-lfs's commits a pointer instead, which the safety "
            "gate cannot read); leave this file to a person",
            index=index_of,
            edit=edits[index_of],
        )


def _attribute_tokens(line: str) -> list[str]:
    """Every word of one `.gitattributes` line that git may read as an attribute, perhaps with
    more beside them: str.split breaks at more characters than git does, and a pattern in
    double quotes holding spaces is read both quoted and, as git does when its escapes are not
    valid C ones, unquoted."""
    words = line.split()[1:]
    if line.startswith('"'):
        end = 1
        while end < len(line) and line[end] != '"':
            end += 2 if line[end] == "\\" else 1
        words += line[end + 1 :].split()
    return words


def _seed_index(root: Path, index: Path, changes: list[_Change]) -> None:
    """Put the files `changes` modify into the scratch `index` as they are before the edits.

    A file whose bytes are its entry's in the repository's index takes that entry: added anew
    from the tree, git would store it through the repository's attributes, and a file
    committed with CRLF before `* text=auto` was set would be stored with LF, so that the diff
    (its context lines, its `index` line) would match nothing in the repository. Any other
    file (changed but not staged) is added from the tree, as it stands."""
    paths = [change.path for change in changes]
    staged: dict[str, tuple[str, str]] = {}  # path: (mode, blob) of its entry, if plain
    for entry in _git(root, None, "ls-files", "-s", "-z", "--", *paths).split("\0"):
        info, _, path = entry.partition("\t")
        if info and len(fields := info.split()) == 3 and fields[2] == "0":
            staged[path] = (fields[0], fields[1])
    same: set[str] = set()
    if staged:
        hashed = _git(root, None, "hash-object", "--no-filters", "--", *staged).split()
        same = {path for path, blob in zip(staged, hashed, strict=True) if staged[path][1] == blob}
    if same:
        entries = "".join(f"{staged[path][0]} {staged[path][1]}\t{path}\0" for path in same)
        _git(root, index, "update-index", "-z", "--index-info", stdin=entries)
    if rest := [path for path in paths if path not in same]:
        _git(root, index, "update-index", "--add", "--", *rest)


def _check_placement(
    root: Path,
    path: str,
    parents: list[str],
    changes: dict[str, _Change],
    directories: set[str],
) -> None:
    """Refuse a file at `path` where the tree or an earlier edit has a file or directory.
    Set lookups only: a batch of edits is checked in time linear in its size."""
    for parent in parents:
        if parent in changes or (root / parent).is_file():
            raise _Refused(f"{parent} is a file, so {path} cannot be inside it")
        if parent not in directories and _is_unfilled_submodule(root, parent):
            raise _Refused(
                f"{parent} is a submodule (another repository, not checked out here), so "
                f"{path} cannot be written into it"
            )
    if path in directories:
        raise _Refused(f"{path} is a directory holding files written by earlier edits")


def _is_unfilled_submodule(root: Path, directory: str) -> bool:
    """Whether `directory` is a submodule left empty (a checked-out one has a `.git`, which
    `workspace_path` refuses). git makes no empty directory of its own, so only an empty one
    is looked up in the index."""
    target = root / directory
    if not target.is_dir() or any(target.iterdir()):
        return False
    entry = _git(root, None, "ls-files", "-s", "-z", "--", directory)
    return entry.startswith("160000 ") and entry.rstrip("\0").endswith(f"\t{directory}")


def _parents(path: str) -> list[str]:
    """The directories above `path`, outermost first: "a/b/c" -> ["a", "a/b"]."""
    return [path[:end] for end, char in enumerate(path) if char == "/"]


def _line_ends(change: _Change, text: str) -> str:
    """`text` with the line endings of the file it goes into: CRLF into a CRLF file, unless
    the model wrote CRLF itself."""
    return text.replace("\n", "\r\n") if change.crlf and "\r" not in text else text


def _read_original(target: Path, path: str, max_file_bytes: int) -> tuple[bytes | None, str | None]:
    if not target.exists():
        return None, None
    if target.is_dir():
        raise _Refused(f"{path} is a directory")
    if not target.is_file():
        raise _Refused(f"{path} is not a regular file")
    size = target.stat().st_size
    if size > max_file_bytes:
        raise _Refused(f"{path} is {size} bytes, over the limit of {max_file_bytes} per file")
    data = target.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(f"{path} is not UTF-8 text, so it cannot be edited") from None
    if "\0" in text:
        raise _Refused(f"{path} is a binary file, so it cannot be edited")
    return data, text


def _occurrences(text: str, search: str) -> int:
    """How often `search` occurs in `text`, overlaps included: in "aaa", "aa" occurs twice, and
    replacing "the" one would be a guess."""
    count = 0
    start = text.find(search)
    while start != -1:
        count += 1
        start = text.find(search, start + 1)
    return count


def _make_parents(target: Path, root: Path) -> list[Path]:
    """Create the missing directories above `target`, returning them outermost first."""
    missing = []
    parent = target.parent
    while parent != root and not parent.exists():
        missing.append(parent)
        parent = parent.parent
    missing.reverse()
    for directory in missing:
        directory.mkdir()
    return missing


def _restore(written: list[_Change], made_dirs: list[Path]) -> None:
    for change in reversed(written):
        if change.original is None:
            change.target.unlink(missing_ok=True)
        else:
            change.target.write_bytes(change.original)
    for directory in reversed(made_dirs):
        # Not empty: something else put a file there since; leave it.
        with contextlib.suppress(OSError):
            directory.rmdir()


def _git_env(index: Path | None) -> dict[str, str]:
    env = git_environment()
    # Paths are names, not patterns: `*.py` or `:(top)x` must mean that file.
    env["GIT_LITERAL_PATHSPECS"] = "1"
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    return env


def _run_git(
    root: Path, index: Path | None, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        # Names with non-ASCII letters as they are (the gate matches them against its path
        # rules); git still quotes names holding control characters, quotes or backslashes.
        # (and no config may run a program here: the tree holds the model's code, see git.py)
        ["git", *NO_PROGRAMS, "-c", "core.quotePath=false", *args],
        cwd=root,
        env=_git_env(index),
        input=stdin.encode(),
        capture_output=True,
        timeout=GIT_TIMEOUT_SECONDS,
        check=False,
    )


def _git(root: Path, index: Path | None, *args: str, stdin: str = "") -> str:
    try:
        result = _run_git(root, index, *args, stdin=stdin)
    except subprocess.TimeoutExpired:
        raise EditError(f"git {args[0]} took over {GIT_TIMEOUT_SECONDS:g} s") from None
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()
        raise EditError(f"git {args[0]} failed: {stderr}")
    return result.stdout.decode("utf-8")


def _require_top_level(root: Path) -> None:
    # Diff paths are relative to the top level; from a subdirectory they would not apply there.
    result = _run_git(root, None, "rev-parse", "--show-toplevel")
    top = result.stdout.decode("utf-8", "replace").strip()
    if result.returncode != 0 or Path(top).resolve() != root:
        raise ValueError(f"{root} is not the top level of a git work tree")
