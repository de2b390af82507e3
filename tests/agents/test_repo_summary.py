"""Summarising a repository for the planner: its files, key files and test command."""

from __future__ import annotations

import json
from pathlib import Path

from codeyard.agents.repo_summary import KeyFile, detect_test_command, summarize_repo
from codeyard.sandbox.scratch import remove_tree
from tests.repositories import deep_tree, write_files


def test_summary_of_the_sample_repository(sample_repo: Path) -> None:
    summary = summarize_repo(sample_repo)

    assert summary.files == (
        "README.md",
        "calc/__init__.py",
        "calc/ops.py",
        "pyproject.toml",
        "tests/test_ops.py",
    )
    assert summary.more_files == 0
    assert [key_file.path for key_file in summary.key_files] == ["README.md", "pyproject.toml"]
    assert summary.key_files[0] == KeyFile(
        path="README.md", text="# calc\n\nA tiny calculator package.\n", truncated=False
    )
    assert summary.test_command == "python -m pytest"

    text = summary.render()
    assert "### Files\n\n```\nREADME.md\ncalc/__init__.py\n" in text
    assert "### Test command\n\npython -m pytest" in text
    assert "### pyproject.toml\n\n```\n[project]\n" in text


def test_tooling_directories_are_left_out(sample_repo: Path) -> None:
    write_files(
        sample_repo,
        {
            "node_modules/left-pad/index.js": "",
            "calc/__pycache__/ops.cpython-311.pyc": "",
            ".mypy_cache/3.11/x.json": "",
            "env/pyvenv.cfg": "home = /usr/bin\n",  # a virtualenv under any name
            "env/lib/site.py": "",
            "calc.egg-info/PKG-INFO": "",
        },
    )

    files = summarize_repo(sample_repo).files

    assert not any(path.startswith(".git/") for path in files)
    assert files == (
        "README.md",
        "calc/__init__.py",
        "calc/ops.py",
        "pyproject.toml",
        "tests/test_ops.py",
    )


def test_a_large_tree_is_capped_shallowest_first(sample_repo: Path) -> None:
    write_files(sample_repo, {f"calc/generated/table_{n:03}.py": "" for n in range(40)})

    summary = summarize_repo(sample_repo, max_files=6)

    # Top-level files and the package itself come before the generated depths.
    assert summary.files == (
        "README.md",
        "calc/__init__.py",
        "calc/generated/table_000.py",
        "calc/ops.py",
        "pyproject.toml",
        "tests/test_ops.py",
    )
    assert summary.more_files == 39
    assert "calc/ops.py\npyproject.toml\ntests/test_ops.py\n... and 39 more\n" in summary.render()


def test_key_files_are_truncated_to_the_cap(sample_repo: Path) -> None:
    (sample_repo / "README.md").write_text("# calc\n" + "Lorem ipsum. " * 1000)

    summary = summarize_repo(sample_repo, max_key_file_chars=100)

    readme = summary.key_files[0]
    assert readme.truncated
    assert len(readme.text) == 100
    assert readme.text.startswith("# calc\nLorem ipsum.")
    assert "[... truncated ...]" in summary.render()


def test_a_readme_linking_out_of_the_repository_is_not_read(
    sample_repo: Path, tmp_path: Path
) -> None:
    # The summary goes to an LLM endpoint: a link to a secret must not carry it there.
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (sample_repo / "README.md").unlink()
    (sample_repo / "README.md").symlink_to(secret)
    (sample_repo / "pyproject.toml").unlink()
    (sample_repo / "pyproject.toml").symlink_to(secret)

    summary = summarize_repo(sample_repo)

    assert summary.key_files == ()
    assert "PRIVATE KEY" not in summary.render()


def test_test_command_detection(tmp_path: Path) -> None:
    def repo(name: str, files: dict[str, str]) -> Path:
        root = tmp_path / name
        root.mkdir()
        write_files(root, files)
        return root

    npm_default = {"scripts": {"test": 'echo "Error: no test specified" && exit 1'}}
    cases = {
        "pytest-ini": ({"pytest.ini": "[pytest]\n"}, "python -m pytest"),
        "pyproject": ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "python -m pytest"),
        "setup-cfg": ({"setup.cfg": "[tool:pytest]\naddopts = -q\n"}, "python -m pytest"),
        "tox": ({"tox.ini": "[pytest]\n"}, "python -m pytest"),
        "tests-dir": ({"tests/test_x.py": "", "setup.cfg": "[metadata]\n"}, "python -m pytest"),
        "npm": ({"package.json": json.dumps({"scripts": {"test": "jest"}})}, "npm test"),
        "npm-default": ({"package.json": json.dumps(npm_default)}, ""),
        "broken-configs": (
            {"pyproject.toml": "[tool", "package.json": "{", "setup.cfg": "no section"},
            "",
        ),
        # nested deeper than Python's recursion limit: RecursionError, not a parse error
        "deep-configs": (
            {"pyproject.toml": "x = " + "[" * 5000 + "]" * 5000, "package.json": "[" * 50_000},
            "",
        ),
        "nothing": ({"main.go": "package main\n"}, ""),
    }

    detected = {name: detect_test_command(repo(name, files)) for name, (files, _) in cases.items()}

    assert detected == {name: command for name, (_, command) in cases.items()}


def test_a_tests_directory_deeper_than_pythons_recursion_limit_is_searched(
    tmp_path: Path,
) -> None:
    deep_tree(tmp_path / "tests", 1200, "test_x.py")  # (rglob raised RecursionError)
    try:
        assert detect_test_command(tmp_path) == "python -m pytest"
    finally:
        remove_tree(tmp_path / "tests")  # (pytest's own clean-up would recurse)
