/// \file
/// \brief Umbrella header: everything of loralab's CPU side. CUDA headers live under cuda/.
///
/// \defgroup core Core
/// \brief Errors, the Philox RNG, memory accounting.
/// \defgroup adapter Adapter composition
/// \brief `Adapter<Policies...>` and the concepts that check a composition.
/// \defgroup rank Rank axis
/// \brief `Rank<r>`, `DynamicRank`.
/// \defgroup freeze Freeze axis
/// \brief `NoFreeze`, `RandomMask<pct>` (LoRA-SP), `FreezeA`.
/// \defgroup init Init axis
/// \brief `KaimingUniformA`, `GaussianA`.
/// \defgroup scaling Scaling axis
/// \brief `AlphaOverRank`, `RsLoraScale`.
/// \defgroup dropout Dropout axis
/// \brief `NoDropout`, `InputDropout`.
/// \defgroup cpu CPU backend
/// \brief Eigen implementations.
/// \defgroup optim Optimizers
/// \brief Mask-aware AdamW, GaLore gradient projection, optimizer-state policies.
/// \defgroup sampling Layer sampling
/// \brief LISA / OwLore block sampling and OWL's layerwise outlier ratios.
/// \defgroup cuda CUDA backend
/// \brief Device storage, error checking and kernels (cuda/loralab/cuda/).
/// \defgroup model Model
/// \brief GPT-2-style decoder: config, weights, layers, the model with adapters.
/// \defgroup data Data
/// \brief Tokenizer, synthetic tasks, fortunes corpus, batches.
/// \defgroup train Training
/// \brief Schedules, trainer, checkpoints.
/// \defgroup io Input and output
/// \brief safetensors, HF GPT-2 checkpoints, PEFT LoRA adapters.
#pragma once

#include "loralab/adapter.hpp"
#include "loralab/adapter_init.hpp"
#include "loralab/core/error.hpp"
#include "loralab/core/memory.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/core/random_fill.hpp"
#include "loralab/cpu/adamw.hpp"
#include "loralab/cpu/adapted_linear.hpp"
#include "loralab/cpu/eigen_types.hpp"
#include "loralab/cpu/galore.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/data/fortunes.hpp"
#include "loralab/data/synthetic.hpp"
#include "loralab/data/tokenizer.hpp"
#include "loralab/io/hf_gpt2.hpp"
#include "loralab/io/peft_lora.hpp"
#include "loralab/io/safetensors.hpp"
#include "loralab/io/shard_pools.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/model/outliers.hpp"
#include "loralab/optim/adamw.hpp"
#include "loralab/optim/galore.hpp"
#include "loralab/optim/optimizer_options.hpp"
#include "loralab/optim/param_tensor.hpp"
#include "loralab/policy/sampling.hpp"
#include "loralab/sampling/layer_sampler.hpp"
#include "loralab/sampling/outliers.hpp"
#include "loralab/train/memory_plan.hpp"
#include "loralab/train/trainer.hpp"
#include "loralab/train/weights_cache.hpp"
#include "loralab/version.hpp"
