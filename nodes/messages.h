// Everything sent along an edge of a sinkflow pipeline: plain movable structs, each with the sequence id
// (`seq`: one stream through one KV cache) and the step that produced it. Read top to bottom, they follow
// the data flow:
//
//   token-source --TokenBlock--> model-step --StepResult--> text-out, metrics
//                                model-step --EvictedBatch--> eviction --ChunkBatch--> embedding --ChunkBatch-->
//                                  index-insert
//                                index-insert --int64 (indexed)--> retrieve.indexed
//                                model-step --Query--> retrieve --Retrieval--> re-inject --Retrieval-->
//                                  model-step.inject (step boundary)
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/memory/chunk_store.h"
#include "models/cache/kv_cache.h"
#include "models/memory/memory_path.h"

namespace sinkflow {

// A block of input tokens for one sequence (token-source -> model-step).
struct TokenBlock {
  int64_t seq = 0;              // sequence id
  int64_t step = 0;             // block index in the source, 0, 1, 2, ...
  std::vector<int64_t> tokens;  // [n_tok] token ids, n_tok <= the source's block size (0 only for an empty input)
  bool turn = false;            // the last block of a user turn / prompt: model-step answers it (decodes)
  std::string text;             // turn blocks: the turn's text (the retrieval query of trigger `turn`)
  bool last = false;            // the last block of the input (end of document / dialogue)
  // Chat (token-source format `chat`): a message that model-step writes through the chat template itself, so the
  // block carries no tokens. role: "user" (answered; text = its content, also the retrieval query), or context
  // ("system", "assistant", ...). command: a chat command instead of a message: "reset", "stats" or "memory".
  std::string role;
  std::string command;
};

// What model-step says at the end of a chat turn or command (StepResult::report).
struct TurnReport {
  std::string command;            // "" for a reply; else the command it answers (reset, stats, memory)
  std::string info;               // a command's answer, as text lines
  std::string stop;               // a reply's end: eos, length, stop (a stop string)
  int64_t prompt_tokens = 0;      // tokens fed for the turn (template, retrieved text, the message)
  int64_t reply_tokens = 0;
  double prefill_s = 0;           // feeding the turn
  double first_token_s = 0;       // from the turn's arrival at model-step to its first reply token
  double decode_s = 0;
  struct Hit {
    int64_t chunk_id = -1;
    float score = 0;
    int64_t first_position = -1, last_position = -1;  // where its tokens were in the stream
    bool placed = false;          // written now (region) or placed before the turn (prompt); false: already there
    std::string text;             // its first 160 bytes
  };
  std::string placement;          // region | prompt ("" when nothing was retrieved)
  std::vector<Hit> retrieved;
};

// What one decode step produced (model-step -> text-out, metrics).
struct StepResult {
  int64_t seq = 0;
  int64_t step = 0;              // absolute position of the generated token in the stream
  std::vector<int64_t> tokens;   // [n] generated token ids (n = 1 today)
  std::string text;              // printable text those tokens completed (may be "" inside a UTF-8 character)
  bool end_of_turn = false;      // the answer to the current turn is complete (text may be "")
  std::shared_ptr<const TurnReport> report;  // chat: with end_of_turn, what the turn did
  std::chrono::steady_clock::time_point produced{};  // when model-step emitted it (rates are timed at the source:
                                                     // messages may reach a consumer in bursts)
};

// Spans that left a sequence's recent window (model-step -> eviction). Copies: the cache is not shared.
struct EvictedBatch {
  int64_t seq = 0;
  int64_t step = 0;                 // model-step's batch counter, 0, 1, 2, ... (index-insert reports the last done)
  std::vector<EvictedSpan> spans;   // oldest first; kv: [n_layer, 2, n_kv_head, n_tok, d_head] when evict_kv
  bool flush = false;               // also emit the chunker's partial tail (before a sync retrieval, at the end)
};

// Chunks of evicted text (eviction -> embedding -> index-insert).
struct ChunkBatch {
  int64_t seq = 0;
  int64_t step = 0;                           // the EvictedBatch step these chunks came from (always sent, maybe empty)
  std::vector<Chunk> chunks;                  // with text; id = -1 until stored
  std::vector<std::vector<float>> embeddings; // [n_chunk][dim], filled by embedding; empty before
};

// A retrieval request (model-step -> retrieve).
struct Query {
  int64_t seq = 0;
  int64_t step = 0;       // stream position when the query was made
  std::string text;       // the query text: a user turn (trigger `turn`) or recent text (trigger `always`)
  int64_t id = 0;         // model-step's query counter, 0, 1, 2, ...
  bool sync = false;      // a turn waits for the answer: retrieve replies even with no hits
  int64_t wait_for = -1;  // sync: retrieve first waits until index-insert has stored this EvictedBatch step
  bool load_kv = false;   // the chunks' stored K/V are wanted (model-step injects kv)
};

// Retrieved chunks for a query (retrieve -> re-inject -> model-step.inject).
struct Retrieval {
  int64_t seq = 0;
  int64_t step = 0;              // the Query's step
  std::vector<Retrieved> hits;   // best first: score, chunk id, tokens, text, kv (kv mode only)
  int64_t query_id = 0;          // the Query's id
  bool sync = false;             // the answer to a sync Query (always delivered, maybe without hits)
};

}  // namespace sinkflow
