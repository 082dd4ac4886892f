"""Rebuild the embedded Fashion-MNIST subset (train.parquet) from the original IDX files.

The original files come with Debian's package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist/)
or from https://github.com/zalandoresearch/fashion-mnist (data/fashion).

    python data/fashion_mnist/build_subset.py [--source_dir DIR] [--per_class 600] [--seed 0]

The subset is `per_class` images of each of the 10 classes of the training split, drawn at
random with `seed`, in the order of the original file. Images are stored as PNG bytes in a
`datasets.Image` column, so `datasets.load_dataset("data/fashion_mnist")` reads it directly.
"""

import argparse
import gzip
import hashlib
import io
from pathlib import Path

import datasets
import numpy as np
from PIL import Image


CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
HERE = Path(__file__).resolve().parent


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    data = gzip.open(path, "rb").read()
    num_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * num_dims).reshape(shape)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--per_class", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(HERE / "train.parquet"))
    args = parser.parse_args()

    source = Path(args.source_dir)
    images_file, labels_file = source / "train-images-idx3-ubyte.gz", source / "train-labels-idx1-ubyte.gz"
    for path in (images_file, labels_file):
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; install dataset-fashion-mnist or pass --source_dir")
        print(f"{path.name}  md5 {hashlib.md5(path.read_bytes()).hexdigest()}")
    images, labels = read_idx(images_file), read_idx(labels_file)  # (60000, 28, 28), (60000,)

    rng = np.random.default_rng(args.seed)
    picked = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == label), size=args.per_class, replace=False)
                for label in range(len(CLASS_NAMES))
            ]
        )
    )

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    subset = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": png_bytes(images[i]), "path": None} for i in picked],
            "label": labels[picked].tolist(),
        },
        features=features,
    )
    subset.to_parquet(args.output)
    print(f"wrote {len(subset)} images to {args.output} ({Path(args.output).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
