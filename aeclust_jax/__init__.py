"""aeclust_jax: autoencoder + clustering studies in JAX/Flax, fast.

Subpackages: ``data`` (TF-free tfds builders, ``load``), ``metrics`` (jnp clustering and image
metrics), ``cluster`` (kmeans, spectral, knn, tsne), ``models`` (Flax modules + registry),
``train`` (jitted, sharded fit loop + orbax checkpoints), ``studies`` (one recipe per study).
"""

__version__ = "0.1.0"
