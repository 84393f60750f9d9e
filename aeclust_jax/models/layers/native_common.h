// What the compiled XLA:CPU kernels (``layers/native.py``) share: 8-float vectors (GCC / Clang
// vector extensions; AVX with -march=native) and a parallel loop on XLA's intra-op thread pool.

#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace aeclust {

namespace ffi = xla::ffi;

typedef float vf __attribute__((vector_size(32)));   // 8 floats
constexpr int kLanes = 8;

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// body(i) for i in [0, n): on the calling thread and on the intra-op pool's other threads. The
// caller waits only for items already taken, so a pool busy elsewhere cannot stall it.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t n, const F& body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto drain = [n](State& st, const F& f) {
    int64_t i, finished = 0;
    while ((i = st.next.fetch_add(1)) < n) { f(i); ++finished; }
    if (finished && st.done.fetch_add(finished) + finished == n) {
      std::lock_guard<std::mutex> lock(st.mu);
      st.cv.notify_all();
    }
  };
  const F* f = &body;   // alive until every taken item is done (the wait below)
  for (int64_t h = 1; h < std::min<int64_t>(pool.num_threads(), n); ++h)
    pool.Schedule([state, f, drain] { drain(*state, *f); });
  drain(*state, body);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace aeclust
