// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
using Composed = loralab::Adapter<loralab::PureSharing, loralab::Prolora<>>;
#else
using Composed = loralab::Adapter<loralab::Prolora<>>;
#endif
static_assert(Composed::shares_factors);
int main() {
  return 0;
}
