"""What runs inside the code sandbox's processes; the trainer never executes `_main` itself.

The trainer (`prorl.rewards.sandbox`) starts ``python -I -S -B -c <bootstrap>``, the *launcher*,
and writes to its stdin, in order: this module compiled and marshalled (so nothing is read from a
file the sandboxed code could change), a config message, then either the program's stdin
("run" mode, `run_python`) or the test job ("test" mode, the HumanEval and assert layouts).

Processes (all start from the one launcher interpreter; only ``fork``, no second exec)::

    trainer ── launcher L (trusted; in "test" mode it is the tester)
                 │  basic:  └── candidate C
                 │  strict: └── init I (pid 1 of new pid/mount/net/ipc/uts namespaces; trusted)
                 │                 └── candidate C (unprivileged uid, no capabilities)
                 └── fd 3: the report pipe to the trainer (test mode); only L holds it

In test mode C is forked *before* L reads the job from its stdin, so the tests, the names they
use and the per-run nonce never exist in C's memory; C replaces its stdin with /dev/null and
closes every other descriptor except its two pipes to L. L executes the tests with the candidate's
functions bound to proxies: a call sends its arguments to C as plain data and gets back plain data
(or the name and message of the exception raised), so no object of the candidate's reaches a
comparison the tests make. L writes ``<nonce> PASS <i>`` on fd 3 after test i succeeds.

The wire format (`_sandbox_wire`) carries plain data only, exact built-in types, with limits on
every message; the decoder rejects anything malformed, so a hostile C can make a call fail, never more.
"""

from __future__ import annotations

import os
import sys

SETUP_FAILED = 125  # launcher exit status (and stderr prefix below) when isolation could not be set up
SETUP_PREFIX = "prorl-sandbox-setup: "


try:  # in the package; the launcher runs this module's code after `_sandbox_wire`'s, whose names it then has
    from ._sandbox_wire import WireError, decode, encode, read_msg, write_msg
except ImportError:
    pass


# ---------------------------------------------------------------------------------------------
# Linux calls the os module lacks (namespaces, mounts, prctl, capabilities), through ctypes.

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 4, 24, 38, 47
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203, "s390x": 217, "i686": 217, "i386": 217, "armv7l": 218}
# statvfs flags that a bind remount must keep (the kernel refuses to drop them in a user namespace).
_LOCKED_FLAGS = tuple((getattr(os, st, 0), ms) for st, ms in (
    ("ST_NOSUID", MS_NOSUID), ("ST_NODEV", MS_NODEV), ("ST_NOEXEC", MS_NOEXEC),
    ("ST_NOATIME", MS_NOATIME), ("ST_NODIRATIME", MS_NODIRATIME), ("ST_RELATIME", MS_RELATIME)))  # Linux only


class _Linux:
    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _check(self, ret: int, what: str) -> int:
        if ret == -1:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return ret

    def unshare(self, flags: int, what: str) -> None:
        self._check(self.libc.unshare(self.ctypes.c_int(flags)), what)

    def mount(self, source, target, fstype, flags: int, data=None) -> None:
        enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
        ret = self.libc.mount(enc(source), enc(target), enc(fstype), self.ctypes.c_ulong(flags), enc(data))
        self._check(ret, f"mount {target}")

    def umount2(self, target, flags: int) -> None:
        self._check(self.libc.umount2(os.fsencode(target), self.ctypes.c_int(flags)), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> bool:
        nr = _PIVOT_ROOT.get(os.uname().machine)
        if nr is None:
            return False
        c = self.ctypes
        self._check(self.libc.syscall(c.c_long(nr), c.c_char_p(os.fsencode(new_root)), c.c_char_p(os.fsencode(put_old))), "pivot_root")
        return True

    def prctl(self, option: int, arg: int = 0, what: str = "prctl") -> int:
        c = self.ctypes
        return self._check(self.libc.prctl(c.c_int(option), c.c_ulong(arg), c.c_ulong(0), c.c_ulong(0), c.c_ulong(0)), what)

    def drop_capabilities(self) -> None:
        """Empty the bounding, ambient, effective, permitted and inheritable capability sets."""
        c = self.ctypes
        for cap in range(64):
            if self.libc.prctl(c.c_int(PR_CAPBSET_DROP), c.c_ulong(cap), c.c_ulong(0), c.c_ulong(0), c.c_ulong(0)) == -1:
                if self.ctypes.get_errno() == 22:  # EINVAL: past the last capability the kernel knows
                    break
                raise OSError(self.ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
        self.libc.prctl(c.c_int(PR_CAP_AMBIENT), c.c_ulong(4), c.c_ulong(0), c.c_ulong(0), c.c_ulong(0))  # CLEAR_ALL

        class Header(c.Structure):
            _fields_ = [("version", c.c_uint32), ("pid", c.c_int)]

        class Data(c.Structure):
            _fields_ = [("effective", c.c_uint32), ("permitted", c.c_uint32), ("inheritable", c.c_uint32)]

        header, data = Header(0x20080522, 0), (Data * 2)()
        self._check(self.libc.capset(c.byref(header), data), "capset")


# ---------------------------------------------------------------------------------------------
# The launcher.


def _main() -> None:
    cfg = decode(read_msg(0))
    strict = cfg["level"] == "strict"
    linux = None
    try:
        linux = _Linux()
    except (ImportError, OSError, AttributeError) as e:
        if strict:
            _setup_failed(f"ctypes is unavailable ({e})")
    try:
        if strict and os.getuid() != 0:
            _enter_user_namespace(linux)  # before the next line: it hides /proc/self/uid_map from us
        if linux is not None:
            # No other process of this user may read our memory or open our descriptors (fd 3, stdin).
            linux.prctl(PR_SET_DUMPABLE, 0)
        if strict:
            linux.unshare(CLONE_NEWPID, "unshare(CLONE_NEWPID)")
    except (OSError, AttributeError) as e:  # AttributeError: a libc without prctl/unshare (not Linux)
        if strict:
            _setup_failed(str(e))
    _set_limits(cfg["launcher_limits"])
    test_mode = cfg["mode"] == "test"
    pipes = (os.pipe(), os.pipe()) if test_mode else None  # (L -> C requests, C -> L replies)
    status_r, status_w = os.pipe() if strict else (-1, -1)
    pid = os.fork()
    if pid == 0:
        try:
            if strict:
                _init_process(cfg, linux, pipes, status_w)
            else:
                _candidate(cfg, linux, pipes)
        except BaseException as e:  # our own setup failed: say so, never run the program
            _setup_failed(f"{type(e).__name__}: {e}")
        os._exit(SETUP_FAILED)
    if strict:
        os.close(status_w)
    if not test_mode:
        os._exit(_wait_and_relay(pid, status_r))
    (req_r, req_w), (resp_r, resp_w) = pipes
    os.close(req_r)
    os.close(resp_w)
    try:
        _tester(cfg, decode(read_msg(0)), req_w, resp_r)
    finally:
        try:
            os.kill(pid, 9)  # strict: killing the init ends every process of the namespace
        except OSError:
            pass
    sys.stdout.flush()
    os._exit(0)


def _setup_failed(message: str) -> None:
    os.write(2, (SETUP_PREFIX + " ".join(message.split()) + "\n").encode("utf-8", "replace"))
    os._exit(SETUP_FAILED)


def _set_limits(limits: dict) -> None:
    import resource

    for name, (soft, hard) in limits.items():
        which = getattr(resource, name)
        current_hard = resource.getrlimit(which)[1]
        if current_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise it
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))


def _enter_user_namespace(linux: _Linux) -> None:
    uid, gid = os.getuid(), os.getgid()
    try:
        linux.unshare(CLONE_NEWUSER, "unshare(CLONE_NEWUSER)")
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror}; user namespaces are disabled for unprivileged users "
                               "(see /proc/sys/kernel/unprivileged_userns_clone and /proc/sys/user/max_user_namespaces)") from None
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _wait_and_relay(pid: int, status_r: int) -> int:
    """Wait for the child; return its exit code, or die of the signal that killed it."""
    _, status = os.waitpid(pid, 0)
    if status_r >= 0:  # strict: the init reports the candidate's own wait status
        data = b""
        while True:
            chunk = os.read(status_r, 64)
            if not chunk:
                break
            data += chunk
        if not data.strip().isdigit():
            return SETUP_FAILED if os.WIFEXITED(status) and os.WEXITSTATUS(status) == SETUP_FAILED else 1
        status = int(data)
    if os.WIFSIGNALED(status):
        import _signal

        sig = os.WTERMSIG(status)
        sys.stdout.flush()
        _signal.signal(sig, _signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


# ---------------------------------------------------------------------------------------------
# Strict isolation: the init process builds the namespaces and the file system view.


def _init_process(cfg: dict, linux: _Linux, pipes, status_w: int) -> None:
    linux.prctl(PR_SET_PDEATHSIG, 9)  # if the launcher dies, so does the namespace
    linux.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS, "unshare(mount, net, ipc, uts)")
    _build_root(cfg, linux)
    pid = os.fork()
    if pid == 0:
        os.close(status_w)
        _candidate(cfg, linux, pipes)
        os._exit(SETUP_FAILED)
    # Keep nothing the candidate uses: the tester must see EOF when the candidate dies.
    for fd in range(0, 1024):
        if fd != status_w:
            try:
                os.close(fd)
            except OSError:
                pass
    while True:  # reap orphans re-parented to us until the candidate itself exits
        try:
            wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if wpid == pid:
            os.write(status_w, str(status).encode())
            os._exit(0)


def _remount_flags(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _LOCKED_FLAGS if flags & st)


def _build_root(cfg: dict, linux: _Linux) -> None:
    """A tmpfs root holding read-only binds of the system and Python directories, /dev basics,
    a fresh /proc and a private writable tmpfs as the run directory; then pivot into it."""
    root = cfg["workdir"]  # an empty host directory; the tmpfs hides it in our private mount namespace
    linux.mount(None, "/", None, MS_REC | MS_PRIVATE)
    linux.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
    for path, kind in cfg["binds"]:
        target = root + path
        if kind == "link":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
            continue
        if kind == "dir":
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        linux.mount(path, target, None, MS_BIND | MS_REC)
        extra = MS_NOSUID | MS_NOEXEC if kind == "dev" else MS_RDONLY | MS_NOSUID | MS_NODEV
        linux.mount(None, target, None, MS_REMOUNT | MS_BIND | extra | _remount_flags(target))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.makedirs(root + "/dev", exist_ok=True)
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/tmp", exist_ok=True)
    os.makedirs(root + "/proc", exist_ok=True)
    linux.mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    run = root + cfg["workdir"]
    os.makedirs(run, exist_ok=True)
    linux.mount("tmpfs", run, "tmpfs", MS_NOSUID | MS_NODEV,
                f"mode=0700,uid={cfg['uid']},gid={cfg['gid']},size={cfg['run_dir_mb']}m,nr_inodes=16384")
    linux.mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    if linux.pivot_root(".", "."):
        linux.umount2(".", MNT_DETACH)  # the old root, stacked on ours by pivot_root(".", ".")
    else:  # unknown architecture: chroot (escaping it needs CAP_SYS_CHROOT, which the candidate lacks)
        os.chroot(".")
    os.chdir("/")


# ---------------------------------------------------------------------------------------------
# The candidate process.


def _candidate(cfg: dict, linux, pipes) -> None:
    test_mode = pipes is not None
    strict = cfg["level"] == "strict"
    if strict:
        dropped = False
        if os.getuid() == 0 and cfg["uid"] != 0:
            try:
                os.setgroups([])
                os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
                os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])  # clears every capability
                dropped = True
            except OSError:  # e.g. an id outside a container's user-namespace mapping
                pass
        if not dropped:  # in our own user namespace, as its root: keep the id, drop the capabilities
            linux.drop_capabilities()
        linux.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if linux is not None:
        try:  # dumpable again, so the program can read its own /proc/self (the launcher stays hidden)
            linux.prctl(PR_SET_DUMPABLE, 1)
        except (OSError, AttributeError):
            pass
    keep = {0, 1, 2}
    if test_mode:
        (req_r, req_w), (resp_r, resp_w) = pipes
        os.close(req_w)
        os.close(resp_r)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)  # the job follows on the launcher's stdin: never readable here
        os.close(devnull)
        keep |= {req_r, resp_w}
    for fd in range(3, 1024):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    workdir = cfg["workdir"]
    os.chdir(workdir)
    path = os.path.join(workdir, "main.py")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(cfg["code"])
    _set_limits(cfg["limits"])
    sys.path[:] = [p for p in sys.path if p] + list(cfg["site"])
    sys.prefix, sys.exec_prefix = cfg["prefix"]  # what `site` sets in a virtual environment
    sys.argv = [path]
    import builtins

    builtins.exit = builtins.quit = _Quitter()  # what `site` would have added
    if cfg["guard"]:
        _install_guard(workdir)
    main = type(sys)("__main__")
    main.__file__ = path
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    ns = main.__dict__
    if cfg["not_main"]:
        ns["__name__"] = "__prorl_solution__"  # so `if __name__ == "__main__":` demo blocks do not run
    status = _run_program(cfg["code"], path, ns)
    if status is None:
        if test_mode:
            _serve(ns, req_r, resp_w)
        status = 0
    _exit_like_python(status)


class _Quitter:
    def __repr__(self):
        return "Use exit() or Ctrl-D (i.e. EOF) to exit"

    def __call__(self, code=None):
        try:
            sys.stdin.close()
        except Exception:
            pass
        raise SystemExit(code)


def _run_program(source: str, path: str, ns: dict):
    """Run the program as a module would run; None if it ran to the end, else its exit status."""
    try:
        exec(compile(source, path, "exec"), ns)
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        try:
            print(code, file=sys.stderr)
        except Exception:
            pass
        return 1
    except BaseException:
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:
            pass
        return 1
    return None


def _exit_like_python(status: int) -> None:
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(status)


def _serve(ns: dict, req_r: int, resp_w: int) -> None:
    """Answer the tester's calls with plain data until it closes the pipe."""
    names, modules = [], {}
    for key, value in list(ns.items()):
        try:
            if type(key) is not str or key.startswith("__"):
                continue
            if type(value) is type(sys):
                name = value.__name__
                if type(name) is str:
                    modules[key] = name
            elif callable(value):
                names.append(key)
        except BaseException:
            pass
    write_msg(resp_w, encode(("ready", names[:10_000], modules)))
    while True:
        try:
            request = decode(read_msg(req_r))
        except (EOFError, OSError, WireError):
            return
        _, seq, name, args, kwargs = request
        try:
            result = ns[name](*args, **kwargs)
            try:
                reply = encode(("ok", seq, result))
            except WireError as e:
                reply = encode(("unplain", seq, str(e)))
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: reported, not obeyed
            reply = _describe(seq, e)
        result = None
        try:
            write_msg(resp_w, reply)
        except OSError:
            return


def _describe(seq: int, error: BaseException) -> bytes:
    try:
        name = type(error).__name__
        message = str(error)
        return encode(("raise", seq, name if type(name) is str else "Exception", message[:2000] if type(message) is str else ""))
    except BaseException:
        return encode(("raise", seq, "Exception", ""))


# ---------------------------------------------------------------------------------------------
# The tester: runs the tests, trusted, in the launcher.


class CandidateError(Exception):
    """The candidate raised an exception that is not a built-in one, or its call could not be completed."""


class _Link:
    def __init__(self, req_w: int, resp_r: int):
        self.req_w, self.resp_r = req_w, resp_r
        self.seq = 0
        self.dead = False
        self.violation = False  # set when a call failed in a way a test must not be able to catch

    def hello(self):
        try:
            msg = decode(read_msg(self.resp_r))
        except (EOFError, OSError, WireError):
            self.dead = True
            return None
        if type(msg) is not tuple or len(msg) != 3 or msg[0] != "ready" or type(msg[1]) is not list or type(msg[2]) is not dict:
            self.dead = True
            return None
        return msg[1], msg[2]

    def fail(self, message: str):
        self.violation = True
        return CandidateError(message)

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.dead:
            raise self.fail("the candidate's process is gone")
        self.seq += 1
        try:
            request = encode(("call", self.seq, name, args, kwargs))
        except WireError as e:
            raise self.fail(f"the test passed an argument that is not plain data: {e}") from None
        try:
            write_msg(self.req_w, request)
            reply = decode(read_msg(self.resp_r))
        except (EOFError, OSError, WireError) as e:
            self.dead = True
            raise self.fail(f"no reply from the candidate ({type(e).__name__}: {e})") from None
        if type(reply) is not tuple or len(reply) < 3 or reply[1] != self.seq:
            self.dead = True
            raise self.fail("malformed reply from the candidate")
        kind = reply[0]
        if kind == "ok" and len(reply) == 3:
            return reply[2]
        if kind == "raise" and len(reply) == 4 and type(reply[2]) is str and type(reply[3]) is str:
            raise _exception(reply[2], reply[3])
        if kind == "unplain" and type(reply[2]) is str:
            raise self.fail(f"{name} returned {reply[2][:300]}")
        self.dead = True
        raise self.fail("malformed reply from the candidate")


_NOT_RERAISED = ("StopIteration", "StopAsyncIteration")


def _exception(name: str, message: str) -> Exception:
    import builtins

    cls = getattr(builtins, name, None) if name.isidentifier() and name not in _NOT_RERAISED else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return CandidateError(f"{name}: {message}")


def _proxy(link: _Link, name: str):
    def proxy(*args, **kwargs):
        return link.call(name, args, kwargs)

    proxy.__name__ = proxy.__qualname__ = name
    return proxy


_UNSAFE_MODULES = frozenset({"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "ensurepip", "venv", "pydoc"})


def _tester(cfg: dict, job: dict, req_w: int, resp_r: int) -> None:
    import builtins

    report_fd = cfg["report_fd"]
    nonce = job["nonce"]

    def report(line: str) -> None:
        os.write(report_fd, f"{nonce} {line}\n".encode())

    sys.path[:] = [p for p in sys.path if p] + list(cfg["site"])
    ns = {"__name__": "__prorl_tests__", "__builtins__": builtins}
    if job["setup"]:  # the dataset's prompt: its helpers (e.g. HumanEval's `poly`) are the tests' own
        try:
            exec(compile(job["setup"], "<prompt>", "exec"), ns)
        except BaseException:
            pass
    link = _Link(req_w, resp_r)
    hello = link.hello()
    if hello is None:  # the program failed or exited before it was ready: nothing passes
        report("DONE")
        return
    names, modules = hello
    protected = set(dir(builtins))
    valid = lambda n: type(n) is str and n.isidentifier() and not n.startswith("__") and n not in protected  # noqa: E731
    bind = job["bind"]
    if bind is None:  # the assert layout: the tests name the solution's functions directly
        for name in names:
            if valid(name):
                ns[name] = _proxy(link, name)
        stdlib = getattr(sys, "stdlib_module_names", frozenset())
        for alias, module in modules.items():
            top = module.partition(".")[0] if type(module) is str else ""
            if valid(alias) and alias not in ns and top in stdlib and top not in _UNSAFE_MODULES and not top.startswith("_"):
                try:
                    __import__(module)
                    ns[alias] = sys.modules[module]
                except BaseException:
                    pass
    else:
        for local, remote in bind.items():
            if remote in names:
                ns[local] = _proxy(link, remote)
            else:
                ns.pop(local, None)  # e.g. the prompt's stub: never call it in place of the candidate
    for i, source in enumerate(job["tests"]):
        link.violation = False
        try:
            exec(compile(source, f"<test {i}>", "exec"), ns)
        except BaseException:
            continue
        if not link.violation:
            report(f"PASS {i}")
    report("DONE")


# ---------------------------------------------------------------------------------------------
# The guard: a speed bump in Python (see sandbox.py); the kernel is the boundary under "strict".

_BLOCKED_OS = (
    "kill killpg system popen fork forkpty setsid setpgid setpgrp setuid setgid seteuid setegid "
    "setreuid setregid setresuid setresgid execv execve execl execle execlp execlpe execvp "
    "execvpe spawnv spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe posix_spawn "
    "posix_spawnp remove unlink rmdir removedirs rename renames replace truncate chmod fchmod "
    "lchmod chown fchown lchown link symlink chdir fchdir chroot pidfd_open"
)


def _install_guard(root: str) -> None:
    import builtins
    import io
    import posix
    import resource

    root = os.path.realpath(root)

    def blocked(name):
        def blocked(*args, **kwargs):
            raise PermissionError(name + " is disabled in the prorl sandbox")

        return blocked

    targets = [(os, _BLOCKED_OS), (posix, _BLOCKED_OS), (resource, "setrlimit prlimit")]
    import _signal  # `signal` copies its functions from here when (later) imported

    targets.append((_signal, "pidfd_send_signal"))
    for module, names in (("signal", "pidfd_send_signal"), ("shutil", "rmtree move chown"),
                          ("subprocess", "Popen call run check_call check_output getoutput getstatusoutput")):
        if module in sys.modules:  # already imported (copies made): patch the copies too
            targets.append((sys.modules[module], names))
    for module, names in targets:
        for n in names.split():
            if hasattr(module, n):
                setattr(module, n, blocked(module.__name__ + "." + n))
    try:
        import _posixsubprocess

        _posixsubprocess.fork_exec = blocked("_posixsubprocess.fork_exec")
    except ImportError:
        pass
    sys.modules["ctypes"] = None  # `import ctypes` now raises ImportError
    sys.modules["_ctypes"] = None
    realpath, commonpath, fsdecode, getpid = os.path.realpath, os.path.commonpath, os.fsdecode, os.getpid

    def check_path(path, writing):
        if isinstance(path, int):
            return
        real = realpath(fsdecode(path))
        if writing and commonpath([real, root]) != root:
            raise PermissionError("writing outside the sandbox directory is disabled: " + real)
        parts = real.split(os.sep)
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != str(getpid()):
            # their memory, descriptors, environment: e.g. the launcher's (the tester's) under "basic"
            raise PermissionError("reading other processes' /proc entries is disabled: " + real)

    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(file, mode="r", *args, **kwargs):
        check_path(file, writing=any(c in str(mode) for c in "wax+"))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if kwargs.get("dir_fd") is not None and flags & write_flags:
            raise PermissionError("os.open with dir_fd for writing is disabled in the prorl sandbox")
        check_path(path, writing=bool(flags & write_flags))
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        check_path(path, writing=True)
        return real_mkdir(path, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = posix.open = guarded_os_open
    os.mkdir = posix.mkdir = guarded_mkdir


if __name__ == "__main__":
    _main()
