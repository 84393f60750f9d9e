// A direct convolution as an XLA:CPU custom call (``layers/native.py`` compiles and registers
// it; ``layers/convolution.py`` picks it, ``_form`` "direct").
//
// x (N, Hp, Wp, C) float32, already zero-padded; kernel packed as (O / B, KH, KW * C, B) (B = 8,
// 16 or 32 outputs a block) -> y (N, Ho, Wo, O), stride s:
//   y[n, i, j, b * B + o] = sum_kh sum_t x[n, s * i + kh, (s * j) * C + t] * k[b, kh, t, o],
// t running over the KW * C values of a kernel row, which are contiguous in an NHWC row.
// Each output row is one work item; in it, blocks of P pixels x B outputs are accumulated in
// registers (P * B / 8 vectors: 8 of them), one FMA per input value and 8 outputs. XLA's conv
// ran such layers (few input channels, stride 2, maps too large for Winograd) at 60-90 GFLOP/s
// on a 2-core AVX2 host; this runs them at 120-175 (docs/natural_images.md, "Direct convs").
// Every output element is summed by one thread in a fixed order (kh, then t): the result does
// not depend on the thread count.

#include "native_common.h"

namespace {

using namespace aeclust;

// y[p * y_step + q * 8 + lane] for P pixels x OB vectors of outputs: the pixels' kernel windows
// start at x_row[p * x_step] in the first of KH rows x_row_step apart.
template <int P, int OB>
inline void pixel_block(const float* x_row, int64_t x_row_step, int64_t x_step, int kh_n, int kwc,
                        const float* k, float* y, int64_t y_step) {
  vf acc[P][OB];
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < OB; ++q) acc[p][q] = vf{};
  for (int kh = 0; kh < kh_n; ++kh) {
    const float* r = x_row + kh * x_row_step;
    const float* kr = k + (int64_t)kh * kwc * OB * kLanes;
#pragma GCC unroll 4
    for (int t = 0; t < kwc; ++t) {
      vf kv[OB];
      for (int q = 0; q < OB; ++q) kv[q] = load(kr + (t * OB + q) * kLanes);
      for (int p = 0; p < P; ++p) {
        const float v = r[p * x_step + t];
        for (int q = 0; q < OB; ++q) acc[p][q] += kv[q] * v;
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < OB; ++q) store(y + p * y_step + q * kLanes, acc[p][q]);
}

template <int P, int OB>
void direct_conv(const float* x, const float* k, float* y, int64_t n_images, int64_t hp,
                 int64_t wp, int64_t c, int64_t kh_n, int64_t kwc, int64_t s, int64_t ho,
                 int64_t wo, int64_t o, ffi::ThreadPool& pool) {
  constexpr int64_t B = OB * kLanes;
  const int64_t kernel_block = kh_n * kwc * B;
  auto output_row = [&](int64_t r) {          // r = image * ho + output row
    const int64_t img = r / ho, i = r % ho;
    const float* x_row = x + (img * hp + s * i) * wp * c;
    float* y_row = y + r * wo * o;
    for (int64_t b = 0; b < o / B; ++b) {
      const float* kb = k + b * kernel_block;
      int64_t j = 0;
      for (; j + P <= wo; j += P)
        pixel_block<P, OB>(x_row + s * j * c, wp * c, s * c, kh_n, kwc, kb, y_row + j * o + b * B, o);
      for (; j < wo; ++j)
        pixel_block<1, OB>(x_row + s * j * c, wp * c, s * c, kh_n, kwc, kb, y_row + j * o + b * B, o);
    }
  };
  parallel_for(pool, n_images * ho, output_row);
}

using Array4 = ffi::Buffer<ffi::F32, 4>;   // (the macro below splits on commas in <>)

ffi::Error DirectConvImpl(ffi::ThreadPool pool, Array4 x, Array4 k, ffi::Result<Array4> y,
                          int64_t stride) {
  const auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  const int64_t n_images = xd[0], hp = xd[1], wp = xd[2], c = xd[3];
  const int64_t blocks = kd[0], kh_n = kd[1], kwc = kd[2], b = kd[3];
  const int64_t ho = yd[1], wo = yd[2], o = yd[3];
  if (stride < 1 || kwc % c || yd[0] != n_images || blocks * b != o ||
      (ho - 1) * stride + kh_n > hp || ((wo - 1) * stride) * c + kwc > wp * c)
    return ffi::Error::InvalidArgument(
        "shapes must be x (N, Hp, Wp, C), kernel (O / B, KH, KW * C, B) -> y (N, Ho, Wo, O) "
        "with every window inside x");
  const float* xs = x.typed_data();
  const float* ks = k.typed_data();
  float* ys = y->typed_data();
  // 8 accumulators a block: 2 pixels x 32 outputs, 4 x 16 or 8 x 8 (measured on the stem
  // 7x7 / 2: 12 accumulators, 3 x 32, were 1.3x slower)
  if (b == 32) {
    direct_conv<2, 4>(xs, ks, ys, n_images, hp, wp, c, kh_n, kwc, stride, ho, wo, o, pool);
  } else if (b == 16) {
    direct_conv<4, 2>(xs, ks, ys, n_images, hp, wp, c, kh_n, kwc, stride, ho, wo, o, pool);
  } else if (b == 8) {
    direct_conv<8, 1>(xs, ks, ys, n_images, hp, wp, c, kh_n, kwc, stride, ho, wo, o, pool);
  } else {
    return ffi::Error::InvalidArgument("outputs must come in blocks of 8, 16 or 32");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AeclustDirectConv, DirectConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array4>()
                                  .Arg<Array4>()
                                  .Ret<Array4>()
                                  .Attr<int64_t>("stride"));
