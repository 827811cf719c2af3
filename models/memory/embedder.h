// Text -> vector embedders for the memory store.
//
// One interface, three implementations: `hash` (here: feature-hashed lexical vectors, no weights, the offline
// default), `bert` (an encoder checkpoint) and `lm` (pooled hidden states of the decoder). A memory directory records
// the name() of the embedder that filled it and refuses another one, so name() must change whenever the vectors
// an embedder produces for the same text would change.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sinkflow {

class Embedder {
 public:
  virtual ~Embedder() = default;
  // Identifies the embedder and every parameter that changes its vectors, e.g. "hash-384".
  virtual std::string name() const = 0;
  // Length of every vector returned, >= 1.
  virtual int64_t dim() const = 0;
  // A unit-length vector of dim() floats, or the zero vector when the text has nothing to embed.
  // Must be safe to call from several threads at once.
  virtual std::vector<float> embed(std::string_view text) const = 0;
  // embed() of each text, in order. The default loops; encoders override it to batch.
  virtual std::vector<std::vector<float>> embed_batch(const std::vector<std::string>& texts) const;
};

// Feature-hashed bag of words and word bigrams.
//  - Tokens: the text is lower-cased (ASCII) and split on every byte that is not an ASCII letter or digit, an
//    apostrophe inside a word, or a non-ASCII byte (UTF-8 letters stay inside words); the typographic apostrophes
//    U+2018/U+2019 count as "'", while U+00A0-U+00BF and U+2000-U+206F (no-break space, guillemets, dashes, quotes,
//    ellipsis) separate words. Apostrophes at the edges of a word are dropped ("'tis" -> "tis", "don't" stays).
//  - A small English stop-word list is removed (hash_stop_word()), so "What is the best thing to do in San
//    Francisco?" embeds as {best, thing, san, francisco} + the bigrams of that sequence.
//  - Features: each remaining word, and each pair of consecutive remaining words ("san francisco"), counted.
//  - Each feature f with count tf adds sign(f) * (1 + ln tf) to bucket(f), where bucket and sign come from a
//    fixed 64-bit hash (FNV-1a, then a splitmix64 finaliser): vectors are identical across runs and machines.
//  - The result is L2-normalized. A text with no feature (empty, punctuation, stop words only) gives the zero
//    vector; VectorIndex::search returns no hits for a zero query, and a zero vector stored in an index scores 0.
class HashEmbedder final : public Embedder {
 public:
  // dim >= 1, else std::invalid_argument.
  explicit HashEmbedder(int64_t dim = 384);
  // "hash-<dim>".
  std::string name() const override;
  int64_t dim() const override { return dim_; }
  std::vector<float> embed(std::string_view text) const override;

 private:
  int64_t dim_;
};

// The word tokens HashEmbedder uses, before stop-word removal (exposed for tests and for debugging retrieval).
std::vector<std::string> hash_tokens(std::string_view text);
// True for the words HashEmbedder drops.
bool hash_stop_word(std::string_view word);
// The 64-bit feature hash (FNV-1a 64 + splitmix64 finaliser).
uint64_t hash_feature(std::string_view feature);

}  // namespace sinkflow
