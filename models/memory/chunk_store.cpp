#include "models/memory/chunk_store.h"

#include "models/io/field_error.h"
#include "models/io/json_read.h"
#include "models/io/limits.h"
#include "models/io/message_text.h"
#include "models/memory/int8_dot.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <tuple>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string_view>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace sinkflow {

namespace fs = std::filesystem;
static_assert(std::endian::native == std::endian::little, "chunks.log is written in native (little-endian) order");

namespace {

constexpr uint32_t kRecordMagic = 0x4B434653;  // bytes "SFCK"
constexpr uint64_t kRecordHeader = 16;         // u32 magic | u32 crc | u64 payload length
constexpr int kFormatVersion = 1;
constexpr const char* kFormatName = "sinkflow-chunk-store";

std::string errno_text() { return std::strerror(errno); }

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

// ----- payload encoding -----------------------------------------------------------------------------------------

struct ParseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Writer {
 public:
  std::string buf;
  template <typename T>
  void pod(const T& v) {
    buf.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void bytes(const void* p, size_t n) { buf.append(static_cast<const char*>(p), n); }
};

class Reader {
 public:
  Reader(const char* p, size_t n) : begin_(p), p_(p), left_(n) {}
  void bytes(void* out, uint64_t n, const char* what) {
    need(n, what);
    if (n) std::memcpy(out, p_, size_t(n));
    skip(n);
  }
  template <typename T>
  T pod(const char* what) {
    T v;
    bytes(&v, sizeof v, what);
    return v;
  }
  void need(uint64_t n, const char* what) const {
    if (n > left_)
      throw ParseError(std::string(what) + " needs " + std::to_string(n) + " bytes, " + std::to_string(left_) +
                       " left in the record");
  }
  void skip(uint64_t n) {
    p_ += n;
    left_ -= n;
  }
  const char* here() const { return p_; }
  uint64_t left() const { return left_; }
  uint64_t offset() const { return uint64_t(p_ - begin_); }

 private:
  const char* begin_;
  const char* p_;
  uint64_t left_;
};

uint8_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 1;
    case at::kHalf: return 2;
    case at::kBFloat16: return 3;
    case at::kDouble: return 4;
    default: return 0;
  }
}

at::ScalarType dtype_of_code(uint8_t c) {
  switch (c) {
    case 1: return at::kFloat;
    case 2: return at::kHalf;
    case 3: return at::kBFloat16;
    default: return at::kDouble;
  }
}

// `kv` is CPU, contiguous, supported dtype (checked by the caller).
std::string encode(const Chunk& c, int64_t id, const std::vector<float>& embedding, const at::Tensor& kv) {
  Writer w;
  w.buf.resize(kRecordHeader);  // header filled in by the caller
  w.pod(id);
  w.pod(c.stream_id);
  w.pod(c.n_overlap);
  w.pod(uint64_t(c.tokens.size()));
  w.bytes(c.tokens.data(), c.tokens.size() * 8);
  w.bytes(c.positions.data(), c.positions.size() * 8);
  w.pod(uint64_t(c.text.size()));
  w.bytes(c.text.data(), c.text.size());
  w.pod(uint64_t(embedding.size()));
  w.bytes(embedding.data(), embedding.size() * 4);
  if (!kv.defined()) {
    w.pod(uint8_t(0));
  } else {
    w.pod(dtype_code(kv.scalar_type()));
    w.pod(uint8_t(kv.dim()));
    for (int64_t d = 0; d < kv.dim(); ++d) w.pod(int64_t(kv.size(d)));
    w.bytes(kv.data_ptr(), kv.nbytes());
  }
  return std::move(w.buf);
}

// Decodes a payload whose CRC has been checked. Throws ParseError on inconsistent content.
Chunk decode(const char* p, uint64_t n, int64_t dim, bool load_kv, std::vector<float>* embedding = nullptr) {
  Reader r(p, n);
  Chunk c;
  c.id = r.pod<int64_t>("id");
  c.stream_id = r.pod<int64_t>("stream_id");
  c.n_overlap = r.pod<int64_t>("n_overlap");
  const auto n_tok = r.pod<uint64_t>("token count");
  if (n_tok > r.left() / 16) throw ParseError("token count " + std::to_string(n_tok) + " exceeds the record");
  if (c.n_overlap < 0 || uint64_t(c.n_overlap) > n_tok)
    throw ParseError("n_overlap " + std::to_string(c.n_overlap) + " is outside [0, " + std::to_string(n_tok) + "]");
  c.tokens.resize(n_tok);
  c.positions.resize(n_tok);
  r.bytes(c.tokens.data(), n_tok * 8, "tokens");
  r.bytes(c.positions.data(), n_tok * 8, "positions");
  const auto n_text = r.pod<uint64_t>("text length");
  r.need(n_text, "text");
  c.text.assign(r.here(), size_t(n_text));
  r.skip(n_text);
  const auto n_emb = r.pod<uint64_t>("embedding length");
  if (n_emb != uint64_t(dim))
    throw ParseError("embedding length " + std::to_string(n_emb) + ", expected " + std::to_string(dim));
  r.need(n_emb * 4, "embedding");
  if (embedding) {
    embedding->resize(n_emb);
    std::memcpy(embedding->data(), r.here(), n_emb * 4);
  }
  for (uint64_t i = 0; i < n_emb; ++i) {
    float x;
    std::memcpy(&x, r.here() + 4 * i, 4);
    if (!std::isfinite(x)) throw ParseError("embedding component " + std::to_string(i) + " is not finite");
  }
  r.skip(n_emb * 4);
  const auto code = r.pod<uint8_t>("kv dtype");
  if (code > 4) throw ParseError("kv dtype code " + std::to_string(code) + ", expected 0..4");
  if (code != 0) {
    const auto ndim = r.pod<uint8_t>("kv ndim");
    if (ndim != 5) throw ParseError("kv has " + std::to_string(ndim) + " dims, expected 5");
    std::vector<int64_t> shape(ndim);
    uint64_t numel = 1;
    for (auto& s : shape) {
      s = r.pod<int64_t>("kv shape");
      if (s < 0) throw ParseError("kv shape has a negative size " + std::to_string(s));
      if (s != 0 && numel > r.left() / uint64_t(s)) throw ParseError("kv shape exceeds the record");
      numel *= uint64_t(s);
    }
    if (uint64_t(shape[3]) != n_tok)
      throw ParseError("kv token dim is " + std::to_string(shape[3]) + ", expected " + std::to_string(n_tok));
    const uint64_t elem = code == 1 ? 4 : code == 4 ? 8 : 2;
    if (numel > r.left() / elem) throw ParseError("kv data exceeds the record");
    const uint64_t nbytes = numel * elem;
    r.need(nbytes, "kv data");
    if (load_kv) {
      c.kv = at::empty(shape, at::TensorOptions().dtype(dtype_of_code(code)));
      if (nbytes) std::memcpy(c.kv.data_ptr(), r.here(), size_t(nbytes));
    }
    r.skip(nbytes);
  }
  if (r.left() != 0) throw ParseError(std::to_string(r.left()) + " trailing bytes after the kv field");
  return c;
}

uint32_t record_crc(uint64_t len, const char* payload) { return crc32(payload, size_t(len), crc32(&len, 8)); }

void pread_all(int fd, void* buf, uint64_t n, uint64_t off, const std::string& path) {
  auto* p = static_cast<char*>(buf);
  while (n) {
    ssize_t got = ::pread(fd, p, size_t(std::min<uint64_t>(n, 1u << 30)), off_t(off));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw std::runtime_error(path + ": read of " + std::to_string(n) + " bytes at byte offset " +
                               std::to_string(off) + " failed (" + (got == 0 ? "end of file" : errno_text()) + ")");
    p += got;
    n -= uint64_t(got);
    off += uint64_t(got);
  }
}

void fsync_dir(const fs::path& dir) {
  int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    out.flush();
    if (!out) throw std::runtime_error(tmp.string() + ": cannot write (" + errno_text() + ")");
  }
  int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw std::runtime_error(path.string() + ": cannot rename " + tmp.string() + " into place (" + ec.message() + ")");
  fsync_dir(path.parent_path());
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Chunker.

Chunker::Chunker(int64_t chunk_size, int64_t overlap) : chunk_size_(chunk_size), overlap_(overlap) {
  if (chunk_size < 1) throw std::invalid_argument("Chunker: chunk_size is " + std::to_string(chunk_size) + ", expected >= 1");
  if (overlap < 0 || overlap >= chunk_size)
    throw std::invalid_argument("Chunker: overlap is " + std::to_string(overlap) + ", expected [0, " +
                                std::to_string(chunk_size - 1) + "] (below chunk_size " + std::to_string(chunk_size) + ")");
}

namespace {

// Emits the chunks that the pending tokens of `s` complete (all of them, the last one short, when `final`).
template <typename Stream>
std::vector<Chunk> emit_ready(int64_t stream_id, Stream& s, int64_t chunk_size, int64_t overlap, bool final) {
  std::vector<Chunk> out;
  size_t head = 0;
  at::Tensor all_kv;
  while (true) {
    const size_t avail = s.tokens.size() - head;
    size_t need = size_t(chunk_size) - s.tail_tokens.size();
    if (avail == 0) break;
    if (avail < need) {
      if (!final) break;
      need = avail;
    }
    Chunk c;
    c.stream_id = stream_id;
    c.n_overlap = int64_t(s.tail_tokens.size());
    c.tokens = s.tail_tokens;
    c.positions = s.tail_positions;
    c.tokens.insert(c.tokens.end(), s.tokens.begin() + std::ptrdiff_t(head), s.tokens.begin() + std::ptrdiff_t(head + need));
    c.positions.insert(c.positions.end(), s.positions.begin() + std::ptrdiff_t(head),
                       s.positions.begin() + std::ptrdiff_t(head + need));
    if (s.kv_state == 1) {
      if (!all_kv.defined()) all_kv = s.kv.size() == 1 ? s.kv[0] : at::cat(s.kv, 3);
      at::Tensor part = all_kv.narrow(3, int64_t(head), int64_t(need));
      c.kv = s.tail_kv.defined() ? at::cat({s.tail_kv, part}, 3) : part.clone(at::MemoryFormat::Contiguous);
    }
    const size_t len = c.tokens.size();
    const size_t t = std::min(size_t(overlap), len);
    s.tail_tokens.assign(c.tokens.end() - std::ptrdiff_t(t), c.tokens.end());
    s.tail_positions.assign(c.positions.end() - std::ptrdiff_t(t), c.positions.end());
    s.tail_kv = (s.kv_state == 1 && t > 0)
                    ? c.kv.narrow(3, int64_t(len - t), int64_t(t)).clone(at::MemoryFormat::Contiguous)
                    : at::Tensor();
    head += need;
    out.push_back(std::move(c));
  }
  if (head > 0) {
    s.tokens.erase(s.tokens.begin(), s.tokens.begin() + std::ptrdiff_t(head));
    s.positions.erase(s.positions.begin(), s.positions.begin() + std::ptrdiff_t(head));
    if (s.kv_state == 1) {
      const int64_t rest = int64_t(s.tokens.size());
      at::Tensor remainder = rest > 0 ? all_kv.narrow(3, int64_t(head), rest).clone(at::MemoryFormat::Contiguous) : at::Tensor();
      s.kv.clear();
      if (remainder.defined()) s.kv.push_back(std::move(remainder));
    }
  }
  return out;
}

std::string shape_str(const at::Tensor& t) {
  std::ostringstream o;
  o << t.sizes();
  return o.str();
}

}  // namespace

std::vector<Chunk> Chunker::feed(int64_t stream_id, const std::vector<int64_t>& tokens,
                                 const std::vector<int64_t>& positions, const at::Tensor& kv) {
  const std::string who = "Chunker::feed (stream " + std::to_string(stream_id) + "): ";
  if (tokens.size() != positions.size())
    throw std::invalid_argument(who + "positions has " + std::to_string(positions.size()) + " entries, expected " +
                                std::to_string(tokens.size()) + " (one per token)");
  Stream& s = streams_[stream_id];
  const int64_t n = int64_t(tokens.size());
  if (kv.defined()) {
    if (kv.dim() != 5)
      throw std::invalid_argument(who + "kv has shape " + shape_str(kv) +
                                  ", expected 5 dims [n_layer, 2, n_kv_head, n_tok, d_head]");
    if (kv.size(3) != n)
      throw std::invalid_argument(who + "kv has shape " + shape_str(kv) + ", expected n_tok (dim 3) = " +
                                  std::to_string(n) + " (the number of tokens)");
    if (n > 0 && s.kv_state == 0)
      throw std::invalid_argument(who + "kv given, expected none (the stream was fed without kv before)");
    if (s.kv_like.defined()) {
      const auto& r = s.kv_like;
      if (kv.scalar_type() != r.scalar_type() || kv.device() != r.device() || kv.size(0) != r.size(0) ||
          kv.size(1) != r.size(1) || kv.size(2) != r.size(2) || kv.size(4) != r.size(4))
        throw std::invalid_argument(who + "kv has shape " + shape_str(kv) + " " + std::string(c10::toString(kv.scalar_type())) +
                                    ", expected [" + std::to_string(r.size(0)) + ", " + std::to_string(r.size(1)) +
                                    ", " + std::to_string(r.size(2)) + ", n_tok, " + std::to_string(r.size(4)) +
                                    "] " + c10::toString(r.scalar_type()) + " on the same device as before");
    }
  } else if (n > 0 && s.kv_state == 1) {
    throw std::invalid_argument(who + "kv missing, expected one (the stream was fed with kv before)");
  }
  if (n == 0) return {};
  if (s.kv_state == -1) {
    s.kv_state = kv.defined() ? 1 : 0;
    if (kv.defined()) s.kv_like = kv.narrow(3, 0, 0).clone();  // dtype, device and dims, no data
  }
  s.tokens.insert(s.tokens.end(), tokens.begin(), tokens.end());
  s.positions.insert(s.positions.end(), positions.begin(), positions.end());
  if (kv.defined()) s.kv.push_back(kv.clone(at::MemoryFormat::Contiguous));  // never alias the caller's buffer
  return emit_ready(stream_id, s, chunk_size_, overlap_, false);
}

std::vector<Chunk> Chunker::flush() {
  std::vector<Chunk> out;
  for (auto& [id, s] : streams_) {
    auto c = emit_ready(id, s, chunk_size_, overlap_, true);
    for (auto& x : c) out.push_back(std::move(x));
  }
  return out;
}

int64_t Chunker::pending() const {
  int64_t n = 0;
  for (const auto& [id, s] : streams_) n += int64_t(s.tokens.size());
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Selection.

void SelectOptions::validate() const {
  if (k < 0 || k > kMaxRetrieved)
    throw FieldError("k", "SelectOptions: k is " + std::to_string(k) + ", expected [0, " + std::to_string(kMaxRetrieved) + "]");
  if (candidates < 0 || candidates > kMaxCandidates)
    throw FieldError("candidates", "SelectOptions: candidates is " + std::to_string(candidates) + ", expected [0, " +
                                       std::to_string(kMaxCandidates) + "]");
  if (!(mmr_lambda >= 0.0f && mmr_lambda <= 1.0f))
    throw FieldError("mmr_lambda", "SelectOptions: mmr_lambda is " + std::to_string(mmr_lambda) + ", expected [0, 1]");
  if (std::isnan(min_score) || min_score < -1.0f || min_score > 1.0f)
    throw FieldError("min_score", "SelectOptions: min_score is " + std::to_string(min_score) + ", expected [-1, 1]");
}

std::vector<SearchHit> select(const VectorIndex& index, const float* query, const SelectOptions& o) {
  o.validate();
  if (o.k == 0) return {};
  const int64_t pool = std::max(o.candidates, o.k);
  const int64_t fetch = std::min<int64_t>(pool + int64_t(o.exclude.size()), std::numeric_limits<int>::max());
  std::vector<SearchHit> cand;
  for (const auto& h : index.search(query, int(fetch))) {
    if (o.exclude.count(h.id) || h.score < o.min_score) continue;
    cand.push_back(h);
    if (int64_t(cand.size()) == pool) break;
  }
  const size_t k = std::min(cand.size(), size_t(o.k));
  if (o.mode == SelectOptions::Mode::topk || k <= 1) {
    cand.resize(k);
    return cand;
  }
  // Pairwise similarities from the stored (unit) vectors.
  const int64_t dim = index.dim();
  std::vector<std::vector<float>> vec;
  vec.reserve(cand.size());
  for (const auto& h : cand) vec.push_back(index.vector(h.id));
  auto sim = [&](size_t a, size_t b) {
    double s = 0;
    for (int64_t i = 0; i < dim; ++i) s += double(vec[a][size_t(i)]) * double(vec[b][size_t(i)]);
    return s;
  };
  const size_t n = cand.size();
  std::vector<bool> taken(n, false);
  std::vector<double> closest(n, -std::numeric_limits<double>::infinity());  // max sim to the selected
  std::vector<SearchHit> out;
  out.reserve(k);
  const bool mmr = o.mode == SelectOptions::Mode::mmr;
  const double lambda = o.mmr_lambda;
  size_t pick = 0;  // both modes start with the most similar candidate
  while (true) {
    taken[pick] = true;
    out.push_back(cand[pick]);
    if (out.size() == k) break;
    for (size_t i = 0; i < n; ++i)
      if (!taken[i]) closest[i] = std::max(closest[i], sim(i, pick));
    double best = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < n; ++i) {
      if (taken[i]) continue;
      // farthest: maximize min distance = 1 - max sim, i.e. minimize max sim.
      const double value = mmr ? lambda * double(cand[i].score) - (1.0 - lambda) * closest[i] : -closest[i];
      if (value > best) {  // strict: ties keep the more similar candidate
        best = value;
        pick = i;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// ChunkStore.

void StoreOptions::validate() const {
  if (embedder_name.empty()) throw std::invalid_argument("StoreOptions: embedder_name is empty, expected an Embedder::name()");
  if (dim < 1) throw std::invalid_argument("StoreOptions: dim is " + std::to_string(dim) + ", expected >= 1");
  hnsw.validate();
  if (index_ram_mb < 0 || index_ram_mb > (int64_t(1) << 30))
    throw FieldError("index_ram_mb", "StoreOptions: index_ram_mb is " + std::to_string(index_ram_mb) +
                                         ", expected [0, 2^30] MiB (0 = never seal)");
  if (segment_chunks < 0 || segment_chunks >= (int64_t(1) << 32) - 2)
    throw FieldError("segment_chunks", "StoreOptions: segment_chunks is " + std::to_string(segment_chunks) +
                                           ", expected [0, 2^32 - 2) (0 = from index_ram_mb)");
  if (index_first_ram_mb < 0 || index_first_ram_mb > (int64_t(1) << 30))
    throw FieldError("index_first_ram_mb", "StoreOptions: index_first_ram_mb is " + std::to_string(index_first_ram_mb) +
                                               ", expected [0, 2^30] MiB (0 = index_ram_mb)");
  if (first_segment_chunks < 0 || first_segment_chunks >= (int64_t(1) << 32) - 2)
    throw FieldError("first_segment_chunks", "StoreOptions: first_segment_chunks is " +
                                                 std::to_string(first_segment_chunks) +
                                                 ", expected [0, 2^32 - 2) (0 = from index_first_ram_mb)");
  if (merge_factor < 0 || merge_factor == 1 || merge_factor > 64)
    throw FieldError("merge_factor", "StoreOptions: merge_factor is " + std::to_string(merge_factor) +
                                         ", expected 0 (never merge) or [2, 64]");
  if (search_threads < 1 || search_threads > 64)
    throw FieldError("search_threads", "StoreOptions: search_threads is " + std::to_string(search_threads) +
                                           ", expected [1, 64]");
  if (merge_nice < 0 || merge_nice > 19)
    throw FieldError("merge_nice", "StoreOptions: merge_nice is " + std::to_string(merge_nice) + ", expected [0, 19]");
  if (merge_ram_mb < 0 || merge_ram_mb > (int64_t(1) << 30))
    throw FieldError("merge_ram_mb", "StoreOptions: merge_ram_mb is " + std::to_string(merge_ram_mb) +
                                         ", expected [0, 2^30] MiB");
}

int64_t StoreOptions::effective_segment_chunks() const {
  if (index != IndexKind::hnsw) return 0;
  if (segment_chunks > 0) return segment_chunks;
  if (index_ram_mb == 0) return 0;
  return std::max<int64_t>(1024, (index_ram_mb << 20) / HnswIndex::bytes_per_element(dim, hnsw));
}

int64_t StoreOptions::effective_first_segment_chunks() const {
  const int64_t full = effective_segment_chunks();
  if (full == 0) return 0;
  if (first_segment_chunks > 0) return std::min(first_segment_chunks, full);
  if (segment_chunks > 0 || index_first_ram_mb == 0) return full;
  return std::min(full, std::max<int64_t>(1024, (index_first_ram_mb << 20) / HnswIndex::bytes_per_element(dim, hnsw)));
}

int64_t StoreOptions::seal_chunks(int64_t sealed) const {
  return std::clamp(sealed, effective_first_segment_chunks(), effective_segment_chunks());
}

std::string store_segment_file(int64_t k) {
  char b[40];
  std::snprintf(b, sizeof b, "segment-%06lld.bin", static_cast<long long>(k));
  return b;
}

bool is_store_segment_file(const std::string& name) {
  std::string_view n = name;
  if (n.size() > 4 && n.substr(n.size() - 4) == ".tmp") n.remove_suffix(4);
  constexpr std::string_view prefix = "segment-", suffix = ".bin";
  if (n.size() < prefix.size() + 6 + suffix.size() || n.substr(0, prefix.size()) != prefix ||
      n.substr(n.size() - suffix.size()) != suffix)
    return false;
  const std::string_view digits = n.substr(prefix.size(), n.size() - prefix.size() - suffix.size());
  return digits.size() <= 18 && std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
}

ChunkStore::ChunkStore(std::string dir, StoreOptions options) : dir_(std::move(dir)), options_(std::move(options)) {}

std::string ChunkStore::log_path() const { return (fs::path(dir_) / kStoreLogFile).string(); }
std::string ChunkStore::index_path() const { return (fs::path(dir_) / kStoreIndexFile).string(); }
std::string ChunkStore::segment_path(int64_t k) const { return (fs::path(dir_) / store_segment_file(k)).string(); }

std::unique_ptr<ChunkStore> ChunkStore::open(const std::string& dir, const StoreOptions& options) {
  options.validate();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create the memory directory (" + ec.message() + ")");
  std::unique_ptr<ChunkStore> store(new ChunkStore(dir, options));

  const fs::path meta = fs::path(dir) / kStoreMetaFile;
  const std::string meta_s = meta.string();
  if (fs::exists(meta)) {
    const auto bytes = fs::file_size(meta, ec);
    if (ec || bytes > (1u << 20))
      throw std::invalid_argument(meta_s + ": size is " + (ec ? ec.message() : std::to_string(bytes) + " bytes") +
                                  ", expected a small JSON object");
    const nlohmann::json j = read_json_file(meta_s, JsonLimits{16, 1u << 20});
    auto field = [&](const char* name, nlohmann::json::value_t t1, nlohmann::json::value_t t2) -> const nlohmann::json& {
      if (!j.is_object() || !j.contains(name) || (j[name].type() != t1 && j[name].type() != t2))
        throw std::invalid_argument(meta_s + ": field '" + name + "' is " +
                                    (j.is_object() && j.contains(name) ? json_preview(j[name]) : std::string("missing")) +
                                    ", expected a " + (t1 == nlohmann::json::value_t::string ? "string" : "number"));
      return j[name];
    };
    using vt = nlohmann::json::value_t;
    const auto format = field("format", vt::string, vt::string).get<std::string>();
    if (format != kFormatName)
      throw std::invalid_argument(meta_s + ": format is '" + format + "', expected '" + kFormatName + "'");
    const auto version = field("version", vt::number_unsigned, vt::number_integer).get<int64_t>();
    if (version != kFormatVersion)
      throw std::invalid_argument(meta_s + ": version is " + std::to_string(version) + ", expected " +
                                  std::to_string(kFormatVersion));
    const auto embedder = field("embedder", vt::string, vt::string).get<std::string>();
    if (embedder != options.embedder_name)
      throw std::invalid_argument(meta_s + ": embedder is '" + embedder + "', expected '" + options.embedder_name +
                                  "' (the embedder of this run)");
    const auto dim = field("dim", vt::number_unsigned, vt::number_integer).get<int64_t>();
    if (dim != options.dim)
      throw std::invalid_argument(meta_s + ": dim is " + std::to_string(dim) + ", expected " + std::to_string(options.dim) +
                                  " (the embedder of this run)");
    // The log is created with meta.json and deleted only with the index files (MemoryDirLock::reset): index files
    // without it index records that are gone, and starting empty would hide that.
    const std::string log = store->log_path();
    for (const std::string& derived : {store->index_path(), store->segment_path(0)})
      if (!fs::exists(log) && fs::exists(derived))
        throw std::invalid_argument(log + ": missing beside " + derived + " (the records it indexes are lost); reset "
                                    "the memory directory to start it empty");
  } else {
    const fs::path log = fs::path(dir) / kStoreLogFile;
    if (fs::exists(log) && fs::file_size(log, ec) > 0)
      throw std::invalid_argument(meta_s + ": missing, expected it beside a non-empty " + log.string() +
                                  " (cannot check which embedder wrote it)");
    nlohmann::json j = {{"format", kFormatName},
                        {"version", kFormatVersion},
                        {"embedder", options.embedder_name},
                        {"dim", options.dim}};
    write_file_atomic(meta, j.dump(2) + "\n");
  }

  {
    std::vector<uint32_t> crcs;
    store->scan_log(crcs);
    store->open_index(crcs);
  }
  if (store->segmented_ && store->segment_chunks_ > 0 && options.merge_factor >= 2 && options.merge_ram_mb > 0) {
    ChunkStore* self = store.get();
    store->merger_ = std::thread([self] { self->merge_loop(); });
    store->request_merge();
  }
  static const char* fsync_names[] = {"none", "flush", "every"};
  spdlog::info("chunk_store: dir={} embedder={} dim={} records={} index={} storage={} ({}) segment_chunks={} "
               "(first {}) sealed={} fsync={}",
               dir, options.embedder_name, options.dim, store->offsets_.size(), store->index_->name(),
               options.hnsw.storage == HnswParams::Storage::i8 ? "i8" : "f32",
               options.hnsw.storage == HnswParams::Storage::i8 ? int8_dot_kernel_name(int8_dot_best()) : "float",
               store->segment_chunks_,
               options.effective_first_segment_chunks(),
               store->sealed_segments(), fsync_names[int(options.fsync)]);
  return store;
}

namespace {

// Checks the record at `pos`; returns an empty string and fills `payload`/`len`/`crc` if it is complete and its
// CRC matches, else the reason.
std::string check_record(int fd, const std::string& path, uint64_t pos, uint64_t size, std::string& payload,
                         uint64_t& len, uint32_t& crc) {
  if (size - pos < kRecordHeader)
    return "header of " + std::to_string(size - pos) + " bytes, expected " + std::to_string(kRecordHeader);
  char h[kRecordHeader];
  pread_all(fd, h, kRecordHeader, pos, path);
  uint32_t magic;
  std::memcpy(&magic, h, 4);
  std::memcpy(&crc, h + 4, 4);
  std::memcpy(&len, h + 8, 8);
  if (magic != kRecordMagic) return "magic " + hex32(magic) + ", expected " + hex32(kRecordMagic) + " (\"SFCK\")";
  if (len > size - pos - kRecordHeader)
    return "payload length " + std::to_string(len) + ", beyond the end of the file (" +
           std::to_string(size - pos - kRecordHeader) + " bytes left)";
  payload.resize(size_t(len));
  pread_all(fd, payload.data(), len, pos + kRecordHeader, path);
  const uint32_t got = record_crc(len, payload.data());
  if (got != crc) return "CRC32 " + hex32(crc) + ", computed " + hex32(got);
  return {};
}

// The offset of the first valid record that starts in [from, size), if any.
std::optional<uint64_t> find_valid_record(int fd, const std::string& path, uint64_t from, uint64_t size) {
  constexpr uint64_t kBlock = 1 << 20;
  std::string block, payload;
  uint64_t len;
  uint32_t crc;
  const char magic[4] = {'S', 'F', 'C', 'K'};
  for (uint64_t at = from; at + 4 <= size;) {
    const uint64_t n = std::min(kBlock, size - at);
    block.resize(size_t(n));
    pread_all(fd, block.data(), n, at, path);
    for (size_t i = 0; i + 4 <= block.size(); ++i)
      if (std::memcmp(block.data() + i, magic, 4) == 0 && check_record(fd, path, at + i, size, payload, len, crc).empty())
        return at + i;
    if (at + n >= size) break;
    at += n - 3;  // a magic may straddle blocks
  }
  return std::nullopt;
}

}  // namespace

void ChunkStore::scan_log(std::vector<uint32_t>& crcs) {
  const std::string path = log_path();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot open (" + errno_text() + ")");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0)
    throw std::runtime_error(path + ": locked (" + errno_text() + "), expected no other open ChunkStore on " + dir_);
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw std::runtime_error(path + ": stat failed (" + errno_text() + ")");
  const uint64_t size = uint64_t(st.st_size);
  uint64_t pos = 0;
  std::string payload;
  while (pos < size) {
    uint64_t len = 0;
    uint32_t crc = 0;
    const std::string bad = check_record(fd_, path, pos, size, payload, len, crc);
    if (!bad.empty()) {
      if (auto next = find_valid_record(fd_, path, pos + 1, size))
        throw std::invalid_argument(path + ": record " + std::to_string(offsets_.size()) + " at byte offset " +
                                    std::to_string(pos) + " is corrupt (" + bad + ") but a valid record follows at byte offset " +
                                    std::to_string(*next) + "; expected corruption only at the tail (refusing to drop data)");
      spdlog::warn("chunk_store: {}: dropping {} bytes at byte offset {}, a torn or corrupt last record ({}); keeping {} records",
                   path, size - pos, pos, bad, offsets_.size());
      if (::ftruncate(fd_, off_t(pos)) != 0 || ::fsync(fd_) != 0)
        throw std::runtime_error(path + ": cannot truncate to " + std::to_string(pos) + " bytes (" + errno_text() + ")");
      break;
    }
    Chunk c;
    try {
      c = decode(payload.data(), len, options_.dim, false);
    } catch (const ParseError& e) {
      throw std::invalid_argument(path + ": record " + std::to_string(offsets_.size()) + " at byte offset " +
                                  std::to_string(pos) + " has a valid CRC32 but " + e.what());
    }
    if (c.id != int64_t(offsets_.size()))
      throw std::invalid_argument(path + ": record at byte offset " + std::to_string(pos) + " has id " +
                                  std::to_string(c.id) + ", expected " + std::to_string(offsets_.size()) +
                                  " (its position in the log)");
    offsets_.push_back(pos);
    crcs.push_back(crc);
    digest_ = crc32(&crc, 4, digest_);
    pos += kRecordHeader + len;
  }
  end_ = pos;
}

namespace {

// Chained CRC32 of crcs[first, last).
uint32_t range_digest(const std::vector<uint32_t>& crcs, int64_t first, int64_t last) {
  uint32_t d = 0;
  for (int64_t i = first; i < last; ++i) d = crc32(&crcs[size_t(i)], 4, d);
  return d;
}

}  // namespace

namespace {

// Capacity of a new in-RAM segment: what it holds now (a rebuild's records), else HnswParams::initial_capacity;
// it doubles as vectors come (HnswIndex::add). Not the whole segment up front: hnswlib touches a mutex, a level and
// a visited-list entry per element of capacity at once (~54 B each: 5.7 MB for a 105K-vector segment), which the
// first 10^6 tokens would pay in full.
int64_t segment_capacity(const HnswParams& p, int64_t at_least) { return std::max(p.initial_capacity, at_least); }

}  // namespace

std::unique_ptr<HnswIndex> ChunkStore::build_hnsw(int64_t first, int64_t last) const {
  HnswParams p = options_.hnsw;
  p.initial_capacity = segment_capacity(p, last - first);
  auto index = std::make_unique<HnswIndex>(options_.dim, p);
  std::vector<float> emb(size_t(options_.dim));
  for (int64_t i = first; i < last; ++i) {
    read_embedding(i, emb.data());
    index->add(i, emb.data());
  }
  return index;
}

std::vector<std::unique_ptr<MappedHnswIndex>> ChunkStore::open_segments(const std::vector<uint32_t>& crcs) {
  const int64_t n = int64_t(offsets_.size());
  struct Candidate {
    int64_t number, lo, hi;
    std::unique_ptr<MappedHnswIndex> seg;
  };
  std::vector<Candidate> valid;
  bool removed = false;
  // Every segment file, checked on its own.
  std::vector<std::pair<int64_t, std::string>> files;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (!is_store_segment_file(name) || !e.is_regular_file()) continue;
    if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp") {
      spdlog::info("chunk_store: deleting {} (a segment file left unfinished)", e.path().string());
      fs::remove(e.path());
      removed = true;
      continue;
    }
    files.emplace_back(std::stoll(name.substr(8, name.size() - 12)), e.path().string());
  }
  std::sort(files.begin(), files.end());
  for (const auto& [number, path] : files) {
    std::string reason;
    try {
      uint64_t tag = 0;
      auto seg = MappedHnswIndex::open(path, options_.dim, options_.hnsw.ef_search, &tag);
      const auto [lo, hi] = seg->id_range();
      if (seg->size() == 0 || lo < 0 || hi != lo + seg->size() - 1 || hi >= n)
        reason = "it covers ids " + std::to_string(lo) + ".." + std::to_string(hi) + " (" + std::to_string(seg->size()) +
                 " vectors), expected a contiguous range within the log's " + std::to_string(n) + " records";
      else if (tag != range_digest(crcs, lo, hi + 1))
        reason = "its digest " + hex32(uint32_t(tag)) + " is not that of records " + std::to_string(lo) + ".." +
                 std::to_string(hi) + " of the log (" + hex32(range_digest(crcs, lo, hi + 1)) + ")";
      if (reason.empty()) {
        valid.push_back({number, lo, hi, std::move(seg)});
        continue;
      }
    } catch (const std::exception& e) {
      reason = e.what();
    }
    // Derived data that no longer fits the log: rebuilt below.
    spdlog::info("chunk_store: deleting {} ({})", path, reason);
    fs::remove(path);
    removed = true;
  }
  // The chain from id 0: at each step the segment that starts at the next id and reaches furthest (the lower
  // number on a tie); where none starts there, a segment's worth of records rebuilt from the log.
  std::vector<std::unique_ptr<MappedHnswIndex>> sealed;
  std::vector<bool> used(valid.size(), false);
  std::set<int64_t> numbers;
  for (const auto& c : valid) numbers.insert(c.number);
  auto lowest_free = [&numbers] {
    int64_t k = 0;
    while (numbers.count(k)) ++k;
    return k;
  };
  // Deletes the unused segments that start before `before` (the chain has passed them).
  auto drop_passed = [&](int64_t before) {
    for (size_t i = 0; i < valid.size(); ++i) {
      if (used[i] || valid[i].lo >= before) continue;
      used[i] = true;
      Candidate& c = valid[i];
      std::string by;
      for (const auto& [lo, rest] : chain_)
        if (lo <= c.hi && rest.first >= c.lo) by += (by.empty() ? "" : ", ") + store_segment_file(rest.second);
      spdlog::info("chunk_store: deleting {} (it covers ids {}..{}, {})", segment_path(c.number), c.lo, c.hi,
                   by.empty() ? "expected a segment starting at id " + std::to_string(sealed_end_) : "already covered by " + by);
      c.seg.reset();
      fs::remove(segment_path(c.number));
      numbers.erase(c.number);
      removed = true;
    }
  };
  for (;;) {
    int best = -1;
    for (size_t i = 0; i < valid.size(); ++i)
      if (valid[i].lo == sealed_end_ && (best < 0 || valid[i].hi > valid[size_t(best)].hi)) best = int(i);
    if (best >= 0) {
      Candidate& c = valid[size_t(best)];
      used[size_t(best)] = true;
      c.seg->set_ef_search(segment_ef(c.seg->size()));
      chain_[c.lo] = {c.hi, c.number};
      sealed.push_back(std::move(c.seg));
      sealed_end_ = c.hi + 1;
      continue;
    }
    const int64_t want = options_.seal_chunks(sealed_end_);  // as add() seals
    if (want <= 0 || n - sealed_end_ < want) break;
    drop_passed(sealed_end_);  // before a free number is chosen
    const int64_t k = lowest_free(), last = sealed_end_ + want;
    numbers.insert(k);
    spdlog::info("chunk_store: rebuilding {} from records {}..{} of the log", segment_path(k), sealed_end_, last - 1);
    build_hnsw(sealed_end_, last)->save(segment_path(k), range_digest(crcs, sealed_end_, last));
    sealed.push_back(MappedHnswIndex::open(segment_path(k), options_.dim, segment_ef(want)));
    chain_[sealed_end_] = {last - 1, k};
    sealed_end_ = last;
  }
  drop_passed(std::numeric_limits<int64_t>::max());
  if (removed) fsync_dir(dir_);
  numbers_ = numbers;
  return sealed;
}

int ChunkStore::segment_ef(int64_t size) const {
  const double ratio = segment_chunks_ > 0 ? double(size) / double(segment_chunks_) : 1.0;
  return int(std::lround(double(options_.hnsw.ef_search) * std::sqrt(std::max(1.0, ratio))));
}

// Gives the heap's free pages back to the OS after a segment was sealed or merged: the freed graph's blocks below
// glibc's mmap threshold (link lists, per-element locks and lookup nodes) otherwise stay resident until reused.
namespace {
void release_free_heap() {
#ifdef __GLIBC__
  ::malloc_trim(0);
#endif
}
}  // namespace

int64_t ChunkStore::take_segment_number() {
  std::lock_guard lock(files_mutex_);
  int64_t k = 0;
  while (numbers_.count(k)) ++k;
  numbers_.insert(k);
  return k;
}

void ChunkStore::release_segment_number(int64_t k) {
  std::lock_guard lock(files_mutex_);
  numbers_.erase(k);
}

void ChunkStore::open_index(const std::vector<uint32_t>& crcs) {
  const std::string path = index_path();
  const bool hnsw = options_.index == StoreOptions::IndexKind::hnsw;
  segment_chunks_ = options_.effective_segment_chunks();
  std::vector<std::unique_ptr<MappedHnswIndex>> sealed;
  if (hnsw) sealed = open_segments(crcs);
  const int64_t n = int64_t(offsets_.size()) - sealed_end_;  // records the in-RAM index covers
  const uint32_t digest = range_digest(crcs, sealed_end_, int64_t(offsets_.size()));
  active_digest_ = digest;
  std::unique_ptr<VectorIndex> idx;
  std::string reason;
  if (fs::exists(path)) {
    try {
      uint64_t tag = 0;
      if (hnsw)
        idx = HnswIndex::load(path, options_.dim, options_.hnsw, &tag);
      else
        idx = BruteForceIndex::load(path, options_.dim, &tag);
      if (idx->size() != n || tag != digest) {
        reason = "it covers " + std::to_string(idx->size()) + " records (digest " + hex32(uint32_t(tag)) +
                 "), the log holds " + std::to_string(n) + (sealed_end_ > 0 ? " after the sealed segments" : "") +
                 " (digest " + hex32(digest) + ")";
        idx.reset();
      }
      // Its n labels must be the ids of those records (a search would otherwise return ids the log lacks).
      for (int64_t id = sealed_end_; idx && id < int64_t(offsets_.size()); ++id)
        if (!idx->contains(id)) {
          reason = "it does not hold id " + std::to_string(id) + ", one of the records it covers";
          idx.reset();
        }
    } catch (const std::exception& e) {
      reason = e.what();
      idx.reset();
    }
  } else {
    reason = "missing";
  }
  if (!idx) {
    if (n > 0) spdlog::info("chunk_store: rebuilding {} from {} records of the log ({})", path, n, reason);
    if (hnsw) {
      idx = build_hnsw(sealed_end_, int64_t(offsets_.size()));
    } else {
      idx = std::make_unique<BruteForceIndex>(options_.dim);
      std::vector<float> emb(size_t(options_.dim));
      for (int64_t i = 0; i < n; ++i) {
        read_embedding(i, emb.data());
        idx->add(i, emb.data());
      }
    }
    index_dirty_ = true;
  }
  if (hnsw) {
    std::unique_ptr<HnswIndex> active(static_cast<HnswIndex*>(idx.release()));
    auto seg = std::make_unique<SegmentedIndex>(options_.dim, std::move(sealed), std::move(active),
                                                [this](int64_t id, float* out) { read_embedding(id, out); },
                                                options_.hnsw.initial_capacity, options_.search_threads);
    segmented_ = seg.get();
    index_ = std::move(seg);
  } else {
    index_ = std::move(idx);
  }
}

ChunkStore::~ChunkStore() {
  if (merger_.joinable()) {
    stopping_ = true;
    {
      std::lock_guard lock(merge_mutex_);
      merge_stop_ = true;
    }
    merge_cv_.notify_all();
    merger_.join();
  }
  if (index_) {
    try {
      flush();
    } catch (const std::exception& e) {
      spdlog::error("chunk_store: {}: flush on close failed: {}", dir_, e.what());
    }
  }
  if (fd_ >= 0) ::close(fd_);
}

int64_t ChunkStore::add(const Chunk& chunk, const std::vector<float>& embedding) {
  std::lock_guard writer(writer_);
  const std::string who = "ChunkStore::add (" + log_path() + "): ";
  if (int64_t(embedding.size()) != options_.dim)
    throw std::invalid_argument(who + "embedding has " + std::to_string(embedding.size()) + " floats, expected dim " +
                                std::to_string(options_.dim));
  normalized(embedding.data(), options_.dim, (who + "embedding").c_str());  // throws on non-finite values
  if (chunk.positions.size() != chunk.tokens.size())
    throw std::invalid_argument(who + "chunk has " + std::to_string(chunk.positions.size()) + " positions, expected " +
                                std::to_string(chunk.tokens.size()) + " (one per token)");
  if (chunk.n_overlap < 0 || chunk.n_overlap > int64_t(chunk.tokens.size()))
    throw std::invalid_argument(who + "chunk n_overlap is " + std::to_string(chunk.n_overlap) + ", expected [0, " +
                                std::to_string(chunk.tokens.size()) + "]");
  at::Tensor kv;
  if (chunk.kv.defined()) {
    if (chunk.kv.dim() != 5 || chunk.kv.size(3) != int64_t(chunk.tokens.size()))
      throw std::invalid_argument(who + "chunk kv has shape " + shape_str(chunk.kv) + ", expected [n_layer, 2, n_kv_head, " +
                                  std::to_string(chunk.tokens.size()) + ", d_head]");
    if (dtype_code(chunk.kv.scalar_type()) == 0)
      throw std::invalid_argument(who + "chunk kv has dtype " + std::string(c10::toString(chunk.kv.scalar_type())) +
                                  ", expected Float, Half, BFloat16 or Double");
    kv = chunk.kv.to(at::kCPU).contiguous();
  }
  const int64_t id = int64_t(offsets_.size());  // only this (writer) thread changes offsets_
  std::string buf = encode(chunk, id, embedding, kv);
  const uint64_t len = buf.size() - kRecordHeader;
  const uint32_t crc = record_crc(len, buf.data() + kRecordHeader);
  std::memcpy(buf.data(), &kRecordMagic, 4);
  std::memcpy(buf.data() + 4, &crc, 4);
  std::memcpy(buf.data() + 8, &len, 8);

  const std::string path = log_path();
  auto roll_back = [&](const char* op) {
    const std::string err = errno_text();
    if (::ftruncate(fd_, off_t(end_)) != 0)
      spdlog::error("chunk_store: {}: cannot truncate back to {} bytes after a failed {}", path, end_, op);
    throw std::runtime_error(path + ": " + op + " of record " + std::to_string(id) + " failed (" + err + ")");
  };
  const char* p = buf.data();
  uint64_t left = buf.size(), at = end_;
  while (left) {
    ssize_t put = ::pwrite(fd_, p, size_t(std::min<uint64_t>(left, 1u << 30)), off_t(at));
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) roll_back("write");
    p += put;
    left -= uint64_t(put);
    at += uint64_t(put);
  }
  if (options_.fsync == StoreOptions::Fsync::every && ::fsync(fd_) != 0) roll_back("fsync");
  {
    std::unique_lock lock(mutex_);
    offsets_.push_back(end_);
    end_ += buf.size();
  }
  digest_ = crc32(&crc, 4, digest_);
  active_digest_ = crc32(&crc, 4, active_digest_);
  index_->add(id, embedding.data());
  index_dirty_ = true;
  if (segmented_ && segment_chunks_ > 0 && segmented_->active().size() >= options_.seal_chunks(sealed_end_)) {
    try {
      seal();
    } catch (const std::exception& e) {  // the chunk is stored and indexed: only the sealing is postponed
      spdlog::error("chunk_store: {}: sealing the in-RAM index failed ({}); retried at the next add", dir_, e.what());
    }
  }
  return id;
}

void ChunkStore::seal() {
  const int64_t k = take_segment_number();
  const std::string path = segment_path(k);
  const int64_t count = segmented_->active().size();
  try {
    segmented_->active().save(path, active_digest_);
    segmented_->seal(MappedHnswIndex::open(path, options_.dim, segment_ef(count)));
  } catch (...) {
    release_segment_number(k);
    throw;
  }
  {
    std::lock_guard lock(files_mutex_);
    chain_[sealed_end_] = {sealed_end_ + count - 1, k};
  }
  sealed_end_ += count;
  release_free_heap();
  request_merge();
  active_digest_ = 0;
  index_dirty_ = true;  // index.bin still holds the sealed vectors: the next flush writes the empty segment
  spdlog::info("chunk_store: sealed ids {}..{} into {}", sealed_end_ - count, sealed_end_ - 1, path);
}

void ChunkStore::request_merge() {
  if (!merger_.joinable()) return;
  {
    std::lock_guard lock(merge_mutex_);
    merge_wanted_ = true;
  }
  merge_cv_.notify_all();
}

void ChunkStore::wait_merges() {
  std::unique_lock lock(merge_mutex_);
  merge_cv_.wait(lock, [this] { return merge_stop_ || (!merge_wanted_ && !merge_busy_); });
}

void ChunkStore::merge_loop() {
  // Below the decode path (this thread only).
  if (options_.merge_nice > 0) ::setpriority(PRIO_PROCESS, pid_t(::syscall(SYS_gettid)), options_.merge_nice);
  for (;;) {
    {
      std::unique_lock lock(merge_mutex_);
      merge_cv_.wait(lock, [this] { return merge_stop_ || merge_wanted_; });
      if (merge_stop_) break;
      merge_wanted_ = false;
      merge_busy_ = true;
    }
    try {
      while (merge_once()) {
      }
    } catch (const std::exception& e) {
      // The segments stay as they are (searches are unaffected); the next seal asks again.
      spdlog::error("chunk_store: {}: merging sealed segments failed: {}", dir_, e.what());
    }
    {
      std::lock_guard lock(merge_mutex_);
      merge_busy_ = false;
    }
    merge_cv_.notify_all();
  }
  std::lock_guard lock(merge_mutex_);
  merge_busy_ = false;
  merge_cv_.notify_all();
}

bool ChunkStore::merge_once() {
  const int64_t f = options_.merge_factor;
  const int64_t cap = std::max<int64_t>(
      1, (options_.merge_ram_mb << 20) / HnswIndex::bytes_per_element(options_.dim, options_.hnsw));
  std::vector<std::tuple<int64_t, int64_t, int64_t>> tiers;  // lo, hi, number
  {
    std::lock_guard lock(files_mutex_);
    for (const auto& [lo, rest] : chain_) tiers.emplace_back(lo, rest.first, rest.second);
  }
  auto tier_of = [&](int64_t size) {
    int t = 0;
    for (int64_t bound = segment_chunks_ * f; size >= bound && t < 40; bound *= f) ++t;
    return t;
  };
  // The first run of f adjacent segments of one tier that fits the RAM cap.
  size_t first = tiers.size();
  for (size_t i = 0; i + size_t(f) <= tiers.size() && first == tiers.size(); ++i) {
    const int t = tier_of(std::get<1>(tiers[i]) - std::get<0>(tiers[i]) + 1);
    bool run = true;
    for (size_t j = i + 1; j < i + size_t(f) && run; ++j)
      run = tier_of(std::get<1>(tiers[j]) - std::get<0>(tiers[j]) + 1) == t;
    if (run && std::get<1>(tiers[i + size_t(f) - 1]) - std::get<0>(tiers[i]) + 1 <= cap) first = i;
  }
  if (first == tiers.size()) return false;
  const int64_t lo = std::get<0>(tiers[first]), hi = std::get<1>(tiers[first + size_t(f) - 1]);
  const auto t0 = std::chrono::steady_clock::now();
  // Built from the log's embeddings, as a rebuild would (same inserts, same seed: the same graph).
  HnswParams p = options_.hnsw;
  p.initial_capacity = hi - lo + 1;
  auto index = std::make_unique<HnswIndex>(options_.dim, p);
  std::vector<float> emb(size_t(options_.dim));
  uint32_t digest = 0;
  for (int64_t id = lo; id <= hi; ++id) {
    if ((id & 1023) == 0 && stopping_) return false;
    uint32_t crc = 0;
    read_embedding(id, emb.data(), &crc);
    digest = crc32(&crc, 4, digest);
    index->add(id, emb.data());
  }
  const int64_t k = take_segment_number();
  const std::string path = segment_path(k);
  std::unique_ptr<MappedHnswIndex> merged;
  try {
    index->save(path, digest);
    index.reset();
    merged = MappedHnswIndex::open(path, options_.dim, segment_ef(hi - lo + 1));
  } catch (...) {
    std::error_code ec;
    fs::remove(path, ec);
    release_segment_number(k);
    throw;
  }
  if (options_.merge_hook) options_.merge_hook("saved");
  auto old = segmented_->replace(lo, hi, std::move(merged));
  std::vector<int64_t> old_numbers;
  {
    std::lock_guard lock(files_mutex_);
    for (size_t j = first; j < first + size_t(f); ++j) {
      chain_.erase(std::get<0>(tiers[j]));
      old_numbers.push_back(std::get<2>(tiers[j]));
    }
    chain_[lo] = {hi, k};
  }
  old.clear();  // unmapped
  release_free_heap();  // the merged graph's small blocks (link lists, locks, lookup), freed above
  for (size_t j = 0; j < old_numbers.size(); ++j) {
    fs::remove(segment_path(old_numbers[j]));
    if (j == 0 && options_.merge_hook) options_.merge_hook("deleted-one");
  }
  fsync_dir(dir_);
  for (int64_t n : old_numbers) release_segment_number(n);
  ++merges_done_;
  spdlog::info("chunk_store: merged ids {}..{} of {} segments into {} ({:.1f} s)", lo, hi, f, path,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return true;
}

int64_t ChunkStore::sealed_segments() const { return segmented_ ? segmented_->sealed_count() : 0; }
uint64_t ChunkStore::sealed_bytes() const { return segmented_ ? segmented_->sealed_bytes() : 0; }

std::pair<uint64_t, uint64_t> ChunkStore::record_span(int64_t id, const char* who) const {
  std::shared_lock lock(mutex_);
  if (id < 0 || id >= int64_t(offsets_.size()))
    throw std::invalid_argument(std::string(who) + ": id " + std::to_string(id) + " is not in " + log_path() +
                                ", expected [0, " + std::to_string(offsets_.size()) + ")");
  const uint64_t begin = offsets_[size_t(id)];
  return {begin, size_t(id) + 1 < offsets_.size() ? offsets_[size_t(id) + 1] : end_};
}

// The whole record [offset, end), its header and CRC checked against what was scanned at open.
std::string ChunkStore::read_record(uint64_t offset, uint64_t end) const {
  const std::string path = log_path();
  std::string rec(size_t(end - offset), '\0');
  pread_all(fd_, rec.data(), end - offset, offset, path);
  uint32_t magic, crc;
  uint64_t len;
  std::memcpy(&magic, rec.data(), 4);
  std::memcpy(&crc, rec.data() + 4, 4);
  std::memcpy(&len, rec.data() + 8, 8);
  const uint32_t got = magic == kRecordMagic && len == end - offset - kRecordHeader
                           ? record_crc(len, rec.data() + kRecordHeader)
                           : ~crc;
  if (got != crc)
    throw std::runtime_error(path + ": record at byte offset " + std::to_string(offset) + " has CRC32 " + hex32(got) +
                             ", expected " + hex32(crc) + " and " + std::to_string(end - offset - kRecordHeader) +
                             " payload bytes (the file changed after it was opened)");
  return rec;
}

// Reads the fields before the embedding from a prefix of the record (one pread in the common case: 64 tokens
// and their text take ~1.2 KB), then the embedding. Not CRC-checked: the record was checked at open.
void ChunkStore::read_embedding(int64_t id, float* out, uint32_t* crc) const {
  const auto [offset, end] = record_span(id, "ChunkStore::embedding");
  const std::string path = log_path();
  const uint64_t emb_bytes = uint64_t(options_.dim) * 4;
  std::string buf(size_t(std::min<uint64_t>(end - offset, 4096 + emb_bytes)), '\0');
  pread_all(fd_, buf.data(), buf.size(), offset, path);
  if (crc) std::memcpy(crc, buf.data() + 4, 4);
  auto bad = [&](const std::string& what) {
    return std::runtime_error(path + ": record at byte offset " + std::to_string(offset) + ": " + what +
                              " (the file changed after it was opened)");
  };
  auto u64_at = [&](uint64_t at) {
    if (at + 8 > buf.size()) {
      if (offset + at + 8 > end) throw bad("field at payload byte " + std::to_string(at) + " beyond the record");
      buf.resize(size_t(std::min<uint64_t>(end - offset, at + 8 + 8 + emb_bytes + 4096)));
      pread_all(fd_, buf.data(), buf.size(), offset, path);
    }
    uint64_t v;
    std::memcpy(&v, buf.data() + at, 8);
    return v;
  };
  uint64_t at = kRecordHeader + 24;  // id, stream_id, n_overlap
  const uint64_t n_tok = u64_at(at);
  if (n_tok > (end - offset) / 16) throw bad("token count " + std::to_string(n_tok) + " beyond the record");
  at += 8 + 16 * n_tok;
  const uint64_t n_text = u64_at(at);
  if (n_text > end - offset) throw bad("text length " + std::to_string(n_text) + " beyond the record");
  at += 8 + n_text;
  const uint64_t n_emb = u64_at(at);
  at += 8;
  if (n_emb != uint64_t(options_.dim) || offset + at + emb_bytes > end)
    throw bad("embedding length " + std::to_string(n_emb) + ", expected " + std::to_string(options_.dim));
  if (at + emb_bytes <= buf.size())
    std::memcpy(out, buf.data() + at, size_t(emb_bytes));
  else
    pread_all(fd_, out, emb_bytes, offset + at, path);
}

Chunk ChunkStore::get(int64_t id, bool load_kv) const {
  const auto [offset, end] = record_span(id, "ChunkStore::get");
  const std::string rec = read_record(offset, end);
  try {
    return decode(rec.data() + kRecordHeader, end - offset - kRecordHeader, options_.dim, load_kv);
  } catch (const ParseError& e) {
    throw std::runtime_error(log_path() + ": record at byte offset " + std::to_string(offset) + ": " + e.what());
  }
}

std::vector<float> ChunkStore::embedding(int64_t id) const {
  std::vector<float> emb(size_t(options_.dim));
  read_embedding(id, emb.data());
  return emb;
}

std::vector<SearchHit> ChunkStore::search(const std::vector<float>& query, const SelectOptions& options) const {
  if (int64_t(query.size()) != options_.dim)
    throw std::invalid_argument("ChunkStore::search (" + dir_ + "): query has " + std::to_string(query.size()) +
                                " floats, expected dim " + std::to_string(options_.dim));
  return select(*index_, query.data(), options);
}

std::vector<SearchHit> ChunkStore::search(const std::vector<float>& query, int k) const {
  SelectOptions o;
  o.k = k;
  o.candidates = k;
  return search(query, o);
}

int64_t ChunkStore::size() const {
  std::shared_lock lock(mutex_);
  return int64_t(offsets_.size());
}

void ChunkStore::flush() {
  std::lock_guard writer(writer_);
  if (options_.fsync != StoreOptions::Fsync::none && ::fsync(fd_) != 0)
    throw std::runtime_error(log_path() + ": fsync failed (" + errno_text() + ")");
  if (segmented_ && segment_chunks_ > 0 && segmented_->active().size() >= options_.seal_chunks(sealed_end_))
    seal();  // a retry
  if (index_dirty_) {
    index_->save(index_path(), segmented_ ? active_digest_ : digest_);
    index_dirty_ = false;
  }
}

}  // namespace sinkflow
