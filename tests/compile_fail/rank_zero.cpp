// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
constexpr int kRank = 0;
#else
constexpr int kRank = 1;
#endif
using Composed = loralab::Adapter<loralab::Rank<kRank>>;
static_assert(Composed::rank::value == kRank);
int main() {
  return 0;
}
