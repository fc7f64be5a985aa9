// Uses the installed library: a Manager over simulated devices, one lease, its accounting.
#include <gpumgr/manager.h>
#include <gpumgr/units.h>

#include <iostream>

int main() {
  gpumgr::ManagerOptions options;
  options.simulate = "2x24GiB";
  options.in_process_only = true;
  auto manager = gpumgr::Manager::create(options);
  if (!manager.ok()) {
    std::cerr << "create: " << manager.status().to_string() << "\n";
    return 1;
  }
  gpumgr::LeaseRequest request;
  request.job_id = "consumer-job";
  request.bytes = 10 * gpumgr::kGiB;
  auto lease = (*manager)->try_acquire(request);
  if (!lease.ok()) {
    std::cerr << "acquire: " << lease.status().to_string() << "\n";
    return 1;
  }
  auto snapshot = (*manager)->snapshot();
  if (!snapshot.ok()) return 1;
  const auto& device = snapshot->devices[static_cast<std::size_t>(lease->device())];
  std::cout << "devices " << snapshot->devices.size() << "\n"
            << "lease " << lease->job_id() << " on device " << lease->device() << ": "
            << gpumgr::format_bytes(lease->bytes()) << "\n"
            << "leased " << device.leased_bytes << " admissible " << device.admissible_bytes
            << "\n";
  if (!lease->release().ok()) return 1;
  std::cout << "succeeded " << (*manager)->snapshot()->stats.jobs_succeeded << "\n";
  return 0;
}
