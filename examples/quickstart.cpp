// quickstart: compose two adapter types (one per ablation arm), wrap the same frozen layer with
// each, and fit a low-rank target update with the mask-aware AdamW; print loss, memory and what
// LoRA-SP kept frozen. This is the main job of scripts/demo until the model and `ablate` land.
//
//   quickstart [--steps N] [--rank-check]
#include <loralab/loralab.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

using loralab::cpu::MatrixR;

// A teacher: W_target = W + a rank-4 update; the student adapter of rank 8 should recover it.
struct Task {
  MatrixR<float> W, W_target, X_eval;
  explicit Task(int in, int out) {
    std::srand(7);  // Eigen's Random uses rand(): a fixed seed makes the demo reproducible
    W = MatrixR<float>::Random(out, in) * 0.1f;
    const MatrixR<float> P = MatrixR<float>::Random(out, 4), Q = MatrixR<float>::Random(4, in);
    W_target = W + 0.05f * P * Q;
    X_eval = MatrixR<float>::Random(256, in);
  }
};

template <class Spec>
void train_arm(const char* name, const Task& task, int steps) {
  //! [train]
  MatrixR<float> W = task.W;  // the frozen base weight; the caller owns it
  loralab::AdapterConfig cfg;
  cfg.alpha = 16;
  cfg.seed = 1234;
  loralab::cpu::AdaptedLinear<Spec, float> layer(W, {}, cfg);
  loralab::cpu::AdamW<float> opt(layer.parameters(), {.lr = 1e-2, .weight_decay = 0.0});

  const auto t0 = std::chrono::steady_clock::now();
  float loss = 0;
  for (int step = 1; step <= steps; ++step) {
    const MatrixR<float> X = MatrixR<float>::Random(128, W.cols());
    const MatrixR<float> target = X * task.W_target.transpose();
    const MatrixR<float> Y = layer.forward(X, {.training = true, .step = std::uint64_t(step)});
    const MatrixR<float> GY = (Y - target) * (2.0f / float(Y.size()));  // d(mean squared error)/dY
    loss = (Y - target).squaredNorm() / float(Y.size());
    layer.zero_grad();
    layer.backward(X, GY);
    opt.step();
    if (step % 20 == 0 || step == steps)
      std::fprintf(stderr, "  [%s] step %4d/%d  train mse %.3e\n", name, step, steps, loss);
  }
  //! [train]
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const MatrixR<float> Y = layer.forward(task.X_eval, {.training = false});
  const float eval = (Y - task.X_eval * task.W_target.transpose()).squaredNorm() / float(Y.size());
  const auto mem = layer.memory(128);
  std::printf("%-10s eval mse %.3e | trainable %6lld frozen %6lld | optimizer %7lld B | %.2fs\n",
              name, eval, static_cast<long long>(mem.trainable_params),
              static_cast<long long>(mem.frozen_adapter_params),
              static_cast<long long>(mem.optimizer_state_bytes), secs);
  layer.merge();  // zero inference overhead: W now holds W + s B A
  const MatrixR<float> Y_merged = task.X_eval * W.transpose();
  std::printf("%-10s merged vs unmerged max |diff| %.2e\n", name,
              (Y_merged - Y).cwiseAbs().maxCoeff());
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 200;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--steps N]\n", argv[0]);
      return 2;
    }
  }
  if (steps <= 0) {
    std::fprintf(stderr, "quickstart: --steps must be positive, got %d\n", steps);
    return 2;
  }
  //! [compose]
  using Lora = loralab::Adapter<loralab::Rank<8>>;                             // plain LoRA
  using LoraSP = loralab::Adapter<loralab::Rank<8>, loralab::RandomMask<50>>;  // half frozen
  using LoraFA = loralab::Adapter<loralab::FreezeA, loralab::Rank<8>>;         // order is free
  //! [compose]
  const Task task(64, 48);
  std::printf("loralab %s quickstart: fit a rank-4 update of a 48x64 layer, %d steps per arm\n",
              loralab::version_string, steps);
  try {
    train_arm<Lora>("LoRA", task, steps);
    train_arm<LoraSP>("LoRA-SP", task, steps);
    train_arm<LoraFA>("LoRA-FA", task, steps);
  } catch (const loralab::Error& e) {
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 1;
  }
  return 0;
}
