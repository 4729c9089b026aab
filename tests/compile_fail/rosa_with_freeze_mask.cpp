// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/adapter.hpp>
#ifdef LORALAB_SHOULD_FAIL
// frozen entries would keep values of an earlier subspace after a re-factorization
using Composed = loralab::Adapter<loralab::PrincipalSubspace, loralab::RandomMask<50>>;
#else
using Composed = loralab::Adapter<loralab::PrincipalSubspace>;
#endif
static_assert(Composed::init::svd_slice);
int main() {
  return 0;
}
