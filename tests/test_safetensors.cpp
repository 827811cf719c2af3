// The safetensors reader/writer: byte layout, round trips, and every bad-input path with its message.
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "models/io/safetensors.h"
#include "models/nn/runtime.h"

// ATen pulls in glog, whose one-argument CHECK macro would replace Catch's: include Catch last.
#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    std::random_device device;
    path = fs::temp_directory_path() / ("sinkflow-test-safetensors-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter++) + "-" + std::to_string(device()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code error;
    fs::remove_all(path, error);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

// A file made by hand: length, header text, `data_bytes` zero bytes.
std::string write_raw(const TempDir& dir, const std::string& header, size_t data_bytes) {
  const std::string path = dir.file("raw.safetensors");
  write_bytes(path, le64(header.size()) + header + std::string(data_bytes, '\0'));
  return path;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.contiguous(), y = b.contiguous();
  return x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes() && x.nbytes() == y.nbytes() &&
         (x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0);
}

}  // namespace

TEST_CASE("safetensors: F32/F16/BF16 round trip is bit-exact", "[safetensors]") {
  TempDir dir;
  const at::Tensor base = at::randn({5, 7}, at::kFloat) * 1000.0;
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"a.f32", base},
      {"b.f16", base.to(at::kHalf)},
      {"c.bf16", base.to(at::kBFloat16)},
  };
  // A few values with special bit patterns.
  at::Tensor special = at::tensor({0.0f, -0.0f, INFINITY, -INFINITY, 1e-42f /* subnormal */, 65504.0f}, at::kFloat);
  tensors.emplace_back("d.special_f32", special);
  tensors.emplace_back("e.special_f16", special.to(at::kHalf));
  tensors.emplace_back("f.special_bf16", special.to(at::kBFloat16));
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, tensors);

  SafetensorsFile file(path);
  REQUIRE(file.names() == std::vector<std::string>{"a.f32", "b.f16", "c.bf16", "d.special_f32", "e.special_f16",
                                                   "f.special_bf16"});
  CHECK(file.entry("a.f32").dtype == "F32");
  CHECK(file.entry("b.f16").dtype == "F16");
  CHECK(file.entry("c.bf16").dtype == "BF16");
  CHECK(file.entry("a.f32").shape == std::vector<int64_t>{5, 7});
  for (const auto& [name, tensor] : tensors) {
    INFO(name);
    at::Tensor loaded = file.tensor(name);
    CHECK(loaded.device() == at::kCPU);
    CHECK(same_bytes(loaded, tensor));
  }
}

TEST_CASE("safetensors: integer, bool, scalar and empty tensors and metadata round trip", "[safetensors]") {
  TempDir dir;
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"i64", at::tensor(std::vector<int64_t>{-1, 2, int64_t(1) << 40}, at::kLong)},
      {"i32", at::tensor({-7, 8}, at::kInt)},
      {"i16", at::tensor({-3, 300}, at::kShort)},
      {"i8", at::tensor({-128, 127}, at::kChar)},
      {"u8", at::tensor({0, 255}, at::kByte)},
      {"bool", at::tensor({1, 0, 1}, at::kByte).to(at::kBool)},
      {"f64", at::tensor({3.141592653589793}, at::kDouble)},
      {"scalar", at::scalar_tensor(2.5, at::kFloat)},
      {"empty", at::empty({0, 4}, at::kFloat)},
  };
  const std::string path = dir.file("x.safetensors");
  save_safetensors(path, tensors, {{"format", "pt"}, {"note", "hello"}});
  SafetensorsFile file(path);
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "hello"}});
  CHECK(file.entry("bool").dtype == "BOOL");
  CHECK(file.entry("u8").dtype == "U8");
  CHECK(file.entry("scalar").shape.empty());
  CHECK(file.entry("empty").shape == std::vector<int64_t>{0, 4});
  CHECK(file.entry("empty").data_begin == file.entry("empty").data_end);
  for (const auto& [name, tensor] : tensors) {
    INFO(name);
    CHECK(same_bytes(file.tensor(name), tensor));
  }
  CHECK(file.tensor("i64")[2].item<int64_t>() == (int64_t(1) << 40));
}

TEST_CASE("safetensors: byte layout follows the spec", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("layout.safetensors");
  save_safetensors(path, {{"w", at::tensor({1.0f, 2.0f}, at::kFloat)}, {"b", at::tensor({3.0f}, at::kFloat)}});
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK((8 + n) % 8 == 0);
  REQUIRE(bytes.size() == 8 + n + 12);
  const std::string header = bytes.substr(8, n);
  CHECK(header.front() == '{');
  // Padding is spaces after the closing brace.
  const size_t close = header.rfind('}');
  CHECK(header.find_first_not_of(' ', close + 1) == std::string::npos);
  CHECK(header.find("\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}") != std::string::npos);
  CHECK(header.find("\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}") != std::string::npos);
  float values[3];
  std::memcpy(values, bytes.data() + 8 + n, 12);
  CHECK(values[0] == 1.0f);
  CHECK(values[1] == 2.0f);
  CHECK(values[2] == 3.0f);
}

TEST_CASE("safetensors: non-contiguous input is saved in logical order, tensors outlive the file", "[safetensors]") {
  TempDir dir;
  const at::Tensor m = at::arange(6, at::kFloat).reshape({2, 3});
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"t", m.t()}});
  at::Tensor loaded;
  {
    SafetensorsFile file(path);
    loaded = file.tensor("t");
  }
  fs::remove(path);  // the mapping stays valid after unlink
  REQUIRE(loaded.sizes() == at::IntArrayRef({3, 2}));
  CHECK(at::equal(loaded, m.t()));
  loaded.add_(1.0);  // private mapping: writable, never reaches a file
  CHECK(loaded[0][1].item<float>() == 4.0f);
}

TEST_CASE("safetensors: misaligned tensors are read correctly", "[safetensors]") {
  TempDir dir;
  // 3 bytes of U8, then an F32 at data offset 3.
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[1],"data_offsets":[3,7]}})";
  std::string padded = header;
  while ((8 + padded.size()) % 8) padded += ' ';
  float value = 1.5f;
  std::string data("\x01\x02\x03", 3);
  data.append(reinterpret_cast<const char*>(&value), 4);
  const std::string path = dir.file("m.safetensors");
  write_bytes(path, le64(padded.size()) + padded + data);
  SafetensorsFile file(path);
  CHECK(file.tensor("b").item<float>() == 1.5f);
  CHECK(file.tensor("a")[2].item<uint8_t>() == 3);
}

TEST_CASE("safetensors: the writer refuses bad tensor lists", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const at::Tensor t = at::zeros({2});
  REQUIRE_THROWS_WITH(save_safetensors(path, {{"x", t}, {"x", t}}), Catch::Contains("tensor 'x' is given twice"));
  REQUIRE_THROWS_WITH(save_safetensors(path, {{"__metadata__", t}}), Catch::Contains("'__metadata__' is reserved"));
  REQUIRE_THROWS_WITH(save_safetensors(path, {{"c", at::zeros({2}, at::kComplexFloat)}}),
                      Catch::Contains("tensor 'c'") && Catch::Contains("cannot be stored in safetensors"));
  REQUIRE_THROWS_AS(save_safetensors(path, {{"x", t}, {"x", t}}), std::invalid_argument);
  CHECK_FALSE(fs::exists(path));
  REQUIRE_THROWS_WITH(save_safetensors(dir.file("no/such/folder/x.safetensors"), {{"x", t}}),
                      Catch::Contains("cannot create a temporary file"));
}

TEST_CASE("safetensors: truncated file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("short.safetensors");
  write_bytes(path, "abcde");
  REQUIRE_THROWS_WITH(SafetensorsFile(path),
                      Catch::Contains(path) && Catch::Contains("file is 5 bytes, expected at least 8"));
  write_bytes(path, "");
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Catch::Contains("file is 0 bytes"));
  REQUIRE_THROWS_AS(SafetensorsFile(path), std::invalid_argument);
}

TEST_CASE("safetensors: missing file", "[safetensors]") {
  TempDir dir;
  REQUIRE_THROWS_WITH(SafetensorsFile(dir.file("nope.safetensors")),
                      Catch::Contains("nope.safetensors: the file does not exist"));
}

TEST_CASE("safetensors: header length beyond the file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("long.safetensors");
  write_bytes(path, le64(1000) + "{}      ");
  REQUIRE_THROWS_WITH(SafetensorsFile(path),
                      Catch::Contains(path) &&
                          Catch::Contains("header length 1000 goes beyond the file size (16 bytes)"));
}

TEST_CASE("safetensors: absurd header length", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("absurd.safetensors");
  write_bytes(path, le64(uint64_t(1) << 40) + "{}      ");
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Catch::Contains("header length 1099511627776 is absurd"));
}

TEST_CASE("safetensors: header not JSON or not an object", "[safetensors]") {
  TempDir dir;
  const std::string path = write_raw(dir, "{\"a\": nonsense}", 0);
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Catch::Contains(path) && Catch::Contains("header is not valid JSON") &&
                                                 Catch::Contains("parse error"));
  const std::string array = write_raw(dir, "[1, 2]  ", 0);
  REQUIRE_THROWS_WITH(SafetensorsFile(array), Catch::Contains("header is not a JSON object, found [1,2]"));
}

TEST_CASE("safetensors: entry without dtype, shape or data_offsets", "[safetensors]") {
  TempDir dir;
  REQUIRE_THROWS_WITH(SafetensorsFile(write_raw(dir, R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4)),
                      Catch::Contains("tensor 'w' has no 'dtype'"));
  REQUIRE_THROWS_WITH(SafetensorsFile(write_raw(dir, R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4)),
                      Catch::Contains("tensor 'w' has no 'shape'"));
  REQUIRE_THROWS_WITH(SafetensorsFile(write_raw(dir, R"({"w":{"dtype":"F32","shape":[1]}})", 4)),
                      Catch::Contains("tensor 'w' has no 'data_offsets'"));
  REQUIRE_THROWS_WITH(SafetensorsFile(write_raw(dir, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4)),
                      Catch::Contains("tensor 'w' has 'data_offsets' [0], expected [begin, end]"));
  REQUIRE_THROWS_WITH(SafetensorsFile(write_raw(dir, R"({"w":[1,2]})", 4)),
                      Catch::Contains("tensor 'w' must be an object"));
  REQUIRE_THROWS_WITH(SafetensorsFile(write_raw(dir, R"({"__metadata__":{"format":1}})", 0)),
                      Catch::Contains("'__metadata__' entry 'format' must be a string, found 1"));
}

TEST_CASE("safetensors: unsupported dtype", "[safetensors]") {
  TempDir dir;
  const std::string path = write_raw(dir, R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4);
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Catch::Contains(path) &&
                                                 Catch::Contains("tensor 'w' has dtype 'F8_E4M3', which is not supported") &&
                                                 Catch::Contains("BF16"));
}

TEST_CASE("safetensors: tensor byte size mismatch", "[safetensors]") {
  TempDir dir;
  const std::string path = write_raw(dir, R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24);
  REQUIRE_THROWS_WITH(SafetensorsFile(path),
                      Catch::Contains("tensor 'w' holds 20 bytes, expected 24 (shape [2, 3] of F32)"));
}

TEST_CASE("safetensors: offsets beyond the data section, out of order, overlapping", "[safetensors]") {
  TempDir dir;
  REQUIRE_THROWS_WITH(
      SafetensorsFile(write_raw(dir, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8)),
      Catch::Contains("tensor 'w' has data_offsets [0, 16] beyond the data section (8 bytes)"));
  REQUIRE_THROWS_WITH(
      SafetensorsFile(write_raw(dir, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8)),
      Catch::Contains("tensor 'w' has data_offsets [8, 4] out of order"));
  REQUIRE_THROWS_WITH(
      SafetensorsFile(write_raw(dir,
                                R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                12)),
      Catch::Contains("tensors 'a' [0, 8) and 'b' [4, 12) overlap"));
}

TEST_CASE("safetensors: negative or non-integer dimensions", "[safetensors]") {
  TempDir dir;
  REQUIRE_THROWS_WITH(
      SafetensorsFile(write_raw(dir, R"({"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}})", 16)),
      Catch::Contains("tensor 'w' has shape [-1,4], expected non-negative integer dimensions"));
  REQUIRE_THROWS_WITH(
      SafetensorsFile(write_raw(dir, R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)),
      Catch::Contains("expected non-negative integer dimensions"));
}

TEST_CASE("safetensors: looking up a missing tensor", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("one.safetensors");
  save_safetensors(path, {{"w", at::zeros({1})}});
  SafetensorsFile file(path);
  CHECK(file.contains("w"));
  CHECK_FALSE(file.contains("v"));
  REQUIRE_THROWS_WITH(file.tensor("v"), Catch::Contains(path + ": tensor 'v' is missing"));
}

TEST_CASE("safetensors: release() gives a read tensor's pages back, and the bytes read again are the same",
          "[safetensors]") {
  TempDir dir;
  const at::Tensor big = at::arange(16 << 20, at::kFloat);  // 64 MiB
  save_safetensors(dir.file("big.safetensors"), {{"a", at::ones({3})}, {"big", big}, {"z", at::ones({5})}});
  const SafetensorsFile file(dir.file("big.safetensors"));
  const double sum = file.tensor("big").sum().item<double>();  // touches every page of the mapping
  const int64_t touched = current_rss_bytes();
  file.release("big");
  const int64_t released = current_rss_bytes();
  INFO("RSS " << touched / 1048576 << " MiB after reading, " << released / 1048576 << " MiB after release()");
  CHECK(touched - released > (48 << 20));
  CHECK(file.tensor("big").sum().item<double>() == sum);
  CHECK(file.tensor("z").sum().item<double>() == 5.0);  // the neighbours' bytes are untouched
  CHECK(file.tensor("a").sum().item<double>() == 3.0);
}
