// Winograd's input and output transforms as XLA:CPU custom calls (``layers/native.py``
// compiles and registers them; ``layers/winograd.py`` has the same functions in jnp, the
// fallback).
//
// Input: x (N, H, W, C) float32, C a multiple of 8, zero-padded by (pt, pl) above and left, cut
// into (m + 2)^2 tiles every m pixels (th x tw tiles an image; pixels outside x read as 0)
// -> v ((m + 2)^2, N, th * tw, C): v[u * (m + 2) + w, n, tile, c] = (BT d B)[u, w] of tile d.
// Output: mm ((m + 2)^2, N, th * tw, C) -> y (N, Ho, Wo, C): the m x m pixels AT M A of each
// tile's M, cropped to Ho x Wo.
//
// XLA runs the jnp version at a third of this machine's elementwise rate (docs/natural_images.md,
// "Where a Winograd conv's time goes"). Here each tile row is transformed in registers, 8
// channels at a time, into a buffer of the row's tiles, then copied to the (m + 2)^2 planes with
// streaming stores (the planes are read next by the GEMMs, not by this core's cache).
// Every output element is computed by one thread in a fixed order: the result does not depend
// on the thread count.

#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "native_common.h"

namespace {

using namespace aeclust;

// r[k * rs] = sum_i BT[k][i] d[i * s] for Winograd's BT (Lavin & Gray 2016), as sparse sums.
template <int M> struct Bt;
template <> struct Bt<4> {
  static void apply(const vf* d, vf* r, int s, int rs) {
    vf d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    vf a = d4 - 4 * d2, b = d3 - 4 * d1, c = d4 - d2, e = 2 * (d3 - d1);
    r[0] = 4 * d0 - 5 * d2 + d4;
    r[rs] = a + b;
    r[2 * rs] = a - b;
    r[3 * rs] = c + e;
    r[4 * rs] = c - e;
    r[5 * rs] = 4 * d1 - 5 * d3 + d5;
  }
};
template <> struct Bt<2> {
  static void apply(const vf* d, vf* r, int s, int rs) {
    vf d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s];
    r[0] = d0 - d2;
    r[rs] = d1 + d2;
    r[2 * rs] = d2 - d1;
    r[3 * rs] = d1 - d3;
  }
};

// r[k * rs] = sum_i AT[k][i] d[i * s] for Winograd's AT.
template <int M> struct At;
template <> struct At<4> {
  static void apply(const vf* d, vf* r, int s, int rs) {
    vf s12 = d[s] + d[2 * s], d12 = d[s] - d[2 * s];
    vf s34 = d[3 * s] + d[4 * s], d34 = d[3 * s] - d[4 * s];
    r[0] = d[0] + s12 + s34;
    r[rs] = d12 + 2 * d34;
    r[2 * rs] = s12 + 4 * s34;
    r[3 * rs] = d12 + 8 * d34 + d[5 * s];
  }
};
template <> struct At<2> {
  static void apply(const vf* d, vf* r, int s, int rs) {
    r[0] = d[0] + d[s] + d[2 * s];
    r[rs] = d[s] - d[2 * s] - d[3 * s];
  }
};

void copy_out(float* dst, const float* src, int64_t len) {
#if defined(__AVX__)
  if (reinterpret_cast<uintptr_t>(dst) % 32 == 0) {
    for (int64_t k = 0; k < len; k += kLanes) _mm256_stream_ps(dst + k, _mm256_loadu_ps(src + k));
    return;
  }
#endif
  std::memcpy(dst, src, len * sizeof(float));
}

template <int M>
void input_transform(const float* x, float* v, int64_t n_images, int64_t h, int64_t w,
                     int64_t c, int64_t pt, int64_t pl, int64_t th, int64_t tw,
                     ffi::ThreadPool& pool) {
  constexpr int A = M + 2;
  const int64_t plane = n_images * th * tw * c;
  const int64_t row_len = tw * c;
  auto tile_row = [&](int64_t r) {          // r = image * th + tile row
    const int64_t img = r / th, ti = r % th;
    thread_local std::vector<float> buf;    // (A * A, tw, c): this row's transformed tiles
    buf.resize(A * A * row_len);
    vf d[A][A], t[A][A], o[A][A];
    for (int64_t tj = 0; tj < tw; ++tj) {
      const int64_t y0 = ti * M - pt, x0 = tj * M - pl;
      const bool inside = y0 >= 0 && x0 >= 0 && y0 + A <= h && x0 + A <= w;
      for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
        for (int i = 0; i < A; ++i)
          for (int j = 0; j < A; ++j) {
            const int64_t yy = y0 + i, xx = x0 + j;
            d[i][j] = inside || (yy >= 0 && yy < h && xx >= 0 && xx < w)
                          ? load(x + ((img * h + yy) * w + xx) * c + c0) : vf{};
          }
        for (int j = 0; j < A; ++j) Bt<M>::apply(&d[0][j], &t[0][j], A, A);   // BT d
        for (int u = 0; u < A; ++u) Bt<M>::apply(&t[u][0], &o[u][0], 1, 1);   // (BT d) B
        float* dst = buf.data() + tj * c + c0;
        for (int u = 0; u < A; ++u)
          for (int k = 0; k < A; ++k) store(dst + (u * A + k) * row_len, o[u][k]);
      }
    }
    for (int p = 0; p < A * A; ++p)
      copy_out(v + p * plane + r * row_len, buf.data() + p * row_len, row_len);
  };
  parallel_for(pool, n_images * th, tile_row);
#if defined(__AVX__)
  _mm_sfence();
#endif
}

template <int M>
void output_transform(const float* mm, float* y, int64_t n_images, int64_t ho, int64_t wo,
                      int64_t c, int64_t th, int64_t tw, ffi::ThreadPool& pool) {
  constexpr int A = M + 2;
  const int64_t plane = n_images * th * tw * c;
  const int64_t row_len = tw * c;
  auto tile_row = [&](int64_t r) {          // r = image * th + tile row
    const int64_t img = r / th, ti = r % th;
    thread_local std::vector<float> buf;    // (A * A, tw, c): this row's tiles, read plane by plane
    buf.resize(A * A * row_len);
    for (int p = 0; p < A * A; ++p)
      std::memcpy(buf.data() + p * row_len, mm + p * plane + r * row_len, row_len * sizeof(float));
    vf d[A][A], t[M][A], o[M][M];
    const int rows = (int)std::min<int64_t>(M, ho - ti * M);
    for (int64_t tj = 0; tj < tw; ++tj) {
      const int cols = (int)std::min<int64_t>(M, wo - tj * M);
      for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
        const float* src = buf.data() + tj * c + c0;
        for (int u = 0; u < A; ++u)
          for (int k = 0; k < A; ++k) d[u][k] = load(src + (u * A + k) * row_len);
        for (int k = 0; k < A; ++k) At<M>::apply(&d[0][k], &t[0][k], A, A);   // AT M
        for (int i = 0; i < M; ++i) At<M>::apply(&t[i][0], &o[i][0], 1, 1);   // (AT M) A
        for (int i = 0; i < rows; ++i)
          for (int j = 0; j < cols; ++j)
            store(y + ((img * ho + ti * M + i) * wo + tj * M + j) * c + c0, o[i][j]);
      }
    }
  };
  parallel_for(pool, n_images * th, tile_row);
}

using Images = ffi::Buffer<ffi::F32, 4>;   // (the macro below splits on commas in <>)
using Tiles = ffi::Buffer<ffi::F32, 4>;

ffi::Error WinogradInputImpl(ffi::ThreadPool pool, Images x, ffi::Result<Tiles> v, int64_t m, int64_t pt,
                             int64_t pl, int64_t th, int64_t tw) {
  const auto dims = x.dimensions();
  const int64_t n_images = dims[0], h = dims[1], w = dims[2], c = dims[3];
  if (c % kLanes) return ffi::Error::InvalidArgument("channels must be a multiple of 8");
  const int64_t a = m + 2;
  auto vd = v->dimensions();
  if (vd[0] != a * a || vd[1] != n_images || vd[2] != th * tw || vd[3] != c)
    return ffi::Error::InvalidArgument("output shape must be ((m + 2)^2, N, th * tw, C)");
  if (m == 4) {
    input_transform<4>(x.typed_data(), v->typed_data(), n_images, h, w, c, pt, pl, th, tw, pool);
  } else if (m == 2) {
    input_transform<2>(x.typed_data(), v->typed_data(), n_images, h, w, c, pt, pl, th, tw, pool);
  } else {
    return ffi::Error::InvalidArgument("m must be 2 or 4");
  }
  return ffi::Error::Success();
}

ffi::Error WinogradOutputImpl(ffi::ThreadPool pool, Tiles mm, ffi::Result<Images> y, int64_t m,
                              int64_t th, int64_t tw) {
  const auto dims = mm.dimensions();
  const int64_t n_images = dims[1], c = dims[3];
  const auto yd = y->dimensions();
  const int64_t ho = yd[1], wo = yd[2];
  if (c % kLanes) return ffi::Error::InvalidArgument("channels must be a multiple of 8");
  if (dims[0] != (m + 2) * (m + 2) || dims[2] != th * tw || yd[0] != n_images || yd[3] != c ||
      ho > th * m || wo > tw * m || ho <= (th - 1) * m || wo <= (tw - 1) * m)
    return ffi::Error::InvalidArgument("shapes must be ((m + 2)^2, N, th * tw, C) -> (N, Ho, Wo, C)");
  if (m == 4) {
    output_transform<4>(mm.typed_data(), y->typed_data(), n_images, ho, wo, c, th, tw, pool);
  } else if (m == 2) {
    output_transform<2>(mm.typed_data(), y->typed_data(), n_images, ho, wo, c, th, tw, pool);
  } else {
    return ffi::Error::InvalidArgument("m must be 2 or 4");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AeclustWinogradOutput, WinogradOutputImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Tiles>()
                                  .Ret<Images>()
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("th")
                                  .Attr<int64_t>("tw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AeclustWinogradInput, WinogradInputImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Images>()
                                  .Ret<Tiles>()
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("th")
                                  .Attr<int64_t>("tw"));
