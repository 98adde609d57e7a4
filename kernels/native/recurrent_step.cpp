// One decoded token of the students' recurrences as one call each: the recurrent analogue of the teacher's one
// fused attention call (sdpa) per token. Same arithmetic as kernels/{linear_recurrence,delta_rule}/step.py (fp32
// state and outputs); a Python step runs ~20 tensor ops a token, whose dispatch, not arithmetic, sets its time.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

using torch::Tensor;

namespace {

constexpr int64_t kInlineHeads = 8;  // batch·heads up to this run on the calling thread (no pool hand-off)

Tensor fp32(const Tensor& x) { return x.to(torch::kFloat).contiguous(); }

}  // namespace

// S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t; with bonus u (RWKV-6) o_t = scale (S_{t-1} +
// diag(u) k_t v_t^T)^T q_t. q, k (B, 1, H, K); v (B, 1, H, V); g none, (B, 1, H) or (B, 1, H, K); u (H, K);
// state (B, H, K, V); key_scale (B, 1, H) optional, k_t read as key_scale_t k_t (Mamba-2's dt_t B_t); skip (H)
// optional, o_t += skip v_t (Mamba-2's D). Returns (o (B, 1, H, V), new state).
std::vector<Tensor> linear_step(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                const c10::optional<Tensor>& log_decay, const c10::optional<Tensor>& bonus,
                                double scale, const Tensor& state, const c10::optional<Tensor>& key_scale,
                                const c10::optional<Tensor>& skip) {
  const Tensor q = fp32(q_in), k = fp32(k_in), v = fp32(v_in);
  const Tensor g = log_decay.has_value() ? fp32(*log_decay) : Tensor();
  const Tensor u = bonus.has_value() ? fp32(*bonus) : Tensor();
  const Tensor ks = key_scale.has_value() ? fp32(*key_scale) : Tensor();
  const Tensor sk = skip.has_value() ? fp32(*skip) : Tensor();
  const int64_t H = q.size(2), K = q.size(3), V = v.size(3), BH = q.size(0) * H;
  TORCH_CHECK(!ks.defined() || ks.numel() == BH, "linear_step: key_scale must be (B, 1, H)");
  TORCH_CHECK(!sk.defined() || sk.numel() == H, "linear_step: skip must have one value per head");
  const bool per_channel = g.defined() && g.dim() == 4;
  Tensor S = fp32(state).clone();
  Tensor o = torch::zeros({q.size(0), 1, H, V}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *gp = g.defined() ? g.data_ptr<float>() : nullptr, *up = u.defined() ? u.data_ptr<float>() : nullptr;
  const float *ksp = ks.defined() ? ks.data_ptr<float>() : nullptr, *skp = sk.defined() ? sk.data_ptr<float>() : nullptr;
  float *sp = S.data_ptr<float>(), *op = o.data_ptr<float>();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, BH, kInlineHeads, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const float *kk = kp + bh * K, *qq = qp + bh * K, *vv = vp + bh * V;
      float *rows = sp + bh * K * V, *out = op + bh * V;
      const float head_decay = (gp != nullptr && !per_channel) ? std::exp(gp[bh]) : 1.f;
      const float key_factor = ksp != nullptr ? ksp[bh] : 1.f;  // k * 1 is k: exact without a scale
      for (int64_t i = 0; i < K; ++i) {
        float* row = rows + i * V;
        const float ki = kk[i] * key_factor, qi = qq[i], a = per_channel ? std::exp(gp[bh * K + i]) : head_decay;
        if (up != nullptr) {  // the read-out sees S_{t-1} plus the bonus term, then the state moves on
          const float ui = up[(bh % H) * K + i];
          for (int64_t j = 0; j < V; ++j) {
            const float kv = ki * vv[j];
            out[j] += qi * (row[j] + ui * kv);
            row[j] = a * row[j] + kv;
          }
        } else {
          for (int64_t j = 0; j < V; ++j) {
            row[j] = a * row[j] + ki * vv[j];
            out[j] += qi * row[j];
          }
        }
      }
      for (int64_t j = 0; j < V; ++j) out[j] *= s;
      if (skp != nullptr)
        for (int64_t j = 0; j < V; ++j) out[j] += skp[bh % H] * vv[j];
    }
  });
  return {o, S};
}

// S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale S_t^T q_t, computed as in the
// Python step: S' = a S, u = beta (v - S'^T k), S_t = S' + k u^T. q, k (B, 1, H, K); v (B, 1, H, V);
// beta (B, 1, H); g none or (B, 1, H); state (B, H, K, V). Returns (o (B, 1, H, V), new state).
std::vector<Tensor> delta_step(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& beta_in,
                               const c10::optional<Tensor>& log_decay, double scale, const Tensor& state) {
  const Tensor q = fp32(q_in), k = fp32(k_in), v = fp32(v_in), beta = fp32(beta_in);
  const Tensor g = log_decay.has_value() ? fp32(*log_decay) : Tensor();
  const int64_t H = q.size(2), K = q.size(3), V = v.size(3), BH = q.size(0) * H;
  Tensor S = fp32(state).clone();
  Tensor o = torch::empty({q.size(0), 1, H, V}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *bp = beta.data_ptr<float>(), *gp = g.defined() ? g.data_ptr<float>() : nullptr;
  float *sp = S.data_ptr<float>(), *op = o.data_ptr<float>();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, BH, kInlineHeads, [&](int64_t begin, int64_t end) {
    std::vector<float> update(V);
    for (int64_t bh = begin; bh < end; ++bh) {
      const float a = gp != nullptr ? std::exp(gp[bh]) : 1.f, b = bp[bh];
      const float *kk = kp + bh * K, *qq = qp + bh * K, *vv = vp + bh * V;
      float *rows = sp + bh * K * V, *out = op + bh * V;
      for (int64_t j = 0; j < V; ++j) update[j] = 0.f;
      for (int64_t i = 0; i < K; ++i) {  // S' = a S and S'^T k in one pass
        float* row = rows + i * V;
        const float ki = kk[i];
        for (int64_t j = 0; j < V; ++j) {
          row[j] *= a;
          update[j] += ki * row[j];
        }
      }
      for (int64_t j = 0; j < V; ++j) {
        update[j] = b * (vv[j] - update[j]);
        out[j] = 0.f;
      }
      for (int64_t i = 0; i < K; ++i) {  // S_t = S' + k u^T and the read-out in one pass
        float* row = rows + i * V;
        const float ki = kk[i], qi = qq[i];
        for (int64_t j = 0; j < V; ++j) {
          row[j] += ki * update[j];
          out[j] += qi * row[j];
        }
      }
      for (int64_t j = 0; j < V; ++j) out[j] *= s;
    }
  });
  return {o, S};
}

// One token of the mLSTM with its running-max stabiliser (xLSTM eq. 19-27), as students/mixers/xlstm.py's loop:
// m' = max(f + m, i), C' = exp(f + m - m') C + exp(i - m') k v^T, r = scale C'^T q; v carries the normaliser's
// column of ones last. normalise: o = [r[:-1] / max(|r[-1]|, exp(-m')), 1]; else o = r exp(m').
// q, k (B, 1, H, K); v (B, 1, H, W); log_forget, log_input (B, 1, H); memory (B, H, K, W); m (B, H).
// Returns (o (B, 1, H, W), new memory, new m).
std::vector<Tensor> mlstm_step(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& f_in,
                               const Tensor& i_in, const Tensor& memory, const Tensor& m_in, double scale,
                               bool normalise) {
  const Tensor q = fp32(q_in), k = fp32(k_in), v = fp32(v_in), f = fp32(f_in), ig = fp32(i_in), m = fp32(m_in);
  const int64_t H = q.size(2), K = q.size(3), W = v.size(3), BH = q.size(0) * H;
  Tensor C = fp32(memory).clone();
  Tensor m_new = torch::empty_like(m);
  Tensor o = torch::empty({q.size(0), 1, H, W}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *fp = f.data_ptr<float>(), *ip = ig.data_ptr<float>(), *mp = m.data_ptr<float>();
  float *cp = C.data_ptr<float>(), *mn = m_new.data_ptr<float>(), *op = o.data_ptr<float>();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, BH, kInlineHeads, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const float carried = fp[bh] + mp[bh], stab = std::max(carried, ip[bh]);
      const float forget = std::exp(carried - stab), input = std::exp(ip[bh] - stab);
      mn[bh] = stab;
      const float *kk = kp + bh * K, *qq = qp + bh * K, *vv = vp + bh * W;
      float *rows = cp + bh * K * W, *out = op + bh * W;
      for (int64_t j = 0; j < W; ++j) out[j] = 0.f;
      for (int64_t i = 0; i < K; ++i) {
        float* row = rows + i * W;
        const float ki = input * kk[i], qi = qq[i];
        for (int64_t j = 0; j < W; ++j) {
          row[j] = forget * row[j] + ki * vv[j];
          out[j] += qi * row[j];
        }
      }
      for (int64_t j = 0; j < W; ++j) out[j] *= s;
      if (normalise) {
        const float denom = std::max(std::fabs(out[W - 1]), std::exp(-stab));
        for (int64_t j = 0; j < W - 1; ++j) out[j] /= denom;
        out[W - 1] = 1.f;
      } else {
        const float up = std::exp(stab);
        for (int64_t j = 0; j < W; ++j) out[j] *= up;
      }
    }
  });
  return {o, C, m_new};
}

// sequence_forward.cpp
std::vector<Tensor> delta_chunk(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                const c10::optional<Tensor>& log_decay, double scale,
                                const c10::optional<Tensor>& initial_state, int64_t chunk, double floor);
std::vector<Tensor> delta_scan(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                               const c10::optional<Tensor>& log_decay, double scale,
                               const c10::optional<Tensor>& initial_state, double floor);
std::vector<Tensor> linear_scan(const Tensor& q, const Tensor& k, const Tensor& v,
                                const c10::optional<Tensor>& log_decay, const c10::optional<Tensor>& bonus,
                                double scale, const c10::optional<Tensor>& initial_state, double floor,
                                const c10::optional<Tensor>& key_scale, const c10::optional<Tensor>& skip);
std::vector<Tensor> short_conv(const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias, bool silu,
                               const c10::optional<Tensor>& cache, int64_t normalized, int64_t group);
std::vector<Tensor> ddlerp(const Tensor& x, const c10::optional<Tensor>& previous, const Tensor& maa_x,
                           const Tensor& w1, const Tensor& maa, const Tensor& w2, const Tensor& time_decay,
                           const Tensor& decay_w1, const Tensor& decay_w2);
Tensor head_norm(const Tensor& x, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
                 const c10::optional<Tensor>& gate, bool rms, int64_t activation, double eps,
                 const std::vector<Tensor>& augment);
Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin);
std::vector<Tensor> decay_gate(const Tensor& x, double temperature, bool complement);
Tensor distill_rows(const Tensor& logits, const Tensor& teacher, const Tensor& targets, double kl_coef,
                    double ce_coef, bool write_grad);
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mlstm_step", &mlstm_step, "one token of the stabilised mLSTM (fp32 memory)");
  m.def("linear_step", &linear_step, "one token of the linear recurrence (fp32 state)", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("log_decay"), py::arg("bonus"), py::arg("scale"), py::arg("state"),
        py::arg("key_scale") = py::none(), py::arg("skip") = py::none());
  m.def("delta_step", &delta_step, "one token of the gated delta rule (fp32 state)");
  m.def("delta_scan", &delta_scan, "a sequence through the gated delta rule, token by token (fp32 state)");
  m.def("delta_chunk", &delta_chunk, "a sequence through the gated delta rule, chunk by chunk (fp32 state)");
  m.def("short_conv", &short_conv,
        "a prompt or a decoded token through the short causal convolution (+ SiLU, + L2-normalised groups), fp32, "
        "and the next cache");
  m.def("linear_scan", &linear_scan, "a sequence through the linear recurrence, token by token (fp32 state)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("log_decay"), py::arg("bonus"), py::arg("scale"),
        py::arg("initial_state"), py::arg("floor"), py::arg("key_scale") = py::none(), py::arg("skip") = py::none());
  m.def("ddlerp", &ddlerp, "RWKV-6's data-dependent token shift and decay over a sequence, fp32");
  m.def("head_norm", &head_norm, "a mixer's per-head RMS or layer norm, affine and activated gate in one pass, fp32");
  m.def("decay_gate", &decay_gate, "a sigmoid decay gate's log decay (and 1 - decay) in one pass, fp32");
  m.def("rotary", &rotary, "the rotary position embedding of a prompt or a token in one pass, fp32");
  m.def("distill_rows", &distill_rows, "the distillation loss's KL, CE and logit gradient at temperature 1, row by row, fp32");
  m.def("causal_attention", &causal_attention, "causal softmax attention over a prompt, no autograd, fp32 sums");
}
