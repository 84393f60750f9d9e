"""S5's reproduction: ``reproduce.py s5`` (settings a, b or the seed's, over seeds), the
per-class table beside the seed's Table 1, the claim, the rate-accuracy tables and figures.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

from aeclust_jax import grid, runs
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import to_dict
from aeclust_jax.errors import UsageError
from aeclust_jax.grid import Task
from aeclust_jax.studies.feature_compression.config import (METHODS, SETTING_TITLE, SETTINGS,
                                                            FeatureCompressionConfig)
from aeclust_jax.studies.feature_compression.recipe import (RESUME_MAY_DIFFER, SEED_COMPRESSION,
                                                            _add_tuple_options, _tuple_overrides,
                                                            aggregate, load_subsets,
                                                            plot_rate_accuracy, run, seed_point)

# ----------------------------------------------------------------------------- reproduce

# The seed's Table 1 (VGG16 on CIFAR-10 at 224 px): per-class accuracy (%) without / with the AE.
SEED_TABLE1 = {
    "airplane": (87, 87), "automobile": (95, 96), "bird": (75, 69), "cat": (60, 55),
    "deer": (78, 75), "dog": (75, 79), "frog": (91, 91), "horse": (87, 82), "ship": (89, 82),
    "truck": (87, 82)}
SEED_MEAN = (82.4, 79.8)
CLAIM_TOLERANCE = 1.0    # points above the seed's 3.16 still read as "~3 points"
CHANCE_MARGIN = 0.05     # a classifier within 5 points of chance cannot test the claim


def reproduce_parser():
    p = make_parser(prog=f"{prog_name('reproduce.py')} s5",
                    description="S5: the seed's per-class table, the compression ratio and the "
                                "rate-accuracy curve with baselines, mean ± std over seeds, for "
                                "setting (a), (b), both, or the seed's own (paper: needs "
                                "--weights VGG16.pth).")
    p.add_argument("--setting", choices=["a", "b", "both", "paper"], default="both")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the AE inits (and of the head)")
    p.add_argument("--path", default="", help="the image archive (default: $AECLUST_MANUAL_DIR/"
                                              "cifar10_jpeg/cifar10-jpeg.zip)")
    p.add_argument("--weights", default=None, help="paper: the torchvision VGG16 .pth "
                                                   "(vgg16-397923af.pth)")
    for name, typ in (("train-per-class", int), ("test-per-class", int),
                      ("classifier-epochs", int), ("ae-epochs", int), ("image-size", int),
                      ("layer", str), ("kernel", int), ("hidden", int), ("ae-batch-size", int),
                      ("classifier-batch-size", int)):
        p.add_argument(f"--{name}", type=typ, default=None, help="override the setting's value")
    _add_tuple_options(p)
    p.add_argument("--out", default="results/s5", help="where results.json/.md and figures go")
    p.add_argument("--runs", default="runs/s5", help="the per-seed run folders and caches")
    p.add_argument("--no-progress", action="store_true")
    grid.add_options(p)
    return p


def setting_configs(a) -> dict[str, FeatureCompressionConfig]:
    """The validated base config (seed 0) of every setting asked."""
    import os
    names = ["a", "b"] if a.setting == "both" else [a.setting]
    path = a.path or str(pathlib.Path(os.environ.get("AECLUST_MANUAL_DIR", "")) / "cifar10_jpeg"
                         / "cifar10-jpeg.zip")
    over = {k.replace("-", "_"): getattr(a, k.replace("-", "_")) for k in (
        "train-per-class", "test-per-class", "classifier-epochs", "ae-epochs", "image-size",
        "layer", "kernel", "hidden", "ae-batch-size", "classifier-batch-size")}
    over = {k: v for k, v in over.items() if v is not None}
    over.update(_tuple_overrides(a))
    out = {}
    for name in names:
        preset = dict(SETTINGS[name], path=path, progress=not a.no_progress)
        if name == "paper":
            if not a.weights:
                raise UsageError("--setting paper needs --weights: the torchvision VGG16 .pth "
                                 "(vgg16-397923af.pth), which cannot be fetched here")
            preset["weights"] = a.weights
        elif a.weights:
            raise UsageError("--weights applies to --setting paper only")
        out[name] = FeatureCompressionConfig(**{**preset, **over}).validate()
    return out


def summarize(name: str, ms: list[dict]) -> dict:
    """One setting's results over its seeds: every point (mean ± std), the seed point's per-class
    table beside the seed's Table 1, and the claim."""
    table = aggregate([m["points"] for m in ms])
    raw = next(p for p in table if p["method"] == "quant" and p["precision"] == "float32")
    sp = seed_point(table)
    drop = 100 * (raw["accuracy"]["mean"] - sp["accuracy"]["mean"])
    holds = sp["value_compression"] >= SEED_COMPRESSION - 1e-9 and drop <= 3.16 + CLAIM_TOLERANCE
    names = ms[0]["class_names"]
    chance = 1 / len(names)
    if raw["accuracy"]["mean"] < chance + CHANCE_MARGIN:      # nothing to lose: no test
        holds = None
    per_class = [{"class": c, "raw": raw["per_class_accuracy"][i], "ae": sp["per_class_accuracy"][i],
                  "seed_raw": SEED_TABLE1.get(c, (None, None))[0],
                  "seed_ae": SEED_TABLE1.get(c, (None, None))[1]} for i, c in enumerate(names)]
    return {
        "setting": name, "title": SETTING_TITLE[name], "description": ms[0]["setting"],
        "seeds": [m["seed"] for m in ms], "feature_shape": ms[0]["feature_shape"],
        "train_images": ms[0]["train_images"], "test_images": ms[0]["test_images"],
        "backbone_metrics": ms[0]["backbone_metrics"],
        "raw_accuracy": raw["accuracy"], "seed_point": {
            "width": sp["param"], "values": sp["values"], "value_compression": sp["value_compression"],
            "accuracy": sp["accuracy"], "drop_points": drop},
        "claim": {"text": "87% smaller feature for ~3 points of accuracy (seed: 87.2%, 82.4% -> "
                          "79.8%)", "holds": None if holds is None else bool(holds),
                  "evidence": ("" if holds is not None else
                               f"not testable: the classifier is at chance level "
                               f"({100 * raw['accuracy']['mean']:.1f}%, chance "
                               f"{100 * chance:.1f}%); ") + f"AE width {sp['param']}: {100 * sp['value_compression']:.1f}% fewer "
                              f"values, accuracy {100 * raw['accuracy']['mean']:.1f}% -> "
                              f"{100 * sp['accuracy']['mean']:.1f}% ({drop:+.1f} points drop; "
                              f"holds when >= 87.2% smaller and drop <= "
                              f"{3.16 + CLAIM_TOLERANCE:.2f} points)"},
        "per_class": per_class, "points": table,
        "ae_train_seconds": ms[0]["ae_train_seconds"], "seconds": ms[0]["seconds"]}


def verdict(holds) -> str:
    return "not testable" if holds is None else ("holds" if holds else "does not hold")


def best_at_budget(table: list[dict]) -> list[dict]:
    """For each AE point: the best baseline with no more bits, to say where the AE wins."""
    rows = []
    for p in sorted((p for p in table if p["method"] == "ae"), key=lambda p: p["bits"]):
        rivals = [q for q in table if q["method"] != "ae" and q["bits"] <= p["bits"]]
        best = max(rivals, key=lambda q: q["accuracy"]["mean"]) if rivals else None
        rows.append({"ae": p, "best_baseline": best})
    return rows


def markdown(res: dict) -> str:
    pc = lambda x: f"{100 * x:.1f}"
    ms = lambda d: f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}"
    sp = res["seed_point"]
    lines = [f"## Setting {res['title']}", "",
             f"{res['description']}; {res['train_images']} train / {res['test_images']} test images "
             f"(seeded class-balanced subsets of the CIFAR-10 JPEG copy), seeds {res['seeds']}. "
             f"Feature map {'x'.join(map(str, res['feature_shape']))}. Not the seed's setting.", ""]
    if res["backbone_metrics"]:
        b = res["backbone_metrics"]
        lines += [f"Backbone trained here: {b.get('epochs')} epochs on {b.get('train_images')} "
                  f"images, {b.get('train_seconds', 0):.0f} s; its own test accuracy "
                  f"{pc(b.get('test_accuracy', float('nan')))}% (on the first images of the test "
                  "split).", ""]
    lines += [f"**Claim** \"{res['claim']['text']}\": **{verdict(res['claim']['holds'])}**"
              f" here. {res['claim']['evidence']}.", "",
              f"Per-class accuracy (%, mean over seeds), AE of width {sp['width']} (float32 code, "
              f"{pc(sp['value_compression'])}% fewer values), beside the seed's Table 1 (VGG16, 224 px):", "",
              "| class | raw map | AE | diff | seed VGG16 | seed + AE | seed diff |",
              "|---|---|---|---|---|---|---|"]
    for r in res["per_class"]:
        sr, sa = r["seed_raw"], r["seed_ae"]
        seed = f"{sr} | {sa} | {sa - sr:+d}" if sr is not None else "- | - | -"
        lines.append(f"| {r['class']} | {pc(r['raw'])} | {pc(r['ae'])} | "
                     f"{100 * (r['ae'] - r['raw']):+.1f} | {seed} |")
    lines.append(f"| **mean** | {ms(res['raw_accuracy'])} | {ms(sp['accuracy'])} | "
                 f"{-sp['drop_points']:+.1f} | {SEED_MEAN[0]} | {SEED_MEAN[1]} | -2.6 (seed: -3.16) |")
    lines += ["", "Rate-accuracy points (accuracy %, mean ± std over seeds; bits per image "
              "include the 64-bit scale of int8/int4; compression vs the float32 map):", "",
              "| method | size | precision | values | bits/image | bit compression | accuracy | rel. MSE |",
              "|---|---|---|---|---|---|---|---|"]
    for p in sorted(res["points"], key=lambda p: (METHODS.index(p["method"]), -p["bits"])):
        lines.append(f"| {p['method']} | {p['param']} | {p['precision']} | {p['values']} | "
                     f"{p['bits']} | {pc(p['bit_compression'])}% | {ms(p['accuracy'])} | "
                     f"{p['relative_mse']:.3f} |")
    lines += ["", "Where the AE wins: each AE point against the best baseline with no more bits:",
              "", "| AE (width, precision) | bits | AE accuracy | best baseline at <= bits | its bits | its accuracy | AE wins |",
              "|---|---|---|---|---|---|---|"]
    for r in best_at_budget(res["points"]):
        a, b = r["ae"], r["best_baseline"]
        if b is None:
            lines.append(f"| {a['param']}, {a['precision']} | {a['bits']} | {ms(a['accuracy'])} | "
                         "none this small | - | - | yes (no rival) |")
            continue
        win = a["accuracy"]["mean"] > b["accuracy"]["mean"]
        lines.append(f"| {a['param']}, {a['precision']} | {a['bits']} | {ms(a['accuracy'])} | "
                     f"{b['method']} {b['param']}, {b['precision']} | {b['bits']} | "
                     f"{ms(b['accuracy'])} | {'yes' if win else 'no'} |")
    return "\n".join(lines) + "\n"


def write_results(out: pathlib.Path, results: dict[str, dict]) -> None:
    """results.json, results.md and the figures; settings of an earlier invocation that this one
    did not run are kept (``--setting a`` then ``--setting b`` fill one results folder)."""
    previous = out / "results.json"
    if previous.is_file():
        results = {**runs.read_json(previous).get("settings", {}), **results}
        results = {k: results[k] for k in sorted(results)}
    runs.write_json(out / "results.json", {"scale": runs.SCALE, "settings": results})
    parts = ["# S5: feature compression with an autoencoder (this reproduction)", "",
             "Neither setting below is the seed's (VGG16 fine-tuned from torchvision's ImageNet "
             "weights at 224 px on CIFAR-10, which cannot be run here); see docs/s5.md.", ""]
    for name, res in results.items():
        parts.append(markdown(res))
        plot_rate_accuracy(res["points"], out / "figures" / f"rate_accuracy_{name}.png",
                           title=f"S5 {res['title']}")
    runs.atomic_write_text(out / "results.md", "\n".join(parts))


def _run_setting(base: FeatureCompressionConfig, work: pathlib.Path, seeds: int) -> list[dict]:
    """Seeds 0..seeds-1 of one setting under ``work`` (a grid task), finished runs reused;
    returns their metrics."""
    ms = []
    for seed in range(seeds):
        cfg = dataclasses.replace(base, seed=seed, feature_cache=str(work / "features"))
        run_dir = work / f"seed{seed}"
        m = runs.finished_run(run_dir, to_dict(cfg), may_differ=RESUME_MAY_DIFFER)
        if m is None:
            resume = run_dir.is_dir() and (run_dir / "config.yaml").is_file()
            if run_dir.is_dir() and not resume:
                import shutil
                shutil.rmtree(run_dir)
            print(f"[s5] setting {work.name} seed {seed}", flush=True)
            m = run(cfg, run_dir, resume=resume)
        sp = m["seed_point"]
        print(f"[s5] setting {work.name} seed {seed}: raw {m['raw_accuracy']:.4f}, AE "
              f"w{sp['param']} {sp['accuracy']:.4f}", flush=True)
        ms.append(m)
    return ms


def reproduce_main(argv: Sequence[str]) -> int:
    a = reproduce_parser().parse_args(list(argv))
    if a.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
    grid.check_options(a)
    configs = setting_configs(a)
    work, out = pathlib.Path(a.runs), pathlib.Path(a.out)
    for name, base in configs.items():               # every setting's data before any writing
        load_subsets(dataclasses.replace(base, progress=False))
    runs.make_dir(out)
    # a setting is one task: its seeds share the trained classifier and the feature cache
    settings = grid.shard(list(configs), a.shard)
    in_process = grid.runs_here(a.workers, len(settings))
    results = {}

    def gather(i: int, ms: list[dict]) -> None:       # the tables so far, as settings finish
        results[settings[i]] = summarize(settings[i], ms)
        write_results(out, dict(sorted(results.items())))

    tasks = [Task(f"setting {name}", _run_setting,
                  (dataclasses.replace(configs[name], progress=configs[name].progress
                                       and in_process), work / name, a.seeds))
             for name in settings]
    grid.run_tasks(tasks, a.workers, log=print, on_result=None if a.shard else gather)
    if a.shard is not None:
        grid.say_shard_done(a.shard)
        return 0
    for _, res in sorted(results.items()):
        print(f"[s5] {res['title']}: claim {verdict(res['claim']['holds'])}"
              f": {res['claim']['evidence']}")
    print(f"wrote {out}")
    return 0
