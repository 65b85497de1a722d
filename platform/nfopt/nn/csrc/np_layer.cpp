// An NP/HNP layer's forward and hand-written backward in C++ (see nfopt/nn/_core.py: `_forward`
// and `FusedEquivariantLinear.backward`, of which these are op-for-op ports on the native path).
// The big per-entry passes were already native kernels (np_kernels.cpp); what this file removes
// is the ~150 small tensor ops per layer issued from Python (pooled means, concatenations of
// transposed parts, the small GEMMs, splits, broadcast sums), each of which cost several times
// its ATen dispatch in the interpreter: ~1 ms per layer forward and backward on a 3-layer stack.
//
// The plan (which neuron layers are permutable, the sizes of the pooled parts) comes in as flat
// integer lists; the Python side keeps the plain-op path for torch.func, double backward and
// torch.compile, and tests the two for equality.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using OptList = c10::List<std::optional<Tensor>>;

Tensor entry_mix(const Tensor& x, const Tensor& A, const Tensor& col, const Tensor& row, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nfopt_native::entry_mix", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool)>();
  return op.call(x, A, col, row, relu);
}

std::vector<Tensor> entry_mix_grad(const Tensor& x, const Tensor& A, const Tensor& col, const Tensor& row,
                                   const Tensor& y) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("nfopt_native::entry_mix_grad", "")
          .typed<std::vector<Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&)>();
  return op.call(x, A, col, row, y);
}

std::optional<Tensor> opt(const OptList& list, int64_t i) { return list.get(i); }

// _core._fmul: (G, F) x (F, B, N) -> (G, B, N), one GEMM over the B N columns
Tensor fmul(const Tensor& w, const Tensor& x) {
  return w.mm(x.flatten(1)).view({w.size(0), x.size(1), x.size(2)});
}

// Whether the native per-entry mix takes x (B, F, R, C): float32 rows of at least 16 floats.
// Shorter rows are mostly column tail, padded row by row, and the batched GEMM wins (C = 10 on
// AVX2: kernel 163 us, GEMM 124); from 24 floats the kernel took 37-79% of the GEMM's time.
bool mix_native(const Tensor& x) { return x.scalar_type() == at::kFloat && x.size(3) >= 16; }

// w x + col + row per entry, (B, F, R, C) -> (B, G, R, C): the native mix where it applies,
// else a broadcast-filled output and one batched GEMM accumulating into it (_core._entry_mix)
Tensor mix(const Tensor& x, const Tensor& w, const Tensor& col, const Tensor& row, bool relu) {
  if (mix_native(x)) return entry_mix(x, w, col, row, relu);
  const int64_t B = x.size(0), F = x.size(1), R = x.size(2), C = x.size(3);
  Tensor h = at::add(col.unsqueeze(-1), row.unsqueeze(2));
  h.view({B, h.size(1), R * C}).baddbmm_(w.expand({B, w.size(0), w.size(1)}), x.reshape({B, F, R * C}));
  if (relu) h.relu_();
  return h;
}

// _mix.outer_sum: sum_b a[b] b[b]^T, (B, O, N) x (B, D, N) -> (O, D)
Tensor outer_sum(const Tensor& a, const Tensor& b) {
  const int64_t B = a.size(0), O = a.size(1), N = a.size(2), D = b.size(1);
  if (N >= 2048 && std::min(O, D) == 1) {
    Tensor acc = a[0].mm(b[0].t());
    for (int64_t k = 1; k < B; ++k) acc.addmm_(a[k], b[k].t());
    return acc;
  }
  if (O * D <= 4 * N * (O + D)) return at::bmm(a, b.transpose(1, 2)).sum(0);
  return a.transpose(0, 1).reshape({O, B * N}).mm(b.transpose(0, 1).reshape({D, B * N}).t());
}

Tensor weight_grad(const Tensor& dh, const Tensor& x) {
  const int64_t B = x.size(0), F = x.size(1), N = x.size(2) * x.size(3);
  return outer_sum(dh.reshape({B, dh.size(1), N}), x.reshape({B, F, N}));
}

// The global terms' products, z (B, Dz) x Z (Dz, Dout) and dglob (B, Dout) x Z^T: a short
// left operand against a big map. For 16 <= B <= 128 rows and a map of at least 2^18 entries
// (1 MiB) MKL runs them faster as the transposed products (Z^T z^T)^T, (Z dglob^T)^T. Cold-cache
// medians on this 2-core AMD host (2026-12-04), forward and adjoint: B = 32, D = 1392: 2.14 ->
// 1.60 ms and 2.21 -> 1.84; D = 3000: 12.4 -> 8.5 and 11.9 -> 7.2; D = 528: 0.45 -> 0.36 and
// 0.47 -> 0.35; B = 128: 0.79-0.97x. Outside the window it loses: at D <= 192 the transposed
// forward took 1.06-1.8x as long (tens of us), at B = 8 and D = 1392 3.3x. On that path the
// result is (B, N) with strides (1, B).
bool short_rows(const Tensor& a, const Tensor& map) {
  return a.size(0) >= 16 && a.size(0) <= 128 && map.numel() >= (int64_t{1} << 18);
}

Tensor global_fwd(const Tensor& beta, const Tensor& z, const Tensor& Z) {
  if (!short_rows(z, Z)) return at::addmm(beta, z, Z);
  const Tensor bias = beta.dim() == 1 ? beta.unsqueeze(1) : beta.t();
  return at::addmm(bias, Z.t(), z.t()).t();
}

Tensor global_adjoint(const Tensor& dglob, const Tensor& Z) {
  return short_rows(dglob, Z) ? Z.mm(dglob.t()).t() : dglob.mm(Z.t());
}

// body(b, f) for every batch element b < B and feature f < F, in tiles of 16 features spread over
// the threads, batch inside a tile: the traversal of the transposes between the layer's (B, F, n)
// layout and the feature-major (F, B, n) one, so a tile reads or writes one run of 16 n values
// per batch element and 16 sequential streams on the other side (batch outside, each f's piece
// of n values lands B n values apart: a page apart at B n = 1024, every store another page)
template <typename Body>
void for_feature_tiles(int64_t F, int64_t B, int64_t n, const Body& body) {
  constexpr int64_t kTile = 16;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, B * n));
  at::parallel_for(0, (F + kTile - 1) / kTile, grain, [&](int64_t t0, int64_t t1) {
    const Body run = body;  // a copy per thread: its captures stay in registers across the stores
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t f = t * kTile; f < std::min(F, (t + 1) * kTile); ++f) run(b, f);
  });
}

// out (B, G, n) = act(sg g[b, g] + st t[g, b, :]) for a feature-major product t (G, B, n) and a
// per-(batch, feature) term g (B, G), any strides: the transposing broadcast sum that turns a
// neuron map's output back into the layer's layout, with the ReLU that follows applied as it is
// stored (it was at::add of a transposed view, ~1.2 ms in the profiler on a (1024, 32, 32)
// product, then a ReLU pass over the output), in for_feature_tiles' order.
Tensor transpose_add(const Tensor& g, const Tensor& t_, double sg, double st, bool relu) {
  const Tensor t = t_.contiguous();
  const int64_t G = t.size(0), B = t.size(1), n = t.size(2);
  TORCH_CHECK(g.dim() == 2 && g.size(0) == B && g.size(1) == G, "transpose_add: g must be (B, G)");
  Tensor out = at::empty({B, G, n}, t.options());
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "nfopt_transpose_add", [&] {
    const Tensor gc = g.to(t.scalar_type());
    const scalar_t* tp = t.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const int64_t gs0 = gc.stride(0), gs1 = gc.stride(1);
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t a = static_cast<scalar_t>(sg), c = static_cast<scalar_t>(st);
    for_feature_tiles(G, B, n, [=](int64_t b, int64_t f) {
      const scalar_t base = a * gp[b * gs0 + f * gs1];
      const scalar_t* src = tp + (f * B + b) * n;
      scalar_t* dst = op + (b * G + f) * n;
      if (relu) {
_Pragma("omp simd")
        for (int64_t r = 0; r < n; ++r) {
          const scalar_t v = base + c * src[r];
          dst[r] = v > scalar_t(0) ? v : scalar_t(0);
        }
      } else {
_Pragma("omp simd")
        for (int64_t r = 0; r < n; ++r) dst[r] = base + c * src[r];
      }
    });
  });
  return out;
}

// Output parts of P_level: [kappa, upsilon] of the incoming layer, [rho] of the outgoing one
int64_t n_parts(int64_t level, int64_t L) { return (level >= 1 ? 2 : 0) + (level < L ? 1 : 0); }

// The plan's lists against each other: L weights, L biases, L A's, L + 1 flags and Q's, each
// permutable level's part sizes, 2L global sizes.
void check_plan(const char* op, int64_t L, size_t n_bias, const OptList& A, const OptList& Q, at::IntArrayRef perm,
                at::IntArrayRef parts, at::IntArrayRef z_parts) {
  int64_t n = 0;
  for (int64_t level = 0; level < static_cast<int64_t>(perm.size()); ++level)
    if (perm[level]) n += n_parts(level, L);
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(n_bias) == L && static_cast<int64_t>(A.size()) == L &&
                  static_cast<int64_t>(Q.size()) == L + 1 && static_cast<int64_t>(perm.size()) == L + 1 &&
                  static_cast<int64_t>(parts.size()) == n && static_cast<int64_t>(z_parts.size()) == 2 * L,
              op, ": the plan's lists do not match ", L, " layers");
  for (int64_t level = 0; level <= L; ++level)
    TORCH_CHECK(Q.get(level).has_value() == (perm[level] != 0), op, ": Q[", level, "] present iff level permutable");
}

// One folded column's pass: its total, and (dst) its values scaled by sc; kMask: values where
// the mask m is not positive read as 0 (a ReLU's backward applied as the gradient is read).
template <bool kMask, typename T>
inline T column_run(const T* x, const T* m, T* dst, int64_t R, T sc) {
  T total = 0;
  if (dst != nullptr) {
_Pragma("omp simd reduction(+ : total)")
    for (int64_t r = 0; r < R; ++r) {
      const T v = kMask ? (m[r] > T(0) ? x[r] : T(0)) : x[r];
      total += v;
      dst[r] = v * sc;
    }
  } else {
_Pragma("omp simd reduction(+ : total)")
    for (int64_t r = 0; r < R; ++r) total += kMask ? (m[r] > T(0) ? x[r] : T(0)) : x[r];
  }
  return total;
}

// A layer's pooled features in the layouts its small GEMMs take, in one pass over each input and
// with every small output written in place (the per-part means, concatenations and transposing
// copies were ~35 small ops per layer): z (B, Dz) = [the totals of x_1..x_L (F_i each), of
// b_1..b_L (Fb_i each)] and for each permutable neuron layer l, P_l (D_l, B, n_l) = [the column
// sums of x_l-1 (F), b_l-1 itself (Fb), the row sums of x_l (F)] (absent parts dropped). `mean`:
// every sum divided by its count (the forward's pooled means; the bias part stays as it is),
// else plain sums (the backward's reductions of output gradients, with x the weights' and b the
// biases' gradients). x_i (B, F, m_r, m_c), b_i (B, Fb, m_r), any float dtype, all alike.
// With `dot_with[i]` (B, 1, m_r, m_c) defined, also dots[i] (B, F) = sum_{r,c} x_i y in the same
// pass: the weight gradient of a one-feature input y (the data into a stack).
// With `masks[i]` (x_i's shape) defined, x_i's entries where the mask is not positive read as 0
// (a ReLU's backward fused into the read; folded one-column inputs without dot_with only).
struct Pooled {
  Tensor z;
  std::vector<Tensor> P, dots;
};

Pooled pool_into(at::TensorList xs_, at::TensorList bs_, at::IntArrayRef perm, bool mean,
                 const std::vector<Tensor>& dot_with = {}, const std::vector<Tensor>& masks = {}) {
  const int64_t L = static_cast<int64_t>(xs_.size());
  std::vector<Tensor> xs, bs;
  for (int64_t i = 0; i < L; ++i) {
    xs.push_back(xs_[i].contiguous());
    bs.push_back(bs_[i].contiguous());
    TORCH_CHECK(xs[i].dim() == 4 && bs[i].dim() == 3 && xs[i].size(0) == xs[0].size(0) &&
                    bs[i].size(0) == xs[0].size(0) && bs[i].size(2) == xs[i].size(2) &&
                    xs[i].scalar_type() == xs[0].scalar_type() && bs[i].scalar_type() == xs[0].scalar_type(),
                "np layer: inputs must be x (B, F, m_r, m_c) and b (B, Fb, m_r) of one dtype, layer ", i);
  }
  const int64_t B = xs[0].size(0);
  for (int64_t level = 1; level < L; ++level)  // a permutable layer's size, seen from both sides
    TORCH_CHECK(!perm[level] || xs[level].size(3) == xs[level - 1].size(2), "np layer: weight ", level,
                " has ", xs[level].size(3), " columns, weight ", level - 1, " has ", xs[level - 1].size(2), " rows");
  std::vector<int64_t> zx(L), zb(L);  // offsets of each tensor's totals in z
  int64_t dz = 0;
  for (int64_t i = 0; i < L; ++i) zx[i] = std::exchange(dz, dz + xs[i].size(1));
  for (int64_t i = 0; i < L; ++i) zb[i] = std::exchange(dz, dz + bs[i].size(1));
  Tensor z = at::empty({B, dz}, xs[0].options());
  std::vector<Tensor> P(L + 1), dots(L), ys(L);
  for (int64_t i = 0; i < static_cast<int64_t>(dot_with.size()); ++i) {
    if (!dot_with[i].defined()) continue;
    ys[i] = dot_with[i].contiguous().to(xs[0].scalar_type());
    TORCH_CHECK(ys[i].numel() == B * xs[i].size(2) * xs[i].size(3), "np layer: dot input must be (B, 1, m_r, m_c)");
    dots[i] = at::empty({B, xs[i].size(1)}, xs[0].options());
  }
  for (int64_t level = 0; level <= L; ++level) {
    if (!perm[level]) continue;
    const int64_t d = (level >= 1 ? xs[level - 1].size(1) + bs[level - 1].size(1) : 0) +
                      (level < L ? xs[level].size(1) : 0);
    const int64_t n = level >= 1 ? xs[level - 1].size(2) : xs[0].size(3);
    P[level] = at::empty({d, B, n}, xs[0].options());
  }
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "nfopt_np_pool", [&] {
    scalar_t* zp = z.data_ptr<scalar_t>();
    for (int64_t i = 0; i < L; ++i) {
      const int64_t F = xs[i].size(1), R = xs[i].size(2), C = xs[i].size(3), Fb = bs[i].size(1);
      const scalar_t* xp = xs[i].data_ptr<scalar_t>();
      const scalar_t* bp = bs[i].data_ptr<scalar_t>();
      const scalar_t* yp = ys[i].defined() ? ys[i].data_ptr<scalar_t>() : nullptr;
      scalar_t* dp = ys[i].defined() ? dots[i].data_ptr<scalar_t>() : nullptr;
      // column sums of x_i -> P_{i+1}'s first part; row sums -> P_i's last part
      scalar_t* pc = perm[i + 1] ? P[i + 1].data_ptr<scalar_t>() : nullptr;
      scalar_t* pr = perm[i] ? P[i].data_ptr<scalar_t>() + (P[i].size(0) - F) * B * C : nullptr;
      const scalar_t sc = mean ? scalar_t(1) / C : scalar_t(1), sr = mean ? scalar_t(1) / R : scalar_t(1);
      const scalar_t st = mean ? scalar_t(1) / (R * C) : scalar_t(1);
      const Tensor mask = i < static_cast<int64_t>(masks.size()) ? masks[i] : Tensor();
      const scalar_t* mp = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
      TORCH_CHECK(mp == nullptr || (C == 1 && yp == nullptr && mask.numel() == xs[i].numel()),
                  "np layer: a mask applies to folded columns only, with their shape");
      if (C == 1 && yp == nullptr) {  // columns (a folded input layer): one tight loop per column
        // in for_feature_tiles' order: each feature's B rows land in P as one run of B R values
        const int64_t zo = zx[i];
        for_feature_tiles(F, B, R, [=](int64_t b, int64_t f) {
          const int64_t off = (b * F + f) * R;
          scalar_t* dst = pc != nullptr ? pc + (f * B + b) * R : nullptr;
          const scalar_t total = mp != nullptr ? column_run<true>(xp + off, mp + off, dst, R, sc)
                                               : column_run<false>(xp + off, mp, dst, R, sc);
          if (pr != nullptr) pr[f * B + b] = total * sr;
          zp[b * dz + zo + f] = total * st;
        });
      } else
      at::parallel_for(0, B * F, std::max<int64_t>(1, 32768 / (R * C)), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> rows(C);
        for (int64_t bf = begin; bf < end; ++bf) {
          const int64_t b = bf / F, f = bf % F;
          const scalar_t* xb = xp + bf * R * C;
          std::fill(rows.begin(), rows.end(), scalar_t(0));
          scalar_t* rb = rows.data();
          scalar_t total = 0, dot = 0;
          for (int64_t r = 0; r < R; ++r) {
            const scalar_t* xr = xb + r * C;
            scalar_t s = 0;
            if (yp != nullptr) {
              const scalar_t* yr = yp + (b * R + r) * C;
_Pragma("omp simd reduction(+ : s, dot)")
              for (int64_t c = 0; c < C; ++c) {
                s += xr[c];
                dot += xr[c] * yr[c];
                rb[c] += xr[c];
              }
            } else {
_Pragma("omp simd reduction(+ : s)")
              for (int64_t c = 0; c < C; ++c) {
                s += xr[c];
                rb[c] += xr[c];
              }
            }
            total += s;
            if (pc != nullptr) pc[(f * B + b) * R + r] = s * sc;
          }
          if (pr != nullptr)
            for (int64_t c = 0; c < C; ++c) pr[(f * B + b) * C + c] = rb[c] * sr;
          zp[b * dz + zx[i] + f] = total * st;
          if (dp != nullptr) dp[bf] = dot;
        }
      });
      // b_i -> P_{i+1}'s middle part as it is, its totals -> z
      scalar_t* pb = perm[i + 1] ? P[i + 1].data_ptr<scalar_t>() + F * B * R : nullptr;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t f = 0; f < Fb; ++f) {
          const scalar_t* src = bp + (b * Fb + f) * R;
          scalar_t total = 0;
          for (int64_t r = 0; r < R; ++r) total += src[r];
          if (pb != nullptr) std::copy(src, src + R, pb + (f * B + b) * R);
          zp[b * dz + zb[i] + f] = total * sr;
        }
    }
  });
  return {z, P, dots};
}

// pool_into as an op, for tests: [z, *P of the permutable levels]
std::vector<Tensor> np_pool(at::TensorList xs, at::TensorList bs, at::IntArrayRef perm, bool mean) {
  TORCH_CHECK(bs.size() == xs.size() && perm.size() == xs.size() + 1 && !xs.empty(),
              "np_pool: L weights, L biases and L + 1 permutable flags");
  auto pooled = pool_into(xs, bs, perm, mean);
  std::vector<Tensor> ret{pooled.z};
  for (const Tensor& p : pooled.P)
    if (p.defined()) ret.push_back(p);
  return ret;
}

// Returns [*hs, *us, z, *P] (P: one per permutable neuron layer, in order). `parts_out` holds the
// output part sizes of every permutable level in order, `z_out` the 2L global output sizes.
std::vector<Tensor> np_forward(at::TensorList xs, at::TensorList bs, const OptList& A, const OptList& Q,
                               const Tensor& Z, const Tensor& beta, at::IntArrayRef perm, at::IntArrayRef parts_out,
                               at::IntArrayRef z_out, bool relu) {
  const int64_t L = static_cast<int64_t>(xs.size());
  check_plan("np_forward", L, bs.size(), A, Q, perm, parts_out, z_out);
  auto pooled = pool_into(xs, bs, perm, true);  // pooled means
  const Tensor& z = pooled.z;
  const std::vector<Tensor>& P = pooled.P;
  // the small matmuls: per-neuron terms and the global ones
  auto glob = global_fwd(beta, z, Z).split_with_sizes(z_out, -1);
  std::vector<Tensor> kappa(L), ups(L), rho(L);
  int64_t k = 0;
  for (int64_t level = 0; level <= L; ++level) {
    if (!perm[level]) continue;
    const int64_t np = n_parts(level, L);
    auto outs = fmul(*opt(Q, level), P[level]).split_with_sizes(parts_out.slice(k, np));
    k += np;
    if (level >= 1) {
      kappa[level - 1] = outs[0].transpose(0, 1);
      ups[level - 1] = outs[1].transpose(0, 1);
    }
    if (level < L) rho[level] = outs[np - 1].transpose(0, 1);
  }
  std::vector<Tensor> ret;
  ret.reserve(3 * L + 2);
  for (int64_t i = 0; i < L; ++i) {  // the weights' outputs (see _core._forward for the layouts)
    const Tensor zt = glob[i].unsqueeze(-1);  // (B, G, 1)
    const auto a = opt(A, i);
    Tensor h;
    if (!a.has_value() && (rho[i].defined() != kappa[i].defined())) {
      // a folded input or output layer: one broadcast term, written straight into the output
      // layout with the ReLU (kappa (G, B, m_r) / rho (G, B, m_c), transposed back)
      const Tensor& t = rho[i].defined() ? rho[i] : kappa[i];
      h = transpose_add(glob[i], t.transpose(0, 1), 1.0, 1.0, relu);
      h = rho[i].defined() ? h.unsqueeze(2) : h.unsqueeze(-1);
      ret.push_back(h);
      continue;
    }
    Tensor row, col;
    if (rho[i].defined()) {
      row = at::add(zt, rho[i]).contiguous();  // (B, G, m_c)
      if (kappa[i].defined()) col = kappa[i].contiguous();
    } else if (kappa[i].defined()) {
      col = at::add(zt, kappa[i]).contiguous();  // (B, G, m_r)
    } else {
      col = zt;
    }
    if (a.has_value()) {
      h = mix(xs[i], *a, col, row, relu);
    } else if (row.defined()) {
      h = col.defined() ? at::add(row.unsqueeze(2), col.unsqueeze(-1)) : row.unsqueeze(2).contiguous();
    } else {
      h = col.unsqueeze(-1).contiguous();
    }
    if (relu && !a.has_value()) h = at::relu(h);
    ret.push_back(h);
  }
  for (int64_t i = 0; i < L; ++i) {
    const Tensor vt = glob[L + i].unsqueeze(-1);  // (B, Gb, 1)
    Tensor u = ups[i].defined() ? at::add(vt, ups[i]).contiguous() : vt.contiguous();
    ret.push_back(relu ? at::relu(u) : u);
  }
  ret.push_back(z);
  for (int64_t level = 0; level <= L; ++level)
    if (perm[level]) ret.push_back(P[level]);
  return ret;
}

// Returns [*dxs, *dbs, *dA, *dQ, dZ, dbeta], each list holding only the gradients that exist
// (inputs in need_x / need_b, present A and Q).
// `outs`: the layer's outputs when it applied a ReLU (its mask), else empty; `parts_in` the input
// part sizes of every permutable level's P in order, `z_in` the 2L global input sizes.
std::vector<Tensor> np_backward(at::TensorList dhs_, at::TensorList dus_, at::TensorList xs, const OptList& A,
                                const OptList& Q, const Tensor& Z, const Tensor& z, at::TensorList Pp,
                                at::TensorList outs, at::IntArrayRef perm, at::IntArrayRef parts_in,
                                at::IntArrayRef z_in, at::IntArrayRef need_x, at::IntArrayRef need_b,
                                bool beta_per_batch) {
  const int64_t L = static_cast<int64_t>(xs.size());
  check_plan("np_backward", L, dus_.size(), A, Q, perm, parts_in, z_in);
  int64_t levels = 0;
  for (int64_t p : perm) levels += p != 0;
  TORCH_CHECK(static_cast<int64_t>(dhs_.size()) == L && static_cast<int64_t>(Pp.size()) == levels &&
                  static_cast<int64_t>(need_x.size()) == L && static_cast<int64_t>(need_b.size()) == L &&
                  (outs.empty() || static_cast<int64_t>(outs.size()) == 2 * L),
              "np_backward: list lengths do not match the plan");
  std::vector<Tensor> dhs(L), dus(L), masks(L);
  for (int64_t i = 0; i < L; ++i) {
    dhs[i] = dhs_[i].contiguous();
    dus[i] = dus_[i];
    if (!outs.empty()) {  // the ReLU's backward: gradients through positive outputs only
      // a folded one-column output without a per-entry term is only read by the pooling below:
      // the mask is applied there, as it reads (saves a pass over the biggest gradient)
      if (!opt(A, i).has_value() && dhs[i].size(3) == 1)
        masks[i] = outs[i].contiguous();
      else
        dhs[i] = at::threshold_backward(dhs[i], outs[i], 0);
      dus[i] = at::threshold_backward(dus[i], outs[L + i], 0);
    }
  }
  std::vector<Tensor> P(L + 1);
  {
    int64_t k = 0;
    for (int64_t level = 0; level <= L; ++level)
      if (perm[level]) P[level] = Pp[k++];
  }
  // 1. reductions of the output gradients (the adjoints of the broadcasts): dglob (B, sum G) the
  // totals of every output's gradient, dout_l (sum out parts, B, n_l) the sums that meet at each
  // permutable neuron layer, and for a one-feature input (the data into a stack) its dA too
  std::vector<Tensor> dA(L), dot_with(L);
  for (int64_t i = 0; i < L; ++i)
    if (opt(A, i).has_value() && xs[i].size(1) == 1) dot_with[i] = xs[i];
  auto pooled = pool_into(dhs, dus, perm, false, dot_with, masks);
  for (int64_t i = 0; i < L; ++i)
    if (dot_with[i].defined()) dA[i] = pooled.dots[i].sum(0).unsqueeze(1);  // (G, 1)
  const Tensor& dglob = pooled.z;
  // 2. global terms
  const Tensor dZ = z.t().mm(dglob);
  const Tensor dbeta = beta_per_batch ? dglob : dglob.sum(0);
  bool need_in = false;
  for (int64_t i = 0; i < L; ++i) need_in = need_in || need_x[i] || need_b[i];
  std::vector<Tensor> dz;
  if (need_in) dz = global_adjoint(dglob, Z).split_with_sizes(z_in, -1);
  // 3. per-neuron terms
  std::vector<Tensor> dc(L), db_direct(L), dr(L), dQ(L + 1);
  int64_t k = 0;
  for (int64_t level = 0; level <= L; ++level) {
    if (!perm[level]) continue;
    const int64_t np = n_parts(level, L);
    const Tensor& dout = pooled.P[level];  // (sum out parts, B, n_level)
    const Tensor& p = P[level];
    dQ[level] = dout.flatten(1).mm(p.flatten(1).t());
    if (need_in) {
      auto dp = fmul(opt(Q, level)->t(), dout).split_with_sizes(parts_in.slice(k, np));
      if (level >= 1) {
        dc[level - 1] = dp[0].transpose(0, 1);
        db_direct[level - 1] = dp[1].transpose(0, 1);
      }
      if (level < L) dr[level] = dp[np - 1].transpose(0, 1);
    }
    k += np;
  }
  // 4. input gradients: per-entry adjoint plus broadcast adjoints of the means
  std::vector<Tensor> dxs(L), dbs(L);
  for (int64_t i = 0; i < L; ++i) {
    const Tensor& x = xs[i];
    const int64_t bsz = x.size(0), f = x.size(1), mr = x.size(2), mc = x.size(3);
    const auto a = opt(A, i);
    if (!need_x[i]) {  // e.g. the first layer's input: skip the big pass
      if (a.has_value() && !dA[i].defined()) dA[i] = weight_grad(dhs[i], x);
    } else {
      // the global mean, via c_i: (B, F, 1), or with dc (F, B, m_r) transposed back, (B, F, m_r)
      const Tensor dct = dc[i].defined()
                             ? transpose_add(dz[i], dc[i].transpose(0, 1), 1.0 / (mr * mc), 1.0 / mc, false)
                             : dz[i].unsqueeze(-1).mul(1.0 / (mr * mc));
      if (a.has_value()) {  // (B, F, m_r, m_c) and, unless known, (G, F)
        const Tensor wt = a->t(), col = dct.expand({bsz, f, mr}), row = dr[i].mul(1.0 / mr);
        const Tensor& dh = dhs[i];
        // the adjoint and dA in one native pass where G F <= 4096 (37-39 vs 54-57 ms for the mix
        // and a batched GEMM on a (32, 16, 128, 784) pair; past that the product's lane
        // partials leave the caches: 4.06 vs 3.39 ms at G = F = 144, 12.2 vs 8.8 at 256)
        if (!dA[i].defined() && mix_native(dh) && dh.size(1) * f <= 4096) {
          auto res = entry_mix_grad(dh, wt, col, row, x);
          dxs[i] = res[0];
          dA[i] = res[1];
        } else {
          if (!dA[i].defined()) dA[i] = weight_grad(dh, x);
          dxs[i] = mix(dh, wt, col, row, false);
        }
      } else {
        Tensor dx = dct.unsqueeze(-1);
        if (dr[i].defined()) dx = at::add(dx, dr[i].unsqueeze(2), 1.0 / mr);
        dxs[i] = dx.expand({bsz, f, mr, mc}).contiguous();
      }
    }
    if (!need_b[i]) continue;
    Tensor db = dz[L + i].unsqueeze(-1).mul(1.0 / mr);
    if (db_direct[i].defined()) db = db + db_direct[i];
    dbs[i] = db.expand({bsz, db.size(1), mr}).contiguous();
  }
  // only the gradients that exist (a Tensor[] holds no None): the caller knows which
  std::vector<Tensor> ret;
  ret.reserve(4 * L + 3);
  for (const auto* part : {&dxs, &dbs, &dA, &dQ})
    for (const Tensor& t : *part)
      if (t.defined()) ret.push_back(t);
  ret.push_back(dZ);
  ret.push_back(dbeta);
  return ret;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nfopt_native, m) {
  m.def("np_pool(Tensor[] xs, Tensor[] bs, int[] perm, bool mean) -> Tensor[]");
  m.def(
      "np_forward(Tensor[] xs, Tensor[] bs, Tensor?[] A, Tensor?[] Q, Tensor Z, Tensor beta, int[] perm, "
      "int[] parts_out, int[] z_out, bool relu) -> Tensor[]");
  m.def(
      "np_backward(Tensor[] dhs, Tensor[] dus, Tensor[] xs, Tensor?[] A, Tensor?[] Q, Tensor Z, Tensor z, "
      "Tensor[] P, Tensor[] outs, int[] perm, int[] parts_in, int[] z_in, int[] need_x, int[] need_b, "
      "bool beta_per_batch) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(nfopt_native, CPU, m) {
  m.impl("np_pool", np_pool);
  m.impl("np_forward", np_forward);
  m.impl("np_backward", np_backward);
}
