// Random-weight checkpoints in exactly the Hugging Face layout (config.json, model.safetensors or shards,
// tokenizer), from a seed: the fixtures for tests and for speed benchmarks at real model sizes.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>

#include "models/io/config.h"

namespace sinkflow {

struct MakeModelOptions {
  ModelConfig config;                     // family and sizes (see shape_preset)
  uint64_t seed = 0;                      // weights and tokenizer are a function of the seed and sizes
  at::ScalarType dtype = at::kFloat;      // storage dtype: float32, float16, bfloat16
  int64_t max_shard_bytes = 0;            // > 0: shard model.safetensors into files of at most this size
  std::string tokenizer_text;             // text the tokenizer is trained on ("" = a built-in paragraph)
  // bert: also write a sentence-transformers folder (modules.json, 1_Pooling/config.json, 2_Normalize,
  // sentence_bert_config.json) pooling this way: "mean" (all-MiniLM), "cls" (BAAI/bge); "" = none.
  std::string pooling;
  int64_t max_seq_length = 0;             // sentence_bert_config.json's (0 = max_position_embeddings)
};

// The sentence-transformers pooling of a named bert shape ("minilm-l6": mean, 256 tokens; "bge-small": cls,
// 512 tokens), or {"", 0} for other names.
std::pair<std::string, int64_t> shape_pooling(const std::string& shape);

// Writes the checkpoint folder `dir` (created). Decoders get a byte-level BPE tokenizer.json trained on the
// text (merges: up to the vocabulary size, at most 2,000); bert gets a WordPiece vocab.txt. bos/eos ids
// in config.json point at the tokenizer's special tokens.
void make_model(const std::string& dir, const MakeModelOptions& options);

// The built-in public-domain paragraph make_model trains tokenizers on.
const std::string& builtin_tokenizer_text();

}  // namespace sinkflow
