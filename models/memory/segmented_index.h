// The chunk store's hnsw index in tiers, so that RAM stays bounded however long the stream:
//   sealed segments: MappedHnswIndex files, each over a contiguous range of ids, searched in place from disk;
//   the newest ids:  an in-RAM HnswIndex (the "active" segment), sealed by its owner when it is full.
// Vectors are kept compactly in the graphs (HnswParams::Storage::i8 by default); search() merges the candidates
// of every tier and re-scores the best of them with the exact float embeddings that `exact` reads (from the
// chunk log), so the scores it returns are exact cosine similarities and vector() is the exact unit vector.
// A search visits every tier; with search_threads > 1 the tiers are shared between the calling thread and helper
// threads the index keeps (at 10^7 chunks a search visits ~25 segments).
#pragma once

#include <functional>
#include <memory>
#include <shared_mutex>
#include <vector>

#include "models/memory/vector_index.h"

namespace sinkflow {

class SegmentedIndex final : public VectorIndex {
 public:
  // Writes the embedding of `id` as it was given to add() (dim floats, any length) into `out`.
  using ExactVector = std::function<void(int64_t id, float* out)>;

  // `active` holds the newest ids (those after every sealed segment), in id order. `fresh_capacity`: the
  // initial capacity of each active segment that seal() starts (small: a segment grows as vectors come).
  // `search_threads` >= 1: threads that share a search's tiers (the caller and search_threads - 1 helpers, started
  // here and idle between searches); a search that finds them busy with another runs on its own thread.
  SegmentedIndex(int64_t dim, std::vector<std::unique_ptr<MappedHnswIndex>> sealed, std::unique_ptr<HnswIndex> active,
                 ExactVector exact, int64_t fresh_capacity, int search_threads = 1);
  ~SegmentedIndex() override;

  std::string name() const override { return "hnsw"; }
  int64_t dim() const override { return dim_; }
  int64_t size() const override;
  // Adds to the active segment (ids must be new and, for sealing to work, ascending).
  void add(int64_t id, const float* vector) override;
  // Each tier returns its k + max(k, 16) best candidates by their stored (approximate) vectors; the k + max(k, 16)
  // best of all are re-scored exactly and the k best returned (score descending, ties by id). The same hits on any
  // number of search threads.
  std::vector<SearchHit> search(const float* query, int k) const override;
  bool contains(int64_t id) const override;
  // The exact unit vector (read through `exact`); unknown id: std::invalid_argument.
  std::vector<float> vector(int64_t id) const override;
  // Saves the active segment (sealed segments are files already).
  void save(const std::string& path, uint64_t tag = 0) const override;

  // The active segment, for its owner (save, size, sealing).
  const HnswIndex& active() const { return *active_; }
  // Replaces the active segment by `sealed` (the same vectors, read back from the file it was saved to) and a
  // fresh empty active segment (same params, fresh_capacity), built after the old one is freed (a heap that keeps freed
  // blocks, as the launcher's, then reuses them: RAM holds one active segment, never two). Searches never see the
  // vectors twice or not at all.
  void seal(std::unique_ptr<MappedHnswIndex> sealed);
  // Replaces the sealed segments that cover ids [lo, hi] (contiguous, in order) by `merged`, which holds the same
  // ids (a merge); returns them, for the caller to free outside the lock. Searches see either the old segments or
  // the merged one, never both or neither. A range that is not exactly that of some adjacent sealed segments:
  // std::logic_error.
  std::vector<std::unique_ptr<MappedHnswIndex>> replace(int64_t lo, int64_t hi, std::unique_ptr<MappedHnswIndex> merged);
  int64_t sealed_count() const;
  // Bytes of sealed segment files (on disk, mapped).
  uint64_t sealed_bytes() const;

 private:
  int64_t dim_;
  std::vector<std::unique_ptr<MappedHnswIndex>> sealed_;
  std::unique_ptr<HnswIndex> active_;
  ExactVector exact_;
  int64_t fresh_capacity_;
  mutable std::shared_mutex mutex_;  // the tier list: exclusive to seal, shared to everything else
  class Helpers;
  std::unique_ptr<Helpers> helpers_;  // null with one search thread
};

}  // namespace sinkflow
