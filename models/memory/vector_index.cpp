#include "models/memory/vector_index.h"

// The only translation unit that includes hnswlib (its header defines non-inline functions).
#include <hnswlib/hnswlib.h>

#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <queue>
#include <random>
#include <shared_mutex>
#include <sstream>
#include <string_view>
#include <stdexcept>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "models/memory/int8_dot.h"

namespace sinkflow {

static_assert(std::endian::native == std::endian::little, "index files are written in native (little-endian) order");

// ---------------------------------------------------------------------------------------------------------------
// CRC-32, slice-by-8.

namespace {

struct Crc32Tables {
  uint32_t t[8][256];
  Crc32Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};

const Crc32Tables& crc_tables() {
  static const Crc32Tables tables;
  return tables;
}

}  // namespace

uint32_t crc32(const void* data, size_t n, uint32_t crc) {
  const auto& t = crc_tables().t;
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][hi & 0xFF] ^
        t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return ~c;
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers.

std::vector<float> normalized(const float* v, int64_t dim, const char* what, bool* nonzero) {
  double ss = 0.0;
  for (int64_t i = 0; i < dim; ++i) {
    if (!std::isfinite(v[i])) {
      std::ostringstream msg;
      msg << what << ": component " << i << " is " << v[i] << ", expected a finite value";
      throw std::invalid_argument(msg.str());
    }
    ss += double(v[i]) * double(v[i]);
  }
  std::vector<float> out(size_t(dim), 0.0f);
  if (nonzero) *nonzero = ss > 0.0;
  if (ss > 0.0) {
    const double inv = 1.0 / std::sqrt(ss);
    for (int64_t i = 0; i < dim; ++i) out[size_t(i)] = float(double(v[i]) * inv);
  }
  return out;
}

float inner_product(const float* a, const float* b, int64_t n) {
  // Eight independent partial sums so that the compiler can vectorize without -ffast-math.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

bool hit_before(const SearchHit& a, const SearchHit& b) {
  return a.score != b.score ? a.score > b.score : a.id < b.id;
}

namespace {

void check_dim(int64_t dim, const char* who) {
  if (dim < 1) throw std::invalid_argument(std::string(who) + ": dim is " + std::to_string(dim) + ", expected >= 1");
}

// ----- index file container -------------------------------------------------------------------------------------
// header (48 bytes): magic[8] | u64 dim | u64 count | u64 tag | u64 payload_bytes | u32 payload_crc | u32 header_crc
// then payload_bytes bytes of payload. header_crc covers the first 44 bytes.

constexpr size_t kHeaderBytes = 48;
constexpr char kHnswMagic[8] = {'S', 'F', 'H', 'N', 'S', 'W', '0', '1'};
constexpr char kHnswI8Magic[8] = {'S', 'F', 'H', 'N', 'S', 'Q', '0', '1'};  // HnswParams::Storage::i8
// The same with a duplicates section after the link lists (written only when the index holds duplicates):
// u64 n | n x (i64 id, u32 internal id of the element whose stored vector it shares), ids ascending.
constexpr char kHnswDupMagic[8] = {'S', 'F', 'H', 'N', 'S', 'W', '0', '2'};
constexpr char kHnswI8DupMagic[8] = {'S', 'F', 'H', 'N', 'S', 'Q', '0', '2'};
// Reader kinds: index in this list.
const std::vector<const char*> kHnswMagics = {kHnswMagic, kHnswI8Magic, kHnswDupMagic, kHnswI8DupMagic};
bool kind_is_i8(int kind) { return kind == 1 || kind == 3; }
bool kind_has_dups(int kind) { return kind >= 2; }
constexpr char kBruteMagic[8] = {'S', 'F', 'B', 'R', 'U', 'T', '0', '1'};
// Bytes of the hnswlib preamble that HnswIndex::save() writes before the level-0 block.
constexpr size_t kHnswPreambleBytes = 6 * sizeof(size_t) + sizeof(int) + sizeof(uint32_t) + 3 * sizeof(size_t) +
                                      sizeof(double) + sizeof(size_t);

// Buffer of the streams that write and read index files: a seal writes then reads back the in-RAM segment beside
// it, so these count in the RAM of a short stream (1 MiB each before; 256 KiB reads as fast from the page cache).
constexpr size_t kIoBufferBytes = 256 << 10;

struct FileHeader {
  char magic[8];
  uint64_t dim, count, tag, payload_bytes;
  uint32_t payload_crc, header_crc;
};
static_assert(sizeof(FileHeader) == kHeaderBytes);

// Streams a payload to path.tmp behind a placeholder header, then writes the header, fsyncs and renames.
class IndexFileWriter {
 public:
  IndexFileWriter(const std::string& path) : path_(path), tmp_(path + ".tmp") {
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) throw std::runtime_error(tmp_ + ": cannot open for writing (" + std::strerror(errno) + ")");
    std::setvbuf(f_, nullptr, _IOFBF, kIoBufferBytes);
    FileHeader zero{};
    raw(&zero, sizeof zero);
  }
  ~IndexFileWriter() {
    if (f_) {
      std::fclose(f_);
      std::remove(tmp_.c_str());
    }
  }
  template <typename T>
  void pod(const T& v) {
    write(&v, sizeof v);
  }
  void write(const void* p, size_t n) {
    crc_ = crc32(p, n, crc_);
    bytes_ += n;
    raw(p, n);
  }
  void finish(const char* magic, uint64_t dim, uint64_t count, uint64_t tag) {
    FileHeader h{};
    std::memcpy(h.magic, magic, 8);
    h.dim = dim;
    h.count = count;
    h.tag = tag;
    h.payload_bytes = bytes_;
    h.payload_crc = crc_;
    h.header_crc = crc32(&h, offsetof(FileHeader, header_crc));
    if (std::fseek(f_, 0, SEEK_SET) != 0) fail("seek");
    raw(&h, sizeof h);
    if (std::fflush(f_) != 0) fail("flush");
    if (::fsync(::fileno(f_)) != 0) fail("fsync");
    FILE* f = f_;
    f_ = nullptr;
    if (std::fclose(f) != 0) {
      std::remove(tmp_.c_str());
      throw std::runtime_error(tmp_ + ": close failed (" + std::strerror(errno) + ")");
    }
    std::error_code ec;
    std::filesystem::rename(tmp_, path_, ec);
    if (ec) {
      std::remove(tmp_.c_str());
      throw std::runtime_error(path_ + ": cannot rename " + tmp_ + " into place (" + ec.message() + ")");
    }
    // Make the rename durable.
    auto parent = std::filesystem::path(path_).parent_path();
    int dfd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  void raw(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) fail("write");
  }
  [[noreturn]] void fail(const char* op) {
    throw std::runtime_error(tmp_ + ": " + op + " failed (" + std::strerror(errno) + ")");
  }
  std::string path_, tmp_;
  FILE* f_ = nullptr;
  uint32_t crc_ = 0;
  uint64_t bytes_ = 0;
};

// Opens an index file, checks its header and the payload CRC (a first pass), and then reads the payload with
// every read bounded by what is left of it.
class IndexFileReader {
 public:
  // Any of `magics` is accepted (kind() says which was found).
  IndexFileReader(const std::string& path, std::vector<const char*> magics, int64_t dim) : path_(path) {
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) throw std::runtime_error(path + ": cannot open index file (" + std::strerror(errno) + ")");
    std::setvbuf(f_, nullptr, _IOFBF, kIoBufferBytes);
    if (std::fseek(f_, 0, SEEK_END) != 0) io_fail("seek");
    long end = std::ftell(f_);
    if (end < 0) io_fail("tell");
    const uint64_t file_size = uint64_t(end);
    std::rewind(f_);
    if (file_size < kHeaderBytes) bad("file size", std::to_string(file_size) + " bytes", ">= 48 bytes (a header)");
    if (std::fread(&header_, 1, sizeof header_, f_) != sizeof header_) io_fail("read");
    kind_ = -1;
    std::string expected;
    for (size_t i = 0; i < magics.size(); ++i) {
      if (std::memcmp(header_.magic, magics[i], 8) == 0) kind_ = int(i);
      expected += (i == 0 ? "" : i + 1 == magics.size() ? " or " : ", ") + std::string(magics[i], 8);
    }
    if (kind_ < 0) bad("magic", std::string(header_.magic, 8), expected);
    const uint32_t hcrc = crc32(&header_, offsetof(FileHeader, header_crc));
    if (hcrc != header_.header_crc) bad("header CRC32", hex(header_.header_crc), hex(hcrc) + " (computed)");
    if (header_.dim != uint64_t(dim)) bad("dim", std::to_string(header_.dim), std::to_string(dim));
    if (header_.payload_bytes != file_size - kHeaderBytes)
      bad("payload size", std::to_string(header_.payload_bytes) + " bytes",
          std::to_string(file_size - kHeaderBytes) + " (file size - header)");
    // Pass 1: payload checksum.
    std::vector<char> buf(kIoBufferBytes);
    uint32_t crc = 0;
    uint64_t left = header_.payload_bytes;
    while (left) {
      size_t n = size_t(std::min<uint64_t>(left, buf.size()));
      if (std::fread(buf.data(), 1, n, f_) != n) io_fail("read");
      crc = crc32(buf.data(), n, crc);
      left -= n;
    }
    if (crc != header_.payload_crc) bad("payload CRC32", hex(header_.payload_crc), hex(crc) + " (computed)");
    if (std::fseek(f_, long(kHeaderBytes), SEEK_SET) != 0) io_fail("seek");
    left_ = header_.payload_bytes;
  }
  ~IndexFileReader() {
    if (f_) std::fclose(f_);
  }
  const FileHeader& header() const { return header_; }
  uint64_t left() const { return left_; }
  int kind() const { return kind_; }

  void read(void* p, uint64_t n, const char* what) {
    if (n > left_) bad(what, std::to_string(n) + " bytes", "at most the " + std::to_string(left_) + " bytes left");
    if (n && std::fread(p, 1, size_t(n), f_) != n) io_fail("read");
    left_ -= n;
  }
  template <typename T>
  T pod(const char* what) {
    T v;
    read(&v, sizeof v, what);
    return v;
  }
  [[noreturn]] void bad(const std::string& field, const std::string& found, const std::string& expected) const {
    throw std::invalid_argument(path_ + ": " + field + " is " + found + ", expected " + expected);
  }

 private:
  static std::string hex(uint32_t v) {
    char b[16];
    std::snprintf(b, sizeof b, "0x%08x", v);
    return b;
  }
  [[noreturn]] void io_fail(const char* op) const {
    throw std::runtime_error(path_ + ": " + op + " failed (" + std::strerror(errno) + ")");
  }
  std::string path_;
  FILE* f_ = nullptr;
  FileHeader header_{};
  uint64_t left_ = 0;
  int kind_ = 0;
};

// ----- int8 codes -------------------------------------------------------------------------------------------------
// A vector of HnswParams::Storage::i8 is `f32 scale | i8 codes[dim]`, component = scale * code.

size_t code_bytes(HnswParams::Storage storage, size_t dim) {
  return storage == HnswParams::Storage::i8 ? dim + 4 : 4 * dim;
}

// `unit` is normalized (or zero).
void encode_i8(const float* unit, size_t dim, char* out) {
  float max_abs = 0.0f;
  for (size_t i = 0; i < dim; ++i) max_abs = std::max(max_abs, std::abs(unit[i]));
  const float scale = max_abs / 127.0f;
  std::memcpy(out, &scale, 4);
  auto* code = reinterpret_cast<int8_t*>(out + 4);
  for (size_t i = 0; i < dim; ++i)
    code[i] = scale > 0.0f ? int8_t(std::lround(std::clamp(unit[i] / scale, -127.0f, 127.0f))) : int8_t(0);
}

void decode_i8(const char* in, size_t dim, float* out) {
  float scale;
  std::memcpy(&scale, in, 4);
  const auto* code = reinterpret_cast<const int8_t*>(in + 4);
  for (size_t i = 0; i < dim; ++i) out[i] = scale * float(code[i]);
}

// `dot` is int8_dot_fn(int8_dot_best()), looked up once by the caller: this runs for every distance of a graph.
float ip_i8(const char* a, const char* b, size_t dim, Int8DotFn dot) {
  float sa, sb;
  std::memcpy(&sa, a, 4);
  std::memcpy(&sb, b, 4);
  return sa * sb * float(dot(reinterpret_cast<const int8_t*>(a + 4), reinterpret_cast<const int8_t*>(b + 4), dim));
}

// What hnswlib hands dist_i8 with every pair.
struct Int8DistParam {
  size_t dim;
  Int8DotFn dot;
};

float dist_i8(const void* a, const void* b, const void* param) {
  const auto* p = static_cast<const Int8DistParam*>(param);
  return 1.0f - ip_i8(static_cast<const char*>(a), static_cast<const char*>(b), p->dim, p->dot);
}

// hnswlib space over i8 codes: distance 1 - inner product, like hnswlib's InnerProductSpace.
class Int8InnerProductSpace final : public hnswlib::SpaceInterface<float> {
 public:
  explicit Int8InnerProductSpace(size_t dim) : param_{dim, int8_dot_fn(int8_dot_best())} {}
  size_t get_data_size() override { return param_.dim + 4; }
  hnswlib::DISTFUNC<float> get_dist_func() override { return dist_i8; }
  void* get_dist_func_param() override { return &param_; }

 private:
  Int8DistParam param_;
};

// What a vector or a query becomes in the graph: normalized, then (i8) encoded.
std::vector<char> to_stored(const std::vector<float>& unit, HnswParams::Storage storage) {
  std::vector<char> out(code_bytes(storage, unit.size()));
  if (storage == HnswParams::Storage::i8)
    encode_i8(unit.data(), unit.size(), out.data());
  else
    std::memcpy(out.data(), unit.data(), out.size());
  return out;
}

std::vector<float> from_stored(const char* p, HnswParams::Storage storage, size_t dim) {
  std::vector<float> out(dim);
  if (storage == HnswParams::Storage::i8)
    decode_i8(p, dim, out.data());
  else
    std::memcpy(out.data(), p, 4 * dim);
  return out;
}

// ----- duplicates -------------------------------------------------------------------------------------------------
// A vector whose stored code equals an element's already in the graph is not inserted: it is kept as a duplicate
// of that element and returned beside it. Thousands of equal vectors (a repeated text embeds to one vector) would
// otherwise fill each other's neighbour lists (hnswlib's heuristic keeps neighbours at distance 0 first) and cut
// every other element off from them: a search entering them never leaves.

uint64_t code_hash(const char* p, size_t n) { return std::hash<std::string_view>{}(std::string_view(p, n)); }

// Element ids keyed by the hash of their stored code: open addressing, id + 1 (0 = empty), at most half full.
class CodeTable {
 public:
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  // An element whose code equals `code` (n bytes), or kNone. code_of(id) -> const char*.
  template <class CodeOf>
  uint32_t find(const char* code, size_t n, CodeOf code_of) const {
    if (slots_.empty()) return kNone;
    const size_t mask = slots_.size() - 1;
    for (size_t i = code_hash(code, n) & mask;; i = (i + 1) & mask) {
      if (slots_[i] == 0) return kNone;
      if (std::memcmp(code_of(slots_[i] - 1), code, n) == 0) return slots_[i] - 1;
    }
  }
  template <class CodeOf>
  void insert(uint32_t id, size_t n, CodeOf code_of) {
    if (2 * (used_ + 1) > slots_.size()) {
      std::vector<uint32_t> old(std::max<size_t>(1024, 2 * slots_.size()), 0);
      old.swap(slots_);
      used_ = 0;
      for (uint32_t key : old)
        if (key) put(key - 1, n, code_of);
    }
    put(id, n, code_of);
  }
  size_t bytes() const { return slots_.size() * 4; }

 private:
  template <class CodeOf>
  void put(uint32_t id, size_t n, CodeOf code_of) {
    const size_t mask = slots_.size() - 1;
    size_t i = code_hash(code_of(id), n) & mask;
    while (slots_[i] != 0) i = (i + 1) & mask;
    slots_[i] = id + 1;
    ++used_;
  }
  std::vector<uint32_t> slots_;
  size_t used_ = 0;
};

// The graph's hits (sorted by hit_before) with the duplicates of each (same score), the k first.
// dups_of(label, out) appends the duplicates of the element labelled `label`, ascending.
template <class DupsOf>
std::vector<SearchHit> with_duplicates(const std::vector<SearchHit>& hits, int k, DupsOf dups_of) {
  std::vector<SearchHit> out;
  std::vector<int64_t> d;
  for (const SearchHit& h : hits) {
    out.push_back(h);
    d.clear();
    dups_of(h.id, d);
    for (size_t j = 0; j < d.size() && j + 1 < size_t(k); ++j) out.push_back({d[j], h.score});
  }
  std::sort(out.begin(), out.end(), hit_before);
  if (out.size() > size_t(k)) out.resize(size_t(k));
  return out;
}

// The k best of n elements by an exact scan: score(i) and label(i) of element i.
template <class Score, class Label>
std::vector<SearchHit> exact_scan(size_t n, int k, Score score, Label label) {
  std::vector<SearchHit> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = {label(i), score(i)};
  const size_t kk = std::min(n, size_t(k));
  std::partial_sort(all.begin(), all.begin() + std::ptrdiff_t(kk), all.end(), hit_before);
  all.resize(kk);
  return all;
}


// The hnswlib preamble of an index file (HnswIndex::save), read and checked: the counts against the file, the
// layout fields against what hnswlib derives from dim, M and the storage, the enterpoint against the count.
struct HnswPreamble {
  HnswParams::Storage storage = HnswParams::Storage::f32;
  size_t count = 0, size_per_element = 0, offset_data = 0, label_offset = 0, max_m = 0, max_m0 = 0, m = 0,
         ef_construction = 0;
  int maxlevel = -1;
  uint32_t enterpoint = 0;
  double mult = 0;
  size_t size_links_per_element() const { return max_m * 4 + 4; }
};

HnswPreamble read_preamble(IndexFileReader& r, int64_t dim) {
  HnswPreamble p;
  p.storage = kind_is_i8(r.kind()) ? HnswParams::Storage::i8 : HnswParams::Storage::f32;
  const auto offset_level0 = r.pod<size_t>("offsetLevel0");
  (void)r.pod<size_t>("maxElements");
  p.count = r.pod<size_t>("curElementCount");
  p.size_per_element = r.pod<size_t>("sizeDataPerElement");
  p.label_offset = r.pod<size_t>("labelOffset");
  p.offset_data = r.pod<size_t>("offsetData");
  p.maxlevel = r.pod<int>("maxlevel");
  p.enterpoint = r.pod<uint32_t>("enterpoint");
  p.max_m = r.pod<size_t>("maxM");
  p.max_m0 = r.pod<size_t>("maxM0");
  p.m = r.pod<size_t>("M");
  p.mult = r.pod<double>("mult");
  p.ef_construction = r.pod<size_t>("efConstruction");
  const size_t count = p.count, m = p.m;
  if (count != r.header().count)
    r.bad("curElementCount", std::to_string(count), std::to_string(r.header().count) + " (header count)");
  if (m < 2 || m > 2048) r.bad("M", std::to_string(m), "[2, 2048]");
  if (p.ef_construction < 1 || p.ef_construction > (size_t(1) << 20))
    r.bad("efConstruction", std::to_string(p.ef_construction), "[1, 1048576]");
  if (count >= size_t(std::numeric_limits<uint32_t>::max()) - 1)
    r.bad("curElementCount", std::to_string(count), "fewer than 2^32 - 1");
  auto expect_eq = [&](const char* field, size_t found, size_t expected) {
    if (found != expected)
      r.bad(field, std::to_string(found), std::to_string(expected) + " (for dim " + std::to_string(dim) + ", M " +
                                              std::to_string(m) + ")");
  };
  const size_t links0 = 2 * m * 4 + 4, data = code_bytes(p.storage, size_t(dim));
  expect_eq("offsetLevel0", offset_level0, 0);
  expect_eq("maxM", p.max_m, m);
  expect_eq("maxM0", p.max_m0, 2 * m);
  expect_eq("offsetData", p.offset_data, links0);
  expect_eq("labelOffset", p.label_offset, links0 + data);
  expect_eq("sizeDataPerElement", p.size_per_element, links0 + data + 8);
  const double mult = 1 / std::log(double(m));
  if (!(std::abs(p.mult - mult) <= 1e-12 * mult)) r.bad("mult", std::to_string(p.mult), std::to_string(mult));
  // Every element takes size_per_element bytes of level-0 block + a 4-byte link list size.
  if (count > r.left() / (p.size_per_element + 4))
    r.bad("curElementCount", std::to_string(count),
          "at most " + std::to_string(r.left()) + " payload bytes / (sizeDataPerElement + 4)");
  if (count == 0) {
    if (p.maxlevel != -1) r.bad("maxlevel", std::to_string(p.maxlevel), "-1 (empty index)");
  } else {
    if (p.maxlevel < 0 || p.maxlevel > 255) r.bad("maxlevel", std::to_string(p.maxlevel), "[0, 255]");
    if (p.enterpoint >= count) r.bad("enterpoint", std::to_string(p.enterpoint), "< " + std::to_string(count));
  }
  return p;
}

// The duplicates section: u64 n | n x (i64 id, u32 element), ids strictly ascending, elements < count.
std::vector<std::pair<int64_t, uint32_t>> read_duplicates(IndexFileReader& r, size_t count) {
  const auto n = r.pod<uint64_t>("duplicate count");
  if (n > r.left() / 12) r.bad("duplicate count", std::to_string(n), "at most " + std::to_string(r.left() / 12) + " (bytes left / 12)");
  std::vector<std::pair<int64_t, uint32_t>> dups(static_cast<size_t>(n));
  for (size_t i = 0; i < n; ++i) {
    const auto id = r.pod<int64_t>("duplicate id");
    const auto rep = r.pod<uint32_t>("duplicate element");
    if (i > 0 && id <= dups[i - 1].first)
      r.bad("duplicate " + std::to_string(i) + " id", std::to_string(id),
            "above the previous duplicate's " + std::to_string(dups[i - 1].first) + " (ids ascend)");
    if (rep >= count) r.bad("duplicate " + std::to_string(i) + " element", std::to_string(rep), "< " + std::to_string(count));
    dups[i] = {id, rep};
  }
  return dups;
}

}  // namespace

void HnswParams::validate() const {
  auto check = [](const char* field, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      throw std::invalid_argument("HnswParams: " + std::string(field) + " is " + std::to_string(v) +
                                  ", expected [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  };
  check("M", M, 2, 2048);
  check("ef_construction", ef_construction, 1, 1 << 20);
  check("ef_search", ef_search, 1, 1 << 20);
  check("initial_capacity", initial_capacity, 1, int64_t(1) << 32);
}

// ---------------------------------------------------------------------------------------------------------------
// HnswIndex.

using Hnsw = hnswlib::HierarchicalNSW<float>;

struct HnswIndex::Impl {
  Impl(int64_t d, HnswParams::Storage s) : dim(d), storage(s) {
    if (s == HnswParams::Storage::i8)
      space = std::make_unique<Int8InnerProductSpace>(size_t(d));
    else
      space = std::make_unique<hnswlib::InnerProductSpace>(size_t(d));
  }
  int64_t dim;
  HnswParams::Storage storage;
  std::unique_ptr<hnswlib::SpaceInterface<float>> space;  // must outlive `hnsw`
  std::unique_ptr<Hnsw> hnsw;
  // Graph elements by their stored code, and the duplicates (ids not in the graph): id -> label of the element
  // whose code it shares, and per such element its duplicates in insertion (= ascending, for the store) order.
  CodeTable codes;
  std::unordered_map<int64_t, int64_t> dup_rep;
  std::unordered_map<int64_t, std::vector<int64_t>> dups_of;
  // add() and resize exclusive; search/contains/vector/save shared (see the header).
  mutable std::shared_mutex mutex;
  const char* code_of(uint32_t i) const { return hnsw->getDataByInternalId(i); }
  size_t code_size() const { return code_bytes(storage, size_t(dim)); }
};

HnswIndex::HnswIndex(int64_t dim, HnswParams params) : params_(params) {
  check_dim(dim, "HnswIndex");
  params_.validate();
  impl_ = std::make_unique<Impl>(dim, params_.storage);
  impl_->hnsw = std::make_unique<Hnsw>(impl_->space.get(), size_t(params_.initial_capacity), size_t(params_.M),
                                       size_t(params_.ef_construction), size_t(params_.seed));
  impl_->hnsw->setEf(size_t(params_.ef_search));
}

HnswIndex::HnswIndex(int64_t dim, HnswParams params, std::unique_ptr<Impl> impl)
    : params_(params), impl_(std::move(impl)) {
  (void)dim;
}

HnswIndex::~HnswIndex() = default;

int64_t HnswIndex::dim() const { return impl_->dim; }

int64_t HnswIndex::size() const {
  std::shared_lock lock(impl_->mutex);
  return int64_t(impl_->hnsw->cur_element_count + impl_->dup_rep.size());
}

int64_t HnswIndex::duplicates() const {
  std::shared_lock lock(impl_->mutex);
  return int64_t(impl_->dup_rep.size());
}

int64_t HnswIndex::capacity() const {
  std::shared_lock lock(impl_->mutex);
  return int64_t(impl_->hnsw->max_elements_);
}

int64_t HnswIndex::bytes_per_element(int64_t dim, const HnswParams& params) {
  const int64_t level0 = 4 + 2 * int64_t(params.M) * 4 + int64_t(code_bytes(params.storage, size_t(dim))) + 8;
  // element_levels_ (4), linkLists_ (8), link_list_locks_ (a std::mutex, 40), label_lookup_ (~48 with its
  // bucket), the visited list (2), the code table (8: two u32 slots).
  return level0 + 4 + 8 + int64_t(sizeof(std::mutex)) + 48 + 2 + 8;
}

void HnswIndex::set_ef_search(int ef_search) {
  HnswParams p = params_;
  p.ef_search = ef_search;
  p.validate();
  std::unique_lock lock(impl_->mutex);
  params_.ef_search = ef_search;
  impl_->hnsw->setEf(size_t(ef_search));
}

void HnswIndex::add(int64_t id, const float* vector) {
  const std::string what = "HnswIndex::add: vector of id " + std::to_string(id);
  std::vector<float> v = normalized(vector, impl_->dim, what.c_str());
  const std::vector<char> stored = to_stored(v, impl_->storage);
  std::unique_lock lock(impl_->mutex);
  Impl& m = *impl_;
  Hnsw& h = *m.hnsw;
  const auto label = hnswlib::labeltype(id);
  if (h.label_lookup_.count(label) || m.dup_rep.count(id))
    throw std::invalid_argument("HnswIndex::add: id " + std::to_string(id) + " is already in the index, expected a new id");
  auto code_of = [&m](uint32_t i) { return m.code_of(i); };
  if (const uint32_t same = m.codes.find(stored.data(), stored.size(), code_of); same != CodeTable::kNone) {
    const int64_t rep = int64_t(h.getExternalLabel(same));
    m.dup_rep.emplace(id, rep);
    m.dups_of[rep].push_back(id);
    return;
  }
  if (h.cur_element_count >= size_t(std::numeric_limits<hnswlib::tableint>::max()) - 1)
    throw std::invalid_argument("HnswIndex::add: index holds " + std::to_string(h.cur_element_count) +
                                " vectors, the most hnswlib can address");
  if (h.cur_element_count >= h.max_elements_) {
    h.resizeIndex(std::max<size_t>(2 * h.max_elements_, 1));
#ifdef __GLIBC__
    // resizeIndex replaced the per-element mutexes and visited list (and realloc may have copied the level-0 block
    // when it lay below glibc's mmap threshold): give the freed heap pages back rather than keep them resident.
    ::malloc_trim(0);
#endif
  }
  h.addPoint(stored.data(), label);
  m.codes.insert(uint32_t(h.cur_element_count - 1), stored.size(), code_of);
}

std::vector<SearchHit> HnswIndex::search(const float* query, int k) const {
  if (k <= 0) return {};
  bool nonzero = false;
  std::vector<float> q = normalized(query, impl_->dim, "HnswIndex::search: query", &nonzero);
  if (!nonzero) return {};
  const std::vector<char> stored = to_stored(q, impl_->storage);
  std::vector<SearchHit> hits;
  std::shared_lock lock(impl_->mutex);
  const Impl& m = *impl_;
  const Hnsw& h = *m.hnsw;
  const size_t n = h.cur_element_count;
  if (n <= size_t(kExactSearchMax)) {
    hits = exact_scan(
        n, k, [&](size_t i) { return 1.0f - h.fstdistfunc_(stored.data(), h.getDataByInternalId(hnswlib::tableint(i)), h.dist_func_param_); },
        [&](size_t i) { return int64_t(h.getExternalLabel(hnswlib::tableint(i))); });
  } else {
    auto pq = m.hnsw->searchKnn(stored.data(), size_t(k));
    hits.reserve(pq.size());
    while (!pq.empty()) {
      hits.push_back({int64_t(pq.top().second), 1.0f - pq.top().first});
      pq.pop();
    }
    std::sort(hits.begin(), hits.end(), hit_before);
  }
  if (m.dups_of.empty()) return hits;
  return with_duplicates(hits, k, [&](int64_t label, std::vector<int64_t>& out) {
    auto it = m.dups_of.find(label);
    if (it != m.dups_of.end()) out.insert(out.end(), it->second.begin(), it->second.end());
  });
}

bool HnswIndex::contains(int64_t id) const {
  std::shared_lock lock(impl_->mutex);
  return impl_->hnsw->label_lookup_.count(hnswlib::labeltype(id)) > 0 || impl_->dup_rep.count(id) > 0;
}

std::vector<float> HnswIndex::vector(int64_t id) const {
  std::shared_lock lock(impl_->mutex);
  const Hnsw& h = *impl_->hnsw;
  const auto dup = impl_->dup_rep.find(id);
  auto it = h.label_lookup_.find(hnswlib::labeltype(dup == impl_->dup_rep.end() ? id : dup->second));
  if (it == h.label_lookup_.end())
    throw std::invalid_argument("HnswIndex::vector: id " + std::to_string(id) + " is not in the index");
  return from_stored(h.getDataByInternalId(it->second), impl_->storage, size_t(impl_->dim));
}

// Payload = hnswlib 0.6.2 saveIndex() layout (so that the payload alone is a file hnswlib can read):
// offsetLevel0 maxElements curElementCount sizeDataPerElement labelOffset offsetData (size_t) | maxlevel (int) |
// enterpoint (u32) | maxM maxM0 M (size_t) | mult (double) | efConstruction (size_t) | level-0 block
// (count * sizeDataPerElement) | per element: u32 linkListSize + bytes.
void HnswIndex::save(const std::string& path, uint64_t tag) const {
  std::shared_lock lock(impl_->mutex);
  const Hnsw& h = *impl_->hnsw;
  IndexFileWriter w(path);
  const size_t count = h.cur_element_count;
  w.pod(h.offsetLevel0_);
  w.pod(size_t(count));  // max_elements: the reader chooses its own capacity
  w.pod(count);
  w.pod(h.size_data_per_element_);
  w.pod(h.label_offset_);
  w.pod(h.offsetData_);
  w.pod(h.maxlevel_);
  w.pod(h.enterpoint_node_);
  w.pod(h.maxM_);
  w.pod(h.maxM0_);
  w.pod(h.M_);
  w.pod(h.mult_);
  w.pod(h.ef_construction_);
  w.write(h.data_level0_memory_, count * h.size_data_per_element_);
  for (size_t i = 0; i < count; ++i) {
    unsigned int n = h.element_levels_[i] > 0 ? unsigned(h.size_links_per_element_ * size_t(h.element_levels_[i])) : 0;
    w.pod(n);
    if (n) w.write(h.linkLists_[i], n);
  }
  const bool i8 = impl_->storage == HnswParams::Storage::i8;
  if (!impl_->dup_rep.empty()) {
    std::vector<std::pair<int64_t, int64_t>> dups(impl_->dup_rep.begin(), impl_->dup_rep.end());
    std::sort(dups.begin(), dups.end());
    w.pod(uint64_t(dups.size()));
    for (const auto& [id, rep] : dups) {
      w.pod(id);
      w.pod(uint32_t(h.label_lookup_.at(hnswlib::labeltype(rep))));
    }
  }
  w.finish(impl_->dup_rep.empty() ? (i8 ? kHnswI8Magic : kHnswMagic) : (i8 ? kHnswI8DupMagic : kHnswDupMagic),
           uint64_t(impl_->dim), count, tag);
}

std::unique_ptr<HnswIndex> HnswIndex::load(const std::string& path, int64_t dim, HnswParams params, uint64_t* tag) {
  check_dim(dim, "HnswIndex::load");
  params.validate();
  IndexFileReader r(path, kHnswMagics, dim);
  const HnswPreamble pre = read_preamble(r, dim);
  const auto storage = pre.storage;
  const size_t count = pre.count, m = pre.m, size_data_per_element = pre.size_per_element;
  const int maxlevel = pre.maxlevel;
  const auto enterpoint = hnswlib::tableint(pre.enterpoint);

  HnswParams p = params;
  p.M = int(m);
  p.ef_construction = int(pre.ef_construction);
  p.storage = storage;
  auto impl = std::make_unique<Impl>(dim, storage);
  impl->hnsw = std::make_unique<Hnsw>(impl->space.get(), std::max<size_t>(count, size_t(params.initial_capacity)), m,
                                      pre.ef_construction, size_t(params.seed));
  Hnsw& h = *impl->hnsw;
  if (h.size_data_per_element_ != size_data_per_element || h.label_offset_ != pre.label_offset ||
      h.offsetData_ != pre.offset_data || h.maxM0_ != pre.max_m0)
    r.bad("layout", "sizeDataPerElement " + std::to_string(size_data_per_element),
          std::to_string(h.size_data_per_element_) + " (this hnswlib's)");

  r.read(h.data_level0_memory_, uint64_t(count) * size_data_per_element, "level-0 block");
  // Link lists of the upper levels. cur_element_count grows with them so that the destructor frees what was
  // allocated if a later check throws.
  for (size_t i = 0; i < count; ++i) {
    const auto n = r.pod<unsigned int>("linkListSize");
    const std::string field = "linkListSize of element " + std::to_string(i);
    if (n % h.size_links_per_element_ != 0)
      r.bad(field, std::to_string(n), "a multiple of " + std::to_string(h.size_links_per_element_));
    const size_t level = n / h.size_links_per_element_;
    if (level > size_t(maxlevel)) r.bad(field, std::to_string(n), "at most maxlevel * " + std::to_string(h.size_links_per_element_));
    if (n > r.left()) r.bad(field, std::to_string(n), "at most the " + std::to_string(r.left()) + " bytes left");
    h.element_levels_[i] = int(level);
    h.linkLists_[i] = nullptr;
    if (n) {
      h.linkLists_[i] = static_cast<char*>(std::malloc(n));
      if (!h.linkLists_[i]) throw std::runtime_error(path + ": out of memory reading link lists");
    }
    h.cur_element_count = i + 1;
    if (n) r.read(h.linkLists_[i], n, field.c_str());
  }
  std::vector<std::pair<int64_t, uint32_t>> dups;
  if (kind_has_dups(r.kind())) dups = read_duplicates(r, count);
  if (r.left() != 0) r.bad("payload", std::to_string(r.left()) + " trailing bytes", "none");

  // Graph checks: everything a search dereferences must be in range.
  for (size_t i = 0; i < count; ++i) {
    const auto id = hnswlib::tableint(i);
    const std::string el = "element " + std::to_string(i);
    if (h.isMarkedDeleted(id)) r.bad(el, "marked deleted", "no deleted elements");
    const auto label = h.getExternalLabel(id);
    if (!h.label_lookup_.emplace(label, id).second)
      r.bad(el + " label", std::to_string(int64_t(label)), "a label not used by an earlier element");
    const std::vector<float> v = from_stored(h.getDataByInternalId(id), storage, size_t(dim));
    for (int64_t d = 0; d < dim; ++d)
      if (!std::isfinite(v[size_t(d)]))
        r.bad(el + " component " + std::to_string(d), std::to_string(v[size_t(d)]), "a finite value");
    for (int level = 0; level <= h.element_levels_[i]; ++level) {
      auto* ll = level == 0 ? h.get_linklist0(id) : h.get_linklist(id, level);
      const size_t n = h.getListCount(ll);
      const size_t cap = level == 0 ? h.maxM0_ : h.maxM_;
      if (n > cap) r.bad(el + " level " + std::to_string(level) + " neighbour count", std::to_string(n), "<= " + std::to_string(cap));
      const auto* nb = reinterpret_cast<const hnswlib::tableint*>(ll + 1);
      for (size_t j = 0; j < n; ++j)
        if (nb[j] >= count || h.element_levels_[nb[j]] < level)
          r.bad(el + " level " + std::to_string(level) + " neighbour", std::to_string(nb[j]),
                "an element < " + std::to_string(count) + " present at that level");
    }
  }
  Impl& im = *impl;
  for (const auto& [id, rep] : dups) {
    if (h.label_lookup_.count(hnswlib::labeltype(id)))
      r.bad("duplicate id " + std::to_string(id), "the label of an element", "an id not in the graph");
    const auto rep_label = int64_t(h.getExternalLabel(rep));
    im.dup_rep.emplace(id, rep_label);
    im.dups_of[rep_label].push_back(id);
  }
  {
    auto code_of = [&im](uint32_t i) { return im.code_of(i); };
    for (size_t i = 0; i < count; ++i)
      if (im.codes.find(im.code_of(uint32_t(i)), im.code_size(), code_of) == CodeTable::kNone)
        im.codes.insert(uint32_t(i), im.code_size(), code_of);
  }
  if (count > 0) {
    if (h.element_levels_[enterpoint] != maxlevel)
      r.bad("level of the enterpoint", std::to_string(h.element_levels_[enterpoint]), std::to_string(maxlevel));
    h.enterpoint_node_ = enterpoint;
    h.maxlevel_ = maxlevel;
  }
  h.num_deleted_ = 0;
  h.setEf(size_t(params.ef_search));
  // One level draw per element inserted so far: a loaded index grows exactly like the one that was saved
  // (same inserts + same seed = same graph, whether or not it went through a file).
  for (size_t i = 0; i < count; ++i) (void)h.getRandomLevel(h.mult_);
  if (tag) *tag = r.header().tag;
  return std::unique_ptr<HnswIndex>(new HnswIndex(dim, p, std::move(impl)));
}

// ---------------------------------------------------------------------------------------------------------------
// MappedHnswIndex.

namespace {

// Visited set of one search: open addressing over element ids (ids + 1, 0 = empty), grown at half load.
class VisitedSet {
 public:
  VisitedSet() : slots_(4096, 0) {}
  // True if `id` was not in the set (and inserts it).
  bool insert(uint32_t id) {
    if (2 * (used_ + 1) > slots_.size()) grow();
    return put(slots_, id + 1);
  }

 private:
  bool put(std::vector<uint32_t>& slots, uint32_t key) {
    const size_t mask = slots.size() - 1;
    for (size_t i = (key * 2654435761u) & mask;; i = (i + 1) & mask) {
      if (slots[i] == key) return false;
      if (slots[i] == 0) {
        slots[i] = key;
        ++used_;
        return true;
      }
    }
  }
  void grow() {
    std::vector<uint32_t> bigger(slots_.size() * 2, 0);
    used_ = 0;
    for (uint32_t key : slots_)
      if (key) put(bigger, key);
    slots_.swap(bigger);
  }
  std::vector<uint32_t> slots_;
  size_t used_ = 0;
};

}  // namespace

struct MappedHnswIndex::Impl {
  std::string path;
  int64_t dim = 0;
  HnswParams::Storage storage = HnswParams::Storage::f32;
  Int8DotFn dot = int8_dot_fn(int8_dot_best());
  std::atomic<int> ef_search{64};
  int fd = -1;
  const char* base = nullptr;  // the whole file, read-only
  size_t file_bytes = 0;
  const char* level0 = nullptr;
  size_t count = 0, size_per_element = 0, offset_data = 0, label_offset = 0, max_m = 0, max_m0 = 0,
         size_links_per_element = 0;
  int maxlevel = -1;
  uint32_t enterpoint = 0;
  // Elements above level 0, ascending: their id, level and the file offset of their upper link lists.
  std::vector<uint32_t> upper_ids;
  std::vector<uint8_t> upper_levels;
  std::vector<uint64_t> upper_offsets;
  // Duplicates (ids not in the graph, sharing an element's stored vector): (id, element) by id, and
  // (element's label, id) by label.
  std::vector<std::pair<int64_t, uint32_t>> dups;
  std::vector<std::pair<int64_t, int64_t>> dups_by_label;

  ~Impl() {
    if (base) ::munmap(const_cast<char*>(base), file_bytes);
    if (fd >= 0) ::close(fd);
  }
  const char* element(uint32_t i) const { return level0 + size_t(i) * size_per_element; }
  int64_t label(uint32_t i) const {
    uint64_t l;
    std::memcpy(&l, element(i) + label_offset, 8);
    return int64_t(l);
  }
  float ip(const char* query, uint32_t i) const {
    const char* v = element(i) + offset_data;
    if (storage == HnswParams::Storage::i8) return ip_i8(query, v, size_t(dim), dot);
    return inner_product(reinterpret_cast<const float*>(query), reinterpret_cast<const float*>(v), dim);
  }
  // Neighbour list of element i at `level` (>= 1): count then ids. nullptr if i has no such level.
  const uint32_t* upper(uint32_t i, int level) const {
    auto it = std::lower_bound(upper_ids.begin(), upper_ids.end(), i);
    if (it == upper_ids.end() || *it != i) return nullptr;
    const size_t k = size_t(it - upper_ids.begin());
    if (level > upper_levels[k]) return nullptr;
    return reinterpret_cast<const uint32_t*>(base + upper_offsets[k] + size_t(level - 1) * size_links_per_element);
  }
  int level_of(uint32_t i) const {
    auto it = std::lower_bound(upper_ids.begin(), upper_ids.end(), i);
    return it != upper_ids.end() && *it == i ? upper_levels[size_t(it - upper_ids.begin())] : 0;
  }
  // The element labelled `id` (labels ascend), or count when there is none.
  size_t find(int64_t id) const {
    size_t lo = 0, hi = count;
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (label(uint32_t(mid)) < id)
        lo = mid + 1;
      else
        hi = mid;
    }
    return lo < count && label(uint32_t(lo)) == id ? lo : count;
  }
  // The element holding `id`'s vector (its own, or the one a duplicate shares), or count.
  size_t find_any(int64_t id) const {
    const size_t i = find(id);
    if (i < count || dups.empty()) return i;
    auto it = std::lower_bound(dups.begin(), dups.end(), std::pair<int64_t, uint32_t>{id, 0});
    return it != dups.end() && it->first == id ? it->second : count;
  }
};

MappedHnswIndex::MappedHnswIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MappedHnswIndex::~MappedHnswIndex() = default;

std::unique_ptr<MappedHnswIndex> MappedHnswIndex::open(const std::string& path, int64_t dim, int ef_search,
                                                       uint64_t* tag) {
  check_dim(dim, "MappedHnswIndex::open");
  if (ef_search < 1)
    throw std::invalid_argument("MappedHnswIndex::open: ef_search is " + std::to_string(ef_search) + ", expected >= 1");
  auto m = std::make_unique<Impl>();
  m->path = path;
  m->dim = dim;
  m->ef_search = ef_search;
  // Pass 1 (in IndexFileReader): header and payload CRC. Pass 2: every field, streamed.
  IndexFileReader r(path, kHnswMagics, dim);
  const HnswPreamble pre = read_preamble(r, dim);
  m->storage = pre.storage;
  const size_t count = pre.count, size_per_element = pre.size_per_element, label_offset = pre.label_offset,
               offset_data = pre.offset_data, max_m = pre.max_m, max_m0 = pre.max_m0;
  const int maxlevel = pre.maxlevel;
  const uint32_t enterpoint = pre.enterpoint;
  m->count = count;
  m->size_per_element = size_per_element;
  m->offset_data = offset_data;
  m->label_offset = label_offset;
  m->max_m = max_m;
  m->max_m0 = max_m0;
  m->size_links_per_element = max_m * 4 + 4;
  m->maxlevel = maxlevel;
  m->enterpoint = enterpoint;

  // Level 0, a block of elements at a time: neighbour counts and ids, labels ascending, finite vectors.
  std::vector<char> block;
  std::vector<float> v;
  int64_t previous_label = std::numeric_limits<int64_t>::min();
  // The labels, while the file is streamed (freed at the end of open): the duplicates are checked against them
  // without reading them through the mapping, which would make every page of the file resident.
  std::vector<int64_t> labels;
  labels.reserve(count);
  const size_t per_block = std::max<size_t>(1, (size_t(1) << 22) / size_per_element);
  for (size_t first = 0; first < count; first += per_block) {
    const size_t n = std::min(per_block, count - first);
    block.resize(n * size_per_element);
    r.read(block.data(), block.size(), "level-0 block");
    for (size_t j = 0; j < n; ++j) {
      const char* e = block.data() + j * size_per_element;
      const std::string el = "element " + std::to_string(first + j);
      uint16_t links;
      std::memcpy(&links, e, 2);
      if (e[2] != 0) r.bad(el, "marked deleted", "no deleted elements");
      if (links > max_m0) r.bad(el + " level 0 neighbour count", std::to_string(links), "<= " + std::to_string(max_m0));
      for (size_t k = 0; k < links; ++k) {
        uint32_t nb;
        std::memcpy(&nb, e + 4 + 4 * k, 4);
        if (nb >= count) r.bad(el + " level 0 neighbour", std::to_string(nb), "an element < " + std::to_string(count));
      }
      uint64_t label;
      std::memcpy(&label, e + label_offset, 8);
      if (int64_t(label) <= previous_label)
        r.bad(el + " label", std::to_string(int64_t(label)),
              "a label above the previous element's " + std::to_string(previous_label) + " (labels ascend)");
      previous_label = int64_t(label);
      labels.push_back(int64_t(label));
      v = from_stored(e + offset_data, m->storage, size_t(dim));
      for (int64_t d = 0; d < dim; ++d)
        if (!std::isfinite(v[size_t(d)]))
          r.bad(el + " component " + std::to_string(d), std::to_string(v[size_t(d)]), "a finite value");
    }
  }
  // Upper levels: sizes, then neighbour counts (their levels are checked once every level is known).
  uint64_t pos = kHeaderBytes + kHnswPreambleBytes + uint64_t(count) * size_per_element;
  for (size_t i = 0; i < count; ++i) {
    const auto n = r.pod<unsigned int>("linkListSize");
    pos += 4;
    const std::string field = "linkListSize of element " + std::to_string(i);
    if (n % m->size_links_per_element != 0)
      r.bad(field, std::to_string(n), "a multiple of " + std::to_string(m->size_links_per_element));
    const size_t level = n / m->size_links_per_element;
    if (level > size_t(std::max(maxlevel, 0))) r.bad(field, std::to_string(n), "at most maxlevel * " + std::to_string(m->size_links_per_element));
    if (n > r.left()) r.bad(field, std::to_string(n), "at most the " + std::to_string(r.left()) + " bytes left");
    if (n) {
      block.resize(n);
      r.read(block.data(), n, field.c_str());
      for (size_t l = 0; l < level; ++l) {
        uint16_t links;
        std::memcpy(&links, block.data() + l * m->size_links_per_element, 2);
        if (links > max_m)
          r.bad("element " + std::to_string(i) + " level " + std::to_string(l + 1) + " neighbour count",
                std::to_string(links), "<= " + std::to_string(max_m));
      }
      m->upper_ids.push_back(uint32_t(i));
      m->upper_levels.push_back(uint8_t(level));
      m->upper_offsets.push_back(pos);
    }
    pos += n;
  }
  uint64_t dup_bytes = 0;
  if (kind_has_dups(r.kind())) {
    dup_bytes = r.left();
    m->dups = read_duplicates(r, count);
  }
  if (r.left() != 0) r.bad("payload", std::to_string(r.left()) + " trailing bytes", "none");
  pos += dup_bytes;
  if (tag) *tag = r.header().tag;

  m->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (m->fd < 0) throw std::runtime_error(path + ": cannot open index file (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(m->fd, &st) != 0 || uint64_t(st.st_size) != pos)
    throw std::runtime_error(path + ": changed while it was being opened (size " + std::to_string(st.st_size) +
                             ", expected " + std::to_string(pos) + ")");
  m->file_bytes = size_t(pos);
  void* p = ::mmap(nullptr, m->file_bytes, PROT_READ, MAP_SHARED, m->fd, 0);
  if (p == MAP_FAILED) throw std::runtime_error(path + ": mmap failed (" + std::strerror(errno) + ")");
  m->base = static_cast<const char*>(p);
  m->level0 = m->base + kHeaderBytes + kHnswPreambleBytes;

  auto bad = [&](const std::string& field, const std::string& found, const std::string& expected) {
    throw std::invalid_argument(path + ": " + field + " is " + found + ", expected " + expected);
  };
  for (size_t k = 0; k < m->upper_ids.size(); ++k)
    for (int level = 1; level <= m->upper_levels[k]; ++level) {
      const uint32_t* ll = m->upper(m->upper_ids[k], level);
      const size_t n = *reinterpret_cast<const uint16_t*>(ll);
      for (size_t j = 0; j < n; ++j)
        if (ll[1 + j] >= count || m->level_of(ll[1 + j]) < level)
          bad("element " + std::to_string(m->upper_ids[k]) + " level " + std::to_string(level) + " neighbour",
              std::to_string(ll[1 + j]), "an element < " + std::to_string(count) + " present at that level");
    }
  if (count > 0 && m->level_of(enterpoint) != maxlevel)
    bad("level of the enterpoint", std::to_string(m->level_of(enterpoint)), std::to_string(maxlevel));
  for (const auto& [id, element] : m->dups) {
    if (std::binary_search(labels.begin(), labels.end(), id))
      bad("duplicate id " + std::to_string(id), "the label of an element", "an id not in the graph");
    m->dups_by_label.emplace_back(labels[element], id);
  }
  std::sort(m->dups_by_label.begin(), m->dups_by_label.end());
  return std::unique_ptr<MappedHnswIndex>(new MappedHnswIndex(std::move(m)));
}

int64_t MappedHnswIndex::dim() const { return impl_->dim; }

void MappedHnswIndex::set_ef_search(int ef_search) {
  if (ef_search < 1)
    throw std::invalid_argument("MappedHnswIndex::set_ef_search: ef_search is " + std::to_string(ef_search) + ", expected >= 1");
  impl_->ef_search = ef_search;
}

int MappedHnswIndex::ef_search() const { return impl_->ef_search; }
int64_t MappedHnswIndex::size() const { return int64_t(impl_->count + impl_->dups.size()); }
int64_t MappedHnswIndex::duplicates() const { return int64_t(impl_->dups.size()); }
uint64_t MappedHnswIndex::file_bytes() const { return impl_->file_bytes; }

std::pair<int64_t, int64_t> MappedHnswIndex::id_range() const {
  const Impl& m = *impl_;
  if (m.count == 0) return {0, -1};
  int64_t lo = m.label(0), hi = m.label(uint32_t(m.count - 1));
  if (!m.dups.empty()) {
    lo = std::min(lo, m.dups.front().first);
    hi = std::max(hi, m.dups.back().first);
  }
  return {lo, hi};
}

void MappedHnswIndex::add(int64_t id, const float*) {
  throw std::logic_error(impl_->path + ": MappedHnswIndex::add of id " + std::to_string(id) +
                         ": a mapped index is sealed (read-only)");
}

std::vector<SearchHit> MappedHnswIndex::search(const float* query, int k) const {
  const Impl& m = *impl_;
  if (k <= 0 || m.count == 0) return {};
  bool nonzero = false;
  std::vector<float> q = normalized(query, m.dim, "MappedHnswIndex::search: query", &nonzero);
  if (!nonzero) return {};
  const std::vector<char> stored = to_stored(q, m.storage);
  const char* qs = stored.data();
  auto dups_of = [&m](int64_t label, std::vector<int64_t>& out) {
    auto it = std::lower_bound(m.dups_by_label.begin(), m.dups_by_label.end(),
                               std::pair<int64_t, int64_t>{label, std::numeric_limits<int64_t>::min()});
    for (; it != m.dups_by_label.end() && it->first == label; ++it) out.push_back(it->second);
  };
  if (m.count <= size_t(kExactSearchMax)) {
    auto hits = exact_scan(
        m.count, k, [&](size_t i) { return m.ip(qs, uint32_t(i)); }, [&](size_t i) { return m.label(uint32_t(i)); });
    return m.dups.empty() ? hits : with_duplicates(hits, k, dups_of);
  }
  // Greedy descent through the upper levels (distance = 1 - inner product, as hnswlib).
  uint32_t cur = m.enterpoint;
  float cur_d = 1.0f - m.ip(qs, cur);
  for (int level = m.maxlevel; level > 0; --level) {
    for (bool changed = true; changed;) {
      changed = false;
      const uint32_t* ll = m.upper(cur, level);
      const size_t n = *reinterpret_cast<const uint16_t*>(ll);
      for (size_t j = 0; j < n; ++j) {
        const float d = 1.0f - m.ip(qs, ll[1 + j]);
        if (d < cur_d) {
          cur_d = d;
          cur = ll[1 + j];
          changed = true;
        }
      }
    }
  }
  // Best-first search of level 0 with max(ef_search, k) candidates.
  const size_t ef = std::max<size_t>(size_t(m.ef_search.load(std::memory_order_relaxed)), size_t(k));
  using Entry = std::pair<float, uint32_t>;
  std::priority_queue<Entry> top;                                              // farthest on top
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> frontier;  // nearest on top
  VisitedSet visited;
  visited.insert(cur);
  top.emplace(cur_d, cur);
  frontier.emplace(cur_d, cur);
  while (!frontier.empty()) {
    const auto [d, c] = frontier.top();
    if (d > top.top().first) break;  // as hnswlib: nothing left that could enter the top ef
    frontier.pop();
    const char* e = m.element(c);
    const size_t n = *reinterpret_cast<const uint16_t*>(e);
    const auto* nb = reinterpret_cast<const uint32_t*>(e + 4);
    // The neighbours' vectors are scattered over the file: ask for their cache lines before the first distance
    // is computed (hnswlib asks for the first; a 384-d int8 vector spans 6 or 7), up to 512 bytes each (32
    // neighbours' 1.5 KB float32 vectors would not fit in L1).
    const size_t ahead = std::min<size_t>(m.label_offset - m.offset_data, 512);
    for (size_t j = 0; j < n; ++j) {
      const char* v = m.element(nb[j]) + m.offset_data;
      for (size_t off = 0; off < ahead; off += 64) __builtin_prefetch(v + off);
    }
    for (size_t j = 0; j < n; ++j) {
      const uint32_t x = nb[j];
      if (!visited.insert(x)) continue;
      const float dx = 1.0f - m.ip(qs, x);
      if (top.size() < ef || dx < top.top().first) {
        frontier.emplace(dx, x);
        top.emplace(dx, x);
        if (top.size() > ef) top.pop();
      }
    }
  }
  while (top.size() > size_t(k)) top.pop();
  std::vector<SearchHit> hits;
  hits.reserve(top.size());
  for (; !top.empty(); top.pop()) hits.push_back({m.label(top.top().second), 1.0f - top.top().first});
  std::sort(hits.begin(), hits.end(), hit_before);
  return m.dups.empty() ? hits : with_duplicates(hits, k, dups_of);
}

bool MappedHnswIndex::contains(int64_t id) const { return impl_->find_any(id) < impl_->count; }

std::vector<float> MappedHnswIndex::vector(int64_t id) const {
  const Impl& m = *impl_;
  const size_t i = m.find_any(id);
  if (i == m.count)
    throw std::invalid_argument("MappedHnswIndex::vector: id " + std::to_string(id) + " is not in " + m.path);
  return from_stored(m.element(uint32_t(i)) + m.offset_data, m.storage, size_t(m.dim));
}

void MappedHnswIndex::save(const std::string& path, uint64_t tag) const {
  const Impl& m = *impl_;
  if (path == m.path) return;
  IndexFileWriter w(path);
  FileHeader h;
  std::memcpy(&h, m.base, sizeof h);
  w.write(m.base + kHeaderBytes, m.file_bytes - kHeaderBytes);
  w.finish(h.magic, h.dim, h.count, tag);
}

// ---------------------------------------------------------------------------------------------------------------
// BruteForceIndex.

struct BruteForceIndex::Impl {
  int64_t dim = 0;
  std::vector<int64_t> ids;
  std::vector<float> data;  // ids.size() * dim, unit (or zero) rows
  std::unordered_map<int64_t, size_t> row;
  mutable std::shared_mutex mutex;
};

BruteForceIndex::BruteForceIndex(int64_t dim) : impl_(std::make_unique<Impl>()) {
  check_dim(dim, "BruteForceIndex");
  impl_->dim = dim;
}

BruteForceIndex::~BruteForceIndex() = default;

int64_t BruteForceIndex::dim() const { return impl_->dim; }

int64_t BruteForceIndex::size() const {
  std::shared_lock lock(impl_->mutex);
  return int64_t(impl_->ids.size());
}

void BruteForceIndex::add(int64_t id, const float* vector) {
  const std::string what = "BruteForceIndex::add: vector of id " + std::to_string(id);
  std::vector<float> v = normalized(vector, impl_->dim, what.c_str());
  std::unique_lock lock(impl_->mutex);
  if (!impl_->row.emplace(id, impl_->ids.size()).second)
    throw std::invalid_argument("BruteForceIndex::add: id " + std::to_string(id) + " is already in the index, expected a new id");
  impl_->ids.push_back(id);
  impl_->data.insert(impl_->data.end(), v.begin(), v.end());
}

std::vector<SearchHit> BruteForceIndex::search(const float* query, int k) const {
  if (k <= 0) return {};
  bool nonzero = false;
  std::vector<float> q = normalized(query, impl_->dim, "BruteForceIndex::search: query", &nonzero);
  if (!nonzero) return {};
  std::shared_lock lock(impl_->mutex);
  const size_t n = impl_->ids.size();
  std::vector<SearchHit> all(n);
  for (size_t i = 0; i < n; ++i)
    all[i] = {impl_->ids[i], inner_product(q.data(), impl_->data.data() + i * size_t(impl_->dim), impl_->dim)};
  const size_t kk = std::min(n, size_t(k));
  std::partial_sort(all.begin(), all.begin() + std::ptrdiff_t(kk), all.end(), hit_before);
  all.resize(kk);
  return all;
}

bool BruteForceIndex::contains(int64_t id) const {
  std::shared_lock lock(impl_->mutex);
  return impl_->row.count(id) > 0;
}

std::vector<float> BruteForceIndex::vector(int64_t id) const {
  std::shared_lock lock(impl_->mutex);
  auto it = impl_->row.find(id);
  if (it == impl_->row.end())
    throw std::invalid_argument("BruteForceIndex::vector: id " + std::to_string(id) + " is not in the index");
  const float* p = impl_->data.data() + it->second * size_t(impl_->dim);
  return std::vector<float>(p, p + impl_->dim);
}

// Payload: count ids (i64) | count * dim floats.
void BruteForceIndex::save(const std::string& path, uint64_t tag) const {
  std::shared_lock lock(impl_->mutex);
  IndexFileWriter w(path);
  w.write(impl_->ids.data(), impl_->ids.size() * sizeof(int64_t));
  w.write(impl_->data.data(), impl_->data.size() * sizeof(float));
  w.finish(kBruteMagic, uint64_t(impl_->dim), impl_->ids.size(), tag);
}

std::unique_ptr<BruteForceIndex> BruteForceIndex::load(const std::string& path, int64_t dim, uint64_t* tag) {
  check_dim(dim, "BruteForceIndex::load");
  IndexFileReader r(path, {kBruteMagic}, dim);
  const uint64_t count = r.header().count;
  const uint64_t per = 8 + 4 * uint64_t(dim);
  if (count > r.left() / per || count * per != r.left())
    r.bad("count", std::to_string(count), std::to_string(r.left()) + " payload bytes / " + std::to_string(per));
  auto index = std::make_unique<BruteForceIndex>(dim);
  Impl& m = *index->impl_;
  m.ids.resize(count);
  m.data.resize(count * uint64_t(dim));
  r.read(m.ids.data(), count * 8, "ids");
  r.read(m.data.data(), count * uint64_t(dim) * 4, "vectors");
  for (size_t i = 0; i < count; ++i)
    if (!m.row.emplace(m.ids[i], i).second)
      r.bad("id of row " + std::to_string(i), std::to_string(m.ids[i]), "an id not used by an earlier row");
  for (size_t i = 0; i < m.data.size(); ++i)
    if (!std::isfinite(m.data[i]))
      r.bad("component " + std::to_string(i % size_t(dim)) + " of row " + std::to_string(i / size_t(dim)),
            std::to_string(m.data[i]), "a finite value");
  if (tag) *tag = r.header().tag;
  return index;
}

// ---------------------------------------------------------------------------------------------------------------
// Benchmark.

BenchResult bench_index(int64_t n, int64_t dim, int64_t n_queries, uint64_t seed) {
  using clock = std::chrono::steady_clock;
  if (n < 1 || dim < 1 || n_queries < 1)
    throw std::invalid_argument("bench_index: n, dim and n_queries must be >= 1, found n " + std::to_string(n) +
                                ", dim " + std::to_string(dim) + ", n_queries " + std::to_string(n_queries));
  BenchResult res;
  res.n = n;
  res.dim = dim;
  res.n_queries = n_queries;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  // Clustered data, as embeddings of text are: point = centre + 0.5 * noise, 100 points per centre; a query is a
  // stored point + 0.5 * fresh noise, so that it has true near neighbours. (On isotropic Gaussian data nearest
  // neighbours are nearly meaningless and HNSW recall at ef 64 collapses: 0.07 at 100k x 384.)
  const int64_t n_centres = std::max<int64_t>(1, n / 100);
  std::vector<float> centres(static_cast<size_t>(n_centres * dim));
  for (auto& x : centres) x = gauss(rng);
  std::vector<float> data(static_cast<size_t>(n * dim));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < dim; ++d) data[size_t(i * dim + d)] = centres[size_t((i % n_centres) * dim + d)] + 0.5f * gauss(rng);
  std::vector<float> queries(static_cast<size_t>(n_queries * dim));
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  for (int64_t q = 0; q < n_queries; ++q) {
    const int64_t j = pick(rng);
    for (int64_t d = 0; d < dim; ++d) queries[size_t(q * dim + d)] = data[size_t(j * dim + d)] + 0.5f * gauss(rng);
  }
  for (int64_t i = 0; i < n; ++i) {
    auto u = normalized(data.data() + i * dim, dim);
    std::copy(u.begin(), u.end(), data.begin() + i * dim);
  }

  HnswIndex index(dim);
  auto t0 = clock::now();
  for (int64_t i = 0; i < n; ++i) index.add(i, data.data() + i * dim);
  res.build_s = std::chrono::duration<double>(clock::now() - t0).count();
  res.insert_per_s = double(n) / res.build_s;

  constexpr int k = 10;
  std::vector<double> ms(static_cast<size_t>(n_queries));
  std::vector<std::vector<SearchHit>> found(static_cast<size_t>(n_queries));
  for (int64_t q = 0; q < n_queries; ++q) {
    auto t = clock::now();
    found[size_t(q)] = index.search(queries.data() + q * dim, k);
    ms[size_t(q)] = std::chrono::duration<double, std::milli>(clock::now() - t).count();
  }
  double sum = 0;
  for (double x : ms) sum += x;
  res.query_mean_ms = sum / double(n_queries);
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double p) { return ms[std::min(ms.size() - 1, size_t(p * double(ms.size() - 1) + 0.5))]; };
  res.query_p50_ms = pct(0.50);
  res.query_p99_ms = pct(0.99);

  // Exact top-k over the normalized data for the first queries.
  res.recall_queries = std::min<int64_t>(n_queries, 100);
  double recall = 0;
  for (int64_t q = 0; q < res.recall_queries; ++q) {
    auto qv = normalized(queries.data() + q * dim, dim);
    std::vector<SearchHit> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[size_t(i)] = {i, inner_product(qv.data(), data.data() + i * dim, dim)};
    std::partial_sort(all.begin(), all.begin() + k, all.end(), hit_before);
    int got = 0;
    for (int j = 0; j < k && j < int(all.size()); ++j)
      for (const auto& h : found[size_t(q)])
        if (h.id == all[size_t(j)].id) ++got;
    recall += double(got) / double(std::min<int64_t>(k, n));
  }
  res.recall_at_10 = recall / double(res.recall_queries);
  spdlog::info("bench_index: n={} dim={} insert {:.0f}/s query p50 {:.3f} ms p99 {:.3f} ms recall@10 {:.3f}", n, dim,
               res.insert_per_s, res.query_p50_ms, res.query_p99_ms, res.recall_at_10);
  return res;
}

}  // namespace sinkflow
