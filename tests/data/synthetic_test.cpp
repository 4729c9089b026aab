// Synthetic tasks: determinism, answers checked by independent parsing, exact batch layout,
// mixtures, exact match.
#include "loralab/data/synthetic.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "support/testing.hpp"

namespace ld = loralab::data;
using loralab::testing::kSeed;

namespace {

bool all_of_class(const std::string& s, int (*pred)(int)) {
  return std::all_of(s.begin(), s.end(),
                     [&](char c) { return pred(static_cast<unsigned char>(c)); });
}

// "123" is a canonical number of 1..max_size digits: no leading zero unless it is "0".
bool canonical_number(const std::string& s, std::size_t max_size = 18) {
  return !s.empty() && s.size() <= max_size && all_of_class(s, isdigit) &&
         (s.size() == 1 || s[0] != '0');
}

// Checks one example against the task's definition, by parsing its text; returns the operand
// digit counts (arithmetic) or the string length (others) for coverage checks.
std::vector<int> verify(ld::Task task, const ld::Example& e) {
  INFO("prompt '" << e.prompt << "' answer '" << e.answer << "'");
  switch (task) {
    case ld::Task::addition:
    case ld::Task::multiplication: {
      const char op = task == ld::Task::addition ? '+' : '*';
      const auto at = e.prompt.find(op);
      REQUIRE(at != std::string::npos);
      REQUIRE(e.prompt.back() == '=');
      const std::string a = e.prompt.substr(0, at);
      const std::string b = e.prompt.substr(at + 1, e.prompt.size() - at - 2);
      REQUIRE(canonical_number(a));
      REQUIRE(canonical_number(b));
      REQUIRE(canonical_number(e.answer, 19));  // 18 + 18 digits may carry
      const std::uint64_t x = std::stoull(a), y = std::stoull(b), z = std::stoull(e.answer);
      if (op == '+') {
        CHECK(z == x + y);
      } else if (x != 0) {
        CHECK(z % x == 0);  // z == x * y, checked by division so it cannot share an overflow
        CHECK(z / x == y);
      } else {
        CHECK(z == 0);
      }
      return {int(a.size()), int(b.size())};
    }
    case ld::Task::copy:
    case ld::Task::reversal:
    case ld::Task::sorting: {
      const char delim = task == ld::Task::reversal ? '~' : '|';
      REQUIRE(e.prompt.size() >= 2);
      REQUIRE(e.prompt.back() == delim);
      const std::string s = e.prompt.substr(0, e.prompt.size() - 1);
      if (task == ld::Task::sorting) {
        CHECK(all_of_class(s, isdigit));
        std::string sorted = s;
        std::sort(sorted.begin(), sorted.end());
        CHECK(e.answer == sorted);
      } else {
        CHECK(all_of_class(s, islower));
        CHECK(e.answer == (task == ld::Task::copy ? s : std::string(s.rbegin(), s.rend())));
      }
      return {int(s.size())};
    }
  }
  FAIL("unknown task");
  return {};
}

}  // namespace

TEST_CASE("synthetic: task names round-trip; unknown names list the valid ones") {
  for (const ld::Task task : ld::kAllTasks) CHECK(ld::parse_task(ld::task_name(task)) == task);
  CHECK(ld::task_name(ld::Task::multiplication) == "multiplication");
  CHECK_THROWS_WITH_AS(ld::parse_task("Addition"),
                       doctest::Contains("[loralab.data] unknown task 'Addition'; valid tasks: "
                                         "addition, copy, reversal, sorting, multiplication"),
                       loralab::Error);
}

TEST_CASE("synthetic: examples are a pure function of (task, seed, index)") {
  for (const ld::Task task : ld::kAllTasks) {
    CAPTURE(ld::task_name(task));
    int seed_differs = 0, index_differs = 0;
    for (std::uint64_t i = 0; i < 200; ++i) {
      const ld::Example e = ld::make_example(task, kSeed, i);
      CHECK(e == ld::make_example(task, kSeed, i));  // regenerated alone, same result
      seed_differs += !(e == ld::make_example(task, kSeed + 1, i));
      index_differs += !(e == ld::make_example(task, kSeed, i + 1000));
    }
    // Small tasks repeat by chance (e.g. "2+3=" in a 1-digit draw), but rarely.
    CHECK(seed_differs >= 170);
    CHECK(index_differs >= 170);
  }
  // The full 64-bit index is usable.
  const ld::Example far = ld::make_example(ld::Task::copy, kSeed, ~std::uint64_t{0});
  CHECK(far == ld::make_example(ld::Task::copy, kSeed, ~std::uint64_t{0}));
  CHECK_FALSE(far == ld::make_example(ld::Task::copy, kSeed, ~std::uint64_t{0} >> 1));
}

TEST_CASE("synthetic: answers are correct and sizes cover the option ranges") {
  const ld::TaskOptions defaults;
  ld::TaskOptions wide;
  wide.min_digits = 10;
  wide.max_digits = 18;
  wide.min_mul_digits = 7;
  wide.max_mul_digits = 9;
  wide.min_length = 1;
  wide.max_length = 30;
  for (const ld::TaskOptions& options : {defaults, wide}) {
    for (const ld::Task task : ld::kAllTasks) {
      CAPTURE(ld::task_name(task));
      const bool arithmetic = task == ld::Task::addition || task == ld::Task::multiplication;
      const int lo = task == ld::Task::addition         ? options.min_digits
                     : task == ld::Task::multiplication ? options.min_mul_digits
                                                        : options.min_length;
      const int hi = task == ld::Task::addition         ? options.max_digits
                     : task == ld::Task::multiplication ? options.max_mul_digits
                                                        : options.max_length;
      std::set<int> sizes;
      std::int64_t longest = 0;
      for (std::uint64_t i = 0; i < 3000; ++i) {
        const ld::Example e = ld::make_example(task, kSeed, i, options);
        for (const int size : verify(task, e)) {
          CHECK(size >= lo);
          CHECK(size <= hi);
          sizes.insert(size);
        }
        const auto tokens = static_cast<std::int64_t>(e.prompt.size() + e.answer.size() + 2);
        CHECK(tokens <= ld::max_example_tokens(task, options));
        longest = std::max(longest, tokens);
      }
      CHECK(sizes.size() == std::size_t(hi - lo + 1));  // every size occurs
      if (!arithmetic || options.max_digits < 10)       // long operands rarely hit the extreme
        CHECK(longest == ld::max_example_tokens(task, options));
    }
  }
}

TEST_CASE("synthetic: addition carries, and copy/reversal prompts never collide") {
  bool carry_out = false;
  for (std::uint64_t i = 0; i < 500 && !carry_out; ++i) {
    const ld::Example e = ld::make_example(ld::Task::addition, kSeed, i);
    const auto plus = e.prompt.find('+');
    carry_out = e.answer.size() > std::max(plus, e.prompt.size() - plus - 2);
  }
  CHECK(carry_out);
  std::set<std::string> copy_prompts, reversal_prompts;
  for (std::uint64_t i = 0; i < 300; ++i) {
    copy_prompts.insert(ld::make_example(ld::Task::copy, kSeed, i).prompt);
    reversal_prompts.insert(ld::make_example(ld::Task::reversal, kSeed, i).prompt);
  }
  for (const std::string& p : reversal_prompts) CHECK(copy_prompts.count(p) == 0);
}

TEST_CASE("synthetic: invalid options throw naming the fields") {
  ld::TaskOptions o;
  o.min_digits = 0;
  CHECK_THROWS_WITH_AS(ld::make_example(ld::Task::addition, kSeed, 0, o),
                       doctest::Contains("min_digits=0, max_digits=3"), loralab::Error);
  o = {};
  o.max_digits = 19;
  CHECK_THROWS_AS(ld::make_example(ld::Task::copy, kSeed, 0, o), loralab::Error);
  o = {};
  o.max_mul_digits = 10;
  CHECK_THROWS_WITH_AS(ld::max_example_tokens(ld::Task::multiplication, o),
                       doctest::Contains("max_mul_digits <= 9"), loralab::Error);
  o = {};
  o.min_length = 7;
  CHECK_THROWS_WITH_AS(ld::make_example(ld::Task::sorting, kSeed, 0, o),
                       doctest::Contains("min_length=7, max_length=6"), loralab::Error);
}

TEST_CASE("synthetic: mixture is round-robin by global index, so ranges are disjoint splits") {
  const std::vector<ld::Task> tasks = {ld::Task::addition, ld::Task::reversal,
                                       ld::Task::multiplication};
  const std::vector<ld::Example> a = ld::mixture(tasks, kSeed, 0, 100, {});
  const std::vector<ld::Example> b = ld::mixture(tasks, kSeed, 100, 50, {});
  const std::vector<ld::Example> all = ld::mixture(tasks, kSeed, 0, 150, {});
  REQUIRE(a.size() == 100);
  REQUIRE(all.size() == 150);
  for (std::size_t k = 0; k < 150; ++k) {
    const ld::Example& e = k < 100 ? a[k] : b[k - 100];
    CHECK(e == all[k]);  // a split is the same examples whichever call made them
    CHECK(e == ld::make_example(tasks[k % 3], kSeed, k));
    verify(tasks[k % 3], e);
  }
  CHECK(ld::mixture(tasks, kSeed, 7, 0, {}).empty());
  CHECK_THROWS_WITH_AS(ld::mixture(std::span<const ld::Task>{}, kSeed, 0, 1, {}),
                       doctest::Contains("[loralab.data] mixture needs at least one task"),
                       loralab::Error);
}

TEST_CASE("synthetic: make_batch layout, hand-checked") {
  const std::vector<ld::Example> examples = {{"1+2=", "3"}, {"ab|", "ab"}, {"x|", ""}};
  const ld::Batch batch = ld::make_batch(examples, 8);
  CHECK(batch.batch == 3);
  CHECK(batch.length == 8);
  const std::int32_t B = ld::kBos, E = ld::kEos, P = ld::kPad, I = ld::kIgnore;
  const std::vector<std::int32_t> tokens = {
      B, '1', '+', '2', '=', '3', E, P,  //
      B, 'a', 'b', '|', 'a', 'b', E, P,  //
      B, 'x', '|', E,   P,   P,   P, P,  //
  };
  const std::vector<std::int32_t> targets = {
      I, I, I, I,   '3', E, I, I,  // '=' predicts the answer, the answer predicts <eos>
      I, I, I, 'a', 'b', E, I, I,  //
      I, I, E, I,   I,   I, I, I,  // an empty answer still trains the <eos>
  };
  CHECK(batch.tokens == tokens);
  CHECK(batch.targets == targets);
  CHECK(batch.count_targets() == 2 + 3 + 1);
  CHECK(ld::decode(std::span(batch.tokens).subspan(0, 8)) == "<bos>1+2=3<eos><pad>");
}

TEST_CASE("synthetic: make_batch accepts an exact fit and rejects an overlong example") {
  const std::vector<ld::Example> examples = {{"ab|", "ab"}, {"12+34=", "46"}};
  CHECK_NOTHROW(ld::make_batch(examples, 10));  // 1 + 6 + 2 + 1
  CHECK_THROWS_WITH_AS(ld::make_batch(examples, 9),
                       doctest::Contains("[loralab.data] example 1 needs 10 tokens (<bos> + "
                                         "prompt 6 + answer 2 + <eos>) but the batch length is 9"),
                       loralab::Error);
  CHECK_THROWS_AS(ld::make_batch(std::span<const ld::Example>{}, 8), loralab::Error);
  CHECK_THROWS_AS(ld::make_batch(examples, 0), loralab::Error);
  // max_example_tokens is always enough for generated examples.
  for (const ld::Task task : ld::kAllTasks) {
    const std::vector<ld::Example> batch = ld::mixture(std::vector{task}, kSeed, 0, 64, {});
    const ld::Batch packed = ld::make_batch(batch, ld::max_example_tokens(task));
    for (std::size_t b = 0; b < batch.size(); ++b) {
      // The targets spell the answer then <eos>, wherever the prompt ends.
      std::vector<std::int32_t> want = ld::encode(batch[b].answer);
      want.push_back(ld::kEos);
      std::vector<std::int32_t> got;
      for (std::int64_t t = 0; t < packed.length; ++t) {
        const std::int32_t y = packed.targets[b * std::size_t(packed.length) + std::size_t(t)];
        if (y != ld::kIgnore) got.push_back(y);
      }
      CHECK(got == want);
    }
  }
}

TEST_CASE("synthetic: exact_match") {
  const std::vector<ld::Task> tasks(ld::kAllTasks.begin(), ld::kAllTasks.end());
  const std::vector<ld::Example> examples = ld::mixture(tasks, kSeed, 1000, 50, {});
  std::map<std::string, std::string> oracle;
  for (const ld::Example& e : examples) oracle[e.prompt] = e.answer;
  CHECK(ld::exact_match(examples, [&](const std::string& p) { return oracle.at(p); }) == 1.0);
  // What follows the first <eos> is ignored (a decode() with specials rendered).
  CHECK(ld::exact_match(examples, [&](const std::string& p) {
          return oracle.at(p) + "<eos>junk<eos>";
        }) == 1.0);
  CHECK(ld::exact_match(examples, [&](const std::string& p) { return oracle.at(p) + "0"; }) == 0.0);
  CHECK(ld::exact_match(examples, [](const std::string&) { return std::string(); }) == 0.0);

  const std::vector<ld::Example> four = {
      {"1+1=", "2"}, {"ab|", "ab"}, {"ab~", "ba"}, {"21|", "12"}};
  const auto half_right = [](const std::string& p) -> std::string {
    if (p == "1+1=") return "2<eos>";
    if (p == "ab|") return "ab";
    return "wrong";
  };
  CHECK(ld::exact_match(four, half_right) == 0.5);  // 2 of 4, exact in binary
  CHECK(ld::answer_before_eos("12<eos>3") == "12");
  CHECK(ld::answer_before_eos("12") == "12");
  CHECK_THROWS_AS(ld::exact_match(std::span<const ld::Example>{}, half_right), loralab::Error);
}
