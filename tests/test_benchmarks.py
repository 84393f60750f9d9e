"""Benchmarks whose peer package is missing stop at once with one line naming the extra."""

import pathlib
import runpy
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
PEERS = {  # script -> a peer it cannot run without
    "bench_train_step.py": "torch", "bench_pipeline.py": "torch", "bench_dsc.py": "torch",
    "bench_kmeans.py": "faiss", "bench_tsne.py": "openTSNE", "bench_metrics.py": "sklearn",
    "bench_knn.py": "sklearn", "bench_spectral.py": "sklearn",
}


def test_every_benchmark_with_a_peer_is_listed():
    scripts = {p.name for p in BENCH.glob("bench_*.py")}
    assert scripts - set(PEERS) == {"bench_data.py"}   # its peer is numpy, a core dependency


@pytest.mark.parametrize("script, peer", sorted(PEERS.items()))
def test_missing_peer_is_one_line_naming_the_extra(script, peer, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, peer, None)       # `import peer` now fails as if absent
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", [str(BENCH / script)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {script}: its peer {peer!r} is not installed")
    assert "pip install -e '.[bench]'" in err
