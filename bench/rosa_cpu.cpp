// ROSA re-factorization and GaLore projector refresh on the CPU (plain C++, wall time, median of
// runs): the cost of Gpt::refactorize for the ablate model and a GPT-2 124M-shaped model (all
// four linears of every block adapted), and one GaLore refresh (exact SVD vs randomized range
// finder) of a 1024 x 1024 gradient at rank 128 with the subspace distance between the two.
// Usage: bench_rosa_cpu [--quick]   (--quick: the ablate model only)
#include <loralab/cpu/galore.hpp>
#include <loralab/model/gpt.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using namespace loralab;
using Clock = std::chrono::steady_clock;

template <class F>
double median_seconds(int runs, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto start = Clock::now();
    f(i);
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void refactorize_cost(const char* name, model::GptConfig c, int rank, int runs) {
  model::GptWeights<float> w(c);
  w.init_gpt2(1);
  model::GptOptions opts;
  opts.adapter.rank = rank;
  opts.adapter.alpha = rank;
  model::Gpt<Adapter<DynamicRank, RosaSubspace<>>, float> m(w, opts);
  const double s = median_seconds(runs, [&](int i) { m.refactorize(std::uint32_t(i + 1)); });
  std::printf(
      "ROSA refactorize  %-22s %2d blocks x 4 linears, rank %2d: %9.3f s per model (%.1f ms "
      "per linear)\n",
      name, c.layers, rank, s, 1e3 * s / (4.0 * c.layers));
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  model::GptConfig ablate;
  ablate.vocab_size = 260;
  ablate.context = 24;
  ablate.layers = 8;
  ablate.heads = 4;
  ablate.d_model = 64;
  refactorize_cost("ablate (d 64)", ablate, 8, 5);
  if (!quick) {
    model::GptConfig gpt2;
    gpt2.vocab_size = 260;  // the vocabulary does not enter the cost
    gpt2.context = 64;
    gpt2.layers = 12;
    gpt2.heads = 12;
    gpt2.d_model = 768;
    refactorize_cost("GPT-2 124M shape", gpt2, 16, 1);
  }
  const int n = 1024, r = 128;
  std::srand(3);
  const cpu::MatrixR<float> G = cpu::MatrixR<float>::Random(n, n);
  cpu::GaloreProjector<float> exact({.rank = r}, n, n);
  cpu::GaloreProjector<float> fast({.rank = r, .refresh = GaloreRefresh::randomized}, n, n);
  const double te = median_seconds(3, [&](int) { exact.refresh(G, 0); });
  const double tf = median_seconds(3, [&](int) { fast.refresh(G, 0); });
  const cpu::MatrixR<float> Pe = exact.right().transpose() * exact.right();
  const cpu::MatrixR<float> Pf = fast.right().transpose() * fast.right();
  std::printf(
      "GaLore refresh %dx%d rank %d: exact SVD %.3f s, randomized (2 power iterations, "
      "oversample 8) %.3f s (%.1fx); subspace distance %.3f (uniform-noise gradient: no "
      "spectral gap, the hardest case)\n",
      n, n, r, te, tf, te / tf, (Pe - Pf).norm() / std::sqrt(2.0 * r));
  return 0;
}
