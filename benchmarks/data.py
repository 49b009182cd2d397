"""Reading a packed file vs decoding PNG files: images per second.

    python benchmarks/data.py [--n 10000] [--repeat 3] [--batch 128]

Takes the Fashion-MNIST test images (``load_dataset("fashion-mnist", "test")``: the
cache of ``cnnlab data fetch fashion-mnist`` or Debian's /usr/share/datasets/fashion-mnist),
writes them once as PNG files into an image folder (ROOT/CLASS/N.png) and once as a
packed file, both in a temporary folder, then times reading every image in a shuffled
order, as an epoch of training would:

- PNG folder: ``ImageFolder(root, color="gray")[i]`` (open, decode with Pillow);
- packed: ``PackedDataset(path)`` opened inside the timing, then shuffled batches
  copied out of the memmap;
- packed + DataLoader: the same through ``DataLoader`` (float32 NCHW batches, inline).

Both sources are read from the page cache (each is read once before timing). The bar
for the packed format is >= 10x the PNG rate. Best of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data.imagefolder import ImageFolder
from cnnlab.data.loader import DataLoader
from cnnlab.data.packed import PackedDataset, pack_dataset
from cnnlab.data.registry import load_dataset


def write_png_folder(dataset, root: Path) -> None:
    for c in range(len(dataset.classes)):
        (root / f"{c:02d}").mkdir(parents=True)
    for i, (image, label) in enumerate(zip(dataset.images, dataset.labels)):
        Image.fromarray(image).save(root / f"{label:02d}" / f"{i:05d}.png")


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images to use (default 10000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs, best kept (default 3)")
    ap.add_argument("--batch", type=int, default=128, help="batch size for packed reads")
    args = ap.parse_args()

    data = load_dataset("fashion-mnist", "test")
    data = data.subset(np.arange(min(args.n, len(data))))
    n = len(data)
    order = np.random.default_rng(0).permutation(n)

    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-data-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_png_folder(data, tmp / "png")
        png_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        pack_dataset(data, tmp / "test.cnnpack")
        pack_write = time.perf_counter() - t0

        folder = ImageFolder(tmp / "png", color="gray")
        assert len(folder) == n
        index_of = np.empty(n, np.int64)        # data set index -> folder index
        index_of[[int(p.stem) for p in folder.files]] = np.arange(n)

        def read_png():
            out = np.empty((n, 28, 28), np.uint8)
            for j, i in enumerate(order):
                out[j] = folder[index_of[i]][0]
            return out

        def read_packed():
            ds = PackedDataset(tmp / "test.cnnpack")
            out = np.empty((n, 28, 28), np.uint8)
            for s in range(0, n, args.batch):
                rows = order[s:s + args.batch]
                out[s:s + len(rows)] = ds.images[rows]
            return out

        def read_loader():
            ds = PackedDataset(tmp / "test.cnnpack")
            for _ in DataLoader(ds, batch_size=args.batch, shuffle=True, seed=0):
                pass

        # warm the page cache and check both give the same images
        png_images, packed_images = read_png(), read_packed()
        same = np.array_equal(png_images, data.images[order]) and \
            np.array_equal(packed_images, data.images[order])
        read_loader()

        rows = [("PNG folder (Pillow decode)", best_time(read_png, args.repeat)),
                ("packed (memmap, shuffled batches)", best_time(read_packed, args.repeat)),
                ("packed + DataLoader (float32 NCHW)", best_time(read_loader, args.repeat))]
        png_bytes = sum(f.stat().st_size for f in folder.files)
        pack_bytes = (tmp / "test.cnnpack").stat().st_size

    print(f"Fashion-MNIST test, {n:,} images 28x28, shuffled order, batch {args.batch}, "
          f"best of {args.repeat}; os.cpu_count()={os.cpu_count()}")
    print(f"written once: PNG folder {png_bytes / 1e6:.1f} MB in {png_write:.2f} s, "
          f"packed file {pack_bytes / 1e6:.1f} MB in {pack_write:.2f} s; identical images: {same}")
    print(f"{'source':<38}{'seconds':>10}{'images/s':>14}{'vs PNG':>10}")
    png_rate = n / rows[0][1]
    for name, secs in rows:
        rate = n / secs
        print(f"{name:<38}{secs:>10.4f}{rate:>14,.0f}{rate / png_rate:>9.1f}x")
    ratio = (n / rows[1][1]) / png_rate
    print(f"packed / PNG: {ratio:.0f}x  (bar: >= 10x: {'met' if ratio >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
