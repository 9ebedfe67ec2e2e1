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
    p.add_argument("--only", default="run,pool,scaling", help="comma-separated subset of: run,pool,scaling")
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
    if only & {"run", "pool"}:
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
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
