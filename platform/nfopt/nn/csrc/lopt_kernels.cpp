// Fused CPU kernels of the learned update rule (see nfopt/lopt/kernels.py and lopt/rules.py).
//
// Per tensor of a population (entries flattened: (B, C, N)), lopt_features does in one call what
// the PyTorch path spends ~50 dispatched ops on: the gradient's non-finite entries zeroed, every
// momentum m_k <- m_k + (1 - beta_k)(g - m_k), v <- 0.999 v + 0.001 g^2, Adam's direction
// u = (m_0.9 / c1) / (sqrt(v / c2 + 1e-30) + 1e-8), the per-entry features [g, p, m_1..m_K (, u)]
// each scaled by 1 / sqrt(mean over the tensor of its square + eps), and the per-tensor
// statistics [log10(rms p + 1e-6), log10(fan-in), log10(snr + 1e-3)]. Each batch element's slice
// is written and then rescaled while it is still in L2.
// lopt_apply is the rule's bounded step p - B tanh(s mult) with s = d exp(a m) + h s_h and the
// per-tensor log step from the mean of the third output, exp and tanh by SLEEF (the vector math
// PyTorch's own CPU kernels use), in chunks that stay in L1.
// Float32 only (the Python side keeps the PyTorch path for other dtypes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#include <sleef.h>
#endif

namespace {

// x[i] <- exp(x[i]) / tanh(x[i]) in place, SLEEF's vector functions where the CPU has them: exp to 1
// ulp, tanh to 3.5 (its 1-ulp AVX2 version made lopt_apply 1.4x slower on Zen 3: 976 vs 701 us for
// the quickstart population's tensors, one thread)
template <bool Tanh>
inline void vmath(float* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(x + i, Tanh ? Sleef_tanhf16_u35(v) : Sleef_expf16_u10(v));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(x + i, m, Tanh ? Sleef_tanhf16_u35(v) : Sleef_expf16_u10(v));
    i = n;
  }
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(x + i, Tanh ? Sleef_tanhf8_u35avx2(v) : Sleef_expf8_u10avx2(v));
  }
#endif
  for (; i < n; ++i) x[i] = Tanh ? std::tanh(x[i]) : std::exp(x[i]);
}

// p's sizes (B, C, ...) with C channels
inline std::vector<int64_t> with_channels(const at::Tensor& p, int64_t c) {
  std::vector<int64_t> sizes(p.sizes().begin(), p.sizes().end());
  sizes[1] = c;
  return sizes;
}

inline int64_t grain(int64_t per_item) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(per_item, 1)); }

// (B, 1, ...) p, g, v and (B, K, ...) mom, entries flattened to N ->
// [feats (B, 2 + K + adam, ...), mom (B, K, ...), v (B, 1, ...), stats (B, 3)]
std::vector<at::Tensor> lopt_features(const at::Tensor& p_, const at::Tensor& g_, const at::Tensor& mom_,
                                      const at::Tensor& v_, at::ArrayRef<double> decays, int64_t k09, double c1,
                                      double c2, double eps, bool adam_feature, int64_t fan_in) {
  TORCH_CHECK(p_.dim() >= 3 && p_.size(1) == 1, "lopt_features expects p (B, 1, ...)");
  TORCH_CHECK(p_.scalar_type() == at::kFloat, "lopt_features is float32 only");
  const int64_t B = p_.size(0), N = p_.numel() / std::max<int64_t>(B, 1), K = static_cast<int64_t>(decays.size());
  TORCH_CHECK(g_.sizes() == p_.sizes() && v_.sizes() == p_.sizes(), "lopt_features: g and v must match p");
  TORCH_CHECK(mom_.dim() == p_.dim() && mom_.size(0) == B && mom_.size(1) == K && mom_.numel() == B * K * N,
              "lopt_features expects mom (B, K, ...) like p");
  TORCH_CHECK(0 <= k09 && k09 < K, "lopt_features: k09 out of range");
  auto p = p_.contiguous(), g = g_.contiguous(), mom = mom_.contiguous(), v = v_.contiguous();
  const int64_t F = 2 + K + (adam_feature ? 1 : 0);
  auto feats = at::empty(with_channels(p, F), p.options());
  auto mom_out = at::empty_like(mom);
  auto v_out = at::empty_like(v);
  auto stats = at::empty({B, 3}, p.options());
  const float* pp = p.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const float* mp = mom.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* fp = feats.data_ptr<float>();
  float* mo = mom_out.data_ptr<float>();
  float* vo = v_out.data_ptr<float>();
  float* sp = stats.data_ptr<float>();
  std::vector<float> w(K);
  for (int64_t k = 0; k < K; ++k) w[k] = static_cast<float>(1.0 - decays[k]);
  const float ic1 = static_cast<float>(1.0 / c1), ic2 = static_cast<float>(1.0 / c2);
  const double log_fan = std::log10(static_cast<double>(std::max<int64_t>(fan_in, 1)));
  at::parallel_for(0, B, grain(N * (F + K + 1)), [&](int64_t begin, int64_t end) {
    std::vector<double> sq(F);
    for (int64_t b = begin; b < end; ++b) {
      const float* pb = pp + b * N;
      const float* gb = gp + b * N;
      const float* vb = vp + b * N;
      float* fb = fp + b * F * N;
      float* vob = vo + b * N;
      float s = 0;
      float* f0 = fb;  // g, non-finite entries zeroed
_Pragma("omp simd reduction(+ : s)")
      for (int64_t n = 0; n < N; ++n) {
        const float x = std::isfinite(gb[n]) ? gb[n] : 0.0f;
        f0[n] = x;
        s += x * x;
      }
      sq[0] = s;
      s = 0;
      float* f1 = fb + N;  // p
_Pragma("omp simd reduction(+ : s)")
      for (int64_t n = 0; n < N; ++n) {
        f1[n] = pb[n];
        s += pb[n] * pb[n];
      }
      sq[1] = s;
      for (int64_t k = 0; k < K; ++k) {  // momenta: m + (1 - beta)(g - m), as torch.lerp rounds it
        const float* mk = mp + (b * K + k) * N;
        float* mok = mo + (b * K + k) * N;
        float* fk = fb + (2 + k) * N;
        const float wk = w[k], wc = 1.0f - wk;
        const bool from_start = std::abs(wk) < 0.5f;
        s = 0;
_Pragma("omp simd reduction(+ : s)")
        for (int64_t n = 0; n < N; ++n) {
          const float d = f0[n] - mk[n];
          const float m = from_start ? mk[n] + wk * d : f0[n] - d * wc;
          mok[n] = m;
          fk[n] = m;
          s += m * m;
        }
        sq[2 + k] = s;
      }
      float sv = 0;  // v: 0.999 v + 0.001 g^2
_Pragma("omp simd reduction(+ : sv)")
      for (int64_t n = 0; n < N; ++n) {
        const float x = vb[n] * 0.999f + 0.001f * (f0[n] * f0[n]);
        vob[n] = x;
        sv += x;
      }
      if (adam_feature) {  // Adam's direction from the new m_0.9 and v
        const float* m9 = mo + (b * K + k09) * N;
        float* fu = fb + (2 + K) * N;
        s = 0;
_Pragma("omp simd reduction(+ : s)")
        for (int64_t n = 0; n < N; ++n) {
          const float u = (m9[n] * ic1) / (std::sqrt(vob[n] * ic2 + 1e-30f) + 1e-8f);
          fu[n] = u;
          s += u * u;
        }
        sq[2 + K] = s;
      }
      for (int64_t c = 0; c < F; ++c) {  // second-moment normalisation, per channel
        const float scale = static_cast<float>(1.0 / std::sqrt(sq[c] / N + eps));
        float* fc = fb + c * N;
_Pragma("omp simd")
        for (int64_t n = 0; n < N; ++n) fc[n] *= scale;
      }
      const double rms_p = std::sqrt(sq[1] / N + 1e-16);
      const double snr = std::sqrt(sq[2 + k09] / N + 1e-24) / std::sqrt(sv / N + 1e-24);
      sp[b * 3 + 0] = static_cast<float>(std::log10(rms_p + 1e-6));
      sp[b * 3 + 1] = static_cast<float>(log_fan);
      sp[b * 3 + 2] = static_cast<float>(std::log10(snr + 1e-3));
    }
  });
  return {feats, mom_out, v_out, stats};
}

// p - B tanh(s mult_b) with s = o_0 exp(a o_1) + hand_scale h (h: Adam's direction from mom[:, k]
// and v, or the momentum mom[:, k] when v is absent, or none); mult_b = mult exp(r tanh(mean o_2 / r))
// with lr_head; non-finite steps zeroed. p (B, 1, ...), o (B, 2 or 3, ...) -> (B, 1, ...).
at::Tensor lopt_apply(const at::Tensor& p_, const at::Tensor& o_, const c10::optional<at::Tensor>& mom_,
                      int64_t k, const c10::optional<at::Tensor>& v_, double c1, double c2, double hand_scale,
                      double a, double mult, double bound, double r, bool lr_head) {
  TORCH_CHECK(p_.dim() >= 3 && p_.size(1) == 1, "lopt_apply expects p (B, 1, ...)");
  TORCH_CHECK(p_.scalar_type() == at::kFloat && o_.scalar_type() == at::kFloat, "lopt_apply is float32 only");
  const int64_t B = p_.size(0), N = p_.numel() / std::max<int64_t>(B, 1), O = o_.dim() > 1 ? o_.size(1) : 0;
  TORCH_CHECK(o_.dim() == p_.dim() && o_.size(0) == B && o_.numel() == B * O * N && O >= (lr_head ? 3 : 2),
              "lopt_apply expects o (B, 2 or 3, ...) like p");
  auto p = p_.contiguous(), o = o_.contiguous();
  const bool has_h = mom_.has_value() && mom_->defined();
  const bool adam = has_h && v_.has_value() && v_->defined();
  at::Tensor mom, v;
  int64_t K = 0;
  if (has_h) {
    mom = mom_->contiguous();
    K = mom.dim() > 1 ? mom.size(1) : 0;
    TORCH_CHECK(mom.dim() == p.dim() && mom.size(0) == B && mom.numel() == B * K * N && 0 <= k && k < K,
                "lopt_apply expects mom (B, K, ...) like p and 0 <= k < K");
  }
  if (adam) {
    v = v_->contiguous();
    TORCH_CHECK(v.sizes() == p.sizes(), "lopt_apply: v must match p");
  }
  auto out = at::empty_like(p);
  const float* pp = p.data_ptr<float>();
  const float* op = o.data_ptr<float>();
  const float* mp = has_h ? mom.data_ptr<float>() : nullptr;
  const float* vp = adam ? v.data_ptr<float>() : nullptr;
  float* qp = out.data_ptr<float>();
  const float ic1 = static_cast<float>(1.0 / c1), ic2 = static_cast<float>(1.0 / c2);
  const float fa = static_cast<float>(a), fb = static_cast<float>(bound), fh = static_cast<float>(hand_scale);
  constexpr int64_t T = 256;  // entries per chunk (kept in L1)
  at::parallel_for(0, B, grain(N * (O + 3)), [&](int64_t begin, int64_t end) {
    alignas(64) float e[T];
    alignas(64) float s[T];
    for (int64_t b = begin; b < end; ++b) {
      const float* o0 = op + b * O * N;
      const float* o1 = o0 + N;
      float m = static_cast<float>(mult);
      if (lr_head) {
        const float* o2 = o0 + 2 * N;
        double lam = 0;
_Pragma("omp simd reduction(+ : lam)")
        for (int64_t n = 0; n < N; ++n) lam += o2[n];
        const float l = static_cast<float>(lam / N);
        const float rr = static_cast<float>(r);
        m = static_cast<float>(mult) * std::exp(rr * std::tanh(l / rr));
      }
      const float* hm = has_h ? mp + (b * K + k) * N : nullptr;
      const float* hv = adam ? vp + b * N : nullptr;
      const float* pb = pp + b * N;
      float* qb = qp + b * N;
      for (int64_t n0 = 0; n0 < N; n0 += T) {
        const int64_t t = std::min(T, N - n0);
_Pragma("omp simd")
        for (int64_t i = 0; i < t; ++i) e[i] = fa * o1[n0 + i];
        vmath<false>(e, t);
        if (adam) {
_Pragma("omp simd")
          for (int64_t i = 0; i < t; ++i) {
            const float h = (hm[n0 + i] * ic1) / (std::sqrt(hv[n0 + i] * ic2 + 1e-30f) + 1e-8f);
            s[i] = (fh * h + o0[n0 + i] * e[i]) * m;
          }
        } else if (has_h) {
_Pragma("omp simd")
          for (int64_t i = 0; i < t; ++i) s[i] = (fh * hm[n0 + i] + o0[n0 + i] * e[i]) * m;
        } else {
_Pragma("omp simd")
          for (int64_t i = 0; i < t; ++i) s[i] = o0[n0 + i] * e[i] * m;
        }
        vmath<true>(s, t);
_Pragma("omp simd")
        for (int64_t i = 0; i < t; ++i) {
          const float step = fb * s[i];
          qb[n0 + i] = pb[n0 + i] - (step - step == 0.0f ? step : 0.0f);  // 0 where not finite, in vectors
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nfopt_native, m) {
  m.def(
      "lopt_features(Tensor p, Tensor g, Tensor mom, Tensor v, float[] decays, int k09, float c1, float c2, "
      "float eps, bool adam_feature, int fan_in) -> Tensor[]");
  m.def(
      "lopt_apply(Tensor p, Tensor o, Tensor? mom, int k, Tensor? v, float c1, float c2, float hand_scale, "
      "float a, float mult, float bound, float r, bool lr_head) -> Tensor");
}

TORCH_LIBRARY_IMPL(nfopt_native, CPU, m) {
  m.impl("lopt_features", lopt_features);
  m.impl("lopt_apply", lopt_apply);
}
