#include "core/revocation.h"

#include <algorithm>

namespace gpumgr::core {

std::string_view revocable_name(Revocable revocable) {
  switch (revocable) {
    case Revocable::kPreemptible:
      return "preemptible";
    case Revocable::kResident:
      return "resident";
    case Revocable::kNo:
      break;
  }
  return "";
}

void RevocationDeadlines::add(std::string_view job_id, std::uint64_t lease_id, TimeNs deadline) {
  by_job_[std::string(job_id)] = Entry{lease_id, deadline};
}

void RevocationDeadlines::forget(std::string_view job_id) {
  if (const auto it = by_job_.find(job_id); it != by_job_.end()) by_job_.erase(it);
}

std::optional<TimeNs> RevocationDeadlines::next() const {
  std::optional<TimeNs> out;
  for (const auto& [job, e] : by_job_) out = out ? std::min(*out, e.deadline) : e.deadline;
  return out;
}

std::optional<TimeNs> RevocationDeadlines::deadline(std::string_view job_id) const {
  const auto it = by_job_.find(job_id);
  if (it == by_job_.end()) return std::nullopt;
  return it->second.deadline;
}

std::vector<std::pair<std::string, std::uint64_t>> RevocationDeadlines::take_due(TimeNs now) {
  std::vector<std::pair<std::string, std::uint64_t>> out;
  for (auto it = by_job_.begin(); it != by_job_.end();) {
    if (it->second.deadline <= now) {
      out.emplace_back(it->first, it->second.lease_id);
      it = by_job_.erase(it);
    } else {
      ++it;
    }
  }
  std::sort(out.begin(), out.end());  // a deterministic order for the kills
  return out;
}

}  // namespace gpumgr::core
