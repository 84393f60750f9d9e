"""S2's reproduction: ``reproduce.py s2`` (each extractor over seeds, the cross-domain rows),
Table 1 and 2 beside the seed's numbers, the seed's claims checked, and the figures.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import numpy as np

from aeclust_jax import grid, runs
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import add_config_options, config_overrides, load_config, to_dict
from aeclust_jax.errors import UsageError
from aeclust_jax.grid import Task
from aeclust_jax.models.cae import CAE_MODELS
from aeclust_jax.studies.natural_cae.config import MODELS, RESNETS, S2Config
from aeclust_jax.studies.natural_cae.recipe import _short, check_data, load_data, reuse_may_differ, run

# ----------------------------------------------------------------------------- reproduce

# The seed's Table 1 (STL-10 test, 8k): pairwise F, BCubed F, NMI, KNN accuracy.
SEED_TABLE1 = {
    "cae_v1": (0.1395, 0.1481, 0.0864, 0.297), "cae_v2": (0.1715, 0.1834, 0.1538, 0.313),
    "cae_v3": (0.1525, 0.1598, 0.1220, 0.291), "unet": (0.1827, 0.1988, 0.1341, 0.296),
    "resnet18": (0.7986, 0.7997, 0.7847, 0.892), "resnet34": (0.8131, 0.8131, 0.7953, 0.900),
    "resnet50": (0.8329, 0.8332, 0.8163, 0.911)}
# Table 2 (ResNet trained on CIFAR-10, tested on STL-10).
SEED_TABLE2 = {"resnet18": (0.4536, 0.4999, 0.5239, 0.694),
               "resnet34": (0.4408, 0.4896, 0.5138, 0.700),
               "resnet50": (0.4463, 0.4869, 0.5146, 0.686)}
SCORES = ("pairwise_f", "bcubed_f", "nmi", "knn_accuracy")
LABELS = {"cae_v1": "CAEv1", "cae_v2": "CAEv2", "cae_v3": "CAEv3", "unet": "UNet",
          "resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50",
          "efficientnet_lite0": "EfficientNet-Lite0 (ImageNet)"}
DEFAULT_MODELS = ("cae_v1", "cae_v2", "cae_v3", "unet", "efficientnet_lite0", "resnet18")


def reproduce_parser():
    p = make_parser(prog=f"{prog_name('reproduce.py')} s2",
                    description="S2: Table 1 (and the cross-domain rows) over seeds, figures, and "
                                "which of the seed's claims hold. Each (model, seed) is one run "
                                "folder under --runs; finished runs are reused.")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS,
                   help="rows of the table")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per row")
    p.add_argument("--cross", nargs="*", default=[], choices=RESNETS,
                   help="ResNets also trained on --supervised-dataset (Table 2)")
    p.add_argument("--out", default="results/s2", help="results.json, results.md, figures/")
    p.add_argument("--runs", default="runs/s2", help="folder of the run folders")
    add_config_options(p, S2Config, skip=("model", "seed", "supervised_dataset", "supervised_path",
                                          "supervised_per_class"))
    p.add_argument("--supervised-dataset", default="", help="--cross: dataset the ResNets train on")
    p.add_argument("--supervised-path", default="", help="--cross: its path (image_folder)")
    p.add_argument("--supervised-per-class", type=int, default=0,
                   help="--cross: labeled images per class (0: all)")
    p.add_argument("--config", help="YAML file of S2Config fields (the base of every run)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the results of the runs already finished")
    grid.add_options(p)
    return p


def planned_jobs(base: S2Config, models: Sequence[str], seeds: Sequence[int],
                 cross: Sequence[str], cross_opts: dict) -> dict[str, S2Config]:
    """{run name: config}, seed-major (every row of seed 0 first, so a cut-short reproduction
    still has one full table). EfficientNet-Lite0 (no training) runs once, seed 0."""
    jobs = {}
    for s in seeds:
        for m in models:
            if m == "efficientnet_lite0" and s != seeds[0]:
                continue
            jobs[f"{m}-s{s}"] = dataclasses.replace(base, model=m, seed=s, tsne=base.tsne and s == seeds[0])
        for m in cross:
            jobs[f"{m}-cross-s{s}"] = dataclasses.replace(base, model=m, seed=s, tsne=False,
                                                          **cross_opts)
    return jobs


def summarize(jobs: dict[str, S2Config], runs_dir: pathlib.Path) -> list[dict]:
    """One row per (model, domain): mean/std over the finished seeds of each score."""
    groups: dict[tuple, list[dict]] = {}
    for name, cfg in jobs.items():
        path = runs_dir / name / "metrics.json"
        if path.is_file():
            key = (cfg.model, "cross" if cfg.supervised_dataset else "in")
            groups.setdefault(key, []).append(runs.read_json(path))
    rows = []
    for (model, domain), ms in groups.items():
        row = {"model": model, "domain": domain, "seeds": [m["seed"] for m in ms]}
        for k in SCORES + ("recon_mse", "recon_psnr", "train_seconds", "final_train_accuracy"):
            vals = [m[k] for m in ms if k in m]
            if vals:
                row[k] = runs.mean_std(vals)
        seed = (SEED_TABLE2 if domain == "cross" else SEED_TABLE1).get(model)
        row["seed_paper"] = dict(zip(SCORES, seed)) if seed else None
        rows.append(row)
    return rows


def did_not_train(row: dict, chance: float) -> bool:
    """A supervised row whose mean final train accuracy stays below twice chance (e.g. 0.11 for
    10 classes after a diverged first epoch): its features say nothing about the architecture."""
    acc = row.get("final_train_accuracy")
    return acc is not None and acc["mean"] < 2 * chance


def check_claims(rows: list[dict], chance: float = 0.1) -> list[dict]:
    """The seed's four claims, each 'holds' / 'does not hold' / 'not testable here' with numbers.
    Claims (2) and (4) leave out, and name, the ResNets that did not train (``did_not_train``,
    ``chance`` = 1 / classes)."""
    mean = lambda r, k: r[k]["mean"]
    cae = [r for r in rows if r["model"] in CAE_MODELS]
    sup_all = [r for r in rows if r["model"] in RESNETS and r["domain"] == "in"]
    sup_in = [r for r in sup_all if not did_not_train(r, chance)]
    failed = "".join(f"; left out: {LABELS[r['model']]} did not train (train accuracy "
                     f"{mean(r, 'final_train_accuracy'):.2f}, chance {chance:.2f})"
                     for r in sup_all if r not in sup_in)
    other = [r for r in rows if r["model"] == "efficientnet_lite0" or r["domain"] == "cross"]
    name = lambda r: LABELS[r["model"]] + (" (cross)" if r["domain"] == "cross" else "")
    claims = []

    def beats(a, b):       # every score of row a above every CAE's
        return all(mean(a, k) > max(mean(c, k) for c in b) for k in SCORES)

    def beats_every_cae(text: str, contenders: list[dict], missing: str, note: str = "") -> dict:
        """Claims (2) and (3): 'holds' when every contender beats every CAE at every score;
        ``note`` ends the numbers."""
        if not (contenders and cae):
            return {"claim": text, "verdict": "not testable here", "numbers": missing}
        held = [r for r in contenders if beats(r, cae)]
        best = {k: max(mean(c, k) for c in cae) for k in SCORES}
        return {"claim": text, "verdict": "holds" if len(held) == len(contenders) else "does not hold",
                "numbers": "; ".join(f"{name(r)} " + ", ".join(f"{k} {mean(r, k):.3f}" for k in SCORES)
                                     for r in contenders)
                           + "; best CAE " + ", ".join(f"{k} {v:.3f}" for k, v in best.items())
                           + note}

    # (1) reconstruction quality does not predict feature quality
    text = "(1) reconstruction quality does not predict feature quality (among the CAEs)"
    if len(cae) >= 2:
        mses = np.array([mean(r, "recon_mse") for r in cae])
        knn = np.array([mean(r, "knn_accuracy") for r in cae])
        nmi_ = np.array([mean(r, "nmi") for r in cae])
        rho = _spearman(-mses, knn)
        best_rec, best_knn, best_nmi = (cae[int(np.argmin(mses))], cae[int(np.argmax(knn))],
                                        cae[int(np.argmax(nmi_))])
        # holds when another CAE has strictly better features than the best reconstructor
        holds = (knn.max() > mean(best_rec, "knn_accuracy") and nmi_.max() > mean(best_rec, "nmi"))
        claims.append({"claim": text, "verdict": "holds" if holds else "does not hold",
                       "numbers": f"best reconstruction {name(best_rec)} (test MSE "
                                  f"{mean(best_rec, 'recon_mse'):.4f}); best KNN {name(best_knn)} "
                                  f"({mean(best_knn, 'knn_accuracy'):.3f}); best NMI {name(best_nmi)} "
                                  f"({mean(best_nmi, 'nmi'):.3f}); Spearman(-MSE, KNN) = {rho:.2f} "
                                  f"over {len(cae)} CAEs"})
    else:
        claims.append({"claim": text, "verdict": "not testable here", "numbers": "fewer than 2 CAEs"})
    claims.append(beats_every_cae("(2) a ResNet supervised on 5k labels beats the CAEs at clustering and KNN",
                                  sup_in, "no trained ResNet or no CAE row" + failed, failed))
    claims.append(beats_every_cae("(3) a model trained on another domain still beats the CAEs",
                                  other, "no cross-domain row or no CAE row"))
    # (4) bigger ResNets do better in-domain
    text = "(4) bigger ResNets do better in-domain (18 < 34 < 50)"
    order = [r for m in RESNETS for r in sup_in if r["model"] == m]
    if len(order) >= 2:
        ok = all(all(mean(b, k) > mean(a, k) for k in SCORES) for a, b in zip(order, order[1:]))
        claims.append({"claim": text, "verdict": "holds" if ok else "does not hold",
                       "numbers": "; ".join(f"{name(r)} NMI {mean(r, 'nmi'):.3f} KNN "
                                            f"{mean(r, 'knn_accuracy'):.3f}" for r in order)
                                  + "".join(f"; {_gaps(a, b)}" for a, b in zip(order, order[1:]))
                                  + failed})
    else:
        claims.append({"claim": text, "verdict": "not testable here",
                       "numbers": f"{len(order)} trained ResNet size(s) run" + failed})
    return claims


def _gaps(a: dict, b: dict) -> str:
    """Row b's score minus row a's, each weighed against the larger of the two rows' seed std
    (with one seed a row has no spread to weigh a gap against)."""
    d = {k: b[k]["mean"] - a[k]["mean"] for k in SCORES}
    text = (f"{LABELS[b['model']]} - {LABELS[a['model']]}: "
            + ", ".join(f"{k} {v:+.3f}" for k, v in d.items()))
    if min(len(a.get("seeds", ())), len(b.get("seeds", ()))) < 2:
        return text + " (one seed: no spread to weigh the gaps against)"
    beyond = sum(abs(v) > max(a[k]["std"], b[k]["std"]) for k, v in d.items())
    return text + f" ({beyond} of {len(d)} gaps exceed the larger seed std of their score)"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _cell(row: dict, k: str) -> str:
    v = row.get(k)
    return "n/a" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}"


def results_markdown(rows: list[dict], claims: list[dict], setting: dict) -> str:
    """Table 1 (in-domain) and Table 2 (other domain) with the seed's numbers beside ours."""
    lines = ["# S2: naive convolutional autoencoders vs supervised features", "",
             "Setting: " + ", ".join(f"{k} {v}" for k, v in setting.items()), "",
             "Scores on the test images: K-means (k = classes) pairwise F / BCubed F / NMI; KNN (k = 5, "
             "labeled train features -> test) accuracy; mean ± std over the seeds run (std 0 "
             "with one seed); train acc: a ResNet's accuracy on its augmented training batches "
             "in its last epoch. Seed's numbers: STL-10 test, 8k images.", ""]
    head = ("| model | seeds | pairwise F | BCubed F | NMI | KNN acc | test MSE | train acc | seed paper "
            "(pF / bF / NMI / KNN) |")
    sep = "|---|---|---|---|---|---|---|---|---|"
    for title, pick in (("Table 1: in-domain (features of the dataset the model was trained on)",
                         lambda r: r["domain"] == "in" and r["model"] != "efficientnet_lite0"),
                        ("Table 2: another domain (EfficientNet-Lite0: ImageNet; ResNets with "
                         "--cross: trained on --supervised-dataset)",
                         lambda r: r["domain"] == "cross" or r["model"] == "efficientnet_lite0")):
        sel = sorted((r for r in rows if pick(r)), key=lambda r: MODELS.index(r["model"]))
        if not sel:
            continue
        lines += [f"## {title}", "", head, sep]
        for r in sel:
            paper = (" / ".join(f"{v:.4f}" for v in r["seed_paper"].values())
                     if r["seed_paper"] else "not in the paper")
            lines.append(f"| {LABELS[r['model']]} | {len(r['seeds'])} | "
                         + " | ".join(_cell(r, k) for k in SCORES)
                         + "".join(f" | {_cell(r, k) if k in r else '-'}"
                                   for k in ("recon_mse", "final_train_accuracy"))
                         + f" | {paper} |")
        lines.append("")
    lines += ["## The seed's claims here", ""]
    lines += [f"- **{c['verdict']}**: {c['claim']}. {c['numbers']}." for c in claims]
    return "\n".join(lines) + "\n"


def reproduce_figures(jobs: dict[str, S2Config], runs_dir: pathlib.Path, rows: list[dict],
                      fig: pathlib.Path, test_labels: np.ndarray, class_names) -> None:
    """Reconstructions (seed's Fig. 1), t-SNE panels (appendix Fig. 2/3), score bars."""
    from aeclust_jax import viz
    first = {}
    for name, cfg in jobs.items():
        if (runs_dir / name / "metrics.json").is_file() and not cfg.supervised_dataset:
            first.setdefault(cfg.model, runs_dir / name)
    recs = {m: np.load(p / "recon_samples.npz") for m, p in first.items()
            if (p / "recon_samples.npz").is_file()}
    if recs:
        originals = next(iter(recs.values()))["originals"] / 255.0
        viz.reconstruction_grid([originals] + [r["recon"] for r in recs.values()],
                                fig / "reconstructions.png",
                                row_names=["input"] + [LABELS[m] for m in recs],
                                title="Test images and their reconstructions (seed 0)")
    panels = {}
    by_model = {r["model"]: r for r in rows if r["domain"] == "in"}
    for m, p in first.items():
        if (p / "tsne.npy").is_file():
            r = runs.read_json(p / "metrics.json")
            panels[LABELS[m]] = (np.load(p / "tsne.npy"), test_labels, _short(r))
    if panels:
        viz.tsne_panels(panels, fig / "tsne.png", class_names=class_names,
                        title="t-SNE of the 128-d test features (seed 0)")
    if by_model:
        viz.grouped_bars({LABELS[m]: {k: (r[k]["mean"], r[k]["std"]) for k in SCORES}
                          for m, r in by_model.items()}, fig / "scores.png", ylabel="score (0-1)",
                         title="S2 scores per extractor (mean ± std over seeds)")


def _run_job(cfg: S2Config, run_dir: pathlib.Path, data) -> None:
    """One planned run (a grid task): trains it, or resumes it from its checkpoints. ``data``:
    the loaded ``S2Data``, or None in a worker process (it loads its own copy)."""
    resume = run_dir.is_dir() and any(run_dir.iterdir())
    run(cfg, run_dir, resume=resume, data=data)


def reproduce_main(argv: Sequence[str]) -> int:
    args = reproduce_parser().parse_args(list(argv))
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.cross and not args.supervised_dataset:
        raise UsageError("--cross needs --supervised-dataset (the domain the ResNets train on)")
    base = load_config(S2Config, args.config, config_overrides(args, S2Config))
    base = dataclasses.replace(base, model=args.models[0]).validate()
    cross_opts = dict(supervised_dataset=args.supervised_dataset,
                      supervised_path=args.supervised_path,
                      supervised_per_class=args.supervised_per_class)
    grid.check_options(args)
    jobs = planned_jobs(base, args.models, list(range(args.seeds)), args.cross, cross_opts)
    for cfg in jobs.values():
        cfg.validate()
    out, runs_dir = pathlib.Path(args.out), pathlib.Path(args.runs)
    if base.feature_cache == "":
        base_cache = str(runs_dir / "feature_cache")
        jobs = {k: dataclasses.replace(c, feature_cache=base_cache) for k, c in jobs.items()}
    # a finished run made with other settings is refused before anything loads or trains
    finished = {name: runs.finished_run(runs_dir / name, to_dict(cfg),
                                        may_differ=reuse_may_differ(cfg.model))
                for name, cfg in jobs.items()}
    data = load_data(base)
    for cfg in jobs.values():
        check_data(cfg, data)
    todo = [name for name in grid.shard(list(jobs), args.shard)
            if not args.report_only and finished[name] is None]
    in_process = grid.runs_here(args.workers, len(todo))    # else workers load their own data
    log = print if base.progress or not in_process else (lambda _: None)
    grid.run_tasks([Task(name, _run_job, (dataclasses.replace(jobs[name], progress=base.progress
                                                              and in_process),
                                          runs_dir / name, data if in_process else None))
                    for name in todo], args.workers, log=log)
    if args.shard is not None:
        grid.say_shard_done(args.shard)
        return 0
    rows = summarize(jobs, runs_dir)
    claims = check_claims(rows, chance=1 / len(data.class_names))
    setting = {"dataset": base.dataset + (f" ({pathlib.Path(base.path).name})" if base.path else ""),
               "unlabeled images": len(data.unlabeled), "labeled train": len(data.train_labels),
               "test": len(data.test_labels), "CAE epochs": base.epochs,
               "ResNet epochs": base.resnet_epochs, "seeds": args.seeds,
               "EfficientNet input": f"{base.effnet_size} px"}
    runs.make_dir(out / "figures")
    reproduce_figures(jobs, runs_dir, rows, out / "figures", data.test_labels, data.class_names)
    runs.write_json(out / "results.json", {"setting": setting, "rows": rows, "claims": claims,
                                           "base_config": to_dict(base),
                                           "runs": sorted(jobs), "scale": runs.SCALE})
    table = results_markdown(rows, claims, setting)
    runs.atomic_write_text(out / "results.md", table)
    print(table)
    print(f"wrote {out}")
    return 0
