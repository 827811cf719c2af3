// Reader and writer of the safetensors format (https://github.com/huggingface/safetensors):
//   8 bytes: N, the header length, unsigned little-endian
//   N bytes: a JSON object {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//            "__metadata__": {string: string}} padded with spaces
//   the data section; offsets are relative to its start.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace sinkflow {

struct TensorEntry {
  std::string name;
  std::string dtype;            // as stored: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL
  std::vector<int64_t> shape;   // [] for a scalar
  uint64_t data_begin = 0;      // byte range [data_begin, data_end) relative to the data section
  uint64_t data_end = 0;
};

// Safetensors dtype name <-> ATen scalar type. Throw std::invalid_argument on other values.
at::ScalarType safetensors_scalar_type(const std::string& dtype);
std::string safetensors_dtype_name(at::ScalarType type);
// Bytes per element of a safetensors dtype (throws std::invalid_argument for unknown ones).
int64_t safetensors_element_size(const std::string& dtype);

// One .safetensors file, memory-mapped read-only (private copy-on-write mapping: writing into a tensor
// returned by tensor() never changes the file). The constructor validates the whole header against the
// file and throws std::invalid_argument naming the file (and tensor) on any inconsistency; it throws
// std::runtime_error when the file cannot be opened or mapped.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // Throws std::invalid_argument naming the file and the tensor when absent.
  const TensorEntry& entry(const std::string& name) const;
  // A CPU tensor with the stored dtype and shape that views the mapped bytes; it keeps the mapping alive
  // (it may outlive this object). A tensor whose bytes are not aligned to its element size is copied.
  at::Tensor tensor(const std::string& name) const;
  // Drops the resident pages of `name`'s bytes (whole pages inside them) from this process (madvise DONTNEED):
  // a loader that copied the tensor out keeps its RSS from growing with the file. Only once no tensor() view of
  // `name` is in use: the bytes read back from the file, so a view that was written to would see them again.
  void release(const std::string& name) const;
  // The "__metadata__" map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Size in bytes of the data section.
  uint64_t data_size() const { return data_size_; }

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  uint64_t data_offset_ = 0;  // file offset of the data section
  uint64_t data_size_ = 0;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device, any layout: contiguous CPU copies are written, in the given order) and
// `metadata` to `path`, atomically: a temporary file in the same folder, fsync, then rename. The header
// is padded with spaces to a multiple of 8 bytes. Throws std::invalid_argument for empty or duplicate
// names, the reserved name "__metadata__", or a dtype safetensors cannot hold; std::runtime_error when
// writing fails.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace sinkflow
