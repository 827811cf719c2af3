#include "models/io/message_text.h"
#include "models/io/json_read.h"
#include "models/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

static_assert(std::endian::native == std::endian::little, "safetensors stores little-endian data");

namespace sinkflow {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  int64_t size;
};

const DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

std::string dtype_list() {
  std::string out;
  for (const auto& d : kDtypes) out += std::string(out.empty() ? "" : ", ") + d.name;
  return out;
}

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}


std::string show(const json& value) { return json_preview(value); }

std::string errno_text() { return std::strerror(errno); }

// Reads a non-negative integer that fits in uint64 / int64.
bool as_uint(const json& value, uint64_t& out) {
  if (value.is_number_unsigned()) {
    out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

struct SafetensorsFile::Mapping {
  void* address = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (address != nullptr) munmap(address, size);
  }
};

at::ScalarType safetensors_scalar_type(const std::string& dtype) {
  if (const DtypeInfo* d = find_dtype(dtype)) return d->type;
  throw std::invalid_argument("safetensors dtype '" + dtype + "' is not supported, expected one of " + dtype_list());
}

std::string safetensors_dtype_name(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d.name;
  throw std::invalid_argument(std::string("tensor dtype ") + c10::toString(type) +
                              " cannot be stored in safetensors, expected one of " + dtype_list());
}

int64_t safetensors_element_size(const std::string& dtype) {
  if (const DtypeInfo* d = find_dtype(dtype)) return d->size;
  throw std::invalid_argument("safetensors dtype '" + dtype + "' is not supported, expected one of " + dtype_list());
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  auto fail = [&](const std::string& message) { throw std::invalid_argument(path_ + ": " + message); };

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) fail("the file does not exist (expected a .safetensors file)");
    throw std::runtime_error(path_ + ": cannot open the file (" + errno_text() + ")");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    throw std::runtime_error(path_ + ": cannot stat the file (" + why + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("is not a regular file (expected a .safetensors file)");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail("file is " + std::to_string(file_size) + " bytes, expected at least 8 (the header length)");
  }
  void* address = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const std::string map_error = address == MAP_FAILED ? errno_text() : "";
  ::close(fd);
  if (address == MAP_FAILED) throw std::runtime_error(path_ + ": cannot map the file (" + map_error + ")");
  mapping_ = std::make_shared<Mapping>();
  mapping_->address = address;
  mapping_->size = file_size;
  const auto* bytes = static_cast<const unsigned char*>(address);

  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, 8);  // little-endian host (static_assert above)
  if (header_size > kMaxHeaderBytes)
    fail("header length " + std::to_string(header_size) + " is absurd (limit " + std::to_string(kMaxHeaderBytes) +
         " bytes); the file is not safetensors or is corrupt");
  if (header_size > file_size - 8)
    fail("header length " + std::to_string(header_size) + " goes beyond the file size (" +
         std::to_string(file_size) + " bytes); the file is truncated or not safetensors");
  data_offset_ = 8 + header_size;
  data_size_ = file_size - data_offset_;

  json header;
  try {
    header = parse_json(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_size), "header");
  } catch (const std::invalid_argument& e) {
    fail(std::string(e.what()) + " (the header is not valid JSON)");
  }
  if (!header.is_object()) fail("header is not a JSON object, found " + show(header));

  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail("'__metadata__' must be an object of strings, found " + show(value));
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string())
          fail("'__metadata__' entry '" + key + "' must be a string, found " + show(item));
        metadata_[key] = item.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!value.is_object()) fail(where + " must be an object with dtype, shape and data_offsets, found " + show(value));
    if (!value.contains("dtype")) fail(where + " has no 'dtype' (expected a string such as \"F32\")");
    if (!value.contains("shape")) fail(where + " has no 'shape' (expected a list of dimensions)");
    if (!value.contains("data_offsets")) fail(where + " has no 'data_offsets' (expected [begin, end])");

    TensorEntry entry;
    entry.name = name;
    const json& dtype = value.at("dtype");
    if (!dtype.is_string()) fail(where + " has 'dtype' " + show(dtype) + ", expected a string such as \"F32\"");
    entry.dtype = dtype.get<std::string>();
    const DtypeInfo* info = find_dtype(entry.dtype);
    if (info == nullptr)
      fail(where + " has dtype '" + entry.dtype + "', which is not supported (expected one of " + dtype_list() + ")");

    const json& shape = value.at("shape");
    if (!shape.is_array()) fail(where + " has 'shape' " + show(shape) + ", expected a list of dimensions");
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& dim : shape) {
      uint64_t d = 0;
      if (!as_uint(dim, d) || d > uint64_t(INT64_MAX))
        fail(where + " has shape " + show(shape) + ", expected non-negative integer dimensions");
      entry.shape.push_back(static_cast<int64_t>(d));
      overflow = overflow || __builtin_mul_overflow(numel, d, &numel);
    }

    const json& offsets = value.at("data_offsets");
    uint64_t begin = 0, end = 0;
    if (!offsets.is_array() || offsets.size() != 2 || !as_uint(offsets[0], begin) || !as_uint(offsets[1], end))
      fail(where + " has 'data_offsets' " + show(offsets) + ", expected [begin, end] (non-negative integers)");
    if (begin > end)
      fail(where + " has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] out of order, expected begin <= end");
    if (end > data_size_)
      fail(where + " has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] beyond the data section (" + std::to_string(data_size_) + " bytes)");
    entry.data_begin = begin;
    entry.data_end = end;
    uint64_t expected_bytes = 0;
    overflow = overflow || __builtin_mul_overflow(numel, uint64_t(info->size), &expected_bytes);
    if (overflow || expected_bytes != end - begin)
      fail(where + " holds " + std::to_string(end - begin) + " bytes, expected " +
           (overflow ? std::string("more than 2^64") : std::to_string(expected_bytes)) + " (shape " +
           shape_text(entry.shape) + " of " + entry.dtype + ")");
    entries_.emplace(name, std::move(entry));
  }

  // Byte ranges must not overlap (empty tensors occupy nothing).
  std::vector<const TensorEntry*> by_offset;
  for (const auto& [name, entry] : entries_)
    if (entry.data_end > entry.data_begin) by_offset.push_back(&entry);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorEntry* a, const TensorEntry* b) { return a->data_begin < b->data_begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorEntry& a = *by_offset[i - 1];
    const TensorEntry& b = *by_offset[i];
    if (b.data_begin < a.data_end)
      fail("tensors '" + a.name + "' [" + std::to_string(a.data_begin) + ", " + std::to_string(a.data_end) +
           ") and '" + b.name + "' [" + std::to_string(b.data_begin) + ", " + std::to_string(b.data_end) +
           ") overlap, expected disjoint byte ranges");
  }
  spdlog::debug("safetensors: {} tensors={} data_bytes={}", path_, entries_.size(), data_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const { return entries_.count(name) != 0; }

const TensorEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw std::invalid_argument(path_ + ": tensor '" + name + "' is missing");
  return it->second;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorEntry& e = entry(name);
  const DtypeInfo* info = find_dtype(e.dtype);
  const uint64_t offset = data_offset_ + e.data_begin;
  void* data = static_cast<unsigned char*>(mapping_->address) + offset;
  const auto options = at::TensorOptions().dtype(info->type).device(at::kCPU);
  if (offset % uint64_t(info->size) != 0) {
    // Misaligned for its element type (legal in safetensors, rare in practice): copy.
    return at::from_blob(data, e.shape, options).clone();
  }
  std::shared_ptr<Mapping> keep = mapping_;
  return at::from_blob(
      data, e.shape, [keep](void*) mutable { keep.reset(); }, options);
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorEntry& e = entry(name);
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t begin = (data_offset_ + e.data_begin + page - 1) / page * page;
  const uint64_t end = (data_offset_ + e.data_end) / page * page;
  if (end > begin) madvise(static_cast<unsigned char*>(mapping_->address) + begin, end - begin, MADV_DONTNEED);
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> data;
  data.reserve(tensors.size());
  nlohmann::ordered_json header;
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = meta;
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty()) throw std::invalid_argument(path + ": a tensor has an empty name, expected a non-empty name");
    if (name == "__metadata__")
      throw std::invalid_argument(path + ": tensor name '__metadata__' is reserved by safetensors");
    if (!seen.insert(name).second)
      throw std::invalid_argument(path + ": tensor '" + name + "' is given twice, expected unique names");
    if (!tensor.defined()) throw std::invalid_argument(path + ": tensor '" + name + "' is undefined");
    std::string dtype;
    try {
      dtype = safetensors_dtype_name(tensor.scalar_type());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(path + ": tensor '" + name + "': " + e.what());
    }
    at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = cpu.nbytes();
    nlohmann::ordered_json entry;
    entry["dtype"] = dtype;
    entry["shape"] = cpu.sizes().vec();
    entry["data_offsets"] = {offset, offset + bytes};
    header[name] = entry;
    offset += bytes;
    data.push_back(std::move(cpu));
  }
  std::string header_text = header.empty() ? std::string("{}") : header.dump();
  while ((8 + header_text.size()) % 8 != 0) header_text += ' ';
  const uint64_t header_size = header_text.size();

  static std::atomic<uint64_t> counter{0};
  const std::filesystem::path target(path);
  std::string temp_name = ".";
  temp_name += target.filename().string();
  temp_name += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  const std::string temp = (target.parent_path() / temp_name).string();
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create a temporary file " + temp + " (" + errno_text() + ")");
  auto abort_write = [&](const std::string& what) {
    const std::string why = errno_text();
    ::close(fd);
    ::unlink(temp.c_str());
    throw std::runtime_error(path + ": " + what + " failed (" + why + ")");
  };
  auto write_all = [&](const void* buffer, uint64_t size) {
    const auto* p = static_cast<const char*>(buffer);
    while (size > 0) {
      const ssize_t n = ::write(fd, p, std::min<uint64_t>(size, uint64_t(1) << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        abort_write("writing");
      }
      p += n;
      size -= static_cast<uint64_t>(n);
    }
  };
  write_all(&header_size, 8);
  write_all(header_text.data(), header_size);
  for (const at::Tensor& t : data)
    if (t.nbytes() > 0) write_all(t.data_ptr(), t.nbytes());
  if (::fsync(fd) != 0) abort_write("fsync");
  if (::close(fd) != 0) {
    const std::string why = errno_text();
    ::unlink(temp.c_str());
    throw std::runtime_error(path + ": closing the file failed (" + why + ")");
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(temp.c_str());
    throw std::runtime_error(path + ": renaming " + temp + " into place failed (" + why + ")");
  }
  spdlog::debug("safetensors: wrote {} tensors={} bytes={}", path, tensors.size(), 8 + header_size + offset);
}

}  // namespace sinkflow
