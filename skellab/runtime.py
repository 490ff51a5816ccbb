"""Device and randomness: resolved explicitly, never at import time."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ContextManager, Iterable, Iterator

import numpy as np
import torch

from .errors import SkellabError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is checked and returned."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SkellabError(f"unknown device {device!r}: use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SkellabError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` on ``device``."""
    gen = torch.Generator(device=resolve_device(device))
    gen.manual_seed(check_seed(seed))
    return gen


def numpy_rng(seed: int) -> np.random.Generator:
    """A numpy ``Generator`` seeded with ``seed``."""
    return np.random.default_rng(check_seed(seed))


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an int in 0 .. 2**32 - 1 (what numpy and torch both accept); else a one-line SkellabError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        if isinstance(seed, str) and seed.strip().lstrip("+").isdigit():
            seed = int(seed)
        else:
            raise SkellabError(f"{name} must be an integer in 0..{MAX_SEED}, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise SkellabError(f"{name} must be an integer in 0..{MAX_SEED}, got {int(seed)}")
    return int(seed)


MAX_SEED = 2**32 - 1


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- temporary files: ``.NAME.<host>-<pid>.<random>.tmp<suffix>`` beside the final name ----------------------

_NAME_MAX = 255  # bytes in one path component on every common file system
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{4})-(?P<pid>\d+)\.[^.]+\.tmp(?:\.[^.]*)?$")
_OLD_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?:\.[^.]*)?$")  # before writer tags
STALE_FOREIGN_TEMP_S = 24 * 3600  # temp files of other hosts (shared file systems) count as stale after a day


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:4]


def _temp_prefix(final: Path, extra: int = 0) -> str:
    """``.NAME.<host>-<pid>.``, with NAME shortened so that the whole temp name (plus ``extra`` bytes of
    further suffix) fits in 255 bytes."""
    tail = f".{_host_tag()}-{os.getpid()}."
    room = _NAME_MAX - len(tail) - 1 - 8 - len(".tmp") - len(final.suffix.encode()) - extra  # 8: mkstemp's random
    name = final.name
    while len(name.encode()) > room:
        name = name[:-1]
    return f".{name}{tail}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the name of an :func:`atomic_path` temp file (this or an older version)."""
    return bool(_TMP_RE.match(name) or _OLD_TMP_RE.match(name))


def is_stale_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temp file of :func:`atomic_path` whose writer is gone.

    Written on this host: its process no longer runs. Another host's (shared file system):
    older than :data:`STALE_FOREIGN_TEMP_S`. Old-style names without a pid: older than that too.
    """
    p = Path(path)
    m = _TMP_RE.match(p.name)
    if m and m.group("host") == _host_tag():
        return not _pid_alive(int(m.group("pid")))
    if not (m or _OLD_TMP_RE.match(p.name)):
        return False
    try:
        return time.time() - p.lstat().st_mtime > STALE_FOREIGN_TEMP_S
    except OSError:
        return False


def clean_stale_temps(folder: str | os.PathLike, *, name: str | None = None, all_temps: bool = False) -> list[Path]:
    """Remove the temp files that a killed writer left in ``folder``; return what was removed.

    ``name`` limits the sweep to temp files of that final file name. ``all_temps`` removes every
    ``.*.tmp*`` file regardless of its writer: only for a caller that holds the folder's writer
    lock (:func:`file_lock`), so no other writer can be mid-write there.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and ".tmp" in e.name]
    except OSError:  # missing, not a folder, or not listable: nothing we may sweep
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if name is not None and not (m and (m.group("name") == name or (
                len(entry.name.encode()) > _NAME_MAX - 40 and name.startswith(m.group("name"))))):
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        p = folder / entry.name
        if (all_temps and is_temp_name(entry.name)) or is_stale_temp(p):
            removed.append(p)
    return unlink_existing(removed)


def unlink_existing(paths: Iterable[Path]) -> list[Path]:
    """Delete each file that still exists; return those deleted (one that vanished meanwhile is no error)."""
    removed = []
    for p in paths:
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever left under the final name: on any exception the
    temporary file is removed and the original file (if any) is untouched. The temp name
    ``.NAME.<host>-<pid>.<random>.tmp<suffix>`` fits the 255-byte limit for any valid
    NAME, and records its writer: temp files that a SIGKILLed writer left for this name are
    removed on the next write (:func:`clean_stale_temps`).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_file():
        raise SkellabError(f"{final}: exists and is not a regular file; refusing to replace it")
    clean_stale_temps(final.parent, name=final.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=".tmp" + final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp_path
        _fsync(tmp_path)  # the bytes are on disk before the name points at them
        os.replace(tmp_path, final)
        _fsync(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def limit_heap_growth(mmap_threshold: int = 4 << 20) -> bool:
    """Serve allocations of ``mmap_threshold`` bytes or more with ``mmap`` for the rest of the process (glibc).

    glibc raises its mmap threshold each time a large mmapped block is freed, so in a long loop that
    allocates and frees big tensors (generating organ after organ) those blocks end up on the heap,
    which fragments and never shrinks: measured ~10 MB more peak RSS per generated organ. A fixed
    threshold keeps that loop's memory flat. Returns False where it does not apply (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, int(mmap_threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16).

    There, bf16 autocast roughly halves the decoder's cost; elsewhere (e.g. AVX2-only CPUs)
    it emulates bf16 and is several times *slower*, so ``precision="auto"`` stays fp32.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch: no way to ask, stay exact
        return False


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """``"auto"`` → ``"bf16"`` on CUDA and on CPUs with native bf16 (:func:`cpu_has_fast_bf16`), else ``"fp32"``;
    ``"fp32"`` and ``"bf16"`` stay. Anything else → :class:`SkellabError`."""
    if precision not in PRECISIONS:
        raise SkellabError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    dev = torch.device(device)
    return "bf16" if dev.type == "cuda" or (dev.type == "cpu" and cpu_has_fast_bf16()) else "fp32"


def inference_autocast(device: torch.device | str, precision: str = "auto") -> ContextManager:
    """Autocast context for inference: ``"fp32"`` (exact), ``"bf16"``, or ``"auto"`` (bf16 on CUDA and
    on CPUs with native bf16 — :func:`cpu_has_fast_bf16` — fp32 elsewhere: :func:`resolve_precision`)."""
    dev = torch.device(device)
    if resolve_precision(dev, precision) == "fp32":
        return nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

# --- locks and regular files -----------------------------------------------------------------------------


@contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False, timeout: float | None = None,
              what: str | None = None) -> Iterator[Path]:
    """Hold an advisory ``flock`` on the file ``path`` (created if absent) for the ``with`` block.

    ``shared=False``: one writer at a time; ``shared=True``: many holders, no exclusive one.
    Waits for the lock (forever, or ``timeout`` seconds → SkellabError naming ``what``). The
    lock dies with its process, so a SIGKILLed holder never leaves it stuck.
    """
    import fcntl

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:  # type: ignore[operator]
                    raise SkellabError(
                        f"{what or p.parent}: still locked by another skellab process after {timeout:g} s"
                    ) from None
                time.sleep(0.05)
        yield p
    finally:
        os.close(fd)  # closing releases the lock


def check_regular_file(path: str | os.PathLike, *, what: str = "input") -> Path:
    """``path`` as a Path if it is an existing, non-empty regular file; else a one-line SkellabError.

    Runs before anything opens the file, so a FIFO, a device or a socket is refused instead
    of blocking a read forever.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise SkellabError(f"{p}: {what} file not found") from None
    except OSError as exc:
        raise SkellabError(f"{p}: cannot read {what} file ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise SkellabError(f"{p}: is a folder, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise SkellabError(f"{p}: {kind}, not a regular file; refusing to read it")
    if st.st_size == 0:
        raise SkellabError(f"{p}: {what} file is empty")
    return p


# --- worker processes ----------------------------------------------------------------------------------


def die_with_parent(parent_pid: int | None = None) -> None:
    """Process-pool initializer: end this worker when the process that started it dies (even by SIGKILL).

    Pass ``initargs=(os.getpid(),)`` so a parent that died before this runs is noticed too.
    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``. Elsewhere (and as a second guard) a daemon
    thread polls the parent pid once a second.
    """
    parent = os.getppid() if parent_pid is None else int(parent_pid)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="skellab-parent-watchdog", daemon=True).start()


# --- outputs that never mix with or destroy inputs --------------------------------------------------------

def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_not_input(output: str | os.PathLike, inputs, *, folder: bool = False) -> None:
    """Refuse an output that would replace one of ``inputs`` (one-line SkellabError).

    A file output: the same file as an input (also through a symlink or hard link). A folder
    output (replaced whole, :func:`replace_folder`): an input that lies inside it.
    """
    out = Path(output)
    for item in inputs:
        if item is None:
            continue
        src = Path(item)
        if _same_file(out, src):
            raise SkellabError(f"{out}: the output is the input {src}; refusing to overwrite it (choose another --out)")
        if folder:
            try:
                inside = src.resolve().is_relative_to(out.resolve())
            except OSError:
                inside = False
            if inside:
                raise SkellabError(f"{out}: the output folder holds the input {src} and would be replaced whole; "
                                   "choose another --out")


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # EINVAL / ENOSYS: this file system or kernel cannot exchange; the caller renames twice


def _sweep_folder_temps(final: Path) -> None:
    """Remove the temp folders that killed writers of ``final`` left beside it; if ``final`` itself is
    missing because a writer died between the two renames of a swap, put the previous folder back."""
    try:
        entries = [e for e in os.scandir(final.parent) if e.name.startswith(".") and ".tmp" in e.name]
    except OSError:
        return
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False) or not (
                m.group("name") == final.name or (len(entry.name.encode()) > _NAME_MAX - 40
                                                  and final.name.startswith(m.group("name")))):
            continue
        p = final.parent / entry.name
        if not is_stale_temp(p):
            continue
        if entry.name.endswith(".tmp.old") and not final.exists():
            os.rename(p, final)  # the previous output, moved aside by a writer killed mid-swap
            continue
        shutil.rmtree(p, ignore_errors=True)


def check_folder_output(path: str | os.PathLike, *, overwrite: bool = False, owned=None,
                        what: str = "output folder") -> list[str]:
    """The checks of :func:`replace_folder`, without writing anything (run them before a long computation).

    Returns the names ``path`` holds now.
    """
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise SkellabError(f"{final}: exists and is not a folder")
    existing = sorted(os.listdir(final)) if final.is_dir() else []
    if existing and not overwrite:
        raise SkellabError(f"{final}: {what} is not empty ({len(existing)} entries); pass --overwrite to replace "
                           "it whole, or choose a new folder")
    foreign = [name for name in existing if owned is not None and not owned(name)]
    if foreign:
        raise SkellabError(f"{final}: holds {foreign[0]!r}, which this command does not write; refusing to "
                           f"replace the {what} (choose a new folder)")
    return existing


@contextmanager
def replace_folder(path: str | os.PathLike, *, overwrite: bool = False, owned=None,
                   what: str = "output folder") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole.

    The rule for folder outputs (``skellab generate --out``, ``skellab interpolate --out``): the
    folder ends up holding exactly what this run wrote — never old and new files mixed — and an
    interrupted run (an exception, Ctrl-C, SIGKILL) leaves the previous folder untouched (its temp
    folder is removed then, or on the next run). A non-empty ``path`` is refused unless
    ``overwrite``; even then it is refused if it holds an entry that ``owned(name)`` (a predicate
    for the names this command writes) does not accept, so ``--out ~/Documents --overwrite`` cannot
    delete unrelated files. The swap is one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux, two
    renames elsewhere (a writer killed between them has its previous folder restored next time).
    """
    final = Path(path)
    check_folder_output(final, overwrite=overwrite, owned=owned, what=what)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_folder_temps(final)  # may put back a previous folder that a killed swap left aside: check again
    existing = check_folder_output(final, overwrite=overwrite, owned=owned, what=what)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                _fsync(f)
        _fsync(tmp)
        if not final.exists():
            os.rename(tmp, final)
        elif existing or not _try_rename_onto_empty(tmp, final):
            if _rename_exchange(tmp, final):
                shutil.rmtree(tmp, ignore_errors=True)  # now the previous folder
            else:
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(final, extra=4), suffix=".tmp.old", dir=final.parent))
                os.rmdir(old)  # only its (unique) name is needed
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
        _fsync(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _try_rename_onto_empty(tmp: Path, final: Path) -> bool:
    try:
        os.rename(tmp, final)  # POSIX: a directory may replace an empty directory
        return True
    except OSError:
        return False
