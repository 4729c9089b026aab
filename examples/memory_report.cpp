// memory_report: training memory by category (weights, gradients, optimizer state, activations)
// of full fine-tuning, LoRA, LISA, GaLore and OwLore for a transformer shape, under each
// optimizer-state policy, next to OwLore's claim of 21 GB for LLaMA-2-7B (methods.md 5.7).
//
//   memory_report [--shape llama2-7b|gpt2|layers=..,d=..,ff=..,vocab=..] [--tokens N]
//                 [--no-checkpointing] [--state-bytes 2|4] [--lora-rank R] [--galore-rank R]
//                 [--lisa-gamma G] [--owlore-gamma G]
#include <loralab/train/memory_plan.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  using namespace loralab;
  try {
    std::string shape = "llama2-7b";
    train::MemoryAssumptions a;
    int lora_rank = 8, galore_rank = 256, lisa_gamma = 2, owlore_gamma = 5;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      auto value = [&]() -> std::string {
        LORALAB_CHECK(i + 1 < argc, "[loralab.config] option ", arg, " needs a value");
        return argv[++i];
      };
      if (arg == "--shape")
        shape = value();
      else if (arg == "--tokens")
        a.tokens = std::stoll(value());
      else if (arg == "--no-checkpointing")
        a.checkpointing = false;
      else if (arg == "--state-bytes")
        a.state_bytes = std::stoi(value());
      else if (arg == "--lora-rank")
        lora_rank = std::stoi(value());
      else if (arg == "--galore-rank")
        galore_rank = std::stoi(value());
      else if (arg == "--lisa-gamma")
        lisa_gamma = std::stoi(value());
      else if (arg == "--owlore-gamma")
        owlore_gamma = std::stoi(value());
      else if (arg == "--help" || arg == "-h") {
        std::printf(
            "usage: memory_report [--shape llama2-7b|gpt2|layers=L,d=D,ff=F,vocab=V[,mlp=gated|"
            "plain][,head=tied|untied]]\n"
            "                     [--tokens N (16*512)] [--no-checkpointing] [--state-bytes 2|4]\n"
            "                     [--lora-rank 8] [--galore-rank 256] [--lisa-gamma 2] "
            "[--owlore-gamma 5]\n");
        return 0;
      } else {
        LORALAB_FAIL("[loralab.config] unknown option '", arg, "' (see --help)");
      }
    }
    const train::TransformerShape s = train::parse_shape(shape);
    std::vector<train::MethodPlan> methods = {
        {"full fine-tuning", false, 0, 0, false, 0, StatePolicy::keep},
        {"LoRA r=" + std::to_string(lora_rank), true, lora_rank, 0, false, 0, StatePolicy::keep},
        {"GaLore r=" + std::to_string(galore_rank), false, 0, 0, true, galore_rank,
         StatePolicy::keep}};
    for (StatePolicy p : {StatePolicy::keep, StatePolicy::reset, StatePolicy::drop})
      methods.push_back(
          {"LISA g=" + std::to_string(lisa_gamma) + " " + std::string(state_policy_name(p)), false,
           0, lisa_gamma, false, 0, p});
    for (StatePolicy p : {StatePolicy::keep, StatePolicy::reset, StatePolicy::drop})
      methods.push_back({"OwLore g=" + std::to_string(owlore_gamma) + " r=" +
                             std::to_string(galore_rank) + " " + std::string(state_policy_name(p)),
                         false, 0, owlore_gamma, true, galore_rank, p});
    std::printf("%s: %d blocks, d %lld, ff %lld, vocab %lld, %.3f B parameters\n", s.name.c_str(),
                s.layers, static_cast<long long>(s.d), static_cast<long long>(s.ff),
                static_cast<long long>(s.vocab), double(s.total_params()) / 1e9);
    std::printf(
        "assumptions: weights and gradients %d bytes, optimizer state %d bytes, %lld tokens per "
        "micro-batch, %s, logits %d bytes each\n\n",
        a.weight_bytes, a.state_bytes, static_cast<long long>(a.tokens),
        a.checkpointing ? "gradient checkpointing" : "no checkpointing", a.logit_bytes);
    std::printf("%-26s %14s %10s %10s %10s %12s %10s\n", "method", "trainable", "weights",
                "gradients", "optimizer", "activations", "total");
    const auto gb = [](std::int64_t b) { return double(b) / 1e9; };
    for (const auto& m : methods) {
      const train::MemoryBreakdown b = train::plan_memory(s, m, a);
      std::printf("%-26s %14lld %8.2f GB %7.2f GB %7.2f GB %9.2f GB %7.2f GB\n", m.name.c_str(),
                  static_cast<long long>(b.trainable), gb(b.weights), gb(b.gradients),
                  gb(b.optimizer), gb(b.activations), gb(b.total()));
    }
    if (s.name == "LLaMA-2-7B")
      std::printf(
          "\nOwLore's claim (arXiv 2405.18380): LLaMA-2-7B fine-tunes in 21 GB (gamma 5, GaLore; "
          "memory of the whole process, as measured on the GPU).\n");
    std::printf(
        "keep: states of every visited block stay (LMFlow / OwLore code); reset: same memory, "
        "zeroed on a draw; drop: only the active blocks' states exist.\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "memory_report: %s\n", e.what());
    return 1;
  }
}
