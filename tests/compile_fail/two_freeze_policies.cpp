// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
using Composed = loralab::Adapter<loralab::RandomMask<50>, loralab::Rank<4>, loralab::FreezeA>;
#else
using Composed = loralab::Adapter<loralab::RandomMask<50>, loralab::Rank<4>>;
#endif
static_assert(Composed::freeze::has_mask);
int main() {
  return 0;
}
