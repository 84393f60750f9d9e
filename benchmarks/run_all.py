#!/usr/bin/env python
"""Every benchmark of every stage against its peer, in one command: one JSON and one markdown table.

    python benchmarks/run_all.py            # the full settings (tens of minutes on 2 CPU cores)
    python benchmarks/run_all.py --quick    # small settings (a few minutes): do the scripts work?
    python benchmarks/run_all.py --only kmeans knn --out results/bench/run_all

Each benchmark runs as its own process (``benchmarks/bench_*.py``, one at a time, so they do not
compete for the cores), and its last stdout line, one JSON object, is collected. The table has one
row per stage: the peer, ``speedup`` = peer time / our time, the script's wall time, and the status
(``ok``, ``peer missing`` when the script's peer is not installed: ``pip install -e '.[bench]'``,
or ``failed``). The machine (CPU model, cores, JAX backend and version) and the 1-minute load
average before and after each run are recorded beside it: a loaded machine slows both sides, not
always equally. Exit status 1 when a benchmark failed (a broken script never passes silently);
a missing peer is not a failure.

Writes ``<out>/run_all.json`` and ``<out>/run_all.md`` (default out: results/bench/quick or
results/bench/full); README's speed table is the markdown of a full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Bench:
    """One stage's benchmark: its script, the peer it is timed against, and its arguments."""
    name: str
    script: str
    stage: str
    peer: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


SUITE: tuple[Bench, ...] = (
    Bench("data", "bench_data.py", "load MNIST (prepared array_record -> arrays)",
          "numpy reading the raw IDX files", (), ("--repeats", "1")),
    Bench("train_step", "bench_train_step.py", "S1 train step (cae_skip, dae; batch 128)",
          "PyTorch (same model, same optimizer)", (),
          ("--steps", "3", "--rounds", "1", "--models", "cae_skip", "--upsample", "subpixel",
           "--fuse", "1")),
    Bench("pipeline", "bench_pipeline.py", "S1 whole run (epoch, encode, t-SNE, K-means, metrics)",
          "PyTorch + openTSNE + scikit-learn", (),
          ("--train-limit", "2000", "--n-cluster", "500", "--skip-torch-epoch")),
    Bench("kmeans", "bench_kmeans.py", "K-means (k-means++, n_init 10)",
          "scikit-learn (and sklearnex, faiss, ott-jax)", (),
          ("--case", "small", "--repeat", "1", "--skip", "faiss", "ott")),
    Bench("knn", "bench_knn.py", "kNN classification (k = 5)", "scikit-learn (and sklearnex, faiss)",
          ("--case", "both"), ("--repeat", "1")),
    Bench("spectral", "bench_spectral.py", "spectral clustering + DSC post-processing",
          "scikit-learn", (), ("--repeat", "1")),
    Bench("metrics", "bench_metrics.py", "NMI / ARI / ACC / pairwise F / BCubed F", "scikit-learn",
          (), ("--n", "20000", "--repeat", "1")),
    Bench("tsne", "bench_tsne.py", "t-SNE (auto backend)", "openTSNE / scikit-learn", (),
          ("--n", "500")),
    Bench("dsc", "bench_dsc.py", "S4 DSC fine-tune + clustering (COIL-20)", "PyTorch + numpy", (),
          ("--pretrain-epochs", "1", "--finetune-iters", "2")),
    Bench("s2_evaluation", "bench_s2.py", "S2 evaluation (K-means, 3 scores, KNN) + CAEv1 step",
          "scikit-learn + PyTorch", (), ("--quick", "--repeat", "1")),
    Bench("features", "bench_features.py", "backbone feature extraction + ResNet-18 train step",
          "PyTorch", (), ("--quick", "--rows", "resnet18", "train_resnet18")),
)
NAMES = tuple(b.name for b in SUITE)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import jax
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "jax": jax.__version__,
            "python": platform.python_version()}


def last_json(stdout: str) -> dict | None:
    """The last line of ``stdout`` as a JSON object, or None."""
    lines = [l for l in stdout.strip().splitlines() if l.strip()]
    if not lines:
        return None
    try:
        obj = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def run_one(bench: Bench, quick: bool, timeout: float) -> dict:
    """Runs one benchmark script; its status, wall seconds, loads and last-line JSON."""
    args = bench.quick if quick else bench.full
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(HERE.parent), os.environ.get("PYTHONPATH", "")) if p))
    row = {"name": bench.name, "stage": bench.stage, "peer": bench.peer,
           "command": " ".join(["python", f"benchmarks/{bench.script}", *args]),
           "load_before": round(os.getloadavg()[0], 2)}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, str(HERE / bench.script), *args], capture_output=True,
                           text=True, env=env, timeout=timeout)
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = None, e.stdout or "", f"timed out after {timeout:.0f} s"
        out = out.decode() if isinstance(out, bytes) else out
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["load_after"] = round(os.getloadavg()[0], 2)
    result = last_json(out) if code == 0 else None
    if code == 0 and result is not None:
        row.update(status="ok", speedup=result.get("speedup"), result=result)
    elif code == 2 and "is not installed" in err:
        row.update(status="peer missing", error=err.strip().splitlines()[-1])
    else:
        tail = (err or out).strip().splitlines()[-5:]
        why = "no JSON on its last line" if code == 0 else f"exit status {code}"
        row.update(status="failed", error=f"{why}: " + " | ".join(tail))
    return row


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Benchmarks ({'quick' if report['quick'] else 'full'} settings), "
             f"{m['cpu']}, {m['cores']} cores, JAX {m['jax']} on {m['backend']} ({m['device']}).",
             "speedup = peer time / our time (> 1: ours is faster); load = 1-minute load average "
             "before -> after.", "",
             "| stage | peer | speedup | wall s | load | status |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        sp = f"{r['speedup']:.2f}x" if isinstance(r.get("speedup"), (int, float)) else "-"
        lines.append(f"| {r['stage']} | {r['peer']} | {sp} | {r['seconds']} | "
                     f"{r['load_before']} -> {r['load_after']} | {r['status']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small settings: checks every script works")
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME",
                   help=f"run only these benchmarks (of: {', '.join(NAMES)})")
    p.add_argument("--out", type=pathlib.Path, help="folder of run_all.json / run_all.md "
                   "(default results/bench/quick or results/bench/full)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    a = p.parse_args(argv)
    out = a.out or HERE.parent / "results" / "bench" / ("quick" if a.quick else "full")
    chosen = [b for b in SUITE if not a.only or b.name in a.only]
    report = {"benchmark": "run_all", "quick": a.quick, "machine": machine(), "rows": []}
    for b in chosen:
        print(f"[{len(report['rows']) + 1}/{len(chosen)}] {b.name}: {b.stage} ...", flush=True)
        row = run_one(b, a.quick, a.timeout)
        report["rows"].append(row)
        sp = f"{row['speedup']:.2f}x" if isinstance(row.get("speedup"), (int, float)) else "-"
        print(f"    {row['status']}  speedup {sp}  ({row['seconds']} s)"
              + (f"  {row['error']}" if row.get("error") else ""), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("run_all.json", json.dumps(report, indent=1, default=str) + "\n"),
                       ("run_all.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    print(markdown(report))
    failed = [r["name"] for r in report["rows"] if r["status"] == "failed"]
    summary = {"benchmark": "run_all", "quick": a.quick, "out": str(out), "failed": failed,
               "speedup": {r["name"]: r.get("speedup") for r in report["rows"]}}
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
