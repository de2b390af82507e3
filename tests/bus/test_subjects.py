"""Role names become subject tokens and consumer names: only known shapes pass."""

from __future__ import annotations

import pytest

from codeyard.bus.subjects import UnknownRole, check_role, result_subject


@pytest.mark.parametrize("role", ["planner", "coder", "tester", "review", "review.security"])
def test_known_roles_pass(role: str) -> None:
    assert check_role(role) == role
    assert result_subject(role) == f"cy.result.{role}"


@pytest.mark.parametrize(
    "role", ["review\n", "coder\n", "Coder", "review.", "review.a.b", "review.*", "admin", ""]
)
def test_other_names_are_refused_with_what_is_expected(role: str) -> None:
    with pytest.raises(UnknownRole, match=r"review\.<name>"):
        check_role(role)
