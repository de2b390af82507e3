"""Containment tests, the same for every isolating backend (docker, bwrap): real engines, real
limits, small budgets. A backend that cannot run here is skipped with the reason."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from codeyard.sandbox import SANDBOX_WORKDIR, BwrapSandbox, Limits, MiB, Sandbox
from codeyard.sandbox.disk_guard import free_bytes, free_inodes
from tests.sandbox.host import Leftovers, keyring_holding, processes_with
from tests.sandbox.workloads import (
    FAST,
    OPEN_TOO_MANY_FILES,
    SLACK_SECONDS,
    assert_refused_files_beyond,
    run_python,
    write_package,
)

REPO = Path(__file__).resolve().parents[2]


async def test_python_runs_as_nobody_without_privileges(
    sandbox: Sandbox, tmp_path: Path, leftovers: Leftovers
) -> None:
    code = """
        import os, sys
        print("hello from", os.getcwd(), "uid", os.getuid(), "gid", os.getgid())
        status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines())
        print("nnp", status["NoNewPrivs"].strip(), "capeff", status["CapEff"].strip())
        print("capbnd", status["CapBnd"].strip())
        print("to stderr", file=sys.stderr)
    """
    outcome = await run_python(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, outcome.output
    assert outcome.ok
    assert f"hello from {SANDBOX_WORKDIR} uid 65534 gid 65534" in outcome.output
    assert "nnp 1 capeff 0000000000000000" in outcome.output
    assert "capbnd 0000000000000000" in outcome.output
    assert "to stderr" in outcome.output
    assert not outcome.timed_out
    assert outcome.killed_by_limit == ""
    assert leftovers() == []


@pytest.mark.parametrize(("code", "expected"), [("0", 0), ("3", 3), ("42", 42)])
async def test_exit_codes_pass_through(
    sandbox: Sandbox, tmp_path: Path, code: str, expected: int
) -> None:
    outcome = await run_python(sandbox, tmp_path, f"import sys; sys.exit({code})")
    assert outcome.exit_code == expected
    assert outcome.ok == (expected == 0)


async def test_signals_and_missing_commands_report_shell_exit_codes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    killed = await run_python(sandbox, tmp_path, "import os, signal; os.kill(os.getpid(), 15)")
    assert killed.exit_code == 128 + 15
    missing = await sandbox.run(tmp_path, ["no-such-command-here"], FAST)
    assert missing.exit_code == 127
    assert "no-such-command-here" in missing.output
    shell = await sandbox.run(tmp_path, ["sh", "-c", "echo via shell; exit 5"], FAST)
    assert (shell.exit_code, shell.output) == (5, "via shell\n")


async def test_environment_is_minimal_plus_what_the_caller_passes(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEYARD_HOST_SECRET", "do-not-leak")
    monkeypatch.chdir(tmp_path)  # (the worker's directory is none of the sandbox's business)
    code = """
        import os
        for pid in os.listdir("/proc"):  # every process's environment, pid 1's too
            if pid.isdigit():
                try:
                    print(open(f"/proc/{pid}/environ", "rb").read().replace(b"\\0", b" "))
                except PermissionError:  # docker's init and deadline keeper: root's
                    print("unreadable", pid)
        print(sorted(os.environ)); print(os.environ.get("FOO"))
    """
    outcome = await run_python(sandbox, tmp_path, code, env={"FOO": "bar"})
    assert outcome.exit_code == 0, outcome.output
    assert "do-not-leak" not in outcome.output
    assert "CODEYARD_HOST_SECRET" not in outcome.output
    assert str(tmp_path) not in outcome.output
    assert "'HOME'" in outcome.output
    assert outcome.output.rstrip().endswith("bar")


async def test_writes_outside_the_workspace_fail_and_the_host_is_untouched(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    host_file = tmp_path / "host.txt"
    host_file.write_text("original")
    (workdir / "link").symlink_to(host_file)
    repo_probe = REPO / f"sandbox-escape-{uuid.uuid4().hex}"
    targets = [
        "/etc/passwd",
        "/etc/codeyard-escape",
        "/usr/codeyard-escape",
        "/root/codeyard-escape",
        "/codeyard-escape",
        str(Path(sys.prefix) / "codeyard-escape"),
        str(repo_probe),
        str(host_file),
        "link",
        "../escape",
    ]
    code = """
        import sys
        for target in sys.argv[1:]:
            try:
                with open(target, "a") as f:
                    f.write("pwned")
                print("WROTE", target)
            except OSError as exc:
                print("blocked", target, type(exc).__name__)
        open("inside.txt", "w").write("inside ok")
        print("done")
    """
    outcome = await run_python(sandbox, workdir, code, *targets)
    assert outcome.exit_code == 0, outcome.output
    assert "WROTE" not in outcome.output
    assert outcome.output.count("blocked") == len(targets)
    assert host_file.read_text() == "original"
    assert not repo_probe.exists()
    assert not (tmp_path / "escape").exists()
    assert not Path("/etc/codeyard-escape").exists()
    assert (workdir / "inside.txt").read_text() == "inside ok"  # the workspace is writable


async def test_git_metadata_of_the_workspace_is_read_only(sandbox: Sandbox, tmp_path: Path) -> None:
    """A hook or a `core.fsmonitor` planted in `.git` would run on the host the next time git
    ran on the tree: the command may read `.git`, never change it, and the tree stays its own."""
    workdir = tmp_path / "repo"
    workdir.mkdir()
    subprocess.run(["git", "init", "--quiet", str(workdir)], check=True)
    config = workdir / ".git" / "config"
    before = config.read_text()
    code = """
        import os
        print("read", "[core]" in open(".git/config").read())
        for target in (".git/config", ".git/hooks/post-checkout", ".git/new"):
            try:
                with open(target, "a") as f:
                    f.write("[core]\\n\\tfsmonitor = /tmp/evil\\n")
                print("WROTE", target)
            except OSError as exc:
                print("blocked", target, type(exc).__name__)
        for move in ((".git", "moved"), (".git/config", "config")):
            try:
                os.rename(*move)
                print("MOVED", move[0])
            except OSError as exc:
                print("blocked", move[0], type(exc).__name__)
        open("module.py", "w").write("x = 1")
    """
    outcome = await run_python(sandbox, workdir, code)
    assert outcome.exit_code == 0, outcome.output
    assert "read True" in outcome.output
    assert "WROTE" not in outcome.output
    assert "MOVED" not in outcome.output
    assert outcome.output.count("blocked") == 5
    assert config.read_text() == before
    assert not (workdir / ".git" / "hooks" / "post-checkout").exists()
    assert (workdir / "module.py").read_text() == "x = 1"


async def test_secrets_of_the_host_cannot_be_read(sandbox: Sandbox, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    code = """
        import os, sys
        for path in sys.argv[1:]:
            try:
                if os.path.isdir(path):
                    os.listdir(path)
                else:
                    open(path).read()
                print("READ", path)
            except OSError as exc:
                print("unreadable", path, type(exc).__name__)
    """
    paths = ["/etc/shadow", "/root/.ssh", "/root/.bash_history", "/etc/ssl/private", str(secret)]
    outcome = await run_python(sandbox, workdir, code, *paths)
    assert outcome.exit_code == 0, outcome.output
    assert "READ" not in outcome.output
    assert outcome.output.count("unreadable") == len(paths)


async def test_no_host_wide_kernel_setting_can_be_opened_for_writing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # As root, the sandbox's user is host uid 0, and /proc/sys checks the uid, not capabilities:
    # a writable kernel.core_pattern runs any program as host root on the next crash. Files are
    # only opened, never written; the sandbox's own processes (/proc/<pid>) are its business,
    # and so are pressure triggers (the kernel lets any user set them, on their own cgroup) and
    # files masked by /dev/null (docker's masked paths).
    code = """
        import os
        null = os.stat("/dev/null").st_rdev
        writable = []
        for root, dirs, files in os.walk("/proc"):
            if root == "/proc":
                dirs[:] = [d for d in dirs if not d.isdigit() and d not in ("self", "thread-self")]
            if root == "/proc/pressure":
                continue
            for name in files:
                path = os.path.join(root, name)
                try:
                    if os.stat(path).st_rdev == null:
                        continue
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    continue
                writable.append(path)
        print("writable:", len(writable), sorted(writable)[:8])
    """
    outcome = await run_python(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, outcome.output
    assert "writable: 0 []" in outcome.output, outcome.output


async def test_tcp_connect_to_a_host_loopback_listener_fails(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                print("CONNECTED")
            except OSError as exc:
                print("refused:", exc)
        """
        outcome = await run_python(sandbox, tmp_path, code)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert outcome.exit_code == 0, outcome.output
    assert "refused:" in outcome.output
    assert "CONNECTED" not in outcome.output


async def test_loopback_inside_the_sandbox_works(sandbox: Sandbox, tmp_path: Path) -> None:
    """A repository's tests may start a local server and talk to it: its own loopback works."""
    code = """
        import socket
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname(), timeout=2)
        conn, _ = server.accept()
        client.sendall(b"ping")
        print("got", conn.recv(4).decode())
    """
    outcome = await run_python(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, outcome.output
    assert "got ping" in outcome.output


async def test_infinite_loop_is_stopped_at_the_wall_time(
    sandbox: Sandbox, tmp_path: Path, leftovers: Leftovers
) -> None:
    marker = f"loop-{uuid.uuid4().hex}"
    limits = Limits(wall_seconds=1.0, memory_bytes=512 * MiB, pids=16)
    code = "print('started', flush=True)\nwhile True: pass"
    outcome = await run_python(sandbox, tmp_path, code, marker, limits=limits)
    assert outcome.timed_out
    assert outcome.killed_by_limit == "wall_time"
    assert outcome.exit_code == 137
    assert 1.0 <= outcome.duration_seconds < 1.0 + SLACK_SECONDS
    assert "started" in outcome.output  # output written before the kill is kept
    assert processes_with(marker) == []
    assert leftovers() == []


def reads_pids_cgroup(sandbox: Sandbox) -> bool:
    return isinstance(sandbox, BwrapSandbox) and sandbox.pids_enforcement.startswith("cgroup:")


async def test_number_of_processes_is_bounded(sandbox: Sandbox, tmp_path: Path) -> None:
    code = """
        import os, time
        children = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print("fork failed:", exc)
        print("children", children, flush=True)
        os._exit(0)
    """
    limits = Limits(wall_seconds=10, memory_bytes=512 * MiB, pids=16)
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 0, outcome.output
    assert "fork failed" in outcome.output
    children = int(outcome.output.split("children")[1])
    assert 0 < children < 16
    if reads_pids_cgroup(sandbox):  # the limit was hit, though the command exited 0
        assert outcome.killed_by_limit == "pids"
        assert not outcome.ok


async def test_fork_bomb_is_contained(
    sandbox: Sandbox, tmp_path: Path, leftovers: Leftovers
) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex}"
    code = """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """
    limits = Limits(wall_seconds=3, memory_bytes=256 * MiB, pids=32)
    started = time.monotonic()
    outcome = await run_python(sandbox, tmp_path, code, marker, limits=limits)
    assert time.monotonic() - started < 3 + SLACK_SECONDS
    assert outcome.timed_out
    # Only a pids cgroup that we read (bwrap's) tells the limit was hit; else it is the wall.
    assert outcome.killed_by_limit == ("pids" if reads_pids_cgroup(sandbox) else "wall_time")
    assert processes_with(marker) == []
    assert leftovers() == []
    # The host can still start processes.
    assert subprocess.run(["true"], check=False).returncode == 0


async def test_memory_bomb_is_stopped(sandbox: Sandbox, tmp_path: Path) -> None:
    code = """
        import sys
        hoard = []
        try:
            while True:
                hoard.append(bytearray(16 * 1024 * 1024))
        finally:
            print("allocated MiB:", 16 * len(hoard), file=sys.stderr, flush=True)
    """
    limits = Limits(wall_seconds=10, memory_bytes=256 * MiB, pids=16)
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 1, outcome.output
    assert "MemoryError" in outcome.output
    assert outcome.killed_by_limit == "memory"
    allocated = int(outcome.output.split("allocated MiB:")[1].split()[0])
    assert allocated < 256
    assert not outcome.timed_out


async def test_memory_of_the_whole_sandbox_is_bounded(
    sandbox: Sandbox, tmp_path: Path, leftovers: Leftovers
) -> None:
    """Each process stays under its own limit (RLIMIT_AS), together they exceed the run's: the
    OOM killer of the run's cgroup stops them, not the host's."""
    code = """
        import os, time
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                hoard = bytearray(40 * 1024 * 1024)
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        for pid in children:
            print("child status", os.waitpid(pid, 0)[1], flush=True)
    """
    # 4 x 40 MiB under 64 MiB each; the run may hold 64 MiB plus its (1 MiB) tmpfs mounts
    limits = Limits(wall_seconds=30, memory_bytes=64 * MiB, tmpfs_bytes=1 * MiB, pids=16)
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.killed_by_limit == "memory", outcome
    assert "child status 9" in outcome.output  # SIGKILL, from the OOM killer
    assert not outcome.timed_out
    assert not outcome.ok
    assert leftovers() == []


async def test_busy_processes_share_one_core_between_them(sandbox: Sandbox, tmp_path: Path) -> None:
    """Four busy loops for 2 s took every core of the host (RLIMIT_CPU bounds each process's
    own time only); a run gets one core's worth of time (`cpus`, default 1). Only CPU time is
    compared: a busy host gives the run less, never more."""
    if isinstance(sandbox, BwrapSandbox) and sandbox.cpu_enforcement == "none":
        pytest.skip("no writable cpu cgroup here: nothing caps a run's share of the CPUs")
    code = """
        import os, time
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # a child: busy too, and none of its own
                children = []
                break
            children.append(pid)
        started = time.monotonic()
        while time.monotonic() - started < 2:
            pass
        print("cpu", time.process_time(), flush=True)
        for pid in children:
            os.waitpid(pid, 0)
    """
    outcome = await run_python(sandbox, tmp_path, code, limits=Limits(wall_seconds=30, pids=16))
    used = [float(line.split()[1]) for line in outcome.output.splitlines() if line[:4] == "cpu "]
    assert len(used) >= 4, outcome.output
    assert sum(used) < 1.5 * 2, used  # one core for 2 s, and room for start-up


async def test_cpu_time_limit_stops_a_busy_process(sandbox: Sandbox, tmp_path: Path) -> None:
    limits = Limits(wall_seconds=30, cpu_seconds=1, memory_bytes=256 * MiB, pids=16)
    outcome = await run_python(sandbox, tmp_path, "while True: pass", limits=limits)
    assert not outcome.timed_out
    assert outcome.killed_by_limit == "cpu"
    assert outcome.exit_code == 128 + 24  # SIGXCPU


async def test_the_command_cannot_raise_its_limits(sandbox: Sandbox, tmp_path: Path) -> None:
    limits = Limits(wall_seconds=10, cpu_seconds=7, memory_bytes=256 * MiB, file_size_bytes=MiB)
    code = """
        import resource as r
        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_CORE"):
            kind = getattr(r, name)
            print(name, *r.getrlimit(kind))
            try:
                r.setrlimit(kind, (r.RLIM_INFINITY, r.RLIM_INFINITY))
                print("RAISED", name)
            except (ValueError, OSError):
                pass
    """
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 0, outcome.output
    assert "RAISED" not in outcome.output
    assert f"RLIMIT_AS {256 * MiB} {256 * MiB}" in outcome.output
    assert "RLIMIT_CPU 7 8" in outcome.output
    assert f"RLIMIT_FSIZE {MiB} {MiB}" in outcome.output
    assert "RLIMIT_CORE 0 0" in outcome.output


async def test_opening_more_files_than_allowed_fails_with_emfile(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    limits = Limits(wall_seconds=10, memory_bytes=256 * MiB, pids=16, open_files=64)
    outcome = await run_python(sandbox, tmp_path, OPEN_TOO_MANY_FILES, limits=limits)
    assert_refused_files_beyond(outcome.output, 64)
    assert "RAISED" not in outcome.output
    assert "could not raise it" in outcome.output
    assert outcome.exit_code == 1
    assert outcome.killed_by_limit == "open_files"


async def test_file_size_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    limits = Limits(wall_seconds=10, file_size_bytes=1 * MiB, memory_bytes=256 * MiB, pids=16)
    # A C program gets SIGXFSZ (the sandbox restores the default Python ignores) ...
    shell = await sandbox.run(tmp_path, ["sh", "-c", "head -c 3000000 /dev/zero > big.bin"], limits)
    assert shell.killed_by_limit == "file_size", shell
    assert (tmp_path / "big.bin").stat().st_size <= 1 * MiB
    # ... Python sees EFBIG.
    code = "open('big.txt', 'wb').write(b'x' * 3_000_000)"
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 1
    assert "File too large" in outcome.output
    assert outcome.killed_by_limit == "file_size"


async def test_tmp_is_a_capped_tmpfs(sandbox: Sandbox, tmp_path: Path) -> None:
    limits = Limits(wall_seconds=10, tmpfs_bytes=4 * MiB, memory_bytes=256 * MiB, pids=16)
    code = """
        import os
        print("home", os.environ["HOME"], os.path.expanduser("~"))
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(16):
                    f.write(b"x" * 1024 * 1024)
            print("FILLED")
        except OSError as exc:
            print("full:", exc)
    """
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 0, outcome.output
    assert "home /tmp /tmp" in outcome.output
    assert "No space left on device" in outcome.output


async def test_huge_output_is_capped_keeping_the_tail(sandbox: Sandbox, tmp_path: Path) -> None:
    code = """
        import sys
        for i in range(200_000):
            sys.stdout.write(f"line {i}\\n")
        sys.stdout.write("THE END\\n")
    """
    limits = Limits(wall_seconds=30, output_bytes=64 * 1024, memory_bytes=256 * MiB, pids=16)
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 0
    assert outcome.output.endswith("line 199999\nTHE END\n")
    assert outcome.output.startswith("[codeyard sandbox: output truncated,")
    assert "line 0\n" not in outcome.output
    assert len(outcome.output) < 64 * 1024 + 200


async def test_a_run_filling_the_disk_is_stopped(sandbox: Sandbox, tmp_path: Path) -> None:
    # Files each under the file-size limit, many of them: only the disk guard stops this.
    reserve = free_bytes(tmp_path) - 64 * MiB  # the run may use 64 MiB of the disk, no more
    limits = Limits(wall_seconds=60.0, file_size_bytes=2 * MiB, disk_reserve_bytes=reserve)
    code = (
        "import os\nchunk = os.urandom(1 << 20)\n"
        "for n in range(512):\n"
        "    with open(f'fill-{n}', 'wb') as f: f.write(chunk)\n"
        "print('wrote them all', flush=True)"
    )
    marker = f"fill-{uuid.uuid4().hex}"
    outcome = await run_python(sandbox, tmp_path, code, marker, limits=limits)
    written = len(list(tmp_path.rglob("fill-*")))
    for file in tmp_path.rglob("fill-*"):
        file.unlink()
    assert outcome.killed_by_limit == "disk"
    assert "wrote them all" not in outcome.output
    assert "left free on the disk" in outcome.output
    assert written < 512
    assert processes_with(marker) == []


async def test_disk_space_cannot_be_preallocated(sandbox: Sandbox, tmp_path: Path) -> None:
    """fallocate() reserves space as metadata, GiBs between two polls of the disk guard, and
    with FALLOC_FL_KEEP_SIZE past the file-size limit too: refused, as by a filesystem without
    preallocation. Writing (and glibc's posix_fallocate, which then writes) still works."""
    code = """
        import ctypes, os, struct
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
        libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p)
        KEEP_SIZE, FS_IOC_RESVSP64 = 1, 0x4030582A

        def result(returned):
            return "reserved" if returned == 0 else os.strerror(ctypes.get_errno())

        fd = os.open("reserved", os.O_CREAT | os.O_WRONLY)
        print("fallocate:", result(libc.fallocate(fd, KEEP_SIZE, 0, 64 << 20)))
        # struct space_resv: type, whence, start, length, sysid, pid, padding
        space = struct.pack("=hhxxxxqqiI16x", 0, 0, 0, 64 << 20, 0, 0)
        print("ioctl:", result(libc.ioctl(fd, FS_IOC_RESVSP64, space)))
        # the kernel reads an ioctl request as 32 bits: the upper ones must not matter
        print("ioctl, upper bits set:", result(libc.ioctl(fd, FS_IOC_RESVSP64 | 1 << 32, space)))
        print("allocated bytes", os.fstat(fd).st_blocks * 512)
        os.posix_fallocate(fd, 0, 8192)
        print("posix_fallocate size", os.fstat(fd).st_size)
    """
    limits = Limits(wall_seconds=20, file_size_bytes=1 * MiB, memory_bytes=256 * MiB, pids=16)
    outcome = await run_python(sandbox, tmp_path, code, limits=limits)
    assert outcome.exit_code == 0, outcome.output
    assert "fallocate: Operation not supported" in outcome.output
    assert "ioctl: Operation not supported" in outcome.output
    assert "ioctl, upper bits set: Operation not supported" in outcome.output
    assert "allocated bytes 0" in outcome.output
    assert "posix_fallocate size 8192" in outcome.output


async def test_no_setuid_or_setgid_program_can_be_left_behind(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """What a sandbox writes is the host user's (root's, for a worker running as root): a
    setuid copy of a shell left in the workspace would be a root shell on the host. Every way
    of setting the bits is refused, the upper half of the mode argument notwithstanding;
    ordinary modes still change."""
    code = """
        import ctypes, os, shutil
        libc = ctypes.CDLL(None, use_errno=True)
        shutil.copy("/usr/bin/id", "id")

        def attempt(what, call):
            try:
                call()
                print(what, "allowed")
            except OSError as exc:
                print(what, exc.strerror)

        def fchmodat2(mode):  # (452 on every architecture; Linux 6.6)
            if libc.syscall(452, -100, b"id", ctypes.c_ulong(mode), 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

        fd = os.open("id", os.O_RDONLY)
        attempt("chmod setuid:", lambda: os.chmod("id", 0o4755))
        attempt("chmod setgid:", lambda: os.chmod("id", 0o2755))
        attempt("fchmod setuid:", lambda: os.fchmod(fd, 0o4755))
        attempt("fchmodat setuid:", lambda: os.chmod("id", 0o4755, dir_fd=os.open(".", 0)))
        attempt("fchmodat2 setuid:", lambda: fchmodat2(0o4755 | 1 << 32))
        attempt("chmod plain:", lambda: os.chmod("id", 0o700))
    """
    outcome = await run_python(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, outcome.output
    for call in ("chmod setuid", "chmod setgid", "fchmod setuid", "fchmodat setuid"):
        assert f"{call}: Operation not permitted" in outcome.output
    assert "fchmodat2 setuid: allowed" not in outcome.output
    assert "chmod plain: allowed" in outcome.output
    assert (tmp_path / "id").stat().st_mode & 0o7777 == 0o700


async def test_kernel_keyrings_are_out_of_reach(sandbox: Sandbox, tmp_path: Path) -> None:
    """Keyrings are not namespaced: a sandbox could read its worker's session keyring, and two
    runs could pass data through it."""
    code = """
        import ctypes, os, platform
        numbers = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
        libc = ctypes.CDLL(None, use_errno=True)
        session = ctypes.c_long(-3)  # KEY_SPEC_SESSION_KEYRING
        calls = {
            "add_key": (b"user", b"smuggled", b"data", ctypes.c_size_t(4), session),
            "request_key": (b"user", b"smuggled", None, ctypes.c_long(0)),
            "keyctl": (ctypes.c_long(0), session, ctypes.c_long(0)),  # KEYCTL_GET_KEYRING_ID
        }
        for number, (name, args) in zip(numbers, calls.items()):
            returned = libc.syscall(number, *args)
            print(name, "answered" if returned >= 0 else os.strerror(ctypes.get_errno()))
        try:  # the keys the sandbox's uid may see: names and sizes (theirs are not ours)
            print("/proc/keys", len(open("/proc/keys").read().splitlines()), "lines")
        except OSError as exc:
            print("/proc/keys", "unreadable:", exc.strerror)
    """
    with keyring_holding("codeyard-test-secret-name"):
        outcome = await run_python(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, outcome.output
    assert "codeyard-test-secret-name" not in outcome.output
    refused = ("Function not implemented", "Operation not permitted")  # (ours, Docker's)
    listed = [line for line in outcome.output.splitlines() if line.startswith("/proc/")]
    shown = (" 0 lines", " unreadable: Permission denied", " unreadable: No such file or directory")
    assert all(line.endswith(shown) for line in listed), outcome.output
    lines = dict(line.split(" ", 1) for line in outcome.output.splitlines() if line not in listed)
    assert set(lines) == {"add_key", "request_key", "keyctl"}, outcome.output
    assert all(answer in refused for answer in lines.values()), outcome.output


async def test_kernel_interfaces_no_test_needs_are_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """perf_event_open and userfaultfd: attack surface, refused by Docker's filter too."""
    code = """
        import ctypes, os, platform
        numbers = {"x86_64": (298, 323), "aarch64": (241, 282)}[platform.machine()]
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.create_string_buffer(128)  # a perf_event_attr of zeros
        calls = {
            "perf_event_open": (attr, 0, -1, -1, 0),
            "userfaultfd": (1,),  # UFFD_USER_MODE_ONLY
        }
        for number, (name, args) in zip(numbers, calls.items()):
            returned = libc.syscall(number, *args)
            print(name, "answered" if returned >= 0 else os.strerror(ctypes.get_errno()))
    """
    outcome = await run_python(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, outcome.output
    lines = dict(line.split(" ", 1) for line in outcome.output.splitlines())
    assert set(lines) == {"perf_event_open", "userfaultfd"}, outcome.output
    refused = ("Function not implemented", "Operation not permitted")  # (ours, Docker's)
    assert all(answer in refused for answer in lines.values()), outcome.output


async def test_a_run_using_up_the_inodes_is_stopped(sandbox: Sandbox, tmp_path: Path) -> None:
    # Empty files take an inode each and no bytes: only the inode reserve stops this.
    free = free_inodes(tmp_path)
    if free is None:
        pytest.skip(f"the filesystem of {tmp_path} allocates inodes as needed")
    limits = Limits(wall_seconds=60.0, disk_reserve_inodes=free - 2000)  # 2000 files, no more
    code = (
        "import os\n"
        "for n in range(20_000):\n"
        "    os.close(os.open(f'empty-{n}', os.O_CREAT | os.O_WRONLY))\n"
        "print('made them all', flush=True)"
    )
    marker = f"inodes-{uuid.uuid4().hex}"
    outcome = await run_python(sandbox, tmp_path, code, marker, limits=limits)
    made = len(list(tmp_path.glob("empty-*")))
    assert outcome.killed_by_limit == "disk", outcome
    assert "made them all" not in outcome.output
    assert "inodes (files, directories, links) were left free on the disk" in outcome.output
    assert made < 20_000
    assert processes_with(marker) == []


async def test_pytest_of_a_passing_package(sandbox: Sandbox, tmp_path: Path) -> None:
    write_package(tmp_path, "add(2, 2) == 4")
    limits = Limits(wall_seconds=60, pids=64)
    outcome = await sandbox.run(tmp_path, ["python", "-m", "pytest", "-q"], limits)
    assert outcome.exit_code == 0, outcome.output
    assert "1 passed" in outcome.output
    assert (tmp_path / ".pytest_cache").is_dir()  # pytest wrote into the workspace


async def test_pytest_of_a_failing_package_reports_the_failure(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    write_package(tmp_path, "add(2, 2) == 5")
    limits = Limits(wall_seconds=60, pids=64)
    outcome = await sandbox.run(tmp_path, ["python", "-m", "pytest", "-q"], limits)
    assert outcome.exit_code == 1, outcome.output
    assert "1 failed" in outcome.output
    assert "assert 4 == 5" in outcome.output
    assert outcome.killed_by_limit == ""


async def test_concurrent_runs_are_independent(
    sandbox: Sandbox, tmp_path: Path, leftovers: Leftovers
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    code = "import os; open('me', 'w').write(os.getcwd()); print('ok')"
    outcomes = await asyncio.gather(*(run_python(sandbox, d, code) for d in dirs))
    assert [o.exit_code for o in outcomes] == [0, 0]
    assert [(d / "me").read_text() for d in dirs] == [SANDBOX_WORKDIR] * 2
    assert leftovers() == []


async def test_cancelling_a_run_kills_the_sandbox(
    sandbox: Sandbox, tmp_path: Path, leftovers: Leftovers
) -> None:
    marker = f"cancel-{uuid.uuid4().hex}"
    code = "import time\nprint('up', flush=True)\ntime.sleep(60)"
    task = asyncio.create_task(run_python(sandbox, tmp_path, code, marker))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if processes_with(marker):
            break
    assert processes_with(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if not processes_with(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_with(marker) == []
    assert leftovers() == []


async def test_bad_requests_are_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="argv list"):
        await sandbox.run(tmp_path, "echo hi", FAST)
    with pytest.raises(ValueError, match="argv list"):
        await sandbox.run(tmp_path, [], FAST)
    with pytest.raises(ValueError, match="refusing"):
        await sandbox.run(Path("/"), ["true"], FAST)
    with pytest.raises(FileNotFoundError):
        await sandbox.run(tmp_path / "missing", ["true"], FAST)
    # The docker engine ran these and answered as the command (exit 1) or as its own failure.
    with pytest.raises(ValueError, match="argument 2 of the command holds a NUL"):
        await sandbox.run(tmp_path, ["echo", "a", "b\0c"], FAST)
    with pytest.raises(ValueError, match="environment variable FOO holds a NUL"):
        await sandbox.run(tmp_path, ["true"], FAST, env={"FOO": "a\0b"})
    for name in ("", "A=B", "A\0B"):
        with pytest.raises(ValueError, match="cannot name an environment variable"):
            await sandbox.run(tmp_path, ["true"], FAST, env={name: "x"})
