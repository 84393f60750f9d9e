"""S1's reproduction: ``reproduce.py s1`` (models x datasets x seeds, parallel workers), the
mean +- std table, the claims checked against the paper's, and the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from typing import Sequence

import jax
import numpy as np

from aeclust_jax import grid, runs, train
from aeclust_jax.grid import Task
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import ConfigError, load_config, parse_key_values, to_dict
from aeclust_jax.errors import UsageError
from aeclust_jax.studies.skip_ae.config import CONFIG_DIR, DATASETS, MODELS, S1Config
from aeclust_jax.studies.skip_ae.recipe import RESUME_MAY_DIFFER, plot_feature_maps, run

# ----------------------------------------------------------------------------- reproduce

TABLE_METRICS = ("psnr", "nmi", "nmi_latent", "nmi_latent_skip", "acc", "ari", "images_per_second")
TRAINED_LS = "+ls_trained"   # suffix of the runs whose latent+skip projections are trained


def reproduce_parser() -> argparse.ArgumentParser:
    """The options of ``reproduce.py s1``."""
    p = make_parser(prog=prog_name("reproduce.py") + " s1",
                    description="S1: 4 models x datasets x seeds -> results table + figures. Options "
                                "left out take the value of configs/s1_<dataset>.yaml, else S1Config's.")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist", "hanja_synth"])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--epochs", type=int, help="override the configs' epochs")
    p.add_argument("--batch-size", type=int, help="override the configs' batch size")
    p.add_argument("--optimizer", help=f"override the configs' optimizer: {', '.join(train.OPTIMIZERS)}")
    p.add_argument("--lr", type=float, help="override the configs' learning rate")
    p.add_argument("--train-limit", type=int, help="first N training images per dataset (default: all)")
    p.add_argument("--test-limit", type=int, help="first N test images per dataset (default: all)")
    p.add_argument("--cluster-limit", type=int, help=f"test images clustered (default: {S1Config.cluster_limit})")
    p.add_argument("--eval-every", type=int, default=None,
                   help="PSNR/NMI every N epochs for cae (Fig. 4); default epochs // 5, 0 = off")
    p.add_argument("--trained-latent-skip", action="store_true",
                   help="also train the skip models with latent_skip=trained (extension)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="DATASET:KEY=VALUE",
                   help="a dataset builder option, e.g. hanja_synth:train_per_class=500")
    p.add_argument("--runs", help="folder of the individual runs (default runs/s1)")
    p.add_argument("--out", default="results/s1")
    p.add_argument("--scan-epoch", action="store_true",
                   help="run each epoch as one lax.scan (same numbers; much faster on a GPU)")
    p.add_argument("--tsne-backend", help="auto (default) | opentsne | tsnecuda | jax")
    grid.add_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    p.add_argument("--summary-only", action="store_true",
                   help="train nothing: table + figures from the runs already complete")
    return p


def _dataset_options(items: Sequence[str]) -> dict[str, dict]:
    opts: dict[str, dict] = {}
    for item in items:
        if ":" not in item:
            raise UsageError(f"--dataset-option expects DATASET:KEY=VALUE, got {item!r}")
        ds, kv = item.split(":", 1)
        opts.setdefault(ds, {}).update(parse_key_values([kv], "--dataset-option", UsageError))
    return opts


def reproduce_main(argv: Sequence[str]) -> int:
    a = reproduce_parser().parse_args(list(argv))
    for d in a.datasets:
        if d not in DATASETS:
            raise UsageError(f"unknown dataset {d!r}; choices: {', '.join(DATASETS)}")
    for m in a.models:
        if m not in MODELS:
            raise UsageError(f"unknown model {m!r}; choices: {', '.join(MODELS)}")
    if a.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
    grid.check_options(a)
    ds_opts = _dataset_options(a.dataset_option)
    runs_dir = pathlib.Path(a.runs or "runs/s1")
    out = pathlib.Path(a.out)
    jobs = []
    for ds in a.datasets:
        path = CONFIG_DIR / f"s1_{ds}.yaml"
        for model in a.models:
            variants = [("", "random")]
            if a.trained_latent_skip and model.endswith("_skip"):
                variants.append((TRAINED_LS, "trained"))
            for suffix, ls in variants:
                for seed in range(a.seeds):
                    over = {"model": model, "dataset": ds, "seed": seed, "epochs": a.epochs,
                            "batch_size": a.batch_size, "train_limit": a.train_limit,
                            "optimizer": a.optimizer, "lr": a.lr,
                            "test_limit": a.test_limit, "cluster_limit": a.cluster_limit, "latent_skip": ls,
                            "dataset_options": ds_opts.get(ds) or None,
                            "scan_epoch": True if a.scan_epoch else None,
                            "tsne_backend": a.tsne_backend,
                            "progress": not (a.no_progress or a.workers > 1)}
                    cfg = load_config(S1Config, path if path.is_file() else None, over)
                    every = a.eval_every if a.eval_every is not None else max(1, cfg.epochs // 5)
                    if model == "cae" and seed == 0 and every:
                        cfg = dataclasses.replace(cfg, eval_every=every)
                    jobs.append((cfg.validate(), runs_dir / f"{ds}-{model}{suffix}-{seed}", model + suffix))
    print(f"S1: {len(jobs)} runs into {runs_dir}")
    done = {run_dir for cfg, run_dir, _ in jobs if _finished(cfg, run_dir)}
    todo = []
    for cfg, run_dir, _ in [] if a.summary_only else grid.shard(jobs, a.shard):
        if run_dir in done:
            print(f"{run_dir}: complete, skipped")
        else:
            todo.append((cfg, run_dir))
    grid.run_tasks([Task(str(run_dir), _run_job, (cfg, run_dir)) for cfg, run_dir in todo],
                   a.workers)
    if a.shard is not None:
        grid.say_shard_done(a.shard)
        return 0
    summary = summarize(jobs, out)
    print((out / "results.md").read_text())
    return 0 if summary else 1


def _finished(cfg: S1Config, run_dir: pathlib.Path) -> bool:
    """Whether ``run_dir`` holds this job, finished. A finished run made with other settings is
    refused (ConfigError), and so is one trained for more epochs; one trained for fewer is not
    finished (resuming it continues the training)."""
    m = runs.finished_run(run_dir, to_dict(cfg), may_differ=RESUME_MAY_DIFFER)
    if m is not None and m["epochs"] > cfg.epochs:
        raise ConfigError(f"{run_dir} holds a finished run of {m['epochs']} epochs, more than the "
                          f"{cfg.epochs} asked; choose another --runs folder (or --epochs {m['epochs']})")
    return m is not None and m["epochs"] == cfg.epochs


def _run_job(cfg: S1Config, run_dir: pathlib.Path) -> str:
    """One reproduction run (resumed when its folder holds an unfinished one)."""
    run(cfg, run_dir, resume=run_dir.is_dir() and any(run_dir.iterdir()))
    return str(run_dir)


def summarize(jobs, out: pathlib.Path) -> dict:
    """results.json + results.md + figures from the complete runs of ``jobs``."""
    groups: dict[tuple[str, str], list] = {}
    for cfg, run_dir, name in jobs:
        groups.setdefault((cfg.dataset, name), []).append((cfg, run_dir))
    rows = []
    for (ds, name), items in groups.items():
        per_seed = [dict(runs.read_json(d / "metrics.json"), run=str(d)) for _, d in items
                    if runs.is_complete(d)]
        if not per_seed:
            continue
        row = {"dataset": ds, "model": name, "n_seeds": len(per_seed),
               "epochs": per_seed[0]["epochs"], "per_seed": per_seed}
        for k in TABLE_METRICS:
            vals = [m[k] for m in per_seed if m.get(k) is not None]
            if vals:
                row[k] = runs.mean_std(vals)
        rows.append(row)
    first = jobs[0][0]
    settings = {"datasets": sorted({c.dataset for c, _, _ in jobs}), "seeds": len({c.seed for c, _, _ in jobs}),
                "epochs": sorted({c.epochs for c, _, _ in jobs}), "batch_size": sorted({c.batch_size for c, _, _ in jobs}),
                "train_limit": first.train_limit, "test_limit": first.test_limit, "cluster_limit": first.cluster_limit,
                "optimizer": first.optimizer, "lr": first.lr, "devices": jax.device_count(), "platform": jax.devices()[0].platform,
                "machine": _machine()}
    claims = check_claims(rows)
    result = {"scale": runs.SCALE, "settings": settings, "results": rows, "claims": claims}
    runs.make_dir(out)
    runs.write_json(out / "results.json", result)
    runs.atomic_write_text(out / "results.md", markdown_table(rows, settings, claims))
    reproduce_figures(groups, rows, out / "figures")
    return result


def _machine() -> str:
    """'x86_64, 2 cores', with the accelerator's name first when JAX runs on one."""
    import platform
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    dev = jax.devices()[0]
    return host if dev.platform == "cpu" else f"{dev.device_kind} ({dev.platform}), host {host}"


def _ms(row, k, scale=1.0, fmt="{:.2f}"):
    if k not in row:
        return "-"
    return f"{fmt.format(row[k]['mean'] * scale)} ± {fmt.format(row[k]['std'] * scale)}"


def markdown_table(rows, settings, claims) -> str:
    lines = [f"S1 results: {settings['seeds']} seed(s), epochs {settings['epochs']}, batch "
             f"{settings['batch_size']}, {settings['optimizer']} (lr {settings['lr'] or 'default'}), train_limit {settings['train_limit'] or 'all'}, "
             f"{settings['cluster_limit']} test images clustered, {settings['platform']} ({settings['machine']}).",
             "NMI/ACC/ARI on the 0-100 scale (results.json: 0-1); mean ± std over seeds.", "",
             "| dataset | model | seeds | PSNR (dB) | NMI t-SNE (0-100) | NMI latent (0-100) | "
             "NMI latent+skip t-SNE (0-100) | ACC t-SNE (0-100) | ARI t-SNE (0-100) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['n_seeds']} | {_ms(r, 'psnr')} | {_ms(r, 'nmi', 100, '{:.1f}')} | "
                     f"{_ms(r, 'nmi_latent', 100, '{:.1f}')} | {_ms(r, 'nmi_latent_skip', 100, '{:.1f}')} | "
                     f"{_ms(r, 'acc', 100, '{:.1f}')} | {_ms(r, 'ari', 100, '{:.1f}')} |")
    lines += ["", "Paper's claims, checked on these runs (skip model minus its plain twin, mean over seeds):", ""]
    for c in claims:
        lines.append(f"- {c['dataset']} {c['pair']}: PSNR {c['psnr_gain_db']:+.2f} dB, NMI "
                     f"{100 * c['nmi_change']:+.1f}, latent+skip recovers {100 * c['latent_skip_recovery']:+.1f} "
                     f"NMI points -> PSNR +5 dB: {'yes' if c['psnr_claim'] else 'no'}; NMI lower: "
                     f"{'yes' if c['nmi_claim'] else 'no'}; latent+skip recovers part: "
                     f"{'yes' if c['recovery_claim'] else 'no'}")
    return "\n".join(lines) + "\n"


def check_claims(rows) -> list[dict]:
    """Per dataset and (plain, skip) pair: PSNR gain, NMI change, NMI recovered by latent+skip.

    Only the paper's pairs (``cae_skip`` vs ``cae``, ``dae_skip`` vs ``dae``); the extension's
    ``*+ls_trained`` rows have no plain twin and are reported in the table only."""
    by = {(r["dataset"], r["model"]): r for r in rows}
    out = []
    for (ds, model), r in by.items():
        if not model.endswith("_skip"):
            continue
        plain = by.get((ds, model.replace("_skip", "")))
        if plain is None or "psnr" not in r or "nmi" not in r:
            continue
        gain = r["psnr"]["mean"] - plain["psnr"]["mean"]
        change = r["nmi"]["mean"] - plain["nmi"]["mean"]
        rec = r["nmi_latent_skip"]["mean"] - r["nmi"]["mean"]
        out.append({"dataset": ds, "pair": f"{model} vs {plain['model']}", "psnr_gain_db": gain,
                    "nmi_change": change, "latent_skip_recovery": rec,
                    "psnr_claim": bool(gain >= 5.0), "nmi_claim": bool(change < 0),
                    "recovery_claim": bool(change < 0 and rec > 0)})
    return out


def reproduce_figures(groups, rows, fig: pathlib.Path) -> None:
    """Fig. 4, 6, 7, 8, 9, 11 and Table 3 of the paper from the runs' files."""
    from aeclust_jax import viz
    fig.mkdir(parents=True, exist_ok=True)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    pick = lambda r, k: (r[k]["mean"], r[k]["std"]) if k in r else (np.nan, 0.0)
    bars = lambda k, s=1.0: {ds: {r["model"]: tuple(v * s for v in pick(r, k)) for r in rows
                                  if r["dataset"] == ds} for ds in datasets}
    viz.grouped_bars(bars("psnr"), fig / "fig6_psnr.png", ylabel="PSNR (dB)", title="Fig. 6: PSNR")
    viz.grouped_bars(bars("nmi", 100), fig / "fig7_nmi.png", ylabel="NMI, 0-100 (t-SNE + K-means)",
                     title="Fig. 7: NMI")
    fig11 = {}
    for r in rows:
        fig11[f"{r['dataset']}\n{r['model']}"] = {"latent": tuple(100 * v for v in pick(r, "nmi")),
                                                  "latent+skip": tuple(100 * v for v in pick(r, "nmi_latent_skip"))}
    viz.grouped_bars(fig11, fig / "fig11_latent_skip.png", ylabel="NMI, 0-100",
                     title="Fig. 11: latent vs latent+skip")
    for ds in datasets:
        first = {name: items[0][1] for (d, name), items in groups.items()
                 if d == ds and runs.is_complete(items[0][1])}
        evals = {name: np.load(d / "eval.npz") for name, d in first.items() if (d / "eval.npz").is_file()}
        if not evals:
            continue
        panels = {}
        for name, e in evals.items():
            m = runs.read_json(first[name] / "metrics.json")
            panels[name] = (e["tsne"], e["labels"], {"NMI": m.get("nmi"), "ACC": m.get("acc")})
        e0 = next(iter(evals.values()))
        names = [str(c) for c in e0["class_names"]] if "class_names" in e0.files else None
        viz.tsne_panels(panels, fig / f"fig8_tsne_{ds}.png", class_names=names,
                        title=f"Fig. 8: t-SNE of the latent, {ds}, seed 0 "
                              f"({len(e0['labels'])} test images; NMI/ACC of K-means on it)")
        skip_names = [n for n in evals if n.endswith("_skip")]
        if skip_names:
            plot_feature_maps(evals[skip_names[0]], skip_names[0], fig / f"fig9_feature_maps_{ds}.png",
                              title=f"Fig. 9: {skip_names[0]} on {ds}")
        rows_img = [next(iter(evals.values()))["clean"]] + [e["recon"] for e in evals.values()]
        viz.reconstruction_grid(rows_img, fig / f"table3_recon_{ds}.png",
                                row_names=["input"] + list(evals), title=f"Table 3: reconstructions, {ds}")
        cae = first.get("cae")
        hist = [] if cae is None else [r for r in map(__import__("json").loads,
                                                      (cae / "history.jsonl").read_text().splitlines())
                                       if "nmi" in r]
        if hist:
            viz.curves([r["epoch"] for r in hist], {"PSNR (dB)": [r["psnr"] for r in hist],
                                                    "NMI": [r["nmi"] for r in hist]},
                       fig / f"fig4_cae_curves_{ds}.png", title=f"Fig. 4: cae on {ds}, PSNR and NMI per epoch")
