"""Finding a reviewer plugin: `module:Class`, or a name in the `codeyard.reviewers` entry
point group; and checking that what was found can serve as one."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

from codeyard.bus.subjects import UnknownRole, check_role
from codeyard.reviewers.protocol import ReviewerPlugin

ENTRY_POINT_GROUP = "codeyard.reviewers"


class PluginError(ValueError):
    """The plugin cannot be loaded; the message says why and what to do."""


def plugin_role(name: str) -> str:
    """`review.<name>`, the role (and so the subjects and consumer) a plugin serves."""
    try:
        return check_role(f"review.{name}")
    except UnknownRole:
        raise PluginError(
            f"bad reviewer name {name!r}: use 1 to 32 lowercase letters, digits, _ and -, "
            "starting with a letter or digit (it becomes the role review.<name>)"
        ) from None


def installed_plugins() -> dict[str, str]:
    """Name -> `module:Class` of every plugin registered in the entry point group."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugin_spec(name: str) -> str:
    """The `module:Class` registered as `name`."""
    plugins = installed_plugins()
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none are installed"
        raise PluginError(
            f"no reviewer plugin named {name!r} in the {ENTRY_POINT_GROUP!r} entry point group "
            f"(known: {known}): install the package that registers it, or give its class: "
            f"codeyard worker review --name {name} --plugin module:Class (under codeyard up, "
            f"start up with --reviewer-user {name} for that worker to log in)"
        )
    return plugins[name]


def load_plugin(spec: str) -> ReviewerPlugin:
    """Import `module:Class`, check that it is a reviewer plugin and create it."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise PluginError(f"bad plugin {spec!r}: expected module:Class, e.g. mypkg.review:Lint")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a plugin's import may fail any way: report it, whatever it is
        raise PluginError(
            f"cannot import module {module_name!r} of plugin {spec!r}: "
            f"{type(exc).__name__}: {exc} (is it installed, or on PYTHONPATH?)"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PluginError(f"module {module_name!r} has no {class_name!r} (plugin {spec!r})")
    if not inspect.isclass(cls):
        raise PluginError(f"{spec} is a {type(cls).__name__}, not a class")
    _check_review_method(cls, spec)
    try:
        plugin = cls()
    except Exception as exc:
        raise PluginError(f"cannot create {spec}(): {type(exc).__name__}: {exc}") from None
    if not isinstance(plugin, ReviewerPlugin):  # a `review` set up only by __init__ vanished
        raise PluginError(f"{spec} does not implement the reviewer protocol: no review method")
    return plugin


def _check_review_method(cls: type, spec: str) -> None:
    review = getattr(cls, "review", None)
    if not callable(review):
        raise PluginError(
            f"{spec} does not implement the reviewer protocol: it needs a method "
            "`review(self, request: ReviewRequest) -> ReviewResult` (plain or async)"
        )
    # self and the request; a static or class method is called with the request alone
    bound = isinstance(inspect.getattr_static(cls, "review"), staticmethod | classmethod)
    try:
        inspect.signature(review).bind(*(None,) * (1 if bound else 2))
    except (TypeError, ValueError):
        raise PluginError(
            f"{spec}.review must take one argument, the ReviewRequest "
            f"(its signature is {_signature(review)})"
        ) from None


def _signature(function: object) -> str:
    try:
        return str(inspect.signature(function))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unknown"
