"""Clustering in jnp: kmeans / KMeans, knn_classify, knn_graph, spectral + dsc_affinity, tsne backends."""

from aeclust_jax.cluster._kmeans import KMeans, KMeansResult, kmeans
from aeclust_jax.cluster._knn import knn_classify, knn_graph
from aeclust_jax.cluster._spectral import dsc_affinity, spectral, spectral_embedding
from aeclust_jax.cluster._tsne import available_backends as tsne_backends
from aeclust_jax.cluster._tsne import kl_divergence, tsne

__all__ = ["kmeans", "KMeans", "KMeansResult", "knn_classify", "knn_graph", "spectral", "spectral_embedding", "dsc_affinity",
           "tsne", "tsne_backends", "kl_divergence"]
