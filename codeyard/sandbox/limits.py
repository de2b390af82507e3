"""`Limits`: what one sandboxed command may consume before it is stopped."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one sandboxed run. Every value must be positive.

    - `wall_seconds`: elapsed time; the parent kills the whole sandbox when it is exceeded.
    - `cpu_seconds`: CPU time of each process (RLIMIT_CPU: SIGXCPU, then SIGKILL a second later).
    - `memory_bytes`: address space of each process (RLIMIT_AS). Python with pytest needs a few
      hundred MB; allocations beyond the limit fail (MemoryError) instead of swapping the host.
    - `pids`: processes and threads inside the sandbox (a pids cgroup when one is writable, else
      RLIMIT_NPROC, which the user namespace makes per sandbox; see `codeyard.sandbox.bwrap`).
    - `output_bytes`: captured combined stdout+stderr; only the last `output_bytes` are kept.
    - `file_size_bytes`: largest file a process may write (RLIMIT_FSIZE).
    - `open_files`: file descriptors each process may have open (RLIMIT_NOFILE); one more
      fails with EMFILE ("Too many open files"). 1024 is Linux's usual soft limit, which test
      suites are written for; the hard limit is the same, so a command cannot raise it.
    - `tmpfs_bytes`: size of the in-memory /tmp (which is also HOME) and of /dev/shm.
    - `disk_reserve_bytes`: free space the run must leave on its workdir's filesystem; below
      it the run is killed (`codeyard.sandbox.disk_guard`: many files under the file-size
      limit could otherwise fill the host's disk).
    - `disk_reserve_inodes`: free inodes (each file, directory or symlink takes one) the run
      must leave on that filesystem; below it the run is killed, reported as "disk" too.
      Empty files cost no bytes, so without it a run could exhaust the inode table and no
      file could be created there anymore. Not checked on filesystems without a fixed number
      of inodes (btrfs). 65,536 holds what a run creates between two polls of the guard (up
      to ~10,000 on a disk, ~43,000 in a tmpfs, measured) with room to spare.
    """

    wall_seconds: float = 300.0
    cpu_seconds: int = 300
    memory_bytes: int = 2 * GiB
    pids: int = 256
    output_bytes: int = 1 * MiB
    file_size_bytes: int = 1 * GiB
    open_files: int = 1024
    tmpfs_bytes: int = 256 * MiB
    disk_reserve_bytes: int = 1 * GiB
    disk_reserve_inodes: int = 65_536

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Limits.{name} must be positive, got {value!r}")
