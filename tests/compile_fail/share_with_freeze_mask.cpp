// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
// pool rows are shared by several blocks: a per-entry freeze mask has no meaning there
using Composed = loralab::Adapter<loralab::MixtureOfShards<>, loralab::RandomMask<50>>;
#else
using Composed = loralab::Adapter<loralab::MixtureOfShards<>>;
#endif
static_assert(Composed::shares_factors);
int main() {
  return 0;
}
