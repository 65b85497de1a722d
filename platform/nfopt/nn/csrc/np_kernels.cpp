// Fused CPU kernels for NP/HNP layers (see nfopt/nn/_core.py).
//
// Layout: X (B, F, R, C) contiguous, channels-first. pool_sums returns the row sums and the
// column sums of every (R, C) matrix in one read of X, where PyTorch needs two reductions.
// (Register-blocked kernels for the per-entry channel mixing and its weight gradient were
// measured here too and did not beat MKL's batched GEMM into a broadcast-filled output, which
// the Python side uses; see bench/layers.py.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace {

// rows[b,f,c] = sum_r X[b,f,r,c];  cols[b,f,r] = sum_c X[b,f,r,c]   (one read of X)
std::vector<at::Tensor> pool_sums(const at::Tensor& x_) {
  TORCH_CHECK(x_.dim() == 4, "pool_sums expects (B, F, R, C)");
  auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), R = x.size(2), C = x.size(3);
  auto rows = at::zeros({B, F, C}, x.options());
  auto cols = at::empty({B, F, R}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nfopt_pool_sums", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* rp = rows.data_ptr<scalar_t>();
    scalar_t* cp = cols.data_ptr<scalar_t>();
    at::parallel_for(0, B * F, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bf = begin; bf < end; ++bf) {
        const scalar_t* xb = xp + bf * R * C;
        scalar_t* rb = rp + bf * C;
        for (int64_t r = 0; r < R; ++r) {
          const scalar_t* xr = xb + r * C;
          scalar_t s = 0;
_Pragma("omp simd reduction(+ : s)")
          for (int64_t c = 0; c < C; ++c) {
            s += xr[c];
            rb[c] += xr[c];
          }
          cp[bf * R + r] = s;
        }
      }
    });
  });
  return {rows, cols};
}

}  // namespace

TORCH_LIBRARY(nfopt_native, m) {
  m.def("pool_sums(Tensor x) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(nfopt_native, CPU, m) {
  m.impl("pool_sums", pool_sums);
}
