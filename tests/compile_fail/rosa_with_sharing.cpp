// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
// a shared pool cannot be the SVD slice of several weights at once (methods.md 7.3)
using Composed = loralab::Adapter<loralab::RosaSubspace<>, loralab::MixtureOfShards<>>;
#else
using Composed = loralab::Adapter<loralab::RosaSubspace<>>;
#endif
static_assert(Composed::init::svd_slice);
int main() {
  return 0;
}
