"""S4's reproduction: ``reproduce.py s4`` (plain vs channel attention at each latent width over
seeds), the table beside the seed's, the claims and the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from typing import Sequence

import numpy as np

from aeclust_jax import grid, runs
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import load_config, to_dict
from aeclust_jax.errors import UsageError
from aeclust_jax.grid import Task
from aeclust_jax.studies.dsc.config import DSCConfig, PRESETS, preset
from aeclust_jax.studies.dsc.recipe import check_inputs, select_subset, train_and_evaluate

# ----------------------------------------------------------------------------- reproduce s4

@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the seed's Table 2: latent 16x16x``channels``, attention on/off, paper's ACC."""
    name: str
    label: str
    channels: int
    attention: bool
    paper_acc: float


ROWS = (
    Row("dsc_c15", "DSC, 16x16x15 (no compression)", 15, False, 0.9368),
    Row("noatt_c1", "no attention, 16x16x1 (25%)", 1, False, 0.8944),
    Row("att_c1", "channel attention, 16x16x1 (25%)", 1, True, 0.9146),
    Row("noatt_c2", "no attention, 16x16x2 (50%)", 2, False, 0.8722),
    Row("att_c2", "channel attention, 16x16x2 (50%)", 2, True, 0.9410),
    Row("noatt_c3", "no attention, 16x16x3 (75%)", 3, False, 0.9201),
    Row("att_c3", "channel attention, 16x16x3 (75%)", 3, True, 0.9239),
)
ROW_BY_NAME = {r.name: r for r in ROWS}


def reproduce_parser() -> argparse.ArgumentParser:
    """The options of ``reproduce.py s4``."""
    p = make_parser(prog=prog_name("reproduce.py") + " s4",
                    description="S4 Table 2 on COIL-20: DSC (c=15) and no-attention / "
                                "attention at c = 1, 2, 3, mean +- std over seeds.")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], choices=list(ROW_BY_NAME),
                   help="rows of Table 2 to run")
    p.add_argument("--config", help="YAML of DSCConfig fields applied to every row")
    p.add_argument("--pretrain-epochs", type=int,
                   help=f"override DSCConfig.pretrain_epochs (default: {PRESETS['coil20'].pretrain_epochs})")
    p.add_argument("--finetune-iters", type=int,
                   help=f"override DSCConfig.finetune_iters (default: {PRESETS['coil20'].finetune_iters})")
    p.add_argument("--classes", type=int, help="first K classes only (quick checks; default: all)")
    p.add_argument("--per-class", type=int, help="M images per class only (quick checks; default: all)")
    p.add_argument("--runs", default="runs/s4", help="folder of the individual runs")
    p.add_argument("--out", default="results/s4", help="folder of the table and figures")
    grid.add_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    return p


def summarize(rows: Sequence[Row], per_run: dict[str, list[dict]]) -> list[dict]:
    """One object per row: ACC/NMI/ARI mean +- std over its seeds and mean seconds per stage."""
    table = []
    for r in rows:
        ms = per_run.get(r.name, [])
        if not ms:
            continue
        rec = {"row": r.name, "scale": runs.SCALE, "label": r.label, "latent": f"16x16x{r.channels}",
               "attention": r.attention, "paper_acc": r.paper_acc,
               "seeds": [m["seed"] for m in ms]}
        for k in ("acc", "nmi", "ari"):
            rec[k] = runs.mean_std([m[k] for m in ms])
            rec[f"{k}_per_seed"] = [m[k] for m in ms]
        for k in ("pretrain_seconds", "finetune_seconds", "cluster_seconds"):
            rec[k] = float(np.mean([m[k] for m in ms]))
        table.append(rec)
    return table


def markdown_table(table: Sequence[dict]) -> str:
    lines = ["| row | latent | attention | ACC (0-1, mean ± std) | NMI (0-1, mean ± std) | ARI (0-1) "
             "| paper ACC (0-1) | seeds | pretrain s | fine-tune s | cluster s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(
            f"| {t['label']} | {t['latent']} | {'yes' if t['attention'] else 'no'} "
            f"| {t['acc']['mean']:.4f} ± {t['acc']['std']:.4f} "
            f"| {t['nmi']['mean']:.4f} ± {t['nmi']['std']:.4f} | {t['ari']['mean']:.4f} "
            f"| {t['paper_acc']:.4f} | {len(t['seeds'])} | {t['pretrain_seconds']:.0f} "
            f"| {t['finetune_seconds']:.0f} | {t['cluster_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _write_results(out: pathlib.Path, table: list[dict], settings: dict) -> None:
    from aeclust_jax import viz

    runs.write_json(out / "results.json", table)
    runs.atomic_write_text(out / "results.md", "# S4 Table 2 on COIL-20 (this reproduction)\n\n"
                           + markdown_table(table) + "\nSettings: " + json.dumps(settings) + "\n")
    bars: dict[str, dict[str, tuple[float, float]]] = {}
    for t in table:
        group = t["latent"]
        series = "DSC" if t["row"].startswith("dsc") else (
            "attention" if t["attention"] else "no attention")
        bars.setdefault(group, {})[series] = (t["acc"]["mean"], t["acc"]["std"])
    viz.grouped_bars(bars, out / "acc.png", ylabel="ACC (0-1)",
                     title="S4 on COIL-20: ACC by latent width and attention")


def reproduce_main(argv: Sequence[str]) -> int:
    from aeclust_jax.data import load

    a = reproduce_parser().parse_args(list(argv))
    if a.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
    grid.check_options(a)
    rows = [ROW_BY_NAME[n] for n in dict.fromkeys(a.rows)]
    base = load_config(DSCConfig, a.config, {"pretrain_epochs": a.pretrain_epochs,
                                             "finetune_iters": a.finetune_iters},
                       base=preset("coil20"))
    ds = load("coil20", progress=not a.no_progress)
    images, labels = select_subset(ds.images, ds.labels, a.classes, a.per_class)
    for r in rows:                  # every row fits the data before anything is written
        check_inputs(images, len(np.unique(labels)),
                     dataclasses.replace(base, channels=base.channels[:-1] + (r.channels,)))
    out, work = pathlib.Path(a.out), pathlib.Path(a.runs)
    runs.make_dir(out)
    settings = {"seeds": a.seeds, "n_images": len(labels), **to_dict(base)}
    settings.pop("channels"), settings.pop("attention")
    done: dict[tuple[str, int], dict] = {}       # (row, seed) -> metrics
    groups: dict[tuple[int, int], list] = {}     # (channels, seed) -> rows sharing a pretrained AE
    for seed in range(a.seeds):            # seed-major: the first tasks cover every row
        for r in rows:
            cfg = dataclasses.replace(base, channels=base.channels[:-1] + (r.channels,),
                                      attention=r.attention)
            run_dir = work / r.name / f"seed{seed}"
            if runs.is_complete(run_dir):
                m = runs.read_json(run_dir / "metrics.json")
                if m.get("n_images") != len(labels) or m.get("config") != to_dict(cfg):
                    raise runs.RunExistsError(f"{run_dir} holds a run with other settings; "
                                              f"choose another --runs folder")
                done[r.name, seed] = m
            groups.setdefault((r.channels, seed), []).append((r.name, cfg, run_dir))
    tasks = []
    for (c, seed), items in grid.shard(list(groups.items()), a.shard):
        items = [item for item in items if (item[0], seed) not in done]
        if items:
            tasks.append(Task(f"{', '.join(name for name, _, _ in items)} seed {seed}", _run_rows,
                              (items, images, labels,
                               work / "pretrained" / f"c{c}-e{base.pretrain_epochs}-seed{seed}",
                               seed, not (a.no_progress or a.workers > 1))))
    for result in grid.run_tasks(tasks, a.workers, log=print if not a.no_progress or a.workers > 1
                                 else (lambda _: None)):
        done.update(result)
    if a.shard is not None:
        grid.say_shard_done(a.shard)
        return 0
    per_run = {r.name: [done[r.name, seed] for seed in range(a.seeds)] for r in rows}
    _write_results(out, summarize(rows, per_run), settings)
    print(markdown_table(summarize(rows, per_run)))
    print(f"wrote {out}")
    return 0


def _run_rows(items, images, labels, pretrain_dir: pathlib.Path, seed: int, progress: bool) -> dict:
    """Trains and evaluates the rows ``items`` [(name, cfg, run_dir)] of one seed, which share the
    pretrained autoencoder in ``pretrain_dir``; returns {(name, seed): metrics}."""
    out = {}
    for name, cfg, run_dir in items:
        if run_dir.exists():   # an interrupted run: start it again from scratch
            import shutil
            shutil.rmtree(run_dir)
        print(f"[s4] {name} seed {seed}", flush=True)
        m = train_and_evaluate(images, labels, cfg, runs.prepare_run_dir(run_dir), seed=seed,
                               pretrain_dir=pretrain_dir, extra={"row": name, "config": to_dict(cfg)},
                               progress=progress, figures=(seed == 0))
        print(f"[s4] {name} seed {seed}: acc={m['acc']:.4f} nmi={m['nmi']:.4f}", flush=True)
        out[name, seed] = m
    return out
