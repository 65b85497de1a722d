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
//   token_attention_forward / _backward: the whole per-layer token attention, one (batch element,
//     head) at a time with its tokens in L2 (float32; see the section below). The gathers above
//     serve float64 and the ops' tests.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <dlfcn.h>
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


// ---- token attention ------------------------------------------------------------------------
// The per neuron layer attention of WeightSpaceAttention, one (batch element, head) at a time:
// its q, k, v tokens gathered from the projected weights into buffers that stay in L2, the two
// products and the softmax there, the output scattered straight into the attended weights (and
// in the backward the same for the token gradients into the inputs' gradients). Per level, MKL's
// batched GEMM over all (b, h) streamed every operand from memory (a level's q, k, v are 19 MB
// on (32, 48, 32, 64) weights) and the gathers and scatters were passes of their own.
//   token_attention_forward(qw, qb, H, save) -> [att_w..., att_b..., probs...]
//   token_attention_backward(qw, qb, probs, d_w, d_b, d_means, H) -> [dqw..., dqb...]
// qw[i]: (B, 3C, n_{i+1}, n_i), qb[i]: (B, 3C, n_{i+1}) ([q | k | v], heads split off C);
// att_w[i]: (B, C, n_{i+1}, n_i), att_b[i]: (B, C, n_{i+1}); probs[l]: (B H, T_l, T_l), the
// softmax transposed (keys x queries); d_means: (B, 2L, 3C), the gradient of the per-tensor means
// of qw and qb (see attention.py's _means), spread over the entries here.
// Float32 only; the GEMMs go to the BLAS that PyTorch links (sgemm_, found at run time:
// token_attention_available() says whether it was).

// The integer arguments are passed as pointers to 64-bit integers: read as 32-bit (the LP64
// interface PyTorch's wheels link) they hold the same small values on little-endian machines,
// and an ILP64 BLAS reads them whole. A 2 x 2 product checks the call once; on a mismatch the
// ops report themselves unavailable and attention keeps its other path.
using sgemm_t = void (*)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*, const float*,
                         const float*, const int64_t*, const float*, const int64_t*, const float*, float*,
                         const int64_t*);

sgemm_t find_sgemm() {
  static const sgemm_t fn = []() -> sgemm_t {
    void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    void* f = h ? dlsym(h, "sgemm_") : nullptr;
    if (!f) f = dlsym(RTLD_DEFAULT, "sgemm_");
    if (!f) return nullptr;
    const auto g = reinterpret_cast<sgemm_t>(f);
    const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, one = 1, zero = 0;  // column-major 2 x 2
    float c[4] = {0, 0, 0, 0};
    const int64_t two = 2;
    g("N", "N", &two, &two, &two, &one, a, &two, b, &two, &zero, c, &two);
    const bool ok = c[0] == 23 && c[1] == 34 && c[2] == 31 && c[3] == 46;
    return ok ? g : nullptr;
  }();
  return fn;
}

// row-major C (M x N, ldc) = alpha op(A) op(B) + beta C, op(A): M x K, op(B): K x N (the
// column-major BLAS computes C^T = op(B)^T op(A)^T)
inline void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const char a = ta ? 'T' : 'N', b = tb ? 'T' : 'N';
  find_sgemm()(&b, &a, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
}

#if defined(__AVX2__)
// e^x for x <= 0 (softmax after its max is subtracted), ~1 ulp: 2^n e^r with r = x - n ln 2 in
// [-ln2/2, ln2/2] and a degree-6 polynomial (Cephes' coefficients); below -87.3 it returns ~1e-38,
// a NaN stays NaN (max_ps returns its second operand when either is NaN)
inline __m256 exp_neg(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

// in place over a (T x T) row-major block: a[:, q] = softmax(a[:, q]) for every column q (the
// softmax over the keys, the rows)
void softmax_cols(float* a, int64_t T) {
  std::vector<float> mx(T, -INFINITY), sum(T, 0.0f);
  for (int64_t k = 0; k < T; ++k) {
    const float* r = a + k * T;
    for (int64_t q = 0; q < T; ++q) mx[q] = std::max(mx[q], r[q]);
  }
  for (int64_t k = 0; k < T; ++k) {
    float* r = a + k * T;
    int64_t q = 0;
#if defined(__AVX2__)
    for (; q + 8 <= T; q += 8) {
      const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(r + q), _mm256_loadu_ps(mx.data() + q)));
      _mm256_storeu_ps(r + q, e);
      _mm256_storeu_ps(sum.data() + q, _mm256_add_ps(_mm256_loadu_ps(sum.data() + q), e));
    }
#endif
    for (; q < T; ++q) {
      r[q] = std::exp(r[q] - mx[q]);
      sum[q] += r[q];
    }
  }
  for (int64_t q = 0; q < T; ++q) sum[q] = 1.0f / sum[q];
  for (int64_t k = 0; k < T; ++k) {
    float* r = a + k * T;
#pragma omp simd
    for (int64_t q = 0; q < T; ++q) r[q] *= sum[q];
  }
}

// ds = scale * a * (da - sum_k a da) per column (the softmax's backward over the rows), in da
void softmax_cols_backward(const float* a, float* da, int64_t T, float scale) {
  std::vector<float> dot(T, 0.0f);
  for (int64_t k = 0; k < T; ++k) {
    const float* ar = a + k * T;
    const float* dr = da + k * T;
#pragma omp simd
    for (int64_t q = 0; q < T; ++q) dot[q] += ar[q] * dr[q];
  }
  for (int64_t k = 0; k < T; ++k) {
    const float* ar = a + k * T;
    float* dr = da + k * T;
#pragma omp simd
    for (int64_t q = 0; q < T; ++q) dr[q] = scale * ar[q] * (dr[q] - dot[q]);
  }
}

// Level l's geometry: n = n_l, m = n_{l-1} (the columns of W_l, then its bias: "in" tokens, when
// l >= 1) and p = n_{l+1} (the rows of W_{l+1}: "out" tokens, when l < L); T = m + 1 + p or less.
struct Level {
  int64_t n, m, p, T, T0;  // T0: first "out" token
  bool in, out;
};

Level level_of(const std::vector<int64_t>& sizes, int64_t l) {
  const int64_t L = static_cast<int64_t>(sizes.size()) - 1;
  Level v;
  v.in = l >= 1;
  v.out = l < L;
  v.n = sizes[l];
  v.m = v.in ? sizes[l - 1] : 0;
  v.p = v.out ? sizes[l + 1] : 0;
  v.T0 = v.in ? v.m + 1 : 0;
  v.T = v.T0 + v.p;
  return v;
}

// a level's three planes in a list of weights and biases (B, G, n_{i+1}, n_i) / (B, G, n_{i+1}):
// the incoming weight and its bias (when l >= 1) and the outgoing weight (when l < L)
template <typename P>
struct Planes {
  P* w_in;
  P* b_in;
  P* w_out;
};

Planes<float> planes(const std::vector<at::Tensor>& ws, const std::vector<at::Tensor>& bs, const Level& v,
                     int64_t l) {
  return {v.in ? ws[l - 1].data_ptr<float>() : nullptr, v.in ? bs[l - 1].data_ptr<float>() : nullptr,
          v.out ? ws[l].data_ptr<float>() : nullptr};
}

Planes<const float> as_const(const Planes<float>& p) { return {p.w_in, p.b_in, p.w_out}; }

// one head's tokens at a level: dst (d n x T) rows c n + j, from channels [c0, c0 + d) of the
// incoming weight (B, G, n, m) + bias (B, G, n) and the outgoing weight (B, G, p, n) of batch b
void gather_head(const Level& v, Planes<const float> src, int64_t G, int64_t b, int64_t c0, int64_t d, float* dst) {
  const int64_t n = v.n, T = v.T;
  const float *wi = src.w_in, *bi = src.b_in, *wo = src.w_out;
  for (int64_t c = 0; c < d; ++c) {
    float* x = dst + c * n * T;
    const int64_t ch = b * G + c0 + c;
    if (v.in) {
      const float* w = wi + ch * n * v.m;
      const float* bb = bi + ch * n;
      for (int64_t j = 0; j < n; ++j) {
        std::memcpy(x + j * T, w + j * v.m, v.m * sizeof(float));
        x[j * T + v.m] = bb[j];
      }
    }
    if (v.out) transpose_plane<float, false>(wo + ch * v.p * n, n, x + v.T0, T, v.p, n);
  }
}

// the inverse: one head's token matrix src (d n x T) into channels [c0, c0 + d) of the incoming
// weight and bias (added to the weight, written to the bias) and the outgoing weight (written);
// add_w[c], add_b[c]: constants added where written (wo and bi)
void scatter_head(const Level& v, const float* src, Planes<float> dst, int64_t G, int64_t b, int64_t c0, int64_t d,
                  const float* add_w, const float* add_b) {
  const int64_t n = v.n, T = v.T;
  float *wi = dst.w_in, *bi = dst.b_in, *wo = dst.w_out;
  for (int64_t c = 0; c < d; ++c) {
    const float* x = src + c * n * T;
    const int64_t ch = b * G + c0 + c;
    if (v.in) {
      float* w = wi + ch * n * v.m;
      float* bb = bi + ch * n;
      const float ab = add_b ? add_b[c] : 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        float* wr = w + j * v.m;
        const float* xr = x + j * T;
#pragma omp simd
        for (int64_t t = 0; t < v.m; ++t) wr[t] += xr[t];
        bb[j] = xr[v.m] + ab;
      }
    }
    if (v.out) {
      float* w = wo + ch * v.p * n;
      transpose_plane<float, false>(x + v.T0, T, w, n, n, v.p);  // w[t, j] = x[j, T0 + t]
      if (add_w && add_w[c] != 0.0f) {
        const float a = add_w[c];
#pragma omp simd
        for (int64_t e = 0; e < v.p * n; ++e) w[e] += a;
      }
    }
  }
}

void check_token_inputs(at::TensorList qw, at::TensorList qb, int64_t H, std::vector<int64_t>& sizes) {
  TORCH_CHECK(!qw.empty() && qw.size() == qb.size(), "token_attention: one bias per weight");
  TORCH_CHECK(H > 0, "token_attention: heads must be positive");
  const int64_t B = qw[0].size(0), G = qw[0].size(1);
  TORCH_CHECK(G % 3 == 0 && (G / 3) % H == 0, "token_attention: 3C channels with C a multiple of the heads");
  sizes = {qw[0].size(3)};
  for (size_t i = 0; i < qw.size(); ++i) {
    TORCH_CHECK(qw[i].dim() == 4 && qw[i].size(0) == B && qw[i].size(1) == G && qw[i].size(3) == sizes.back(),
                "token_attention: qw[", i, "] must be (B, 3C, n_", i + 1, ", n_", i, ")");
    TORCH_CHECK(qb[i].dim() == 3 && qb[i].size(0) == B && qb[i].size(1) == G && qb[i].size(2) == qw[i].size(2),
                "token_attention: qb[", i, "] must be (B, 3C, n_", i + 1, ")");
    TORCH_CHECK(qw[i].scalar_type() == at::kFloat && qb[i].scalar_type() == at::kFloat,
                "token_attention: float32 only");
    sizes.push_back(qw[i].size(2));
  }
}

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

bool token_attention_available() { return find_sgemm() != nullptr; }

// Each (batch element, head) runs its levels in order, so a weight's slice is touched by its two
// levels (rows at level i, columns at level i + 1) while it is still in L2: the second gather of
// a projected weight, and the second (accumulating) write of an attended weight or a gradient,
// hit the cache instead of memory.
struct LevelPlan {
  std::vector<Level> levels;
  int64_t max_et = 0, max_tt = 0;  // the largest d n_l x T_l and T_l x T_l over the levels
};

LevelPlan plan_levels(const std::vector<int64_t>& sizes, int64_t d) {
  LevelPlan p;
  for (int64_t l = 0; l < static_cast<int64_t>(sizes.size()); ++l) {
    p.levels.push_back(level_of(sizes, l));
    const Level& v = p.levels.back();
    p.max_et = std::max(p.max_et, d * v.n * v.T);
    p.max_tt = std::max(p.max_tt, v.T * v.T);
  }
  return p;
}

std::vector<at::Tensor> token_attention_forward(at::TensorList qw_, at::TensorList qb_, int64_t H, bool save) {
  TORCH_CHECK(find_sgemm(), "token_attention: no sgemm_ in this PyTorch build");
  std::vector<int64_t> sizes;
  check_token_inputs(qw_, qb_, H, sizes);
  const auto qw = contiguous_all(qw_), qb = contiguous_all(qb_);
  const int64_t L = static_cast<int64_t>(qw.size()), B = qw[0].size(0), G = qw[0].size(1), C = G / 3, d = C / H;
  const LevelPlan plan = plan_levels(sizes, d);
  std::vector<at::Tensor> att_w, att_b, probs;
  for (int64_t i = 0; i < L; ++i) {
    att_w.push_back(at::empty({B, C, sizes[i + 1], sizes[i]}, qw[0].options()));
    att_b.push_back(at::empty({B, C, sizes[i + 1]}, qw[0].options()));
  }
  std::vector<Planes<float>> ins, outs;
  std::vector<float*> prps;
  for (int64_t l = 0; l <= L; ++l) {
    const Level& v = plan.levels[l];
    ins.push_back(planes(qw, qb, v, l));
    outs.push_back(planes(att_w, att_b, v, l));
    if (save) {
      probs.push_back(at::empty({B * H, v.T, v.T}, qw[0].options()));
      prps.push_back(probs.back().data_ptr<float>());
    }
  }
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qkv(3 * plan.max_et), a(save ? 0 : plan.max_tt), o(plan.max_et);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t l = 0; l <= L; ++l) {
        const Level& v = plan.levels[l];
        const int64_t E = d * v.n, T = v.T;
        for (int64_t s = 0; s < 3; ++s) gather_head(v, as_const(ins[l]), G, b, s * C + h * d, d, qkv.data() + s * E * T);
        const float *q = qkv.data(), *k = q + E * T, *vv = k + E * T;
        float* at = save ? prps[l] + bh * T * T : a.data();
        const float scale = 1.0f / std::sqrt(static_cast<float>(E));
        gemm_rm(true, false, T, T, E, scale, k, T, q, T, 0.0f, at, T);  // scores^T = k^T q (keys x queries)
        softmax_cols(at, T);
        gemm_rm(false, false, E, T, T, 1.0f, vv, T, at, T, 0.0f, o.data(), T);  // o = v a^T
        scatter_head(v, o.data(), outs[l], C, b, h * d, d, nullptr, nullptr);
      }
    }
  });
  std::vector<at::Tensor> out(att_w);
  out.insert(out.end(), att_b.begin(), att_b.end());
  out.insert(out.end(), probs.begin(), probs.end());
  return out;
}

std::vector<at::Tensor> token_attention_backward(at::TensorList qw_, at::TensorList qb_, at::TensorList probs_,
                                                 at::TensorList d_w_, at::TensorList d_b_, const at::Tensor& d_means_,
                                                 int64_t H) {
  TORCH_CHECK(find_sgemm(), "token_attention: no sgemm_ in this PyTorch build");
  std::vector<int64_t> sizes;
  check_token_inputs(qw_, qb_, H, sizes);
  const auto qw = contiguous_all(qw_), qb = contiguous_all(qb_);
  const int64_t L = static_cast<int64_t>(qw.size()), B = qw[0].size(0), G = qw[0].size(1), C = G / 3, d = C / H;
  TORCH_CHECK(static_cast<int64_t>(probs_.size()) == L + 1 && static_cast<int64_t>(d_w_.size()) == L &&
                  static_cast<int64_t>(d_b_.size()) == L,
              "token_attention_backward: probs per level, output gradients per tensor");
  const LevelPlan plan = plan_levels(sizes, d);
  std::vector<at::Tensor> d_w, d_b, probs;
  for (int64_t i = 0; i < L; ++i) {
    d_w.push_back(d_w_[i].contiguous().to(at::kFloat));
    d_b.push_back(d_b_[i].contiguous().to(at::kFloat));
    TORCH_CHECK(d_w[i].dim() == 4 && d_w[i].size(0) == B && d_w[i].size(1) == C && d_w[i].size(2) == sizes[i + 1] &&
                    d_w[i].size(3) == sizes[i] && d_b[i].numel() == B * C * sizes[i + 1],
                "token_attention_backward: output gradient ", i, " has the wrong shape");
  }
  for (int64_t l = 0; l <= L; ++l) {
    const int64_t T = plan.levels[l].T;
    TORCH_CHECK(probs_[l].scalar_type() == at::kFloat && probs_[l].numel() == B * H * T * T,
                "token_attention_backward: probs[", l, "] must be (B H, T, T)");
    probs.push_back(probs_[l].contiguous());
  }
  const at::Tensor d_means = d_means_.contiguous().to(at::kFloat);
  TORCH_CHECK(d_means.numel() == B * 2 * L * G, "token_attention_backward: d_means must be (B, 2L, 3C)");
  std::vector<at::Tensor> dqw, dqb;
  for (int64_t i = 0; i < L; ++i) {
    dqw.push_back(at::empty_like(qw[i]));
    dqb.push_back(at::empty_like(qb[i]));
  }
  std::vector<Planes<float>> ins, grad_outs, grad_ins;
  for (int64_t l = 0; l <= L; ++l) {
    const Level& v = plan.levels[l];
    ins.push_back(planes(qw, qb, v, l));
    grad_outs.push_back(planes(d_w, d_b, v, l));
    grad_ins.push_back(planes(dqw, dqb, v, l));
  }
  const float* dm = d_means.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qkv(3 * plan.max_et), dqkv(3 * plan.max_et), dout(plan.max_et), da(plan.max_tt);
    std::vector<float> add_w(d), add_b(d);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t l = 0; l <= L; ++l) {
        const Level& v = plan.levels[l];
        const int64_t E = d * v.n, T = v.T;
        const float scale = 1.0f / std::sqrt(static_cast<float>(E));
        for (int64_t s = 0; s < 3; ++s) gather_head(v, as_const(ins[l]), G, b, s * C + h * d, d, qkv.data() + s * E * T);
        gather_head(v, as_const(grad_outs[l]), C, b, h * d, d, dout.data());
        const float *q = qkv.data(), *k = q + E * T, *vv = k + E * T;
        float *dq = dqkv.data(), *dk = dq + E * T, *dv = dk + E * T;
        const float* at = probs[l].data_ptr<float>() + bh * T * T;
        gemm_rm(false, true, E, T, T, 1.0f, dout.data(), T, at, T, 0.0f, dv, T);  // dv = do a_t^T
        gemm_rm(true, false, T, T, E, 1.0f, vv, T, dout.data(), T, 0.0f, da.data(), T);  // da^T = v^T do
        softmax_cols_backward(at, da.data(), T, scale);
        gemm_rm(false, false, E, T, T, 1.0f, k, T, da.data(), T, 0.0f, dq, T);  // dq = k ds
        gemm_rm(false, true, E, T, T, 1.0f, q, T, da.data(), T, 0.0f, dk, T);  // dk = q ds^T
        // the means' gradients spread over their tensors' entries: the bias (written here, at
        // its row layer) and the outgoing weight (written here first; its columns are added at
        // level l + 1)
        const float inv_b = v.in ? 1.0f / static_cast<float>(v.n) : 0.0f;
        const float inv_w = v.out ? 1.0f / static_cast<float>(v.p * v.n) : 0.0f;
        for (int64_t s = 0; s < 3; ++s) {
          const int64_t c0 = s * C + h * d;
          for (int64_t c = 0; c < d; ++c) {
            add_b[c] = v.in ? dm[(b * 2 * L + L + l - 1) * G + c0 + c] * inv_b : 0.0f;
            add_w[c] = v.out ? dm[(b * 2 * L + l) * G + c0 + c] * inv_w : 0.0f;
          }
          scatter_head(v, dqkv.data() + s * E * T, grad_ins[l], G, b, c0, d, add_w.data(), add_b.data());
        }
      }
    }
  });
  std::vector<at::Tensor> out(dqw);
  out.insert(out.end(), dqb.begin(), dqb.end());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nfopt_native, m) {
  m.def("weight_tokens(Tensor? w_in, Tensor? b_in, Tensor? w_out, int groups) -> Tensor");
  m.def("weight_from_tokens(Tensor hi, Tensor lo, Tensor? mean) -> Tensor");
  m.def("channel_norm(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("token_attention_available() -> bool", &token_attention_available);
  m.def("token_attention_forward(Tensor[] qw, Tensor[] qb, int heads, bool save) -> Tensor[]");
  m.def(
      "token_attention_backward(Tensor[] qw, Tensor[] qb, Tensor[] probs, Tensor[] d_w, Tensor[] d_b, "
      "Tensor d_means, int heads) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(nfopt_native, CPU, m) {
  m.impl("weight_tokens", weight_tokens);
  m.impl("weight_from_tokens", weight_from_tokens);
  m.impl("channel_norm", channel_norm);
  m.impl("token_attention_forward", token_attention_forward);
  m.impl("token_attention_backward", token_attention_backward);
}
