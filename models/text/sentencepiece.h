// SentencePiece tokenizer.model (a serialized sentencepiece.ModelProto) read and applied without libsentencepiece
// (Debian's libsentencepiece embeds a copy of protobuf that collides with LibTorch's in one process).
//
// What is read (protobuf wire format, field numbers checked against models written by spm_train 0.1.97):
//   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec, 5 denormalizer_spec
//   SentencePiece   1 piece, 2 score (float), 3 type: NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6
//   TrainerSpec     3 model_type (UNIGRAM=1 BPE=2 WORD=3 CHAR=4), 24 treat_whitespace_as_suffix, 25 split_digits,
//                   35 byte_fallback, 46 bos_piece, 47 eos_piece, 48 pad_piece (default "<s>", "</s>", "<pad>").
//                   bos/eos/pad are the CONTROL pieces of those names, as SentencePieceProcessor::bos_id() finds them;
//                   spm_train puts them at 41 bos_id, 42 eos_id, 43 pad_id (and the UNKNOWN piece at 40 unk_id).
//   NormalizerSpec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix, 4 remove_extra_whitespaces,
//                   5 escape_whitespaces (the three default to true when absent)
// Every other field, of any wire type (groups included), is skipped. The reader is bounds-checked: a malformed or
// hostile file throws std::invalid_argument and never reads outside its buffer.
//
// Encoding follows sentencepiece 0.1.97 (normalizer.cc, bpe_model.cc, unigram_model.cc, sentencepiece_processor.cc)
// and is checked id for id against spm_encode (tests/data/spm):
//  - Normalization: the precompiled charsmap (a Darts double-array trie + NUL-separated replacement strings, as
//    written for nmt_nfkc, nfkc, nfkc_cf, ... and custom rule TSVs) is applied by longest-prefix match; without a
//    charsmap ("identity") text is kept as is. Malformed UTF-8 becomes U+FFFD, one per bad byte. User-defined
//    pieces are kept unnormalized. Then remove_extra_whitespaces (leading, trailing, repeated ' '),
//    add_dummy_prefix (one leading ' '), escape_whitespaces (' ' -> U+2581).
//  - BPE: user-defined pieces are cut out first (longest match) and never merged; the rest is split into
//    characters, and the adjacent pair whose concatenation is a piece (NORMAL, USER_DEFINED or UNUSED) with the
//    highest score is merged, ties to the leftmost, until no pair is a piece; a merged UNUSED piece is split back
//    into the two symbols it was made of. When no mergeable piece has U+2581 after its first character (always,
//    unless trained with --split_by_whitespace=false), the text is cut before each U+2581 and words are cached
//    within one encode() call, so a whole book encodes in O(n).
//  - UNIGRAM: Viterbi over piece scores (user-defined pieces get length_in_bytes * max_score - 0.1, unknown
//    characters min_score - 10), as sentencepiece's optimized encoder.
//  - Symbols that are not pieces become their UTF-8 bytes as <0xNN> pieces when byte_fallback is set, else unk_id
//    (a run of unknown symbols gives one unk_id).
//  - split_digits only shapes training; nothing to do when encoding.
// Rejected with std::invalid_argument naming the file and the field: model_type WORD/CHAR,
// treat_whitespace_as_suffix, a denormalizer_spec with rules, no piece of type UNKNOWN (or two), an empty or
// duplicated piece, a BYTE piece that is not "<0xNN>" or whose model has no byte_fallback.
//
// Decoding follows the Tokenizer contract (special pieces skipped; what TextStreamer prints), which differs from
// spm_decode only where the contract asks for it: UNKNOWN pieces are skipped (spm_decode writes " \u2047 "),
// invalid byte sequences become U+FFFD per maximal invalid subpart (spm_decode: one per byte), and exactly one
// leading space is dropped (as spm_decode does when remove_extra_whitespaces is false; when it is true, spm_decode
// drops the U+2581 of every leading piece while its output is still empty, which only matters for texts that
// start with a literal U+2581). Otherwise decode() of encode()'s ids equals spm_decode's text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "models/text/tokenizer.h"

namespace sinkflow {

// Immutable after construction: safe to use from several threads at once.
class SentencePieceModel final : public Tokenizer {
 public:
  enum class PieceType : uint8_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };
  enum class ModelType : uint8_t { unigram = 1, bpe = 2, word = 3, character = 4 };

  // Parses `bytes`, the content of a tokenizer.model; `source` (the file's path) names the file in error messages.
  // Throws std::invalid_argument (message "<source>: cannot load the SentencePiece model: ...") for a malformed
  // or unsupported model.
  SentencePieceModel(std::string_view bytes, std::string source);
  SentencePieceModel(SentencePieceModel&&) noexcept;
  SentencePieceModel& operator=(SentencePieceModel&&) noexcept;
  ~SentencePieceModel() override;

  std::string kind() const override { return "sentencepiece"; }
  // Never adds BOS/EOS. Control pieces written in the text are treated as plain text.
  std::vector<int64_t> encode(std::string_view text) const override;
  // Skips out-of-range, control and unknown ids; see the header comment for the comparison with spm_decode.
  std::string decode(const std::vector<int64_t>& ids) const override;
  // Piece with U+2581 -> ' '; BYTE piece <0xNN> -> that byte; control and unknown pieces -> their own text.
  std::string token_bytes(int64_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  // The CONTROL piece named trainer_spec.bos_piece / eos_piece: where spm_train's --bos_id / --eos_id put it
  // (-1 = none, e.g. --bos_id=-1).
  int64_t bos_id() const override { return bos_id_; }
  int64_t eos_id() const override { return eos_id_; }
  // Id of a piece by its spelling ("▁the", "<0x41>", "<s>"); -1 when no piece is spelled so.
  int64_t token_id(std::string_view token) const override;
  // Control and unknown pieces.
  bool is_special(int64_t id) const override;
  // add_dummy_prefix || remove_extra_whitespaces: when either is set, sentencepiece's decoder drops the U+2581 that
  // starts the first piece.
  bool stream_drops_leading_space() const override { return drop_leading_space_; }

  // ---- Model details (for tests and diagnostics) ----
  int64_t unk_id() const { return unk_id_; }
  int64_t pad_id() const { return pad_id_; }
  ModelType model_type() const { return model_type_; }
  bool byte_fallback() const { return byte_fallback_; }
  const std::string& normalizer_name() const { return normalizer_name_; }
  bool add_dummy_prefix() const { return add_dummy_prefix_; }
  bool remove_extra_whitespaces() const { return remove_extra_whitespaces_; }
  bool escape_whitespaces() const { return escape_whitespaces_; }
  // Piece text, score and type of `id`; requires 0 <= id < vocab_size().
  const std::string& piece(int64_t id) const { return pieces_[static_cast<size_t>(id)].text; }
  float score(int64_t id) const { return pieces_[static_cast<size_t>(id)].score; }
  PieceType piece_type(int64_t id) const { return pieces_[static_cast<size_t>(id)].type; }
  // `text` after normalization, as the model sees it (spaces escaped to U+2581 when escape_whitespaces).
  std::string normalize(std::string_view text) const;
  // The pieces encode() would give, as their spellings (byte-fallback bytes as "<0xNN>").
  std::vector<std::string> encode_as_pieces(std::string_view text) const;

 private:
  struct Impl;  // lookup structures, defined in the .cpp
  struct Piece {
    std::string text;
    float score = 0.0f;
    PieceType type = PieceType::normal;
  };
  std::string source_;
  std::vector<Piece> pieces_;
  ModelType model_type_ = ModelType::unigram;
  bool byte_fallback_ = false;
  std::string normalizer_name_;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  bool drop_leading_space_ = true;
  int64_t unk_id_ = -1;
  int64_t bos_id_ = -1;
  int64_t eos_id_ = -1;
  int64_t pad_id_ = -1;
  std::unique_ptr<const Impl> impl_;

  std::vector<int32_t> encode_ids(std::string_view text) const;
};

// Reads the tokenizer.model at `path`. Throws std::runtime_error if the file cannot be read, std::invalid_argument
// (naming `path`) if it is not a supported SentencePiece model.
std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path);

}  // namespace sinkflow
