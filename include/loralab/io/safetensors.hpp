/// \file
/// \brief Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
/// `SafetensorsFile` loads and validates a file, `SafetensorsWriter` builds one and writes it
/// atomically. The definitions live in `safetensors_impl.hpp`, included at the end.
///
/// Layout: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON header, then the data section.
/// The header maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`
/// (offsets relative to the data section) plus an optional `"__metadata__"` object of strings.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "loralab/core/error.hpp"

namespace loralab::io {

// Tensors are copied to and from the file with memcpy; a big-endian host would need byte swaps.
static_assert(std::endian::native == std::endian::little,
              "loralab::io reads and writes safetensors (little-endian) by memcpy, so it needs a "
              "little-endian host");

/// \ingroup io
/// \brief Element types loralab reads and writes; the names match the safetensors dtype strings.
enum class DType { F32, F64, BF16, F16, I64 };

/// \ingroup io
/// \brief Bytes per element of `dtype`: 4, 8, 2, 2, 8.
constexpr std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 4;
    case DType::F64:
      return 8;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
    case DType::I64:
      return 8;
  }
  return 0;  // unreachable for a valid enumerator
}

/// \ingroup io
/// \brief The safetensors spelling of `dtype`: "F32", "F64", "BF16", "F16", "I64".
constexpr std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I64:
      return "I64";
  }
  return "?";
}

namespace detail {
template <class T>
inline constexpr bool dependent_false = false;
template <class T>
constexpr DType unsupported_dtype() {
  static_assert(dependent_false<T>, "loralab::io::dtype_of<T>: T must be float, double or int64_t");
  return DType::F32;
}
}  // namespace detail

/// \ingroup io
/// \brief The natural dtype of a C++ element type: float -> F32, double -> F64, std::int64_t ->
/// I64. Any other type fails to compile.
template <class T>
inline constexpr DType dtype_of = detail::unsupported_dtype<T>();
/// \cond INTERNAL
template <>
inline constexpr DType dtype_of<float> = DType::F32;
template <>
inline constexpr DType dtype_of<double> = DType::F64;
template <>
inline constexpr DType dtype_of<std::int64_t> = DType::I64;
/// \endcond

/// \ingroup io
/// \brief One tensor's header entry: element type, shape, and its byte range [begin, end) in the
/// data section.
struct TensorInfo {
  DType dtype;                      ///< element type as stored
  std::vector<std::int64_t> shape;  ///< row-major dims; empty for a scalar
  std::uint64_t begin = 0;          ///< first byte, relative to the data section
  std::uint64_t end = 0;            ///< one past the last byte

  /// \brief Number of elements: the product of `shape` (1 for a scalar, 0 if a dim is 0).
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    return n;
  }
};

/// \ingroup io
/// \brief A safetensors file held in memory and fully validated on construction, so every
/// accessor afterwards is cheap and only fails on a wrong name, dtype or shape.
///
/// Every error is a loralab::Error whose message starts with `[loralab.io]` and names the file
/// (or `<memory>`) and the offending values. Gaps between tensors in the data section and trailing
/// bytes are accepted (other writers may align tensors); overlapping tensors are not.
class SafetensorsFile {
 public:
  /// \brief Reads the whole file at `path` and validates it (see parse()).
  /// \throws loralab::Error if the file cannot be read or is not a valid safetensors file.
  static SafetensorsFile load(const std::filesystem::path& path);

  /// \brief Validates `bytes` as a safetensors file and takes ownership of them. `source` names
  /// the bytes in error messages.
  /// \throws loralab::Error on a short file, a header length that is absurd (> 100 MB) or larger
  /// than the bytes that follow, a header that is not a JSON object, a duplicate key, an entry
  /// with missing or mistyped fields, an unknown dtype, a negative dim, a byte size that
  /// overflows, data_offsets that are reversed, out of range, of the wrong length or overlapping,
  /// and `__metadata__` values that are not strings.
  static SafetensorsFile parse(std::vector<std::byte> bytes, std::string source = "<memory>");

  /// \brief Whether a tensor named `name` is present.
  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

  /// \brief The tensor names, sorted.
  std::vector<std::string> names() const;

  /// \brief The header entry of `name`.
  /// \throws loralab::Error naming the missing tensor, the file and up to 10 names present.
  const TensorInfo& info(std::string_view name) const;

  /// \brief The stored bytes of `name`, as in the file (little-endian, dtype info(name).dtype).
  /// \throws loralab::Error if `name` is missing.
  std::span<const std::byte> raw(std::string_view name) const;

  /// \brief The elements of `name`, row-major, converted to T. T = float or double reads F32,
  /// F64, BF16 and F16 (F64 -> float rounds to nearest); T = std::int64_t reads only I64.
  /// \throws loralab::Error if `name` is missing or its dtype cannot be read as T (both named).
  template <class T>
  std::vector<T> read(std::string_view name) const;

  /// \brief read(name), after checking that the tensor's shape is `expected_shape`.
  /// \throws loralab::Error as read(name), or if the shapes differ (both shapes named).
  template <class T>
  std::vector<T> read(std::string_view name, const std::vector<std::int64_t>& expected_shape) const;

  /// \brief The `__metadata__` entries (empty if the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// \brief The path the file was loaded from, or the `source` given to parse().
  const std::string& source() const { return source_; }

 private:
  SafetensorsFile() = default;

  std::vector<std::byte> bytes_;  // the whole file
  std::size_t data_start_ = 0;    // 8 + N: where the data section begins in bytes_
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string source_;
};

/// \ingroup io
/// \brief Collects tensors and metadata, then serializes them as safetensors: the header padded
/// with spaces to a multiple of 8 bytes, tensors in name order, contiguous, with no gaps.
class SafetensorsWriter {
 public:
  /// \brief Adds tensor `name` with `shape` and row-major `data`, stored as `stored`. T = float or
  /// double may be stored as F32, F64, BF16 or F16 (rounded to nearest, ties to even, once, even
  /// from double); T = std::int64_t is stored as I64 only. The data is copied.
  /// \throws loralab::Error if `data.size()` differs from the product of `shape` (both named), a
  /// dim is negative, `name` is already present or is `__metadata__`, or `stored` does not fit T.
  template <class T>
  void add(std::string name, std::vector<std::int64_t> shape, std::span<const T> data,
           DType stored = dtype_of<T>);

  /// \brief Adds tensor `name` from bytes already in the file layout (little-endian `dtype`).
  /// \throws loralab::Error if `bytes.size()` is not numel(shape) * dtype_size(dtype), a dim is
  /// negative, or `name` is already present or is `__metadata__`.
  void add_raw(std::string name, DType dtype, std::vector<std::int64_t> shape,
               std::span<const std::byte> bytes);

  /// \brief Sets `__metadata__[key] = value` (replacing an earlier value of `key`).
  void set_metadata(std::string key, std::string value) {
    metadata_.insert_or_assign(std::move(key), std::move(value));
  }

  /// \brief The complete file as bytes.
  /// \throws loralab::Error if a name or metadata string is not valid UTF-8.
  std::vector<std::byte> serialize() const;

  /// \brief Writes the file atomically: to `<path>.tmp.<pid>` in the same directory, flushed and
  /// checked, then renamed over `path`. On any failure the temporary file is removed and `path`
  /// is left as it was. (No fsync: atomic against failures and concurrent readers, not against a
  /// power loss.)
  /// \throws loralab::Error if serializing, creating, writing or renaming fails.
  void write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes;
  };
  void insert(std::string name, DType dtype, std::vector<std::int64_t> shape,
              std::vector<std::byte> bytes);

  std::map<std::string, Entry> tensors_;  // sorted: the data section is laid out in name order
  std::map<std::string, std::string> metadata_;
};

}  // namespace loralab::io

#include "loralab/io/safetensors_impl.hpp"
