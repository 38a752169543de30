#include "master-tier.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "smartkv/engine.h"
#include "smartkv/formats.h"

namespace smartkv {

namespace {
[[noreturn]] void tier_fail(const std::string& what) {
    throw engine_error(error_code::internal, "master tier: " + what + ": " + std::strerror(errno));
}
}  // namespace

mmap_file_tier::mmap_file_tier(const std::string& dir, int n_kv_heads, int head_dim)
    : row_elems_(size_t(2) * size_t(n_kv_heads) * size_t(head_dim)), head_dim_(head_dim) {
    std::string path = dir + "/smartkv-master-XXXXXX";
    std::vector<char> name(path.begin(), path.end());
    name.push_back('\0');
    fd_ = mkstemp(name.data());
    if (fd_ < 0) tier_fail("cannot create a file in " + dir);
    // Unlinked at once: the open descriptor keeps the bytes, and a process that
    // dies (or forgets to free) leaves nothing in the directory.
    unlink(name.data());
}

mmap_file_tier::~mmap_file_tier() {
    if (map_) munmap(map_, bytes_);
    if (fd_ >= 0) close(fd_);
}

size_t mmap_file_tier::held_bytes_if(size_t n_rows) const {
    const size_t need = n_rows * row_elems_ * sizeof(half_bits);
    const size_t rounded = (need + chunk_bytes - 1) / chunk_bytes * chunk_bytes;
    return rounded > bytes_ ? rounded : bytes_;
}

void mmap_file_tier::resize(size_t n_rows) {
    const size_t want = held_bytes_if(n_rows);
    if (want == bytes_) return;
    if (ftruncate(fd_, off_t(want)) != 0) tier_fail("cannot grow the file to " + std::to_string(want) + " bytes");
    void* m = map_ ? mremap(map_, bytes_, want, MREMAP_MAYMOVE)
                   : mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (m == MAP_FAILED) tier_fail("cannot map " + std::to_string(want) + " bytes");
    map_ = static_cast<half_bits*>(m);
    bytes_ = want;
}

void mmap_file_tier::write(size_t pos, const float* k, const float* v) {
    const size_t hd = row_elems_ / 2;
    half_bits* row = map_ + pos * row_elems_;
    for (size_t i = 0; i < hd; ++i) {
        row[i] = float_to_half(k[i]);
        row[hd + i] = float_to_half(v[i]);
    }
}

void mmap_file_tier::read(size_t pos, int head, float* k, float* v) const {
    const size_t D = size_t(head_dim_), hd = row_elems_ / 2;
    const half_bits* row = map_ + pos * row_elems_ + size_t(head) * D;
    for (size_t d = 0; d < D; ++d) {
        k[d] = half_to_float(row[d]);
        v[d] = half_to_float(row[hd + d]);
    }
}

std::unique_ptr<master_tier> make_master_tier(const std::string& dir, int n_kv_heads, int head_dim) {
    std::string d = dir;
    if (d.empty()) {
        const char* t = std::getenv("TMPDIR");
        d = t && *t ? t : "/tmp";
    }
    return std::make_unique<mmap_file_tier>(d, n_kv_heads, head_dim);
}

}  // namespace smartkv
