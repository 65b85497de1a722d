// Fused CPU kernels for NP/HNP layers (see nfopt/nn/_core.py) and per-entry MLPs (see
// nfopt/lopt/metamodels.py).
//
// Layout: X (B, F, R, C) contiguous, channels-first. pool_sums returns the row sums and the
// column sums of every (R, C) matrix in one read of X, where PyTorch needs two reductions.
// entry_mlp runs a small ReLU MLP on every entry's channel vector of X (B, F, N), tile by tile
// of 16 entries, so its hidden activations never leave L1 (PyTorch writes each (B, H, N) hidden
// tensor to memory and reads it back for the bias, the ReLU and the next GEMM).
// (Register-blocked kernels for the per-entry channel mixing and its weight gradient were
// measured here too and did not beat MKL's batched GEMM into a broadcast-filled output, which
// the Python side uses; see bench/layers.py.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
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

constexpr int kLanes = 16;  // entries per tile: one AVX-512 vector of floats
constexpr int kBlock = 8;   // output channels accumulated in registers at once

// out[j][:] = act(bias[j] + sum_k wt[k][j] * in[k][:]) for j in [j0, j0 + JB): JB x kLanes
// accumulators live in registers; wt is the transposed weight (Hin, Hout).
template <typename T, int JB>
inline void dense_block(const T* in, int64_t hin, const T* wt, int64_t hout, const T* bias, int64_t j0,
                        bool relu, T* out) {
  T acc[JB][kLanes];
  for (int jj = 0; jj < JB; ++jj)
    for (int l = 0; l < kLanes; ++l) acc[jj][l] = bias[j0 + jj];
  for (int64_t k = 0; k < hin; ++k) {
    const T* hv = in + k * kLanes;
    const T* w = wt + k * hout + j0;
#pragma GCC unroll 8
    for (int jj = 0; jj < JB; ++jj) {
      const T wk = w[jj];
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) acc[jj][l] += wk * hv[l];
    }
  }
  for (int jj = 0; jj < JB; ++jj) {
    T* o = out + (j0 + jj) * kLanes;
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) o[l] = relu && acc[jj][l] < T(0) ? T(0) : acc[jj][l];
  }
}

template <typename T>
void dense(const T* in, int64_t hin, const T* wt, int64_t hout, const T* bias, bool relu, T* out) {
  int64_t j0 = 0;
  for (; j0 + kBlock <= hout; j0 += kBlock) dense_block<T, kBlock>(in, hin, wt, hout, bias, j0, relu, out);
  switch (hout - j0) {
    case 0: break;
    case 1: dense_block<T, 1>(in, hin, wt, hout, bias, j0, relu, out); break;
    case 2: dense_block<T, 2>(in, hin, wt, hout, bias, j0, relu, out); break;
    case 3: dense_block<T, 3>(in, hin, wt, hout, bias, j0, relu, out); break;
    case 4: dense_block<T, 4>(in, hin, wt, hout, bias, j0, relu, out); break;
    case 5: dense_block<T, 5>(in, hin, wt, hout, bias, j0, relu, out); break;
    case 6: dense_block<T, 6>(in, hin, wt, hout, bias, j0, relu, out); break;
    default: dense_block<T, 7>(in, hin, wt, hout, bias, j0, relu, out); break;
  }
}

// y[b, :, n] = W_D relu(... relu(W_1 x[b, :, n] + c1[b]) ...) + b_D for every entry n:
// x (B, F, N); c1 (B, H_1), the first layer's bias per batch element (it carries the per-network
// global inputs); weights[d] (H_{d+1}, H_d) and biases[d] (H_{d+1}) for the layers after the first.
at::Tensor entry_mlp(const at::Tensor& x_, const at::Tensor& w1, const at::Tensor& c1_,
                     at::TensorList weights, at::TensorList biases) {
  TORCH_CHECK(x_.dim() == 3, "entry_mlp expects x (B, F, N)");
  TORCH_CHECK(weights.size() == biases.size() && !weights.empty(), "entry_mlp: one bias per later layer");
  auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), N = x.size(2);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == F, "entry_mlp: w1 must be (H, F)");
  TORCH_CHECK(c1_.dim() == 2 && c1_.size(0) == B && c1_.size(1) == w1.size(0), "entry_mlp: c1 must be (B, H)");
  std::vector<at::Tensor> wts{w1.t().contiguous()};  // transposed: (H_in, H_out)
  std::vector<at::Tensor> bs;
  std::vector<int64_t> sizes{F, w1.size(0)};
  for (size_t d = 0; d < weights.size(); ++d) {
    TORCH_CHECK(weights[d].dim() == 2 && weights[d].size(1) == sizes.back(), "entry_mlp: layer sizes do not chain");
    TORCH_CHECK(biases[d].numel() == weights[d].size(0), "entry_mlp: bias size");
    wts.push_back(weights[d].t().contiguous().to(x.scalar_type()));
    bs.push_back(biases[d].contiguous().to(x.scalar_type()));
    sizes.push_back(weights[d].size(0));
  }
  wts[0] = wts[0].to(x.scalar_type());
  auto c1 = c1_.contiguous().to(x.scalar_type());
  const int64_t O = sizes.back();
  const int64_t hmax = *std::max_element(sizes.begin(), sizes.end());
  const int64_t depth = static_cast<int64_t>(wts.size());
  auto out = at::empty({B, O, N}, x.options());
  const int64_t tiles = (N + kLanes - 1) / kLanes;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nfopt_entry_mlp", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    std::vector<const scalar_t*> wp, bp;
    for (auto& w : wts) wp.push_back(w.data_ptr<scalar_t>());
    for (auto& b : bs) bp.push_back(b.data_ptr<scalar_t>());
    const scalar_t* cp = c1.data_ptr<scalar_t>();
    at::parallel_for(0, B * tiles, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> bufa(hmax * kLanes), bufb(hmax * kLanes);
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / tiles, n0 = (bt % tiles) * kLanes;
        const int64_t nv = std::min<int64_t>(kLanes, N - n0);
        scalar_t* cur = bufa.data();
        scalar_t* nxt = bufb.data();
        for (int64_t f = 0; f < F; ++f) {  // gather the tile: F rows of nv entries, zero-padded
          const scalar_t* src = xp + (b * F + f) * N + n0;
          for (int64_t l = 0; l < kLanes; ++l) cur[f * kLanes + l] = l < nv ? src[l] : scalar_t(0);
        }
        for (int64_t d = 0; d < depth; ++d) {
          const scalar_t* bias = d == 0 ? cp + b * sizes[1] : bp[d - 1];
          dense<scalar_t>(cur, sizes[d], wp[d], sizes[d + 1], bias, d + 1 < depth, nxt);
          std::swap(cur, nxt);
        }
        for (int64_t o = 0; o < O; ++o) {
          scalar_t* dst = op + (b * O + o) * N + n0;
          for (int64_t l = 0; l < nv; ++l) dst[l] = cur[o * kLanes + l];
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(nfopt_native, m) {
  m.def("pool_sums(Tensor x) -> Tensor[]");
  m.def("entry_mlp(Tensor x, Tensor w1, Tensor c1, Tensor[] weights, Tensor[] biases) -> Tensor");
}

TORCH_LIBRARY_IMPL(nfopt_native, CPU, m) {
  m.impl("pool_sums", pool_sums);
  m.impl("entry_mlp", entry_mlp);
}
