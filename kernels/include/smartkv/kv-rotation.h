// A fixed orthogonal rotation applied to q, k and v before they reach the
// cache (the rotate_kv option), and undone on the attention output. q·k and
// Σ p·v are unchanged by an orthogonal rotation, but per-token quantisation of
// rotated vectors is much better when a few channels carry outliers: the
// rotation spreads each channel's energy over the whole block, so one scale
// per vector no longer has to cover a channel 10x larger than the rest, and
// the rotated vector is close to Gaussian, which is what lets a clipped 2-bit
// scale (formats.h: symmetric_clip) halve the 2-bit error. (Low-bit
// papers call this incoherence processing; here it is a randomised
// Walsh–Hadamard transform.)
//
// R = H·S / sqrt(b) on each block of b dims, where H is the b×b Sylvester
// Hadamard matrix, S a fixed ±1 diagonal, and b the largest power of two
// dividing head_dim (head_dim is a multiple of 32, so b >= 32). R is
// orthogonal; its inverse is S·H / sqrt(b).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace smartkv {

class kv_rotation {
public:
    explicit kv_rotation(int head_dim);
    int head_dim() const { return head_dim_; }
    int block() const { return block_; }
    // In place on n vectors of head_dim floats each: x <- R x, and x <- R^T x.
    void rotate(float* x, size_t n_vectors) const;
    void unrotate(float* x, size_t n_vectors) const;

private:
    void hadamard_blocks(float* x) const;  // x <- (H / sqrt(b)) x, block by block, one vector
    int head_dim_, block_;
    std::vector<float> sign_;  // [head_dim] ±1: the diagonal S
};

}  // namespace smartkv
