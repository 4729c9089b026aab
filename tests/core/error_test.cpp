// Errors carry the family prefix, the values and the location of the failed check.
#include "loralab/core/error.hpp"

#include <doctest/doctest.h>

#include <string>

#include "loralab/core/memory.hpp"

TEST_CASE("LORALAB_CHECK throws loralab::Error with values and file:line") {
  const int r = 64, in = 32, out = 48;
  try {
    LORALAB_CHECK(r <= in, "[loralab.shape] adapter rank ", r, " exceeds min(in=", in,
                  ", out=", out, ")");
    FAIL("no throw");
  } catch (const loralab::Error& e) {
    const std::string what = e.what();
    CHECK(what.find("[loralab.shape] adapter rank 64 exceeds min(in=32, out=48)") == 0);
    CHECK(what.find("error_test.cpp:") != std::string::npos);
  }
  CHECK_NOTHROW(LORALAB_CHECK(r > in, "unused"));
  CHECK_THROWS_AS(LORALAB_FAIL("x"), std::runtime_error);  // catchable as the std base
}

TEST_CASE("MemoryReport sums categories") {
  loralab::MemoryReport a, b;
  a.parameter_bytes = 10;
  a.gradient_bytes = 5;
  b.activation_bytes = 7;
  b.trainable_params = 3;
  a += b;
  CHECK(a.total_bytes() == 22);
  CHECK(a.trainable_params == 3);
}
