"""The one way this project puts a file in place: a private temp file beside the target, fsync,
rename over the target, fsync the folder. A reader never sees a half-written file, and a crash
leaves at most a temp file that the next run recognises and removes.

Temp files are created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) under an unpredictable name,
so a symlink planted where a temp will go is never followed, and two processes writing into one
folder never share or delete each other's temps. Each name records the host and the process that
owns it (``.NAME.<host>-<pid>-<random>.upscale-tmp``): ``sweep_temps`` removes only temps whose
owner is a process of this host that is no longer running.

A file that is read, changed and written back (the tuning cache, the user registry) is changed under
``updating``: an exclusive lock on ``.NAME.lock`` beside it, held from the read to the rename, so
that two processes adding an entry at the same moment both keep theirs (``filelock``, which
huggingface_hub already installs: lock files that work on POSIX and Windows alike). A job that owns
a folder while it runs (a training) holds ``claim``'s lock instead, which a second process is refused
at once rather than waiting.

Every ``os.replace`` of the package is in this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import IO, Iterator

import filelock

TEMP_SUFFIX = ".upscale-tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temp files (any process, any host)."""
    return _TEMP.match(name) is not None


NAME_MAX = 255    # bytes in one file name on Linux, macOS and Windows file systems alike
# what a temp name adds to its target's: ".", ".", host, "-", pid (up to 10 digits), "-", 16 hex, suffix
_TEMP_EXTRA = 2 + 8 + 1 + 10 + 1 + 16 + len(TEMP_SUFFIX)


def _temp_stem(name: str) -> str:
    """``name`` as it appears in its temp files' names: itself, or where a temp name would be longer
    than ``NAME_MAX`` bytes (a target name of ~215 bytes or more), its start and a hash of all of it."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) + _TEMP_EXTRA <= NAME_MAX:
        return name
    keep = raw[:NAME_MAX - _TEMP_EXTRA - 9].decode("utf-8", "ignore")
    return f"{keep}~{hashlib.sha256(raw).hexdigest()[:8]}"


def name_problem(name: str) -> str | None:
    """Why no file can be named ``name`` on common file systems (None when it can)."""
    size = len(name.encode("utf-8", "surrogateescape"))
    return None if size <= NAME_MAX else f"its name is {size} bytes long; file names hold at most {NAME_MAX}"


def _create_temp(path: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = path.with_name(f".{_temp_stem(path.name)}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(8)}"
                             f"{TEMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666 & ~_UMASK), tmp
        except FileExistsError:  # a name drawn twice (or planted): draw another
            continue
    raise FileExistsError(f"cannot create a temp file beside {path}")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, encoding: str | None = None,
                durable: bool = True) -> Iterator[IO]:
    """Open a new temp file beside ``path`` for writing; on a normal exit put it at ``path`` (where
    ``path`` is a symlink, at the file it points to; where it is a device or a FIFO, such as /dev/null
    or /dev/stdout, the data is written straight into it).

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` defaults to UTF-8). On any exception (or
    KeyboardInterrupt) the temp file is removed and ``path`` is untouched; OSErrors propagate for the
    caller to turn into its own typed error. ``durable=False`` skips the fsyncs (for caches whose loss
    costs only recomputation).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
    there = landing(Path(path))
    if there is None:   # a device or pipe (/dev/null, /dev/stdout): written into; renaming would replace the node
        own = _own_fd(path)     # this process's stdout (or fd N): its offset and append mode kept, as `>>` wants
        fd = os.dup(own) if own is not None else os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
        return
    path = there
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            if durable:
                _fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_folder(path.parent)


def landing(path: str | Path) -> Path | None:
    """Where a file written for ``path`` is put: ``path``, or where a symlink there points (the link is
    kept, as a shell's ``>`` keeps it: a dotfiles-managed ``models.toml``, ``latest.png -> ...``); None
    when ``path`` is neither a file nor a folder (a device, a FIFO, ``/dev/stdout``): there is nothing
    to replace, and a rename would put a regular file in the place of that node; None too for a
    process's open file (``/dev/stdout``, ``/dev/fd/N`` when a shell sent it to a file): written into."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        return None
    if not os.path.islink(path):
        return Path(path)
    if any(_OPEN_FILE.match(hop) for hop in _hops(path)):     # through a process's fd table
        return None
    return Path(os.path.realpath(path))


_OPEN_FILE = re.compile(r"^/(proc/[^/]+|dev)/fd/\d+$")
_OWN_FD = re.compile(r"^/(?:proc/(?:self|thread-self|(?P<pid>\d+))|dev)/fd/(?P<fd>\d+)$")


def _hops(path: str | Path) -> Iterator[str]:
    """``path`` and each link it leads through, as absolute paths, up to 40 of them."""
    hop = os.path.abspath(path)
    for _ in range(40):
        yield hop
        if not os.path.islink(hop):
            return
        hop = os.path.join(os.path.dirname(hop), os.readlink(hop))


def _own_fd(path: str | Path) -> int | None:
    """The descriptor N when ``path`` leads to one of this process's open files (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/self/fd/N``), else None."""
    for hop in _hops(path):
        m = _OWN_FD.match(hop)
        if m is not None and m["pid"] in (None, str(os.getpid())):
            return int(m["fd"])
    return None


@contextlib.contextmanager
def updating(path: str | Path, *, timeout_s: float = 60.0) -> Iterator[Path]:
    """Hold the exclusive lock of ``path`` (a file whose owner reads, changes and writes it back) for
    the ``with`` block; read ``path`` inside it. Raises ``TimeoutError`` (an OSError) when another
    process holds it for over ``timeout_s``; the lock file (``.NAME.lock``, empty) is left in place. On
    a file system that cannot lock, the block runs unlocked (a concurrent update may then be lost)."""
    path = Path(path)
    lock: filelock.BaseFileLock | None = filelock.FileLock(path.with_name(f".{path.name}.lock"))
    try:
        lock.acquire(timeout=timeout_s)
    except filelock.Timeout:
        raise TimeoutError(errno.ETIMEDOUT, f"{path} stayed locked by another process for {timeout_s:g} s") from None
    except NotImplementedError:    # a file system without locks (flock says ENOSYS): unlocked, as before
        lock = None
    try:
        yield path
    finally:
        if lock is not None:
            lock.release()


def claim(path: str | Path) -> IO[str] | None:
    """Take the exclusive lock of the lock file ``path`` (created if missing) without waiting, for as
    long as a job runs (a training in its run folder), and write this process's id in it. Returns the
    open file: the lock is held until ``unclaim`` (or the process ends, a kill included). Raises
    ``BlockingIOError`` when another process holds it; its ``filename`` is the holder's process id as
    written in the file ("" if unknown). None where locks do not exist (no ``fcntl``: Windows; a file
    system that refuses them): the job then runs unlocked."""
    try:
        import fcntl
    except ImportError:
        return None
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        f = os.fdopen(os.open(path, flags, 0o666 & ~_UMASK), "r+", encoding="ascii", errors="replace")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = f.read(32).strip()
            f.close()
            raise BlockingIOError(errno.EWOULDBLOCK, "locked by another process", holder if holder.isdigit() else "")
        except OSError as err:
            f.close()
            if err.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        if _same_inode(f.fileno(), path):   # else its holder removed it (``unclaim``) as we opened it
            break
        f.close()
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def unclaim(path: str | Path, lock: IO[str] | None) -> None:
    """Remove the lock file ``path`` that ``claim`` returned ``lock`` for, and let the lock go."""
    if lock is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)      # while still held: a process that opened it meanwhile sees it gone and opens anew
    lock.close()


def _same_inode(fd: int, path: str | Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_file(path, "wb", durable=durable) as f:
        f.write(data)


def write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    with atomic_file(path, "w", durable=durable) as f:
        f.write(text)


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as err:  # file systems without fsync (some FUSE/network mounts) say EINVAL/ENOTSUP
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_temps_for(target: str | Path) -> list[Path]:
    """``sweep_temps`` for the one file ``target``, where writes for it land (beside the file a
    symlink leads to); nothing for a device or a pipe."""
    there = landing(target)
    return [] if there is None else sweep_temps(there.parent, name=there.name)


def sweep_temps(folder: str | Path, *, name: str | None = None) -> list[Path]:
    """Remove our temp files in ``folder`` (only those for target ``name``, if given) left by
    processes of this host that are no longer running; return what was removed. Temps of live
    processes and of other hosts are left alone; nothing that is not one of our temps is touched."""
    removed: list[Path] = []
    host = _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    stem = None if name is None else _temp_stem(name)
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or (stem is not None and m["name"] != stem) or m["host"] != host:
            continue
        if _alive(int(m["pid"])):
            continue
        try:
            if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def target_problem(target: str | Path, inputs: tuple[str | Path, ...] = (), *,
                   force: bool = False) -> tuple[str, str] | None:
    """Why a new file may not be put at ``target``, checked before any work: ``(kind, message)`` with
    kind "input" (it is one of ``inputs``, refused even with ``force``), "folder" (it is a folder, its
    folder is missing or is a file) or "exists" (without ``force``); None when it may be written.
    Callers raise their own typed error from it."""
    target = Path(target)
    problem = name_problem(target.name)
    if problem is not None:
        return "folder", problem
    if any(_same_file(target, Path(p)) for p in inputs):
        return "input", "would overwrite an input; choose another output"
    if target.is_dir():
        return "folder", "is a folder; name an output file"
    with contextlib.suppress(OSError):
        if stat.S_ISBLK(os.stat(target).st_mode):
            return "folder", "is a block device (a disk); refusing to write into it"
    there = landing(target)
    if there is None:     # /dev/null, /dev/stdout, a FIFO: written into, nothing replaced
        return None
    problem = folder_problem(there.parent) or write_problem(there.parent)   # where the file lands
    if problem is not None:
        return "folder", problem if there == target else f"{problem} (it is where the symlink leads: {there})"
    if os.path.lexists(target) and not force:
        dangling = not target.exists()
        return "exists", (f"is a symlink to {there}, which does not exist yet; pass force to write it there"
                          if dangling else "exists already; pass force to overwrite")
    return None


def write_problem(folder: str | Path) -> str | None:
    """None when a file can be created in ``folder`` (or, where it does not exist yet, in the nearest
    folder above it that does, where it will be made); else why not. Found by creating and removing
    one of our temp files there: permission bits do not tell (root, read-only mounts, immutable
    folders, ACLs)."""
    folder = Path(folder)
    here = next((part for part in (folder, *folder.parents) if _is_dir(part)), None)
    if here is None:
        return None      # folder_problem says what is wrong
    try:
        fd, tmp = _create_temp(here / "write-check")
    except OSError as err:
        return f"cannot write in {here} ({err.strerror or err})"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return None


def folder_problem(folder: str | Path) -> str | None:
    """None when ``folder`` is a folder; else why not: the first part of it that exists but is not a
    folder (``afile/sub`` -> "afile is not a folder"), or that it does not exist."""
    folder = Path(folder)
    if _is_dir(folder):
        return None
    return in_the_way(folder) or f"output folder {folder} does not exist"


def in_the_way(folder: str | Path, what: str = "output folder") -> str | None:
    """Why ``folder`` (the ``what``) cannot be made or used: the first part of it that exists but is not
    a folder (``afile/sub`` -> "afile is not a folder"; a symlink to nothing says where it points), or
    cannot be looked at; None when it is a folder or could be made (nothing of it exists)."""
    for part in (Path(folder), *Path(folder).parents):
        if _is_dir(part):
            return None
        try:
            os.lstat(part)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            return f"cannot use the {what} {part} ({err.strerror or err})"
        try:
            os.stat(part)
        except FileNotFoundError:
            return f"{part} is a symlink to {os.path.realpath(part)}, which does not exist"
        except OSError as err:      # a loop of links
            return f"cannot use the {what} {part} ({err.strerror or err})"
        return f"{part} is not a folder"
    return None


def os_reason(err: OSError, folder: str | Path) -> str:
    """Words for ``err``, raised while making ``folder`` or writing in it: where a part of it is a
    file, that (mkdir says only "File exists" or "Not a directory"); where writing in it found no
    such file, that the folder does not exist; else the system's own."""
    if isinstance(err, (FileExistsError, NotADirectoryError, FileNotFoundError)):
        problem = folder_problem(folder)
        if problem is not None and (isinstance(err, FileNotFoundError) or "does not exist" not in problem):
            return problem
    return err.strerror or str(err)


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False
