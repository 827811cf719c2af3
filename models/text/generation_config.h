// What a model folder says about generating beyond its weights: which token starts a prompt and which ids end a
// reply, and the sampling defaults its authors chose. Read as transformers reads them:
//   BOS      tokenizer_config.json "add_bos_token" when present; else tokenizer.json's post-processor (a
//            TemplateProcessing whose single-sequence template starts with a special token: Llama-3's
//            <|begin_of_text|>; ByteLevel or none: no BOS, as Qwen); else the family's habit (Llama family: the
//            tokenizer's BOS, as SentencePiece's LlamaTokenizer adds it; GPT-2 family: none).
//   stop ids generation_config.json "eos_token_id" (an id or a list: Llama-3.1-Instruct stops on 128001, 128008
//            and 128009); else config.json's (an id or a list); else the tokenizer's EOS.
//   sampling generation_config.json do_sample, temperature, top_k, top_p, min_p, repetition_penalty,
//            max_new_tokens (absent fields stay unset: the caller's defaults apply).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "models/io/config.h"
#include "models/text/tokenizer.h"

namespace sinkflow {

struct GenerationConfig {
  int64_t bos_id = -1;             // prepended to a prompt (-1: none)
  std::string bos_from;            // the file (and field) that decided it, or "family default"
  std::vector<int64_t> stop_ids;   // a reply ends at any of these
  std::string stop_from;
  std::optional<bool> do_sample;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k, max_new_tokens;

  bool is_stop(int64_t id) const;
};

// Reads the folder's generation_config.json, tokenizer_config.json, tokenizer.json and config.json (each may be
// absent). Throws std::invalid_argument naming the file and field for a value of the wrong type, an id outside the
// vocabulary, or add_bos_token true with no BOS token in the tokenizer.
GenerationConfig load_generation_config(const std::string& dir, const Tokenizer& tokenizer, Family family);

}  // namespace sinkflow
