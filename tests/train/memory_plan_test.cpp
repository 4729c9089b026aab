// The memory planner against methods.md 5.7's LLaMA-2-7B numbers: block and embedding sizes,
// GaLore r = 256 state per block, and the keep-vs-drop difference of the state policies.
#include "loralab/train/memory_plan.hpp"

#include <doctest/doctest.h>

#include "support/testing.hpp"

using namespace loralab;
using train::MethodPlan;

TEST_CASE("LLaMA-2-7B shapes: block, embedding, total (methods.md 5.7)") {
  const train::TransformerShape s = train::parse_shape("llama2-7b");
  CHECK(s.block_linear() == 202'375'168);
  CHECK(s.vocab * s.d == 131'072'000);
  CHECK(s.total_params() == doctest::Approx(6.74e9).epsilon(1e-3));
  const train::TransformerShape g = train::parse_shape("gpt2");
  CHECK(g.total_params() == 124'439'808);  // HF GPT-2 (tied head)
  const auto c = train::parse_shape("layers=2,d=8,ff=32,vocab=11,mlp=plain,head=tied");
  CHECK(c.block_linear() == 4 * 64 + 2 * 8 * 32);
  CHECK(testing::error_of([] { train::parse_shape("depth=3"); }).find("unknown shape key") !=
        std::string::npos);
}

TEST_CASE("optimizer state: GaLore r = 256 per block, and keep vs drop for LISA and OwLore") {
  const auto s = train::parse_shape("llama2-7b");
  const train::MemoryAssumptions a{.state_bytes = 1};  // count entries
  // OwLore: 5 blocks, GaLore r = 256: 32.6 M state entries per block (+ Adam on two norms)
  MethodPlan owl{"owlore", false, 0, 5, true, 256, StatePolicy::drop};
  MethodPlan owl_keep = owl;
  owl_keep.state = StatePolicy::keep;
  const std::int64_t outer_state = 2 * s.outer_params();
  const std::int64_t per_block =
      4 * (256 * 4096 + 2 * 256 * 4096) + 3 * (256 * 4096 + 2 * 256 * 11008) + 2 * 2 * 4096;
  CHECK(per_block == doctest::Approx(32.6e6).epsilon(2e-3));
  CHECK(train::plan_memory(s, owl, a).optimizer == outer_state + 5 * per_block);
  CHECK(train::plan_memory(s, owl_keep, a).optimizer == outer_state + 32 * per_block);
  // LISA gamma = 2: Adam on E+H and two blocks, or on every block once all were visited
  MethodPlan lisa{"lisa", false, 0, 2, false, 0, StatePolicy::drop};
  const std::int64_t block = s.block_params();
  CHECK(train::plan_memory(s, lisa, a).optimizer == outer_state + 2 * 2 * block);
  lisa.state = StatePolicy::keep;
  CHECK(train::plan_memory(s, lisa, a).optimizer == outer_state + 32 * 2 * block);
  CHECK(train::plan_memory(s, lisa, a).trainable == s.outer_params() + 2 * block);
  // gradients are full-size for what trains (formed before projection)
  CHECK(train::plan_memory(s, owl, a).gradients == 2 * (s.outer_params() + 5 * block));
  // LoRA r = 8 on the 7 linears: r * sum(in + out) per block
  MethodPlan lora{"lora", true, 8};
  CHECK(train::plan_memory(s, lora, a).trainable == 32 * 8 * (8 * 4096 + 3 * (4096 + 11008)));
}
