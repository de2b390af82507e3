"""`sandbox_filter`: the seccomp filter of every sandboxed command, refusing the system calls
that would take disk space faster than `codeyard.sandbox.disk_guard` sees it go, reach state
shared with the host (kernel keyrings), or leave a set-user-ID program behind. The bwrap backend
installs it (`--seccomp`), the docker backend through the image's python3 (`installing_argv`),
on top of Docker's own filter.

The guard polls free space every 0.1 s; written data arrives at the speed of the page cache,
so a poll interval is worth a few hundred MB of slack. Preallocation is not: fallocate()
reserves blocks as metadata, GiBs in a millisecond, and RLIMIT_FSIZE does not bound it when
FALLOC_FL_KEEP_SIZE leaves the file's size alone (measured: a 300 MiB reservation under a
1 MiB file-size limit). So the filter refuses, with the error a filesystem without
preallocation gives (EOPNOTSUPP, which glibc's posix_fallocate and callers of fallocate
handle by writing instead):

- fallocate, every mode;
- the ioctls that preallocate without it (FS_IOC_RESVSP, FS_IOC_RESVSP64, FS_IOC_ZERO_RANGE:
  the kernel turns them into a KEEP_SIZE fallocate on any filesystem, ext4 included);
- io_uring (ENOSYS, as on a kernel without it): its requests, fallocate among them, are run
  by the kernel without passing through the system call filter.

Kernel keyrings (keyctl, add_key, request_key: ENOSYS, as on a kernel without them) are not
namespaced: a sandbox could read the session keyring of the worker that started it (bwrap
starts no new one), and two runs could pass data through it. Docker's own filter refuses them
too.

Setting the set-user-ID or set-group-ID bit (chmod, fchmod, fchmodat, fchmodat2 with either
bit: EPERM) is refused: files the sandbox writes are the host user's, root's when the worker
runs as root (bwrap maps the sandbox's nobody to its caller), so a setuid copy of a shell left
in the workspace would be a root shell to anyone on the host who can reach it. (Creating a
file with them, through open's mode, is not refused: writing to it clears them for a process
without CAP_FSETID, so such a file stays empty, a program of nothing.)

Kernel interfaces no test suite needs and whose bugs have been exploits, which Docker's filter
refuses too: perf_event_open and userfaultfd (ENOSYS).

System calls of another ABI than the native one (32-bit `int 0x80` on x86_64, x32) kill the
process: the filter knows only native numbers, and they would get around it otherwise.

The filter is classic BPF built by libseccomp (libseccomp2, a dependency of apt and systemd on
Debian/Ubuntu), called through ctypes: the kernel interface is arch-specific (syscall numbers,
arch checks, 64-bit argument comparison), which is what that library exists for.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import functools
import os

from codeyard.sandbox.protocol import SandboxUnavailable

_LIBRARY = "libseccomp.so.2"
INSTALL_HINT = "Debian/Ubuntu: `apt-get install -y libseccomp2`"

_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_ATTR_ACT_BADARCH = 2  # enum scmp_filter_attr
_CMP_MASKED_EQ = 7  # enum scmp_compare: (arg & datum_a) == datum_b


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO


def _iow(kind: str, number: int, size: int) -> int:
    """_IOW of asm-generic/ioctl.h (x86, arm, riscv)."""
    return (1 << 30) | (size << 16) | (ord(kind) << 8) | number


_SPACE_RESV_SIZE = 48  # struct space_resv (= xfs_flock64) on 64-bit ABIs
_PREALLOCATING_IOCTLS = {
    "FS_IOC_RESVSP": _iow("X", 40, _SPACE_RESV_SIZE),
    "FS_IOC_RESVSP64": _iow("X", 42, _SPACE_RESV_SIZE),
    "FS_IOC_ZERO_RANGE": _iow("X", 57, _SPACE_RESV_SIZE),
}
_REFUSED_CALLS = {
    "fallocate": errno.EOPNOTSUPP,
    "io_uring_setup": errno.ENOSYS,
    "io_uring_enter": errno.ENOSYS,
    "io_uring_register": errno.ENOSYS,
    "keyctl": errno.ENOSYS,
    "add_key": errno.ENOSYS,
    "request_key": errno.ENOSYS,
    "perf_event_open": errno.ENOSYS,
    "userfaultfd": errno.ENOSYS,
}
_S_ISUID, _S_ISGID = 0o4000, 0o2000
# The argument holding the mode, by call. fchmodat2 is Linux 6.6's: libseccomp releases before
# 2.5.5 do not know its name, and the kernel would let it through; it is then taken as 452, its
# number on every architecture codeyard runs on (x86_64, arm64, riscv64).
_MODE_SETTING_CALLS = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2}
_UNKNOWN = -1  # __NR_SCMP_ERROR
_NUMBER_IF_UNKNOWN = {"fchmodat2": 452}


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@functools.cache
def sandbox_filter() -> bytes:
    """The filter as a BPF program (what `bwrap --seccomp FD` reads). Raises
    `SandboxUnavailable` when libseccomp is missing or cannot build it."""
    try:
        lib = ctypes.CDLL(_LIBRARY, use_errno=True)
    except OSError as exc:
        raise SandboxUnavailable(
            f"libseccomp is not installed ({exc}): the sandbox refuses preallocation of disk "
            f"space with a seccomp filter built by it ({INSTALL_HINT})"
        ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SandboxUnavailable("libseccomp could not start a filter (seccomp_init failed)")
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _ACT_KILL_PROCESS), "attr_set")
        for name, code in _REFUSED_CALLS.items():
            _check(
                lib.seccomp_rule_add_array(ctx, _errno_action(code), _nr(lib, name), 0, None), name
            )
        ioctl = _nr(lib, "ioctl")
        for name, request in _PREALLOCATING_IOCTLS.items():
            # The kernel reads the request as 32 bits: compare only those, or a caller could
            # set the upper half to slip past an exact 64-bit match.
            match = _ArgCmp(1, _CMP_MASKED_EQ, 0xFFFFFFFF, request)
            action = _errno_action(errno.EOPNOTSUPP)
            _check(lib.seccomp_rule_add_array(ctx, action, ioctl, 1, ctypes.byref(match)), name)
        for call, argument in _MODE_SETTING_CALLS.items():
            number = _nr(lib, call)
            for bit in (_S_ISUID, _S_ISGID):  # (one rule per bit: a rule's tests all hold)
                match = _ArgCmp(argument, _CMP_MASKED_EQ, bit, bit)
                action = _errno_action(errno.EPERM)
                _check(
                    lib.seccomp_rule_add_array(ctx, action, number, 1, ctypes.byref(match)),
                    str(call),
                )
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _nr(lib: ctypes.CDLL, name: str) -> int:
    """The system call's number; for one this architecture lacks (arm64 and riscv64 have no
    `chmod`), libseccomp's placeholder (below -10000), which a rule accepts and never meets."""
    number = int(lib.seccomp_syscall_resolve_name(name.encode()))
    if number == _UNKNOWN:
        number = _NUMBER_IF_UNKNOWN.get(name, _UNKNOWN)
    return checked_number(number, name)


def checked_number(number: int, name: str) -> int:
    if number == _UNKNOWN:
        raise SandboxUnavailable(f"libseccomp does not know the system call {name}")
    return number


def _check(result: int, what: str) -> None:
    if result < 0:
        raise SandboxUnavailable(
            f"libseccomp could not build the sandbox's filter ({what}): {os.strerror(-result)}"
        )


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("codeyard-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "export")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def filter_fd(program: bytes) -> int:
    """A file descriptor to read `program` from once (for `bwrap --seccomp`): a memfd, not
    inheritable; the caller passes it on and closes it."""
    fd = os.memfd_create("codeyard-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


# Exit status of a container command whose filter could not be installed: it did not run.
NOT_INSTALLED = 126

# Run by the sandbox image's python3 (isolated, no site): installs the BPF program given in
# base64 as argv[1], then execs argv[2:]. Fails closed: without the filter nothing runs.
_INSTALLER = f"""\
import base64, ctypes, os, sys
program = base64.b64decode(sys.argv[1])
class Program(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_char_p))
filtering = ctypes.byref(Program(len(program) // 8, program))
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_NO_NEW_PRIVS (the engine sets it too), then PR_SET_SECCOMP, SECCOMP_MODE_FILTER
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, filtering, 0, 0):
    why = os.strerror(ctypes.get_errno())
    sys.stderr.write("codeyard sandbox: cannot install the seccomp filter: " + why + "\\n")
    sys.exit({NOT_INSTALLED})
os.execv(sys.argv[2], sys.argv[2:])
"""


def installing_argv(python: str, program: bytes, argv: list[str]) -> list[str]:
    """`argv` run under the filter `program`, installed by `python` (a python3 where the
    command runs: the docker backend's image) just before it execs `argv`, whose first item
    must be a path (it is not looked up). For sandboxes that cannot be handed a filter the way
    bwrap is."""
    return [python, "-I", "-S", "-c", _INSTALLER, base64.b64encode(program).decode(), *argv]
