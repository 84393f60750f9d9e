"""K-means: inertia parity with scikit-learn (best of the same n_init), edge cases, jit/vmap/sharding."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from aeclust_jax.cluster import KMeans, kmeans
from aeclust_jax.data import load


def sk_inertias(x, k, n_init):
    best = SKKMeans(k, n_init=n_init, random_state=0, algorithm="lloyd").fit(x).inertia_
    single = SKKMeans(k, n_init=1, random_state=1, algorithm="lloyd").fit(x).inertia_
    return best, single


def check_quality(x, k, n_init=10):
    r = kmeans(x, k, key=jax.random.key(0), n_init=n_init)
    best, single = sk_inertias(np.asarray(x, np.float64), k, n_init)
    assert float(r.inertia) <= best * 1.005, (float(r.inertia), best)
    assert float(r.inertia) <= single * 1.005, (float(r.inertia), single)
    # inertia is what it claims: recompute from labels and centres
    x64 = np.asarray(x, np.float64)
    exact = np.sum((x64 - np.asarray(r.centers, np.float64)[np.asarray(r.labels)]) ** 2)
    assert float(r.inertia) == pytest.approx(exact, rel=1e-3)
    return r


def test_blobs_match_sklearn():
    x, y = make_blobs(3000, n_features=10, centers=6, cluster_std=2.0, random_state=0)
    r = check_quality(x.astype(np.float32), 6)
    assert adjusted_rand_score(y, np.asarray(r.labels)) > 0.99


def test_random_data_match_sklearn():
    x = np.random.default_rng(0).normal(size=(1500, 6)).astype(np.float32)
    check_quality(x, 7)


def test_mnist_pixels_match_sklearn(real_manual_dir):
    x = load("mnist", "test", manual_dir=real_manual_dir).images[:3000].reshape(3000, 784)
    check_quality(x.astype(np.float32) / 255.0, 10, n_init=3)


def test_float64():
    x = np.random.default_rng(1).normal(size=(800, 5))
    with jax.enable_x64(True):
        r = kmeans(x, 4, key=jax.random.key(0), n_init=5)
        assert r.centers.dtype == jnp.float64
        best, _ = sk_inertias(x, 4, 5)
        assert float(r.inertia) <= best * 1.005


def test_deterministic_and_wrapper():
    x = np.random.default_rng(2).normal(size=(500, 3)).astype(np.float32)
    a = kmeans(x, 5, key=jax.random.key(3), n_init=3)
    b = kmeans(x, 5, key=jax.random.key(3), n_init=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centers, b.centers)
    km = KMeans(5, n_init=3, seed=0).fit(x)
    np.testing.assert_array_equal(km.predict(x), km.labels_)
    assert km.cluster_centers_.shape == (5, 3) and km.inertia_ > 0 and km.n_iter_ >= 1
    np.testing.assert_array_equal(KMeans(5, n_init=3, seed=0).fit_predict(x), km.labels_)


def test_more_clusters_than_distinct_points():
    x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)  # 3 distinct points, duplicated
    r = kmeans(x, 5, key=jax.random.key(0), n_init=2)
    assert float(r.inertia) == 0.0
    assert np.all(np.isfinite(r.centers))
    assert len(np.unique(np.asarray(r.labels))) == 3


def test_single_point_and_explicit_init():
    r = kmeans(np.array([[1.0, 2.0]], np.float32), 1, key=jax.random.key(0))
    np.testing.assert_allclose(r.centers, [[1.0, 2.0]])
    assert int(r.labels[0]) == 0 and float(r.inertia) == 0.0
    x = np.array([[0.0], [0.1], [5.0], [5.1]], np.float32)
    r = kmeans(x, 2, key=jax.random.key(0), init=np.array([[0.0], [5.0]], np.float32))
    np.testing.assert_allclose(np.sort(np.asarray(r.centers[:, 0])), [0.05, 5.05], atol=1e-6)


def test_chunked_distances_agree():
    from aeclust_jax.cluster import _kmeans as K
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1000, 4)).astype(np.float32))
    c = x[:7]
    l1, d1 = K.assign(x, jnp.sum(x * x, 1), c)
    l2, d2 = K.assign(x, jnp.sum(x * x, 1), c, block=300)  # 1000 rows in 4 padded blocks
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-5)


def test_jit_and_vmap():
    x = np.random.default_rng(5).normal(size=(2, 300, 3)).astype(np.float32)
    key = jax.random.key(0)
    eager = [float(kmeans(xi, 3, key=key, n_init=2).inertia) for xi in x]
    jitted = jax.jit(lambda a: kmeans(a, 3, key=key, n_init=2).inertia)(x[0])
    vmapped = jax.vmap(lambda a: kmeans(a, 3, key=key, n_init=2).inertia)(x)
    np.testing.assert_allclose(jitted, eager[0], rtol=1e-5)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-5)


def test_two_device_sharded_input():
    code = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_num_cpu_devices", 2)
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from aeclust_jax.cluster import kmeans
        assert len(jax.devices()) == 2
        x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
        xs = jax.device_put(x, NamedSharding(Mesh(np.array(jax.devices()), ("b",)), P("b")))
        a = kmeans(x, 4, key=jax.random.key(0), n_init=3)
        b = kmeans(xs, 4, key=jax.random.key(0), n_init=3)
        assert abs(float(a.inertia) - float(b.inertia)) <= 1e-4 * float(a.inertia)
        assert (np.asarray(a.labels) == np.asarray(b.labels)).mean() > 0.99
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((5, 2), np.float32), k=6), "exceeds the number of samples"),
    (dict(x=np.zeros((5,), np.float32), k=2), "must be 2-D"),
    (dict(x=np.zeros((5, 2), np.int32), k=2), "floating point"),
    (dict(x=np.zeros((5, 2), np.float32), k=2, init="kmeans++"), "init must be one of"),
    (dict(x=np.zeros((5, 2), np.float32), k=2, init=np.zeros((3, 2))), "init array must have shape"),
])
def test_bad_input(kwargs, match):
    x, k = kwargs.pop("x"), kwargs.pop("k")
    with pytest.raises(ValueError, match=match):
        kmeans(x, k, key=jax.random.key(0), **kwargs)
