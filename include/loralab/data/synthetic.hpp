/// \file
/// \brief A deterministic synthetic task suite (addition, copy, reversal, sorting,
/// multiplication), packing of examples into `<bos> prompt answer <eos>` rows with answer-only
/// targets, and exact-match evaluation.
///
/// Example `index` of a task under `seed` is a pure function of (task, seed, index): it is drawn
/// from Philox blocks whose counter is the index, so any example can be regenerated alone and
/// splits are disjoint by taking disjoint index ranges (e.g. train [0, 1e6), valid [1e9, 1e9 +
/// 1000)).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/data/tokenizer.hpp"

namespace loralab::data {

/// \ingroup data
/// \brief The synthetic tasks. Each has its own operator or delimiter, so a mixture never holds
/// two tasks with the same prompt.
enum class Task : std::uint8_t {
  addition,        ///< "123+45=" -> "168": operands of TaskOptions::min_digits..max_digits digits
  copy,            ///< "abc|" -> "abc": lowercase letters
  reversal,        ///< "abc~" -> "cba": lowercase letters ('~', not '|', so it differs from copy)
  sorting,         ///< "3141|" -> "1134": decimal digits sorted ascending
  multiplication,  ///< "12*34=" -> "408": operands of min_mul_digits..max_mul_digits digits
};

/// \ingroup data
/// \brief Every task, in declaration order.
inline constexpr std::array<Task, 5> kAllTasks = {Task::addition, Task::copy, Task::reversal,
                                                  Task::sorting, Task::multiplication};

/// \ingroup data
/// \brief The lowercase name of `task`: "addition", "copy", "reversal", "sorting",
/// "multiplication".
inline std::string task_name(Task task) {
  switch (task) {
    case Task::addition:
      return "addition";
    case Task::copy:
      return "copy";
    case Task::reversal:
      return "reversal";
    case Task::sorting:
      return "sorting";
    case Task::multiplication:
      return "multiplication";
  }
  LORALAB_FAIL("[loralab.data] unknown task value ", static_cast<int>(task));
}

/// \ingroup data
/// \brief The task named `name` (as task_name spells it).
/// \param name a task name, case-sensitive.
/// \throws loralab::Error `[loralab.data]` naming `name` and listing the valid names.
inline Task parse_task(std::string_view name) {
  for (const Task task : kAllTasks)
    if (name == task_name(task)) return task;
  std::string valid;
  for (const Task task : kAllTasks) {
    if (!valid.empty()) valid += ", ";
    valid += task_name(task);
  }
  LORALAB_FAIL("[loralab.data] unknown task '", name, "'; valid tasks: ", valid);
}

/// \ingroup data
/// \brief Sizes of the generated examples. Each count is drawn uniformly from its [min, max]
/// range, so short and long examples are equally frequent.
struct TaskOptions {
  int min_digits = 1;      ///< addition: fewest digits of an operand
  int max_digits = 3;      ///< addition: most digits of an operand (<= 18, the sum fits 64 bits)
  int min_mul_digits = 1;  ///< multiplication: fewest digits of an operand
  int max_mul_digits = 2;  ///< multiplication: most digits of an operand (<= 9, for 64 bits)
  int min_length = 2;      ///< copy, reversal, sorting: shortest string
  int max_length = 6;      ///< copy, reversal, sorting: longest string (<= 4096)
};

/// \ingroup data
/// \brief Checks that every range of `options` is non-empty and within its bound.
/// \throws loralab::Error `[loralab.data]` naming the field pair and its values.
inline void validate(const TaskOptions& options) {
  const TaskOptions& o = options;
  LORALAB_CHECK(1 <= o.min_digits && o.min_digits <= o.max_digits && o.max_digits <= 18,
                "[loralab.data] TaskOptions needs 1 <= min_digits <= max_digits <= 18, got "
                "min_digits=",
                o.min_digits, ", max_digits=", o.max_digits);
  LORALAB_CHECK(
      1 <= o.min_mul_digits && o.min_mul_digits <= o.max_mul_digits && o.max_mul_digits <= 9,
      "[loralab.data] TaskOptions needs 1 <= min_mul_digits <= max_mul_digits <= 9, got "
      "min_mul_digits=",
      o.min_mul_digits, ", max_mul_digits=", o.max_mul_digits);
  LORALAB_CHECK(1 <= o.min_length && o.min_length <= o.max_length && o.max_length <= 4096,
                "[loralab.data] TaskOptions needs 1 <= min_length <= max_length <= 4096, got "
                "min_length=",
                o.min_length, ", max_length=", o.max_length);
}

/// \ingroup data
/// \brief One example: the model reads `prompt` and must produce `answer`, then `<eos>`.
struct Example {
  std::string prompt;  ///< e.g. "123+45="
  std::string answer;  ///< e.g. "168"
  /// \brief Field-wise equality.
  bool operator==(const Example&) const = default;
};

namespace detail {
// The 32-bit words of example `index`: draw j is word j % 4 of block `index` of stream
// (example tag, task, j / 4). The index sits in the counter, so all 64 bits of it are usable.
class ExampleDraws {
 public:
  ExampleDraws(Task task, std::uint64_t seed, std::uint64_t index)
      : seed_(seed), index_(index), task_bits_(static_cast<std::uint64_t>(task) << 48) {}

  // Uniform in [0, n) for small n: the modulo bias, at most n / 2^32, is negligible.
  std::uint32_t below(std::uint32_t n) { return next() % n; }
  int between(int lo, int hi) { return lo + static_cast<int>(below(std::uint32_t(hi - lo + 1))); }

 private:
  std::uint32_t next() {
    if (used_ % 4 == 0)
      block_ =
          philox_block(seed_, data_stream(DataStream::example, task_bits_ | (used_ / 4)), index_);
    return block_.v[used_++ % 4];
  }

  std::uint64_t seed_, index_, task_bits_;
  std::uint64_t used_ = 0;
  Philox4x32Block block_{};
};

// A number of `digits` digits (no leading zero unless it is 0 itself), as text and value.
inline std::pair<std::string, std::uint64_t> draw_number(ExampleDraws& draws, int digits) {
  std::string text;
  std::uint64_t value = 0;
  for (int i = 0; i < digits; ++i) {
    const std::uint32_t d = (i == 0 && digits > 1) ? 1 + draws.below(9) : draws.below(10);
    text.push_back(static_cast<char>('0' + d));
    value = value * 10 + d;
  }
  return {text, value};
}

inline std::string draw_string(ExampleDraws& draws, const TaskOptions& o, char first, int size) {
  const int n = draws.between(o.min_length, o.max_length);
  std::string s(static_cast<std::size_t>(n), ' ');
  for (char& c : s)
    c = static_cast<char>(first + static_cast<int>(draws.below(std::uint32_t(size))));
  return s;
}
}  // namespace detail

/// \ingroup data
/// \brief Example `index` of `task` under `seed`: a pure function of (task, seed, index,
/// options), so train/valid/test splits are disjoint index ranges.
/// \param task which task. \param seed the data seed. \param index any 64-bit index.
/// \param options example sizes.
/// \throws loralab::Error `[loralab.data]` when `options` is invalid (see validate).
inline Example make_example(Task task, std::uint64_t seed, std::uint64_t index,
                            const TaskOptions& options = {}) {
  validate(options);
  detail::ExampleDraws draws(task, seed, index);
  switch (task) {
    case Task::addition:
    case Task::multiplication: {
      const bool add = task == Task::addition;
      const int lo = add ? options.min_digits : options.min_mul_digits;
      const int hi = add ? options.max_digits : options.max_mul_digits;
      const auto [a, x] = detail::draw_number(draws, draws.between(lo, hi));
      const auto [b, y] = detail::draw_number(draws, draws.between(lo, hi));
      return {a + (add ? "+" : "*") + b + "=", std::to_string(add ? x + y : x * y)};
    }
    case Task::copy: {
      std::string s = detail::draw_string(draws, options, 'a', 26);
      return {s + "|", s};
    }
    case Task::reversal: {
      std::string s = detail::draw_string(draws, options, 'a', 26);
      return {s + "~", std::string(s.rbegin(), s.rend())};
    }
    case Task::sorting: {
      std::string s = detail::draw_string(draws, options, '0', 10);
      std::array<int, 10> counts{};  // counting sort: digits only
      for (const char c : s) ++counts[static_cast<std::size_t>(c - '0')];
      std::string sorted;
      for (int d = 0; d < 10; ++d)
        sorted.append(static_cast<std::size_t>(counts[d]), char('0' + d));
      return {s + "|", sorted};
    }
  }
  LORALAB_FAIL("[loralab.data] unknown task value ", static_cast<int>(task));
}

/// \ingroup data
/// \brief The most tokens one packed example of `task` can need (`<bos>`, longest prompt,
/// longest answer, `<eos>`): a row length for make_batch that always fits.
/// \throws loralab::Error `[loralab.data]` when `options` is invalid.
inline std::int64_t max_example_tokens(Task task, const TaskOptions& options = {}) {
  validate(options);
  switch (task) {
    case Task::addition:  // "a+b=" and a sum of up to max_digits + 1 digits
      return 2 + (2 * options.max_digits + 2) + (options.max_digits + 1);
    case Task::multiplication:  // "a*b=" and a product of up to 2 * max_mul_digits digits
      return 2 + (2 * options.max_mul_digits + 2) + 2 * options.max_mul_digits;
    case Task::copy:
    case Task::reversal:
    case Task::sorting:  // the string, a delimiter, the string again
      return 2 + (options.max_length + 1) + options.max_length;
  }
  LORALAB_FAIL("[loralab.data] unknown task value ", static_cast<int>(task));
}

/// \ingroup data
/// \brief `count` examples with indices first_index, first_index + 1, ...: example i is
/// make_example(tasks[i % tasks.size()], seed, i, options). Round-robin keeps every batch of
/// consecutive indices balanced across tasks and each example a pure function of its index.
/// \param tasks the tasks to mix, at least one (a task may repeat to weight it).
/// \param seed the data seed. \param first_index index of the first example.
/// \param count number of examples. \param options example sizes.
/// \throws loralab::Error `[loralab.data]` when `tasks` is empty or `options` is invalid.
inline std::vector<Example> mixture(std::span<const Task> tasks, std::uint64_t seed,
                                    std::uint64_t first_index, std::size_t count,
                                    const TaskOptions& options = {}) {
  LORALAB_CHECK(!tasks.empty(), "[loralab.data] mixture needs at least one task");
  std::vector<Example> out;
  out.reserve(count);
  for (std::size_t k = 0; k < count; ++k) {
    const std::uint64_t index = first_index + k;
    out.push_back(make_example(tasks[index % tasks.size()], seed, index, options));
  }
  return out;
}

/// \ingroup data
/// \brief Packs `examples` into rows `<bos> prompt answer <eos>` padded with kPad. The target of
/// position t is token t + 1 where that token is an answer byte or the `<eos>`, kIgnore elsewhere
/// (prompt, padding), so the loss trains answers only. E.g. "1+2=" / "3" at length 8:
/// tokens `<bos> 1 + 2 = 3 <eos> <pad>`; the targets are kIgnore except at `=` (target: the
/// byte `3`) and at `3` (target: `<eos>`).
/// \param examples one per row, at least one.
/// \param length tokens per row, >= 1.
/// \throws loralab::Error `[loralab.data]` naming the first example that needs more than
/// `length` tokens, or when `examples` is empty.
inline Batch make_batch(std::span<const Example> examples, std::int64_t length) {
  LORALAB_CHECK(!examples.empty(), "[loralab.data] make_batch needs at least one example");
  LORALAB_CHECK(length >= 1, "[loralab.data] make_batch needs length >= 1, got ", length);
  Batch out;
  out.batch = static_cast<std::int64_t>(examples.size());
  out.length = length;
  out.tokens.assign(static_cast<std::size_t>(out.batch * length), kPad);
  out.targets.assign(out.tokens.size(), kIgnore);
  for (std::size_t b = 0; b < examples.size(); ++b) {
    const Example& e = examples[b];
    const auto p = static_cast<std::int64_t>(e.prompt.size());
    const auto a = static_cast<std::int64_t>(e.answer.size());
    LORALAB_CHECK(p + a + 2 <= length, "[loralab.data] example ", b, " needs ", p + a + 2,
                  " tokens (<bos> + prompt ", p, " + answer ", a,
                  " + <eos>) but the batch length is ", length, "; prompt '", e.prompt, "'");
    std::int32_t* row = out.tokens.data() + static_cast<std::int64_t>(b) * length;
    std::int32_t* tgt = out.targets.data() + static_cast<std::int64_t>(b) * length;
    row[0] = kBos;
    const std::vector<std::int32_t> prompt = encode(e.prompt), answer = encode(e.answer);
    for (std::int64_t i = 0; i < p; ++i) row[1 + i] = prompt[static_cast<std::size_t>(i)];
    for (std::int64_t i = 0; i < a; ++i) row[1 + p + i] = answer[static_cast<std::size_t>(i)];
    row[1 + p + a] = kEos;
    // Positions p .. p + a read the last prompt byte .. the last answer byte and predict the
    // answer bytes and then <eos>.
    for (std::int64_t t = p; t <= p + a; ++t) tgt[t] = row[t + 1];
  }
  return out;
}

/// \ingroup data
/// \brief The part of a generated text before the first `<eos>` (as decode renders kEos), or all
/// of it when there is none.
inline std::string_view answer_before_eos(std::string_view generated) {
  return generated.substr(0, generated.find("<eos>"));
}

/// \ingroup data
/// \brief Fraction of `examples` whose generated answer equals the expected answer exactly.
/// \param examples the evaluation set, at least one.
/// \param generate maps a prompt to the model's continuation: either the bytes before `<eos>`,
/// or a decode() of the generated tokens with specials rendered (cut at the first `<eos>` here).
/// \throws loralab::Error `[loralab.data]` when `examples` is empty.
inline double exact_match(std::span<const Example> examples,
                          const std::function<std::string(const std::string& prompt)>& generate) {
  LORALAB_CHECK(!examples.empty(), "[loralab.data] exact_match needs at least one example");
  std::size_t hits = 0;
  for (const Example& e : examples) {
    const std::string generated = generate(e.prompt);
    hits += answer_before_eos(generated) == e.answer;
  }
  return static_cast<double>(hits) / static_cast<double>(examples.size());
}

}  // namespace loralab::data
