"""Child processes that the kernel stops when the process that started them dies.

`codeyard up` starts nats-server and every service in a session of their own, so that a Ctrl-C
in its terminal reaches `up` alone, which then stops them in order (services first, NATS last).
That leaves nothing to stop them if `up` dies without cleaning up (SIGKILL, the OOM killer): they
would run on, orphaned, and nats-server would keep the port the next `up` needs.

Linux's PR_SET_PDEATHSIG makes the kernel signal a process when its parent dies. It must be set
by the child itself, between fork and exec (Python's `preexec_fn` can deadlock when the parent
has other threads, as `up` does) or after exec. It survives exec, so a child is started through
this file, run as a script: it asks for SIGTERM on its parent's death, checks that its parent is
still the process that started it (the parent may have died already, before the request), and
execs the real command, which keeps its pid. SIGTERM, not SIGKILL: every codeyard service and
nats-server stop cleanly on it.

The kernel watches the *thread* that forked the child, not the whole process: start these from
a thread that lives as long as the process, such as the event loop's.

When run as a script this file imports only the standard library (it starts with `-I -S`, for
speed and so that no environment variable changes what runs before the real command).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_GONE = 70  # the trampoline's exit status when the parent died before it could exec
_SCRIPT = os.path.abspath(__file__)  # now: a relative path would break once the cwd changes


def tied_to_this_process(argv: Sequence[str]) -> list[str]:
    """`argv`, run so that it gets SIGTERM when the calling thread of this process ends; as it
    is where PR_SET_PDEATHSIG does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", _SCRIPT, str(os.getpid()), *argv]


def _exec_tied(parent: int, argv: list[str]) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # reparented: the parent died before the request above
        sys.exit(PARENT_GONE)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    _exec_tied(int(sys.argv[1]), sys.argv[2:])
