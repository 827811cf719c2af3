#include "models/lab/copy_check.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <random>
#include <stdexcept>

#include "models/nn/decoder.h"

namespace sinkflow {

namespace {

void require(bool ok, const std::string& field, const std::string& expected, int64_t found) {
  if (!ok) throw std::invalid_argument("copy check: " + field + " must be " + expected + ", found " + std::to_string(found));
}

}  // namespace

void CopyCheckOptions::validate() const {
  require(cases >= 1, "cases", ">= 1", cases);
  require(before >= 0, "before", ">= 0", before);
  require(span >= 1, "span", ">= 1", span);
  require(gap >= 0, "gap", ">= 0", gap);
  require(prefix >= 0 && prefix < span, "prefix", "in [0, span) with span " + std::to_string(span), prefix);
  require(batch >= 1, "batch", ">= 1", batch);
}

std::vector<CopyCase> copy_cases(const std::vector<int64_t>& ids, const CopyCheckOptions& o) {
  o.validate();
  const int64_t text = o.before + o.span + o.gap;  // corpus tokens per case (the repeat is written after them)
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < text) {
    throw std::invalid_argument("copy check: the corpus has " + std::to_string(n) + " tokens, expected at least " +
                                std::to_string(text) + " (before + span + gap)");
  }
  std::mt19937_64 rng(o.seed);
  std::vector<CopyCase> out;
  for (int64_t i = 0; i < o.cases; ++i) {
    const int64_t off = o.cases > 1 ? (n - text) * i / (o.cases - 1) : 0;
    CopyCase c;
    if (o.bos >= 0) c.tokens.push_back(o.bos);
    c.tokens.insert(c.tokens.end(), ids.begin() + off, ids.begin() + off + text);
    c.first = (o.bos >= 0 ? 1 : 0) + o.before;
    if (o.random) {
      for (int64_t j = 0; j < o.span; ++j) c.tokens[c.first + j] = ids[rng() % ids.size()];
    }
    c.repeat = static_cast<int64_t>(c.tokens.size());
    for (int64_t j = 0; j < o.span; ++j) c.tokens.push_back(c.tokens[c.first + j]);
    out.push_back(std::move(c));
  }
  return out;
}

CopyReport copy_check(const Decoder& model, const std::vector<CopyCase>& cases, const CopyCheckOptions& o) {
  o.validate();
  c10::InferenceMode guard;
  const ModelConfig& mc = model.config();
  CopyReport r;
  r.cases = static_cast<int64_t>(cases.size());
  if (cases.empty()) return r;
  const int64_t len = static_cast<int64_t>(cases[0].tokens.size());
  if (len > mc.max_positions) {
    throw std::invalid_argument("copy check: sequences of " + std::to_string(len) + " tokens exceed the model's " +
                                std::to_string(mc.max_positions) + " positions (lower before, span or gap)");
  }
  const int64_t scored = o.span - o.prefix;
  double nll[2] = {0, 0}, top1[2] = {0, 0}, exact = 0;
  for (size_t b0 = 0; b0 < cases.size(); b0 += static_cast<size_t>(o.batch)) {
    const size_t b1 = std::min(cases.size(), b0 + static_cast<size_t>(o.batch));
    at::Tensor tokens = at::empty({static_cast<int64_t>(b1 - b0), len}, at::kLong);
    for (size_t b = b0; b < b1; ++b) {
      const CopyCase& c = cases[b];
      if (static_cast<int64_t>(c.tokens.size()) != len) {
        throw std::invalid_argument("copy check: case " + std::to_string(b) + " has " + std::to_string(c.tokens.size()) +
                                    " tokens, expected " + std::to_string(len) + " as every case");
      }
      for (int64_t t : c.tokens) {
        if (t < 0 || t >= mc.vocab_size) {
          throw std::invalid_argument("copy check: token id " + std::to_string(t) + " is outside the model's vocabulary (" +
                                      std::to_string(mc.vocab_size) + ")");
        }
      }
      std::copy(c.tokens.begin(), c.tokens.end(), tokens[static_cast<int64_t>(b - b0)].data_ptr<int64_t>());
    }
    const at::Tensor logp = at::log_softmax(model.forward_full(tokens, 0).to(at::kFloat), -1).to(at::kCPU);
    for (size_t b = b0; b < b1; ++b) {
      const CopyCase& c = cases[b];
      const at::Tensor row = logp[static_cast<int64_t>(b - b0)];
      for (int which = 0; which < 2; ++which) {
        const int64_t start = which == 0 ? c.first : c.repeat;
        bool all = true;
        for (int64_t j = o.prefix; j < o.span; ++j) {
          const int64_t target = c.tokens[start + j];
          const at::Tensor pred = row[start + j - 1];  // the logits at t predict token t + 1
          nll[which] -= pred[target].item<double>();
          const bool hit = pred.argmax().item<int64_t>() == target;
          top1[which] += hit ? 1 : 0;
          all = all && hit;
        }
        if (which == 1 && all) exact += 1;
      }
    }
  }
  const double n = static_cast<double>(r.cases * scored);
  r.scored = r.cases * scored;
  r.nll_first = nll[0] / n;
  r.nll_repeat = nll[1] / n;
  r.top1_first = top1[0] / n;
  r.top1_repeat = top1[1] / n;
  r.exact_repeat = exact / static_cast<double>(r.cases);
  return r;
}

}  // namespace sinkflow
