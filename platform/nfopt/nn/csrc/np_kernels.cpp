// Fused CPU kernels for NP/HNP layers (see nfopt/nn/_core.py) and per-entry MLPs (see
// nfopt/lopt/metamodels.py).
//
// Layout: X (B, F, R, C) contiguous, channels-first (a layer's pooled row and column sums, one
// read of X, are in np_layer.cpp beside the rest of the layer).
// entry_mlp runs a small ReLU MLP on every entry's channel vector of X (B, F, N), tile by tile
// of two vectors' worth of entries, so its hidden activations never leave L1 (PyTorch writes
// each (B, H, N) hidden tensor to memory and reads it back for the bias, the ReLU and the next
// GEMM).
// entry_mix is an NP layer's big per-entry term with its broadcast terms, in one pass:
// out = A x + col + row (read x once, write out once, streaming stores when out is too large
// for the caches; MKL's batched GEMM into a broadcast-filled output makes four passes: measured
// 18 vs 40 ms on a (32, 16, 128, 784) input). The NP backward's input adjoint is the same op with
// A transposed; entry_mix_grad adds the weight gradient dA = sum dh x^T to that pass, while dh's
// rows are in the caches (37-39 ms vs 54-57 ms for entry_mix plus MKL's batched GEMM on that
// input; a separate one-read kernel for dA with dh's row/column sums, 42-45 ms against 34 ms for
// MKL's bmm plus pool_sums, was not kept).
// Float32 only (the Python side keeps the PyTorch path for other dtypes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// Register blocking follows the vector ISA the build targets (-march=native): AVX-512 has 32
// registers of 16 floats, AVX2 16 of 8. AVX-512's blocks spill on AVX2 (a 16-float tile is two
// registers there: twice the register file in accumulators) and ran 3-5x slower than MKL
// (entry_mix on (32, 16, 32, 64): 2.51 vs 0.45 ms, AMD EPYC, AVX2).
#if defined(__AVX512F__)
constexpr int kW = 16;      // floats per vector register
constexpr int kMaxGB = 16;  // entry_mix: output rows accumulated in registers at once
constexpr int kKB = 4;      // entry_mix_grad: dW register block, kKB x kHB vectors
constexpr int kHB = 4;
#else
// AVX2 (narrower ISAs split the vector type; the blocks still fit). Measured on an AMD EPYC
// (Zen 3), interleaved: 8 rows per entry_mix tile against 12 (0.62 vs 0.69 ms on (32, 16, 32,
// 64)); dW blocks of 4 x 2 against 2 x 4 and 3 x 4 (1.28 vs 1.44 and 1.34 ms there).
constexpr int kW = 8;
constexpr int kMaxGB = 8;
constexpr int kKB = 4;
constexpr int kHB = 2;
#endif

// entry_mlp tiles: kLanes entries (two vectors) x kBlock output channels of accumulators. The
// quickstart rule's six tensors: AVX-512 32 x 8 563 us vs 703 with 16 lanes, 600 with 48; AVX2
// (Zen 3) 16 x 6 538-674 us vs 16 x 5 549, 16 x 7 615, 8 x 8 864, 32 x 8 1025 (interleaved). With
// the accumulators as vector variables (dense_block_vec), the MLP rule's six tensors (4 x 9 x 3760
// entries, 9-32-32-3, one thread): 16 x 6 575-588 us vs 16 x 5 583-719, 16 x 7 635, 8 x 8
// 640-682, 24 x 4 726-784, 24 x 5 732-783 (the array form: 682-732)
constexpr int kLanes = 2 * kW;
constexpr int kBlock = kW == 16 ? 8 : 6;
static_assert(kBlock <= 8, "dense() takes blocks of 1..8 output channels");

typedef float vf __attribute__((vector_size(kW * 4)));  // one vector register of floats

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// float: dense_block (below) with its JB x kLanes accumulators as vector variables, so they stay
// in registers through the bias, the ReLU and the stores (GCC kept the array form's on the stack
// outside the k loop: ~30 cycles of spills per block, a third of the first layer's time)
template <int JB>
inline void dense_block_vec(const float* in, int64_t hin, const float* wt, int64_t hout, const float* bias,
                            int64_t j0, bool relu, float* out) {
  constexpr int V = kLanes / kW;
  vf acc[JB][V];
#pragma GCC unroll 8
  for (int jj = 0; jj < JB; ++jj)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[jj][v] = vf{} + bias[j0 + jj];
  for (int64_t k = 0; k < hin; ++k) {
    vf h[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) h[v] = loadv(in + k * kLanes + v * kW);
    const float* w = wt + k * hout + j0;
#pragma GCC unroll 8
    for (int jj = 0; jj < JB; ++jj) {
      const float s = w[jj];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[jj][v] += s * h[v];
    }
  }
#pragma GCC unroll 8
  for (int jj = 0; jj < JB; ++jj)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      vf a = acc[jj][v];
      if (relu) a = a > 0.0f ? a : 0.0f;
      std::memcpy(out + (j0 + jj) * kLanes + v * kW, &a, sizeof(a));
    }
}

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

template <typename T, int JB>
inline void block(const T* in, int64_t hin, const T* wt, int64_t hout, const T* bias, int64_t j0, bool relu,
                  T* out) {
  if constexpr (std::is_same_v<T, float>)
    dense_block_vec<JB>(in, hin, wt, hout, bias, j0, relu, out);
  else
    dense_block<T, JB>(in, hin, wt, hout, bias, j0, relu, out);
}

// The output channels in ceil(hout / kBlock) blocks of near-equal size (32 as 6,6,5,5,5,5 rather
// than 6,6,6,6,6,2, whose last block has few accumulators to hide the FMA latency; measured within
// noise of the remainder form on the MLP rule: 582 vs 588 us)
template <typename T>
void dense(const T* in, int64_t hin, const T* wt, int64_t hout, const T* bias, bool relu, T* out) {
  if (hout <= 0) return;
  const int64_t nb = (hout + kBlock - 1) / kBlock, base = hout / nb, extra = hout % nb;
  for (int64_t blk = 0, j0 = 0; blk < nb; ++blk) {
    const int64_t jb = base + (blk < extra);
    switch (jb) {
      case 1: block<T, 1>(in, hin, wt, hout, bias, j0, relu, out); break;
      case 2: block<T, 2>(in, hin, wt, hout, bias, j0, relu, out); break;
      case 3: block<T, 3>(in, hin, wt, hout, bias, j0, relu, out); break;
      case 4: block<T, 4>(in, hin, wt, hout, bias, j0, relu, out); break;
      case 5: block<T, 5>(in, hin, wt, hout, bias, j0, relu, out); break;
      case 6: block<T, 6>(in, hin, wt, hout, bias, j0, relu, out); break;
      case 7: block<T, 7>(in, hin, wt, hout, bias, j0, relu, out); break;
      default: block<T, 8>(in, hin, wt, hout, bias, j0, relu, out); break;
    }
    j0 += jb;
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
  std::vector<at::Tensor> ws{w1};  // (H_out, H_in) each, any strides
  std::vector<int64_t> sizes{F, w1.size(0)};
  for (size_t d = 0; d < weights.size(); ++d) {
    TORCH_CHECK(weights[d].dim() == 2 && weights[d].size(1) == sizes.back(), "entry_mlp: layer sizes do not chain");
    TORCH_CHECK(biases[d].dim() == 1 && biases[d].numel() == weights[d].size(0), "entry_mlp: bias size");
    ws.push_back(weights[d]);
    sizes.push_back(weights[d].size(0));
  }
  const auto st = x.scalar_type();
  auto as_x = [st](const at::Tensor& t) { return t.scalar_type() == st ? t : t.to(st); };  // no op when equal
  const int64_t O = sizes.back();
  const int64_t hmax = *std::max_element(sizes.begin(), sizes.end());
  const int64_t depth = static_cast<int64_t>(ws.size());
  auto out = at::empty({B, O, N}, x.options());
  const int64_t tiles = (N + kLanes - 1) / kLanes;
  AT_DISPATCH_FLOATING_TYPES(st, "nfopt_entry_mlp", [&] {
    // The weights transposed to (H_in, H_out) and the biases, copied by hand into one buffer
    // (a few thousand numbers: ATen's transpose/contiguous/to ops cost ~20 us of dispatch per
    // call, more than the copy).
    std::vector<scalar_t> packed;
    std::vector<int64_t> woff, boff;
    for (int64_t d = 0; d < depth; ++d) {
      const at::Tensor w = as_x(ws[d]);
      const scalar_t* wp = w.data_ptr<scalar_t>();
      const int64_t ho = sizes[d + 1], hi = sizes[d], s0 = w.stride(0), s1 = w.stride(1);
      woff.push_back(static_cast<int64_t>(packed.size()));
      packed.resize(packed.size() + hi * ho);
      scalar_t* dst = packed.data() + woff.back();
      for (int64_t k = 0; k < hi; ++k)
        for (int64_t j = 0; j < ho; ++j) dst[k * ho + j] = wp[j * s0 + k * s1];
      if (d > 0) {
        const at::Tensor b = as_x(biases[d - 1]);
        const scalar_t* bp = b.data_ptr<scalar_t>();
        boff.push_back(static_cast<int64_t>(packed.size()));
        for (int64_t j = 0; j < ho; ++j) packed.push_back(bp[j * b.stride(0)]);
      }
    }
    const at::Tensor c1 = as_x(c1_);
    const scalar_t* cp = c1.data_ptr<scalar_t>();
    const int64_t cs0 = c1.stride(0), cs1 = c1.stride(1), h1 = sizes[1];
    std::vector<scalar_t> c1buf(B * h1);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < h1; ++j) c1buf[b * h1 + j] = cp[b * cs0 + j * cs1];
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * tiles, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> bufa(hmax * kLanes), bufb(hmax * kLanes);
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / tiles, n0 = (bt % tiles) * kLanes;
        const int64_t nv = std::min<int64_t>(kLanes, N - n0);
        scalar_t* cur = bufa.data();
        scalar_t* nxt = bufb.data();
        for (int64_t f = 0; f < F; ++f) {  // gather the tile: F rows of nv entries, zero-padded
          const scalar_t* src = xp + (b * F + f) * N + n0;
          scalar_t* dst = cur + f * kLanes;
          if (nv == kLanes) {  // a full tile: vector copies (the padded loop stays scalar)
            _Pragma("omp simd")
            for (int64_t l = 0; l < kLanes; ++l) dst[l] = src[l];
          } else {
            for (int64_t l = 0; l < kLanes; ++l) dst[l] = l < nv ? src[l] : scalar_t(0);
          }
        }
        for (int64_t d = 0; d < depth; ++d) {
          const scalar_t* bias = d == 0 ? c1buf.data() + b * h1 : packed.data() + boff[d - 1];
          dense<scalar_t>(cur, sizes[d], packed.data() + woff[d], sizes[d + 1], bias, d + 1 < depth, nxt);
          std::swap(cur, nxt);
        }
        for (int64_t o = 0; o < O; ++o) {
          scalar_t* dst = op + (b * O + o) * N + n0;
          const scalar_t* src = cur + o * kLanes;
          if (nv == kLanes) {
            _Pragma("omp simd")
            for (int64_t l = 0; l < kLanes; ++l) dst[l] = src[l];
          } else {
            for (int64_t l = 0; l < nv; ++l) dst[l] = src[l];
          }
        }
      }
    });
  });
  return out;
}

// ---- entry_mix -------------------------------------------------------------------------------

constexpr int64_t kPrefetch = 128;  // floats ahead on each input row (measured)

// Streaming (non-temporal) stores only where one vector is a whole 64-byte cache line: a
// tile's rows are written a vector at a time, GB rows apart, so half-line streaming stores
// (AVX2) leave partial lines in the write-combining buffers: measured 82 vs 12 ms for an
// entry_mix writing 205 MB on AMD EPYC (Zen 3), 167 vs 30 with 16 input features.
constexpr bool kStream = kW * sizeof(float) == 64;

inline void storev(float* p, vf v, bool stream) {
#if defined(__AVX512F__)
  if (stream) {  // p is 64-byte aligned when stream is set
    _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
    return;
  }
#endif
  (void)stream;
  std::memcpy(p, &v, sizeof(v));
}

// GB output rows x kW entries: out[g, t] = row[g, t] + col[g] + sum_f A[g, f] x[f, t], the GB
// accumulators in registers; x, out rows are N apart, row rows C apart, A rows F apart.
template <int GB>
inline void mix_tile(const float* x, int64_t N, int64_t F, const float* A, const float* col, const float* row,
                     int64_t C, float* out, bool stream, bool prefetch, bool relu) {
  vf acc[GB];
#pragma GCC unroll 16
  for (int g = 0; g < GB; ++g) acc[g] = loadv(row + g * C) + col[g];
  for (int64_t f = 0; f < F; ++f) {
    if (prefetch) __builtin_prefetch(x + f * N + kPrefetch);
    const vf xv = loadv(x + f * N);
#pragma GCC unroll 16
    for (int g = 0; g < GB; ++g) acc[g] += A[g * F + f] * xv;
  }
  if (relu) {  // the activation that follows, applied in registers (no pass over the output)
#pragma GCC unroll 16
    for (int g = 0; g < GB; ++g) acc[g] = acc[g] > 0.0f ? acc[g] : 0.0f;
  }
#pragma GCC unroll 16
  for (int g = 0; g < GB; ++g) storev(out + g * N, acc[g], stream);
}

template <int GB>
inline void mix_block(const float* x, int64_t N, int64_t F, int64_t C, const float* A, const float* col,
                      const float* row, float* out, bool stream, bool prefetch, bool relu) {
  int64_t j = 0;
  for (; j + kW <= C; j += kW) mix_tile<GB>(x + j, N, F, A, col, row + j, C, out + j, stream, prefetch, relu);
  const int64_t rem = C - j;
  if (rem == 0) return;
  // column tail: the last rem < kW columns through the same vector tile, on zero-padded copies
  // (a scalar tail cost more than the vector part on short rows: C = 10, 50 on AVX2)
  thread_local std::vector<float> xbuf;
  xbuf.assign(size_t(F) * kW, 0.0f);
  float rbuf[GB * kW] = {}, obuf[GB * kW];
  for (int64_t f = 0; f < F; ++f) std::memcpy(xbuf.data() + f * kW, x + f * N + j, rem * sizeof(float));
  for (int g = 0; g < GB; ++g) std::memcpy(rbuf + g * kW, row + g * C + j, rem * sizeof(float));
  mix_tile<GB>(xbuf.data(), kW, F, A, col, rbuf, kW, obuf, false, false, relu);
  for (int g = 0; g < GB; ++g) std::memcpy(out + g * N + j, obuf + g * kW, rem * sizeof(float));
}

// ---- entry_mix_grad ----------------------------------------------------------------------------

// Software prefetch into L2 of the next work item's rows, spread over the current item's
// compute-bound dW loop so the memory streams keep running while the FMA units are busy.
struct SpanPrefetch {
  const float* x = nullptr;  // first of K rows N apart (then H rows of y), each `lines` cache lines
  const float* y = nullptr;
  int64_t K = 0, H = 0, N = 0, lines = 0, per_step = 0, next = 0;

  void step() {
    for (int64_t i = 0; i < per_step && next < (K + H) * lines; ++i, ++next) {
      const int64_t row = next / lines, off = (next % lines) * 16;  // 16 floats: a cache line
      const float* p = row < K ? x + row * N + off : y + (row - K) * N + off;
      __builtin_prefetch(p, 0, 2);
    }
  }
};

// acc[k][h] += x[k, :C] * y[h, :C] lane-wise over kW-entry tiles (acc: K x H x kW lane partial
// sums); KB x HB register accumulators, x rows and y rows N apart; the column tail goes to lane 0.
template <int KB, int HB>
inline void outer_rows(const float* x, const float* y, int64_t N, int64_t C, int64_t H, float* acc,
                       SpanPrefetch& pf) {
  vf a[KB][HB];
#pragma GCC unroll 16
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h) a[k][h] = vf{};
  int64_t j = 0;
  for (; j + kW <= C; j += kW) {
    pf.step();
    vf xv[KB], yv[HB];
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h) yv[h] = loadv(y + h * N + j);
#pragma GCC unroll 16
    for (int k = 0; k < KB; ++k) xv[k] = loadv(x + k * N + j);
#pragma GCC unroll 16
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 16
      for (int h = 0; h < HB; ++h) a[k][h] += xv[k] * yv[h];
  }
  for (int k = 0; k < KB; ++k)
    for (int h = 0; h < HB; ++h) {
      float* dst = acc + (k * H + h) * kW;
      vf v = loadv(dst) + a[k][h];
      for (int64_t t = j; t < C; ++t) v[0] += x[k * N + t] * y[h * N + t];
      std::memcpy(dst, &v, sizeof(v));
    }
}

// dW[k, h] += x[k, :C] . y[h, :C] for every k, h (rows N apart): kKB x kHB register blocks,
// then the edges; prefetches the `next_len` floats at x + C, y + C of every row meanwhile (0: none)
inline void outer_row(const float* x, int64_t K, const float* y, int64_t H, int64_t N, int64_t C, float* acc,
                      int64_t next_len) {
  SpanPrefetch pf;
  if (next_len > 0) {
    const int64_t blocks = ((K + kKB - 1) / kKB) * ((H + kHB - 1) / kHB) + 1;
    const int64_t tiles = std::max<int64_t>(C / kW, 1);
    pf.x = x + C;
    pf.y = y + C;
    pf.K = K;
    pf.H = H;
    pf.N = N;
    pf.lines = (next_len + 15) / 16;
    pf.per_step = ((K + H) * pf.lines + blocks * tiles - 1) / (blocks * tiles);
  }
  int64_t h = 0;
  auto hrun = [&](auto hb) {
    constexpr int HB = decltype(hb)::value;
    for (; h + HB <= H; h += HB) {
      int64_t k = 0;
      for (; k + kKB <= K; k += kKB)
        outer_rows<kKB, HB>(x + k * N, y + h * N, N, C, H, acc + (k * H + h) * kW, pf);
      for (; k < K; ++k) outer_rows<1, HB>(x + k * N, y + h * N, N, C, H, acc + (k * H + h) * kW, pf);
    }
  };
  hrun(std::integral_constant<int, kHB>{});
  hrun(std::integral_constant<int, 1>{});
}

// out[b, g, r, c] = sum_f A[g, f] x[b, f, r, c] + col[b, g, r] + row[b, g, c]; with y (B, H, R, C)
// also dW[f, h] = sum_{b, r, c} x[b, f, r, c] y[b, h, r, c] from the same read of x (its rows are
// in the caches after the mix): with x an output gradient, A the transposed weight and y the
// layer's input, an NP backward's input adjoint and weight gradient in one pass. relu: out clamped
// at 0 as it is stored (the activation after an inference layer).
std::vector<at::Tensor> entry_mix_impl(const at::Tensor& x_, const at::Tensor& A_, const at::Tensor& col_,
                                       const at::Tensor& row_, const at::Tensor* y_, bool relu) {
  TORCH_CHECK(x_.dim() == 4 && x_.scalar_type() == at::kFloat, "entry_mix expects float32 x (B, F, R, C)");
  auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), R = x.size(2), C = x.size(3), N = R * C;
  auto A = A_.contiguous().to(at::kFloat);
  const int64_t G = A.size(0);
  TORCH_CHECK(A.dim() == 2 && A.size(1) == F, "entry_mix: A must be (G, F)");
  auto col = col_.contiguous().to(at::kFloat);
  auto row = row_.contiguous().to(at::kFloat);
  TORCH_CHECK(col.sizes() == at::IntArrayRef({B, G, R}), "entry_mix: col must be (B, G, R)");
  TORCH_CHECK(row.sizes() == at::IntArrayRef({B, G, C}), "entry_mix: row must be (B, G, C)");
  at::Tensor y;
  int64_t H = 0;
  if (y_ != nullptr) {
    TORCH_CHECK(y_->dim() == 4 && y_->size(0) == B && y_->size(2) == R && y_->size(3) == C,
                "entry_mix_grad: y must be (B, H, R, C) with x's B, R, C");
    y = y_->contiguous().to(at::kFloat);
    H = y.size(1);
  }
  auto out = at::empty({B, G, R, C}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* ap = A.data_ptr<float>();
  const float* cp = col.data_ptr<float>();
  const float* rp = row.data_ptr<float>();
  const float* yp = y_ != nullptr ? y.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // streaming stores bypass the caches: only for outputs far larger than them, on aligned rows
  const bool stream = kStream && out.numel() * 4 > (int64_t(32) << 20) && C % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(op) % 64 == 0;
  // lane partial sums of dW, one buffer per chunk of work items, summed in chunk order below
  // (deterministic for a given thread count, whichever thread ran which chunk)
  std::vector<std::pair<int64_t, std::vector<float>>> partials;
  std::mutex partials_lock;
  // work items: runs of rows of one batch element, ~1024 entries long (short rows together, so
  // dW's register blocks run over long contiguous spans while x's rows are still in the caches)
  const int64_t run_rows = std::max<int64_t>(1, std::min<int64_t>(R, 1024 / std::max<int64_t>(C, 1)));
  const int64_t runs = (R + run_rows - 1) / run_rows;
  at::parallel_for(0, B * runs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> colv(G), lanes(yp != nullptr ? size_t(F) * H * kW : 0, 0.0f);
    float* acc = yp != nullptr ? lanes.data() : nullptr;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / runs, r0 = (item % runs) * run_rows, r1 = std::min(R, r0 + run_rows);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t g = 0; g < G; ++g) colv[g] = cp[(b * G + g) * R + r];
        const float* xr = xp + b * F * N + r * C;
        int64_t g = 0;
        auto run = [&](auto gb) {
          constexpr int GB = decltype(gb)::value;
          for (; g + GB <= G; g += GB)
            mix_block<GB>(xr, N, F, C, ap + g * F, colv.data() + g, rp + (b * G + g) * C,
                          op + (b * G + g) * N + r * C, stream, g == 0, relu);
        };
        if constexpr (kMaxGB >= 16) run(std::integral_constant<int, 16>{});
        run(std::integral_constant<int, 8>{});
        run(std::integral_constant<int, 4>{});
        run(std::integral_constant<int, 1>{});
      }
      // the rows r0..r1 of a channel are one contiguous span of (r1 - r0) C entries
      // (and meanwhile prefetches the next run of rows of this batch element, if any)
      if (acc != nullptr)
        outer_row(xp + b * F * N + r0 * C, F, yp + b * H * N + r0 * C, H, N, (r1 - r0) * C, acc,
                  std::min(R - r1, run_rows) * C);
    }
    if (acc != nullptr) {
      std::lock_guard<std::mutex> guard(partials_lock);
      partials.emplace_back(begin, std::move(lanes));
    }
  });
  if (y_ == nullptr) return {out};
  std::sort(partials.begin(), partials.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  auto dW = at::zeros({F, H}, x.options());
  float* dp = dW.data_ptr<float>();
  for (const auto& part : partials)
    for (int64_t i = 0; i < F * H; ++i) {
      float s = 0;
      for (int l = 0; l < kW; ++l) s += part.second[i * kW + l];
      dp[i] += s;
    }
  return {out, dW};
}

at::Tensor entry_mix(const at::Tensor& x, const at::Tensor& A, const at::Tensor& col, const at::Tensor& row,
                     bool relu) {
  return entry_mix_impl(x, A, col, row, nullptr, relu)[0];
}

std::vector<at::Tensor> entry_mix_grad(const at::Tensor& x, const at::Tensor& A, const at::Tensor& col,
                                       const at::Tensor& row, const at::Tensor& y) {
  return entry_mix_impl(x, A, col, row, &y, false);
}

}  // namespace

TORCH_LIBRARY(nfopt_native, m) {
  m.def("entry_mlp(Tensor x, Tensor w1, Tensor c1, Tensor[] weights, Tensor[] biases) -> Tensor");
  m.def("entry_mix(Tensor x, Tensor A, Tensor col, Tensor row, bool relu=False) -> Tensor");
  m.def("entry_mix_grad(Tensor x, Tensor A, Tensor col, Tensor row, Tensor y) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(nfopt_native, CPU, m) {
  m.impl("entry_mlp", entry_mlp);
  m.impl("entry_mix", entry_mix);
  m.impl("entry_mix_grad", entry_mix_grad);
}
