"""Where one extraction with the cheap model spends its time: the sections of `run_extract`, the decode pool alone
and with the forward pass, and how decoding scales over threads against separate processes.

    python benchmarks/where_time_goes.py --n 1000 --workdir /tmp/fh/ip

The same data and model as benchmarks/input_pipeline.py (N JPEGs of 500x375 cut from scikit-learn's two photos,
a one-layer saved Keras model at 224, `--pooling avg`). Printed, each best of --repeat unless said:
- run: one `run_extract` into a new store, split into its sections (read the index, hash the files and plan the
  rows, the two view writes, the fill) and, inside the fill, the time the loop waits for decoded batches, the
  time of the forward passes, and the HDF5 writes (on the writer thread, overlapping the loop). Measured by
  wrapping those functions for the run, in this script only; every repeat is printed (they vary).
- pool: `extract.batches.decoded_batches` alone, and with the forward pass on each batch (no store).
- scaling: libjpeg-turbo decode alone, decode + the pyramid resize, and `load_image`, in 1 thread and in one
  thread per core (each thread a contiguous share of the files, no futures); and the decode alone in one
  process per core at once (each process all the files): what the cores give when no GIL is shared.
- cpu (Linux): the CPU each run costs, in ms of one core per image, by thread (the decode pool, the main loop,
  the writer, the hashing pool, and the native threads of TensorFlow and OpenCV, sampled from /proc every 5 ms), for
  `run_extract` and for the peer (`image_dataset_from_directory` + `predict`) over the same files, each in every
  repeat; with how many cores each kept busy, and the rate each would reach with every core busy
  (cores / CPU per image), which bounds what any scheduling change alone can give.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from input_pipeline import cheap_model, make_images  # noqa: E402


class Sections:
    """Wall time spent in wrapped functions, summed per label (thread-safe)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.times[label] = self.times.get(label, 0.0) + seconds

    def wrap(self, owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t)

        setattr(owner, name, timed)

    def wrap_iterator(self, owner, name: str, label: str) -> None:
        """The time the consumer waits for each item of the generator function `owner.name`."""
        f = getattr(owner, name)

        @functools.wraps(f)
        def timed(*args, **kwargs):
            items = f(*args, **kwargs)
            while True:
                t = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self.add(label, time.perf_counter() - t)
                yield item

        setattr(owner, name, timed)


RUN_ROWS = ("total_ms", "img_per_s", "read the index", "hash and plan the rows", "view writes (before and after)",
            "fill (decode, model, writes)", "  waiting for decoded batches (loop)", "  forward passes (loop)",
            "  shard writes (writer thread)")


def run_sections(root: Path, extractor, store: Path, repeat: int) -> list[dict]:
    import features_store
    import pipelines.runs.extraction as extraction
    import pipelines.runs.filling as filling
    from extract import read_index

    sections = Sections()
    sections.wrap(extraction, "plan_rows", "hash and plan the rows")
    sections.wrap(extraction, "fill_stores", "fill (decode, model, writes)")
    sections.wrap(features_store.StoreSession, "write_view", "view writes (before and after)")
    sections.wrap(features_store.ShardWriter, "write", "  shard writes (writer thread)")
    sections.wrap(type(extractor), "__call__", "  forward passes (loop)")
    sections.wrap_iterator(filling, "decoded_batches", "  waiting for decoded batches (loop)")
    runs = []
    for _ in range(repeat):
        sections.times.clear()
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        index = read_index(root)
        sections.add("read the index", time.perf_counter() - t)
        result = extraction.run_extract(index, extractor, store)
        total = time.perf_counter() - t
        runs.append({"total_ms": total * 1e3, "img_per_s": result.n_rows / total,
                     **{k: v * 1e3 for k, v in sections.times.items()}})
    return runs


def pool_rates(paths, extractor, repeat: int) -> dict:
    import features_store
    from extract.batches import decoded_batches

    plan = features_store.batch_plan(len(paths), 32)
    rates = {}
    for name, model in (("decode pool alone", False), ("decode pool + forward pass", True)):
        best = 0.0
        for _ in range(repeat):
            t = time.perf_counter()
            for _lo, _hi, images, _ok, _errors in decoded_batches(paths, 224, plan):
                if model:
                    extractor(images)
            best = max(best, len(paths) / (time.perf_counter() - t))
        rates[name] = best
    return rates


class ThreadCPU:
    """CPU seconds of this process's threads while it runs, grouped by role, from /proc (Linux only).

    A thread's CPU is read every `interval` s and its last reading kept, so a thread that ends between two
    readings loses at most `interval` of its time; `total` comes from getrusage and counts every thread but the
    sampler's own (its system time still counts in `system`)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self._stop = interval, threading.Event()
        self._last: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._tick = os.sysconf("SC_CLK_TCK")

    def _read(self) -> None:
        for t in threading.enumerate():
            if t.native_id is not None:
                self._names[t.native_id] = t.name
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # ended since the listing
                continue
            self._last[int(tid)] = (int(fields[11]) + int(fields[12])) / self._tick

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def __enter__(self):
        import resource

        self._read()
        self._start = dict(self._last)
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self._wall = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import resource

        self.wall = time.perf_counter() - self._wall
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._stop.set()
        self._thread.join()
        self._read()
        sampler = self._last.get(self._thread.native_id, 0.0)  # this measurement's own thread: not the run's
        self.total = (usage.ru_utime - self._usage.ru_utime) + (usage.ru_stime - self._usage.ru_stime) - sampler
        self.system = usage.ru_stime - self._usage.ru_stime
        main = threading.main_thread().native_id
        self.roles: dict[str, float] = {}
        for tid, seconds in self._last.items():
            name = self._names.get(tid, "")
            if name == "cpu-sampler":
                continue
            role = ("main thread" if tid == main else "decode pool" if name.startswith("featurehead-decode")
                    else "writer thread" if name.startswith("featurehead-writer")
                    else "hashing pool" if name.startswith("featurehead-hash")
                    else "other Python threads" if name else "native threads (TensorFlow, OpenCV)")
            self.roles[role] = self.roles.get(role, 0.0) + seconds - self._start.get(tid, 0.0)
        return False


def cpu_per_image(root: Path, model_path: Path, extractor, store: Path, n: int, cores: int, repeat: int) -> list:
    """Each repeat: featurehead's run_extract, then the peer, each measured by `ThreadCPU`."""
    import keras

    import pipelines.runs.extraction as extraction
    from extract import read_index

    peer_model = keras.saving.load_model(model_path, compile=False)
    rows = []
    for _ in range(repeat):
        shutil.rmtree(store, ignore_errors=True)
        with ThreadCPU() as ours:
            extraction.run_extract(read_index(root), extractor, store)
        with ThreadCPU() as peer:
            ds = keras.utils.image_dataset_from_directory(root, image_size=(224, 224), batch_size=32, shuffle=False,
                                                          verbose=False)
            assert len(peer_model.predict(ds, verbose=0)) == n
        for name, m in (("featurehead", ours), ("peer", peer)):
            rows.append({"who": name, "img_per_s": n / m.wall, "cores_busy": m.total / m.wall,
                         "ms_core_per_image": 1e3 * m.total / n, "ms_system_per_image": 1e3 * m.system / n,
                         "img_per_s_all_cores_busy": cores * n / m.total,
                         **{f"ms {k}": 1e3 * v / n for k, v in sorted(m.roles.items())}})
    return rows


def _decode_all(paths, repeat: int) -> float:
    """Best-of rate of libjpeg-turbo decoding every file (bytes in memory), one thread."""
    import simplejpeg

    datas = [Path(p).read_bytes() for p in paths]
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        for d in datas:
            simplejpeg.decode_jpeg(d, colorspace="RGB")
        best = max(best, len(datas) / (time.perf_counter() - t))
    return best


def scaling(paths, repeat: int, cores: int, work: Path) -> dict:
    import cv2
    import simplejpeg

    from extract.images import _resize, load_image

    datas = [Path(p).read_bytes() for p in paths]
    tasks = {
        "decode": lambda i: simplejpeg.decode_jpeg(datas[i], colorspace="RGB"),
        "decode + pyramid": lambda i: _resize(simplejpeg.decode_jpeg(datas[i], colorspace="RGB"), 224, 224),
        "load_image": lambda i: load_image(paths[i], 224),
    }

    def rate(f, threads: int) -> float:
        def share(lo, hi):
            for i in range(lo, hi):
                f(i)

        step = -(-len(paths) // threads)
        best = 0.0
        for _ in range(repeat):
            pool = [threading.Thread(target=share, args=(k * step, min(len(paths), (k + 1) * step)))
                    for k in range(threads)]
            t = time.perf_counter()
            for th in pool:
                th.start()
            for th in pool:
                th.join()
            best = max(best, len(paths) / (time.perf_counter() - t))
        return best

    out = {"opencv_threads": cv2.getNumThreads()}
    for name, f in tasks.items():
        one, many = rate(f, 1), rate(f, cores)
        out[name] = {"1 thread": one, f"{cores} threads": many, "scaling": many / one}
    # the decode alone in `cores` processes at once, each over every file: the sum of their rates
    listing = work / "paths.json"
    listing.write_text(json.dumps(list(paths)))
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"from where_time_goes import _decode_all; "
            f"print(_decode_all(json.load(open({str(listing)!r})), {repeat}))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
    each = [float(p.communicate()[0]) for p in procs]
    single = float(subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                  check=True).stdout)
    out["decode"][f"{cores} processes"] = sum(each)
    out["decode"]["process scaling"] = sum(each) / single
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--workdir", default="/tmp/fh/ip")
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--only", default="run,pool,scaling", help="comma-separated subset of: run,pool,scaling,cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"jpeg{args.n}"
    make_images(root, args.n)
    model_path = work / "cheap.keras"
    cheap_model(model_path)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    only = set(args.only.split(","))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    result: dict = {"n": args.n, "cores": cores}
    extractor = None
    if only & {"run", "pool", "cpu"}:
        from extract import get_extractor

        extractor = get_extractor("keras", weights=str(model_path), pooling="avg", batch_size=32)
        extractor(np.zeros((1, 224, 224, 3), np.uint8))  # built before any timing, as in input_pipeline.py
    print(f"N={args.n} JPEG 500x375 -> 224, cores={cores}")
    if "run" in only:
        result["run"] = run_sections(root, extractor, work / "store_sections", args.repeat)
        print("run_extract, ms per section (each repeat):")
        for key in RUN_ROWS:
            print(f"  {key:40s} " + " ".join(f"{r.get(key, 0):7.0f}" for r in result["run"]))
    if "pool" in only:
        result["pool"] = pool_rates(paths, extractor, args.repeat)
        for name, rate in result["pool"].items():
            print(f"  {name:40s} {rate:7.0f} img/s")
    if "scaling" in only:
        result["scaling"] = scaling(paths, args.repeat, cores, work)
        print(f"scaling over {cores} cores (OpenCV's own threads: {result['scaling']['opencv_threads']}):")
        for name, rates in result["scaling"].items():
            if isinstance(rates, dict):
                print(f"  {name:18s} " + ", ".join(f"{k} {v:.0f}" if "scaling" not in k else f"{k} {v:.2f}x"
                                                   for k, v in rates.items()))
    if "cpu" in only:
        result["cpu"] = cpu_per_image(root, model_path, extractor, work / "store_cpu", args.n, cores, args.repeat)
        print(f"CPU per image, ms of one core (each repeat; {cores} cores):")
        for r in result["cpu"]:
            parts = ", ".join(f"{k[3:]} {v:.3f}" for k, v in r.items() if k.startswith("ms ") and v >= 0.0005)
            print(f"  {r['who']:11s} {r['img_per_s']:5.0f} img/s, {r['cores_busy']:.2f} cores busy, "
                  f"{r['ms_core_per_image']:.3f} ms/image (system {r['ms_system_per_image']:.3f}): {parts}; "
                  f"every core busy: {r['img_per_s_all_cores_busy']:.0f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
