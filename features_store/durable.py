"""Durable, atomic file I/O for the store, and the translation of write failures into one clear line.

- `atomic_write`: temporary file, fsync, rename, fsync of the folder; the old file stays intact on failure.
- `reserve`: allocate a file's blocks up front (`posix_fallocate`), so later writes into it cannot hit a full disk.
- `check_free`: refuse to start a write that the free space cannot hold; `check_writable`: one that a read-only or
  forbidden folder would refuse; `check_room`: a training whose model's weights alone the free space cannot hold.
- `write_error`: a failed write (ENOSPC, EDQUOT, EFBIG, EIO, EROFS, EACCES; an `OSError`, or h5py's `RuntimeError`
  when HDF5 fails to flush or close a file) as one `StoreWriteError`.
- `h5_writing`: an h5py file for writing whose failure never crashes the process; `h5_reading`: one for reading,
  without HDF5's file lock.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from features_store.errors import StoreWriteError

_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
MIB = 1 << 20


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so that a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file by name (Linux flushes the file's dirty pages whichever descriptor asks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = "") -> None:
    """Write `path` through `write(tmp_path)`, then fsync, rename over `path` and fsync its folder.

    On any failure the temporary file is removed and the previous `path`, if any, is left untouched; an `OSError`
    that names no file (a full disk) is raised again naming `path`. `suffix` ends the temporary file's name, for a
    writer that insists on an extension (Keras's `.keras`).
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f"{temporary_prefix(path)}{os.getpid()}{suffix}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno and err.filename in (None, tmp):
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), path) from err
        raise


def temporary_prefix(path: str | os.PathLike) -> str:
    """How the name of an `atomic_write`'s temporary file for `path` begins (the writer's pid and the suffix
    follow), in `path`'s folder."""
    return f".{os.path.basename(os.fspath(path))}.tmp-"


def remove_dead_writers_files(path: str | os.PathLike, *, suffix: str = "") -> None:
    """Remove the temporary files of `atomic_write`s of `path` whose process is gone (a SIGKILL: an export's is a
    whole copy of the features), so that they neither fill the disk nor fail a free-space check.

    Called before they write by the writers of the files a command makes (an export, a pretrained model, the
    predictions, metrics.json, a report's page, every plot, sweep.csv, the augmentation preview), not by every
    `atomic_write` (a store's shards and views are the store's own); it lists the folder, so a writer of many
    files in one folder (a report's thumbnails) calls `remove_dead_temporaries` once instead. A process is
    looked for on this machine only: a folder that writers on other machines share may lose a live writer's
    temporary file (its rename then fails, and it says so)."""
    name = os.path.basename(os.fspath(path))
    remove_dead_temporaries(os.path.dirname(os.fspath(path)) or ".", name.__eq__, suffix=suffix)


_TEMPORARY = re.compile(r"\.(.+)\.tmp-([0-9]+)(\.[A-Za-z0-9]+)?")  # `atomic_write`'s: .NAME.tmp-PID[.suffix]


def temporary_of(name: str) -> str | None:
    """The NAME whose `atomic_write` temporary file `name` is (``.NAME.tmp-PID[.suffix]``), else None."""
    match = _TEMPORARY.fullmatch(name)
    return match.group(1) if match else None


def remove_dead_temporaries(folder: str | os.PathLike, ours: Callable[[str], bool], *,
                            suffix: str | None = None) -> None:
    """Remove the temporary files in `folder` (``.NAME.tmp-PID[.suffix]``) of the `atomic_write`s whose process is
    gone, for the NAMEs that `ours(NAME)` says a command writes there (and only with `suffix`, when given), listing
    the folder once: a writer of many files in one folder (a report's thumbnails, the demo's digits) calls it
    once; a user's own hidden files of that shape are kept."""
    try:
        names = os.listdir(folder)
    except OSError:
        return  # the write itself says what is wrong with the folder
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if (match and ours(match.group(1)) and (suffix is None or (match.group(3) or "") == suffix)
                and int(match.group(2)) != os.getpid() and not _alive(int(match.group(2)))):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process: alive; a number no pid can be: not a writer's
        return True
    return True


def check_writable(path: str | os.PathLike) -> None:
    """Raise the OSError, naming `path`, that writing into `path` (an existing folder) or writing `path` (a file or
    folder to make; then into the nearest folder above it that exists) would meet: a read-only mount (EROFS, root's
    case too) or no permission (EACCES). For the commands that compute for long before they write their result (a
    trained model, a bundle, a sweep's table): found after the computation, the computation was lost."""
    folder = _existing_folder(path)
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return  # the write itself says what is wrong
    code = errno.EROFS if read_only else None if os.access(folder, os.W_OK | os.X_OK) else errno.EACCES
    if code:
        raise OSError(code, os.strerror(code), os.fspath(path))


def check_room(path: str | os.PathLike, nbytes: int, *, what: str) -> None:
    """Raise StoreWriteError when the filesystem that `path` (a file or folder, made or to make) is on has less
    than `nbytes` free: a lower bound of `what` (a model's weights), checked before the training that makes it, which
    a full disk found at the save lost. No slack: the bound is below the real size, whose write still says so."""
    try:
        free = free_bytes(_existing_folder(path))
    except OSError:
        return  # the write itself says what is wrong
    if free < nbytes:
        raise StoreWriteError(f"{path}: not enough free space for {what}: its weights alone take {_size(nbytes)}, "
                              f"{_size(free)} is free. Free some space and re-run the same command (nothing was "
                              "trained yet).")


def _existing_folder(path: str | os.PathLike) -> str:
    """`path` itself when it is a folder, else the nearest folder above it that exists."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return folder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`atomic_write` of a small byte string."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def reserve(path: str | os.PathLike, nbytes: int) -> None:
    """Allocate the first `nbytes` of `path` on disk; a no-op where the filesystem cannot (EOPNOTSUPP)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes free to this user in `folder`'s filesystem."""
    return shutil.disk_usage(folder).free


def check_free(folder: str | os.PathLike, nbytes: int, *, store: str, what: str) -> None:
    """Raise StoreWriteError when `folder` has less than `nbytes` (plus 1 MiB of slack) free."""
    free = free_bytes(folder)
    if free < nbytes + MIB:
        need, have = _mib_pair(nbytes + MIB, free)
        raise StoreWriteError(
            f"{store}: not enough free space to write {what}: it needs {need}, {have} is free. Free some space "
            f"and re-run the same command: it resumes."
        )


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _size(n: int) -> str:
    """A size in KiB below 1 MiB ("20 KiB", not "0.0 MiB"), else in MiB."""
    return f"{n >> 10} KiB" if n < MIB else _mib(n)


def _mib_pair(a: int, b: int) -> tuple[str, str]:
    """Two sizes in MiB with as many decimals as it takes to tell them apart ("needs 1.6, 1.6 is free" said
    nothing)."""
    for digits in (1, 2, 3):
        pair = tuple(f"{n / MIB:.{digits}f} MiB" for n in (a, b))
        if pair[0] != pair[1]:
            return pair
    return f"{a} bytes", f"{b} bytes"


def write_error(err: OSError | RuntimeError, *, store: str, what: str, need: int | None = None) -> StoreWriteError:
    """One line for a failed write: the store, what was written, why, and (for space) how much is needed.

    `err` is an OSError, or the RuntimeError that h5py raises when HDF5 fails to flush or close a file (its errno
    is in its message)."""
    code = getattr(err, "errno", None) or _hdf5_errno(err)
    why = os.strerror(code) if code else str(err).split("\n")[0]
    if code == errno.EFBIG:
        return _too_large(store, what, why)
    if code in _SPACE_ERRNOS or "No space left" in str(err) or "too large" in str(err):
        space = ""
        try:
            free = free_bytes(store)
            if need:
                have, wanted = _mib_pair(free, need)
                space = f" ({have} free, {wanted} needed)"
            else:
                space = f" ({_mib(free)} free)"
        except OSError:
            pass
        return StoreWriteError(
            f"{store}: {why} while writing {what}{space}. Nothing unwritten is claimed: free some space "
            "and re-run the same command to resume."
        )
    if code == errno.EAGAIN and what.startswith("shard"):  # HDF5's own lock: another process writes the shard
        return StoreWriteError(
            f"{store}: {what} is open for writing in another process (a Dask worker still running a task of an "
            "earlier, stopped run?); let it finish or stop it, then re-run the same command to resume."
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreWriteError(f"{store}: cannot write {what} ({why}); it needs a writable folder.")
    return StoreWriteError(
        f"{store}: {why} while writing {what}. Nothing unwritten is claimed: re-run the same command to resume."
    )


_HDF5_ERRNO = re.compile(r"errno = ([0-9]+)")


def _hdf5_errno(err: BaseException) -> int | None:
    """The errno inside an HDF5 error message ("... file write failed: ..., errno = 27, error message = ...")."""
    found = _HDF5_ERRNO.search(str(err))
    return int(found.group(1)) if found else None


def _too_large(store: str, what: str, why: str) -> StoreWriteError:
    """EFBIG: the process's file-size limit (`ulimit -f`), or the filesystem's largest file, not free space."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limited = limit != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):
        limit, limited = 0, False
    if limited:
        return StoreWriteError(
            f"{store}: {why} while writing {what}: it passes this process's file-size limit ({_size(limit)}, "
            "`ulimit -f`). Nothing unwritten is claimed: raise the limit (`ulimit -f unlimited`) and re-run the "
            "same command to resume."
        )
    return StoreWriteError(
        f"{store}: {why} while writing {what}: it passes the largest file that this filesystem holds. Nothing "
        "unwritten is claimed: use a folder on another filesystem."
    )


def h5_reading(path: str | os.PathLike):
    """`h5py.File(path, "r")` without HDF5's own file lock, for every read of a store's files.

    Nothing a reader opens is ever written under that name: a shard is read once the manifest lists it (complete,
    closed before it was listed: never written again), and a view file or an export is written under a temporary
    name and renamed into place. So the lock guards nothing, and with it a read failed where `flock` fails (NFS
    without its lock daemon: ENOLCK; HDF5 tolerates only ENOSYS) or while another process held the file open for
    writing (a Dask task run twice reopens its complete shard; any tool opening the view in "r+"), each said as a
    damaged file to extract again. (An ``HDF5_USE_FILE_LOCKING`` set in the environment still overrides this: HDF5
    lets it.)

    A file that this process already holds open (the caller's own `h5py.File(view)`, or the shards that its virtual
    `features` opened) is opened with that open's locking flags, HDF5's rule for a second open of one file: it takes
    no new lock then."""
    import h5py

    for locking in _LOCKING_FLAGS[:-1]:
        try:
            return h5py.File(path, "r", locking=locking)
        except OSError as err:
            if "flag values don't match" not in str(err):
                raise
    return h5py.File(path, "r", locking=_LOCKING_FLAGS[-1])


# h5py's `locking=`: ours, then those of an open already in this process (h5py's default, HDF5's: locking on, a
# filesystem without flock ignored; then locking on)
_LOCKING_FLAGS = (False, None, True)


@contextmanager
def h5_writing(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """`h5py.File(path, mode)` for writing, flushed before it is closed; after a failure (a full disk, a file-size
    limit, an I/O error) it is abandoned with `abandon_h5`, for the caller to remove or resume from its durable
    part. Closed by h5py after a failed flush, HDF5 failed again as each object was freed, then crashed the
    process (exit 139)."""
    import h5py

    f = h5py.File(path, mode)
    try:
        yield f
        f.flush()
    except BaseException:
        abandon_h5(f)
        raise
    f.close()


def abandon_h5(f) -> None:
    """Close an h5py file after a failed write without HDF5 writing to it again: its descriptor is pointed at
    /dev/null first, so that what HDF5 still holds unwritten cannot fail (the file keeps what was flushed)."""
    if not f.id.valid:
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, f.id.get_vfd_handle())
        finally:
            os.close(null)
    except (OSError, RuntimeError, ValueError, TypeError):
        pass
    try:
        f.close()
    except (OSError, RuntimeError):
        pass
