"""Shared fixtures: tiny real image files and indexes in tmp_path (no mocks)."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def file_size_limit(fsize):
    """A `preexec_fn` for subprocess that caps the files the child writes at `fsize` bytes (`ulimit -f`), with
    SIGXFSZ ignored so that a write past it fails with EFBIG; None (no limit) when `fsize` is None."""
    if fsize is None:
        return None
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return limit


def make_image(path, size=32, seed=0, mode="RGB", fmt=None):
    """Write a small random image; returns its path."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    # two classes that differ in brightness, so heads have something to learn
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def write_image_folder(root):
    """root/<class>/<n>.png|jpg: 2 classes x 4 images, 32x32, class 'b' brighter; returns root."""
    for c, (label, offset) in enumerate((("a", 0), ("b", 120))):
        for i in range(4):
            rng = np.random.default_rng(10 * c + i)
            arr = np.clip(rng.integers(0, 120, (32, 32, 3)) + offset, 0, 255).astype(np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            path = root / label / f"{i}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return root


def write_csv_index(image_folder):
    """index.csv next to the class folders, listing every image with its label; returns its path."""
    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.*"))
    lines = ["filename,label"] + [f"{r},{r.split('/')[0]}" for r in rows]
    path = image_folder / "index.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def image_folder(tmp_path):
    """root/<class>/<n>.png|jpg: 2 classes x 4 images, 32x32, class 'b' brighter."""
    return write_image_folder(tmp_path / "imgs")


@pytest.fixture
def csv_index(image_folder):
    """index.csv next to the class folders, listing every image with its label."""
    return write_csv_index(image_folder)


class SmallDisk:
    """A 64 KiB tmpfs: `path` is where it is mounted; `fill` makes it full."""

    def __init__(self, path):
        self.path = path

    def fill(self, leave=0):
        """Fill the disk with a file named `filler`, then free its last `leave` bytes."""
        filler = self.path / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 1024)
            except OSError:
                pass
        if leave:
            os.truncate(filler, os.path.getsize(filler) - leave)


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)` mounts a tmpfs of `size` ("64k", "1m") at tmp_path/tmpfs for the test and returns its path; it
    is unmounted after the test (a real full disk: root only, as CI runs; the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "tmpfs"
    mounted = []

    def mount(size: str):
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(mnt)
        return mnt

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def small_disk(tmpfs):
    """A real full-disk setting: a 64 KiB tmpfs mounted for the test (root only, as CI runs; skipped otherwise)."""
    return SmallDisk(tmpfs("64k"))


@pytest.fixture
def read_only_folder(tmp_path):
    """An empty folder that this process cannot write: a read-only bind mount for root (permission bits do not stop
    root), a 0o555 folder otherwise; skipped where root cannot mount."""
    folder, ro = tmp_path / "writable", tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        yield folder
        os.chmod(folder, 0o755)
        return
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(ro)], capture_output=True).returncode:
        pytest.skip("root, and cannot bind-mount read-only here")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


@pytest.fixture
def dead_pid():
    """The pid of a process that has finished: a killed writer's, for its temporary files' names."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        os.kill(gone.pid, 0)
    except ProcessLookupError:
        return gone.pid
    pytest.skip("the finished process's pid was taken again (rare): the test cannot tell a dead writer here")


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras home for the test. Keras reads $KERAS_HOME once, at import, so its own setting is set too."""
    from keras.src.backend import config

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras"))
    return tmp_path / "keras"
