"""S3: fully connected classifier and autoencoder (autoencoder pretraining with 1% of the labels).

    clf = mlp_classifier(hidden_widths=(10,))                       # 784 -> 10 -> 10 classes
    logits = clf.apply(params, x)                                   # x: (N, 28, 28, 1) float

    ae = mlp_autoencoder(encoder_widths=(64, 10), head_widths=(10,))
    params = ae.init(key, x)        # {'params': {'encoder', 'decoder', 'head'}}
    recon, logits = ae.apply(params, x)                             # (N, 28, 28, 1), (N, 10)
    code = ae.apply(params, x, method=MLPAutoencoder.encode)        # (N, encoder_widths[-1])

Layout follows the seed's own code (the book "Python raw-coding deep learning", ch. 13,
``Autoencoder``): an encoder of dense layers whose last width is the code; a decoder that mirrors
the encoder's hidden widths and ends at the flattened image; a supervised head (dense hidden layers
+ a linear output) on the code. Every dense layer except the classifier output uses the
activation, the code layer and the reconstruction layer included, as in the authors' code.
``init_std`` draws weights from N(0, init_std^2) with zero biases (the authors' 0.03); None keeps
Flax's default (LeCun normal). The top-level parameter groups ``encoder`` / ``decoder`` / ``head``
are what a frozen-encoder optimizer masks.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": nn.tanh, "none": lambda x: x}


def _check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choices: {', '.join(ACTIVATIONS)}")


def _check_widths(what: str, widths: Sequence[int], *, allow_empty: bool) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if not widths and not allow_empty:
        raise ValueError(f"{what} must name at least one width")
    if any(w < 1 for w in widths):
        raise ValueError(f"{what} must be positive integers, got {list(widths)}")
    return widths


class DenseStack(nn.Module):
    """(N, D_in) -> (N, widths[-1]): dense layers, each followed by the activation except
    the last when ``activate_last`` is False."""
    widths: Sequence[int]
    activation: str = "relu"
    activate_last: bool = True
    init_std: float | None = 0.03

    @nn.compact
    def __call__(self, x):
        if self.init_std is None:
            kernel_init = nn.initializers.lecun_normal()
        else:
            kernel_init = nn.initializers.normal(stddev=self.init_std)
        act = ACTIVATIONS[self.activation]
        for i, w in enumerate(self.widths):
            x = nn.Dense(w, kernel_init=kernel_init, name=f"dense{i}")(x)
            if i < len(self.widths) - 1 or self.activate_last:
                x = act(x)
        return x


def _flatten(x):
    """(N, H, W, C) or (N, D) -> (N, H*W*C) float32."""
    return jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)


class MLPClassifier(nn.Module):
    """(N, H, W, C) images -> (N, num_classes) logits through ``hidden_widths`` dense layers."""
    hidden_widths: Sequence[int] = (10,)
    num_classes: int = 10
    activation: str = "relu"
    init_std: float | None = 0.03

    @nn.compact
    def __call__(self, x):
        widths = tuple(self.hidden_widths) + (self.num_classes,)
        return DenseStack(widths, self.activation, activate_last=False, init_std=self.init_std,
                          name="head")(_flatten(x))


class MLPAutoencoder(nn.Module):
    """Dense autoencoder with a classifier head on its code.

    encode: (N, H, W, C) -> (N, encoder_widths[-1]); decode: code -> (N, H, W, C) in the input's
    scale; classify: images -> (N, num_classes) logits; __call__ returns (reconstruction, logits)
    so that ``init`` creates all three parameter groups.
    """
    image_shape: Sequence[int] = (28, 28, 1)
    encoder_widths: Sequence[int] = (10,)
    head_widths: Sequence[int] = (10,)
    num_classes: int = 10
    activation: str = "relu"
    code_activation: str = "relu"
    output_activation: str = "relu"
    init_std: float | None = 0.03

    def setup(self):
        enc = tuple(self.encoder_widths)
        self.encoder_hidden = DenseStack(enc[:-1], self.activation, init_std=self.init_std)
        self.encoder_code = DenseStack(enc[-1:], self.code_activation, init_std=self.init_std)
        n_pixels = 1
        for s in self.image_shape:
            n_pixels *= int(s)
        dec = tuple(reversed(enc[:-1]))
        self.decoder_hidden = DenseStack(dec, self.activation, init_std=self.init_std)
        self.decoder_out = DenseStack((n_pixels,), self.output_activation, init_std=self.init_std)
        self.head = DenseStack(tuple(self.head_widths) + (self.num_classes,), self.activation,
                               activate_last=False, init_std=self.init_std)

    def encode(self, x):
        return self.encoder_code(self.encoder_hidden(_flatten(x)))

    def decode(self, code):
        out = self.decoder_out(self.decoder_hidden(code))
        return jnp.reshape(out, (code.shape[0], *self.image_shape))

    def classify_code(self, code):
        return self.head(code)

    def classify(self, x):
        return self.head(self.encode(x))

    def __call__(self, x):
        code = self.encode(x)
        return self.decode(code), self.head(code)


def mlp_classifier(*, hidden_widths: Sequence[int] = (10,), num_classes: int = 10,
                   activation: str = "relu", init_std: float | None = 0.03,
                   image_shape: Sequence[int] | None = None) -> MLPClassifier:
    """The seed's MLP: images -> hidden dense layers (ReLU) -> linear logits.

    ``image_shape`` is accepted for a uniform registry call and unused (inputs are flattened).
    """
    _check_activation(activation)
    hidden = _check_widths("hidden_widths", hidden_widths, allow_empty=True)
    return MLPClassifier(hidden, int(num_classes), activation, init_std)


def mlp_autoencoder(*, image_shape: Sequence[int] = (28, 28, 1), encoder_widths: Sequence[int] = (10,),
                    head_widths: Sequence[int] = (10,), num_classes: int = 10,
                    activation: str = "relu", code_activation: str = "relu",
                    output_activation: str = "relu", init_std: float | None = 0.03) -> MLPAutoencoder:
    """The seed's autoencoder; ``encoder_widths[-1]`` is the code width (10, or 1 in experiment 6)."""
    for a in (activation, code_activation, output_activation):
        _check_activation(a)
    enc = _check_widths("encoder_widths", encoder_widths, allow_empty=False)
    head = _check_widths("head_widths", head_widths, allow_empty=True)
    return MLPAutoencoder(tuple(int(s) for s in image_shape), enc, head, int(num_classes),
                          activation, code_activation, output_activation, init_std)
