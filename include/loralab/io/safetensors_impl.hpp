/// \file
/// \brief Definitions for `loralab/io/safetensors.hpp` (included at its end; include that one).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <process.h>
#else
#include <unistd.h>
#endif

#include "loralab/core/error.hpp"
#include "loralab/io/safetensors.hpp"

namespace loralab::io {
namespace detail {

/// Same cap as the reference implementation: a larger header length means a corrupt file, and
/// refusing it early avoids a huge allocation.
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

/// Error-message context for tensors being added to a writer (there is no file yet).
inline constexpr std::string_view kMemory = "<memory>";

template <class T>
inline constexpr bool is_io_scalar =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>;

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

inline std::optional<DType> dtype_from_name(std::string_view s) {
  for (DType d : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64})
    if (dtype_name(d) == s) return d;
  return std::nullopt;
}

/// Bytes of a tensor with non-negative dims `shape`, or nullopt when numel or the byte count
/// exceeds int64. Zero dims are skipped in the product so that TensorInfo::numel(), which
/// multiplies left to right, can never overflow on a validated shape such as [2^62, 2^62, 0].
inline std::optional<std::uint64_t> byte_size(const std::vector<std::int64_t>& shape, DType dtype) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t nonzero = 1;
  bool empty = false;
  for (std::int64_t d : shape) {
    if (d == 0) {
      empty = true;
      continue;
    }
    const auto u = static_cast<std::uint64_t>(d);
    if (nonzero > kMax / u) return std::nullopt;
    nonzero *= u;
  }
  if (empty) return 0;
  if (nonzero > kMax / dtype_size(dtype)) return std::nullopt;
  return nonzero * dtype_size(dtype);
}

/// Checks a shape given to the writer and returns its element count.
inline std::size_t writer_numel(const std::string& name, const std::vector<std::int64_t>& shape,
                                DType dtype) {
  for (std::int64_t d : shape)
    LORALAB_CHECK(d >= 0, "[loralab.io] ", kMemory, ": cannot add tensor '", name,
                  "': negative dimension ", d, " in shape ", shape_string(shape));
  const std::optional<std::uint64_t> bytes = byte_size(shape, dtype);
  LORALAB_CHECK(bytes.has_value(), "[loralab.io] ", kMemory, ": cannot add tensor '", name,
                "': shape ", shape_string(shape), " with dtype ", dtype_name(dtype),
                " overflows a 64-bit byte count");
  return static_cast<std::size_t>(*bytes / dtype_size(dtype));
}

/// Rounds d to Low (Eigen::bfloat16 or Eigen::half) to nearest, ties to even, once. Going through
/// float rounds twice, which is wrong when the float lands exactly on a tie of Low while d does
/// not: d lies strictly between f = float(d) and its float neighbour g towards d, at most one of
/// them is a tie, and the one that is not rounds like d. So take whichever result is nearer d
/// (the differences are exact: d and both candidates are within a factor of two of each other).
template <class Low>
Low round_from_double(double d) {
  const float f = static_cast<float>(d);
  if (std::isnan(d) || static_cast<double>(f) == d) return Low(f);
  const float g =
      std::nextafter(f, d > static_cast<double>(f) ? std::numeric_limits<float>::infinity()
                                                   : -std::numeric_limits<float>::infinity());
  const Low a(f), b(g);
  const double ea = std::abs(d - static_cast<double>(static_cast<float>(a)));
  const double eb = std::abs(d - static_cast<double>(static_cast<float>(b)));
  return eb < ea ? b : a;
}

/// Converts one value to the stored type.
template <class Stored, class T>
Stored narrow(T x) {
  if constexpr (!std::is_same_v<Stored, Eigen::bfloat16> && !std::is_same_v<Stored, Eigen::half>) {
    return static_cast<Stored>(x);  // same type, or float <-> double (rounds to nearest even)
  } else if constexpr (std::is_same_v<T, double>) {
    return round_from_double<Stored>(x);
  } else {
    return Stored(x);  // Eigen's float -> bfloat16/half rounds to nearest even
  }
}

template <class Stored, class T>
void encode(std::span<const T> data, std::byte* out) {
  static_assert(std::is_trivially_copyable_v<Stored>);
  for (std::size_t i = 0; i < data.size(); ++i) {
    const Stored s = narrow<Stored>(data[i]);
    std::memcpy(out + i * sizeof(Stored), &s, sizeof(Stored));
  }
}

template <class Stored, class T>
void decode(const std::byte* in, std::vector<T>& out) {
  static_assert(std::is_trivially_copyable_v<Stored>);
  for (std::size_t i = 0; i < out.size(); ++i) {
    Stored s;
    std::memcpy(&s, in + i * sizeof(Stored), sizeof(Stored));
    // bfloat16/half -> float is exact; F64 -> float rounds to nearest.
    if constexpr (std::is_same_v<Stored, Eigen::bfloat16> || std::is_same_v<Stored, Eigen::half>)
      out[i] = static_cast<T>(static_cast<float>(s));
    else
      out[i] = static_cast<T>(s);
  }
}

/// A JSON value for an error message, cut short so a corrupt header cannot flood the message.
inline std::string excerpt(const nlohmann::json& j) {
  constexpr std::size_t kMaxChars = 80;
  std::string s = j.dump();
  if (s.size() > kMaxChars) s.replace(kMaxChars, std::string::npos, "...");
  return s;
}

/// Parses the header, detecting duplicate keys at any depth (nlohmann::json would silently keep
/// the last one, and a duplicate tensor name makes a file ambiguous).
inline nlohmann::json parse_header(std::string_view text, const std::string& source) {
  using Json = nlohmann::json;
  std::vector<std::set<std::string>> keys;  // keys seen in each enclosing object
  std::optional<std::string> duplicate;
  const Json::parser_callback_t callback = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == Json::parse_event_t::key && !keys.empty() && !duplicate) {
      std::string key = parsed.get<std::string>();
      if (!keys.back().insert(key).second) duplicate = std::move(key);
    }
    return true;
  };
  Json header;
  try {
    header = Json::parse(text.begin(), text.end(), callback);
  } catch (const Json::exception& e) {
    LORALAB_FAIL("[loralab.io] ", source, ": header is not valid JSON: ", e.what());
  }
  LORALAB_CHECK(!duplicate, "[loralab.io] ", source, ": duplicate key '", duplicate.value_or(""),
                "' in the header");
  return header;
}

/// Validates one tensor entry of the header against a data section of `data_size` bytes.
inline TensorInfo parse_entry(const std::string& name, const nlohmann::json& j,
                              std::uint64_t data_size, const std::string& source) {
  constexpr auto kMaxDim = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  LORALAB_CHECK(j.is_object(), "[loralab.io] ", source, ": tensor '", name,
                "' entry must be a JSON object, not ", j.type_name());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    LORALAB_CHECK(j.contains(field), "[loralab.io] ", source, ": tensor '", name, "' is missing '",
                  field, "'");
  TensorInfo info{};

  const nlohmann::json& jd = j.at("dtype");
  LORALAB_CHECK(jd.is_string(), "[loralab.io] ", source, ": tensor '", name,
                "' field 'dtype' must be a string, not ", excerpt(jd));
  const std::optional<DType> dtype = dtype_from_name(jd.get_ref<const std::string&>());
  LORALAB_CHECK(dtype.has_value(), "[loralab.io] ", source, ": tensor '", name,
                "' has unknown dtype '", jd.get_ref<const std::string&>(),
                "' (supported: F32, F64, BF16, F16, I64)");
  info.dtype = *dtype;

  const nlohmann::json& js = j.at("shape");
  const bool ints = js.is_array() && std::all_of(js.begin(), js.end(), [](const auto& x) {
                      return x.is_number_integer();
                    });
  LORALAB_CHECK(ints, "[loralab.io] ", source, ": tensor '", name,
                "' field 'shape' must be an array of integers, not ", excerpt(js));
  for (const nlohmann::json& x : js) {
    // nlohmann stores non-negative integers as unsigned, negative ones as signed.
    if (x.is_number_unsigned()) {
      LORALAB_CHECK(x.get<std::uint64_t>() <= kMaxDim, "[loralab.io] ", source, ": tensor '", name,
                    "' shape ", excerpt(js), " overflows int64");
      info.shape.push_back(static_cast<std::int64_t>(x.get<std::uint64_t>()));
    } else {
      LORALAB_FAIL("[loralab.io] ", source, ": tensor '", name, "' has negative dimension ",
                   x.get<std::int64_t>(), " in shape ", excerpt(js));
    }
  }
  const std::optional<std::uint64_t> bytes = byte_size(info.shape, info.dtype);
  LORALAB_CHECK(bytes.has_value(), "[loralab.io] ", source, ": tensor '", name, "' shape ",
                shape_string(info.shape), " with dtype ", dtype_name(info.dtype),
                " overflows a 64-bit byte count");

  const nlohmann::json& jo = j.at("data_offsets");
  const bool pair =
      jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() && jo[1].is_number_unsigned();
  LORALAB_CHECK(pair, "[loralab.io] ", source, ": tensor '", name,
                "' field 'data_offsets' must be [begin, end] with non-negative integers, not ",
                excerpt(jo));
  info.begin = jo[0].get<std::uint64_t>();
  info.end = jo[1].get<std::uint64_t>();
  LORALAB_CHECK(info.begin <= info.end, "[loralab.io] ", source, ": tensor '", name,
                "' data_offsets [", info.begin, ", ", info.end, ") have begin > end");
  LORALAB_CHECK(info.end <= data_size, "[loralab.io] ", source, ": tensor '", name,
                "' data_offsets [", info.begin, ", ", info.end, ") exceed the ", data_size,
                "-byte data section");
  LORALAB_CHECK(info.end - info.begin == *bytes, "[loralab.io] ", source, ": tensor '", name,
                "' data_offsets [", info.begin, ", ", info.end, ") span ", info.end - info.begin,
                " bytes but dtype ", dtype_name(info.dtype), " with shape ",
                shape_string(info.shape), " needs ", *bytes);
  return info;
}

inline std::map<std::string, std::string> parse_metadata(const nlohmann::json& j,
                                                         const std::string& source) {
  LORALAB_CHECK(j.is_object(), "[loralab.io] ", source,
                ": '__metadata__' must be an object of strings, not ", j.type_name());
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : j.items()) {
    LORALAB_CHECK(value.is_string(), "[loralab.io] ", source, ": '__metadata__' value for key '",
                  key, "' is not a string but ", excerpt(value));
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

/// Where write() puts the bytes before renaming: next to the target, so the rename stays within
/// one filesystem and is atomic.
inline std::filesystem::path temp_path_for(const std::filesystem::path& path) {
#if defined(_WIN32)
  const auto pid = _getpid();
#else
  const auto pid = ::getpid();
#endif
  std::filesystem::path tmp = path;
  tmp += ".tmp." + std::to_string(pid);
  return tmp;
}

}  // namespace detail

// ---- SafetensorsFile -----------------------------------------------------------------------

inline SafetensorsFile SafetensorsFile::load(const std::filesystem::path& path) {
  const std::string src = path.string();
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  LORALAB_CHECK(std::filesystem::exists(st), "[loralab.io] ", src, ": cannot open: no such file");
  LORALAB_CHECK(std::filesystem::is_regular_file(st), "[loralab.io] ", src,
                ": cannot open: not a regular file");
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  LORALAB_CHECK(!ec, "[loralab.io] ", src, ": cannot open: ", ec.message());
  std::ifstream in(path, std::ios::binary);
  LORALAB_CHECK(in.is_open(), "[loralab.io] ", src, ": cannot open for reading");
  std::vector<std::byte> bytes(static_cast<std::size_t>(size));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  LORALAB_CHECK(static_cast<std::uintmax_t>(in.gcount()) == size, "[loralab.io] ", src,
                ": read only ", in.gcount(), " of ", size, " bytes");
  return parse(std::move(bytes), src);
}

inline SafetensorsFile SafetensorsFile::parse(std::vector<std::byte> bytes, std::string source) {
  SafetensorsFile file;
  file.source_ = std::move(source);
  const std::string& src = file.source_;
  LORALAB_CHECK(bytes.size() >= 8, "[loralab.io] ", src, ": file is ", bytes.size(),
                " bytes, shorter than the 8-byte header length prefix");
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  LORALAB_CHECK(n <= detail::kMaxHeaderBytes, "[loralab.io] ", src, ": header length ", n,
                " is over the ", detail::kMaxHeaderBytes, "-byte limit (corrupt file?)");
  const std::uint64_t after = bytes.size() - 8;
  LORALAB_CHECK(n <= after, "[loralab.io] ", src, ": header length ", n, " exceeds the ", after,
                " bytes that follow the length prefix (truncated or corrupt file)");

  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, n);
  const nlohmann::json header = detail::parse_header(text, src);
  LORALAB_CHECK(header.is_object(), "[loralab.io] ", src, ": header is not a JSON object but ",
                header.type_name());

  file.data_start_ = static_cast<std::size_t>(8 + n);
  const std::uint64_t data_size = bytes.size() - file.data_start_;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__")
      file.metadata_ = detail::parse_metadata(value, src);
    else
      file.tensors_.emplace(key, detail::parse_entry(key, value, data_size, src));
  }

  // Sorted by begin, each non-empty tensor must start at or after the previous one's end.
  std::vector<std::pair<const std::string*, const TensorInfo*>> order;
  for (const auto& [name, ti] : file.tensors_)
    if (ti.end > ti.begin) order.emplace_back(&name, &ti);
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (std::size_t i = 1; i < order.size(); ++i) {
    const auto& [pn, p] = order[i - 1];
    const auto& [qn, q] = order[i];
    LORALAB_CHECK(q->begin >= p->end, "[loralab.io] ", src, ": tensors '", *pn, "' [", p->begin,
                  ", ", p->end, ") and '", *qn, "' [", q->begin, ", ", q->end,
                  ") overlap in the data section");
  }
  file.bytes_ = std::move(bytes);
  return file;
}

inline std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& entry : tensors_) out.push_back(entry.first);
  return out;
}

inline const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const auto it = tensors_.find(name);
  if (it != tensors_.end()) return it->second;
  constexpr std::size_t kListed = 10;
  std::ostringstream present;
  std::size_t k = 0;
  for (const auto& entry : tensors_) {
    if (k == kListed) {
      present << ", ... (" << tensors_.size() - kListed << " more)";
      break;
    }
    present << (k++ ? ", '" : "'") << entry.first << "'";
  }
  LORALAB_FAIL("[loralab.io] ", source_, ": no tensor named '", name, "'; the file has ",
               tensors_.size(), " tensor(s)", tensors_.empty() ? "" : ": ", present.str());
}

inline std::span<const std::byte> SafetensorsFile::raw(std::string_view name) const {
  const TensorInfo& ti = info(name);
  return {bytes_.data() + data_start_ + ti.begin, static_cast<std::size_t>(ti.end - ti.begin)};
}

template <class T>
std::vector<T> SafetensorsFile::read(std::string_view name) const {
  static_assert(detail::is_io_scalar<T>,
                "SafetensorsFile::read<T>: T must be float, double or std::int64_t");
  const TensorInfo& ti = info(name);
  const std::byte* p = bytes_.data() + data_start_ + ti.begin;
  std::vector<T> out(static_cast<std::size_t>(ti.numel()));
  const bool readable =
      std::is_same_v<T, std::int64_t> ? ti.dtype == DType::I64 : ti.dtype != DType::I64;
  LORALAB_CHECK(readable, "[loralab.io] ", source_, ": tensor '", name, "' has dtype ",
                dtype_name(ti.dtype), " and cannot be read as ", dtype_name(dtype_of<T>));
  if constexpr (std::is_same_v<T, std::int64_t>) {
    detail::decode<std::int64_t>(p, out);
  } else {
    switch (ti.dtype) {
      case DType::F32:
        detail::decode<float>(p, out);
        break;
      case DType::F64:
        detail::decode<double>(p, out);
        break;
      case DType::BF16:
        detail::decode<Eigen::bfloat16>(p, out);
        break;
      case DType::F16:
        detail::decode<Eigen::half>(p, out);
        break;
      case DType::I64:
        break;  // rejected above
    }
  }
  return out;
}

template <class T>
std::vector<T> SafetensorsFile::read(std::string_view name,
                                     const std::vector<std::int64_t>& expected_shape) const {
  const TensorInfo& ti = info(name);
  LORALAB_CHECK(ti.shape == expected_shape, "[loralab.io] ", source_, ": tensor '", name,
                "' has shape ", detail::shape_string(ti.shape), ", expected ",
                detail::shape_string(expected_shape));
  return read<T>(name);
}

// ---- SafetensorsWriter ---------------------------------------------------------------------

template <class T>
void SafetensorsWriter::add(std::string name, std::vector<std::int64_t> shape,
                            std::span<const T> data, DType stored) {
  static_assert(detail::is_io_scalar<T>,
                "SafetensorsWriter::add<T>: T must be float, double or std::int64_t");
  const bool storable =
      std::is_same_v<T, std::int64_t> ? stored == DType::I64 : stored != DType::I64;
  LORALAB_CHECK(storable, "[loralab.io] ", detail::kMemory, ": cannot add tensor '", name,
                "': values of dtype ", dtype_name(dtype_of<T>), " cannot be stored as ",
                dtype_name(stored));
  const std::size_t n = detail::writer_numel(name, shape, stored);
  LORALAB_CHECK(data.size() == n, "[loralab.io] ", detail::kMemory, ": cannot add tensor '", name,
                "': got ", data.size(), " values but shape ", detail::shape_string(shape), " has ",
                n);
  std::vector<std::byte> bytes(n * dtype_size(stored));
  if constexpr (std::is_same_v<T, std::int64_t>) {
    detail::encode<std::int64_t>(data, bytes.data());
  } else {
    switch (stored) {
      case DType::F32:
        detail::encode<float>(data, bytes.data());
        break;
      case DType::F64:
        detail::encode<double>(data, bytes.data());
        break;
      case DType::BF16:
        detail::encode<Eigen::bfloat16>(data, bytes.data());
        break;
      case DType::F16:
        detail::encode<Eigen::half>(data, bytes.data());
        break;
      case DType::I64:
        break;  // rejected above
    }
  }
  insert(std::move(name), stored, std::move(shape), std::move(bytes));
}

inline void SafetensorsWriter::add_raw(std::string name, DType dtype,
                                       std::vector<std::int64_t> shape,
                                       std::span<const std::byte> bytes) {
  const std::size_t n = detail::writer_numel(name, shape, dtype);
  LORALAB_CHECK(bytes.size() == n * dtype_size(dtype), "[loralab.io] ", detail::kMemory,
                ": cannot add tensor '", name, "': got ", bytes.size(), " bytes but dtype ",
                dtype_name(dtype), " with shape ", detail::shape_string(shape), " needs ",
                n * dtype_size(dtype));
  insert(std::move(name), dtype, std::move(shape), {bytes.begin(), bytes.end()});
}

inline void SafetensorsWriter::insert(std::string name, DType dtype,
                                      std::vector<std::int64_t> shape,
                                      std::vector<std::byte> bytes) {
  LORALAB_CHECK(name != "__metadata__", "[loralab.io] ", detail::kMemory,
                ": cannot add a tensor named '__metadata__' (reserved for the metadata)");
  LORALAB_CHECK(!tensors_.contains(name), "[loralab.io] ", detail::kMemory, ": cannot add tensor '",
                name, "': duplicate name");
  tensors_.emplace(std::move(name), Entry{dtype, std::move(shape), std::move(bytes)});
}

inline std::vector<std::byte> SafetensorsWriter::serialize() const {
  using Json = nlohmann::json;
  Json header = Json::object();
  std::uint64_t offset = 0;
  for (const auto& [name, e] : tensors_) {
    const std::uint64_t end = offset + e.bytes.size();
    header[name] = Json{{"dtype", std::string(dtype_name(e.dtype))},
                        {"shape", e.shape},
                        {"data_offsets", Json::array({offset, end})}};
    offset = end;
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& e) {  // a name or metadata string that is not valid UTF-8
    LORALAB_FAIL("[loralab.io] ", detail::kMemory, ": cannot serialize the header: ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the format pads the header to 8 bytes

  std::vector<std::byte> out(8 + text.size() + offset);
  const std::uint64_t n = text.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::byte* data = out.data() + 8 + text.size();
  for (const auto& [name, e] : tensors_) {
    if (!e.bytes.empty()) std::memcpy(data, e.bytes.data(), e.bytes.size());
    data += e.bytes.size();
  }
  return out;
}

namespace detail {
/// Writes `size` bytes to `path` atomically: a temporary file next to it, flushed and checked,
/// then renamed over `path`; on any failure the temporary file is removed and `path` is untouched.
inline void write_bytes_atomic(const std::filesystem::path& path, const char* data,
                               std::size_t size) {
  const std::string dst = path.string();
  const std::filesystem::path tmp = temp_path_for(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    // Nothing was created when opening fails, so there is nothing to remove.
    LORALAB_CHECK(out.is_open(), "[loralab.io] ", dst, ": cannot create the temporary file '",
                  tmp.string(), "' (missing or read-only directory?)");
    out.write(data, static_cast<std::streamsize>(size));
    out.flush();
    out.close();
    if (out.fail()) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      LORALAB_FAIL("[loralab.io] ", dst, ": writing ", size, " bytes to the temporary file '",
                   tmp.string(), "' failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    LORALAB_FAIL("[loralab.io] ", dst, ": cannot rename the temporary file '", tmp.string(),
                 "' over it: ", ec.message());
  }
}
}  // namespace detail

inline void SafetensorsWriter::write(const std::filesystem::path& path) const {
  const std::vector<std::byte> bytes = serialize();  // fails before touching the disk
  detail::write_bytes_atomic(path, reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

}  // namespace loralab::io
