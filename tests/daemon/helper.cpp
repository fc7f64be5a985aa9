// daemon_test_helper: a client process for the multi-process daemon tests. Each mode is one
// kind of client (a holder to be killed, a contender, a probe, another uid's release).
// Exit codes: 0 ok; 10 permission_denied; 11 another error; 12 an invariant was broken;
// 2 bad arguments.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "gpumgr/ledger.h"
#include "shared_counters.h"

using namespace gpumgr;

namespace {

std::shared_ptr<Ledger> connect_or_die(const char* socket) {
  auto ledger = connect_daemon(socket);
  if (!ledger.ok()) {
    std::fprintf(stderr, "helper: %s\n", ledger.status().to_string().c_str());
    std::exit(11);
  }
  return ledger.value();
}

int code_of(const Status& s) {
  std::printf("%s\n", std::string(error_code_name(s.code())).c_str());
  std::fflush(stdout);
  if (s.ok()) return 0;
  return s.code() == ErrorCode::kPermissionDenied ? 10 : 11;
}

SharedCounters* map_counters(const char* path) {
  const int fd = ::open(path, O_RDWR);
  if (fd < 0) return nullptr;
  void* p = ::mmap(nullptr, sizeof(SharedCounters), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  return p == MAP_FAILED ? nullptr : static_cast<SharedCounters*>(p);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string mode = argv[1];
  const char* socket = argv[2];
  if (mode == "hold" && argc == 5) {
    // hold SOCKET JOB BYTES: take a lease, say so, hold it until killed.
    auto ledger = connect_or_die(socket);
    LeaseRequest r;
    r.job_id = argv[3];
    r.bytes = std::strtoull(argv[4], nullptr, 10);
    auto lease = ledger->acquire(r, {});
    if (!lease.ok()) return code_of(lease.status());
    std::printf("granted uid=%u pid=%u\n", lease->uid, lease->pid);
    std::fflush(stdout);
    while (true) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if ((mode == "release" || mode == "cancel") && argc == 4) {
    auto ledger = connect_or_die(socket);
    return code_of(mode == "release" ? ledger->release(argv[3], JobOutcome::kSucceeded)
                                     : ledger->cancel(argv[3]));
  }
  if (mode == "acquire_release" && argc == 5) {
    auto ledger = connect_or_die(socket);
    LeaseRequest r;
    r.job_id = argv[3];
    r.bytes = std::strtoull(argv[4], nullptr, 10);
    auto lease = ledger->acquire(r, WaitOptions::for_seconds(10));
    if (!lease.ok()) return code_of(lease.status());
    std::printf("uid=%u\n", lease->uid);
    return code_of(ledger->release(r.job_id, JobOutcome::kSucceeded));
  }
  if (mode == "contend" && argc == 9) {
    // contend SOCKET COUNTERS PREFIX ROUNDS BYTES CAPACITY MAX_JOBS: take and release leases;
    // while each is held, count it in shared memory and check the limits.
    auto ledger = connect_or_die(socket);
    SharedCounters* c = map_counters(argv[3]);
    if (c == nullptr) return 2;
    const int rounds = std::atoi(argv[5]);
    const std::int64_t bytes = std::atoll(argv[6]);
    const std::int64_t capacity = std::atoll(argv[7]);
    const std::int64_t max_jobs = std::atoll(argv[8]);
    for (int i = 0; i < rounds; ++i) {
      LeaseRequest r;
      r.job_id = std::string(argv[4]) + "-" + std::to_string(i);
      r.bytes = static_cast<std::uint64_t>(bytes);
      auto lease = ledger->acquire(r, WaitOptions::for_seconds(30));
      if (!lease.ok()) return code_of(lease.status());
      const std::int64_t jobs = c->holders.fetch_add(1) + 1;
      const std::int64_t held = c->bytes.fetch_add(bytes) + bytes;
      if (jobs > max_jobs || held > capacity) c->violations.fetch_add(1);
      c->grants.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(500 + (i * 37) % 1500));  // work
      c->holders.fetch_sub(1);
      c->bytes.fetch_sub(bytes);
      if (Status s = ledger->release(r.job_id, JobOutcome::kSucceeded); !s.ok()) return code_of(s);
    }
    return 0;
  }
  if (mode == "probe" && argc == 6) {
    // probe SOCKET CAPACITY MAX_JOBS STOPFILE: watch the daemon's view until STOPFILE exists.
    auto ledger = connect_or_die(socket);
    const std::uint64_t capacity = std::strtoull(argv[3], nullptr, 10);
    const std::size_t max_jobs = std::strtoull(argv[4], nullptr, 10);
    long checks = 0;
    while (::access(argv[5], F_OK) != 0) {
      auto snap = ledger->snapshot();
      if (!snap.ok()) return code_of(snap.status());
      std::uint64_t leased = 0;
      for (const auto& l : snap->leases) leased += l.bytes;
      if (leased > capacity || snap->leases.size() > max_jobs ||
          snap->devices.at(0).leased_bytes != leased) {
        std::printf("violation: %zu leases, %llu bytes\n", snap->leases.size(),
                    static_cast<unsigned long long>(leased));
        return 12;
      }
      ++checks;
    }
    std::printf("checks=%ld\n", checks);
    return 0;
  }
  return 2;
}
