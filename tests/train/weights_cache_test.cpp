// The pretrained-weights cache: a round trip, and stale, corrupt or missing files rejected with
// the reason, leaving the weights untouched.
#include "loralab/train/weights_cache.hpp"

#include <doctest/doctest.h>

#include <unistd.h>
#include <filesystem>
#include <fstream>

#include "support/testing.hpp"

using namespace loralab;

TEST_CASE("weights cache: round trip, stale recipe, corrupt and missing files") {
  model::GptConfig cfg;
  cfg.vocab_size = 20;
  cfg.context = 8;
  cfg.layers = 1;
  cfg.heads = 2;
  cfg.d_model = 8;
  model::GptWeights<float> w(cfg), r(cfg);
  w.init_gpt2(testing::kSeed);
  const auto dir =
      std::filesystem::temp_directory_path() / ("loralab_cache_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / "base.safetensors";
  std::string why;
  CHECK(!train::load_cached_weights(path, "recipe A", r, &why));
  CHECK(why.find("no cache file") != std::string::npos);

  train::save_cached_weights(path, "recipe A", w);
  REQUIRE(train::load_cached_weights(path, "recipe A", r, &why));
  CHECK(std::equal(w.flat().begin(), w.flat().end(), r.flat().begin()));

  model::GptWeights<float> untouched(cfg);
  CHECK(!train::load_cached_weights(path, "recipe B", untouched, &why));
  CHECK(why.find("stale cache") != std::string::npos);
  CHECK(std::all_of(untouched.flat().begin(), untouched.flat().end(),
                    [](float x) { return x == 0.0f; }));

  model::GptConfig wider = cfg;
  wider.d_model = 16;
  model::GptWeights<float> other(wider);
  CHECK(!train::load_cached_weights(path, "recipe A", other,
                                    &why));  // same recipe text, wrong shapes
  CHECK(why.find("corrupt cache") != std::string::npos);

  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size / 2);  // a crash mid-copy, a full disk, ...
  CHECK(!train::load_cached_weights(path, "recipe A", untouched, &why));
  CHECK(why.find("corrupt cache") != std::string::npos);
  CHECK(train::recipe_hash("recipe A") != train::recipe_hash("recipe B"));
  CHECK(train::recipe_hash("x").size() == 16);
  std::filesystem::remove_all(dir);
}
