"""`shim_argv`: a command prefixed by a few lines of Python that set its rlimits, then exec it.

Used by the backends that run the command with an interpreter of ours (bwrap, process): the
limits are applied by the process that becomes the command, after any wrapper (bubblewrap,
the cgroup-joining shell) has started, so the wrapper itself is not limited. Soft and hard
limits alike, so the command cannot raise them; never above a hard limit already in force.
"""

from __future__ import annotations

from pathlib import Path

from codeyard.sandbox.limits import Limits

# Runs as `python -I -S -c`: applies the rlimits (a negative value leaves that one alone),
# undoes the signal dispositions Python set for itself (ignored SIGPIPE/SIGXFSZ would be
# inherited by the command), then becomes the command. argv: AS CPU FSIZE NPROC -- command...
_SHIM = """\
import os, resource as r, signal, sys
def lim(kind, soft, hard):
    if soft < 0:
        return
    cur = r.getrlimit(kind)[1]
    if cur != r.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    r.setrlimit(kind, (soft, hard))
a = [int(x) for x in sys.argv[1:5]]
lim(r.RLIMIT_AS, a[0], a[0])
lim(r.RLIMIT_CPU, a[1], a[1] + 1)
lim(r.RLIMIT_FSIZE, a[2], a[2])
lim(r.RLIMIT_NPROC, a[3], a[3])
lim(r.RLIMIT_CORE, 0, 0)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
cmd = sys.argv[6:]
try:
    os.execvp(cmd[0], cmd)
except OSError as e:
    sys.stderr.write("codeyard sandbox: cannot run %r: %s\\n" % (cmd[0], e.strerror))
    sys.exit(127 if isinstance(e, FileNotFoundError) else 126)
"""

NO_LIMIT = -1


def shim_argv(python: Path | str, limits: Limits, nproc: int, command: list[str]) -> list[str]:
    """`command` run under `limits` (address space, CPU, file size, no core dumps) and
    RLIMIT_NPROC `nproc` (`NO_LIMIT` to leave it alone), by the interpreter `python`."""
    argv = [str(python), "-I", "-S", "-c", _SHIM]
    argv += [str(limits.memory_bytes), str(limits.cpu_seconds), str(limits.file_size_bytes)]
    return [*argv, str(nproc), "--", *command]
