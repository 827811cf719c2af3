// Training of sinkflow's own small decoders (Llama family with RoPE, GPT-2 family with learned positions)
// on a plain-text corpus: AdamW, cosine schedule with linear warm-up, gradient clipping, periodic held-out
// loss, atomic checkpoints with exact resume, final model in Hugging Face layout (float16).
//
// Every training sequence is [BOS] + seq_len-1 ... text tokens taken at a uniformly random offset of the
// corpus token stream (prepend_bos; default on), so that the model learns to park attention on the first
// token (the attention sink StreamingLLM relies on) and sees text as `sinkflow ppl` feeds it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "models/io/config.h"
#include "models/nn/decoder.h"

namespace sinkflow {

// A training run's settings. Read from a JSON file with parse_train_config (every field optional except
// "model" and the corpus; unknown fields are rejected so that a typo does not pass silently).
struct TrainConfig {
  // "model": {"d_model", "n_layer", "n_head", "n_kv_head", "d_ff", "max_positions", "rope_theta",
  //           "tie_word_embeddings", "norm_eps"}. vocab_size, bos/eos ids come from the tokenizer.
  ModelConfig model;
  std::string tokenizer;     // path of tokenizer.model (or a folder load_tokenizer reads); copied into the output
  std::string train_text;    // corpus as UTF-8 text (encoded once, cached as <train_text>.ids.bin) ...
  std::string heldout_text;
  std::string train_ids;     // ... or pre-encoded: raw little-endian int32 ids (.bin), e.g. from spm_encode
  std::string heldout_ids;
  std::string init_from;     // a model folder to start from instead of random weights (not on --resume): the same
                             // shape, except that the MLP may be wider (d_ff), its new units contributing zero at first
  int64_t seq_len = 256;     // tokens per training sequence, BOS included
  int64_t batch = 16;        // sequences per step
  int64_t steps = 1000;      // optimizer steps (the schedule's length)
  int64_t warmup = 100;      // linear warm-up steps
  double lr = 1e-3;          // peak learning rate
  double min_lr = 1e-4;      // floor of the cosine decay
  double weight_decay = 0.1; // decoupled (AdamW), on matrices only: not on norms, biases, embeddings
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;         // max global gradient norm; <= 0 = no clipping
  uint64_t seed = 1234;      // weights and data sampling
  int64_t eval_interval = 200;   // held-out loss every N steps (and at the end); 0 = only at the end
  int64_t eval_batches = 8;      // fixed held-out batches (evenly spaced offsets)
  int64_t checkpoint_interval = 200;  // checkpoint every N steps; 0 = none
  int64_t log_interval = 10;
  bool prepend_bos = true;
  double copy_fraction = 0.0;    // fraction of sequences where a span of copy_min_len-copy_max_len tokens is repeated
                                 // later in the sequence (copy task)
  int64_t copy_min_len = 8;      // span lengths, drawn uniformly; a span never exceeds (T - 2) / 2 tokens, T the
  int64_t copy_max_len = 40;     // row's text tokens (seq_len + 1, less BOS), so that it and its repeat fit
  double copy_random = 0.0;      // fraction of those copy spans first filled with tokens drawn at random from the
                                 // corpus: only copying predicts their repeat (trains induction heads)
  int64_t copy_min_gap = 0;      // the repeat starts more than this many tokens after the span's end (placed
                                 // uniformly in the room left): copying over long distances
  double copy_substitute = 0.0;  // in the other (text) spans, each token is replaced by a random corpus token with
                                 // this probability before the span is repeated: copies that go against the
                                 // language prior ("... San Francisco is eat a sandwich"), in natural context
  int threads = 2;               // LibTorch intra-op threads on CPU
  double max_minutes = 0;        // stop early (and still write the model) after this wall time; 0 = no limit
  std::string device = "cpu";
  int64_t bos_id = -1;           // -1 = the tokenizer's (needed only when the tokenizer cannot be loaded)
  int64_t eos_id = -1;
};

// Parses a JSON training config for `family` ("llama" | "gpt2"). Throws std::invalid_argument naming
// `source_name`, the field, what was expected and what was found.
TrainConfig parse_train_config(const std::string& json_text, const std::string& source_name, Family family);

// Training batch number `step` from the corpus `ids`: [batch, seq_len + 1] token ids, BOS first when
// prepend_bos, and with probability copy_fraction a span of the row written again later in the same row
// (copy_random of those spans first filled with random corpus tokens, the others with copy_substitute of their
// tokens replaced by random ones). Depends on (ids, config, step) only.
at::Tensor training_batch(const std::vector<int32_t>& ids, const TrainConfig& c, int64_t bos, int64_t step);
TrainConfig load_train_config(const std::string& path, Family family);

// Learning rate at `step` (0-based): lr * (step + 1) / warmup during warm-up, then cosine from lr down to min_lr
// at step == steps - 1 ... min_lr afterwards.
double scheduled_lr(const TrainConfig& config, int64_t step);

// The training loss of `batch` ([B, T + 1] token ids; inputs are the first T, targets the last T):
// linear_cross_entropy of the model's final hidden states and output projection.
at::Tensor lm_loss(const Decoder& model, const at::Tensor& batch, at::Device device);

// Mean cross-entropy of the logits hidden @ weight^T against targets, computed chunk_rows rows at a time
// (0 = sized for the device) without ever holding the [N, vocab] logits: with autograd on, the gradients of
// hidden and weight are computed chunk by chunk in the forward pass and returned, scaled, by the backward.
// hidden [N, D] and weight [vocab, D] of one floating dtype (computed in float32), targets [N] int64 in
// [0, vocab). Equal to cross_entropy(hidden @ weight^T, targets) up to float rounding; faster on CPU, where
// the whole logits matrix does not fit in cache (sinkflow bench loss).
at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                int64_t chunk_rows = 0);

struct TrainStatus {
  int64_t step = 0;          // steps done
  int64_t total_steps = 0;
  double loss = 0;           // training loss of the last step
  double lr = 0;
  double tokens_per_s = 0;   // since the start (or resume) of this process
  double heldout_loss = -1;  // last held-out loss (-1 = none yet)
  double elapsed_s = 0;
};

struct TrainResult {
  int64_t steps_done = 0;
  int64_t tokens_trained = 0;
  int64_t parameters = 0;
  double initial_loss = 0;       // loss of the first step of this run (or of the resumed run's first step)
  double final_loss = 0;         // mean training loss of the last log interval
  double heldout_loss = -1;
  double wall_s = 0;             // total over resumes
  std::vector<double> step_losses;  // every step's training loss (over resumes)
};

struct TrainOptions {
  std::string out_dir;        // final model + train_log.json; checkpoints under out_dir/checkpoint/
  bool resume = false;        // continue from out_dir/checkpoint/ (error if absent)
  int64_t stop_after = -1;    // tests: stop (after checkpointing) once this many steps are done; -1 = run to the end
  bool write_model = true;    // write the final float16 model into out_dir
  std::string command_line;   // recorded in train_log.json
  std::function<void(const TrainStatus&)> on_step;  // called after every step (progress display)
};

// Fills `model` (of config `target`, holding the run's random init) with the weights of the model folder `dir`
// (init_from): same family and shape, except that target's MLP may be wider; the new units keep their random
// input weights and get zero output weights, so that the model computes what the source computes. Throws
// std::invalid_argument naming the folder and the field or tensor that differs. Returns the source's config.
ModelConfig init_from_model(const std::string& dir, const ModelConfig& target, Decoder& model);

// Runs (or resumes) a training. Throws std::invalid_argument for bad inputs and std::runtime_error
// when files cannot be read or written.
TrainResult train_model(const TrainConfig& config, const TrainOptions& options);

// Reads a checkpoint's or model folder's weights as float32 CPU tensors in named_parameters() order (tests).
std::vector<std::pair<std::string, std::vector<float>>> read_weights_f32(const std::string& dir, const ModelConfig& config);

}  // namespace sinkflow
