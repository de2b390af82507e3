"""The safety gate's policy: allow, deny or ask a person about one side effect (`ActionCheck`).

The engine is generic; what is dangerous is data, in a TOML file. The packaged default,
`codeyard/agents/policies/default.toml`, documents the format in its comments. In short:

- `[defaults]`: the effect (`allow`, `deny`, `approve`) for a subject no rule matched, per action.
- `[[rules]]`: a name, the `actions` it applies to, an `effect`, a `reason`, and one kind of
  matcher: `commands` (regexes on every normalized command), `pipe_from` + `pipe_to` (output of
  one command reaching another), `paths` (globs relative to the workspace) or
  `outside_workspace`, `packages`/`registries`, `hosts`, `secrets` (regexes on the lines a diff
  adds) or `text` (regexes on the whole detail). `unless` exempts targets matching its regexes.
- `[shell]`, `[install]`, `[workspace]`: what the engine needs to know to take details apart:
  which commands are shells, wrappers, printers, which long options commands take abbreviated;
  how installers are spelled; where the workspace is mounted.

An action is taken apart into subjects (every command of a command line, the file written, every
package, every host; for a merge or plan, the whole detail). For each subject: deny beats approve
beats allow, and a subject that no rule matched gets the action's default. The decision is the
worst over all subjects. Matches on secondary targets (the whole text, secret scans, redirection
targets, pipes, the outer layers of a wrapped command) can only deny or ask, never allow.

A merge's diff is read as `git apply` reads it (`_read_diff`): hunk headers are counted, so file
content never passes for a header; git's C-quoted names are decoded; lines outside any hunk are
scanned too. A binary change (`GIT binary patch`, `Binary files ... differ`) hides what it adds,
so it needs approval whatever the policy file says (`policy.binary-diff`).

A command line is normalized before matching, the way the shell that runs it reads it (`/bin/sh`,
which is dash: `codeyard.sandbox.protocol.SHELL`): words end at spaces and tabs only, quotes and
backslash escapes are removed, a here-document's delimiter is a whole word (`<<'E F'`), a
command substitution ends where its commands do (not at a `)` in a comment, a quote or a
here-document), `${IFS}` splits words, `$HOME` becomes `~`, bash's `$'\\x72'` is decoded,
`{a,b}` is expanded, a variable assigned once to a literal is substituted, the line is split at
`;`, `&&`, `||`, `|`, `&` and newlines, every `$(...)`, backtick and `<(...)` is a command of its
own whose output reaches the command it is part of, wrappers (`env`, `command`, `timeout`, ...)
are peeled off, and `sh -c`, `eval`, `env -S`, `find -exec`, here-documents and `echo ... | sh`
are evaluated recursively.

Rules also see a command as the program may read its arguments (`_readings`): a value glued to a
short option apart (`sort -o/tmp/x` as `-o /tmp/x`, `file -f.env` as `-f .env`), a cluster of
short options one by one (`sort -ro x` as `-r -o x`), and, for the commands `[shell]
long_options` names, an abbreviated long option spelled out (`sort --compress=sh` as
`--compress-program=sh`). An allow rule allows a command only if its `unless` exempts none of
these readings. A here-document or here-string is seen as arguments of the command it feeds, as
`echo`'s are (`cat > conftest.py <<EOF` as `echo ... > conftest.py`), unless a shell reads it as
its script; one given to a loop or group (`done <<EOF`) is a subject of its own, which only deny
and approve rules can match (else the action's default).

Text a shell would refuse (an unterminated quote or substitution), nesting deeper than
`[shell] max_depth` and over-long command lines are sent for approval, never allowed. So is
what the gate cannot be sure the shell reads as it does (`_DOUBTS`): whitespace other than
space, tab and newline; a NUL or a character the gate uses itself (U+E000 to U+E0FF); syntax
dash reads otherwise than bash (`$'...'`, `$"..."`, `$[...]`); a here-document delimiter with
`$` or a backquote; a `case` in a command substitution; `${...}` other than `${name}` and
`${#name}` (its word can be a path or a command); and arithmetic with more than numbers and
operators, or bash's `((...))` (bash evaluates a name's value, and `a[$(cmd)]` in one runs cmd).

Limits: the gate reads text, not a running system. It does not follow symlinks, know the current
directory after `cd`, know variables set outside the command line or by a command's output, read
files a command runs (`sh script.sh`, `pip install -r`) or see what inline code (`python -c`)
does; such commands fall to the default (approve) unless a rule allows them. The sandbox is the
containment; this policy decides what is worth running in it.

Pure: no I/O except reading the policy file.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from codeyard.schemas.messages import ActionCheck, ActionKind, Decision

Effect = Literal["allow", "deny", "approve"]
ACTIONS: Final[tuple[str, ...]] = get_args(ActionKind)

_DECISION: Final[dict[str, Decision]] = {
    "allow": "allow",
    "deny": "deny",
    "approve": "needs_approval",
}
_SEVERITY: Final[dict[str, int]] = {"allow": 0, "approve": 1, "deny": 2}

# Which actions a kind of matcher can look at, and the kind that says what an action is about
# (the only kind an allow rule can use: allowing a pipe or a secret would mean nothing).
_KIND_ACTIONS: Final[dict[str, frozenset[str]]] = {
    "commands": frozenset({"run_command"}),
    "pipe": frozenset({"run_command"}),
    "paths": frozenset({"write_file", "merge", "run_command"}),
    "packages": frozenset({"install_package"}),
    "hosts": frozenset({"network"}),
    "secrets": frozenset(ACTIONS),
    "text": frozenset(ACTIONS),
}
_PRIMARY_KIND: Final[dict[str, str]] = {
    "run_command": "commands",
    "write_file": "paths",
    "install_package": "packages",
    "network": "hosts",
    "merge": "text",
    "plan": "text",
}
_DEFAULT_POLICY: Final[tuple[str, str]] = ("policies", "default.toml")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the rule and field at fault."""


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    rule: str


# --- the policy file ------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Spec):
    """The effect for a subject that no rule matched."""

    run_command: Effect = "approve"
    write_file: Effect = "allow"
    install_package: Effect = "approve"
    network: Effect = "deny"
    merge: Effect = "allow"
    plan: Effect = "allow"


class Wrapper(_Spec):
    """A command that runs the command after its options (`env`, `timeout 60`, `nohup`)."""

    options_with_value: list[str] = []
    positional: int = Field(default=0, ge=0, le=8)
    script_options: list[str] = []  # the option's value is a command line (`env -S '...'`)


class ShellKnowledge(_Spec):
    shells: list[str] = []
    shell_options_with_value: list[str] = []
    eval: list[str] = []
    printers: list[str] = []
    passthrough: list[str] = []
    wrappers: dict[str, Wrapper] = {}
    exec_options: dict[str, list[str]] = {}
    long_options: dict[str, list[str]] = {}  # command -> long options it takes abbreviated
    max_depth: int = Field(default=6, ge=1, le=24)
    max_command_chars: int = Field(default=20_000, ge=1)

    @field_validator("long_options")
    @classmethod
    def _long_options(cls, table: dict[str, list[str]]) -> dict[str, list[str]]:
        for command, options in table.items():
            if not command.split():
                raise ValueError("a command name cannot be empty")
            for option in options:
                if not re.fullmatch(r"--[^\s=-][^\s=]*", option):
                    raise ValueError(f"{option!r} is no long option (--name)")
        return table


class InstallKnowledge(_Spec):
    default_registry: str = "pypi"
    installers: dict[str, str] = {}
    options_with_value: list[str] = []
    source_options: list[str] = []
    requirement_options: list[str] = []
    package_options: list[str] = []
    normalize_names: list[str] = []


class WorkspaceKnowledge(_Spec):
    roots: list[str] = []

    @field_validator("roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        for root in roots:
            if not root.startswith("/") or root.rstrip("/") == "":
                raise ValueError(f"{root!r} is not an absolute directory other than '/'")
        return ["/" + posixpath.normpath(root).strip("/") for root in roots]


class RuleSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
    actions: list[ActionKind] = Field(min_length=1)
    effect: Effect
    reason: str = ""
    enabled: bool = True
    ignore_case: bool = True
    commands: list[str] = []
    pipe_from: list[str] = []
    pipe_to: list[str] = []
    paths: list[str] = []
    outside_workspace: bool = False
    registries: list[str] = []
    packages: list[str] = []
    hosts: list[str] = []
    secrets: list[str] = []
    text: list[str] = []
    unless: list[str] = []

    @field_validator("commands", "pipe_from", "pipe_to", "secrets", "text", "unless")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return patterns

    @field_validator("paths", "packages", "hosts", "registries")
    @classmethod
    def _globs(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            if not glob.strip():
                raise ValueError("an empty pattern matches nothing useful")
        return globs

    def matchers(self) -> list[tuple[str, str]]:
        """(kind, field as written) for every kind of matcher the rule sets."""
        found = [
            ("commands", "commands", bool(self.commands)),
            ("pipe", "pipe_from/pipe_to", bool(self.pipe_from or self.pipe_to)),
            ("paths", "paths", bool(self.paths)),
            ("paths", "outside_workspace", self.outside_workspace),
            ("packages", "packages/registries", bool(self.packages or self.registries)),
            ("hosts", "hosts", bool(self.hosts)),
            ("secrets", "secrets", bool(self.secrets)),
            ("text", "text", bool(self.text)),
        ]
        return [(kind, label) for kind, label, on in found if on]

    @model_validator(mode="after")
    def _one_kind_of_matcher(self) -> RuleSpec:
        matchers = self.matchers()
        if not matchers:
            raise ValueError(
                "sets no matcher: give one of commands, pipe_from + pipe_to, paths, "
                "outside_workspace, packages/registries, hosts, secrets or text"
            )
        if len(matchers) > 1:
            raise ValueError(
                f"sets {' and '.join(label for _, label in matchers)}: a rule has one kind of "
                "matcher; split it into several rules"
            )
        kind, label = matchers[0]
        if kind == "pipe" and not (self.pipe_from and self.pipe_to):
            raise ValueError("pipe_from and pipe_to go together: what feeds what")
        wrong = [action for action in self.actions if action not in _KIND_ACTIONS[kind]]
        if wrong:
            raise ValueError(
                f"{label} cannot apply to {', '.join(wrong)}; "
                f"it applies to {', '.join(sorted(_KIND_ACTIONS[kind]))}"
            )
        if self.effect == "allow":
            moot = [action for action in self.actions if _PRIMARY_KIND[action] != kind]
            if moot:
                raise ValueError(
                    f"an allow rule with {label} decides nothing for {', '.join(moot)}: allow "
                    "rules match what the action is about (run_command: commands, write_file: "
                    "paths, install_package: packages, network: hosts, merge and plan: text)"
                )
        return self


class PolicySpec(_Spec):
    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    workspace: WorkspaceKnowledge = WorkspaceKnowledge()
    shell: ShellKnowledge = ShellKnowledge()
    install: InstallKnowledge = InstallKnowledge()
    rules: list[RuleSpec] = []

    @model_validator(mode="after")
    def _unique_names(self) -> PolicySpec:
        repeated = sorted(n for n, c in Counter(r.name for r in self.rules).items() if c > 1)
        if repeated:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(repeated)}")
        return self


# --- loading ------------------------------------------------------------------------------


def load_policy(path: Path | None = None) -> Policy:
    """The policy in `path`, or the packaged default when `path` is None.

    A file may start with `extends = "default"`: it then changes the default policy instead of
    replacing it (tables merge key by key; a rule replaces the default rule of the same name,
    other rules are added). Raises `PolicyError` naming what is wrong.
    """
    if path is None:
        return Policy.from_toml(_default_text(), source="<default policy>")
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc}") from None
    return Policy.from_toml(text, source=str(path))


def _default_text() -> str:
    return resources.files("codeyard.agents").joinpath(*_DEFAULT_POLICY).read_text("utf-8")


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None


def _extend(base: dict[str, Any], custom: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in custom.items():
        if key == "rules":
            continue
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = _extend(current, value)
        else:
            merged[key] = value
    if "rules" in custom:
        extra = custom["rules"]
        if not isinstance(extra, list):
            merged["rules"] = extra
        else:
            rules = list(base.get("rules", []))
            names = [r.get("name") if isinstance(r, dict) else None for r in rules]
            for rule in extra:
                name = rule.get("name") if isinstance(rule, dict) else None
                if name is not None and name in names:
                    rules[names.index(name)] = rule
                else:
                    rules.append(rule)
                    names.append(name)
            merged["rules"] = rules
    return merged


def _explain(exc: ValidationError, data: Mapping[str, Any]) -> str:
    rules = data.get("rules")
    problems = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        message = str(error["msg"]).removeprefix("Value error, ")
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            name = None
            if isinstance(rules, list) and index < len(rules) and isinstance(rules[index], dict):
                name = rules[index].get("name")
            where = f"rule {name!r}" if isinstance(name, str) else f"rule #{index + 1}"
            rest = ".".join(str(part) for part in loc[2:])
            if rest:
                where += f", field {rest!r}"
        elif loc:
            where = f"field {'.'.join(str(part) for part in loc)!r}"
        else:
            where = "policy"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


# --- compiled rules -------------------------------------------------------------------------


def _glob_regex(glob: str) -> str:
    """A glob as a regex: `**` any number of directories, `*` and `?` within one, `[...]`."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and (end := glob.find("]", i + 2)) > 0:
            body = glob[i + 1 : end]
            negate = body.startswith(("!", "^"))
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return r"\A" + "".join(out) + r"\Z"


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class _Rule:
    name: str
    actions: frozenset[str]
    effect: Effect
    reason: str
    kind: str
    patterns: tuple[re.Pattern[str], ...] = ()
    receivers: tuple[re.Pattern[str], ...] = ()  # pipe_to
    normalized: tuple[re.Pattern[str], ...] = ()  # package globs, PEP 503 normalized
    unless: tuple[re.Pattern[str], ...] = ()
    outside: bool = False
    registries: frozenset[str] = frozenset()
    normalize: frozenset[str] = frozenset()

    @classmethod
    def compile(cls, spec: RuleSpec, normalize: frozenset[str]) -> _Rule:
        flags = re.IGNORECASE if spec.ignore_case else 0
        kind = spec.matchers()[0][0]

        def regexes(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
            return tuple(re.compile(p, flags) for p in patterns)

        def globs(patterns: Sequence[str], fold: bool = False) -> tuple[re.Pattern[str], ...]:
            return tuple(
                re.compile(_glob_regex(_pep503(p) if fold else p), flags | re.DOTALL)
                for p in patterns
            )

        patterns: tuple[re.Pattern[str], ...] = ()
        if kind in ("commands", "secrets", "text"):
            patterns = regexes(getattr(spec, kind))
        elif kind == "pipe":
            patterns = regexes(spec.pipe_from)
        elif kind == "paths":
            patterns = globs(spec.paths)
        elif kind == "packages":
            patterns = globs([p.lower() for p in spec.packages])
        elif kind == "hosts":
            patterns = globs([h.lower().rstrip(".") for h in spec.hosts])
        return cls(
            name=spec.name,
            actions=frozenset(spec.actions),
            effect=spec.effect,
            reason=spec.reason.strip() or f"matched rule {spec.name!r}",
            kind=kind,
            patterns=patterns,
            receivers=regexes(spec.pipe_to),
            normalized=globs(spec.packages, fold=True) if kind == "packages" else (),
            unless=regexes(spec.unless),
            outside=spec.outside_workspace,
            registries=frozenset(r.lower() for r in spec.registries),
            normalize=normalize,
        )

    def exempt(self, target: str) -> bool:
        return any(u.search(target) for u in self.unless)

    def matches(self, target: str, outside: bool = False) -> bool:
        if self.kind == "paths" and self.outside:
            hit = outside
        elif self.kind == "packages":
            registry, _, name = target.partition(":")
            if self.registries and registry not in self.registries:
                return False
            globs = self.normalized if registry in self.normalize else self.patterns
            hit = not globs or any(g.search(name) for g in globs)
        else:
            hit = any(p.search(target) for p in self.patterns)
        return hit and not self.exempt(target)

    def explain(self, shown: str) -> str:
        return f"{self.reason}: {shown}" if shown else self.reason


# --- the policy -------------------------------------------------------------------------------


class Policy:
    """Rules and defaults, compiled; `evaluate` is pure and never raises."""

    def __init__(self, spec: PolicySpec, source: str = "<policy>") -> None:
        self.spec = spec
        self.source = source
        normalize = frozenset(r.lower() for r in spec.install.normalize_names)
        self._rules = [_Rule.compile(r, normalize) for r in spec.rules if r.enabled]
        self._index: dict[tuple[str, str], list[_Rule]] = {}
        for rule in self._rules:
            for action in rule.actions:
                self._index.setdefault((action, rule.kind), []).append(rule)
        shell = spec.shell
        self.shells = frozenset(s.lower() for s in shell.shells)
        self.evals = frozenset(s.lower() for s in shell.eval)
        self.printers = frozenset(s.lower() for s in shell.printers)
        self.passthrough = frozenset(s.lower() for s in shell.passthrough)
        self.wrappers = {k.lower(): v for k, v in shell.wrappers.items()}
        self.exec_options = {k.lower(): frozenset(v) for k, v in shell.exec_options.items()}
        self.long_options = [
            (tuple(k.lower().split()), frozenset(o.lower() for o in v))
            for k, v in shell.long_options.items()
        ]

    def options_of(self, words: Sequence[str]) -> frozenset[str]:
        """The long options `[shell] long_options` lists for the command `words` runs: under
        its name (`python3.11` is also `python`) and its first words (`python -m mypy`)."""
        if not words:
            return frozenset()
        name = _basename(words[0]).lower()
        names = {name, name.rstrip("0123456789.") or name}
        found: frozenset[str] = frozenset()
        for key, options in self.long_options:
            if key[0] in names and [w.lower() for w in words[1 : len(key)]] == list(key[1:]):
                found |= options
        return found

    @classmethod
    def from_toml(cls, text: str, source: str = "<policy>") -> Policy:
        data = _parse_toml(text, source)
        extends = data.pop("extends", None)
        if extends is not None:
            if extends != "default":
                raise PolicyError(f"{source}: field 'extends': only \"default\" can be extended")
            data = _extend(_parse_toml(_default_text(), "<default policy>"), data)
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<policy>") -> Policy:
        try:
            spec = PolicySpec.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(f"{source}: {_explain(exc, data)}") from None
        return cls(spec, source)

    @property
    def rule_names(self) -> list[str]:
        return [rule.name for rule in self._rules]

    def rules(self, action: str, kind: str) -> list[_Rule]:
        return self._index.get((action, kind), [])

    def evaluate(self, check: ActionCheck) -> Verdict:
        return self.evaluate_action(check.action, check.detail)

    def evaluate_action(self, action: str, detail: str) -> Verdict:
        if action not in ACTIONS:
            return Verdict("deny", f"unknown action {action!r}", "policy.unknown-action")
        try:
            return _Evaluation(self, action).run(detail)
        except Exception as exc:  # fail closed: a bug in the engine must never allow
            return Verdict("deny", f"the policy could not evaluate this: {exc!r}", "policy.error")


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    effect: Effect
    rule: str
    reason: str


_OUTPUT_REDIRECTS: Final = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&"})
_KEYWORDS: Final = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}"}
)
_NOT_COMMANDS: Final = frozenset({"for", "select", "case", "esac", "in", "function"})
_ASSIGNMENT: Final = re.compile(r"\A([A-Za-z_][A-Za-z0-9_]*)(\+?)=(.*)\Z", re.DOTALL)


def _clip(text: str, limit: int = 160) -> str:
    flat = re.sub(r"\s+", " ", text.replace(_SUBST, "$(...)")).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _flatten(command: str) -> str:
    """The command line without quotes, backslashes and `${IFS}`, whitespace collapsed."""
    text = command.replace("\\\n", "")
    text = re.sub(r"\$\{IFS[^}]*\}|\$IFS\b", " ", text)
    text = re.sub(r"['\"\\]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _reassigned(command: str) -> set[str]:
    """Variables whose value at a use cannot be read off one literal assignment."""
    counts = Counter(re.findall(r"(?<![\w$])([A-Za-z_]\w*)\+?=", command))
    names = {name for name, count in counts.items() if count > 1}
    names.update(
        re.findall(
            r"\b(?:for|select|read|local|declare|typeset|export|readonly|unset|let|getopts|"
            r"mapfile|readarray)\s+(?:-\S+\s+)*([A-Za-z_]\w*)",
            command,
        )
    )
    return names


def _normalize_path(raw: str, roots: Sequence[str]) -> str:
    """A path in normal form: relative to the workspace, or absolute, or `~...`."""
    path = raw.strip().replace("\\", "/")
    if len(path) >= 2 and path[0] == path[-1] and path[0] in "'\"":
        path = path[1:-1]
    path = re.sub(r"\A(?:\$HOME|\$\{HOME\})(?=/|\Z)", "~", path)
    if not path:
        return "."
    if path.startswith("~"):
        head, _, rest = path.partition("/")
        return head + ("/" + posixpath.normpath("/" + rest).lstrip("/") if rest else "")
    if path.startswith("/"):
        normal = "/" + posixpath.normpath(path).lstrip("/")
        for root in roots:
            if normal == root:
                return "."
            if normal.startswith(root + "/"):
                return normal[len(root) + 1 :]
        return normal
    return posixpath.normpath(path)


def _is_outside(normal: str) -> bool:
    return normal.startswith(("/", "~")) or normal == ".." or normal.startswith("../")


def _numbered(text: str) -> list[tuple[int, str]]:
    return list(enumerate(text.splitlines(), start=1))


@dataclass
class _Diff:
    """A merge's diff read the way `git apply` reads it (`_read_diff`)."""

    # Every line that can add text, numbered within the diff: all but the context and removed
    # lines a hunk header counts. Lines outside hunks are kept (with and without a leading "+"):
    # `git apply` ignores them, but a detail that is no diff at all is only such lines.
    scanned: list[tuple[int, str]] = field(default_factory=list)
    paths: dict[str, None] = field(default_factory=dict)  # every path it may touch, in order
    binary: list[tuple[int, str]] = field(default_factory=list)  # (line, file) of binary changes


_HUNK: Final = re.compile(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_C_ESCAPES: Final = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _read_diff(diff: str) -> _Diff:
    """The lines, paths and binary changes of a unified diff (git's format, or plain).

    Hunk headers say how many old and new lines each hunk spans and those lines are counted
    against them, as `git apply` does: a line is content or header by its place, never by how it
    starts, so an added line reading `++ b/x` (`+++ b/x` in the diff) is an added line. A line a
    hunk's counts do not allow ends the hunk. Split at "\\n" only, as git does: `str.splitlines`
    would also split at \\r, \\f or \\u2028 inside a line and misread the rest as another line.
    """
    read = _Diff()
    old_left = new_left = 0
    current = ""  # the file of the section being read, for the binary reason
    lines = diff.split("\n")
    if lines[-1] == "":
        lines.pop()
    for no, line in enumerate(lines, start=1):
        if old_left or new_left:
            marker = line[:1]
            if marker == "+" and new_left:
                read.scanned.append((no, line[1:]))
                new_left -= 1
                continue
            if marker == "-" and old_left:
                old_left -= 1
                continue
            if marker in (" ", "") and old_left and new_left:  # "": a blank line lost its space
                old_left -= 1
                new_left -= 1
                continue
            if marker == "\\":  # "\ No newline at end of file"
                continue
            old_left = new_left = 0
        if hunk := _HUNK.match(line):
            # The text after the header is the enclosing function's line, from the old file.
            old_left = int(hunk[1]) if hunk[1] is not None else 1
            new_left = int(hunk[2]) if hunk[2] is not None else 1
            continue
        read.scanned.append((no, line))
        if line.startswith("+"):
            read.scanned.append((no, line[1:]))
        found = _header_paths(line)
        read.paths.update(dict.fromkeys(found))
        if line.startswith("diff --git "):
            current = found[0] if found else ""
        if line == "GIT binary patch" or re.fullmatch(r"Binary files .* differ", line):
            read.binary.append((no, current))
    return read


def _header_paths(line: str) -> list[str]:
    """The paths a header line names, without git's one leading directory (`a/`, `b/`); with
    another leading directory, also as written."""
    names: list[str] = []
    if line.startswith("diff --git "):
        names = _git_header_names(line[len("diff --git ") :])
    elif line.startswith(("--- ", "+++ ")):
        names = _strip(_one_name(line[4:], tab_ends=True))
    elif match := re.match(r"(?:rename|copy) (?:from|to|old|new) (.+)\Z", line):
        names = [_one_name(match[1])]  # these name the file itself, with no prefix
    return [name for name in names if name and name != "/dev/null"]


def _git_header_names(text: str) -> list[str]:
    """The names of `diff --git A B` (`text` is "A B"), each maybe C-quoted. Unquoted names may
    hold spaces, so like `git apply` take the split where both name the same file behind their
    prefixes; `git apply` takes no name from a header without one, and neither does this."""
    if text.startswith('"'):
        quoted = _unquote(text)
        if quoted is None:
            return []
        first, end = quoted
        return [*_strip(first), *_strip(_one_name(text[end:].lstrip(" \t")))]
    if (quote := text.find('"')) > 0:  # an unquoted name, then a quoted one
        return [*_strip(text[:quote].rstrip(" \t")), *_strip(_one_name(text[quote:]))]
    start = text.find("/") + 1
    if not start:
        return []
    name = text[start:]  # "x y b/x y": the first name is name[:k] when the second is too
    slash = name.find("/")
    for separator in re.finditer(r"[ \t]", name):
        k = separator.start()
        if slash != -1 and slash <= k:  # the first "/" after the separator ends B's prefix
            slash = name.find("/", k + 1)
        if slash == -1:
            break
        if slash == len(name) - k - 1 and name[:k] == name[slash + 1 :]:
            prefix = text[:start]
            return [name[:k]] if prefix in ("a/", "b/") else [name[:k], prefix + name[:k]]
    return []


def _strip(name: str) -> list[str]:
    """`name` as `git apply` takes it (one leading directory stripped, `-p1`) and, unless that
    was a/ or b/, also as it is."""
    if name == "/dev/null" or "/" not in name:
        return [name]
    first, rest = name.split("/", 1)
    return [rest] if first in ("a", "b") else [rest, name]


def _one_name(text: str, tab_ends: bool = False) -> str:
    if text.startswith('"') and (quoted := _unquote(text)) and not text[quoted[1] :].strip():
        return quoted[0]
    if tab_ends:  # --- a/x<TAB>2024-01-01 ... (a timestamp after the name)
        text = text.split("\t", 1)[0]
    return text.rstrip()


def _unquote(text: str) -> tuple[str, int] | None:
    """The name in git's C-style quotes at the start of `text` (escapes like \\t, \\" and octal
    bytes \\303\\251, decoded as UTF-8) and the index after its closing quote; None if it is
    not a valid quoted name."""
    out = bytearray()
    i = 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return out.decode("utf-8", "replace"), i + 1
        if char != "\\":
            out += char.encode("utf-8", "surrogateescape")
            i += 1
        elif text[i + 1 : i + 2] in _C_ESCAPES:
            out.append(_C_ESCAPES[text[i + 1]])
            i += 2
        elif re.fullmatch(r"[0-3][0-7][0-7]", text[i + 1 : i + 4]):
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
        else:
            return None
    return None


def _host_of(token: str) -> str:
    text = token.strip().strip("'\"<>()[]").strip()
    if "://" in text:
        try:
            host = urlsplit(text).hostname or ""
        except ValueError:
            host = ""
        return (host or text).lower().rstrip(".")
    text = text.rsplit("@", 1)[-1].split("/", 1)[0]
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.lower().rstrip(".")


class _Evaluation:
    """One evaluation: the subjects of a detail, the rules they hit, the worst outcome."""

    def __init__(self, policy: Policy, action: str) -> None:
        self.policy = policy
        self.action = action
        self.outcomes: list[_Outcome] = []
        self.roots = policy.spec.workspace.roots
        # run_command only
        self.graph: list[_Node] = []
        self.views: dict[int, list[str]] = {}
        self.commands: dict[int, list[str]] = {}
        self.variables: dict[str, str] = {}
        self.unsafe: set[str] = set()

    # outcomes

    def add(self, effect: Effect, rule: str, reason: str) -> None:
        self.outcomes.append(_Outcome(effect, rule, reason))

    def flag(
        self, kind: str, target: str, shown: str, action: str = "", outside: bool = False
    ) -> bool:
        """Record the deny and approve rules of `kind` that `target` hits; True if any."""
        hit = False
        for rule in self.policy.rules(action or self.action, kind):
            if rule.effect != "allow" and rule.matches(target, outside):
                self.add(rule.effect, rule.name, rule.explain(shown))
                hit = True
        return hit

    def decide(
        self, kind: str, target: str, shown: str, outside: bool = False, also: Sequence[str] = ()
    ) -> None:
        """A primary subject that no deny or approve rule hit: an allow rule, or the default.
        `also`: the target's other readings (`_readings`); an allow rule whose `unless` exempts
        any of them does not allow the target."""
        for rule in self.policy.rules(self.action, kind):
            if (
                rule.effect == "allow"
                and rule.matches(target, outside)
                and not any(rule.exempt(other) for other in also)
            ):
                self.add("allow", rule.name, rule.explain(shown))
                return
        self.default(shown)

    def default(self, shown: str) -> None:
        effect: Effect = getattr(self.policy.spec.defaults, self.action)
        what = {
            "allow": f"allowed by default for {self.action}",
            "approve": (
                f"no rule allows this {self.action} without approval (default: ask a person)"
            ),
            "deny": f"no rule allows this {self.action} (default: deny)",
        }[effect]
        self.add(effect, f"default.{self.action}", f"{what}: {shown}" if shown else what)

    def verdict(self, detail: str) -> Verdict:
        if not self.outcomes:
            self.default(_clip(detail) or "(empty)")
        worst = self.outcomes[0]
        for outcome in self.outcomes[1:]:
            if _SEVERITY[outcome.effect] > _SEVERITY[worst.effect]:
                worst = outcome
        same = {o.rule for o in self.outcomes if o.effect == worst.effect} - {worst.rule}
        reason = worst.reason
        if worst.effect != "allow" and same:
            reason += f" (also: {', '.join(sorted(same)[:5])})"
        return Verdict(_DECISION[worst.effect], reason, worst.rule)

    # actions

    def run(self, detail: str) -> Verdict:
        action = self.action
        if action == "run_command":
            self.flag("text", _flatten(detail), _clip(detail))
            self.scan_secrets(_numbered(detail), "line")
            self.command_line(detail)
        elif action == "write_file":
            path, _, content = detail.partition("\n")
            self.flag("text", detail, _clip(path))
            self.scan_secrets([(no + 1, line) for no, line in _numbered(content)], "line")
            self.write_target(path)
        elif action == "install_package":
            self.flag("text", detail, _clip(detail))
            self.scan_secrets(_numbered(detail), "line")
            for registry, name in _packages(detail, self.policy.spec.install):
                target = f"{registry}:{name}"
                if not self.flag("packages", target, target):
                    self.decide("packages", target, target)
        elif action == "network":
            self.flag("text", detail, _clip(detail))
            self.scan_secrets(_numbered(detail), "line")
            hosts = [_host_of(t) for t in re.split(r"[\s,]+", detail) if t.strip()]
            for host in hosts or [""]:
                if not self.flag("hosts", host, host or "(no host)"):
                    self.decide("hosts", host, host or "(no host)")
        else:  # merge, plan: the whole detail is the subject
            self.flag("text", detail, _clip(detail, 80))
            if action == "merge":
                diff = _read_diff(detail)
                self.scan_secrets(diff.scanned, "added line")
                for path in diff.paths:
                    normal = _normalize_path(path, self.roots)
                    self.flag("paths", normal, normal, outside=_is_outside(normal))
                if diff.binary:
                    self.binary_changes(diff.binary)
            else:
                self.scan_secrets(_numbered(detail), "line")
            if not self.outcomes:
                self.decide("text", detail, _clip(detail, 80))
        return self.verdict(detail)

    def scan_secrets(self, lines: Sequence[tuple[int, str]], label: str) -> None:
        for rule in self.policy.rules(self.action, "secrets"):
            for no, line in lines:
                if rule.matches(line):  # the reason names the line, never the secret
                    self.add(rule.effect, rule.name, rule.explain(f"{label} {no}"))
                    break

    def binary_changes(self, binary: Sequence[tuple[int, str]]) -> None:
        # A binary patch is base85 data, "Binary files differ" no data at all: neither shows
        # what is added (a secret, a CI workflow's steps), so a person decides. Not a rule of
        # the policy file, so that no policy can forget it.
        files = ", ".join(sorted({name for _, name in binary if name})[:5]) or "a file"
        self.add(
            "approve",
            "policy.binary-diff",
            f"the diff changes {files} as binary data (diff line {binary[0][0]}): the gate "
            "cannot read what it adds",
        )

    def write_target(self, raw: str) -> None:
        normal = _normalize_path(raw, self.roots)
        outside = _is_outside(normal)
        if not self.flag("paths", normal, normal, outside=outside):
            self.decide("paths", normal, normal, outside)

    # commands

    def command_line(self, detail: str) -> None:
        shell = self.policy.spec.shell
        if len(detail) > shell.max_command_chars:
            self.add(
                "approve",
                "policy.too-long",
                f"the command is longer than {shell.max_command_chars} characters",
            )
            return
        self.unsafe = _reassigned(detail)
        self.walk(self.parse(detail, 0), 0, primary=True)
        self.pipes()

    def parse(self, text: str, depth: int) -> _Script:
        return _Parser(self.graph, self.policy.spec.shell.max_depth).parse(text, depth)

    def walk(self, script: _Script, depth: int, primary: bool) -> None:
        self.doubts(script)
        for node in script.nodes:
            self.simple_command(node, depth, primary)

    def doubts(self, script: _Script) -> None:
        """What the gate cannot read as the shell does goes to a person, whatever rules say."""
        if script.malformed:
            self.add(
                "approve",
                "policy.malformed",
                "an unterminated quote or substitution: the gate cannot read it as a shell would",
            )
        for rule, seen in script.doubts.items():
            self.add("approve", rule, f"{_DOUBTS[rule]}: {seen}" if seen else _DOUBTS[rule])

    def substitution(self, kind: str, script: _Script, depth: int, primary: bool) -> None:
        """A substitution in a command: `$(...)`, backticks and `<(...)` are commands decided
        like any other; `$((...))` is no command, but the substitutions in it run and are
        decided the same way (`$((1 + $(cmd)))` runs cmd)."""
        if kind != "arith":
            self.walk(script, depth, primary)
            return
        self.doubts(script)
        for node in script.nodes:
            if node.too_deep:
                self.add("approve", "policy.nesting", "command substitutions nested too deeply")
            for inner_kind, inner in node.subs:
                self.substitution(inner_kind, inner, depth + 1, primary)

    def nested(self, text: str, depth: int, primary: bool) -> None:
        if depth > self.policy.spec.shell.max_depth:
            self.add("approve", "policy.nesting", f"nested too deeply to inspect: {_clip(text)}")
            return
        self.walk(self.parse(text, depth), depth, primary)

    def expand(self, words: Sequence[_Word]) -> list[str]:
        out: list[str] = []
        for word in words:
            for piece in _brace_expand(word.text):
                out.extend(self.expand_variables(piece))
        return out

    def expand_variables(self, text: str) -> list[str]:
        def value(match: re.Match[str]) -> str:
            name = match.group(2)
            if name in self.variables and name not in self.unsafe:
                known = self.variables[name]
                return known if match.group(1) == _QVAR else re.sub(r"\s+", _SPLIT, known)
            return "$" + name

        text = _restore(_VARIABLE.sub(value, text))
        return [part for part in text.split(_SPLIT) if part]

    def simple_command(self, node: _Node, depth: int, primary: bool) -> None:
        for kind, sub in node.subs:
            self.substitution(kind, sub, depth + 1, primary)
        if node.too_deep:
            self.add("approve", "policy.nesting", "command substitutions nested too deeply")
        inputs: list[str] = []
        for op, target in node.redirects:
            path = " ".join(self.expand([target]))
            if op in _OUTPUT_REDIRECTS:
                normal = _normalize_path(path, self.roots)
                self.flag(
                    "paths", normal, f"writes {normal}", "run_command", outside=_is_outside(normal)
                )
            else:
                inputs.append(f"{op} {path}")

        if all(_ASSIGNMENT.match(w.text) for w in node.words) and node.words:
            self.assign(node.words)
            for text in self.expand(node.words):
                self.flag("commands", text, _clip(text))
            return
        written = self.expand(node.words)
        words = written
        while words and words[0].lower() in _KEYWORDS:
            words = words[1:]
        if words and words[0].lower() in _NOT_COMMANDS:
            primary = False
        suffix = (" " + " ".join(inputs)) if inputs else ""
        # A here-document or here-string is seen as the command's arguments, as `echo`'s are:
        # `cat > conftest.py <<EOF ... EOF` as `echo ... > conftest.py`, so that no rule is
        # dodged by moving its words into one. A shell reading it runs it instead (below).
        fed = [" ".join(self.expand([word])) for word in node.stdin]
        if not words:
            if fed:  # `done <<EOF`: the input of a loop, read by commands the gate cannot tell
                view = _view([*written, *fed]) + suffix
                if not self.flag("commands", view, _clip(view)) and primary:
                    self.default(_clip(view))
            return

        layers = self.unwrap(words)
        if layers.stdin_shell:
            fed = []
        views: list[str] = []
        for layer in layers.views:
            original, *others = self.readings(layer)
            # The other readings first: the last view stays the command as written (`pipes`).
            views.extend(_view([*other, *fed]) + suffix for other in others)
            views.append(_view([*original, *fed]) + suffix)
        self.views[id(node)] = views
        self.commands[id(node)] = layers.command
        hit = False
        for view in views:
            hit = self.flag("commands", view, _clip(view)) or hit
        for script in layers.scripts:
            self.nested(script, depth + 1, primary)
        if layers.delegated:
            return
        if layers.stdin_shell:
            read, complete = self.stdin_texts(node, depth)
            for text in read:
                self.nested(text, depth + 1, primary)
            if read and complete:
                return  # the shell runs exactly what was read: decided above
        if primary and not hit:
            inner, *also = [_view([*r, *fed]) + suffix for r in self.readings(layers.command)]
            self.decide("commands", inner, _clip(inner), also=also)

    def readings(self, words: list[str]) -> list[list[str]]:
        """`words` as written, then as the command may read them (`_readings`)."""
        return [words, *_readings(words, self.policy.options_of)]

    def stdin_texts(self, node: _Node, depth: int) -> tuple[list[str], bool]:
        """What is known of a command's input, and whether that is all of it: here-documents,
        here-strings, what printers (`echo`, `printf`) print, also through passthrough
        commands (`cat`, `tee`) that read nothing but their input."""
        texts = [" ".join(self.expand([word])) for word in node.stdin]
        complete = True
        for source in node.sources:
            command = self.commands.get(id(source))
            name = _basename(command[0]).lower() if command else ""
            if command and name in self.policy.printers:
                texts.append(_printed(command))
                if any("\\" in arg or "%" in arg for arg in command[1:]):
                    # dash's echo decodes \0NNN but not \xHH, bash's none without -e, printf
                    # also formats: what the shell reads is not sure. Both readings are checked,
                    # and the shell is decided as one whose input is unknown.
                    texts.append(_printed(command, decode=False))
                    complete = False
            elif (
                command
                and name in self.policy.passthrough
                and depth <= self.policy.spec.shell.max_depth
                and all(arg.startswith("-") for arg in command[1:])
            ):
                more, known = self.stdin_texts(source, depth + 1)
                texts.extend(more)
                complete = complete and known
            else:
                complete = False
        return texts, complete

    def assign(self, words: Sequence[_Word]) -> None:
        for word in words:
            match = _ASSIGNMENT.match(word.text)
            if match is None:  # pragma: no cover - checked by the caller
                continue
            name, append, value = match.groups()
            if append or name in self.unsafe or word.subs or _SENTINEL.search(value):
                self.variables.pop(name, None)
                self.unsafe.add(name)
            else:
                self.variables[name] = _restore(value)

    def unwrap(self, words: list[str]) -> _Layers:
        """Peel wrappers and leading assignments off a command; find the scripts it runs."""
        policy = self.policy
        layers = _Layers()
        current = words
        while current:
            layers.views.append(current)
            base = _basename(current[0])
            if base != current[0]:
                layers.views.append([base, *current[1:]])
            layers.command = current
            assignments = 0
            while assignments < len(current) and _ASSIGNMENT.match(current[assignments]):
                assignments += 1
            if assignments:
                current = current[assignments:]
                continue
            name = base.lower()
            args = current[1:]
            if name in policy.wrappers:
                rest, script = _skip_wrapper_options(args, policy.wrappers[name])
                if script is not None:
                    layers.scripts.append(script)
                    layers.delegated = True
                    return layers
                if not rest:
                    return layers
                current = rest
                continue
            if name in policy.shells:
                with_c, from_stdin, operand = _shell_arguments(
                    args, policy.spec.shell.shell_options_with_value
                )
                if with_c and operand is not None:
                    layers.scripts.append(operand)
                    layers.delegated = True
                elif not with_c:
                    layers.stdin_shell = from_stdin or operand is None
                return layers
            if name in policy.evals:
                if args:
                    layers.scripts.append(" ".join(args))
                    layers.delegated = True
                return layers
            if name in policy.exec_options:
                layers.scripts.extend(_exec_commands(args, policy.exec_options[name]))
            return layers
        return layers

    def pipes(self) -> None:
        rules = self.policy.rules("run_command", "pipe")
        if not rules:
            return
        nodes = [node for node in self.graph if id(node) in self.views]
        for rule in rules:
            feeds = {
                id(n): any(p.search(v) for p in rule.patterns for v in self.views[id(n)])
                for n in nodes
            }
            fed_by = _upstream(self.graph, feeds)
            for node in nodes:
                source = fed_by.get(id(node))
                if source is None:
                    continue
                for view in self.views[id(node)]:
                    if any(r.search(view) for r in rule.receivers) and not rule.exempt(view):
                        giver = self.views[id(source)][-1]
                        shown = f"{_clip(giver, 80)} -> {_clip(view, 80)}"
                        self.add(rule.effect, rule.name, rule.explain(shown))
                        break


@dataclass
class _Layers:
    views: list[list[str]] = field(default_factory=list)  # outermost first
    command: list[str] = field(default_factory=list)  # the innermost command
    scripts: list[str] = field(default_factory=list)  # command lines it runs
    delegated: bool = False  # the command is its scripts (`sh -c`, `eval`)
    stdin_shell: bool = False  # a shell reading its commands from stdin


def _readings(
    words: list[str], options_of: Callable[[Sequence[str]], frozenset[str]]
) -> list[list[str]]:
    """The ways other than as written that the command `words` may read its arguments, for
    rules to see too:

    - getopt's: a short option's value may be glued to it (`sort -o/tmp/x`, `file -f.env`) and
      short options clustered (`sort -ro x`, `git grep -iOcmd`). Read once with the value after
      the first letter (`-o /tmp/x`), once with each letter an option up to the first other
      character, the rest the value (`-r -o x`, `-i -O -c -m -d`).
    - GNU getopt_long's, git's and argparse's: a long option may be any unambiguous prefix of
      its name (`sort --compress=sh` is --compress-program=sh). For the commands `[shell]
      long_options` names, a prefix of options it lists is read as each of them, unless it is
      one itself (git's --text is no --textconv): rules need only the whole name.
    """
    out: list[list[str]] = []
    for split in (_split_first, _split_cluster):
        reading = [words[0]]
        for word in words[1:]:
            reading.extend(split(word))
        options = options_of(reading)
        if options:
            reading = [reading[0], *(w for word in reading[1:] for w in _spelled(word, options))]
        if reading != words and reading not in out:
            out.append(reading)
    return out


def _split_first(word: str) -> list[str]:
    if len(word) > 2 and word[0] == "-" and word[1].isascii() and word[1].isalpha():
        return [word[:2], word[2:]]
    return [word]


def _split_cluster(word: str) -> list[str]:
    cluster = re.match(r"-[A-Za-z]+", word)
    if cluster is None or len(word) == 2:
        return [word]
    rest = word[cluster.end() :]
    return [f"-{letter}" for letter in cluster.group(0)[1:]] + ([rest] if rest else [])


def _spelled(word: str, options: frozenset[str]) -> list[str]:
    """`word` as every listed long option it may abbreviate (`--open=x`:
    `--open-files-in-pager=x`), or as it is."""
    name, eq, value = word.partition("=")
    name = name.lower()
    if not name.startswith("--") or len(name) < 3 or name in options:
        return [word]
    return [option + eq + value for option in sorted(options) if option.startswith(name)] or [word]


def _view(words: Sequence[str]) -> str:
    return re.sub(r"\s+", " ", " ".join(words)).strip()


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1] if "/" in word.rstrip("/") else word


def _skip_wrapper_options(args: list[str], spec: Wrapper) -> tuple[list[str], str | None]:
    """The words after a wrapper's options and operands, or the script one option carries."""
    positional = spec.positional
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        for option in spec.script_options:
            if arg == option:
                return [], " ".join(args[i + 1 :])
            if arg.startswith(option) and option.startswith("-") and len(arg) > len(option):
                value = arg[len(option) :].removeprefix("=")
                return [], " ".join([value, *args[i + 1 :]])
        if arg.startswith("-") and len(arg) > 1:
            i += 2 if arg in spec.options_with_value else 1
        elif _ASSIGNMENT.match(arg):
            i += 1
        elif positional > 0:
            positional -= 1
            i += 1
        else:
            break
    return args[i:], None


def _shell_arguments(args: list[str], with_value: Sequence[str]) -> tuple[bool, bool, str | None]:
    """(has -c, reads stdin (-s), first operand) of a shell's arguments."""
    with_c = from_stdin = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--", "-"):
            i += 1
            break
        if arg[:1] in ("-", "+") and len(arg) > 1:
            if arg in with_value:
                i += 2
                continue
            if arg[0] == "-" and not arg.startswith("--"):
                with_c = with_c or "c" in arg[1:]
                from_stdin = from_stdin or "s" in arg[1:]
            i += 1
            continue
        break
    return with_c, from_stdin, args[i] if i < len(args) else None


def _exec_commands(args: list[str], flags: frozenset[str]) -> list[str]:
    scripts: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in flags:
            end = i + 1
            while end < len(args) and args[end] not in (";", "+"):
                end += 1
            scripts.append(" ".join(args[i + 1 : end]))
            i = end
        i += 1
    return [s for s in scripts if s.strip()]


def _printed(words: Sequence[str], decode: bool = True) -> str:
    """What `echo ...` or `printf ...` writes, escapes decoded (a shell reading it runs it)."""
    args = list(words[1:])
    if _basename(words[0]).lower() == "echo":
        while args and re.fullmatch(r"-[neE]+", args[0]):
            args = args[1:]
    return _ansi_c(" ".join(args)) if decode else " ".join(args)


def _upstream(graph: Sequence[_Node], feeds: Mapping[int, bool]) -> dict[int, _Node | None]:
    """For each node, a node upstream of it (reaching its input) for which `feeds` holds."""
    memo: dict[int, _Node | None] = {}
    for start in graph:
        if id(start) in memo:
            continue
        stack: list[tuple[_Node, int]] = [(start, 0)]
        active = {id(start)}
        while stack:
            node, index = stack[-1]
            if index < len(node.sources):
                stack[-1] = (node, index + 1)
                source = node.sources[index]
                if id(source) not in memo and id(source) not in active:
                    stack.append((source, 0))
                    active.add(id(source))
                continue
            found: _Node | None = None
            for source in node.sources:
                if feeds.get(id(source)):
                    found = source
                    break
                if memo.get(id(source)) is not None:
                    found = memo[id(source)]
                    break
            memo[id(node)] = found
            stack.pop()
            active.discard(id(node))
    return memo


# --- packages -------------------------------------------------------------------------------


def _packages(detail: str, spec: InstallKnowledge) -> list[tuple[str, str]]:
    """(registry, name) of every package an install detail asks for.

    Accepted forms: an installer command (`pip install a b`, `npm i x`, ...), `registry:name`
    tokens (`pypi:requests`), or bare names (the default registry). Package indexes, URLs, local
    paths and requirement files become the registries `index`, `url`, `path` and `file`.
    """
    words = [_restore(t.text) for t in _Lexer(detail).run() if isinstance(t, _Word)]
    simple = [re.sub(r"^(python|pip)[0-9.]*$", r"\1", _basename(w).lower()) for w in words]
    registry = spec.default_registry.lower()
    for prefix, name in sorted(spec.installers.items(), key=lambda kv: -len(kv[0].split())):
        parts = prefix.lower().split()
        if simple[: len(parts)] == parts:
            registry = name.lower()
            words = words[len(parts) :]
            break
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and len(word) > 1:
            option, eq, value = word.partition("=")
            takes = (
                option in spec.source_options
                or option in spec.requirement_options
                or option in spec.package_options
                or option in spec.options_with_value
            )
            if takes and not eq:
                value = words[i + 1] if i + 1 < len(words) else ""
                i += 1
            if option in spec.source_options:
                found.append(("index", value))
            elif option in spec.requirement_options:
                found.append(("file", value))
            elif option in spec.package_options:
                found.append(_package(value, registry, spec))
            i += 1
            continue
        found.append(_package(word, registry, spec))
        i += 1
    return found or [(registry, "")]


def _package(token: str, registry: str, spec: InstallKnowledge) -> tuple[str, str]:
    text = token.strip()
    if re.match(r"(?i)^[a-z][a-z0-9+.-]*://", text) or re.match(r"(?i)^(git|hg|svn|bzr)\+", text):
        return ("url", text)
    if "://" in text:
        return ("url", text)
    explicit = re.match(r"^([A-Za-z0-9_-]+):(?!//)(.+)$", text)
    if explicit:
        registry, text = explicit.group(1).lower(), explicit.group(2)
    if text.startswith((".", "/", "~")) or text.lower().endswith((".whl", ".tar.gz", ".zip")):
        return ("path", text)
    if registry == "npm":
        if text.startswith("@"):
            scope, _, rest = text[1:].partition("/")
            name = f"@{scope}/{rest.split('@', 1)[0]}"
        else:
            name = text.split("@", 1)[0]
    elif "/" in text and registry not in ("go", "npm"):
        return ("path", text)
    else:
        match = re.match(r"[A-Za-z0-9_][A-Za-z0-9._/-]*", text)
        name = match.group(0) if match else text
    name = name.lower()
    if registry in {r.lower() for r in spec.normalize_names}:
        name = _pep503(name)
    return (registry, name)


# --- shell syntax -----------------------------------------------------------------------------
#
# A lexer and parser for the part of POSIX shell / bash syntax that decides what runs: words
# with quotes, escapes and expansions; operators; redirections and here-documents; command,
# process and arithmetic substitutions; subshells and brace groups. They are total: any text
# yields a script (a real shell might refuse some of them; that is never less safe).

_SUBST: Final = "__subst__"  # stands for the output of a substitution
_LB, _RB, _COMMA = "\ue010", "\ue011", "\ue012"  # unquoted {  }  , (brace expansion)
_VAR, _QVAR, _VEND = "\ue001", "\ue003", "\ue002"  # $NAME unquoted / quoted, end
_SPLIT: Final = "\ue005"  # a word break inside an expanded word
_SENTINEL: Final = re.compile("[\ue000-\ue0ff]")
_VARIABLE: Final = re.compile(f"([{_VAR}{_QVAR}])([A-Za-z_][A-Za-z0-9_]*){_VEND}")


def _restore(text: str) -> str:
    """A word with brace sentinels back to characters and unexpanded variables as `$NAME`."""
    text = _VARIABLE.sub(lambda m: "$" + m.group(2), text)
    return text.replace(_LB, "{").replace(_RB, "}").replace(_COMMA, ",")


def _brace_span(text: str) -> tuple[int, int, list[str]] | None:
    if len(text) > 4000 or text.count(_LB) > 64:
        return None
    for start, char in enumerate(text):
        if char != _LB:
            continue
        depth, last = 0, start + 1
        parts: list[str] = []
        for i in range(start, len(text)):
            if text[i] == _LB:
                depth += 1
            elif text[i] == _RB:
                depth -= 1
                if depth == 0:
                    if parts:
                        parts.append(text[last:i])
                        return start, i, parts
                    break
            elif text[i] == _COMMA and depth == 1:
                parts.append(text[last:i])
                last = i + 1
    return None


def _brace_expand(text: str, limit: int = 64) -> list[str]:
    out: list[str] = []
    todo = [text]
    while todo:
        current = todo.pop()
        span = _brace_span(current)
        if span is None:
            out.append(current)
        else:
            start, end, alternatives = span
            todo.extend(current[:start] + a + current[end + 1 :] for a in reversed(alternatives))
        if len(out) + len(todo) > limit:
            return [text]
    return out


_ANSI: Final[dict[str, str]] = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}


def _ansi_c(text: str) -> str:
    r"""Decode `$'...'` / `echo -e` / `printf` escapes: `\n`, `\xHH`, `\uHHHH`, `\NNN`."""

    def decode(match: re.Match[str]) -> str:
        body = match.group(1)
        head = body[0]
        try:
            if head in "xuU":
                return chr(int(body[1:], 16)) if len(body) > 1 else match.group(0)
            if head.isdigit():
                return chr(int(body, 8))
        except (ValueError, OverflowError):
            return match.group(0)
        return _ANSI.get(head, match.group(0))

    pattern = r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|0?[0-7]{1,3}|.)"
    return re.sub(pattern, decode, text, flags=re.DOTALL)


def _closing(text: str, start: int, open_: str = "(", close: str = ")") -> int:
    """The index of the `close` matching an `open_` just before `start` (or len(text)), counting
    brackets outside quotes. Only for `${...}` and `$((...))`, whose text the gate trusts only
    when it is plain (a name, numbers and operators): anything else in them is a doubt. A
    command substitution's end is found by lexing its commands (`_Lexer.closing`)."""
    depth, i, n = 1, start, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "'":
            end = text.find("'", i + 1)
            i = n if end < 0 else end + 1
            continue
        if char == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if char == open_:
            depth += 1
        elif char == close:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return n


@dataclass
class _Word:
    text: str
    subs: list[tuple[str, str]] = field(default_factory=list)  # (cmd|in|out|arith, source)
    quoted: bool = False


@dataclass
class _Op:
    op: str


@dataclass
class _Redirect:
    op: str
    body: _Word | None = None  # a here-document


_Token = _Word | _Op | _Redirect


# What the gate cannot be sure /bin/sh reads as the gate does. The shell that runs a command
# line is /bin/sh (`codeyard.sandbox.protocol.SHELL`), which is dash on Debian: its dialect is
# the one that counts. Nested scripts (`bash -c '...'`) are read with the same lexer, so where
# bash and dash differ the gate doubts; what it doubts goes to a person, never runs unasked.
_DOUBTS: Final[dict[str, str]] = {
    "policy.whitespace": (
        "a carriage return, form feed, vertical tab or other whitespace than space, tab and "
        "newline: /bin/sh splits words at spaces and tabs only, the gate cannot be sure where "
        "its words end"
    ),
    "policy.characters": (
        "a NUL or a character the gate reserves for itself (U+E000 to U+E0FF): the gate cannot "
        "read the line as the shell does"
    ),
    "policy.dialect": (
        'syntax that /bin/sh (dash) reads otherwise than bash ($\'...\', $"...", $[...], \\" in '
        "a here-document's backquotes): the gate cannot be sure which the line is meant for"
    ),
    "policy.heredoc": "a here-document whose delimiter the gate cannot read as the shell does",
    "policy.substitution": (
        "a command substitution whose end the gate cannot be sure of (a `case` in it, or a "
        "here-document still open where it ends)"
    ),
    "policy.expansion": (
        "a ${...} expansion other than ${name} or ${#name}: its word or pattern can hide a path "
        "or a command"
    ),
    "policy.arithmetic": (
        "arithmetic the gate cannot check (bash's ((...)), or $((...)) with more than numbers "
        "and operators): the names, $ and substitutions in it are evaluated as expressions, and "
        "bash runs the $(...) in a value such as a[$(cmd)]"
    ),
    "policy.continuation": (
        "a backslash-newline inside a `$` expansion's opening: the shell joins the lines before "
        "it reads the `$` ($\\<newline>( is $( to it)"
    ),
    "policy.nesting": "substitutions nested too deeply to read",
}
_MAX_NEST: Final = 48  # substitutions inside substitutions the lexer follows to find their end
_ODD_SPACE: Final = re.compile(r"[^\S \t\n]")  # whitespace that is no blank to /bin/sh
_RESERVED: Final = re.compile("[\0\ue000-\ue0ff]")
_HEX: Final = re.compile(r"0[xX][0-9A-Fa-f]+")
_ARITHMETIC_CHARS: Final = re.compile(r"[ \t\n0-9+\-*/%<>=!&|^~?:,()]*")  # one class: linear
_PLAIN_PARAMETER: Final = re.compile(r"#?(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?$!-])")
_HEREDOC_ENDS: Final = " \t\n;&|<>()"


def _continued(text: str, index: int) -> int:
    """The index of the first character at or after `index` that no backslash-newline (a line
    continuation, which the shell removes before it reads a token) hides."""
    while text.startswith("\\\n", index):
        index += 2
    return index


def _plain_arithmetic(text: str) -> bool:
    """Numbers (decimal, 0x hex) and operators in balanced brackets: nothing to expand."""
    return bool(_ARITHMETIC_CHARS.fullmatch(_HEX.sub("0", text))) and _balanced(text)


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


class _Lexer:
    """Words and operators of a command line, read as /bin/sh (dash) reads them.

    `closer`: the text from `start` is the inside of a `$(`, `<(` or `>(`: lexing stops at the
    `)` that closes it (`scan` says whether one did), so comments, here-documents and quotes in
    it are read as the shell reads them. Lexers of one command line share `doubts` (rule ->
    what was seen): each is something the gate cannot be sure of, sent for approval.
    """

    def __init__(
        self,
        text: str,
        start: int = 0,
        doubts: dict[str, str] | None = None,
        nest: int = 0,
        closer: bool = False,
    ) -> None:
        if doubts is None:  # the whole line: what no part of the gate can read as the shell does
            doubts = {}
            if odd := _ODD_SPACE.search(text):
                doubts["policy.whitespace"] = f"{odd.group(0)!r} at character {odd.start() + 1}"
            if reserved := _RESERVED.search(text):
                doubts["policy.characters"] = f"{reserved.group(0)!r} at {reserved.start() + 1}"
                # Replaced, not dropped: dropping one after a backslash would change what the
                # backslash escapes. To dash it is an ordinary character, as U+FFFD is.
                text = _RESERVED.sub("\ufffd", text)
        self.s = text
        self.i = start
        self.doubts = doubts
        self.nest = nest
        self.closer = closer
        self.parens = 0  # ( ) inside a closer, to find the ) that closes it
        self.tokens: list[_Token] = []
        self.buf: list[str] = []
        self.started = False
        self.quoted = False
        self.subs: list[tuple[str, str]] = []
        self.heredocs: list[tuple[_Redirect, str, bool, bool]] = []
        self.malformed = False  # an unterminated quote or substitution

    def doubt(self, rule: str, seen: str) -> None:
        if rule not in self.doubts:  # the first one is shown
            self.doubts[rule] = _clip(seen, 60)

    def add(self, text: str, quoted: bool = False) -> None:
        self.buf.append(text)
        self.started = True
        self.quoted = self.quoted or quoted

    def end_word(self) -> None:
        if self.started:
            text = "".join(self.buf)
            if self.closer and text == "case" and not self.quoted:
                # `case x in a) ...`: a `)` that does not close the substitution.
                self.doubt("policy.substitution", "case in a substitution")
            self.tokens.append(_Word(text, self.subs, self.quoted))
        self.buf, self.started, self.quoted, self.subs = [], False, False, []

    def op(self, op: str, length: int) -> None:
        self.end_word()
        self.tokens.append(_Op(op))
        self.i += length

    def run(self) -> list[_Token]:
        self.scan()
        self.end_word()
        self.read_heredocs()
        return self.tokens

    def scan(self) -> bool:
        """Lex up to the end of the text or, in a closer, its `)`: True if that was found (and
        `i` is its index)."""
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c == "\n":
                self.op("\n", 1)
                self.read_heredocs()
            elif c in " \t":  # dash splits words here only: \r, \f and \v are word characters
                self.end_word()
                self.i += 1
            elif c == "#" and not self.started:
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end
            elif c == "\\":
                if s.startswith("\\\n", self.i):
                    self.i += 2
                    continue
                self.add(s[self.i + 1 : self.i + 2], quoted=True)
                self.i += 2
            elif c == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    end, self.malformed = n, True
                self.add(s[self.i + 1 : end], quoted=True)
                self.i = end + 1
            elif c == '"':
                self.i += 1
                self.double_quoted('"')
            elif c == "`":
                self.backtick()
            elif c == "$":
                self.dollar(quoted=False)
            elif c in "<>" and s.startswith("(", self.i + 1):
                end = self.closing(self.i + 2)
                self.subs.append(("in" if c == "<" else "out", s[self.i + 2 : end]))
                self.add(_SUBST)
                self.i = end + 1
            elif c in "<>":
                self.redirect()
            elif c == "&":
                if s.startswith("&&", self.i):
                    self.op("&&", 2)
                else:  # `&>` is bash's; to dash `a &>x b` is `a &` and `>x b`, which runs b
                    self.op("&", 1)
            elif c == "|":
                if s.startswith("||", self.i):
                    self.op("||", 2)
                else:
                    self.op("|", 2 if s.startswith("|&", self.i) else 1)
            elif c == ";":
                length = 1
                while self.i + length < n and s[self.i + length] in ";&":
                    length += 1
                self.op(";", length)
            elif c in "()":
                if c == ")" and self.closer and self.parens == 0:
                    self.end_word()
                    return True
                if s.startswith("(", _continued(s, self.i + 1)):  # bash: arithmetic (( ))
                    self.doubt("policy.arithmetic", s[self.i : self.i + 20])
                self.parens += 1 if c == "(" else -1
                self.op(c, 1)
            elif c in "{},":
                self.add({"{": _LB, "}": _RB, ",": _COMMA}[c])
                self.i += 1
            else:
                self.add(c)
                self.i += 1
        return False

    def double_quoted(self, terminator: str | None) -> None:
        """Inside double quotes (`terminator` '"'), or an unquoted here-document's body (None)."""
        s, n = self.s, len(self.s)
        self.started = True
        self.quoted = True
        while self.i < n:
            c = s[self.i]
            if terminator is not None and c == terminator:
                self.i += 1
                return
            if c == "\\" and self.i + 1 < n:
                following = s[self.i + 1]
                if following == "\n":
                    self.i += 2
                elif following in "$`\\" or (following == '"' and terminator is not None):
                    # In a here-document \" stays \": a shell reading it sees no quote there.
                    self.buf.append(following)
                    self.i += 2
                else:
                    self.buf.append(c)
                    self.i += 1
            elif c == "`":
                self.backtick(in_quotes=terminator is not None, in_heredoc=terminator is None)
            elif c == "$":
                self.dollar(quoted=True)
            else:
                self.buf.append(c)
                self.i += 1
        self.malformed = self.malformed or terminator is not None

    def closing(self, start: int) -> int:
        """The index of the `)` that ends the command substitution whose text starts at `start`
        (or len(text)), found by lexing its commands as the shell does: a `)` in a comment, a
        quote or a here-document is no end."""
        n = len(self.s)
        if self.nest >= _MAX_NEST:
            self.doubt("policy.nesting", self.s[start : start + 60])
            return n
        inner = _Lexer(self.s, start, self.doubts, self.nest + 1, closer=True)
        closed = inner.scan()
        self.malformed = self.malformed or inner.malformed or not closed
        if closed and inner.heredocs:
            # dash reads the here-document as empty, bash from the lines after the `)`.
            self.doubt("policy.substitution", self.s[start : inner.i + 1])
        return inner.i if closed else n

    def bracketed(self, start: int, open_: str, close: str) -> int:
        end = _closing(self.s, start, open_, close)
        self.malformed = self.malformed or end >= len(self.s)
        return end

    def backtick(self, in_quotes: bool = False, in_heredoc: bool = False) -> None:
        """A backquoted substitution: its text up to the next unescaped backquote, with `\\`
        removed before `$`, a backquote, `\\` and, in double quotes or (dash) a here-document,
        `"`."""
        s, n = self.s, len(self.s)
        i, inner = self.i + 1, []
        while i < n and s[i] != "`":
            following = s[i + 1] if i + 1 < n else ""
            if s[i] == "\\" and (
                following in ("`", "$", "\\") or (following == '"' and (in_quotes or in_heredoc))
            ):
                if following == '"' and in_heredoc:  # bash keeps this backslash, dash not
                    self.doubt("policy.dialect", s[self.i : i + 2])
                inner.append(following)
                i += 2
            else:
                inner.append(s[i])
                i += 1
        self.malformed = self.malformed or i >= n
        self.subs.append(("cmd", "".join(inner)))
        self.add(_SUBST)
        self.i = i + 1

    def dollar(self, quoted: bool) -> None:
        s, n, i = self.s, len(self.s), self.i
        following = s[i + 1] if i + 1 < n else ""
        if _continued(s, i + 1) > i + 1 or (following == "(" and _continued(s, i + 2) > i + 2):
            self.doubt("policy.continuation", s[i : i + 20])
        if following == "'" and not quoted:
            # bash's $'...' with C escapes. dash has no such quote: to it `$'a\'` is `$` and
            # the quote 'a\', so where the two read the line apart the gate doubts; decoding it
            # as bash does still lets deny rules see what bash would run.
            j = i + 2
            while j < n and s[j] != "'":
                j += 2 if s[j] == "\\" else 1
            self.doubt("policy.dialect", s[i : j + 1])
            self.malformed = self.malformed or j >= n
            self.add(_ansi_c(s[i + 2 : min(j, n)]), quoted=True)
            self.i = j + 1
        elif following == '"' and not quoted:
            self.doubt("policy.dialect", s[i : i + 20])  # bash: translated; dash: a `$`
            self.i += 2
            self.double_quoted('"')
        elif s.startswith("((", i + 1):
            end = self.bracketed(i + 2, "(", ")")
            body = s[i + 3 : max(i + 3, end - 1)]
            if not (_plain_arithmetic(body) and s[end - 1 : end] == ")"):
                self.doubt("policy.arithmetic", s[i : end + 1])
            self.subs.append(("arith", body))
            self.add(_SUBST)
            self.i = end + 1
        elif following == "[":  # bash's old $[...] arithmetic; to dash a `$`
            self.doubt("policy.dialect", s[i : i + 20])
            self.add("$")
            self.i += 1
        elif following == "(":
            end = self.closing(i + 2)
            self.subs.append(("cmd", s[i + 2 : end]))
            self.add(_SUBST)
            self.i = end + 1
        elif following == "{":
            end = self.bracketed(i + 2, "{", "}")
            self.i = end + 1
            self.parameter(s[i + 2 : end], quoted)
        elif re.match(r"[A-Za-z_]", following):
            match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", s[i + 1 :])
            name = match.group(0) if match else following
            self.i = i + 1 + len(name)
            self.parameter(name, quoted)
        elif following and following in "0123456789@*":
            self.i += 2
            self.add("sh" if following == "0" else "", quoted)
        elif following and following in "#?$!-":
            self.add("$" + following)
            self.i += 2
        else:
            self.add("$")
            self.i += 1

    def parameter(self, name: str, quoted: bool) -> None:
        if not _PLAIN_PARAMETER.fullmatch(name):
            # ${x:-word}, ${x#pattern}, ${x/a/b}, ${x:1}, ${a[i]}, ${!x}: a word in it can be a
            # path or a $(command) the gate does not see as such, or bash arithmetic.
            self.doubt("policy.expansion", "${" + name + "}")
        if re.fullmatch(r"IFS(?:\W.*)?", name, re.DOTALL):
            if quoted:
                self.add(" ")
            else:
                self.end_word()
        elif name == "HOME":
            self.add("~")
        elif name == "PWD":
            self.add(".")
        elif re.fullmatch(r"[0-9]+|[@*]", name):
            self.add("", quoted)
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            self.add((_QVAR if quoted else _VAR) + name + _VEND)
        else:
            self.add("${" + name + "}")

    def redirect(self) -> None:
        word = "".join(self.buf)
        if self.started and not self.quoted and not self.subs and word.isdigit():
            self.buf, self.started, self.subs = [], False, []  # a file descriptor number
        else:
            self.end_word()
        s = self.s
        ops = (">>", ">|", ">&", "<<<", "<<-", "<<", "<>", "<&", ">", "<")
        op = next(o for o in ops if s.startswith(o, self.i))
        self.i += len(op)
        token = _Redirect(op)
        self.tokens.append(token)
        if op in ("<<", "<<-"):
            while self.i < len(s) and s[self.i] in " \t":
                self.i += 1
            delimiter, quoted = self.delimiter()
            if not (delimiter or quoted):
                self.malformed = True  # `<<` with no word: the shell refuses the line
            self.heredocs.append((token, delimiter, op == "<<-", quoted))

    def delimiter(self) -> tuple[str, bool]:
        """A here-document's delimiter: the word after `<<` with its quotes and backslashes
        removed as the shell removes them (`E\\;` is `E;`, `'E F'` is `E F`), and whether any
        part of it was quoted (then the body is not expanded)."""
        s, n = self.s, len(self.s)
        out: list[str] = []
        quoted = False
        start = self.i
        while self.i < n and s[self.i] not in _HEREDOC_ENDS:
            c = s[self.i]
            if c == "\\":
                if not s.startswith("\\\n", self.i):
                    out.append(s[self.i + 1 : self.i + 2])
                    quoted = True
                self.i += 2
            elif c == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    end, self.malformed = n, True
                out.append(s[self.i + 1 : end])
                quoted = True
                self.i = end + 1
            elif c == '"':
                quoted = True
                self.i += 1
                while self.i < n and s[self.i] != '"':
                    if s[self.i] == "\\" and self.i + 1 < n and s[self.i + 1] in '$`"\\\n':
                        if s[self.i + 1] != "\n":
                            out.append(s[self.i + 1])
                        self.i += 2
                        continue
                    if s[self.i] in "$`":
                        self.doubt("policy.heredoc", s[start : self.i + 1])
                    out.append(s[self.i])
                    self.i += 1
                self.malformed = self.malformed or self.i >= n
                self.i += 1
            else:
                if c in "$`":  # shells differ on what an expansion in a delimiter means
                    self.doubt("policy.heredoc", s[start : self.i + 1])
                out.append(c)
                self.i += 1
        return "".join(out), quoted

    def read_heredocs(self) -> None:
        s, n = self.s, len(self.s)
        for token, delimiter, strip_tabs, quoted in self.heredocs:
            lines: list[str] = []
            while self.i < n:
                end = s.find("\n", self.i)
                end = n if end < 0 else end
                line = s[self.i : end]
                self.i = end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
                lines.append(line)
            body = "\n".join(lines)
            if quoted:
                token.body = _Word(body, quoted=True)
            else:
                # Expanded like double quotes. dash reads a `$(` in it to its `)` even past the
                # delimiter's line: a substitution left open in the body the gate cut is malformed.
                inner = _Lexer(body, 0, self.doubts, self.nest + 1)
                inner.double_quoted(None)
                self.malformed = self.malformed or inner.malformed
                token.body = _Word("".join(inner.buf), inner.subs, True)
        self.heredocs = []


@dataclass(eq=False)
class _Node:
    """One simple command, and what reaches its input."""

    words: list[_Word] = field(default_factory=list)
    redirects: list[tuple[str, _Word]] = field(default_factory=list)
    stdin: list[_Word] = field(default_factory=list)  # here-documents and here-strings
    subs: list[tuple[str, _Script]] = field(default_factory=list)
    sources: list[_Node] = field(default_factory=list)
    too_deep: bool = False


@dataclass(eq=False)
class _Script:
    nodes: list[_Node] = field(default_factory=list)
    malformed: bool = False
    doubts: dict[str, str] = field(default_factory=dict)  # rule -> what the gate is unsure of


class _Parser:
    def __init__(self, graph: list[_Node], max_depth: int) -> None:
        self.graph = graph
        self.max_depth = max_depth

    def parse(self, text: str, depth: int) -> _Script:
        lexer = _Lexer(text)
        tokens = lexer.run()
        script = _Script(malformed=lexer.malformed, doubts=lexer.doubts)
        frames: list[tuple[list[_Node], int]] = []  # groups: (their input, first node)
        pipe_in: list[_Node] = []
        last: list[_Node] = []
        node = _Node()
        i = 0

        def finish() -> None:
            nonlocal node, last
            if not (node.words or node.redirects or node.stdin):
                return
            node.sources.extend(pipe_in)
            for incoming, _ in frames:
                node.sources.extend(incoming)
            words = [*node.words, *(w for _, w in node.redirects), *node.stdin]
            for word in words:
                for kind, source in word.subs:
                    self.substitution(node, kind, source, depth)
            self.graph.append(node)
            script.nodes.append(node)
            last = [node]
            node = _Node()

        while i < len(tokens):
            token = tokens[i]
            i += 1
            if isinstance(token, _Word):
                at_start = not (node.words or node.redirects)
                if at_start and not token.quoted and token.text in (_LB, _RB):
                    token = _Op("(" if token.text == _LB else ")")
                else:
                    node.words.append(token)
                    continue
            if isinstance(token, _Redirect):
                if token.body is not None:
                    node.stdin.append(token.body)
                    continue
                target = tokens[i] if i < len(tokens) else None
                if not isinstance(target, _Word):
                    continue
                i += 1
                if token.op == "<<<":
                    node.stdin.append(target)
                elif token.op in (">&", "<&") and re.fullmatch(r"[0-9]*-?", target.text):
                    pass  # duplicates a file descriptor
                else:
                    node.redirects.append((token.op, target))
                continue
            op = token.op
            finish()
            if op == "|":
                pipe_in = last
            elif op == "(":
                frames.append((pipe_in, len(script.nodes)))
                pipe_in = []
            elif op == ")":
                pipe_in = []
                if frames:
                    _, first = frames.pop()
                    last = script.nodes[first:]
            else:
                pipe_in, last = [], []
        finish()
        return script

    def substitution(self, node: _Node, kind: str, source: str, depth: int) -> None:
        if depth + 1 > self.max_depth:
            node.too_deep = True
            return
        if kind == "arith" and _plain_arithmetic(source):
            sub = _Script()  # numbers and operators: `1<(2)` is no process substitution
        else:
            sub = self.parse(source, depth + 1)
        node.subs.append((kind, sub))
        if kind in ("cmd", "in"):
            node.sources.extend(sub.nodes)
        elif kind == "out":
            for inner in sub.nodes:
                inner.sources.append(node)
