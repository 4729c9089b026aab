// CPU vs CUDA for the decoder layers of cuda/loralab/cuda/model/layers.hpp: every launcher, in
// fp32 and bf16, against its CPU mirror (include/loralab/model/) run in double on the same inputs
// rounded to the device type. Runs only where a GPU is present (cuda_main.cpp exits 77 otherwise).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "loralab/cuda/blas.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/cuda/model/layers.hpp"
#include "loralab/model/attention.hpp"
#include "loralab/model/embedding.hpp"
#include "loralab/model/gelu.hpp"
#include "loralab/model/layernorm.hpp"
#include "loralab/model/loss.hpp"
#include "loralab/model/residual.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cpu::MatrixR;
using cuda::bf16;
using cuda::DeviceBuffer;
namespace dm = loralab::cuda::layers;

namespace {

// Tolerances, relative to the largest |reference| entry; the reference is the CPU mirror in
// double on the inputs the device sees (already rounded to T).
//
// fp32, element-wise layers: a few fp32 roundings (tanhf/expf are within 2 ulp) -> 1e-5.
constexpr double kF32Elementwise = 1e-5;
// fp32, reductions and GEMMs (row statistics, column sums, softmax, cuBLAS without TF32): sums of
// up to a few hundred fp32 terms, far below 1e-4 of the output scale.
constexpr double kF32Tolerance = 1e-4;
// bf16 outputs of element-wise layers (and of LayerNorm, cross-entropy backward, embedding): the
// value is computed in fp32 from exact bf16 inputs and rounded ONCE to bf16, an error of at most
// u = 2^-9 of the entry (so of the largest entry); 2^-7 leaves 4x room for the fp32 work.
constexpr double kBf16Elementwise = 1.0 / 128.0;
// bf16 attention: besides the output rounding (u), the forward rounds P .* Omega to bf16 before
// O = (P .* Omega) V, and the backward rounds dS and P .* Omega before the GEMMs; each such
// rounding adds at most u * sum_j |w_ij| |v_j|, which for these sizes stays within about 3 u of
// the largest output entry (rows of P sum to 1, Omega <= 4/3). With the 3-4 roundings on a path
// we allow 8 u = 2^-6 = 1.6e-2, as the adapter's bf16 test. (The backward's reference is fed the
// device's bf16 probs, the backward's actual input, so P's own rounding is not counted twice.)
constexpr double kBf16Attention = 1.0 / 64.0;
// fp32 outputs (statistics, loss, lse, parameter gradients) are computed in fp32 from the exact
// bf16 inputs, so they meet the fp32 tolerance in both arms.

template <class T>
constexpr double elementwise_tol() {
  return std::is_same_v<T, float> ? kF32Elementwise : kBf16Elementwise;
}
template <class T>
constexpr double output_tol() {  // a T output of a reduction (LayerNorm, loss gradients)
  return std::is_same_v<T, float> ? kF32Tolerance : kBf16Elementwise;
}

// Random [rows x cols] in [lo, hi], deterministic (std::srand is set per test).
MatrixR<double> uniform(Eigen::Index rows, Eigen::Index cols, double lo = -1.0, double hi = 1.0) {
  const MatrixR<double> u = MatrixR<double>::Random(rows, cols);  // [-1, 1]
  return ((u.array() + 1.0) * (0.5 * (hi - lo)) + lo).matrix();
}

// What the device actually sees: the values rounded to T.
template <class T>
MatrixR<double> rounded(const MatrixR<double>& m) {
  MatrixR<double> r = m;
  for (Eigen::Index i = 0; i < r.size(); ++i)
    r.data()[i] = cuda::to_float(cuda::from_float<T>(static_cast<float>(r.data()[i])));
  return r;
}

template <class T>
DeviceBuffer<T> to_device(const MatrixR<double>& m) {
  std::vector<T> host(static_cast<std::size_t>(m.size()));
  for (Eigen::Index i = 0; i < m.size(); ++i)
    host[static_cast<std::size_t>(i)] = cuda::from_float<T>(static_cast<float>(m.data()[i]));
  return DeviceBuffer<T>::from_host(host);
}

template <class T>
MatrixR<double> from_device(const DeviceBuffer<T>& buf, Eigen::Index rows, Eigen::Index cols) {
  const std::vector<T> host = buf.to_host();
  REQUIRE(host.size() >= static_cast<std::size_t>(rows * cols));
  MatrixR<double> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i)
    m.data()[i] = cuda::to_float(host[static_cast<std::size_t>(i)]);
  return m;
}

template <class V>
DeviceBuffer<V> vector_to_device(const std::vector<V>& host) {
  return DeviceBuffer<V>::from_host(host);
}

// A [1 x n] matrix as a span (the CPU layers' 1-D parameters).
std::span<const double> span_of(const MatrixR<double>& m) {
  return {m.data(), static_cast<std::size_t>(m.size())};
}
std::span<double> span_of(MatrixR<double>& m) {
  return {m.data(), static_cast<std::size_t>(m.size())};
}

// |got - want| <= tol * max|want| entry-wise, reporting the worst entry; NaN fails.
void check_close(const MatrixR<double>& got, const MatrixR<double>& want, double tol,
                 const char* what) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  const double scale = std::max(want.cwiseAbs().maxCoeff(), 1e-30);
  double worst = 0;
  Eigen::Index r = 0, c = 0;
  for (Eigen::Index i = 0; i < got.rows(); ++i)
    for (Eigen::Index j = 0; j < got.cols(); ++j) {
      const double e = std::abs(got(i, j) - want(i, j)) / scale;
      if (!(e <= worst)) {
        worst = std::isnan(e) ? std::numeric_limits<double>::infinity() : e;
        r = i;
        c = j;
      }
    }
  INFO(what << ": worst scaled error " << worst << " at (" << r << ", " << c << "): got "
            << got(r, c) << ", want " << want(r, c));
  CHECK(worst <= tol);
}

void seed(unsigned offset) {
  std::srand(static_cast<unsigned>(testing::kSeed) + offset);
}

}  // namespace

TEST_CASE_TEMPLATE("cuda layernorm forward/backward match the CPU", T, float, bf16) {
  struct Case {
    Eigen::Index n;
    int d;
  };
  for (const Case c : {Case{5, 16}, Case{37, 96}, Case{70, 300}}) {
    CAPTURE(c.n);
    CAPTURE(c.d);
    seed(1);
    const double eps = 1e-5;
    const MatrixR<double> x = rounded<T>(uniform(c.n, c.d, -1.7, 2.3));  // mean away from 0
    const MatrixR<double> gamma = rounded<T>(uniform(1, c.d, 0.5, 1.5));
    const MatrixR<double> beta = rounded<T>(uniform(1, c.d));
    const MatrixR<double> dy = rounded<T>(uniform(c.n, c.d));
    const MatrixR<double> dx0 = rounded<T>(uniform(c.n, c.d));  // dx accumulates onto this
    const MatrixR<double> dg0 = rounded<float>(uniform(1, c.d));
    const MatrixR<double> db0 = rounded<float>(uniform(1, c.d));

    MatrixR<double> y_ref(c.n, c.d), mean_ref(1, c.n), rstd_ref(1, c.n);
    model::layernorm_forward<double>(x, span_of(gamma), span_of(beta), eps, y_ref,
                                     span_of(mean_ref), span_of(rstd_ref));
    MatrixR<double> dx_ref = dx0, dg_ref = dg0, db_ref = db0;
    model::layernorm_backward<double>(dy, x, span_of(gamma), span_of(mean_ref), span_of(rstd_ref),
                                      dx_ref, span_of(dg_ref), span_of(db_ref));

    DeviceBuffer<T> d_x = to_device<T>(x), d_gamma = to_device<T>(gamma),
                    d_beta = to_device<T>(beta), d_dy = to_device<T>(dy);
    DeviceBuffer<T> d_y(std::size_t(c.n) * c.d), d_dx = to_device<T>(dx0);
    DeviceBuffer<float> d_mean(std::size_t(c.n)), d_rstd(std::size_t(c.n));
    DeviceBuffer<float> d_dg = to_device<float>(dg0), d_db = to_device<float>(db0);
    DeviceBuffer<float> scratch(dm::layernorm_backward_scratch(c.n, c.d));
    dm::layernorm_forward<T>(d_x.data(), d_gamma.data(), d_beta.data(), float(eps), d_y.data(),
                             d_mean.data(), d_rstd.data(), c.n, c.d, nullptr);
    dm::layernorm_backward<T>(d_dy.data(), d_x.data(), d_gamma.data(), d_mean.data(), d_rstd.data(),
                              d_dx.data(), d_dg.data(), d_db.data(), c.n, c.d, scratch.data(),
                              nullptr);
    check_close(from_device(d_y, c.n, c.d), y_ref, output_tol<T>(), "y");
    check_close(from_device(d_mean, 1, c.n), mean_ref, kF32Tolerance, "mean");
    check_close(from_device(d_rstd, 1, c.n), rstd_ref, kF32Tolerance, "rstd");
    check_close(from_device(d_dx, c.n, c.d), dx_ref, output_tol<T>(), "dx (accumulated)");
    check_close(from_device(d_dg, 1, c.d), dg_ref, kF32Tolerance, "dgamma (accumulated)");
    check_close(from_device(d_db, 1, c.d), db_ref, kF32Tolerance, "dbeta (accumulated)");

    // Without dgamma/dbeta (frozen LayerNorm): dx only, scratch may be null.
    DeviceBuffer<T> d_dx2 = to_device<T>(dx0);
    dm::layernorm_backward<T>(d_dy.data(), d_x.data(), d_gamma.data(), d_mean.data(), d_rstd.data(),
                              d_dx2.data(), nullptr, nullptr, c.n, c.d, nullptr, nullptr);
    check_close(from_device(d_dx2, c.n, c.d), dx_ref, output_tol<T>(), "dx (no dgamma)");
  }
}

TEST_CASE_TEMPLATE("cuda gelu forward/backward match the CPU, in place too", T, float, bf16) {
  seed(2);
  const Eigen::Index n = 37, m = 53;  // not a multiple of the block size
  const MatrixR<double> x = rounded<T>(uniform(n, m, -6.0, 6.0));
  const MatrixR<double> dy = rounded<T>(uniform(n, m));
  MatrixR<double> y_ref(n, m), dx_ref(n, m);
  model::gelu_forward<double>(x, y_ref);
  model::gelu_backward<double>(x, dy, dx_ref);
  const double tol = elementwise_tol<T>();

  DeviceBuffer<T> d_x = to_device<T>(x), d_dy = to_device<T>(dy), d_y(std::size_t(n * m)),
                  d_dx(std::size_t(n * m));
  dm::gelu_forward<T>(d_x.data(), d_y.data(), n * m, nullptr);
  dm::gelu_backward<T>(d_x.data(), d_dy.data(), d_dx.data(), n * m, nullptr);
  check_close(from_device(d_y, n, m), y_ref, tol, "gelu(x)");
  check_close(from_device(d_dx, n, m), dx_ref, tol, "gelu'(x) dy");

  DeviceBuffer<T> d_inplace = to_device<T>(x);
  dm::gelu_forward<T>(d_inplace.data(), d_inplace.data(), n * m, nullptr);
  check_close(from_device(d_inplace, n, m), y_ref, tol, "gelu(x) in place");
  DeviceBuffer<T> d_g = to_device<T>(dy);
  dm::gelu_backward<T>(d_x.data(), d_g.data(), d_g.data(), n * m, nullptr);
  check_close(from_device(d_g, n, m), dx_ref, tol, "gelu backward in place (dx = dy)");
}

TEST_CASE_TEMPLATE("cuda add, accumulate, fill_rows, column_sum and convert match the CPU", T,
                   float, bf16) {
  seed(3);
  const double tol = elementwise_tol<T>();
  const Eigen::Index n = 75, d = 300;  // neither a multiple of 32 rows nor of 256 threads
  const MatrixR<double> a = rounded<T>(uniform(n, d)), b = rounded<T>(uniform(n, d));
  MatrixR<double> sum_ref(n, d);
  model::residual_forward<double>(a, b, sum_ref);

  SUBCASE("add, also in place") {
    DeviceBuffer<T> d_a = to_device<T>(a), d_b = to_device<T>(b), d_y(std::size_t(n * d));
    dm::add<T>(d_a.data(), d_b.data(), d_y.data(), n * d, nullptr);
    check_close(from_device(d_y, n, d), sum_ref, tol, "a + b");
    dm::add<T>(d_a.data(), d_b.data(), d_a.data(), n * d, nullptr);
    check_close(from_device(d_a, n, d), sum_ref, tol, "a = a + b");
  }
  SUBCASE("accumulate") {
    MatrixR<double> acc_a = a, acc_b = b;  // residual_backward adds dY into both branches
    model::residual_backward<double>(b, acc_a, acc_b);
    DeviceBuffer<T> d_y = to_device<T>(a), d_x = to_device<T>(b);
    dm::accumulate<T>(d_y.data(), d_x.data(), n * d, nullptr);
    check_close(from_device(d_y, n, d), acc_a, tol, "y += x");
  }
  SUBCASE("fill_rows") {
    const MatrixR<double> bias = rounded<T>(uniform(1, d));
    DeviceBuffer<T> d_bias = to_device<T>(bias), d_y(std::size_t(n * d));
    dm::fill_rows<T>(d_y.data(), d_bias.data(), n, int(d), nullptr);
    const MatrixR<double> want = bias.replicate(n, 1);
    check_close(from_device(d_y, n, d), want, 0.0, "rows = bias");
  }
  SUBCASE("column_sum accumulates, deterministically") {
    for (const Eigen::Index rows : {Eigen::Index(1), Eigen::Index(32), n, Eigen::Index(1000)}) {
      CAPTURE(rows);
      const MatrixR<double> x = rounded<T>(uniform(rows, d));
      const MatrixR<double> out0 = rounded<float>(uniform(1, d));
      const MatrixR<double> want = out0 + x.colwise().sum();
      DeviceBuffer<T> d_x = to_device<T>(x);
      DeviceBuffer<float> d_out = to_device<float>(out0), d_out2 = to_device<float>(out0);
      DeviceBuffer<float> scratch(dm::column_sum_scratch(rows, int(d)));
      dm::column_sum<T>(d_x.data(), rows, int(d), d_out.data(), scratch.data(), nullptr);
      check_close(from_device(d_out, 1, d), want, kF32Tolerance, "out += column sums");
      dm::column_sum<T>(d_x.data(), rows, int(d), d_out2.data(), scratch.data(), nullptr);
      CHECK(d_out.to_host() == d_out2.to_host());  // fixed reduction order: bit-identical
    }
  }
  SUBCASE("convert rounds as the host does") {
    const MatrixR<double> src = rounded<float>(uniform(n, d, -100.0, 100.0));
    DeviceBuffer<float> d_src = to_device<float>(src);
    DeviceBuffer<T> d_dst(std::size_t(n * d));
    dm::convert<T>(d_src.data(), d_dst.data(), n * d, nullptr);
    check_close(from_device(d_dst, n, d), rounded<T>(src), 0.0, "T(src)");
  }
}

TEST_CASE_TEMPLATE("cuda embedding forward/backward match the CPU, with repeated tokens", T, float,
                   bf16) {
  seed(4);
  const int batch = 3, seq = 7, d = 20, vocab = 11, context = 9;
  std::vector<std::int32_t> tokens(std::size_t(batch) * seq);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<std::int32_t>((i * 7 + i / 5) % 5);  // only 5 of 11 tokens: repeats
  tokens[3] = vocab - 1;
  const MatrixR<double> wte = rounded<T>(uniform(vocab, d)), wpe = rounded<T>(uniform(context, d));
  const MatrixR<double> dx = rounded<T>(uniform(Eigen::Index(batch) * seq, d));
  const MatrixR<double> dwte0 = rounded<float>(uniform(vocab, d));
  const MatrixR<double> dwpe0 = rounded<float>(uniform(context, d));

  MatrixR<double> x_ref(Eigen::Index(batch) * seq, d), dwte_ref = dwte0, dwpe_ref = dwpe0;
  model::embedding_forward<double>(tokens, batch, seq, wte, wpe, x_ref);
  model::embedding_backward<double>(dx, tokens, batch, seq, dwte_ref, dwpe_ref);

  DeviceBuffer<std::int32_t> d_tokens = vector_to_device(tokens);
  DeviceBuffer<T> d_wte = to_device<T>(wte), d_wpe = to_device<T>(wpe), d_dx = to_device<T>(dx);
  DeviceBuffer<T> d_x(std::size_t(batch) * seq * d);
  DeviceBuffer<float> d_dwte = to_device<float>(dwte0), d_dwpe = to_device<float>(dwpe0);
  dm::embedding_forward<T>(d_tokens.data(), d_wte.data(), d_wpe.data(), d_x.data(), batch, seq, d,
                           nullptr);
  dm::embedding_backward<T>(d_dx.data(), d_tokens.data(), d_dwte.data(), d_dwpe.data(), batch, seq,
                            d, nullptr);
  check_close(from_device(d_x, Eigen::Index(batch) * seq, d), x_ref, elementwise_tol<T>(), "x");
  check_close(from_device(d_dwte, vocab, d), dwte_ref, kF32Tolerance, "dwte (accumulated)");
  check_close(from_device(d_dwpe, context, d), dwpe_ref, kF32Tolerance, "dwpe (accumulated)");
}

TEST_CASE_TEMPLATE("cuda cross-entropy forward/backward match the CPU, with ignored targets", T,
                   float, bf16) {
  struct Case {
    Eigen::Index n;
    int vocab;
  };
  for (const Case c : {Case{13, 1000}, Case{4, 50257}}) {  // GPT-2's vocabulary loops per row
    CAPTURE(c.n);
    CAPTURE(c.vocab);
    seed(5);
    const MatrixR<double> z = rounded<T>(uniform(c.n, c.vocab, -4.0, 4.0));
    std::vector<std::int32_t> targets(static_cast<std::size_t>(c.n));
    for (std::size_t i = 0; i < targets.size(); ++i)
      targets[i] = i % 4 == 1 ? model::kIgnoreTarget
                              : static_cast<std::int32_t>((i * 7919 + 13) % std::size_t(c.vocab));
    // Per-row reference statistics in double.
    MatrixR<double> lse_ref(1, c.n), loss_ref(1, c.n);
    for (Eigen::Index i = 0; i < c.n; ++i) {
      const double mx = z.row(i).maxCoeff();
      lse_ref(0, i) = mx + std::log((z.row(i).array() - mx).exp().sum());
      const std::int32_t y = targets[static_cast<std::size_t>(i)];
      loss_ref(0, i) = y == model::kIgnoreTarget ? 0.0 : lse_ref(0, i) - z(i, y);
    }
    MatrixR<double> probs(c.n, c.vocab), dz_ref(c.n, c.vocab);
    const model::CrossEntropyResult res = model::cross_entropy_forward<double>(z, targets, probs);
    REQUIRE(res.count > 0);
    model::cross_entropy_backward<double>(probs, targets, res.count, dz_ref);

    DeviceBuffer<T> d_z = to_device<T>(z);
    DeviceBuffer<std::int32_t> d_targets = vector_to_device(targets);
    DeviceBuffer<float> d_loss(static_cast<std::size_t>(c.n)), d_lse(static_cast<std::size_t>(c.n));
    dm::cross_entropy_forward<T>(d_z.data(), d_targets.data(), c.n, c.vocab, d_loss.data(),
                                 d_lse.data(), nullptr);
    const MatrixR<double> loss = from_device(d_loss, 1, c.n);
    check_close(loss, loss_ref, kF32Tolerance, "loss per row");
    check_close(from_device(d_lse, 1, c.n), lse_ref, kF32Tolerance, "lse (ignored rows too)");
    CHECK(loss.sum() / double(res.count) == doctest::Approx(res.loss).epsilon(kF32Tolerance));
    for (Eigen::Index i = 0; i < c.n; ++i)
      if (targets[static_cast<std::size_t>(i)] == model::kIgnoreTarget) CHECK(loss(0, i) == 0.0);

    dm::cross_entropy_backward<T>(d_z.data(), d_targets.data(), d_lse.data(), c.n, c.vocab,
                                  float(1.0 / double(res.count)), nullptr);
    const MatrixR<double> dz = from_device(d_z, c.n, c.vocab);
    check_close(dz, dz_ref, output_tol<T>(), "dlogits (in place)");
    for (Eigen::Index i = 0; i < c.n; ++i)
      if (targets[static_cast<std::size_t>(i)] == model::kIgnoreTarget)
        CHECK(dz.row(i).cwiseAbs().maxCoeff() == 0.0);  // exactly 0
  }
}

namespace {

// keep: DropKey (logit_keep); scale: weight_scale; drop_attention / drop_attention_grad:
// DropAttention (weight_keep) with and without the stop-gradient on the normalizer.
enum class Hooks { none, keep, scale, drop_attention, drop_attention_grad };

template <class T>
void attention_case(int batch, int seq, int heads, int hd, Hooks mode,
                    dm::AttentionScratch<T>& scratch, cuda::BlasHandle& blas) {
  CAPTURE(batch);
  CAPTURE(seq);
  CAPTURE(heads);
  CAPTURE(hd);
  CAPTURE(static_cast<int>(mode));
  const double tol = std::is_same_v<T, float> ? kF32Tolerance : kBf16Attention;
  const int d = heads * hd;
  const Eigen::Index bt = Eigen::Index(batch) * seq, rows = bt * heads;
  seed(6 + static_cast<unsigned>(seq));
  const MatrixR<double> qkv = rounded<T>(uniform(bt, 3 * d, -2.0, 2.0));
  const MatrixR<double> dout = rounded<T>(uniform(bt, d));

  // Hooks: random keeps (80%) plus one row (b = batch-1, h = heads-1, i = seq/2) whose every
  // allowed key is dropped; or DropAttention weights {0, 4/3}.
  std::vector<std::uint8_t> keep;
  std::vector<float> omega;
  const Eigen::Index dropped_row = ((batch - 1) * heads + heads - 1) * Eigen::Index(seq) + seq / 2;
  const bool drop_attention = mode == Hooks::drop_attention || mode == Hooks::drop_attention_grad;
  if (mode == Hooks::keep || drop_attention) {
    keep.resize(std::size_t(rows) * seq);
    const MatrixR<double> u = uniform(rows, seq, 0.0, 1.0);
    for (std::size_t e = 0; e < keep.size(); ++e) keep[e] = u.data()[e] < 0.8 ? 1 : 0;
    for (int j = 0; j <= seq / 2; ++j) keep[std::size_t(dropped_row) * seq + j] = 0;
  } else if (mode == Hooks::scale) {
    omega.resize(std::size_t(rows) * seq);
    const MatrixR<double> u = uniform(rows, seq, 0.0, 1.0);
    for (std::size_t e = 0; e < omega.size(); ++e) omega[e] = u.data()[e] < 0.25 ? 0.0f : 4.0f / 3;
  }
  model::AttentionHooks host_hooks, dev_hooks;
  DeviceBuffer<std::uint8_t> d_keep;
  DeviceBuffer<float> d_omega;
  if (!keep.empty()) {
    d_keep = vector_to_device(keep);
    if (drop_attention) {
      host_hooks.weight_keep = keep.data();
      dev_hooks.weight_keep = d_keep.data();
      host_hooks.normalizer_stop_gradient = dev_hooks.normalizer_stop_gradient =
          mode == Hooks::drop_attention;
    } else {
      host_hooks.logit_keep = keep.data();
      dev_hooks.logit_keep = d_keep.data();
    }
  }
  if (!omega.empty()) {
    d_omega = vector_to_device(omega);
    host_hooks.weight_scale = omega.data();
    dev_hooks.weight_scale = d_omega.data();
  }

  MatrixR<double> out_ref(bt, d), probs_ref(rows, seq);
  model::attention_forward<double>(qkv, batch, seq, heads, out_ref, probs_ref, host_hooks);

  DeviceBuffer<T> d_qkv = to_device<T>(qkv), d_dout = to_device<T>(dout);
  DeviceBuffer<T> d_out(std::size_t(bt) * d), d_probs(std::size_t(rows) * seq),
      d_dqkv(std::size_t(bt) * 3 * d);
  dm::attention_forward<T>(d_qkv.data(), batch, seq, heads, d, d_out.data(), d_probs.data(),
                           dev_hooks, scratch, blas.get(), nullptr);
  const MatrixR<double> out = from_device(d_out, bt, d);
  const MatrixR<double> probs = from_device(d_probs, rows, seq);
  check_close(probs, probs_ref, tol, "probs");
  check_close(out, out_ref, tol, "out");

  // The backward's reference gets the device's probs: they are attention_backward's input.
  MatrixR<double> dqkv_ref(bt, 3 * d);
  model::attention_backward<double>(dout, qkv, probs, batch, seq, heads, dqkv_ref, host_hooks);
  dm::attention_backward<T>(d_dout.data(), d_qkv.data(), d_probs.data(), batch, seq, heads, d,
                            d_dqkv.data(), dev_hooks, scratch, blas.get(), nullptr);
  const MatrixR<double> dqkv = from_device(d_dqkv, bt, 3 * d);
  check_close(dqkv.leftCols(d), dqkv_ref.leftCols(d), tol, "dq");
  check_close(dqkv.middleCols(d, d), dqkv_ref.middleCols(d, d), tol, "dk");
  check_close(dqkv.rightCols(d), dqkv_ref.rightCols(d), tol, "dv");

  // Exact zeros: above the diagonal, at dropped keys (DropKey; DropAttention's probs are the
  // softmax before the drop), and the all-dropped row's output and dq; nothing NaN.
  CHECK(cpu::all_finite(out));
  CHECK(cpu::all_finite(probs));
  CHECK(cpu::all_finite(dqkv));
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index j = 0; j < seq; ++j) {
      const bool dropped =
          mode == Hooks::keep && !keep.empty() && keep[std::size_t(r * seq + j)] == 0;
      if (j > r % seq || dropped) CHECK(probs(r, j) == 0.0);
    }
  if (mode == Hooks::keep || drop_attention) {
    if (mode == Hooks::keep) CHECK(probs.row(dropped_row).cwiseAbs().maxCoeff() == 0.0);
    const Eigen::Index b = batch - 1, h = heads - 1, i = seq / 2;
    CHECK(out.block(b * seq + i, h * hd, 1, hd).cwiseAbs().maxCoeff() == 0.0);
    CHECK(dqkv.block(b * seq + i, h * hd, 1, hd).cwiseAbs().maxCoeff() == 0.0);  // dq of that row
  }
}

}  // namespace

TEST_CASE_TEMPLATE("cuda attention forward/backward match the CPU, with and without hooks", T,
                   float, bf16) {
  cuda::BlasHandle blas;
  dm::AttentionScratch<T> scratch;  // shared across shapes: grown, then reused smaller
  struct Shape {
    int batch, seq, heads, hd;
  };
  for (int pass = 0; pass < 2; ++pass)
    for (const Shape s : {Shape{2, 5, 2, 8}, Shape{1, 17, 3, 12}, Shape{3, 33, 4, 16}})
      for (const Hooks mode : {Hooks::none, Hooks::keep, Hooks::scale, Hooks::drop_attention,
                               Hooks::drop_attention_grad})
        attention_case<T>(s.batch, s.seq, s.heads, s.hd, mode, scratch, blas);
}

TEST_CASE("cuda DropAttention without the stop-gradient has DropKey's output and gradient") {
  // methods.md 4.4: for one mask both forwards agree, and back-propagating through DropAttention's
  // normalizer gives exactly DropKey's gradient; with the stop-gradient the gradients differ.
  cuda::BlasHandle blas;
  dm::AttentionScratch<float> scratch;
  const int batch = 2, seq = 9, heads = 2, hd = 4, d = heads * hd;
  const Eigen::Index bt = Eigen::Index(batch) * seq, rows = bt * heads;
  seed(40);
  const MatrixR<double> qkv = uniform(bt, 3 * d, -2.0, 2.0), dout = uniform(bt, d);
  std::vector<std::uint8_t> keep(std::size_t(rows) * seq);
  const MatrixR<double> u = uniform(rows, seq, 0.0, 1.0);
  for (std::size_t e = 0; e < keep.size(); ++e) keep[e] = u.data()[e] < 0.7 ? 1 : 0;
  for (int j = 0; j <= 3; ++j) keep[3 * std::size_t(seq) + j] = 0;  // row 3: every key dropped
  DeviceBuffer<std::uint8_t> d_keep = vector_to_device(keep);
  DeviceBuffer<float> d_qkv = to_device<float>(qkv), d_dout = to_device<float>(dout);
  auto run = [&](const model::AttentionHooks& hooks, MatrixR<double>& out, MatrixR<double>& dqkv) {
    DeviceBuffer<float> d_out(std::size_t(bt) * d), d_probs(std::size_t(rows) * seq),
        d_dqkv(std::size_t(bt) * 3 * d);
    dm::attention_forward<float>(d_qkv.data(), batch, seq, heads, d, d_out.data(), d_probs.data(),
                                 hooks, scratch, blas.get(), nullptr);
    dm::attention_backward<float>(d_dout.data(), d_qkv.data(), d_probs.data(), batch, seq, heads, d,
                                  d_dqkv.data(), hooks, scratch, blas.get(), nullptr);
    out = from_device(d_out, bt, d);
    dqkv = from_device(d_dqkv, bt, 3 * d);
  };
  model::AttentionHooks drop_key, through, stopped;
  drop_key.logit_keep = d_keep.data();
  through.weight_keep = stopped.weight_keep = d_keep.data();
  through.normalizer_stop_gradient = false;
  MatrixR<double> out_k, dqkv_k, out_t, dqkv_t, out_s, dqkv_s;
  run(drop_key, out_k, dqkv_k);
  run(through, out_t, dqkv_t);
  run(stopped, out_s, dqkv_s);
  check_close(out_t, out_k, kF32Elementwise, "DropAttention output vs DropKey's");
  check_close(out_s, out_k, kF32Elementwise, "DropAttention (stop-gradient) output vs DropKey's");
  check_close(dqkv_t, dqkv_k, kF32Tolerance, "DropAttention gradient through S vs DropKey's");
  CHECK((dqkv_s.leftCols(2 * d) - dqkv_k.leftCols(2 * d)).cwiseAbs().maxCoeff() >
        1e-3 * dqkv_k.leftCols(2 * d).cwiseAbs().maxCoeff());  // the stop-gradient changes dQ, dK
  const std::string both = testing::error_of([&] {
    model::AttentionHooks bad;
    bad.weight_keep = d_keep.data();
    bad.weight_scale = reinterpret_cast<const float*>(d_qkv.data());
    MatrixR<double> o, g;
    run(bad, o, g);
  });
  CHECK(both.find("[loralab.config] attention_forward") != std::string::npos);
}

TEST_CASE("cuda layers reject bad arguments on the host, naming the launcher") {
  cuda::BlasHandle blas;
  dm::AttentionScratch<float> scratch;
  DeviceBuffer<float> buf(64);
  const std::string attention = testing::error_of([&] {
    dm::attention_forward<float>(buf.data(), 1, 2, 3, 8, buf.data(), buf.data(), {}, scratch,
                                 blas.get(), nullptr);
  });
  CHECK(attention.find("[loralab.shape] attention_forward") != std::string::npos);
  CHECK(attention.find("heads=3") != std::string::npos);
  const std::string layernorm = testing::error_of([&] {
    dm::layernorm_backward<float>(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(),
                                  buf.data(), buf.data(), nullptr, 2, 4, nullptr, nullptr);
  });
  CHECK(layernorm.find("[loralab.shape] layernorm_backward") != std::string::npos);
  const std::string ce = testing::error_of([&] {
    dm::cross_entropy_backward<float>(buf.data(), nullptr, buf.data(), 2, 4, -1.0f, nullptr);
  });
  CHECK(ce.find("cross_entropy_backward") != std::string::npos);
}
