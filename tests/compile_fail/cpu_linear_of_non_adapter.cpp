// Must compile without LORALAB_SHOULD_FAIL and fail with it (see CMakeLists.txt).
#include <loralab/cpu/adapted_linear.hpp>
#ifdef LORALAB_SHOULD_FAIL
using Layer =
    loralab::cpu::AdaptedLinear<loralab::Rank<4>, float>;  // a policy, not an Adapter<...>
#else
using Layer = loralab::cpu::AdaptedLinear<loralab::Adapter<loralab::Rank<4>>, float>;
#endif
int main() {
  return sizeof(Layer) > 0 ? 0 : 1;
}
