"""K-means: inertia parity with scikit-learn (best of the same n_init), sklearn's empty-cluster
relocation, the KMeans estimator (clone, Pipeline, GridSearchCV), edge cases, jit/vmap/sharding."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from aeclust_jax.cluster import KMeans, kmeans
from aeclust_jax.data import load


def sk_inertias(x, n_clusters, n_init):
    best = SKKMeans(n_clusters, n_init=n_init, random_state=0, algorithm="lloyd").fit(x).inertia_
    single = SKKMeans(n_clusters, n_init=1, random_state=1, algorithm="lloyd").fit(x).inertia_
    return best, single


def check_quality(x, n_clusters, n_init=10):
    r = kmeans(x, n_clusters, key=jax.random.key(0), n_init=n_init)
    best, single = sk_inertias(np.asarray(x, np.float64), n_clusters, n_init)
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
    km = KMeans(5, n_init=3, random_state=3).fit(x)
    np.testing.assert_array_equal(km.labels_, a.labels)     # random_state=s is key=s
    np.testing.assert_allclose(km.cluster_centers_, a.centers)
    assert km.inertia_ == float(a.inertia) and km.n_iter_ == int(a.n_iter)
    np.testing.assert_array_equal(km.predict(x), km.labels_)
    np.testing.assert_array_equal(KMeans(5, n_init=3, random_state=3).fit_predict(x), km.labels_)


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
    (dict(x=np.zeros((5, 2), np.float32), n_clusters=6), "exceeds the number of samples"),
    (dict(x=np.zeros((5, 2), np.float32), n_clusters=0), "positive int"),
    (dict(x=np.zeros((5,), np.float32), n_clusters=2), "must be 2-D"),
    (dict(x=np.zeros((5, 2), np.int32), n_clusters=2), "floating point"),
    (dict(x=np.zeros((5, 2), np.float32), n_clusters=2, init="kmeans++"), "init must be one of"),
    (dict(x=np.zeros((5, 2), np.float32), n_clusters=2, init=np.zeros((3, 2))), "init array must have shape"),
])
def test_bad_input(kwargs, match):
    x, n_clusters = kwargs.pop("x"), kwargs.pop("n_clusters")
    with pytest.raises(ValueError, match=match):
        kmeans(x, n_clusters, key=jax.random.key(0), **kwargs)
    with pytest.raises(TypeError, match="key must be"):
        kmeans(np.zeros((5, 2), np.float32), 2, key=0.5)


# ----------------------------------------------------------------------------- API conventions

def test_key_forms_and_deprecated_k():
    x = np.random.default_rng(6).normal(size=(200, 3)).astype(np.float32)
    ref = kmeans(x, 4, key=jax.random.key(7), n_init=2)
    for key in (7, np.int64(7), jax.random.key_data(jax.random.key(7))):   # int seed; a legacy raw key is wrapped
        np.testing.assert_array_equal(kmeans(x, 4, key=key, n_init=2).centers, ref.centers)
    with pytest.warns(DeprecationWarning, match="n_clusters"):
        old = kmeans(x, k=4, key=7, n_init=2)
    np.testing.assert_array_equal(old.centers, ref.centers)
    with pytest.raises(TypeError, match="both"):
        kmeans(x, n_clusters=4, k=4, key=7)
    assert isinstance(ref.labels, jax.Array) and isinstance(ref.inertia, jax.Array)


# ----------------------------------------------------------------------------- empty clusters

def _blobs3():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(c, 0.5, (40, 2)) for c in ((0, 0), (10, 0), (0, 10))])


@pytest.mark.parametrize("init", [
    # one centre far from every point: one empty cluster, re-seeded by the farthest point
    [[0.0, 0.0], [0.2, 0.1], [100.0, 100.0], [10.0, 0.0]],
    # three far centres: three empty clusters, all re-seeded from blob (0, 10)
    [[0.0, 0.0], [100.0, 100.0], [-100.0, 50.0], [200.0, -30.0], [10.0, 0.0]],
])
@pytest.mark.parametrize("max_iter", [1, 2, 300])
def test_empty_clusters_relocated_like_sklearn(init, max_iter):
    """sklearn's _relocate_empty_clusters: the farthest points seed the empty clusters AND leave
    their old clusters (whose centres are then computed without them). Same init, float64:
    same centres and labels after 1, 2 and all iterations."""
    x, init = _blobs3(), np.array(init)
    sk = SKKMeans(len(init), init=init, n_init=1, max_iter=max_iter, algorithm="lloyd").fit(x)
    with jax.enable_x64(True):
        r = kmeans(x, len(init), key=0, init=init, max_iter=max_iter)
        centers, labels = np.asarray(r.centers), np.asarray(r.labels)
        assert centers.dtype == np.float64
    np.testing.assert_allclose(centers, sk.cluster_centers_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(labels, sk.labels_)
    assert int(r.n_iter) == sk.n_iter_
    assert float(r.inertia) == pytest.approx(sk.inertia_, rel=1e-12)


# ----------------------------------------------------------------------------- the estimator

def test_estimator_params_and_clone():
    km = KMeans(4, init="random", n_init=3, max_iter=50, tol=1e-3, random_state=5)
    assert km.get_params() == dict(n_clusters=4, init="random", n_init=3, max_iter=50, tol=1e-3,
                                   random_state=5)
    assert km.set_params(n_clusters=6, random_state=None) is km
    assert (km.n_clusters, km.random_state) == (6, None)
    x = np.random.default_rng(8).normal(size=(120, 2)).astype(np.float32)
    km.set_params(random_state=5).fit(x)
    c = clone(km)
    assert c.get_params() == km.get_params() and not hasattr(c, "labels_")
    with pytest.raises(NotFittedError):
        c.predict(x)
    np.testing.assert_array_equal(c.fit(x).labels_, km.labels_)      # same params, same answer
    with pytest.raises(ValueError, match="features"):
        km.predict(x[:, :1])
    # fitted attributes are numpy; transform = distances to the centres; score = -inertia
    assert all(isinstance(v, np.ndarray) for v in (km.labels_, km.cluster_centers_))
    assert type(km.inertia_) is float and type(km.n_iter_) is int and km.n_features_in_ == 2
    d = km.transform(x)
    ref = np.linalg.norm(x[:, None, :] - km.cluster_centers_[None], axis=2)
    np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(km.predict(x), np.argmin(ref, axis=1))
    assert km.score(x) == pytest.approx(-km.inertia_, rel=1e-5)
    assert list(km.get_feature_names_out()) == [f"kmeans{i}" for i in range(6)]


def test_estimator_matches_sklearn_on_blobs():
    x, y = make_blobs(2000, n_features=5, centers=5, cluster_std=1.5, random_state=1)
    ours = KMeans(5, random_state=0).fit(x)
    sk = SKKMeans(5, n_init=10, random_state=0).fit(x)
    assert ours.inertia_ <= sk.inertia_ * 1.005 and sk.inertia_ <= ours.inertia_ * 1.005
    assert adjusted_rand_score(sk.labels_, ours.labels_) > 0.99
    assert ours.score(x[:500]) == pytest.approx(sk.score(x[:500]), rel=5e-3)


def test_pipeline_with_scaler():
    x, y = make_blobs(600, n_features=4, centers=3, random_state=2)
    x = x * [1.0, 10.0, 100.0, 0.1]                       # unequal scales: the scaler matters
    ours = Pipeline([("scale", StandardScaler()), ("km", KMeans(3, random_state=0))]).fit(x)
    sk = Pipeline([("scale", StandardScaler()), ("km", SKKMeans(3, n_init=10, random_state=0))]).fit(x)
    assert ours[-1].inertia_ == pytest.approx(sk[-1].inertia_, rel=5e-3)
    np.testing.assert_array_equal(ours.predict(x), ours[-1].labels_)
    assert adjusted_rand_score(sk.predict(x), ours.predict(x)) > 0.99
    assert ours.transform(x).shape == (600, 3)
    assert ours.score(x) == pytest.approx(sk.score(x), rel=5e-3)


def test_grid_search_over_n_clusters():
    # one compile per n_clusters (~5 s each on a loaded 2-core CPU), so two values and no refit
    x, _ = make_blobs(300, n_features=3, centers=4, cluster_std=0.8, random_state=3)
    grid, cv = {"n_clusters": [3, 4]}, KFold(3, shuffle=True, random_state=0)
    ours = GridSearchCV(KMeans(random_state=0), grid, cv=cv, refit=False).fit(x)  # KMeans.score
    sk = GridSearchCV(SKKMeans(n_init=10, random_state=0), grid, cv=cv, refit=False).fit(x)
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], sk.cv_results_["mean_test_score"],
                               rtol=5e-3)
    assert ours.best_params_ == sk.best_params_ == {"n_clusters": 4}   # -inertia grows with k


# ----------------------------------------------------------------------------- changed-rows sums

@pytest.fixture
def delta_sums_on(monkeypatch):
    """The changed-rows centre update (on from 2^22 entries of x) switched on for small inputs."""
    from aeclust_jax.cluster import _kmeans as K
    monkeypatch.setattr(K, "_DELTA_MIN_ENTRIES", 0)
    assert K._delta_cap(100, 2) == 12


def test_delta_sums_match_sklearn(delta_sums_on):
    x, y = make_blobs(3000, n_features=10, centers=6, cluster_std=2.0, random_state=0)
    r = check_quality(x.astype(np.float32), 6)
    assert adjusted_rand_score(y, np.asarray(r.labels)) > 0.99
    check_quality(np.random.default_rng(0).normal(size=(1500, 6)).astype(np.float32), 7)


def test_delta_sums_duplicates_constant_ties(delta_sums_on):
    x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)           # k > distinct points
    r = kmeans(x, 5, key=0, n_init=2)
    assert float(r.inertia) == 0.0 and np.all(np.isfinite(r.centers))
    r = kmeans(np.full((40, 3), 2.5, np.float32), 3, key=0, n_init=2)   # constant input
    assert float(r.inertia) == 0.0
    g = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), -1).reshape(-1, 2).astype(np.float32)
    check_quality(g, 4, n_init=4)                                     # distance ties


@pytest.mark.parametrize("max_iter", [2, 300])
def test_delta_sums_empty_clusters_like_sklearn(delta_sums_on, max_iter):
    """Relocation on top of the changed-rows sums: sklearn's centres and labels (float64)."""
    x = _blobs3()
    init = np.array([[0.0, 0.0], [100.0, 100.0], [-100.0, 50.0], [200.0, -30.0], [10.0, 0.0]])
    sk = SKKMeans(len(init), init=init, n_init=1, max_iter=max_iter, algorithm="lloyd").fit(x)
    with jax.enable_x64(True):
        r = kmeans(x, len(init), key=0, init=init, max_iter=max_iter)
        np.testing.assert_allclose(np.asarray(r.centers), sk.cluster_centers_, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(np.asarray(r.labels), sk.labels_)
