#!/usr/bin/env python
"""How good are a pretrained extractor's features? A linear and a KNN probe on an image folder.

    python scripts/probe_features.py --path ../shared/data/cifar10_jpeg/cifar10-jpeg.zip \\
        --train-per-class 500 --test-per-class 200 [--model efficientnet_lite0] [--image-size 224]

Features: EfficientNet-Lite0 with its shipped ImageNet weights (pooled 1280-d, before the
classifier), on a seeded class-balanced subset of the train and test splits, resized on device.
Probes: multinomial logistic regression (scikit-learn, standardised features) and KNN (k = 5,
train features -> test). Also reports how often the ImageNet classifier's top-1 class falls in
the WordNet group of the image's class when ``--imagenet-check`` is given (CIFAR-10-like names).
The last line is one JSON object with the accuracies.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from aeclust_jax.cli import make_parser, run_main
from aeclust_jax.data import balanced_subset
from aeclust_jax.errors import UsageError

# ImageNet-1k class index ranges that contain each CIFAR-10 class (the usual WordNet grouping).
IMAGENET_GROUPS = {
    "airplane": [(403, 405), (894, 896), (908, 909)],      # airliner, warplane, wing, airship
    "automobile": [(407, 408), (436, 437), (468, 469), (511, 512), (609, 610), (627, 628),
                   (656, 657), (705, 706), (717, 718), (751, 752), (817, 818), (864, 865)],
    "bird": [(7, 25), (80, 101), (127, 147)],
    "cat": [(281, 294)],
    "deer": [(345, 354)],                                  # ox..gazelle/impala (hoofed)
    "dog": [(151, 269)],
    "frog": [(30, 33)],
    "horse": [(339, 340), (603, 604)],                     # sorrel, horse cart
    "ship": [(472, 473), (484, 485), (510, 511), (554, 555), (576, 577), (625, 626),
             (628, 629), (724, 725), (780, 781), (814, 815), (833, 834), (871, 872), (913, 914)],
    "truck": [(555, 556), (569, 570), (595, 596), (675, 676), (717, 718), (734, 735),
              (864, 865), (867, 868)],
}


def in_group(top1: np.ndarray, class_names: list[str], labels: np.ndarray) -> float:
    """Fraction of rows whose ImageNet top-1 index lies in the WordNet group of their class."""
    hits = [any(lo <= t < hi for lo, hi in IMAGENET_GROUPS.get(class_names[y], []))
            for t, y in zip(top1, labels)]
    return float(np.mean(hits))


def main(argv=None) -> int:
    p = make_parser(prog="probe_features.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--path", required=True, help="image folder or .zip/.tar (image_folder builder)")
    p.add_argument("--model", default="efficientnet_lite0", choices=["efficientnet_lite0"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="feature cache folder (features.extract)")
    p.add_argument("--imagenet-check", action="store_true",
                   help="also score the ImageNet classifier's top-1 against CIFAR-10 class groups")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.train_per_class < 5 or args.test_per_class < 1:
        raise UsageError("--train-per-class must be >= 5 (KNN k = 5) and --test-per-class >= 1")

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from aeclust_jax.cluster import knn_classify
    from aeclust_jax.data import load
    from aeclust_jax.features import extract
    from aeclust_jax.models.efficientnet import efficientnet_lite0_imagenet

    progress = not args.no_progress
    tr = load("image_folder", "train", path=args.path, progress=progress)
    te = load("image_folder", "test", path=args.path, progress=progress)
    itr = balanced_subset(tr.labels, args.train_per_class, args.seed)
    ite = balanced_subset(te.labels, args.test_per_class, args.seed)
    model, variables = efficientnet_lite0_imagenet(num_classes=1000)
    opts = dict(image_size=args.image_size, batch_size=args.batch_size, cache=args.cache,
                progress=progress)
    t0 = time.perf_counter()
    f_tr = extract(model, variables, tr.images[itr], layer="pooled", **opts)
    f_te = extract(model, variables, te.images[ite], layer="pooled", **opts)
    seconds = time.perf_counter() - t0
    y_tr, y_te = tr.labels[itr], te.labels[ite]
    f_tr, f_te = f_tr.reshape(len(itr), -1), f_te.reshape(len(ite), -1)

    scaler = StandardScaler().fit(f_tr)
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(f_tr), y_tr)
    linear = float((clf.predict(scaler.transform(f_te)) == y_te).mean())
    knn = float((np.asarray(knn_classify(f_tr, y_tr, f_te, k=5)) == y_te).mean())
    out = {"model": args.model, "image_size": args.image_size, "train": len(itr), "test": len(ite),
           "feature_dim": int(f_tr.shape[1]), "linear_acc": linear, "knn5_acc": knn,
           "extract_seconds": round(seconds, 1),
           "images_per_second": round((len(itr) + len(ite)) / seconds, 1)}
    if args.imagenet_check:
        logits = extract(model, variables, te.images[ite], **opts)
        out["imagenet_top1_in_class_group"] = in_group(logits.argmax(1), te.class_names, y_te)
    print(f"linear probe {linear:.1%}, KNN-5 {knn:.1%} ({len(itr)} train / {len(ite)} test, "
          f"{out['images_per_second']} img/s)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
