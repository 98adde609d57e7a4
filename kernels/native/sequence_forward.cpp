// A prompt's pass through the students' recurrences on CPU without autograd, one call per layer: the recurrent
// analogue of the teacher's fused sdpa prefill. Two forms, per head (heads split over torch's threads):
// - token by token (linear_scan, delta_scan): the recurrence as written, the head's K x V state held in cache, the
//   linear recurrence two tokens per pass over it, the delta rule a token in two passes, in register blocks.
//   Fewest operations, exact, every decay form; fastest while a state fits in L1 (K V <= 8,192 floats).
// - chunk by chunk (delta_chunk): the WY form of kernels/delta_rule/chunk.py (Yang et al. 2024, arXiv
//   2406.06484, section 3) taken sequentially over chunks, each chunk's products on cache-resident blocks, with
//   exact pairwise decay ratios exp(b_t - b_s) <= 1 (no midpoint factoring, no chunk halving): for larger states.
// Decays below exp(floor) are dropped (0) as in kernels.chunking.DENORMALS: no denormal enters a product.
// And four smaller operators over a prompt, each row finished while in cache: the short causal convolution
// (short_conv, all taps in one pass), RWKV-6's token shift and decay (ddlerp), a mixer's read-out norm (head_norm) and
// the rotary position embedding (rotary); and, for training, the distillation loss's softmax work on a chunk of
// logits (distill_rows) and the frozen teacher's causal softmax attention (causal_attention).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

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

typedef int32_t vec8i __attribute__((vector_size(32)));

#if defined(__AVX512F__)
// Sixteen floats (one AVX-512 register), for the products' register tiles where the build targets AVX-512.
typedef float vec16 __attribute__((vector_size(64)));
inline vec16 load16(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, vec16 v) { std::memcpy(p, &v, sizeof v); }
inline vec16 splat16(float x) { return vec16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
#endif

inline vec8 clamp8(vec8 x, float lo, float hi) {
  x = x < splat(lo) ? splat(lo) : x;
  return x > splat(hi) ? splat(hi) : x;
}

// Cephes' expf range reduction, eight at a time: x = n ln 2 + r with |r| <= ln 2 / 2, e^r - 1 = r + r^2 P(r) (a
// degree-5 P), and 2^n in the exponent bits; inputs clamped to [-87.3, 88.3], so 2^n stays normal and finite.
// Returns (2^n, e^r - 1): exp8 and one_minus_exp8 finish from them.
struct ExpParts {
  vec8 two_to_n, r_minus_one;
};
inline ExpParts exp_parts8(vec8 x) {
  x = clamp8(x, -87.3f, 88.3f);
  const vec8 magic = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const vec8 n = (x * splat(1.44269504088896341f) + magic) - magic;
  const vec8 r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vec8 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const vec8i bits = (__builtin_convertvector(n, vec8i) + 127) << 23;
  ExpParts parts;
  std::memcpy(&parts.two_to_n, &bits, sizeof parts.two_to_n);
  parts.r_minus_one = p * r * r + r;
  return parts;
}

// exp(x) = 2^n e^r, eight at a time. Accuracy: the float64 checks in tests/test_kernels_ddlerp.py,
// test_kernels_head_norm.py and test_kernels_native_sequence.py.
inline vec8 exp8(vec8 x) {
  const ExpParts parts = exp_parts8(x);
  return (parts.r_minus_one + splat(1.f)) * parts.two_to_n;
}

// tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}), eight at a time (an absolute error, not a relative one, near 0)
inline vec8 tanh8(vec8 x) {
  const vec8 e = exp8(splat(-2.f) * (x < splat(0.f) ? -x : x));
  const vec8 y = (splat(1.f) - e) / (splat(1.f) + e);
  return x < splat(0.f) ? -y : y;
}

template <typename Vector, typename Scalar>
void map_inplace(float* x, int64_t n, Vector vector, Scalar scalar) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(x + i, vector(load8(x + i)));
  for (; i < n; ++i) x[i] = scalar(x[i]);
}

// Denormals flushed to zero while a thread runs a pass (restored after): a state decaying towards zero would
// otherwise slow every product on it by two orders of magnitude; they change results by less than 1.2e-38.
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

// C[M x N] = A[M x P] B[P x N] (+ C when accumulate), row-major with leading dimensions: blocks of 4 rows x 16
// columns held in registers, the rest by plain loops.
void gemm_8wide(int64_t M, int64_t N, int64_t P, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
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

// C[M x N] = A[M x P] B[P x N] (+ C when accumulate), row-major with leading dimensions. Where the build targets
// AVX-512, blocks of 8 rows x 32 columns are held in sixteen 16-float registers (results/speed/prefill_blocks.md)
// and the edges take the 8-wide tiles; each sum runs over p in the same order either way, so the results are the
// same.
void gemm(int64_t M, int64_t N, int64_t P, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc, bool accumulate) {
#if defined(__AVX512F__)
  const int64_t rows = M - M % 8, columns = N - N % 32;
  for (int64_t i = 0; i < rows; i += 8) {
    for (int64_t j = 0; j < columns; j += 32) {
      vec16 x[8][2];
      for (int r = 0; r < 8; ++r) {
        x[r][0] = accumulate ? load16(C + (i + r) * ldc + j) : vec16{};
        x[r][1] = accumulate ? load16(C + (i + r) * ldc + j + 16) : vec16{};
      }
      for (int64_t p = 0; p < P; ++p) {
        const vec16 b0 = load16(B + p * ldb + j), b1 = load16(B + p * ldb + j + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          const vec16 a = splat16(A[(i + r) * lda + p]);
          x[r][0] += a * b0, x[r][1] += a * b1;
        }
      }
      for (int r = 0; r < 8; ++r) store16(C + (i + r) * ldc + j, x[r][0]), store16(C + (i + r) * ldc + j + 16, x[r][1]);
    }
  }
  if (rows > 0 && columns < N) gemm_8wide(rows, N - columns, P, A, lda, B + columns, ldb, C + columns, ldc, accumulate);
  if (rows < M) gemm_8wide(M - rows, N, P, A + rows * lda, lda, B, ldb, C + rows * ldc, ldc, accumulate);
#else
  gemm_8wide(M, N, P, A, lda, B, ldb, C, ldc, accumulate);
#endif
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

// out = exp(g) for n log decays, exactly 0 below floor (`decay`), eight at a time: a scan's decays computed as it
// reaches them, not in a pass of their own before it
void decays_into(float* out, const float* g, int64_t n, float floor) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const vec8 x = load8(g + i);
    store8(out + i, x < splat(floor) ? splat(0.f) : exp8(x));
  }
  for (; i < n; ++i) out[i] = decay(g[i], floor);
}

struct Pass {  // a call's inputs read in place (channels contiguous), its output and its state, all fp32
  Tensor q, k, v, o, S;
  Strided qs, ks, vs;
  int64_t B, T, H, K, V;
};

Pass prepare(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const c10::optional<Tensor>& initial_state) {
  Pass p;
  p.q = channels_contiguous(q_in), p.k = channels_contiguous(k_in), p.v = channels_contiguous(v_in);
  p.B = p.q.size(0), p.T = p.q.size(1), p.H = p.q.size(2), p.K = p.q.size(3), p.V = p.v.size(3);
  const auto fp32 = p.q.options().dtype(torch::kFloat);
  p.S = initial_state.has_value() ? initial_state->to(torch::kFloat).contiguous().clone()
                                  : torch::zeros({p.B, p.H, p.K, p.V}, fp32);
  p.o = torch::empty({p.B, p.T, p.H, p.V}, fp32);
  p.qs = strided(p.q), p.ks = strided(p.k), p.vs = strided(p.v);
  return p;
}

// body(b, h, state rows) for every head of a pass, heads split over torch's threads, denormals flushed.
template <typename Body>
void for_each_head(const Pass& p, const Body& body) {
  float* states = p.S.data_ptr<float>();
  at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    for (int64_t bh = begin; bh < end; ++bh) body(bh / p.H, bh % p.H, states + bh * p.K * p.V);
  });
}

// sum_i a_i b_i c_i in 8-wide partial sums (one scalar chain of K products would take K multiply-add latencies)
inline float dot3(const float* a, const float* b, const float* c, int64_t n) {
  vec8 partial[2] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    partial[0] += load8(a + i) * load8(b + i) * load8(c + i);
    partial[1] += load8(a + i + 8) * load8(b + i + 8) * load8(c + i + 8);
  }
  for (; i + 8 <= n; i += 8) partial[0] += load8(a + i) * load8(b + i) * load8(c + i);
  const vec8 both = partial[0] + partial[1];
  float sum = 0.f;
  for (int lane = 0; lane < 8; ++lane) sum += both[lane];
  for (; i < n; ++i) sum += a[i] * b[i] * c[i];
  return sum;
}

// A head's q, k, v and decay rows lie H rows apart, so each is a strided stream across pages that the hardware
// prefetcher picks up late: the scan asks for a token's rows this many tokens before it reaches them
// (results/speed/scan_variant_ab.txt).
constexpr int64_t kPrefetchTokens = 8;

inline void prefetch_row(const float* row, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(row + i, 0, 3);  // one 64-byte line at a time
}

// One token's inputs for one head: q, k (K), v (V), per-channel decays a (K; a per-head decay repeated), the
// bonus term q.(u k) (RWKV-6) and where its output row goes.
struct Token {
  const float *q, *k, *v, *a;
  float bonus_dot;
  float* out;
};

// A vector of W floats, for the scans' register blocks written once for either width: 8 (AVX registers, or SSE
// pairs) on every build, 16 where the build targets AVX-512.
template <int W>
struct Lanes;
template <>
struct Lanes<8> {
  using Vec = vec8;
  static Vec load(const float* p) { return load8(p); }
  static void store(float* p, Vec v) { store8(p, v); }
  static Vec splat(float x) { return ::splat(x); }
};
#if defined(__AVX512F__)
template <>
struct Lanes<16> {
  using Vec = vec16;
  static Vec load(const float* p) { return load16(p); }
  static void store(float* p, Vec v) { store16(p, v); }
  static Vec splat(float x) { return splat16(x); }
};
#endif

// linear_tokens' register blocks of kVec vectors of W floats, from value column j while a whole block fits; returns
// the first column left.
template <int W, bool kBonus, int N, int kVec>
int64_t linear_blocks(float* state, const Token* tok, float scale, int64_t K, int64_t V, int64_t j) {
  using L = Lanes<W>;
  using Vec = typename L::Vec;
  for (; j + W * kVec <= V; j += W * kVec) {
    Vec acc[N][kVec] = {}, vv[N][kVec];
    for (int n = 0; n < N; ++n)
      for (int x = 0; x < kVec; ++x) vv[n][x] = L::load(tok[n].v + j + W * x);
    for (int64_t i = 0; i < K; ++i) {
      float* r = state + i * V + j;
      // a row's decays, keys and queries read once: the state's stores may alias them as far as the compiler knows,
      // so reading them inside the column loop reloads them for every column block
      Vec a[N], k[N], q[N];
      for (int n = 0; n < N; ++n)
        a[n] = L::splat(tok[n].a[i]), k[n] = L::splat(tok[n].k[i]), q[n] = L::splat(tok[n].q[i]);
      for (int x = 0; x < kVec; ++x) {
        Vec row = L::load(r + W * x);
        for (int n = 0; n < N; ++n) {
          const Vec updated = a[n] * row + k[n] * vv[n][x];
          acc[n][x] += q[n] * (kBonus ? row : updated);
          row = updated;
        }
        L::store(r + W * x, row);
      }
    }
    for (int n = 0; n < N; ++n)
      for (int x = 0; x < kVec; ++x) {
        const Vec read = kBonus ? acc[n][x] + L::splat(tok[n].bonus_dot) * vv[n][x] : acc[n][x];
        L::store(tok[n].out + j + W * x, L::splat(scale) * read);
      }
  }
  return j;
}

// N consecutive tokens (1 or 2) of the linear recurrence on one head's state rows (K x V), one load and one store
// of each state value for all N (pairs measured faster: results/speed): S = diag(a) S + k v^T and
// out = scale S^T q, or with the bonus (RWKV-6) out = scale (S_old^T q + (q.(u k)) v), read before the update.
// Register blocks of 4 / N vectors: of 16 floats first where the build targets AVX-512 (the same sums in the same
// order, twice the columns a block; results/speed/linear_scan_wide_ab.txt), then of 8, then single columns.
template <bool kBonus, int N>
void linear_tokens(float* state, const Token* tok, float scale, int64_t K, int64_t V) {
  constexpr int kVec = N == 1 ? 4 : 2;
  int64_t j = 0;
#if defined(__AVX512F__)
  j = linear_blocks<16, kBonus, N, kVec>(state, tok, scale, K, V, j);
#endif
  j = linear_blocks<8, kBonus, N, kVec>(state, tok, scale, K, V, j);
  for (; j < V; ++j) {
    float acc[N] = {};
    for (int64_t i = 0; i < K; ++i) {
      float row = state[i * V + j];
      for (int n = 0; n < N; ++n) {
        const float updated = tok[n].a[i] * row + tok[n].k[i] * tok[n].v[j];
        acc[n] += tok[n].q[i] * (kBonus ? row : updated);
        row = updated;
      }
      state[i * V + j] = row;
    }
    for (int n = 0; n < N; ++n) tok[n].out[j] = scale * (kBonus ? acc[n] + tok[n].bonus_dot * tok[n].v[j] : acc[n]);
  }
}

// delta_token's register blocks of four vectors of W floats, from value column j while a whole block fits; returns
// the first column left.
template <int W>
int64_t delta_blocks(float* state, const float* q, const float* k, const float* v, float a, float beta, float scale,
                     float* out, int64_t K, int64_t V, int64_t j) {
  using L = Lanes<W>;
  using Vec = typename L::Vec;
  for (; j + 4 * W <= V; j += 4 * W) {
    Vec w[4] = {}, w_odd[4] = {}, u[4], acc[4] = {};
    int64_t i = 0;
    for (; i + 2 <= K; i += 2) {  // two accumulators a column block: the sum's latency, not its loads, bounds it
      const float* r = state + i * V + j;
      const Vec k0 = L::splat(k[i]), k1 = L::splat(k[i + 1]);
      for (int x = 0; x < 4; ++x) {
        w[x] += k0 * L::load(r + W * x);
        w_odd[x] += k1 * L::load(r + V + W * x);
      }
    }
    for (; i < K; ++i)
      for (int x = 0; x < 4; ++x) w[x] += L::splat(k[i]) * L::load(state + i * V + j + W * x);
    for (int x = 0; x < 4; ++x) w[x] += w_odd[x];
    const Vec va = L::splat(a), vb = L::splat(beta);
    for (int x = 0; x < 4; ++x) u[x] = vb * (L::load(v + j + W * x) - va * w[x]);
    for (i = 0; i < K; ++i) {
      float* r = state + i * V + j;
      const Vec ki = L::splat(k[i]), qi = L::splat(q[i]);
      for (int x = 0; x < 4; ++x) {
        const Vec updated = va * L::load(r + W * x) + ki * u[x];
        L::store(r + W * x, updated);
        acc[x] += qi * updated;
      }
    }
    for (int x = 0; x < 4; ++x) L::store(out + j + W * x, L::splat(scale) * acc[x]);
  }
  return j;
}

// One token of the gated delta rule on one head's state rows: w = S^T k, u = beta (v - a w),
// S = a S + k u^T, out = scale S^T q (two passes: the first only reads). Register blocks of four vectors: of 16
// floats first where the build targets AVX-512 (the same sums in the same order, half the instructions;
// results/speed/delta_scan_wide_ab.txt), then of 8, then single columns.
void delta_token(float* state, const float* q, const float* k, const float* v, float a, float beta, float scale,
                 float* out, int64_t K, int64_t V) {
  int64_t j = 0;
#if defined(__AVX512F__)
  j = delta_blocks<16>(state, q, k, v, a, beta, scale, out, K, V, j);
#endif
  j = delta_blocks<8>(state, q, k, v, a, beta, scale, out, K, V, j);
  for (; j < V; ++j) {
    float w = 0.f, acc = 0.f;
    for (int64_t i = 0; i < K; ++i) w += k[i] * state[i * V + j];
    const float u = beta * (v[j] - a * w);
    for (int64_t i = 0; i < K; ++i) {
      float& r = state[i * V + j];
      r = a * r + k[i] * u;
      acc += q[i] * r;
    }
    out[j] = scale * acc;
  }
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
  Pass p = prepare(q_in, k_in, v_in, initial_state);
  const Tensor beta = beta_in.to(torch::kFloat).contiguous();
  const Tensor g = log_decay.has_value() ? log_decay->to(torch::kFloat).contiguous() : Tensor();
  const int64_t T = p.T, H = p.H, K = p.K, V = p.V;
  const Strided &qs = p.qs, &ks = p.ks, &vs = p.vs;
  const float *bp = beta.data_ptr<float>(), *gp = g.defined() ? g.data_ptr<float>() : nullptr;
  float* op = p.o.data_ptr<float>();
  const float s = static_cast<float>(scale), lo = static_cast<float>(floor);
  const int64_t C = chunk;
  for_each_head(p, [&](int64_t b, int64_t h, float* state) {
    // the head's chunk buffers, a few tens of kB: they stay in cache across the chunk's products
    std::vector<float> X(2 * C * K), R(K * (C + V)), P(2 * C * (C + V)), U(C * V), A(C * C), O(C * V);
    std::vector<float> cum(C), gam(C), bet(C), to_end(C);
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
  });
  return {p.o, p.S};
}


// S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t; with bonus u (RWKV-6)
// o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T q_t. q, k (B, T, H, K); v (B, T, H, V); g none, (B, T, H) or
// (B, T, H, K); u (H, K); state (B, H, K, V) optional; key_scale (B, T, H) optional, k_t read as key_scale_t k_t
// (Mamba-2's dt_t B_t); skip (H) optional, o_t += skip v_t (Mamba-2's D). Returns (o (B, T, H, V) fp32, final state
// fp32).
std::vector<Tensor> linear_scan(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                const c10::optional<Tensor>& log_decay, const c10::optional<Tensor>& bonus,
                                double scale, const c10::optional<Tensor>& initial_state, double floor,
                                const c10::optional<Tensor>& key_scale, const c10::optional<Tensor>& skip) {
  Pass p = prepare(q_in, k_in, v_in, initial_state);
  const Tensor g = log_decay.has_value() ? log_decay->to(torch::kFloat).contiguous() : Tensor();
  const Tensor u = bonus.has_value() ? bonus->to(torch::kFloat).contiguous() : Tensor();
  const Tensor ks = key_scale.has_value() ? key_scale->to(torch::kFloat).contiguous() : Tensor();
  const Tensor sk = skip.has_value() ? skip->to(torch::kFloat).contiguous() : Tensor();
  const bool per_channel = g.defined() && g.dim() == 4;
  TORCH_CHECK(!ks.defined() || (ks.dim() == 3 && ks.size(0) == p.B && ks.size(1) == p.T && ks.size(2) == p.H),
              "linear_scan: key_scale must be (B, T, H)");
  TORCH_CHECK(!sk.defined() || sk.numel() == p.H, "linear_scan: skip must have one value per head");
  const float *gp = g.defined() ? g.data_ptr<float>() : nullptr, *up = u.defined() ? u.data_ptr<float>() : nullptr;
  const float *ksp = ks.defined() ? ks.data_ptr<float>() : nullptr, *skp = sk.defined() ? sk.data_ptr<float>() : nullptr;
  float* op = p.o.data_ptr<float>();
  const float sc = static_cast<float>(scale), lo = static_cast<float>(floor);
  const int64_t T = p.T, H = p.H, K = p.K, V = p.V;
  for_each_head(p, [&](int64_t b, int64_t h, float* state) {
    std::vector<float> decays(2 * K, 1.f);  // the N tokens' decays (a per-head decay, or none, as K equal channels)
    // the N tokens' keys times their scales (Mamba-2's dt), rounded as the product k * dt in torch is
    std::vector<float> scaled_keys(ksp != nullptr ? 2 * K : 0);
    Token tok[2];
    for (int64_t t = 0; t < T; t += 2) {
      const int n = std::min<int64_t>(2, T - t);
      for (int64_t ahead = t + kPrefetchTokens; ahead < std::min(t + kPrefetchTokens + 2, T); ++ahead) {
        prefetch_row(p.qs.at(b, ahead, h), K), prefetch_row(p.ks.at(b, ahead, h), K);
        prefetch_row(p.vs.at(b, ahead, h), V);
        if (per_channel) prefetch_row(gp + ((b * T + ahead) * H + h) * K, K);
      }
      for (int m = 0; m < n; ++m) {
        const int64_t row = (b * T + t + m) * H + h;
        Token& token = tok[m];
        token.q = p.qs.at(b, t + m, h), token.k = p.ks.at(b, t + m, h), token.v = p.vs.at(b, t + m, h);
        token.out = op + row * V;
        float* a = decays.data() + m * K;
        if (per_channel) {
          decays_into(a, gp + row * K, K, lo);
        } else if (gp != nullptr) {
          std::fill(a, a + K, decay(gp[row], lo));
        }
        token.a = a;
        if (ksp != nullptr) {
          float* scaled = scaled_keys.data() + m * K;
          const float factor = ksp[row];
          for (int64_t i = 0; i < K; ++i) scaled[i] = token.k[i] * factor;
          token.k = scaled;
        }
        token.bonus_dot = up != nullptr ? dot3(token.q, up + h * K, token.k, K) : 0.f;
      }
      if (up != nullptr) {
        n == 2 ? linear_tokens<true, 2>(state, tok, sc, K, V) : linear_tokens<true, 1>(state, tok, sc, K, V);
      } else {
        n == 2 ? linear_tokens<false, 2>(state, tok, sc, K, V) : linear_tokens<false, 1>(state, tok, sc, K, V);
      }
      if (skp != nullptr) {  // o_t += skip_h v_t (Mamba-2's D), on the rows just written
        for (int m = 0; m < n; ++m)
          for (int64_t j = 0; j < V; ++j) tok[m].out[j] += skp[h] * tok[m].v[j];
      }
    }
  });
  return {p.o, p.S};
}

// The gated delta rule token by token (arguments and results as delta_chunk).
std::vector<Tensor> delta_scan(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& beta_in,
                               const c10::optional<Tensor>& log_decay, double scale,
                               const c10::optional<Tensor>& initial_state, double floor) {
  Pass p = prepare(q_in, k_in, v_in, initial_state);
  const Tensor beta = beta_in.to(torch::kFloat).contiguous();
  const Tensor g = log_decay.has_value() ? log_decay->to(torch::kFloat).contiguous() : Tensor();
  const float *bp = beta.data_ptr<float>(), *gp = g.defined() ? g.data_ptr<float>() : nullptr;
  float* op = p.o.data_ptr<float>();
  const float sc = static_cast<float>(scale), lo = static_cast<float>(floor);
  const int64_t T = p.T, H = p.H, K = p.K, V = p.V;
  for_each_head(p, [&](int64_t b, int64_t h, float* state) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = (b * T + t) * H + h;
      delta_token(state, p.qs.at(b, t, h), p.ks.at(b, t, h), p.vs.at(b, t, h), gp != nullptr ? decay(gp[row], lo) : 1.f,
                  bp[row], sc, op + row * V, K, V);
    }
  });
  return {p.o, p.S};
}


namespace {
void add_product(float* __restrict__ out, const float* __restrict__ a, const float* __restrict__ b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += a[i] * b[i];
}
}  // namespace

// The short causal convolution of mamba, gated_deltanet and metala over a prompt (the CPU analogue of
// causal-conv1d's fused kernel): y_t = b + sum_j w_j x_{t - k + 1 + j} per channel, the k - 1 inputs before the
// prompt from `cache` (B, k - 1, C) or zeros, then SiLU, then the first `normalized` channels L2-normalised in
// groups of `group` (gated_deltanet's q and k heads; F.normalize's eps), each row finished while in cache. One pass
// writes y (each row read from the inputs' rows in cache), instead of a pass per tap and per function.
// x (B, T, C) fp32 with channels contiguous; weight (C, k); bias (C); normalized 0 for none. Returns y and the next
// cache (B, k - 1, C): a decoded token (T = 1) is one call.
std::vector<Tensor> short_conv(const Tensor& x_in, const Tensor& weight, const c10::optional<Tensor>& bias_in,
                               bool silu, const c10::optional<Tensor>& cache_in, int64_t normalized, int64_t group) {
  const Tensor x = channels_contiguous(x_in);
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), k = weight.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == C && k >= 1,
              "short_conv: weight must be (C, k) for x's C channels");
  TORCH_CHECK(!cache_in.has_value() || (cache_in->dim() == 3 && cache_in->size(0) == B && cache_in->size(1) == k - 1 &&
                                        cache_in->size(2) == C),
              "short_conv: cache must be (B, k - 1, C)");
  // the taps as (k, C), transposed here: torch's copy of a (C, k) transpose costs more than a decoded token's pass
  const Tensor w = weight.to(torch::kFloat).contiguous();
  Tensor taps = torch::empty({k, C}, w.options());
  {
    const float* from = w.data_ptr<float>();
    float* to = taps.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < k; ++j) to[j * C + c] = from[c * k + j];
  }
  const Tensor bias = bias_in.has_value() ? bias_in->to(torch::kFloat).contiguous() : Tensor();
  const Tensor cache = cache_in.has_value() ? channels_contiguous(*cache_in) : Tensor();
  TORCH_CHECK(normalized >= 0 && normalized <= C && (normalized == 0 || (group > 0 && normalized % group == 0)),
              "short_conv: normalized channels must be a multiple of the group, at most C");
  Tensor y = torch::empty({B, T, C}, x.options().dtype(torch::kFloat));
  const float *xp = x.data_ptr<float>(), *wp = taps.data_ptr<float>();
  const float *bp = bias.defined() ? bias.data_ptr<float>() : nullptr, *cp = cache.defined() ? cache.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t sb = x.stride(0), st = x.stride(1);
  const int64_t cb = cache.defined() ? cache.stride(0) : 0, ct = cache.defined() ? cache.stride(1) : 0;
  // input row `source` of sequence b: x's from 0, the cache's before it, nullptr (zeros) where there is no cache
  const auto input_row = [&](int64_t b, int64_t source) -> const float* {
    if (source >= 0) return xp + b * sb + source * st;
    return cp != nullptr ? cp + b * cb + (k - 1 + source) * ct : nullptr;
  };
  at::parallel_for(0, B * T, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      float* out = yp + bt * C;
      if (bp != nullptr) {
        std::memcpy(out, bp, C * sizeof(float));
      } else {
        std::fill(out, out + C, 0.f);
      }
      for (int64_t j = 0; j < k; ++j) {
        const float* in = input_row(b, t - (k - 1) + j);  // the input row tap j reads
        if (in == nullptr) continue;  // zero history
        add_product(out, wp + j * C, in, C);
      }
      if (silu) map_inplace(out, C, [](vec8 v) { return v / (splat(1.f) + exp8(-v)); },
                            [](float v) { return v / (1.f + std::exp(-v)); });
      for (int64_t g = 0; normalized > 0 && g + group <= normalized; g += group) {
        vec8 sum = {};
        int64_t c = g;
        for (; c + 8 <= g + group; c += 8) sum += load8(out + c) * load8(out + c);
        float squares = ((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7]));
        for (; c < g + group; ++c) squares += out[c] * out[c];
        const float inverse = 1.f / std::max(std::sqrt(squares), 1e-12f);
        for (int64_t c = g; c < g + group; ++c) out[c] *= inverse;
      }
    }
  });
  // the next cache: the k - 1 inputs up to the last token, from the cache (or zeros) where the prompt is shorter
  Tensor next = torch::empty({B, k - 1, C}, x.options().dtype(torch::kFloat));
  float* np = next.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t r = 0; r < k - 1; ++r) {
      const float* in = input_row(b, T - (k - 1) + r);  // the input row cache row r holds
      float* row = np + (b * (k - 1) + r) * C;
      if (in != nullptr) {
        std::memcpy(row, in, C * sizeof(float));
      } else {
        std::fill(row, row + C, 0.f);
      }
    }
  }
  return {y, next};
}


// RWKV-6's data-dependent token shift and decay over a prompt (Peng et al. 2024, "Eagle and Finch", eq. 12-16; the
// torch form is kernels/ddlerp/torch_form.py), in blocks of rows kept in cache: per token, xx = x_{t-1} - x_t,
// mix = tanh((x + xx maa_x) W1), stream s = x + xx (maa_s + mix_s W2_s) for s = w, k, v, r, g, and
// log_decay = -exp(time_decay + tanh(stream_w Wd1) Wd2). The torch form writes and rereads the five streams' lerps
// (five token-by-width tensors) and the w stream; here only the k, v, r, g streams and the decay leave the cache.
// x (B, T, D) fp32, previous (B, 1, D) or none (zeros), maa_x (D), w1 (D, 5R), maa (5, D), w2 (5, R, D),
// time_decay (E), decay_w1 (D, Rd), decay_w2 (Rd, E). Returns the streams k, v, r, g (4, B, T, D) and the decay
// (B, T, E).
std::vector<Tensor> ddlerp(const Tensor& x_in, const c10::optional<Tensor>& previous_in, const Tensor& maa_x_in,
                           const Tensor& w1_in, const Tensor& maa_in, const Tensor& w2_in, const Tensor& time_decay_in,
                           const Tensor& decay_w1_in, const Tensor& decay_w2_in) {
  const auto fp32 = [](const Tensor& t) { return t.to(torch::kFloat).contiguous(); };
  const Tensor x = fp32(x_in), maa_x = fp32(maa_x_in), w1 = fp32(w1_in), maa = fp32(maa_in), w2 = fp32(w2_in);
  const Tensor time_decay = fp32(time_decay_in), dw1 = fp32(decay_w1_in), dw2 = fp32(decay_w2_in);
  const Tensor previous = previous_in.has_value() ? fp32(*previous_in) : Tensor();
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), R = w2.size(1), Rd = dw1.size(1), E = dw2.size(1);
  TORCH_CHECK(w1.size(0) == D && w1.size(1) == 5 * R && maa.size(0) == 5 && maa.size(1) == D && w2.size(0) == 5 &&
                  w2.size(2) == D && maa_x.numel() == D && time_decay.numel() == E && dw1.size(0) == D &&
                  dw2.size(0) == Rd,
              "ddlerp: weight shapes do not match x's width");
  Tensor streams = torch::empty({4, B, T, D}, x.options());
  Tensor log_decay = torch::empty({B, T, E}, x.options());
  const float *xp = x.data_ptr<float>(), *pp = previous.defined() ? previous.data_ptr<float>() : nullptr;
  const float *mxp = maa_x.data_ptr<float>(), *w1p = w1.data_ptr<float>(), *maap = maa.data_ptr<float>();
  const float *w2p = w2.data_ptr<float>(), *tdp = time_decay.data_ptr<float>();
  const float *dw1p = dw1.data_ptr<float>(), *dw2p = dw2.data_ptr<float>();
  float *sp = streams.data_ptr<float>(), *ldp = log_decay.data_ptr<float>();
  constexpr int64_t kRows = 32;  // a block's rows: its x, xx, mix and one stream stay in L2
  const int64_t blocks_per_sequence = (T + kRows - 1) / kRows;
  at::parallel_for(0, B * blocks_per_sequence, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    std::vector<float> xx(kRows * D), mixed(kRows * D), mix(kRows * 5 * R), hidden(kRows * Rd);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t b = block / blocks_per_sequence, t0 = (block % blocks_per_sequence) * kRows;
      const int64_t n = std::min(kRows, T - t0);
      const float* xb = xp + (b * T + t0) * D;
      for (int64_t i = 0; i < n; ++i) {  // xx = x_{t-1} - x_t; mixed = x + xx maa_x
        const float* before = t0 + i > 0 ? xb + (i - 1) * D : (pp != nullptr ? pp + b * D : nullptr);
        for (int64_t d = 0; d < D; ++d) {
          const float shift = (before != nullptr ? before[d] : 0.f) - xb[i * D + d];
          xx[i * D + d] = shift;
          mixed[i * D + d] = xb[i * D + d] + shift * mxp[d];
        }
      }
      gemm(n, 5 * R, D, mixed.data(), D, w1p, 5 * R, mix.data(), 5 * R, false);
      map_inplace(mix.data(), n * 5 * R, tanh8, [](float v) { return std::tanh(v); });
      for (int64_t s = 0; s < 5; ++s) {
        // stream s: x + xx (maa_s + mix_s W2_s), its product written where the stream goes, then finished in place
        float* out = s == 0 ? mixed.data() : sp + ((s - 1) * B * T + b * T + t0) * D;
        gemm(n, D, R, mix.data() + s * R, 5 * R, w2p + s * R * D, D, out, D, false);
        const float* m = maap + s * D;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t d = 0; d < D; ++d) out[i * D + d] = xb[i * D + d] + xx[i * D + d] * (m[d] + out[i * D + d]);
      }
      // log_decay = -exp(time_decay + tanh(stream_w Wd1) Wd2)
      gemm(n, Rd, D, mixed.data(), D, dw1p, Rd, hidden.data(), Rd, false);
      map_inplace(hidden.data(), n * Rd, tanh8, [](float v) { return std::tanh(v); });
      float* ld = ldp + (b * T + t0) * E;
      gemm(n, E, Rd, hidden.data(), Rd, dw2p, E, ld, E, false);
      for (int64_t i = 0; i < n; ++i) {
        float* row = ld + i * E;
        for (int64_t e = 0; e < E; ++e) row[e] += tdp[e];
        map_inplace(row, E, [](vec8 v) { return -exp8(v); }, [](float v) { return -std::exp(v); });
      }
    }
  });
  return {streams, log_decay};
}

namespace {
inline float horizontal_sum(vec8 v) {
  float sum = 0.f;
  for (int i = 0; i < 8; ++i) sum += v[i];
  return sum;
}

// The gate's activation on n values in place: 0 none (the gate as it is), 1 silu g / (1 + e^-g), 2 sigmoid.
void activate(float* g, int64_t n, int64_t activation) {
  if (activation == 1) {
    map_inplace(g, n, [](vec8 x) { return x / (splat(1.f) + exp8(-x)); },
                [](float x) { return x / (1.f + std::exp(-x)); });
  } else if (activation == 2) {
    map_inplace(g, n, [](vec8 x) { return splat(1.f) / (splat(1.f) + exp8(-x)); },
                [](float x) { return 1.f / (1.f + std::exp(-x)); });
  }
}
}  // namespace

// A mixer's read-out norm over a prompt, per head: y = n(x) w (+ b), times act(gate) where a gate is given, n RMS
// (x / sqrt(mean x^2 + eps)) or layer ((x - mean) / sqrt(var + eps)), act none / silu / sigmoid (0 / 1 / 2): one
// pass over each row in cache (the torch form takes a pass for the norm, one for the activation, one for the product,
// each into fresh memory). x, gate (B, T, H, D) with channels contiguous, any other strides; weight, bias (D) optional;
// augment empty or (q, k, v (B, T, H, D), w (H, D)): MetaLA's x + sigmoid(v (q . (w k))) is normalised in x's place.
// Returns y (B, T, H, D) fp32, contiguous.
Tensor head_norm(const Tensor& x_in, const c10::optional<Tensor>& weight_in, const c10::optional<Tensor>& bias_in,
                 const c10::optional<Tensor>& gate_in, bool rms, int64_t activation, double eps,
                 const std::vector<Tensor>& augment_in) {
  const Tensor x = channels_contiguous(x_in);
  // MetaLA's self-augmentation, when given (q, k, v as x, w (H, D)): x + sigmoid(v (q . (w k))) is normalised
  TORCH_CHECK(augment_in.empty() || augment_in.size() == 4, "head_norm: augment is (q, k, v, w) or empty");
  const bool augmented = !augment_in.empty();
  const Tensor aq = augmented ? channels_contiguous(augment_in[0]) : Tensor();
  const Tensor ak = augmented ? channels_contiguous(augment_in[1]) : Tensor();
  const Tensor av = augmented ? channels_contiguous(augment_in[2]) : Tensor();
  const Tensor aw = augmented ? augment_in[3].to(torch::kFloat).contiguous() : Tensor();
  TORCH_CHECK(!augmented || (aq.sizes() == x.sizes() && ak.sizes() == x.sizes() && av.sizes() == x.sizes() &&
                             aw.numel() == x.size(2) * x.size(3)),
              "head_norm: the augmentation's q, k, v must have x's shape and w one value per head and channel");
  const Tensor gate = gate_in.has_value() ? channels_contiguous(*gate_in) : Tensor();
  const auto vector = [](const c10::optional<Tensor>& t) { return t.has_value() ? t->to(torch::kFloat).contiguous()
                                                                                  : Tensor(); };
  const Tensor weight = vector(weight_in), bias = vector(bias_in);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  TORCH_CHECK(!gate.defined() || gate.sizes() == x.sizes(), "head_norm: gate must have x's shape");
  TORCH_CHECK((!weight.defined() || weight.numel() == D) && (!bias.defined() || bias.numel() == D),
              "head_norm: weight and bias must have one value per channel");
  Tensor y = torch::empty({B, T, H, D}, x.options().dtype(torch::kFloat));
  const Strided xs = strided(x), gs = gate.defined() ? strided(gate) : Strided{nullptr, 0, 0, 0};
  const float *wp = weight.defined() ? weight.data_ptr<float>() : nullptr;
  const float *bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const float epsilon = static_cast<float>(eps), inv_d = 1.f / static_cast<float>(D);
  const Strided qs = augmented ? strided(aq) : xs, ks = augmented ? strided(ak) : xs, vs = augmented ? strided(av) : xs;
  const float* awp = augmented ? aw.data_ptr<float>() : nullptr;
  at::parallel_for(0, B * T, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> augmented_row(augmented ? D : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / T, t = row % T;
      for (int64_t h = 0; h < H; ++h) {
        const float* in = xs.at(b, t, h);
        float* out = yp + (row * H + h) * D;
        if (augmented) {
          const float *q = qs.at(b, t, h), *k = ks.at(b, t, h), *v = vs.at(b, t, h), *w = awp + h * D;
          vec8 acc = {};
          int64_t i = 0;
          for (; i + 8 <= D; i += 8) acc += load8(q + i) * load8(w + i) * load8(k + i);
          float dot = horizontal_sum(acc);
          for (; i < D; ++i) dot += q[i] * w[i] * k[i];
          float* a = augmented_row.data();
          for (i = 0; i + 8 <= D; i += 8)
            store8(a + i, load8(in + i) + splat(1.f) / (splat(1.f) + exp8(-(load8(v + i) * splat(dot)))));
          for (; i < D; ++i) a[i] = in[i] + 1.f / (1.f + std::exp(-(v[i] * dot)));
          in = a;
        }
        float mean = 0.f;
        if (!rms) {  // two passes over the row in cache: the mean, then the squared deviations
          vec8 s = {};
          int64_t i = 0;
          for (; i + 8 <= D; i += 8) s += load8(in + i);
          mean = horizontal_sum(s);
          for (; i < D; ++i) mean += in[i];
          mean *= inv_d;
        }
        vec8 s = {};
        int64_t i = 0;
        for (; i + 8 <= D; i += 8) {
          const vec8 c = load8(in + i) - splat(mean);
          s += c * c;
        }
        float squares = horizontal_sum(s);
        for (; i < D; ++i) squares += (in[i] - mean) * (in[i] - mean);
        const float inv_rms = 1.f / std::sqrt(squares * inv_d + epsilon);
        if (gate.defined()) {
          std::memcpy(out, gs.at(b, t, h), D * sizeof(float));
          activate(out, D, activation);
        }
        i = 0;
        for (; i + 8 <= D; i += 8) {
          vec8 v = (load8(in + i) - splat(mean)) * splat(inv_rms);
          if (wp != nullptr) v *= load8(wp + i);
          if (bp != nullptr) v += load8(bp + i);
          store8(out + i, gate.defined() ? v * load8(out + i) : v);
        }
        for (; i < D; ++i) {
          float v = (in[i] - mean) * inv_rms;
          if (wp != nullptr) v *= wp[i];
          if (bp != nullptr) v += bp[i];
          out[i] = gate.defined() ? v * out[i] : v;
        }
      }
    }
  });
  return y;
}

namespace {
// log(1 + u) for u in [0, 1], eight at a time: 2 atanh(s) with s = u / (2 + u) in [0, 1/3], its odd series to s^13
// (the next term is below 1.5e-8 of the sum): relative accuracy at every u, tiny u included (no 1 + u rounding).
inline vec8 log1p_unit8(vec8 u) {
  const vec8 s = u / (splat(2.f) + u);
  const vec8 z = s * s;
  vec8 p = splat(1.f / 13.f);
  p = p * z + splat(1.f / 11.f);
  p = p * z + splat(1.f / 9.f);
  p = p * z + splat(1.f / 7.f);
  p = p * z + splat(1.f / 5.f);
  p = p * z + splat(1.f / 3.f);
  p = p * z + splat(1.f);
  return splat(2.f) * s * p;
}

// log sigmoid(x) = min(x, 0) - log(1 + e^{-|x|}), eight at a time (no overflow at either end)
inline vec8 log_sigmoid8(vec8 x) {
  const vec8 zero = splat(0.f);
  return (x < zero ? x : zero) - log1p_unit8(exp8(x < zero ? x : -x));
}

// 1 - e^y, eight at a time, as Cephes' expm1f: e^y - 1 = 2^n (e^r - 1) + (2^n - 1) from exp8's reduction, exact
// near 0 where 1 - exp(y) would cancel, at one exponential's cost.
inline vec8 one_minus_exp8(vec8 y) {
  const ExpParts parts = exp_parts8(y);
  return (splat(1.f) - parts.two_to_n) - parts.two_to_n * parts.r_minus_one;
}
}  // namespace

// A sigmoid decay gate over a prompt or a decoded token (GLA, Yang et al. 2024, eq. 4 with tau = 16; MetaLA, Chou et
// al. 2024, section 4): log_decay = log sigmoid(x) / tau and, with complement, 1 - alpha = -expm1(log_decay), MetaLA's
// key, in one pass (the torch form takes three, each into fresh memory). x any shape and floating dtype (read as
// fp32). Returns log_decay (x's shape, fp32, contiguous) and, with complement, 1 - alpha as well.
std::vector<Tensor> decay_gate(const Tensor& x_in, double temperature, bool complement) {
  const Tensor x = x_in.to(torch::kFloat).contiguous();
  Tensor log_decay = torch::empty_like(x);
  Tensor rest = complement ? torch::empty_like(x) : Tensor();
  const float* xp = x.data_ptr<float>();
  float *lp = log_decay.data_ptr<float>(), *cp = complement ? rest.data_ptr<float>() : nullptr;
  const float inverse_tau = static_cast<float>(1.0 / temperature);  // exact for tau a power of two (16)
  constexpr int64_t kGrain = 16384;  // values a thread takes at least: smaller calls (a decoded token) run on one
  at::parallel_for(0, (x.numel() + 7) / 8, kGrain / 8, [&](int64_t begin, int64_t end) {
    const int64_t last = std::min(end * 8, x.numel());
    int64_t i = begin * 8;
    for (; i + 16 <= last; i += 16) {  // two vectors a step: their dependency chains interleave
      const vec8 g0 = log_sigmoid8(load8(xp + i)) * splat(inverse_tau);
      const vec8 g1 = log_sigmoid8(load8(xp + i + 8)) * splat(inverse_tau);
      store8(lp + i, g0);
      store8(lp + i + 8, g1);
      if (cp != nullptr) {
        store8(cp + i, one_minus_exp8(g0));
        store8(cp + i + 8, one_minus_exp8(g1));
      }
    }
    for (; i + 8 <= last; i += 8) {
      const vec8 g = log_sigmoid8(load8(xp + i)) * splat(inverse_tau);
      store8(lp + i, g);
      if (cp != nullptr) store8(cp + i, one_minus_exp8(g));
    }
    for (; i < last; ++i) {
      const float g = (std::min(xp[i], 0.f) - std::log1p(std::exp(-std::fabs(xp[i])))) * inverse_tau;
      lp[i] = g;
      if (cp != nullptr) cp[i] = -std::expm1(g);
    }
  });
  return complement ? std::vector<Tensor>{log_decay, rest} : std::vector<Tensor>{log_decay};
}

// Rotary position embedding over a prompt or a decoded token (RoFormer eq. 34, Llama's rotate_half layout):
// y = x cos + rotate_half(x) sin, rotate_half(x1, x2) = (-x2, x1) over each head's two halves, each row in one pass
// (the torch form takes five: a negation, a concatenation, two products and a sum, each into fresh memory).
// x (B, T, H, D) fp32 with channels contiguous, any other strides, D even; cos, sin T x D values (one row a position,
// shared by the batch and the heads). Returns y (B, T, H, D) fp32, contiguous.
Tensor rotary(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.size(3) % 2 == 0, "rotary: x must be (B, T, H, D) with D even");
  const Tensor x = channels_contiguous(x_in);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  const Tensor cosines = cos_in.to(torch::kFloat).contiguous(), sines = sin_in.to(torch::kFloat).contiguous();
  TORCH_CHECK(cosines.numel() == T * D && sines.numel() == T * D,
              "rotary: cos and sin must hold T x D values for x's T and D");
  Tensor y = torch::empty({B, T, H, D}, x.options().dtype(torch::kFloat));
  const Strided xs = strided(x);
  const float *cp = cosines.data_ptr<float>(), *sp = sines.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B * T, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / T, t = row % T;
      const float *c = cp + t * D, *s = sp + t * D;
      for (int64_t h = 0; h < H; ++h) {
        const float* in = xs.at(b, t, h);
        float* out = yp + (row * H + h) * D;
        int64_t i = 0;
        for (; i + 8 <= half; i += 8) {
          const vec8 first = load8(in + i), second = load8(in + half + i);
          store8(out + i, first * load8(c + i) - second * load8(s + i));
          store8(out + half + i, second * load8(c + half + i) + first * load8(s + half + i));
        }
        for (; i < half; ++i) {
          const float first = in[i], second = in[half + i];
          out[i] = first * c[i] - second * s[i];
          out[half + i] = second * c[half + i] + first * s[half + i];
        }
      }
    }
  });
  return y;
}

// The distillation loss's per-chunk softmax work at temperature 1 (chunk_math_torch in
// kernels/distill_loss/chunk.py), one row at a time while it is in cache: with q = softmax(s), p = softmax(z),
//   KL(p || q) = sum_j p_j (z_j - s_j) + lse(s) - lse(z),   CE = lse(s) - s_y,
// and, where write_grad, s overwritten by kl_coef (q - p) + ce_coef valid (q - onehot(y)). Two passes over a row
// (maxima, then exponentials and sums) and one to write the gradient, against the torch form's eight. logits,
// teacher (R, V) fp32 contiguous; targets (R) int64, -100 for no target. Returns (sum of KL, sum of CE) in float64.
Tensor distill_rows(const Tensor& logits, const Tensor& teacher, const Tensor& targets, double kl_coef,
                    double ce_coef, bool write_grad) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == torch::kFloat && logits.is_contiguous(),
              "distill_rows: logits must be (R, V) fp32 contiguous");
  TORCH_CHECK(teacher.sizes() == logits.sizes() && teacher.scalar_type() == torch::kFloat && teacher.is_contiguous(),
              "distill_rows: teacher must be fp32 contiguous with the logits' shape");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == torch::kLong,
              "distill_rows: targets must be (R) int64");
  const int64_t R = logits.size(0), V = logits.size(1);
  const Tensor targets_c = targets.contiguous();
  float* sp = logits.data_ptr<float>();
  const float* zp = teacher.data_ptr<float>();
  const int64_t* yp = targets_c.data_ptr<int64_t>();
  std::vector<double> kl_rows(R), ce_rows(R);
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    std::vector<float> teacher_exp(V);
    float* ez = teacher_exp.data();
    for (int64_t r = begin; r < end; ++r) {
      float* s = sp + r * V;
      const float* z = zp + r * V;
      const int64_t y = yp[r];
      const bool valid = y >= 0 && y < V;
      vec8 ms8 = splat(-INFINITY), mz8 = splat(-INFINITY);
      int64_t j = 0;
      for (; j + 8 <= V; j += 8) {
        const vec8 a = load8(s + j), b = load8(z + j);
        ms8 = a > ms8 ? a : ms8;
        mz8 = b > mz8 ? b : mz8;
      }
      float ms = -INFINITY, mz = -INFINITY;
      for (int i = 0; i < 8; ++i) ms = std::max(ms, ms8[i]), mz = std::max(mz, mz8[i]);
      for (; j < V; ++j) ms = std::max(ms, s[j]), mz = std::max(mz, z[j]);
      const float s_y = valid ? s[y] : 0.f;
      // exponentials: q's numerators over s (s is not needed again), p's into the row's scratch
      vec8 sum_s8 = {}, sum_z8 = {}, cross8 = {};
      for (j = 0; j + 8 <= V; j += 8) {
        const vec8 a = load8(s + j), b = load8(z + j);
        const vec8 ea = exp8(a - splat(ms)), eb = exp8(b - splat(mz));
        sum_s8 += ea;
        sum_z8 += eb;
        cross8 += eb * (b - a);
        store8(s + j, ea);
        store8(ez + j, eb);
      }
      double sum_s = horizontal_sum(sum_s8), sum_z = horizontal_sum(sum_z8), cross = horizontal_sum(cross8);
      for (; j < V; ++j) {
        const float ea = std::exp(s[j] - ms), eb = std::exp(z[j] - mz);
        sum_s += ea;
        sum_z += eb;
        cross += static_cast<double>(eb) * (z[j] - s[j]);
        s[j] = ea;
        ez[j] = eb;
      }
      const double lse_s = ms + std::log(sum_s), lse_z = mz + std::log(sum_z);
      kl_rows[r] = cross / sum_z + lse_s - lse_z;
      ce_rows[r] = valid ? lse_s - s_y : 0.0;
      if (!write_grad) continue;
      const float a = static_cast<float>((kl_coef + (valid ? ce_coef : 0.0)) / sum_s);
      const float b = static_cast<float>(kl_coef / sum_z);
      for (j = 0; j + 8 <= V; j += 8) store8(s + j, splat(a) * load8(s + j) - splat(b) * load8(ez + j));
      for (; j < V; ++j) s[j] = a * s[j] - b * ez[j];
      if (valid) s[y] -= static_cast<float>(ce_coef);
    }
  });
  double kl = 0.0, ce = 0.0;
  for (int64_t r = 0; r < R; ++r) kl += kl_rows[r], ce += ce_rows[r];  // in row order: the same for any split
  return torch::tensor({kl, ce}, torch::dtype(torch::kDouble));
}

namespace {

constexpr int64_t ATTENTION_KEY_TILE = 256;  // keys a product reads at a time: 64 KB of K or V stays in L2
constexpr int64_t ATTENTION_BLOCK = 64;  // queries per block: its scores (64 x T floats) stay in L2 at training lengths

// The row stride of the transposed keys and of a block's scores for T keys: T rounded up to 32 floats, plus 16. A
// power-of-two stride (T = 1,024, 2,048, ...) puts every row of a product's column block in one L1 set, and the
// products then miss on each row (0.65-0.78x sdpa at 1,024 and 2,048 tokens on the AVX2 EPYC, against 1.03x at
// 1,536: results/speed/causal_attention_stride.txt); the odd half-line keeps consecutive rows in different sets.
inline int64_t attention_stride(int64_t T) { return (T + 31) / 32 * 32 + 16; }

// n rows of D channels at p (row stride st, channels contiguous) widened to fp32: into dst (n x D), or transposed
// into dst (D rows at stride ld) for keys, so a block's scores are one product with the keys' rows as columns
template <typename S>
void widen_rows(const S* p, int64_t n, int64_t D, int64_t st, float* dst, bool transpose, int64_t ld = 0) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < D; ++c) {
      const float x = static_cast<float>(p[t * st + c]);
      if (transpose)
        dst[c * ld + t] = x;
      else
        dst[t * D + c] = x;
    }
}

// One query head: q (T x K), kt (K rows at stride attention_stride(T)), v (T x V) fp32; o's rows at stride so. Per block of queries, the
// scores against every key up to its last query in one product, each row's causal softmax (the exact one: the max
// over the row's keys, their exponentials and sum), then P V in a second product, divided by the sums.
template <typename S>
void causal_head(int64_t T, int64_t K, int64_t V, const float* q, const float* kt, const float* v, S* o, int64_t so,
                 float scale, float* scores, float* block_out, float* inverse_sums) {
  const int64_t ld = attention_stride(T);  // the keys' and the scores' row stride
  for (int64_t i0 = 0; i0 < T; i0 += ATTENTION_BLOCK) {
    const int64_t rows = std::min(ATTENTION_BLOCK, T - i0), n = i0 + rows;
    for (int64_t j0 = 0; j0 < n; j0 += ATTENTION_KEY_TILE)  // a tile of keys stays in L2 for the block's rows
      gemm(rows, std::min(ATTENTION_KEY_TILE, n - j0), K, q + i0 * K, K, kt + j0, ld, scores + j0, ld, false);
    for (int64_t r = 0; r < rows; ++r) {
      float* s = scores + r * ld;
      const int64_t keys = i0 + r + 1;  // the row's own key and every earlier one
      vec8 m8 = splat(-INFINITY);
      int64_t j = 0;
      for (; j + 8 <= keys; j += 8) {
        const vec8 a = load8(s + j);
        m8 = a > m8 ? a : m8;
      }
      float m = -INFINITY;
      for (int i = 0; i < 8; ++i) m = std::max(m, m8[i]);
      for (; j < keys; ++j) m = std::max(m, s[j]);
      const float shift = m * scale;
      vec8 sum8 = {};
      for (j = 0; j + 8 <= keys; j += 8) {
        const vec8 e = exp8(load8(s + j) * splat(scale) - splat(shift));
        sum8 += e;
        store8(s + j, e);
      }
      double sum = horizontal_sum(sum8);
      for (; j < keys; ++j) {
        const float e = std::exp(s[j] * scale - shift);
        sum += e;
        s[j] = e;
      }
      for (; j < n; ++j) s[j] = 0.f;  // later keys: masked
      inverse_sums[r] = static_cast<float>(1.0 / sum);
    }
    for (int64_t j0 = 0; j0 < n; j0 += ATTENTION_KEY_TILE)  // the same sums in the same order, a tile of v at a time
      gemm(rows, V, std::min(ATTENTION_KEY_TILE, n - j0), scores + j0, ld, v + j0 * V, V, block_out, V, j0 > 0);
    for (int64_t r = 0; r < rows; ++r) {
      S* dst = o + (i0 + r) * so;
      for (int64_t c = 0; c < V; ++c) dst[c] = static_cast<S>(block_out[r * V + c] * inverse_sums[r]);
    }
  }
}

template <typename S>
void causal_attention_into(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o, float scale) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), K = q.size(3), G = k.size(1), V = v.size(3);
  const int64_t per_group = H / G, ld = attention_stride(T);
  const S *qp = q.data_ptr<S>(), *kp = k.data_ptr<S>(), *vp = v.data_ptr<S>();
  S* op = o.data_ptr<S>();
  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    std::vector<float> qh(T * K), kt(K * ld), vh(T * V), scores(ATTENTION_BLOCK * ld), block_out(ATTENTION_BLOCK * V),
        inverse_sums(ATTENTION_BLOCK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / G, g = task % G;
      widen_rows(kp + b * k.stride(0) + g * k.stride(1), T, K, k.stride(2), kt.data(), true, ld);
      widen_rows(vp + b * v.stride(0) + g * v.stride(1), T, V, v.stride(2), vh.data(), false);
      for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {  // the query heads reading this key-value head
        widen_rows(qp + b * q.stride(0) + h * q.stride(1), T, K, q.stride(2), qh.data(), false);
        causal_head(T, K, V, qh.data(), kt.data(), vh.data(), op + (b * T * H + h) * V, H * V, scale, scores.data(),
                    block_out.data(), inverse_sums.data());
      }
    }
  });
}

}  // namespace

// softmax(q kᵀ · scale + causal mask) v without autograd: q (B, H, T, K), k (B, G, T, K), v (B, G, T, V) with G
// dividing H (query heads h·G/H .. read key-value head g, as sdpa's enable_gqa), any strides with contiguous
// channels, fp32 or bf16 (widened to fp32; every product and sum fp32); returns (B, T, H, V) in q's dtype, the
// layout transformers' attention functions return.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "causal_attention: q, k, v must be (B, H, T, D)");
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0) && k.size(2) == q.size(2) && v.size(2) == q.size(2) &&
                  k.size(3) == q.size(3) && v.size(1) == k.size(1) && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "causal_attention: q (B, H, T, K), k (B, G, T, K), v (B, G, T, V) with G dividing H");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                  (q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kBFloat16),
              "causal_attention: q, k, v must share one dtype, fp32 or bf16");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "causal_attention: q, k, v must have contiguous channels");
  Tensor o = torch::empty({q.size(0), q.size(2), q.size(1), v.size(3)}, q.options());
  if (q.size(2) == 0) return o;
  if (q.scalar_type() == torch::kBFloat16)
    causal_attention_into<at::BFloat16>(q, k, v, o, static_cast<float>(scale));
  else
    causal_attention_into<float>(q, k, v, o, static_cast<float>(scale));
  return o;
}
