// The one doctest main of the suite: prints versions and the base seed so any failure can be
// reproduced (ensmallen's tests/main.cpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstdio>

#include "loralab/version.hpp"
#include "support/testing.hpp"

int main(int argc, char** argv) {
  std::printf("loralab %s, Eigen %d.%d.%d, test seed %llu\n", loralab::version_string,
              EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION,
              static_cast<unsigned long long>(loralab::testing::kSeed));
  doctest::Context context(argc, argv);
  return context.run();
}
