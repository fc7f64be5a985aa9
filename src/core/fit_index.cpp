#include "core/fit_index.h"

#include <algorithm>

namespace gpumgr::core {

void FitIndex::set(std::size_t slot, std::uint64_t bytes) {
  std::size_t node = capacity_ + slot;
  tree_[node] = bytes;
  for (node /= 2; node >= 1; node /= 2) {
    tree_[node] = std::min(tree_[2 * node], tree_[2 * node + 1]);
  }
}

void FitIndex::rebuild(std::size_t capacity) {
  // Keep the live entries in slot order (which is queue order), packed from slot 0.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> live;  // (seq, bytes)
  live.reserve(slot_of_.size());
  for (std::size_t slot = 0; slot < used_; ++slot) {
    const std::uint64_t bytes = tree_[capacity_ + slot];
    if (bytes != kEmpty) live.emplace_back(seq_of_[slot], bytes);
  }
  capacity_ = capacity;
  tree_.assign(2 * capacity_, kEmpty);
  seq_of_.assign(capacity_, 0);
  slot_of_.clear();
  used_ = 0;
  for (const auto& [seq, bytes] : live) {
    tree_[capacity_ + used_] = bytes;
    seq_of_[used_] = seq;
    slot_of_[seq] = used_;
    ++used_;
  }
  for (std::size_t node = capacity_ - 1; node >= 1; --node) {
    tree_[node] = std::min(tree_[2 * node], tree_[2 * node + 1]);
  }
}

void FitIndex::push_back(std::uint64_t seq, std::uint64_t bytes) {
  if (used_ == capacity_) {
    // Full: compact away erased slots, growing only when at least half are live, so that
    // appends and erases stay amortised O(log n).
    std::size_t capacity = std::max<std::size_t>(capacity_, 16);
    while (slot_of_.size() * 2 >= capacity) capacity *= 2;
    rebuild(capacity);
  }
  const std::size_t slot = used_++;
  seq_of_[slot] = seq;
  slot_of_[seq] = slot;
  // A real request is never kEmpty bytes; clamp so that a tombstone stays distinguishable.
  set(slot, std::min(bytes, kEmpty - 1));
}

bool FitIndex::erase(std::uint64_t seq) {
  auto it = slot_of_.find(seq);
  if (it == slot_of_.end()) return false;
  set(it->second, kEmpty);
  slot_of_.erase(it);
  return true;
}

std::optional<std::uint64_t> FitIndex::first_at_most(std::uint64_t limit) const {
  if (capacity_ == 0 || tree_[1] > limit) return std::nullopt;
  std::size_t node = 1;
  while (node < capacity_) {
    node = tree_[2 * node] <= limit ? 2 * node : 2 * node + 1;
  }
  return seq_of_[node - capacity_];
}

}  // namespace gpumgr::core
