/// \file
/// \brief ROSA's index laws (methods.md 6.3 step 4): which r of the k singular components of a
/// weight become the trainable slice at a (re-)factorization. Drawn from Philox keyed by (seed,
/// module, re-factorization count), so every backend picks the same components. No Eigen.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/policy/init.hpp"

namespace loralab::rosa {

/// \ingroup init
/// \brief The r component indices (ascending) of re-factorization `count` of module `module`
/// under `law`, out of k = min(out, in). \throws Error unless 1 <= r < k (with r >= k the
/// slice would be the whole weight: ROSA's degenerate case, which an adapter cannot express).
inline std::vector<int> choose_subspace(SubspaceLaw law, int k, int r, std::uint64_t seed,
                                        std::uint32_t module, std::uint32_t count) {
  LORALAB_CHECK(r >= 1 && r < k,
                "[loralab.shape] ROSA needs 1 <= rank < min(out, in); got rank=", r,
                " with min(out, in)=", k);
  const std::uint64_t stream = make_stream(RngPurpose::rosa_subspace, module, count);
  auto uniform = [&](std::uint64_t i) {
    return uniform01_double(philox_word(seed, stream, 2 * i), philox_word(seed, stream, 2 * i + 1));
  };
  std::vector<int> idx;
  switch (law) {
    case SubspaceLaw::top:
      idx.resize(std::size_t(r));
      std::iota(idx.begin(), idx.end(), 0);
      break;
    case SubspaceLaw::bottom:
      idx.resize(std::size_t(r));
      std::iota(idx.begin(), idx.end(), k - r);
      break;
    case SubspaceLaw::contiguous: {
      // s0 = randint(0, k - r): the exclusive upper bound means the last block never comes up
      const int s0 = std::min(k - r - 1, int(uniform(0) * double(k - r)));
      idx.resize(std::size_t(r));
      std::iota(idx.begin(), idx.end(), s0);
      break;
    }
    case SubspaceLaw::uniform: {  // partial Fisher-Yates: the first r of a random permutation
      std::vector<int> perm(static_cast<std::size_t>(k));
      std::iota(perm.begin(), perm.end(), 0);
      for (int i = 0; i < r; ++i) {
        const int j = i + std::min(k - i - 1, int(uniform(std::uint64_t(i)) * double(k - i)));
        std::swap(perm[std::size_t(i)], perm[std::size_t(j)]);
      }
      idx.assign(perm.begin(), perm.begin() + r);
      std::sort(idx.begin(), idx.end());
      break;
    }
  }
  return idx;
}

}  // namespace loralab::rosa
