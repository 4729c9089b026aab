// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
using Composed = loralab::Adapter<loralab::Rank<8>, int>;  // int names no axis
#else
using Composed = loralab::Adapter<loralab::Rank<8>>;
#endif
static_assert(Composed::rank::value == 8);
int main() {
  return 0;
}
