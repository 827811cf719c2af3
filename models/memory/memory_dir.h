// What may be done to a memory directory: opened only if it is empty or a sinkflow memory directory, locked by
// one run at a time (before anything is changed), and reset by deleting the store's own files and nothing else.
#pragma once

#include <string>
#include <vector>

namespace sinkflow {

// The files a ChunkStore writes into its directory (meta.json, chunks.log, index.bin, segment-NNNNNN.bin, their
// ".tmp" partners)
// and the lock file. Anything else makes the directory foreign.
bool is_memory_dir_entry(const std::string& file_name);

// An exclusive lock on a memory directory for the life of the object (flock on DIR/lock: released by the kernel
// when the process ends, however it ends).
class MemoryDirLock {
 public:
  // Creates `dir` if it is missing, then checks it and locks it:
  //  - a path that exists and is not a directory: std::invalid_argument ("... is a regular file, expected a
  //    memory directory");
  //  - a directory holding anything but the store's own files: std::invalid_argument naming the directory and
  //    the first foreign entry (it is not a sinkflow memory directory; nothing is touched);
  //  - a directory locked by another run: std::runtime_error naming the directory and its lock file.
  explicit MemoryDirLock(const std::string& dir);
  ~MemoryDirLock();
  MemoryDirLock(const MemoryDirLock&) = delete;
  MemoryDirLock& operator=(const MemoryDirLock&) = delete;

  // Deletes the store's files (never the lock, never anything else) so that the next ChunkStore::open starts
  // empty. Returns the names deleted. Only under the lock, so a run cannot wipe another run's log.
  std::vector<std::string> reset();

  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int fd_ = -1;
};

}  // namespace sinkflow
