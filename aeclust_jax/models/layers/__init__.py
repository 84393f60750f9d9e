"""Fast exact building blocks for the studies' conv nets: pure functions and Flax modules.

    y = conv(x, kernel, stride, pads)            # the fastest of these convs for the backend
    y = conv2d(x, kernel, stride, pads)          # == lax conv; kernel gradient as GEMMs
    y = pointwise_conv(x, kernel, stride)        # == lax 1x1 conv, as one matmul
    y = winograd_conv3x3(x, kernel, pads, m)     # == lax 3x3 stride-1 conv, Winograd F(m, 3)
    y = conv_transpose(z, kernel, stride)        # == lax.conv_transpose 'SAME' (nn.ConvTranspose)
    y = upsample_conv(x, kernel, bias, "SAME")   # == conv3x3(nearest_up2(x)), x (N, H, W, Cin)
    y = max_pool_2x2(x)                          # == nn.max_pool(x, (2, 2), (2, 2), "SAME")
    y = depthwise_conv(x, kernel, stride)        # == lax grouped conv, feature_group_count=C

    Conv, ConvTranspose, DepthwiseConv, Conv3x3  # nn.Conv's parameters, computed by the above
    BatchNorm                                    # nn.BatchNorm's variables; training gradient
                                                 # by hand (batch_norm_train)

Each is the function of the lax / flax op it names (to float summation order), with the same
parameters, computed in a form XLA:CPU runs faster; the module of each says why and what it
measured:

    base.py         the backend switch (cpu_kernels), tap slices, 'SAME' padding
    convolution.py  conv2d and its hand-written gradients (GEMM, Winograd, narrow, sub-pixel and
                    small-map forms), conv, pointwise_conv, conv_transpose
    winograd.py     Winograd F(2x2 / 4x4, 3x3) forward and kernel gradient
    upsample.py     upsample_conv: a conv of a x2 nearest-upsampled map on the small map
    pooling.py      max_pool_2x2 with XLA's first-maximum gradient as fused elementwise ops
    depthwise.py    depthwise_conv as shifted slices
    normalization.py  BatchNorm and batch_norm_train (its gradient in two passes over the map)
    modules.py      the Flax modules

These kernels are for XLA:CPU. On a GPU (or TPU) ``Conv``, ``upsample_conv`` and ``max_pool_2x2``
use XLA's own conv and reduce-window gradients (cuDNN's), the same values: ``cpu_kernels()``
decides at trace time, and ``AECLUST_KERNELS=cpu|xla`` forces one side (e.g. to time both on one
device).
``BatchNorm`` is the same on every backend (its gradient not yet timed on a GPU).

Each function above (and BatchNorm's two modes) is one jitted program (``base.one_program``): a
model run outside ``jit`` compiles each layer once per shape instead of op by op (ResNet-18's
eager apply 11.5 -> 2.1 s); inside a jitted step XLA inlines them.
"""

from aeclust_jax.models.layers.base import cpu_kernels, same_padding
from aeclust_jax.models.layers.convolution import conv, conv2d, conv_transpose, pointwise_conv
from aeclust_jax.models.layers.depthwise import depthwise_conv
from aeclust_jax.models.layers.modules import Conv, Conv3x3, ConvTranspose, DepthwiseConv
from aeclust_jax.models.layers.normalization import BatchNorm, batch_norm_train
from aeclust_jax.models.layers.pooling import fused_max_pool_2x2, max_pool_2x2
from aeclust_jax.models.layers.upsample import conv3x3, upsample_conv
from aeclust_jax.models.layers.winograd import winograd_conv3x3

__all__ = ("BatchNorm", "Conv", "Conv3x3", "ConvTranspose", "DepthwiseConv", "batch_norm_train",
           "conv", "conv2d", "conv3x3", "conv_transpose", "cpu_kernels", "depthwise_conv",
           "fused_max_pool_2x2", "max_pool_2x2", "pointwise_conv", "same_padding",
           "upsample_conv", "winograd_conv3x3")
