"""`shim_argv`: a command prefixed by util-linux `prlimit`, which sets its rlimits, then execs it.

Used by every backend: the limits are applied by the process that becomes the command, after
any wrapper (bubblewrap, the cgroup-joining shell) has started, so the wrapper itself is not
limited and RLIMIT_NPROC is counted in the sandbox's user namespace. `prlimit` is a small C
program (util-linux, essential on Debian: in /usr/bin of the host and of the sandbox image);
it replaced a `python -I -S` shim that cost a whole interpreter start (~9 ms) per run.

Soft and hard limits alike, so the command cannot raise them; never above a hard limit already
in force where the command runs (`ceilings`), which an unprivileged process could not raise.
Signal dispositions: the command gets the defaults, since the subprocess that starts the
wrapper restores SIGPIPE and SIGXFSZ (Python ignores them) and nothing after it changes them.
"""

from __future__ import annotations

import resource
import shutil
from collections.abc import Mapping

from codeyard.sandbox.limits import Limits
from codeyard.sandbox.protocol import SandboxUnavailable

NO_LIMIT = -1
# Where prlimit is looked for on the host: directories every backend shows the command.
_SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"

# The hard limit in force per resource (`resource.RLIMIT_*`) where the command runs; a resource
# that is missing has no ceiling.
Ceilings = Mapping[int, int]


def own_ceilings() -> Ceilings:
    """The hard limits of this process, which a command started by it inherits (neither
    bubblewrap nor the shell that joins a cgroup changes them)."""
    kinds = (
        resource.RLIMIT_AS,
        resource.RLIMIT_CPU,
        resource.RLIMIT_FSIZE,
        resource.RLIMIT_NOFILE,
        resource.RLIMIT_NPROC,
    )
    return {kind: resource.getrlimit(kind)[1] for kind in kinds}


def host_prlimit() -> str:
    """The host's prlimit, in a system directory (so bubblewrap's read-only /usr shows it)."""
    found = shutil.which("prlimit", path=_SYSTEM_PATH)
    if not found:
        raise SandboxUnavailable(
            "prlimit (util-linux) is not installed: the sandbox sets a command's rlimits with it "
            "(Debian/Ubuntu: `apt-get install -y util-linux`)"
        )
    return found


def shim_argv(
    prlimit: str, limits: Limits, nproc: int, command: list[str], ceilings: Ceilings
) -> list[str]:
    """`command` run by `prlimit` under `limits` (address space, CPU, file size, open files,
    no core dumps) and RLIMIT_NPROC `nproc` (`NO_LIMIT` to leave it alone)."""
    memory, cpu, size = limits.memory_bytes, limits.cpu_seconds, limits.file_size_bytes
    files = limits.open_files
    options = [
        _option("as", memory, memory, ceilings.get(resource.RLIMIT_AS)),
        # SIGXCPU at the soft limit, SIGKILL a second later if it is caught
        _option("cpu", cpu, cpu + 1, ceilings.get(resource.RLIMIT_CPU)),
        _option("fsize", size, size, ceilings.get(resource.RLIMIT_FSIZE)),
        _option("nofile", files, files, ceilings.get(resource.RLIMIT_NOFILE)),
        "--core=0:0",
    ]
    if nproc != NO_LIMIT:
        options.append(_option("nproc", nproc, nproc, ceilings.get(resource.RLIMIT_NPROC)))
    return [prlimit, *options, "--", *command]


def _option(name: str, soft: int, hard: int, ceiling: int | None) -> str:
    if ceiling is not None and ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    return f"--{name}={soft}:{hard}"
