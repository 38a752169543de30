// The master tier (cpu/master-tier.h): a reversible sequence keeps its FP16
// copy in memory-mapped files under cfg.master_dir, counted as
// memory_stats::master and nowhere else; a downgrade-only sequence has none;
// nothing is left in the directory, and the files' bytes are released when
// the sequence is freed. Upgrades read the copy back.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "smartkv/engine.h"

using namespace smartkv;

namespace {

std::vector<float> normal(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

std::string fresh_dir() {
    char tmpl[] = "/tmp/smartkv-master-check-XXXXXX";
    const char* d = mkdtemp(tmpl);
    return d ? d : "";
}

size_t entries(const std::string& dir) {
    size_t n = 0;
    if (DIR* d = opendir(dir.c_str())) {
        while (dirent* e = readdir(d))
            if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") ++n;
        closedir(d);
    }
    return n;
}

// Bytes of this process's open files that lived under `dir` (unlinked ones
// show as "<path> (deleted)"): what the master tier really holds.
size_t open_file_bytes(const std::string& dir, size_t* files) {
    size_t bytes = 0;
    *files = 0;
    DIR* d = opendir("/proc/self/fd");
    if (!d) return 0;
    while (dirent* e = readdir(d)) {
        const std::string fd = std::string("/proc/self/fd/") + e->d_name;
        char target[4096];
        const ssize_t len = readlink(fd.c_str(), target, sizeof target - 1);
        if (len <= 0) continue;
        target[len] = '\0';
        if (std::string(target).rfind(dir + "/", 0) != 0) continue;
        struct stat st;
        if (stat(fd.c_str(), &st) == 0) bytes += size_t(st.st_size), ++*files;
    }
    closedir(d);
    return bytes;
}

engine_config tier_config(const std::string& dir) {
    engine_config c;
    c.n_layers = 2, c.n_q_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.n_threads = 2;
    c.master_dir = dir;
    return c;
}

}  // namespace

TEST(master_tier_holds_what_stats_report) {
    const std::string dir = fresh_dir();
    CHECK(!dir.empty());
    auto eng = make_cpu_backend(tier_config(dir));
    const uint32_t down = eng->create_sequence(storage_kind::mixed, 0.9f, precision_mode::downgrade_only);
    const uint32_t up = eng->create_sequence(storage_kind::mixed, 0.9f, precision_mode::reversible);
    std::mt19937 rng(5);
    size_t n = 0;
    for (int round = 0; round < 6; ++round) {
        const int rows = 1 + int(rng() % 700);
        auto k = normal(size_t(rows) * 128, 10 + round), v = normal(size_t(rows) * 128, 20 + round);
        for (int l = 0; l < 2; ++l) {
            eng->append(down, l, rows, k.data(), v.data());
            eng->append(up, l, rows, k.data(), v.data());
        }
        std::vector<uint32_t> pos;
        std::vector<uint8_t> fmt;
        // Downgrade-only: the new tokens go down from FP16 (older ones may not go up).
        for (size_t p = n; p < n + size_t(rows); ++p) pos.push_back(uint32_t(p)), fmt.push_back(uint8_t(1 + rng() % 3));
        eng->apply_plan(down, -1, pos.data(), fmt.data(), pos.size());
        n += size_t(rows);
        pos.clear(), fmt.clear();
        for (size_t p = 0; p < n; ++p) pos.push_back(uint32_t(p)), fmt.push_back(uint8_t(rng() % 4));  // ups and downs
        eng->apply_plan(up, -1, pos.data(), fmt.data(), pos.size());
        size_t files = 0;
        const size_t on_disk = open_file_bytes(dir, &files);
        const memory_stats su = eng->stats(up), sd = eng->stats(down);
        CHECK_MSG(sd.master == 0, "a downgrade-only sequence holds master bytes");
        CHECK_MSG(files == 2, "one tier file per layer of the reversible sequence, got " + std::to_string(files));
        CHECK_MSG(su.master == on_disk, "stats report " + std::to_string(su.master) + " master bytes, the files hold " +
                                            std::to_string(on_disk));
        // At least the FP16 rows, at most one 64 KiB growth chunk more per layer.
        const size_t rows_bytes = n * 2 * 2 * 64 * 2 * 2;
        CHECK(su.master >= rows_bytes && su.master < rows_bytes + 2 * 64 * 1024);
        // Same tokens, same plan shape: the master copy is not part of the hot bytes.
        CHECK(su.held() < su.fp16_equivalent + su.metadata + 4 * 2 * 8192);
        CHECK_MSG(entries(dir) == 0, "the tier's files must be unlinked as soon as they are made");
    }
    eng->free_sequence(up);
    size_t files = 0;
    CHECK_MSG(open_file_bytes(dir, &files) == 0 && files == 0, "freeing the sequence must close its tier files");
    eng.reset();
    rmdir(dir.c_str());
}

TEST(upgrades_read_the_master_tier) {
    const std::string dir = fresh_dir();
    auto eng = make_cpu_backend(tier_config(dir));
    const uint32_t seq = eng->create_sequence(storage_kind::mixed, 0.9f, precision_mode::reversible);
    const int n = 200;
    auto k = normal(size_t(n) * 128, 1), v = normal(size_t(n) * 128, 2);
    eng->append(seq, 0, n, k.data(), v.data());
    std::vector<uint32_t> pos(n);
    for (int i = 0; i < n; ++i) pos[size_t(i)] = uint32_t(i);
    std::vector<uint8_t> to2(n, 3), to16(n, 0);
    eng->apply_plan(seq, 0, pos.data(), to2.data(), pos.size());
    eng->apply_plan(seq, 0, pos.data(), to16.data(), pos.size());
    std::vector<float> kr(k.size()), vr(v.size());
    eng->read_kv(seq, 0, kr.data(), vr.data());
    double worst = 0.0;  // back at FP16: only FP16 rounding, not the 2-bit error (~0.5)
    for (size_t i = 0; i < k.size(); ++i)
        worst = std::max(worst, double(std::fabs(kr[i] - k[i])) + std::fabs(vr[i] - v[i]));
    CHECK_MSG(worst < 1e-2, "after 2 bits and back, a value is off by " + std::to_string(worst));
    // A downgrade-only sequence refuses the same upgrade, changing nothing.
    const uint32_t down = eng->create_sequence(storage_kind::mixed, 0.9f, precision_mode::downgrade_only);
    eng->append(down, 0, n, k.data(), v.data());
    eng->apply_plan(down, 0, pos.data(), to2.data(), pos.size());
    int code = -1;
    try {
        eng->apply_plan(down, 0, pos.data(), to16.data(), pos.size());
    } catch (const engine_error& e) {
        code = int(e.code);
    }
    CHECK(code == int(error_code::failed_precondition));
    CHECK(eng->stats(down).tokens_by_format[3] == size_t(n));
    eng.reset();
    rmdir(dir.c_str());
}

TEST(master_tier_in_a_missing_directory_is_an_error) {
    auto eng = make_cpu_backend(tier_config("/nonexistent/smartkv-master"));
    int code = -1;
    try {
        eng->create_sequence(storage_kind::mixed, 0.9f, precision_mode::reversible);
    } catch (const engine_error& e) {
        code = int(e.code);
    }
    CHECK(code == int(error_code::internal));
    CHECK(eng->total_held_bytes() == 0);
}
