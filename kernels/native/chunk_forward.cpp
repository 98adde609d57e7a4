// A prompt's pass through the gated delta rule on CPU without autograd: chunk by chunk per head, every chunk's
// products on cache-resident blocks in one call (the recurrent analogue of the teacher's fused sdpa prefill). The
// arithmetic is the WY form of kernels/delta_rule/chunk.py (Yang et al. 2024, arXiv 2406.06484, §3) taken
// sequentially over chunks, so no chunk-to-chunk transition matrices are formed, and with exact pairwise decay
// ratios exp(b_t - b_s) <= 1 (no midpoint factoring, no chunk halving).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

using torch::Tensor;

namespace {

// Eight floats as one vector (GCC/Clang extension): AVX registers where the build targets them, SSE pairs otherwise.
typedef float vec8 __attribute__((vector_size(32)));

inline vec8 load8(const float* p) {
  vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, vec8 v) { std::memcpy(p, &v, sizeof v); }
inline vec8 splat(float x) { return vec8{x, x, x, x, x, x, x, x}; }

// C[M x N] = A[M x P] B[P x N] (+ C when accumulate), row-major with leading dimensions: blocks of 4 rows x 16
// columns held in registers, the rest by plain loops.
void gemm(int64_t M, int64_t N, int64_t P, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) {
    const float *a0 = A + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    float *c0 = C + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
    int64_t j = 0;
    for (; j + 16 <= N; j += 16) {
      vec8 x00 = {}, x01 = {}, x10 = {}, x11 = {}, x20 = {}, x21 = {}, x30 = {}, x31 = {};
      if (accumulate) {
        x00 = load8(c0 + j), x01 = load8(c0 + j + 8), x10 = load8(c1 + j), x11 = load8(c1 + j + 8);
        x20 = load8(c2 + j), x21 = load8(c2 + j + 8), x30 = load8(c3 + j), x31 = load8(c3 + j + 8);
      }
      for (int64_t p = 0; p < P; ++p) {
        const float* b = B + p * ldb + j;
        const vec8 b0 = load8(b), b1 = load8(b + 8);
        vec8 a = splat(a0[p]);
        x00 += a * b0, x01 += a * b1;
        a = splat(a1[p]);
        x10 += a * b0, x11 += a * b1;
        a = splat(a2[p]);
        x20 += a * b0, x21 += a * b1;
        a = splat(a3[p]);
        x30 += a * b0, x31 += a * b1;
      }
      store8(c0 + j, x00), store8(c0 + j + 8, x01), store8(c1 + j, x10), store8(c1 + j + 8, x11);
      store8(c2 + j, x20), store8(c2 + j + 8, x21), store8(c3 + j, x30), store8(c3 + j + 8, x31);
    }
    for (int64_t r = 0; r < 4 && j < N; ++r) {
      const float* a = A + (i + r) * lda;
      float* c = C + (i + r) * ldc;
      for (int64_t jj = j; jj < N; ++jj) {
        float sum = accumulate ? c[jj] : 0.f;
        for (int64_t p = 0; p < P; ++p) sum += a[p] * B[p * ldb + jj];
        c[jj] = sum;
      }
    }
  }
  for (; i < M; ++i) {
    const float* a = A + i * lda;
    float* c = C + i * ldc;
    if (!accumulate)
      for (int64_t j = 0; j < N; ++j) c[j] = 0.f;
    for (int64_t p = 0; p < P; ++p) {
      const float x = a[p];
      const float* b = B + p * ldb;
      for (int64_t j = 0; j < N; ++j) c[j] += x * b[j];
    }
  }
}

// exp(x) for x <= 0, with decays below exp(floor) dropped: no denormal ever enters a product (the Python form's
// DENORMALS.delta_floor).
inline float decay(float x, float floor) { return x < floor ? 0.f : std::exp(x); }

struct Strided {  // a (B, T, H, D) tensor's fp32 data and its batch, time and head strides (channels contiguous)
  const float* data;
  int64_t sb, st, sh;
  const float* at(int64_t b, int64_t t, int64_t h) const { return data + b * sb + t * st + h * sh; }
};

Strided strided(const Tensor& x) { return {x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2)}; }

Tensor channels_contiguous(const Tensor& x) {
  Tensor y = x.to(torch::kFloat);
  return y.stride(-1) == 1 ? y : y.contiguous();
}

}  // namespace

// S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale S_t^T q_t over a whole sequence.
// Per chunk of C tokens with state S_0, b_t the cumulative log decay in the chunk and gamma_t = exp(b_t):
//   (I + L) U = diag(beta) (V - diag(gamma) K S_0),  L[t, s] = beta_t exp(b_t - b_s) k_t.k_s  (s < t),
//   o_t = scale (gamma_t q_t S_0 + sum_{s<=t} exp(b_t - b_s) (q_t.k_s) U_s),
//   S_C = gamma_C S_0 + sum_s exp(b_C - b_s) k_s U_s^T.
// q, k (B, T, H, K); v (B, T, H, V); beta, g (B, T, H) (g optional); state (B, H, K, V) optional.
// Returns (o (B, T, H, V) fp32, final state (B, H, K, V) fp32).
std::vector<Tensor> delta_chunk(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& beta_in,
                                const c10::optional<Tensor>& log_decay, double scale,
                                const c10::optional<Tensor>& initial_state, int64_t chunk, double floor) {
  const Tensor q = channels_contiguous(q_in), k = channels_contiguous(k_in), v = channels_contiguous(v_in);
  const Tensor beta = beta_in.to(torch::kFloat).contiguous();
  const Tensor g = log_decay.has_value() ? log_decay->to(torch::kFloat).contiguous() : Tensor();
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  Tensor S = initial_state.has_value() ? initial_state->to(torch::kFloat).contiguous().clone()
                                       : torch::zeros({B, H, K, V}, q.options().dtype(torch::kFloat));
  Tensor o = torch::empty({B, T, H, V}, q.options().dtype(torch::kFloat));
  const Strided qs = strided(q), ks = strided(k), vs = strided(v);
  const float *bp = beta.data_ptr<float>(), *gp = g.defined() ? g.data_ptr<float>() : nullptr;
  float *sp = S.data_ptr<float>(), *op = o.data_ptr<float>();
  const float s = static_cast<float>(scale), lo = static_cast<float>(floor);
  const int64_t C = chunk;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    // one head's chunk buffers, a few tens of kB: they stay in cache across the chunk's products
    std::vector<float> X(2 * C * K), R(K * (C + V)), P(2 * C * (C + V)), U(C * V), A(C * C), O(C * V);
    std::vector<float> cum(C), gam(C), bet(C), to_end(C);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      float* state = sp + bh * K * V;
      for (int64_t t0 = 0; t0 < T; t0 += C) {
        const int64_t c = std::min(C, T - t0), ldr = c + V, ldp = c + V;
        // X = [q; k] (2c x K); R = [k^T | S_0] (K x (c + V)): one product gives q.k, k.k, q S_0 and k S_0
        for (int64_t t = 0; t < c; ++t) {
          const float *qt = qs.at(b, t0 + t, h), *kt = ks.at(b, t0 + t, h);
          std::memcpy(X.data() + t * K, qt, K * sizeof(float));
          std::memcpy(X.data() + (c + t) * K, kt, K * sizeof(float));
          for (int64_t i = 0; i < K; ++i) R[i * ldr + t] = kt[i];
          const int64_t row = (b * T + t0 + t) * H + h;
          bet[t] = bp[row];
          cum[t] = (t ? cum[t - 1] : 0.f) + (gp != nullptr ? gp[row] : 0.f);
          gam[t] = decay(cum[t], lo);
        }
        for (int64_t i = 0; i < K; ++i) std::memcpy(R.data() + i * ldr + c, state + i * V, V * sizeof(float));
        gemm(2 * c, c + V, K, X.data(), K, R.data(), ldr, P.data(), ldp, false);
        // the decay ratios exp(b_t - b_r) (r <= t) once, for L and then A
        for (int64_t t = 0; t < c; ++t) {
          float* d = A.data() + t * c;
          for (int64_t r = 0; r <= t; ++r) d[r] = decay(cum[t] - cum[r], lo);
          for (int64_t r = t + 1; r < c; ++r) d[r] = 0.f;
        }
        // right-hand sides, then forward substitution through the unit lower-triangular I + L
        for (int64_t t = 0; t < c; ++t) {
          const float* vt = vs.at(b, t0 + t, h);
          const float* kS = P.data() + (c + t) * ldp + c;
          float* u = U.data() + t * V;
          for (int64_t j = 0; j < V; ++j) u[j] = bet[t] * (vt[j] - gam[t] * kS[j]);
          const float *kk = P.data() + (c + t) * ldp, *d = A.data() + t * c;
          for (int64_t r = 0; r < t; ++r) {
            const float coef = bet[t] * d[r] * kk[r];
            const float* ur = U.data() + r * V;
            for (int64_t j = 0; j < V; ++j) u[j] -= coef * ur[j];
          }
        }
        // o = scale (gamma q S_0 + A U), A[t, r] = exp(b_t - b_r) q_t.k_r (r <= t)
        for (int64_t t = 0; t < c; ++t) {
          const float* qk = P.data() + t * ldp;
          float* a = A.data() + t * c;
          for (int64_t r = 0; r <= t; ++r) a[r] *= qk[r];
        }
        gemm(c, V, c, A.data(), c, U.data(), V, O.data(), V, false);
        for (int64_t t = 0; t < c; ++t) {
          const float *qS = P.data() + t * ldp + c, *ot = O.data() + t * V;
          float* out = op + ((b * T + t0 + t) * H + h) * V;
          for (int64_t j = 0; j < V; ++j) out[j] = s * (ot[j] + gam[t] * qS[j]);
        }
        // S_C = gamma_C S_0 + (k^T scaled by exp(b_C - b_s)) U, with k^T still in R's first c columns
        for (int64_t t = 0; t < c; ++t) to_end[t] = decay(cum[c - 1] - cum[t], lo);
        for (int64_t i = 0; i < K; ++i)
          for (int64_t t = 0; t < c; ++t) R[i * ldr + t] *= to_end[t];
        const float g_end = gam[c - 1];
        for (int64_t i = 0; i < K * V; ++i) state[i] *= g_end;
        gemm(K, V, c, R.data(), ldr, U.data(), V, state, V, true);
      }
    }
  });
  return {o, S};
}
