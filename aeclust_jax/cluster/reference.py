"""DSC-Net's published post-processing in numpy/scipy/scikit-learn (Ji et al. 2017,
panji1990/Deep-subspace-clustering-networks ``thrC`` / ``post_proC``), transcribed as published.

Not the fast path (that is ``dsc_affinity`` + ``spectral``): the oracle of the tests and the peer
of the benchmarks, kept in one place.
"""

from __future__ import annotations

import numpy as np


def thrC(C: np.ndarray, ro: float) -> np.ndarray:
    """C (N, N) -> per column, the largest |entries| until their sum exceeds ro * L1; rest 0.
    ro >= 1 returns C unchanged. A Python loop over the columns, as published."""
    if ro >= 1:
        return C
    N = C.shape[1]
    Cp = np.zeros((N, N))
    S = np.abs(np.sort(-np.abs(C), axis=0))
    Ind = np.argsort(-np.abs(C), axis=0)
    for i in range(N):
        cL1 = np.sum(S[:, i]).astype(float)
        csum, t = 0.0, 0
        while True:
            csum = csum + S[t, i]
            t = t + 1
            if csum > ro * cL1:
                Cp[Ind[0:t, i], i] = C[Ind[0:t, i], i]
                break
    return Cp


def post_proC_affinity(C: np.ndarray, K: int, d: int, alpha: float) -> np.ndarray:
    """C (N, N) -> affinity (N, N): symmetrise, rank d*K+1 ``svds``, U sqrt(S), rows normalised,
    Z = U U^T kept positive, |Z|^alpha / max, symmetrised."""
    from scipy.sparse.linalg import svds
    from sklearn.preprocessing import normalize

    C = 0.5 * (C + C.T)
    U, S, _ = svds(C, d * K + 1, v0=np.ones(C.shape[0]))
    U = U[:, ::-1].dot(np.diag(np.sqrt(S[::-1])))
    U = normalize(U, norm="l2", axis=1)
    Z = U.dot(U.T)
    Z = Z * (Z > 0)
    L = np.abs(Z ** alpha)
    L = L / L.max()
    return 0.5 * (L + L.T)


def post_proC(C: np.ndarray, K: int, d: int, alpha: float, seed: int = 0) -> np.ndarray:
    """C (N, N) -> labels (N,): ``post_proC_affinity`` then scikit-learn's SpectralClustering
    (precomputed affinity, arpack, discretize), as DSC-Net's code."""
    from sklearn import cluster

    sc = cluster.SpectralClustering(n_clusters=K, eigen_solver="arpack", affinity="precomputed",
                                    assign_labels="discretize", random_state=seed)
    return sc.fit_predict(post_proC_affinity(C, K, d, alpha))
