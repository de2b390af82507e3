"""Finding plugins: module:Class, the codeyard.reviewers entry points, and every way to fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeyard.reviewers.loading import (
    ENTRY_POINT_GROUP,
    PluginError,
    installed_plugins,
    load_plugin,
    plugin_role,
    plugin_spec,
)
from tests.reviewers.sample_plugins import Approves

SAMPLES = "tests.reviewers.sample_plugins"


def install_entry_points(root: Path, entries: dict[str, str]) -> Path:
    """A distribution's metadata with `entries` in the reviewer group, as pip would write it."""
    info = root / "sample_reviewers-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sample-reviewers\nVersion: 1.0\n")
    lines = "".join(f"{name} = {spec}\n" for name, spec in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    return root


def test_a_class_is_loaded_by_module_and_name() -> None:
    assert isinstance(load_plugin(f"{SAMPLES}:Approves"), Approves)


@pytest.mark.parametrize("name", ["StaticReview", "ClassReview"])
def test_a_static_or_class_method_review_is_a_review(name: str) -> None:
    """Refused, saying it "must take one argument ... (its signature is (request))"."""
    assert type(load_plugin(f"{SAMPLES}:{name}")).__name__ == name


def test_a_registered_name_is_found_among_the_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = install_entry_points(tmp_path, {"sample": f"{SAMPLES}:AsyncNoTodos"})
    monkeypatch.syspath_prepend(str(registered))
    assert installed_plugins()["sample"] == f"{SAMPLES}:AsyncNoTodos"
    assert plugin_spec("sample") == f"{SAMPLES}:AsyncNoTodos"


def test_an_unknown_name_lists_the_known_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = {"sample": f"{SAMPLES}:AsyncNoTodos", "other": f"{SAMPLES}:Approves"}
    monkeypatch.syspath_prepend(str(install_entry_points(tmp_path, entries)))
    with pytest.raises(PluginError, match=r"named 'nope'.*known: .*other, sample"):
        plugin_spec("nope")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_here:X", "cannot import module 'no_such_module_here'"),
        (f"{SAMPLES}:Missing", f"module '{SAMPLES}' has no 'Missing'"),
        (f"{SAMPLES}:NOT_A_CLASS", "is a Approves, not a class"),
        (f"{SAMPLES}:NoReview", "does not implement the reviewer protocol"),
        (f"{SAMPLES}:TakesTwo", r"review must take one argument"),
        (f"{SAMPLES}:StaticTakesTwo", r"review must take one argument"),
        (f"{SAMPLES}:NeedsConfig", r"cannot create .*NeedsConfig\(\): TypeError"),
        ("just_a_module", "expected module:Class"),
    ],
)
def test_what_cannot_serve_as_a_plugin_is_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        load_plugin(spec)


@pytest.mark.parametrize("name", ["Static", "has.dot", "-dash", "", "x" * 33, "a b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(PluginError, match="bad reviewer name"):
        plugin_role(name)


def test_a_good_name_is_a_review_role() -> None:
    assert plugin_role("static") == "review.static"
    assert plugin_role("sec_lint-2") == "review.sec_lint-2"
