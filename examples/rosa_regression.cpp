// rosa_regression: ROSA's expressivity on a synthetic regression (methods.md 6.7, 6.8 invariant
// 8). Y = X W*^T with W* - W0 of rank q > r and X^T X = n I, so the loss is ||W - W*||_F^2 / out
// and no rank-r update of W0 can go below the Eckart-Young floor sum_{i>r} s_i(W* - W0)^2 / out.
// LoRA(r) and ROSA(r) train from W0 with Adam on the full batch; ROSA re-factorizes every
// --every steps (fresh Adam state). Writes the loss curves (CSV, and a PNG with matplotlib) and
// prints the numerical rank of each accumulated update. --check exits non-zero unless LoRA stays
// at or above the floor, ROSA ends below it, and ROSA's update has numerical rank > r.
#include <loralab/cpu/adamw.hpp>
#include <loralab/cpu/adapted_linear.hpp>

#include <Eigen/QR>
#include <Eigen/SVD>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

using namespace loralab;
using cpu::MatrixR;

struct Options {
  int in = 32, out = 32, q = 12, r = 2, n = 128;
  int steps = 3000, every = 150;
  double lr = 0.02;
  std::filesystem::path out_dir = "rosa-regression";
  bool check = false, plot = true;
};

int numerical_rank(const MatrixR<double>& M) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(M);
  const auto s = svd.singularValues();
  int rank = 0;
  for (Eigen::Index i = 0; i < s.size(); ++i) rank += s(i) > 1e-3 * s(0);
  return rank;
}

template <class Spec>
std::vector<double> train(const Options& o, const MatrixR<double>& X, const MatrixR<double>& Y,
                          const MatrixR<double>& W0, MatrixR<double>& W_out, bool rosa) {
  MatrixR<double> W = W0;
  AdapterConfig cfg;
  cfg.rank = o.r;
  cfg.alpha = o.r;  // scale 1 (ROSA's svd_equal)
  cfg.seed = 7;
  cpu::AdaptedLinear<Spec, double> layer(W, {}, cfg);
  auto opt = std::make_unique<cpu::AdamW<double>>(layer.parameters(),
                                                  AdamWConfig{.lr = o.lr, .weight_decay = 0.0});
  std::vector<double> curve;
  for (int step = 0; step < o.steps; ++step) {
    if constexpr (Spec::init::refactorizes) {
      if (rosa && step > 0 && step % o.every == 0) {
        layer.refactorize(std::uint32_t(step / o.every));
        opt = std::make_unique<cpu::AdamW<double>>(layer.parameters(),
                                                   AdamWConfig{.lr = o.lr, .weight_decay = 0.0});
      }
    }
    const MatrixR<double> Yh = layer.forward(X);
    const MatrixR<double> diff = Yh - Y;
    curve.push_back(diff.squaredNorm() / double(diff.size()));
    layer.zero_grad();
    layer.backward(X, (2.0 / double(diff.size())) * diff);
    opt->step();
  }
  W_out = W + layer.scale() * (layer.B() * layer.A());
  return curve;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "rosa_regression: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--steps")
      o.steps = std::stoi(value());
    else if (a == "--every")
      o.every = std::stoi(value());
    else if (a == "--rank")
      o.r = std::stoi(value());
    else if (a == "--target-rank")
      o.q = std::stoi(value());
    else if (a == "--lr")
      o.lr = std::stod(value());
    else if (a == "--out")
      o.out_dir = value();
    else if (a == "--check")
      o.check = true;
    else if (a == "--no-plot")
      o.plot = false;
    else {
      std::fprintf(stderr,
                   "usage: rosa_regression [--steps 3000] [--every 150] [--rank 2] "
                   "[--target-rank 12] [--lr 0.02] [--out DIR] [--check] [--no-plot]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  std::srand(11);
  // X with orthogonal columns of norm sqrt(n): X^T X = n I.
  const MatrixR<double> G = MatrixR<double>::Random(o.n, o.in);
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(G);
  const MatrixR<double> X =
      std::sqrt(double(o.n)) *
      MatrixR<double>(qr.householderQ() * Eigen::MatrixXd::Identity(o.n, o.in));
  const MatrixR<double> W0 = MatrixR<double>::Random(o.out, o.in);
  const MatrixR<double> delta =
      MatrixR<double>::Random(o.out, o.q) * MatrixR<double>::Random(o.q, o.in) / std::sqrt(o.q);
  const MatrixR<double> Y = X * (W0 + delta).transpose();
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(delta);
  double floor = 0;
  for (Eigen::Index i = o.r; i < svd.singularValues().size(); ++i)
    floor += svd.singularValues()(i) * svd.singularValues()(i);
  floor /= double(o.out);

  MatrixR<double> W_lora, W_rosa;
  const auto lora = train<Adapter<DynamicRank>>(o, X, Y, W0, W_lora, false);
  const auto rosa = train<Adapter<DynamicRank, RosaSubspace<>>>(o, X, Y, W0, W_rosa, true);
  const int rank_lora = numerical_rank(W_lora - W0), rank_rosa = numerical_rank(W_rosa - W0);
  std::filesystem::create_directories(o.out_dir);
  const auto csv_path = o.out_dir / "rosa_regression.csv";
  std::ofstream csv(csv_path);
  csv << "arm,step,mse\n";
  for (int s = 0; s < o.steps; s += std::max(1, o.steps / 300)) {
    csv << "LoRA r=" << o.r << ',' << s << ',' << lora[s] << '\n';
    csv << "ROSA r=" << o.r << ',' << s << ',' << rosa[s] << '\n';
    csv << "best rank-" << o.r << " update (Eckart-Young)," << s << ',' << floor << '\n';
  }
  csv.close();
  std::printf(
      "synthetic regression: out %d, in %d, rank(W* - W0) = %d, adapter rank %d, %d steps, ROSA "
      "re-factorizes every %d\n",
      o.out, o.in, o.q, o.r, o.steps, o.every);
  std::printf("best rank-%d floor  %.6f\n", o.r, floor);
  std::printf("LoRA final mse      %.6f   numerical rank of W - W0: %d\n", lora.back(), rank_lora);
  std::printf("ROSA final mse      %.6f   numerical rank of W - W0: %d\n", rosa.back(), rank_rosa);
  std::printf("wrote %s\n", csv_path.string().c_str());
  if (o.plot) {
    const auto png = o.out_dir / "rosa_regression.png";
    const std::string cmd = "/usr/bin/python3 '" LORALAB_SOURCE_DIR "/examples/plot_curves.py' '" +
                            csv_path.string() + "' '" + png.string() +
                            "' mse log 'synthetic regression: LoRA vs ROSA at equal rank'";
    if (std::system(cmd.c_str()) == 0) std::printf("wrote %s\n", png.string().c_str());
  }
  if (o.check) {
    const bool ok = lora.back() >= floor * (1 - 1e-6) && rosa.back() < 0.5 * floor &&
                    rank_rosa > o.r && rank_lora <= o.r;
    std::printf("check: %s\n", ok ? "passed" : "FAILED");
    return ok ? 0 : 1;
  }
  return 0;
}
