// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
constexpr int kPercent = 150;
#else
constexpr int kPercent = 100;
#endif
using Composed = loralab::Adapter<loralab::Rank<2>, loralab::RandomMask<kPercent>>;
static_assert(Composed::freeze::frozen_percent == kPercent);
int main() {
  return 0;
}
