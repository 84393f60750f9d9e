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
results/bench/full). With ``--only``, the other stages' rows of an earlier run_all.json in the
same folder (same machine, same settings) are kept, so one stage can be retaken. README's speed
table is the markdown of a full run: ``--readme README.md`` writes it between the file's
speed-table markers (after the run, or from a saved run with ``--from-json``).
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
from typing import Callable

HERE = pathlib.Path(__file__).resolve().parent


def _s(t) -> str:
    """Seconds as '0.062 s' / '51.8 s' (3 significant digits)."""
    return f"{t:.3g} s" if isinstance(t, (int, float)) else "-"


def _x(r) -> str:
    return f"{r:.2f}x" if isinstance(r, (int, float)) else "-"


def _ips(v) -> str:
    return f"{v:.0f} img/s" if v >= 100 else f"{v:.1f} img/s"


# Each stage's table rows from its script's last-line JSON: (data, ours, peer, speedup) tuples.
PEER_NAMES = {"sklearn": "sklearn", "sklearn_1thread": "sklearn 1 thread",
              "sklearnex": "sklearnex (oneDAL)", "faiss": "faiss", "ott": "ott-jax"}


def _peer_cells(case: dict, names) -> tuple[str, str]:
    """'sklearn 0.17 s; faiss 15.5 s' and '2.76x sklearn; ...' for the peers timed in a case."""
    timed = [n for n in names if isinstance(case.get(f"{n}_s"), (int, float))]
    return ("; ".join(f"{PEER_NAMES[n]} {_s(case[f'{n}_s'])}" for n in timed),
            ", ".join(f"{_x(case.get(f'speedup_vs_{n}'))} {PEER_NAMES[n]}" for n in timed))


def rows_data(r):
    return [(f"MNIST train, {r['n']} images", _s(r["ours_load_s"]),
             f"raw IDX + numpy {_s(r['peer_raw_idx_numpy_s'])}; tfds data source "
             f"{_s(r['tfds_data_source_per_record_s'])}",
             f"{_x(r['speedup'])} ({_x(r['speedup_vs_data_source'])} vs data source)")]


def rows_train_step(r):
    out = []
    for name, m in r["models"].items():
        ours = m["variants"][m["default"]]
        out.append((f"{name}, MNIST, batch {r['batch']}", _ips(ours["images_per_s"]),
                    f"PyTorch eager ({r['torch_threads']} threads) {_ips(m['torch_images_per_s'])}",
                    _x(m["speedup"])))
    return out


def rows_pipeline(r):
    common = list(r["speedup_per_stage"])
    per = ", ".join(f"{k} {_x(v)}" for k, v in r["speedup_per_stage"].items())
    return [(f"{r['model']}, {r['train_images']} train images, {r['n_cluster']} clustered",
             f"{_s(sum(r['ours_s'][k] for k in common))} ({', '.join(common)})",
             _s(sum(r["peer_s"][k] for k in common)), f"{_x(r['speedup'])} ({per})")]


def rows_kmeans(r):
    out = []
    for c in ("small", "mnist"):
        if c in r:
            peer, sp = _peer_cells(r[c], ("sklearn", "sklearn_1thread", "sklearnex", "faiss", "ott"))
            out.append((f"{r[c]['data']}, k={r['k']}, n_init={r['n_init']}", _s(r[c]["ours_s"]),
                        peer, sp))
    return out


def rows_knn(r):
    out = []
    for c in ("small", "mnist"):
        if c in r:
            peer, sp = _peer_cells(r[c], ("sklearn", "sklearnex", "faiss"))
            out.append((f"{r[c]['data']}, k={r['k']}", _s(r[c]["ours_s"]), peer,
                        f"{sp} (predictions agree: {r[c]['agreement']:.4f})"))
    return out


def rows_spectral(r):
    return [(f"{r['n']}-node DSC affinity, k={r['k']}",
             f"{_s(r['ours_s'])} (full eigh {_s(r['ours_eigh_s'])})",
             f"SpectralClustering(precomputed) {_s(r['sklearn_s'])}",
             f"{_x(r['speedup'])} (ACC {r['ours_acc']:.3f} / {r['sklearn_acc']:.3f})"),
            (f"DSC post-processing C {r['n']}x{r['n']} -> affinity", _s(r["post_ours_eigh_s"]),
             f"DSC-Net's numpy thrC + svds {_s(r['post_numpy_s'])}", _x(r["post_speedup"]))
            ] + ([_row_knn_graph(r["mnist_knn"])] if "mnist_knn" in r else [])


def _row_knn_graph(g):
    return (f"sparse {g['n_neighbors']}-NN graph of {g['n']} MNIST test images (PCA-50), k={g['k']}",
            f"{_s(g['ours_s'])} (solver {g['auto_picks']}; chebyshev {_s(g['ours_chebyshev_s'])}, "
            f"eigsh {_s(g['ours_eigsh_s'])})",
            f"SpectralClustering(precomputed) {_s(g['sklearn_s'])} (1 thread "
            f"{_s(g['sklearn_1thread_s'])})",
            f"{_x(g['speedup'])} ({_x(g['speedup_vs_sklearn_1thread'])} 1 thread; ACC "
            f"{g['ours_acc']:.3f} / {g['sklearn_acc']:.3f})")


METRICS = ("nmi", "ari", "acc", "pairwise_f", "bcubed_f")


def rows_metrics(r):
    ours = [r[m]["ours_s"] for m in METRICS]
    peer = [r[m]["peer_s"] for m in METRICS]
    return [(f"{r['n']} labels, k={r['k']}", f"{_s(min(ours))} - {_s(max(ours))} each",
             f"sklearn / numpy {_s(min(peer))} - {_s(max(peer))}",
             ", ".join(f"{m} {_x(r[m]['speedup'])}" for m in METRICS))]


def rows_tsne(r):
    pick = r["auto_picks"]
    ours = f"{_s(r[f'ours_{pick}']['s'])} (auto = {pick})"
    if pick != "jax" and "ours_jax" in r:
        ours += f"; exact jax backend {_s(r['ours_jax']['s'])}"
    return [(r["data"], ours, f"openTSNE {_s(r['opentsne']['s'])}; sklearn {_s(r['sklearn']['s'])}",
             f"{_x(r['speedup'])} openTSNE, {_x(r[f'ours_{pick}']['speedup_vs_sklearn'])} sklearn")]


def rows_dsc(r):
    return [(f"COIL-20, latent {r['latent']}, {r['finetune_iters']} iterations",
             _s(r["ours_seconds"]), f"DSC-Net PyTorch + scipy/sklearn {_s(r['peer_seconds'])}",
             f"{_x(r['speedup'])} (fine-tune {_x(r['finetune_speedup'])}, cluster "
             f"{_x(r['cluster_speedup'])}; ACC {r['ours_acc']:.3f} / {r['peer_acc']:.3f})")]


def rows_s2(r):
    out = []
    if "evaluate" in r["rows"]:
        e = r["rows"]["evaluate"]
        out.append((f"{e['train'][0]} x {e['train'][1]} train, {e['test'][0]} test: K-means, "
                    "3 scores, KNN", _s(e["ours_s"]),
                    f"scikit-learn ({e['sklearn_threads']} thread) {_s(e['sklearn_s'])}",
                    _x(e["speedup"])))
    if "train_cae" in r["rows"]:
        t = r["rows"]["train_cae"]
        out.append((f"CAEv1 train step, 32 px, batch {t['batch']}",
                    _ips(t["ours_images_per_s"]), f"PyTorch eager {_ips(t['torch_images_per_s'])}",
                    _x(t["speedup"])))
    return out


def rows_features(r):
    return [(f"{name}, {row['image_size']} px, batch {row['batch']}",
             _ips(row["ours_images_per_s"]),
             f"PyTorch eager ({r['torch_threads']} threads) {_ips(row['torch_images_per_s'])}",
             _x(row["speedup"])) for name, row in r["rows"].items()]


@dataclasses.dataclass(frozen=True)
class Bench:
    """One stage's benchmark: its script, the peer it is timed against, its arguments, the
    target ratio, and the function that makes its table rows from the script's JSON."""
    name: str
    script: str
    stage: str
    peer: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    target: str = "-"
    rows: Callable[[dict], list[tuple[str, str, str, str]]] | None = None


SUITE: tuple[Bench, ...] = (
    Bench("data", "bench_data.py", "load MNIST (prepared array_record -> arrays)",
          "numpy reading the raw IDX files", (), ("--repeats", "1"), "< 1 s", rows_data),
    Bench("train_step", "bench_train_step.py", "S1 train step (cae_skip, dae; batch 128)",
          "PyTorch (same model, same optimizer)", (),
          ("--steps", "3", "--rounds", "1", "--models", "cae_skip", "--upsample", "subpixel",
           "--fuse", "1"), "1.5x", rows_train_step),
    Bench("pipeline", "bench_pipeline.py", "S1 whole run (epoch, encode, t-SNE, K-means, metrics)",
          "PyTorch + openTSNE + scikit-learn", (),
          ("--train-limit", "2000", "--n-cluster", "500", "--skip-torch-epoch"), "-", rows_pipeline),
    Bench("kmeans", "bench_kmeans.py", "K-means (k-means++, n_init 10)",
          "scikit-learn (and sklearnex, faiss, ott-jax)", (),
          ("--case", "small", "--repeat", "1", "--skip", "faiss", "ott"),
          "3x sklearn 1 thread, 1x oneDAL", rows_kmeans),
    Bench("knn", "bench_knn.py", "kNN classification (k = 5)", "scikit-learn (and sklearnex, faiss)",
          ("--case", "both"), ("--repeat", "1"), "1x oneDAL", rows_knn),
    Bench("spectral", "bench_spectral.py", "spectral clustering + DSC post-processing",
          "scikit-learn", ("--case", "both"), ("--repeat", "1"), "3x", rows_spectral),
    Bench("metrics", "bench_metrics.py", "NMI / ARI / ACC / pairwise F / BCubed F", "scikit-learn",
          (), ("--n", "20000", "--repeat", "1"), "10x", rows_metrics),
    Bench("tsne", "bench_tsne.py", "t-SNE (auto backend)", "openTSNE / scikit-learn", (),
          ("--n", "500"), "-", rows_tsne),
    Bench("dsc", "bench_dsc.py", "S4 DSC fine-tune + clustering (COIL-20)", "PyTorch + numpy", (),
          ("--pretrain-epochs", "1", "--finetune-iters", "2"), "3x", rows_dsc),
    Bench("s2_evaluation", "bench_s2.py", "S2 evaluation (K-means, 3 scores, KNN) + CAEv1 step",
          "scikit-learn + PyTorch", (), ("--quick", "--repeat", "1"), "2x", rows_s2),
    Bench("features", "bench_features.py", "backbone feature extraction + ResNet-18 train step",
          "PyTorch", (), ("--quick", "--rows", "resnet18", "train_resnet18"), "1.5x",
          rows_features),
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


def cpu_vector_isa() -> str | None:
    """The widest x86 vector extension the CPU reports (``avx512f`` / ``avx2`` / ``avx``; Linux
    /proc/cpuinfo), None when unknown. The same VM has run on AVX2-only and AVX-512 hosts, and
    the ratios against oneDNN / MKL peers move with it."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return next((isa for isa in ("avx512f", "avx2", "avx") if isa in flags), None)


def machine() -> dict:
    import jax
    from aeclust_jax.host_memory import malloc_choice
    return {"cpu": cpu_model(), "isa": cpu_vector_isa(), "cores": os.cpu_count(),
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "jax": jax.__version__,
            "python": platform.python_version(),
            "malloc": malloc_choice()}


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


def table_rows(bench: Bench, row: dict) -> list[tuple[str, str, str, str]]:
    """The (data, ours, peer, speedup) rows of one run: from its JSON when it ran, else one row
    saying why not."""
    if row["status"] == "ok" and bench.rows is not None:
        try:
            return bench.rows(row["result"])
        except (KeyError, TypeError, IndexError, ZeroDivisionError) as e:
            return [("-", "-", "-", f"(table: {type(e).__name__} {e})")]
    if row["status"] == "ok":
        return [("-", "-", bench.peer, _x(row.get("speedup")))]
    return [("-", "-", bench.peer, f"{row['status']}: {row.get('error', '')}".rstrip(": "))]


def markdown(report: dict) -> str:
    """The speed table of a run (README's, between its speed-table markers)."""
    m = report["machine"]
    by_name = {b.name: b for b in SUITE}
    lines = [f"Generated by `python benchmarks/run_all.py{' --quick' if report['quick'] else ''}` "
             f"({'quick' if report['quick'] else 'full'} settings) on {m['cpu']}"
             f"{' (' + m['isa'] + ')' if m.get('isa') else ''}, {m['cores']} "
             f"cores, JAX {m['jax']} on {m['backend']} ({m['device']})"
             f"{', malloc ' + m['malloc'] + ' (aeclust_jax.host_memory)' if m.get('malloc') else ''}"
             f"{', ' + report['date'] if report.get('date') else ''}. "
             "speedup = peer time / our time (> 1: ours is faster), warm, compile apart; "
             "load = 1-minute load average before -> after the script.", "",
             "| stage (script) | data | ours | peer | speedup | target | load |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        bench = by_name.get(r["name"], Bench(r["name"], "?", r.get("stage", "?"), r.get("peer", "?")))
        for data, ours, peer, speedup in table_rows(bench, r):
            lines.append(f"| {bench.stage} (`{bench.script}`) | {data} | {ours} | {peer} | "
                         f"{speedup} | {bench.target} | {r['load_before']} -> {r['load_after']} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- speed-table:begin -->", "<!-- speed-table:end -->"


def replace_block(text: str, table: str, where: str = "README.md") -> str:
    """``text`` with the part between the speed-table markers replaced by ``table``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{where}: needs one {BEGIN} line followed by one {END} line")
    head, rest = text.split(BEGIN)
    return head + BEGIN + "\n" + table + rest[rest.index(END):]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small settings: checks every script works")
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME",
                   help=f"run only these benchmarks (of: {', '.join(NAMES)})")
    p.add_argument("--out", type=pathlib.Path, help="folder of run_all.json / run_all.md "
                   "(default results/bench/quick or results/bench/full)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    p.add_argument("--readme", type=pathlib.Path, metavar="FILE",
                   help="also write the table into FILE between its speed-table markers "
                        f"({BEGIN} ... {END})")
    p.add_argument("--from-json", type=pathlib.Path, metavar="RUN_ALL_JSON",
                   help="run nothing: remake the table (and --readme) from a saved run_all.json")
    a = p.parse_args(argv)
    try:                                                # checked before anything runs
        from aeclust_jax.host_memory import malloc_choice
        malloc_choice()                                 # a bad AECLUST_MALLOC: UsageError
        readme = a.readme.read_text() if a.readme else None
        if readme is not None:
            replace_block(readme, "", str(a.readme))
        saved = json.loads(a.from_json.read_text()) if a.from_json else None
    except (OSError, ValueError) as e:
        print(f"error: run_all: {e}", file=sys.stderr)
        return 2
    if saved is not None:
        report, ran = saved, set()
    else:
        report = run_suite(a)
        ran = {b.name for b in SUITE if not a.only or b.name in a.only}
    if readme is not None:
        write_atomic(a.readme, replace_block(readme, markdown(report), str(a.readme)))
    print(markdown(report))
    failed = [r["name"] for r in report["rows"] if r["status"] == "failed" and r["name"] in ran]
    summary = {"benchmark": "run_all", "quick": report["quick"], "failed": failed,
               "speedup": {r["name"]: r.get("speedup") for r in report["rows"]}}
    print(json.dumps(summary))
    return 1 if failed else 0


def write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def run_suite(a) -> dict:
    """Runs the chosen benchmarks one by one; writes <out>/run_all.json and run_all.md."""
    out = a.out or HERE.parent / "results" / "bench" / ("quick" if a.quick else "full")
    chosen = [b for b in SUITE if not a.only or b.name in a.only]
    report = {"benchmark": "run_all", "quick": a.quick, "machine": machine(),
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "rows": []}
    for i, b in enumerate(chosen):
        print(f"[{i + 1}/{len(chosen)}] {b.name}: {b.stage} ...", flush=True)
        row = run_one(b, a.quick, a.timeout)
        row["date"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        report["rows"].append(row)
        sp = f"{row['speedup']:.2f}x" if isinstance(row.get("speedup"), (int, float)) else "-"
        print(f"    {row['status']}  speedup {sp}  ({row['seconds']} s)"
              + (f"  {row['error']}" if row.get("error") else ""), flush=True)
    saved = out / "run_all.json"
    if a.only and saved.is_file():              # a rerun of some stages keeps the others' rows
        old = json.loads(saved.read_text())
        if old.get("quick") == a.quick and old.get("machine") == report["machine"]:
            rows = {r["name"]: r for r in old["rows"]} | {r["name"]: r for r in report["rows"]}
            report["rows"] = [rows[n] for n in NAMES if n in rows]
            report["date"] = old.get("date", report["date"])
            print(f"kept the other stages' rows of {saved} (same machine and settings)")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out / "run_all.md", markdown(report))
    return report


if __name__ == "__main__":
    sys.exit(main())
