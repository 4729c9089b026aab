// Uses the installed headers through find_package(loralab CONFIG): builds a LoRA-SP layer,
// checks that the untrained adapter reproduces the base layer, and exits non-zero otherwise.
#include <loralab/loralab.hpp>

#include <cstdio>

int main() {
  using LoraSP = loralab::Adapter<loralab::Rank<4>, loralab::RandomMask<50>>;
  loralab::cpu::MatrixR<float> W = loralab::cpu::MatrixR<float>::Random(16, 32);
  loralab::cpu::AdaptedLinear<LoraSP, float> layer(W);
  const loralab::cpu::MatrixR<float> X = loralab::cpu::MatrixR<float>::Random(8, 32);
  const loralab::cpu::MatrixR<float> Y = layer.forward(X);
  const float diff = (Y - X * W.transpose()).cwiseAbs().maxCoeff();
  std::printf("loralab %s consumer: trainable %lld, |Y - XW^T| = %g\n", loralab::version_string,
              static_cast<long long>(layer.memory(8).trainable_params), diff);
  return diff == 0.0f ? 0 : 1;
}
