"""Benchmarks whose peer package is missing stop at once with one line naming the extra; every
script runs in its quick setting through run_all.py (its figures as a last-line JSON); a peer
that cannot be built is one line naming it; README's speed table is run_all's markdown."""

import importlib.util
import json
import os
import pathlib
import runpy
import subprocess
import sys
import types

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
PEERS = {  # script -> a peer it cannot run without
    "bench_train_step.py": "torch", "bench_pipeline.py": "torch", "bench_dsc.py": "torch",
    "bench_kmeans.py": "sklearn", "bench_tsne.py": "openTSNE", "bench_metrics.py": "sklearn",
    "bench_knn.py": "sklearn", "bench_spectral.py": "sklearn", "bench_features.py": "torch",
    "bench_s2.py": "sklearn",
}


class _Absent:
    """A meta-path finder for which the package ``name`` does not exist."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def test_every_benchmark_with_a_peer_is_listed():
    scripts = {p.name for p in BENCH.glob("bench_*.py")}
    assert scripts - set(PEERS) == {"bench_data.py"}   # its peer is numpy, a core dependency


@pytest.mark.parametrize("script, peer", sorted(PEERS.items()))
def test_missing_peer_is_one_line_naming_the_extra(script, peer, monkeypatch, capsys):
    # `import peer` now fails as if it were not installed; the loaded modules are hidden too (not
    # set to None: scipy's array-API helpers look torch up in sys.modules and would crash on None)
    import aeclust_jax.cluster  # noqa: F401  (it needs scikit-learn itself, a runtime dependency:
    # load it before the peer is hidden, or the result depends on which test ran first)
    for name in [m for m in sys.modules if m == peer or m.startswith(peer + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Absent(peer)] + sys.meta_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", [str(BENCH / script)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {script}: its peer {peer!r} is not installed")
    assert "pip install -e '.[bench]'" in err


def _check_features(feats):
    """--quick --rows resnet18 train_resnet18: both rows timed, the same features as PyTorch's."""
    assert feats["benchmark"] == "features" and feats["quick"] is True
    assert feats["machine"]["malloc"] == "keep"          # as the tools run (host_memory)
    assert set(feats["rows"]) == {"resnet18", "train_resnet18"} == set(feats["target_met"])
    for name, row in feats["rows"].items():
        for key in ("ours_images_per_s", "torch_images_per_s", "speedup", "ours_first_call_s",
                    "batch", "image_size"):
            assert row[key] > 0, (name, key)
        assert len(row["ours_s"]) == len(row["torch_s"]) == feats["repeat"]
    assert feats["rows"]["resnet18"]["max_rel_diff"] < 1e-4        # same weights, same features
    train = feats["rows"]["train_resnet18"]
    assert abs(train["first_loss"] - train["torch_first_loss"]) < 1e-3 * train["torch_first_loss"]
    assert feats["speedup"] == min(r["speedup"] for r in feats["rows"].values())


def _check_s2(s2):
    """Ours and scikit-learn score the same features: KNN equal, K-means' scores close."""
    row = s2["rows"]["evaluate"]
    assert s2["benchmark"] == "s2" and s2["speedup"] == row["speedup"] > 0
    assert row["ours_scores"]["knn_accuracy"] == row["sklearn_scores"]["knn_accuracy"]
    for k in ("pairwise_f", "bcubed_f", "nmi"):     # K-means of both sides: close, not equal
        assert abs(row["ours_scores"][k] - row["sklearn_scores"][k]) < 0.1, k
    assert s2["rows"]["train_cae"]["speedup"] > 0


def _suite_names() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("_run_all_names", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module             # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module.NAMES


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", _suite_names())
def test_run_all_quick_runs_each_benchmark_script(name, tmp_path, real_manual_dir):
    """CI runs every benchmark script in its quick setting through ``run_all.py --quick --only
    <name>`` (3-35 s each on 2 cores; one test per script, so the test workers share them), so
    none can break silently: the stage ends ``ok`` with its last-line JSON (optional peers such as
    faiss may be missing inside a script; its own peer may not), and the features and S2 rows
    check what they measure. Real data: bench_data.py times loading MNIST."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(BENCH.parent), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", name,
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=600)
    report = json.loads((tmp_path / "run_all.json").read_text())
    [row] = report["rows"]
    assert p.returncode == 0 and row["name"] == name and row["status"] == "ok", p.stderr[-2000:]
    md = (tmp_path / "run_all.md").read_text()
    assert row["stage"] in md and "failed" not in md
    check = {"features": _check_features, "s2_evaluation": _check_s2}.get(name)
    if check:
        check(row["result"])


def test_bench_features_unbuildable_peer_is_one_line(monkeypatch, capsys):
    pytest.importorskip("torch")

    def broken(name):
        raise RuntimeError("no such architecture here")
    fake = types.ModuleType("efficientnet_lite_pytorch")
    fake.EfficientNet = types.SimpleNamespace(from_name=broken)
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", fake)
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = BENCH / "bench_features.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--rows", "efficientnet_lite0"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("error: bench_features.py: cannot build the PyTorch peer "
                          "efficientnet_lite_pytorch EfficientNet('efficientnet-lite0')")
    assert "no such architecture here" in err


def test_run_all_collects_each_scripts_last_line_and_fails_on_a_broken_one(tmp_path, monkeypatch,
                                                                           capsys):
    """run_all on three stand-in scripts: one that works, one whose peer is missing (exit 2,
    the one-line message of _common.require_peers), one that crashes."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delenv("AECLUST_MALLOC", raising=False)
    import run_all
    scripts = {
        "ok.py": 'print("warming up")\nprint(\'{"speedup": 2.5, "ours_s": 0.1}\')',
        "nopeer.py": 'import sys\nprint("error: nopeer.py: its peer \'faiss\' is not installed '
                     '(faiss); install the benchmark extra", file=sys.stderr)\nsys.exit(2)',
        "broken.py": 'raise RuntimeError("shape mismatch in stage 2")',
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "SUITE", tuple(
        run_all.Bench(n[:-3], n, f"stage {n}", "peer", quick=("--x",)) for n in scripts))
    monkeypatch.setattr(run_all, "NAMES", tuple(n[:-3] for n in scripts))
    out = tmp_path / "res"
    assert run_all.main(["--quick", "--out", str(out)]) == 1          # broken.py failed
    report = json.loads((out / "run_all.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["ok"]["status"] == "ok" and rows["ok"]["speedup"] == 2.5
    assert rows["ok"]["result"] == {"speedup": 2.5, "ours_s": 0.1}
    assert rows["nopeer"]["status"] == "peer missing" and "faiss" in rows["nopeer"]["error"]
    assert rows["broken"]["status"] == "failed" and "shape mismatch" in rows["broken"]["error"]
    md = (out / "run_all.md").read_text()
    assert "| stage ok.py (`ok.py`) | - | - | peer | 2.50x |" in md and report["machine"]["cores"] >= 1
    assert ", malloc keep (aeclust_jax.host_memory)," in md
    assert "| failed: exit status 1: " in md and "shape mismatch" in md
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["failed"] == ["broken"] and summary["speedup"]["ok"] == 2.5
    assert run_all.main(["--quick", "--only", "ok", "--out", str(out)]) == 0   # broken not rerun
    again = json.loads((out / "run_all.json").read_text())         # the other rows are kept
    assert [r["name"] for r in again["rows"]] == ["ok", "nopeer", "broken"]
    assert again["rows"][2] == report["rows"][2] and again["rows"][0]["date"] >= rows["ok"]["date"]


def test_optional_peer_missing_is_reported_not_fatal(monkeypatch, capsys):
    """bench_kmeans / bench_knn time sklearnex, faiss and ott-jax when installed; an absent one is
    None (the JSON says "missing") and one stderr line naming the extra, not an exit."""
    monkeypatch.syspath_prepend(str(BENCH))
    import _common
    monkeypatch.setattr(sys, "meta_path", [_Absent("no_such_peer_xyz")] + sys.meta_path)
    monkeypatch.setattr(sys, "argv", ["bench_knn.py"])
    found = _common.optional_peers("json", "no_such_peer_xyz")
    assert found["json"] is json and found["no_such_peer_xyz"] is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optional peer 'no_such_peer_xyz' is not installed" in err
    assert "pip install -e '.[bench]'" in err and _common.MISSING == "missing"


def test_readme_speed_table_is_generated_from_the_saved_full_run(tmp_path, monkeypatch, capsys):
    """README's speed table is run_all's markdown of results/bench/full/run_all.json, byte for
    byte (regenerate: run_all.py --from-json ... --readme README.md), every stage made its rows
    from its script's JSON; --readme on a file without the markers is one error, file untouched."""
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all
    saved = BENCH.parent / "results" / "bench" / "full" / "run_all.json"
    report = json.loads(saved.read_text())
    table = run_all.markdown(report)
    readme = (BENCH.parent / "README.md").read_text()
    assert run_all.replace_block(readme, table) == readme
    assert "(table:" not in table and {r["name"] for r in report["rows"]} == set(run_all.NAMES)
    assert all(r["status"] == "ok" for r in report["rows"])
    copy = tmp_path / "README.md"
    copy.write_text(readme.replace(table, "| old |\n"))
    assert run_all.main(["--from-json", str(saved), "--readme", str(copy)]) == 0
    assert copy.read_text() == readme
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    capsys.readouterr()
    assert run_all.main(["--from-json", str(saved), "--readme", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run_all: ") and "plain.md" in err and len(err.splitlines()) == 1
    assert plain.read_text() == "no markers\n"



class _Parsed(Exception):
    """Raised in place of parsing: carries the parser a script built."""


def test_every_suite_script_loads_and_accepts_its_run_all_arguments(monkeypatch):
    """CI cannot afford run_all --quick (minutes): each script of the suite is loaded (its imports
    and definitions run) and the parser its main builds accepts run_all's full and quick
    arguments, so a broken import or a renamed option fails here; the README test above checks
    each stage's JSON keys against its rows function."""
    import argparse
    import inspect
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all
    real_parse = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise _Parsed(self)
    for bench in run_all.SUITE:
        main = runpy.run_path(str(BENCH / bench.script), run_name="suite_check")["main"]
        for args in {bench.full, bench.quick}:
            monkeypatch.setattr(sys, "argv", [bench.script, *args])
            monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
            with pytest.raises(_Parsed) as got:
                main(list(args)) if inspect.signature(main).parameters else main()
            monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real_parse)
            real_parse(got.value.args[0], list(args))       # SystemExit(2) on a bad option
