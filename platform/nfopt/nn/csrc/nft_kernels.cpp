// Kernels of the NFT layers: weight-space attention's token gathers (see nfopt/nn/attention.py)
// with blocked transposes, and the per-entry channel LayerNorm (nfopt/nn/pointwise.py).
//
// At neuron layer l the tokens are the columns of W_l, the bias b_l and the rows of W_{l+1}, each
// a feature-major (C, n_l) matrix: a (S, B, C, n_l, T) tensor built from W_l (B, S C, n_l, m)
// as it is laid out, b_l (B, S C, n_l) and W_{l+1} (B, S C, p, n_l) transposed. PyTorch's cat
// and add copy the transposed operand element by element across rows (measured ~3x the time of
// a contiguous copy on (32, 48, 32, 64) planes); here every (s, b, c) plane is copied or added in
// 16 x 16 tiles that stay in L1.
//   weight_tokens(w_in?, b_in?, w_out?, S) -> (S, B, C, n, T)
//   weight_from_tokens(hi, lo, mean?) -> (B, S C, p, m): hi's first m token columns (a weight's
//     columns at its row layer) plus lo's last p token columns transposed (its rows at its
//     column layer) plus mean[b, s C + c] everywhere: the attended weight, and the gradient of a
//     weight from its two layers' token gradients.
//   channel_norm(x, w, b, eps) -> y: LayerNorm over the channels of every entry of x (B, C, ...)
//     with affine (C,): chunks of 256 entries x C channels stay in L1 across the mean, the
//     variance and the output (PyTorch's form makes 8 passes over the tensor).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t TILE = 16;

#if defined(__AVX512F__)
// dst[j * ds + t] (+)= src[t * ss + j] for t, j < 16: a 16 x 16 float tile transposed in registers
template <bool Add>
inline void transpose16(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ss);
  for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 2 x 2 blocks within each 128-bit lane
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 16; i += 8) {  // 128-bit lanes, then 256-bit halves
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0x88);
      t[i + k + 4] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0xdd);
    }
  }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
    r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i)
    _mm512_storeu_ps(dst + i * ds, Add ? _mm512_add_ps(_mm512_loadu_ps(dst + i * ds), r[i]) : r[i]);
}
#elif defined(__AVX2__)
// dst[j * ds + t] (+)= src[t * ss + j] for t, j < 8: an 8 x 8 float tile transposed in registers
template <bool Add>
inline void transpose8(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // 2 x 2 blocks within each 128-bit lane
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {  // 128-bit halves: columns k (low) and k + 4 (high)
    t[k] = _mm256_permute2f128_ps(r[k], r[k + 4], 0x20);
    t[k + 4] = _mm256_permute2f128_ps(r[k], r[k + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i)
    _mm256_storeu_ps(dst + i * ds, Add ? _mm256_add_ps(_mm256_loadu_ps(dst + i * ds), t[i]) : t[i]);
}

// the 16 x 16 tile as four 8 x 8 ones
template <bool Add>
inline void transpose16(const float* src, int64_t ss, float* dst, int64_t ds) {
  for (int a = 0; a < 16; a += 8)
    for (int b = 0; b < 16; b += 8) transpose8<Add>(src + a * ss + b, ss, dst + b * ds + a, ds);
}
#endif

// dst[j * ds + t] (+)= src[t * ss + j] for t < p, j < n, in TILE x TILE tiles (float32 full tiles
// transposed in registers where the CPU has AVX-512 or AVX2)
template <typename T, bool Add>
inline void transpose_plane(const T* src, int64_t ss, T* dst, int64_t ds, int64_t p, int64_t n) {
  for (int64_t t0 = 0; t0 < p; t0 += TILE) {
    const int64_t t1 = std::min(p, t0 + TILE);
    for (int64_t j0 = 0; j0 < n; j0 += TILE) {
      const int64_t j1 = std::min(n, j0 + TILE);
#if defined(__AVX512F__) || defined(__AVX2__)
      if constexpr (std::is_same_v<T, float>) {
        if (t1 - t0 == TILE && j1 - j0 == TILE) {
          transpose16<Add>(src + t0 * ss + j0, ss, dst + j0 * ds + t0, ds);
          continue;
        }
      }
#endif
      for (int64_t j = j0; j < j1; ++j) {
        T* d = dst + j * ds;
        for (int64_t t = t0; t < t1; ++t) {
          if constexpr (Add)
            d[t] += src[t * ss + j];
          else
            d[t] = src[t * ss + j];
        }
      }
    }
  }
}

at::Tensor weight_tokens(const c10::optional<at::Tensor>& w_in_, const c10::optional<at::Tensor>& b_in_,
                         const c10::optional<at::Tensor>& w_out_, int64_t S) {
  const bool has_in = w_in_.has_value() && w_in_->defined(), has_out = w_out_.has_value() && w_out_->defined();
  TORCH_CHECK(has_in || has_out, "weight_tokens needs a weight");
  TORCH_CHECK(has_in == (b_in_.has_value() && b_in_->defined()), "weight_tokens: w_in and b_in come together");
  const at::Tensor ref = has_in ? *w_in_ : *w_out_;
  TORCH_CHECK(ref.dim() == 4 && S > 0 && ref.size(1) % S == 0, "weight_tokens expects (B, S C, ., .) weights");
  const int64_t B = ref.size(0), C = ref.size(1) / S;
  const int64_t n = has_in ? w_in_->size(2) : w_out_->size(3);
  const int64_t m = has_in ? w_in_->size(3) : 0, p = has_out ? w_out_->size(2) : 0;
  const int64_t T = (has_in ? m + 1 : 0) + p;
  at::Tensor w_in, b_in, w_out;
  if (has_in) {
    w_in = w_in_->contiguous();
    b_in = b_in_->contiguous();
    TORCH_CHECK(b_in.dim() == 3 && b_in.size(0) == B && b_in.size(1) == S * C && b_in.size(2) == n,
                "weight_tokens: b_in must be (B, S C, n)");
  }
  if (has_out) {
    w_out = w_out_->contiguous();
    TORCH_CHECK(w_out.dim() == 4 && w_out.size(0) == B && w_out.size(1) == S * C && w_out.size(3) == n,
                "weight_tokens: w_out must be (B, S C, p, n)");
  }
  auto out = at::empty({S, B, C, n, T}, ref.options());
  AT_DISPATCH_FLOATING_TYPES(ref.scalar_type(), "nfopt_weight_tokens", [&] {
    const scalar_t* wi = has_in ? w_in.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bi = has_in ? b_in.data_ptr<scalar_t>() : nullptr;
    const scalar_t* wo = has_out ? w_out.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, S * B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {  // plane = (s, b, c)
        const int64_t s = plane / (B * C), b = (plane / C) % B, c = plane % C;
        const int64_t src = b * S * C + s * C + c;  // (b, s C + c) in the inputs
        scalar_t* dst = op + plane * n * T;
        if (has_in) {
          const scalar_t* w = wi + src * n * m;
          for (int64_t j = 0; j < n; ++j) {
            std::memcpy(dst + j * T, w + j * m, m * sizeof(scalar_t));
            dst[j * T + m] = bi[src * n + j];
          }
        }
        if (has_out) transpose_plane<scalar_t, false>(wo + src * p * n, n, dst + (T - p), T, p, n);
      }
    });
  });
  return out;
}

at::Tensor weight_from_tokens(const at::Tensor& hi_, const at::Tensor& lo_, const c10::optional<at::Tensor>& mean_) {
  TORCH_CHECK(hi_.dim() == 5 && lo_.dim() == 5, "weight_from_tokens expects (S, B, C, n, T) token tensors");
  const int64_t S = hi_.size(0), B = hi_.size(1), C = hi_.size(2), p = hi_.size(3), m = lo_.size(3);
  const int64_t Th = hi_.size(4), Tl = lo_.size(4);
  TORCH_CHECK(lo_.size(0) == S && lo_.size(1) == B && lo_.size(2) == C && Th >= m && Tl >= p,
              "weight_from_tokens: token tensors of one weight's two layers");
  auto hi = hi_.contiguous(), lo = lo_.contiguous().to(hi.scalar_type());
  const bool has_mean = mean_.has_value() && mean_->defined();
  at::Tensor mean;
  if (has_mean) {
    mean = mean_->contiguous().to(hi.scalar_type());
    TORCH_CHECK(mean.numel() == B * S * C, "weight_from_tokens: mean must be (B, S C)");
  }
  auto out = at::empty({B, S * C, p, m}, hi.options());
  AT_DISPATCH_FLOATING_TYPES(hi.scalar_type(), "nfopt_weight_from_tokens", [&] {
    const scalar_t* hp = hi.data_ptr<scalar_t>();
    const scalar_t* lp = lo.data_ptr<scalar_t>();
    const scalar_t* mp = has_mean ? mean.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, S * B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {  // plane = (s, b, c) of the tokens
        const int64_t s = plane / (B * C), b = (plane / C) % B, c = plane % C;
        const int64_t o = b * S * C + s * C + c;
        scalar_t* dst = op + o * p * m;
        const scalar_t* h = hp + plane * p * Th;
        const scalar_t add = has_mean ? mp[o] : scalar_t(0);
        for (int64_t t = 0; t < p; ++t) {
          scalar_t* d = dst + t * m;
          const scalar_t* hr = h + t * Th;
          for (int64_t j = 0; j < m; ++j) d[j] = hr[j] + add;
        }
        transpose_plane<scalar_t, true>(lp + plane * m * Tl + (Tl - p), Tl, dst, m, m, p);
      }
    });
  });
  return out;
}

at::Tensor channel_norm(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& b_, double eps) {
  TORCH_CHECK(x_.dim() >= 2, "channel_norm expects x (B, C, ...)");
  const int64_t B = x_.size(0), C = x_.size(1);
  TORCH_CHECK(w_.numel() == C && b_.numel() == C, "channel_norm: weight and bias must have C entries");
  const int64_t N = B * C > 0 ? x_.numel() / (B * C) : 0;
  auto x = x_.contiguous();
  auto w = w_.contiguous().to(x.scalar_type()), b = b_.contiguous().to(x.scalar_type());
  auto y = at::empty_like(x);
  constexpr int64_t CH = 256;  // entries per chunk
  const int64_t chunks = (N + CH - 1) / CH;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nfopt_channel_norm", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t inv_c = scalar_t(1) / static_cast<scalar_t>(C), e = static_cast<scalar_t>(eps);
    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {  // a job: 256 entries x C channels
      alignas(64) scalar_t mean[CH];
      alignas(64) scalar_t rstd[CH];
      for (int64_t job = begin; job < end; ++job) {
        const int64_t bi = job / chunks, n0 = (job % chunks) * CH, t = std::min(CH, N - n0);
        const scalar_t* xb = xp + bi * C * N + n0;
        scalar_t* yb = yp + bi * C * N + n0;
        for (int64_t i = 0; i < t; ++i) mean[i] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* xr = xb + c * N;
_Pragma("omp simd")
          for (int64_t i = 0; i < t; ++i) mean[i] += xr[i];
        }
        for (int64_t i = 0; i < t; ++i) {
          mean[i] *= inv_c;
          rstd[i] = 0;
        }
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* xr = xb + c * N;
_Pragma("omp simd")
          for (int64_t i = 0; i < t; ++i) {
            const scalar_t d = xr[i] - mean[i];
            rstd[i] += d * d;
          }
        }
_Pragma("omp simd")
        for (int64_t i = 0; i < t; ++i) rstd[i] = scalar_t(1) / std::sqrt(rstd[i] * inv_c + e);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* xr = xb + c * N;
          scalar_t* yr = yb + c * N;
          const scalar_t wc = wp[c], bc = bp[c];
_Pragma("omp simd")
          for (int64_t i = 0; i < t; ++i) yr[i] = (xr[i] - mean[i]) * rstd[i] * wc + bc;
        }
      }
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nfopt_native, m) {
  m.def("weight_tokens(Tensor? w_in, Tensor? b_in, Tensor? w_out, int groups) -> Tensor");
  m.def("weight_from_tokens(Tensor hi, Tensor lo, Tensor? mean) -> Tensor");
  m.def("channel_norm(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(nfopt_native, CPU, m) {
  m.impl("weight_tokens", weight_tokens);
  m.impl("weight_from_tokens", weight_from_tokens);
  m.impl("channel_norm", channel_norm);
}
