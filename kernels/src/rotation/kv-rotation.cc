#include "smartkv/kv-rotation.h"

#include <cmath>

namespace smartkv {

namespace {

int largest_power_of_two_dividing(int n) { return n & -n; }

// A fixed ±1 per dimension: the same on every machine and backend, so a
// cache written by one process reads back in another. Bit 16 of a 32-bit
// integer hash (murmur3's finaliser) of the index.
float sign_of(uint32_t i) {
    i ^= i >> 16;
    i *= 0x85ebca6bu;
    i ^= i >> 13;
    i *= 0xc2b2ae35u;
    i ^= i >> 16;
    return (i >> 16) & 1u ? -1.f : 1.f;
}

}  // namespace

kv_rotation::kv_rotation(int head_dim)
    : head_dim_(head_dim), block_(largest_power_of_two_dividing(head_dim)), sign_(size_t(head_dim)) {
    for (int i = 0; i < head_dim; ++i) sign_[size_t(i)] = sign_of(uint32_t(i));
}

// Fast Walsh–Hadamard transform: log2(b) butterfly passes of b/2 add/sub
// pairs, then one scale. b = 64: 6·32 = 192 butterflies per vector.
void kv_rotation::hadamard_blocks(float* x) const {
    const float scale = 1.f / std::sqrt(float(block_));
    for (int base = 0; base < head_dim_; base += block_) {
        float* b = x + base;
        for (int h = 1; h < block_; h *= 2)
            for (int i = 0; i < block_; i += 2 * h)
                for (int j = i; j < i + h; ++j) {
                    const float u = b[j], w = b[j + h];
                    b[j] = u + w;
                    b[j + h] = u - w;
                }
        for (int i = 0; i < block_; ++i) b[i] *= scale;
    }
}

void kv_rotation::rotate(float* x, size_t n_vectors) const {
    for (size_t v = 0; v < n_vectors; ++v) {
        float* row = x + v * size_t(head_dim_);
        for (int i = 0; i < head_dim_; ++i) row[i] *= sign_[size_t(i)];
        hadamard_blocks(row);
    }
}

void kv_rotation::unrotate(float* x, size_t n_vectors) const {
    for (size_t v = 0; v < n_vectors; ++v) {
        float* row = x + v * size_t(head_dim_);
        hadamard_blocks(row);
        for (int i = 0; i < head_dim_; ++i) row[i] *= sign_[size_t(i)];
    }
}

}  // namespace smartkv
