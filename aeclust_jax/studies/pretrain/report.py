"""S3's reproduction: ``reproduce.py s3`` (the six experiments and the labels-fraction sweep
over seeds), the tables beside the seed's numbers, the claims and the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax import grid, runs
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import load_config, to_dict
from aeclust_jax.errors import UsageError
from aeclust_jax.grid import Task
from aeclust_jax.studies.pretrain.config import DEFAULT_CONFIG, EXPERIMENTS, Experiment, S3Config, SWEEP_FRACTIONS, SWEEP_METHODS, VARIANTS
from aeclust_jax.studies.pretrain.recipe import _d, build_model, check_data, encode, limit, load_splits, run

# ----------------------------------------------------------------------------- reproduce

SWEEP_NAMES = {"mlp": "MLP (no pretraining)", "ae_frozen": "pretrained encoder, frozen",
               "ae_finetune": "pretrained encoder, fine-tuned (fresh Adam)",
               "ae_finetune_carried": "pretrained encoder, fine-tuned (Adam state carried, the seed's)"}
TSNE_PANELS = (  # figure panel: (title, experiment whose run provides the codes, which params)
    ("AE code 10, pretrained (exp. 3/4)", EXPERIMENTS[2], "pretrained"),
    ("AE code 10, fine-tuned on 1%, fresh Adam (exp. 3′)", VARIANTS[0], "final"),
    ("AE 64-10, pretrained (exp. 5)", EXPERIMENTS[4], "pretrained"),
)


def job_name(cfg: S3Config) -> str:
    """A file-name-safe id of a run config within a reproduction (model, widths, freeze, labels, seed)."""
    parts = [cfg.model]
    if cfg.model == "mlp_ae":
        parts.append("enc" + "x".join(map(str, cfg.encoder_widths)))
        parts.append("frozen" if cfg.freeze_encoder else
                     "finetune-" + ("carried" if cfg.carry_adam_state else "fresh"))
    parts += [f"lf{cfg.labels_fraction:g}", f"seed{cfg.seed}"]
    return "-".join(parts)


def planned_jobs(base: S3Config, seeds: Sequence[int], experiments: Sequence[Experiment],
                 fractions: Sequence[float]) -> dict[str, S3Config]:
    """job name -> config of every run the reproduction needs: ``experiments`` (and the
    VARIANTS of the listed ones), the sweep; deduplicated, e.g. the sweep's 1% points are
    experiments 2, 3, 4 and its MLP at 100% is experiment 1."""
    return _planned(base, seeds, list(experiments) + variants_of(experiments), fractions)


def variants_of(experiments: Sequence[Experiment]) -> list[Experiment]:
    numbers = {e.number for e in experiments}
    return [v for v in VARIANTS if v.number in numbers]


def _planned(base: S3Config, seeds: Sequence[int], experiments: Sequence[Experiment],
             fractions: Sequence[float]) -> dict[str, S3Config]:
    jobs: dict[str, S3Config] = {}
    for seed in seeds:
        cfgs = [e.config(base) for e in experiments]
        cfgs += [dataclasses.replace(base, labels_fraction=f, **m)
                 for m in SWEEP_METHODS.values() for f in fractions]
        for cfg in cfgs:
            cfg = dataclasses.replace(cfg, seed=seed)
            jobs.setdefault(job_name(cfg), cfg)
    return jobs


def _pretrain_id(cfg: S3Config):
    """Runs with the same id share one pretrained autoencoder."""
    return (cfg.encoder_widths, cfg.code_activation, cfg.seed, cfg.ae_epochs, cfg.train_limit)


def run_jobs(jobs: dict[str, S3Config], train_ds, test_ds, runs_dir: pathlib.Path, *,
             tsne_samples: int, code_jobs: Sequence[str], progress: bool, workers: int = 1,
             shard: str | None = None) -> None:
    """Runs every job whose ``runs_dir/<name>.json`` is missing. Jobs that share a pretrained
    autoencoder (same encoder and seed) form one task and share it; the tasks run ``workers`` at a
    time (``aeclust_jax.grid``: a process each, the data loaded once per worker); ``shard`` "I/N"
    keeps the I-th of N shares of the tasks. For the jobs in
    ``code_jobs`` also saves the codes of the first ``tsne_samples`` test images
    (``<name>.codes.npz``: pretrained, final) for the t-SNE figure."""
    groups: dict[Any, list[str]] = {}
    for name, cfg in jobs.items():
        key = (cfg.seed, _pretrain_id(cfg)) if cfg.model == "mlp_ae" else name
        groups.setdefault(key, []).append(name)
    todo = [[n for n in names if not (runs_dir / f"{n}.json").is_file()]
            for names in grid.shard(list(groups.values()), shard)]
    data = (train_ds, test_ds) if workers == 1 else None   # workers load their own copy
    tasks = [Task(names[0] + (f" (+{len(names) - 1} sharing its autoencoder)" if len(names) > 1 else ""),
                  _run_group, ({n: jobs[n] for n in names}, data, runs_dir, tsne_samples,
                               tuple(code_jobs)))
             for names in todo if names]
    log = print if progress or workers > 1 else (lambda _: None)
    grid.run_tasks(tasks, workers, log=log)


_worker_splits: dict[str, tuple] = {}   # dataset -> (train, test), loaded once per worker process


def _run_group(group: dict[str, S3Config], data, runs_dir: pathlib.Path, tsne_samples: int,
               code_jobs: Sequence[str]) -> None:
    """Runs ``group`` (jobs that share one pretrained autoencoder) one after another; writes
    ``runs_dir/<name>.json`` per job. ``data``: (train, test), or None to load them here."""
    first = next(iter(group.values()))
    if data is None:
        if first.dataset not in _worker_splits:
            _worker_splits[first.dataset] = load_splits(first)
        data = _worker_splits[first.dataset]
    train_ds, test_ds = data
    pretrained = None
    for name, cfg in group.items():
        t0 = time.perf_counter()
        result = run(cfg, train_ds, test_ds, pretrained=pretrained)
        if cfg.model == "mlp_ae":
            pretrained = result.pretrained
            if name in code_jobs:
                x = limit(test_ds.images, test_ds.labels, cfg.test_limit)[0][:tsne_samples]
                model = build_model(cfg, x.shape[1:], int(test_ds.num_classes))
                np.savez(runs_dir / f"{name}.codes.npz",
                         pretrained=encode(model, result.pretrained["params"], x, cfg.pixel_max),
                         final=encode(model, result.params, x, cfg.pixel_max))
        record = {"name": name, "scale": runs.SCALE, "config": to_dict(cfg), "metrics": result.metrics,
                  "seconds": time.perf_counter() - t0,
                  "history": result.history}
        runs.write_json(runs_dir / f"{name}.json", record)


def summarize(jobs: dict[str, S3Config], runs_dir: pathlib.Path, base: S3Config,
              seeds: Sequence[int], experiments: Sequence[Experiment],
              fractions: Sequence[float]) -> tuple[list[dict], list[dict], list[dict]]:
    """(results: one object per experiment, variants: one per VARIANTS row, sweep: one per
    (method, fraction)), each mean +- std over seeds."""
    def collect(cfgs: list[S3Config]) -> dict[str, Any]:
        recs = [runs.read_json(runs_dir / f"{job_name(c)}.json")["metrics"] for c in cfgs]
        out = {"scale": runs.SCALE, "seeds": [c.seed for c in cfgs], "labels_used": recs[0]["labels_used"]}
        for key in ("accuracy", "psnr", "nmi", "pretrained_psnr", "pretrained_nmi", "pretrained_ae_mse"):
            if key in recs[0]:
                vals = [r[key] for r in recs]
                ms = runs.mean_std(vals)
                values = "accuracies" if key == "accuracy" else f"{key}_values"
                out.update({f"{key}_mean": ms["mean"], f"{key}_std": ms["std"], values: vals})
        return out

    def rows(exps):
        out = []
        for e in exps:
            cfgs = [dataclasses.replace(e.config(base), seed=s) for s in seeds]
            row = {"experiment": e.number, "name": e.name, "description": e.description,
                   "seed_accuracy": e.seed_accuracy, **collect(cfgs)}
            row["difference"] = row["accuracy_mean"] - e.seed_accuracy
            out.append(row)
        return out

    results, variants = rows(experiments), rows(variants_of(experiments))
    sweep = []
    for method, over in SWEEP_METHODS.items():
        for f in fractions:
            cfgs = [dataclasses.replace(base, labels_fraction=f, seed=s, **over) for s in seeds]
            sweep.append({"method": method, "labels_fraction": f, **collect(cfgs)})
    return results, variants, sweep


def results_markdown(results: list[dict], variants: list[dict], sweep: list[dict], n_seeds: int,
                     n_test: int) -> str:
    """The experiments table next to the seed's numbers, the variants, the sweep (markdown)."""
    lines = [f"Test accuracy on MNIST ({n_test} test images), mean ± std over {n_seeds} seed(s); "
             "accuracy and NMI on the 0-1 scale.", "",
             "| # | experiment | labels | seed's accuracy (0-1) | ours (0-1) | ours − seed's | AE PSNR (dB) "
             "| NMI of code (0-1) |",
             "|---|---|---|---|---|---|---|---|"]
    for r, mark in [(r, "") for r in results] + [(v, "′") for v in variants]:
        psnr = f"{r['pretrained_psnr_mean']:.2f}" if "pretrained_psnr_mean" in r else "–"
        nmi = f"{r['pretrained_nmi_mean']:.3f}" if "pretrained_nmi_mean" in r else "–"
        lines.append(f"| {r['experiment']}{mark} | {r['description']} | {r['labels_used']} | "
                     f"{r['seed_accuracy']:.3f} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | "
                     f"{r['difference']:+.3f} | {psnr} | {nmi} |")
    lines += ["", "AE PSNR and NMI: the pretrained autoencoder (before supervised training); NMI of "
              "K-means (k=10) on the codes of the test images. Rows marked ′ are not in the seed: "
              "the same experiment with a fresh Adam state for supervised training."]
    if not sweep:
        return "\n".join(lines) + "\n"
    lines += ["", "Labels-fraction sweep (test accuracy on the 0-1 scale, mean ± std):", "",
              "| labels | " + " | ".join(SWEEP_NAMES[m] for m in SWEEP_METHODS) + " |",
              "|---|" + "---|" * len(SWEEP_METHODS)]
    fractions = list(dict.fromkeys(s["labels_fraction"] for s in sweep))
    for f in fractions:
        cells = {s["method"]: s for s in sweep if s["labels_fraction"] == f}
        first = next(iter(cells.values()))
        lines.append(f"| {f:g} ({first['labels_used']}) | " + " | ".join(
            f"{cells[m]['accuracy_mean']:.3f} ± {cells[m]['accuracy_std']:.3f}" for m in SWEEP_METHODS) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(sweep: list[dict], path) -> pathlib.Path:
    """Test accuracy vs number of labels (log x), one line with std error bars per method."""
    from aeclust_jax import viz
    fig, ax = viz.figure(figsize=(5, 3.6))
    for m in SWEEP_METHODS:
        pts = sorted((s["labels_used"], s["accuracy_mean"], s["accuracy_std"])
                     for s in sweep if s["method"] == m)
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=SWEEP_NAMES[m])
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy (0-1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("S3: accuracy vs labels (MNIST)", fontsize=10)
    return viz.save(fig, path)


def plot_codes(runs_dir: pathlib.Path, base: S3Config, code_seed: int, labels: np.ndarray,
               path, experiments: Sequence[Experiment],
               class_names: Sequence[str] | None = None) -> pathlib.Path | None:
    """t-SNE of the AE codes (first test images) coloured by label, one panel per TSNE_PANELS;
    each panel's title gives NMI / ACC of K-means (k = classes, 10 restarts) on its embedding."""
    from aeclust_jax import viz
    from aeclust_jax.cluster import kmeans, tsne
    from aeclust_jax.metrics import acc, nmi
    wanted = list(experiments) + variants_of(experiments)
    panels = []
    for title, exp, which in TSNE_PANELS:
        if exp not in wanted:
            continue
        f = runs_dir / f"{job_name(dataclasses.replace(exp.config(base), seed=code_seed))}.codes.npz"
        if f.is_file():
            with np.load(f) as z:
                panels.append((title, z[which]))
    if not panels:
        return None
    k = int(labels.max()) + 1
    shown = {}
    for title, codes in panels:
        emb = tsne(np.asarray(codes, np.float32), 2, perplexity=min(30.0, (len(codes) - 1) / 3),
                   seed=code_seed)
        y = labels[:len(codes)]
        pred = np.asarray(kmeans(jnp.asarray(emb, jnp.float32), k, key=jax.random.key(code_seed),
                                 n_init=10).labels)
        shown[title] = (emb, y, {"NMI": float(nmi(y, pred)), "ACC": float(acc(y, pred))})
    return viz.tsne_panels(shown, path, class_names=class_names,
                           title=f"t-SNE of autoencoder codes, {len(panels[0][1])} test images "
                                 "(NMI/ACC of K-means on each embedding)")


def reproduce_parser() -> argparse.ArgumentParser:
    """The options of ``reproduce.py s3``."""
    p = make_parser(
        prog=prog_name("reproduce.py") + " s3", description="S3: the seed's six experiments and the "
        "labels-fraction sweep, mean +- std over seeds.\nRuns already in OUT/runs are reused (resumable).")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--epochs", type=int, help=f"autoencoder and supervised epochs {_d('epochs')}")
    p.add_argument("--out", default="results/s3", help="folder of the tables, figures and runs/")
    p.add_argument("--config", help=f"base YAML config (default: {DEFAULT_CONFIG.name} when present)")
    p.add_argument("--experiments", type=int, nargs="+", choices=[e.number for e in EXPERIMENTS],
                   help="subset of the experiments 1..6 (default all)")
    p.add_argument("--fractions", type=float, nargs="*", default=list(SWEEP_FRACTIONS),
                   help="labels fractions of the sweep (default 0.001 0.01 0.1 1; none = no sweep)")
    p.add_argument("--tsne-samples", type=int, default=2000, help="test images in the t-SNE figure")
    p.add_argument("--train-limit", type=int, help="use the first N training images (quick runs; 0, the default: all)")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test images (0, the default: all)")
    grid.add_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def reproduce_main(argv: Sequence[str]) -> int:
    args = reproduce_parser().parse_args(list(argv))
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    grid.check_options(args)
    if any(not 0 < f <= 1 for f in args.fractions):
        raise UsageError(f"--fractions must lie in (0, 1], got {args.fractions}")
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    over = {"ae_epochs": args.epochs, "epochs": args.epochs, "train_limit": args.train_limit,
            "test_limit": args.test_limit}
    base = load_config(S3Config, path, over)
    seeds = list(range(args.seeds))
    experiments = [e for e in EXPERIMENTS if args.experiments is None or e.number in args.experiments]
    fractions = sorted(set(args.fractions))
    out = pathlib.Path(args.out)
    runs_dir = out / "runs"
    manifest = {"base_config": to_dict(base), "seeds": seeds,
                "experiments": [e.number for e in experiments], "fractions": fractions}
    old = out / "reproduce.json"
    if old.is_file() and runs.read_json(old)["base_config"] != manifest["base_config"]:
        raise runs.RunExistsError(f"{out} holds a reproduction with another base config "
                                  f"(see {old}); choose another --out")
    jobs = planned_jobs(base, seeds, experiments, fractions)
    train_ds, test_ds = load_splits(base, progress=not args.no_progress)
    for cfg in jobs.values():      # every job's config fits the data before anything is written
        check_data(cfg, train_ds, test_ds)
    runs.make_dir(runs_dir)
    runs.write_json(old, manifest)
    code_jobs = [job_name(dataclasses.replace(e.config(base), seed=seeds[0])) for _, e, _ in TSNE_PANELS]
    run_jobs(jobs, train_ds, test_ds, runs_dir, tsne_samples=args.tsne_samples, code_jobs=code_jobs,
             progress=not args.no_progress, workers=args.workers, shard=args.shard)
    if args.shard is not None:
        grid.say_shard_done(args.shard, "the tables")
        return 0
    results, variants, sweep = summarize(jobs, runs_dir, base, seeds, experiments, fractions)
    runs.write_json(out / "results.json", results)
    runs.write_json(out / "variants.json", variants)
    runs.write_json(out / "sweep.json", sweep)
    test_labels = limit(test_ds.images, test_ds.labels, base.test_limit)[1]
    table = results_markdown(results, variants, sweep, len(seeds), len(test_labels))
    runs.atomic_write_text(out / "results.md", table)

    from aeclust_jax import viz
    viz.grouped_bars({f"{r['experiment']}": {"seed's report": (r["seed_accuracy"], 0.0),
                                              "ours": (r["accuracy_mean"], r["accuracy_std"])}
                      for r in results}, out / "accuracy.png", ylabel="test accuracy",
                     title=f"S3 experiments 1-6 (MNIST), ours over {len(seeds)} seed(s)")
    if sweep:
        plot_sweep(sweep, out / "sweep.png")
    plot_codes(runs_dir, base, seeds[0], test_labels, out / "tsne_codes.png", experiments,
               class_names=test_ds.class_names)
    print(table)
    print(f"wrote {out}")
    return 0
