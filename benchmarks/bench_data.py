#!/usr/bin/env python
"""Reload speed of a prepared dataset: ``load("mnist", "train")`` vs reading the raw IDX .gz files
with numpy (the peer), and vs decoding the tfds shards record by record (``as_data_source``).

    python benchmarks/bench_data.py [--manual-dir DIR] [--repeats 5]

The raw files come from --manual-dir or $AECLUST_MANUAL_DIR/mnist/. Preparing (first load) is
timed apart. Last line: one JSON object; "speedup" = raw-IDX time / our load time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import tempfile
import time

import numpy as np


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def read_raw_idx(folder: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """The peer: what a user does without a data layer (gunzip + frombuffer)."""
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int32)
    return images, labels


def main() -> None:
    from aeclust_jax.data import _decode_from_shards, load, prepare

    parser = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ.get("AECLUST_MANUAL_DIR", ".")) / "mnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_data_") as data_dir:
        t = time.perf_counter()
        first = load("mnist", "train", data_dir=data_dir, manual_dir=args.manual_dir)
        prepare_s = time.perf_counter() - t
        ours = best_of(lambda: load("mnist", "train", data_dir=data_dir), args.repeats)
        raw_images, raw_labels = read_raw_idx(args.manual_dir)
        assert np.array_equal(first.images, raw_images) and np.array_equal(first.labels, raw_labels)
        peer = best_of(lambda: read_raw_idx(args.manual_dir), args.repeats)
        b = prepare("mnist", data_dir=data_dir)
        per_record = best_of(lambda: _decode_from_shards(b, "train"), max(1, args.repeats // 2))

    n = len(first)
    print(f"prepare (first load, raw -> shards -> array cache): {prepare_s:.2f} s")
    print(f"load('mnist', 'train') prepared: {ours * 1e3:.1f} ms for {n} images")
    print(f"raw IDX .gz with numpy:          {peer * 1e3:.1f} ms")
    print(f"tfds as_data_source, per record: {per_record * 1e3:.1f} ms")
    print(json.dumps({
        "bench": "data_load", "dataset": "mnist", "split": "train", "n": n,
        "repeats": args.repeats, "ours_load_s": round(ours, 4),
        "peer_raw_idx_numpy_s": round(peer, 4), "tfds_data_source_per_record_s": round(per_record, 4),
        "prepare_s": round(prepare_s, 2), "speedup": round(peer / ours, 2),
        "speedup_vs_data_source": round(per_record / ours, 2),
    }))


if __name__ == "__main__":
    main()
