"""GET /metrics through a real Prometheus text-format parser, against leases the test took."""
from prometheus_client.parser import text_string_to_metric_families

GiB = 1024**3
MiB = 1024**2


def scrape(server):
    status, headers, body = server.request("/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    return families, body


def samples(families, family, name=None):
    """{frozenset(labels.items()) or gpu index: value} for one family's samples called name."""
    name = name or family
    return {s.labels.get("gpu", frozenset(s.labels.items())): s.value
            for s in families[family].samples if s.name == name}


def test_device_memory_follows_the_leases_taken(server):
    server.command("acquire render-a 3000 0 python render.py")
    server.command("acquire render-b 1000 0")
    server.command("acquire llm-c 5000 1 python serve.py")
    server.command("foreign 1 1536")
    families, _ = scrape(server)

    assert samples(families, "gpumgr_device_memory_total_bytes") == {"0": 24 * GiB, "1": 24 * GiB}
    capacity = int(0.8 * 24 * GiB)
    assert samples(families, "gpumgr_device_memory_capacity_bytes") == {"0": capacity, "1": capacity}
    assert samples(families, "gpumgr_device_memory_leased_bytes") == {"0": 4000 * MiB, "1": 5000 * MiB}
    assert samples(families, "gpumgr_device_memory_outside_bytes") == {"0": 0, "1": 1536 * MiB}
    assert samples(families, "gpumgr_device_memory_admissible_bytes") == {
        "0": capacity - 4000 * MiB, "1": capacity - 5000 * MiB - 1536 * MiB}
    assert samples(families, "gpumgr_device_leases_active") == {"0": 2, "1": 1}
    assert samples(families, "gpumgr_leases_active")[frozenset()] == 3
    assert samples(families, "gpumgr_queue_depth")[frozenset()] == 0

    # One label set per device: gpu, uuid and name.
    for s in families["gpumgr_device_memory_leased_bytes"].samples:
        assert set(s.labels) == {"gpu", "uuid", "name"}
        assert s.labels["uuid"] == "SIM-" + s.labels["gpu"]
        assert s.labels["name"] == "Simulated GPU (24 GiB)"


def test_readings_units_and_missing_fields(server):
    server.command("util 0 42")
    server.command("temp 1 77")
    server.command("health 1 0 GPU is lost")
    families, body = scrape(server)
    assert samples(families, "gpumgr_device_utilization_ratio")["0"] == 0.42
    assert samples(families, "gpumgr_device_temperature_celsius")["1"] == 77
    assert samples(families, "gpumgr_device_healthy") == {"0": 1, "1": 0}
    # Simulated devices report no power: no sample (rather than a made-up 0), but the family
    # is still described.
    assert families["gpumgr_device_power_watts"].samples == []
    assert "# TYPE gpumgr_device_power_watts gauge" in body


def test_jobs_by_outcome_and_the_queue(server):
    server.command("acquire a 10000 0")
    server.command("acquire b 10000 1")
    server.command("wait big 12000 0 python big.py")  # fits nowhere until a or b ends
    server.wait_for(lambda: server.command("status").endswith("queue=1"), "the queued job")
    families, _ = scrape(server)
    assert samples(families, "gpumgr_queue_depth")[frozenset()] == 1

    server.command("reject huge 30000")  # larger than any capacity: refused, counted
    server.command("release a")  # big is granted on device 0
    server.wait_for(lambda: server.command("status") == "ok leases=2 queue=0", "the grant")
    server.command("release b failed")
    server.command("release big")
    families, _ = scrape(server)
    assert families["gpumgr_jobs"].type == "counter"
    jobs = {s.labels["outcome"]: s.value for s in families["gpumgr_jobs"].samples
            if s.name == "gpumgr_jobs_total"}
    assert jobs == {"succeeded": 2, "failed": 1, "rejected": 1, "timed_out": 0, "cancelled": 0}
    assert samples(families, "gpumgr_leases_active")[frozenset()] == 0

    # Histograms: cumulative buckets ending in +Inf, which equals _count.
    for name, observations in (("gpumgr_job_hold_seconds", 3), ("gpumgr_job_wait_seconds", 3)):
        family = families[name]
        assert family.type == "histogram"
        buckets = [(float(s.labels["le"]), s.value) for s in family.samples
                   if s.name == name + "_bucket"]
        assert buckets[-1][0] == float("inf")
        assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
        counts = [n for _, n in buckets]
        assert counts == sorted(counts), f"{name} buckets are not cumulative: {counts}"
        count = next(s.value for s in family.samples if s.name == name + "_count")
        assert count == observations and counts[-1] == count
        total = next(s.value for s in family.samples if s.name == name + "_sum")
        assert total >= 0
    # big waited for a release: its wait is in the sum, and above the smallest bucket or not,
    # at least one observation took longer than zero.
    wait_sum = next(s.value for s in families["gpumgr_job_wait_seconds"].samples
                    if s.name == "gpumgr_job_wait_seconds_sum")
    assert wait_sum > 0


def test_every_family_is_described_and_named_by_convention(server):
    families, body = scrape(server)
    for name, family in families.items():
        assert name.startswith("gpumgr_"), name
        assert family.documentation, f"{name} has no HELP"
        assert f"# TYPE {name if family.type != 'counter' else name + '_total'} {family.type}" in body
    build = families["gpumgr_build_info"].samples[0]
    assert build.value == 1 and build.labels["version"] and build.labels["backend"] == "simulated"
    assert samples(families, "gpumgr_uptime_seconds")[frozenset()] >= 0
    assert samples(families, "gpumgr_memory_limit_ratio")[frozenset()] == 0.8
    assert samples(families, "gpumgr_max_concurrent_jobs")[frozenset()] == 3


def lease_samples(families, family):
    """{(job_id, gpu) or job_id: value} for a per-lease family."""
    out = {}
    for s in families[family].samples:
        key = (s.labels["job_id"], s.labels["gpu"]) if "gpu" in s.labels else s.labels["job_id"]
        out[key] = s.value
    return out


def test_lease_use_against_the_lease_and_overuse(server):
    # The fixture holds every lease it takes; `use` says what it uses on a device, which its
    # one lease there is charged with.
    server.command("acquire over 2000 0 python over.py")
    server.command("acquire calm 3000 1")
    server.command("use 0 3000")  # 1000 MiB beyond its lease: over the 5% tolerance
    server.command("use 1 1000")
    server.wait_for(lambda: lease_samples(scrape(server)[0], "gpumgr_lease_overused")["over"] == 1,
                    "the poll that sees the overuse")
    families, body = scrape(server)
    assert lease_samples(families, "gpumgr_lease_size_bytes") == {
        ("over", "0"): 2000 * MiB, ("calm", "1"): 3000 * MiB}
    assert lease_samples(families, "gpumgr_lease_used_bytes") == {
        ("over", "0"): 3000 * MiB, ("calm", "1"): 1000 * MiB}
    assert lease_samples(families, "gpumgr_lease_peak_used_bytes") == {
        ("over", "0"): 3000 * MiB, ("calm", "1"): 1000 * MiB}
    assert lease_samples(families, "gpumgr_lease_overused") == {"over": 1, "calm": 0}
    assert samples(families, "gpumgr_device_overuse_bytes") == {"0": 1000 * MiB, "1": 0}
    capacity = int(0.8 * 24 * GiB)
    # Admission counts the overuse: the holder took that memory from everyone else.
    assert samples(families, "gpumgr_device_memory_admissible_bytes") == {
        "0": capacity - 2000 * MiB - 1000 * MiB, "1": capacity - 3000 * MiB}
    assert families["gpumgr_lease_overuse"].type == "counter"
    assert samples(families, "gpumgr_lease_overuse", "gpumgr_lease_overuse_total") == {
        frozenset(): 1}
    assert samples(families, "gpumgr_lease_overuse_terminations",
                   "gpumgr_lease_overuse_terminations_total") == {frozenset(): 0}
    assert "# TYPE gpumgr_lease_overuse_total counter" in body

    # Back under: the flag and the device's overuse go, the peak and the count stay.
    server.command("use 0 1500")
    server.wait_for(lambda: lease_samples(scrape(server)[0], "gpumgr_lease_used_bytes")[
        ("over", "0")] == 1500 * MiB, "the poll that sees the drop")
    families, _ = scrape(server)
    assert lease_samples(families, "gpumgr_lease_peak_used_bytes")[("over", "0")] == 3000 * MiB
    assert lease_samples(families, "gpumgr_lease_overused")["over"] == 0
    assert samples(families, "gpumgr_device_overuse_bytes") == {"0": 0, "1": 0}
    assert samples(families, "gpumgr_lease_overuse", "gpumgr_lease_overuse_total") == {
        frozenset(): 1}

    # Going over again is a second episode.
    server.command("use 0 2500")
    server.wait_for(lambda: samples(scrape(server)[0], "gpumgr_lease_overuse",
                                    "gpumgr_lease_overuse_total") == {frozenset(): 2},
                    "the second episode")

    # Released: its samples go.
    server.command("release over")
    families, _ = scrape(server)
    assert set(lease_samples(families, "gpumgr_lease_size_bytes")) == {("calm", "1")}
    assert "over" not in lease_samples(families, "gpumgr_lease_overused")


def test_unknown_lease_use_has_no_sample(server):
    server.command("acquire seen 1000 0")
    server.command("acquire blind 1000 1")
    server.command("use 1 500")
    server.wait_for(lambda: ("blind", "1") in lease_samples(scrape(server)[0],
                                                            "gpumgr_lease_used_bytes"),
                    "blind's use to be measured")
    # As where the backend cannot attribute memory to processes: absent, not 0.
    server.command("hide-usage blind")
    families, _ = scrape(server)
    assert lease_samples(families, "gpumgr_lease_used_bytes") == {("seen", "0"): 0}
    assert lease_samples(families, "gpumgr_lease_peak_used_bytes") == {("seen", "0"): 0}
    assert lease_samples(families, "gpumgr_lease_size_bytes") == {
        ("seen", "0"): 1000 * MiB, ("blind", "1"): 1000 * MiB}
    assert lease_samples(families, "gpumgr_lease_overused") == {"seen": 0, "blind": 0}
