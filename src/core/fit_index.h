// FitIndex: answers "which is the earliest waiter whose request is at most X bytes?" in
// O(log n), so that a scheduling pass over 10,000 waiters costs microseconds, not a scan.
//
// Entries are appended in queue order (arrival sequence numbers increase) and erased in any
// order. Internally a min segment tree over append slots; erased slots hold a tombstone and
// are compacted away when the tree fills. Not thread-safe: the Scheduler owns its indexes.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <unordered_map>
#include <vector>

namespace gpumgr::core {

class FitIndex {
 public:
  // Appends an entry; `seq` must be larger than every seq appended before.
  void push_back(std::uint64_t seq, std::uint64_t bytes);
  // Erases an entry; returns false when `seq` is not here.
  bool erase(std::uint64_t seq);
  // The seq of the earliest entry with bytes <= limit, if any.
  std::optional<std::uint64_t> first_at_most(std::uint64_t limit) const;
  bool empty() const { return slot_of_.empty(); }
  std::size_t size() const { return slot_of_.size(); }

 private:
  static constexpr std::uint64_t kEmpty = std::numeric_limits<std::uint64_t>::max();
  void set(std::size_t slot, std::uint64_t bytes);
  void rebuild(std::size_t capacity);

  std::size_t capacity_ = 0;           // leaves in the tree (a power of two)
  std::size_t used_ = 0;               // slots handed out so far (live or erased)
  std::vector<std::uint64_t> tree_;    // tree_[capacity_ + slot] is a leaf
  std::vector<std::uint64_t> seq_of_;  // by slot
  std::unordered_map<std::uint64_t, std::size_t> slot_of_;  // live entries only
};

}  // namespace gpumgr::core
