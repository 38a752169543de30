// Software prefetches that the compiler cannot drop.
//
// GCC 12's mod/ref analysis (-fipa-modref, on at -O2) sees that a function
// whose only statements are __builtin_prefetch writes no memory and deletes
// the calls to it: every prefetch helper in the CPU kernels compiled to
// nothing until 2026-12 (objdump showed no prefetch instruction in the addon),
// which is why turning them off "had no effect". A volatile asm stays.
#pragma once
#include <cstddef>
#include <cstdint>

namespace smartkv {

// One cache line into L2 (prefetcht1): for data read a while later, without
// holding one of the few L1 miss buffers the demand loads need now.
inline void prefetch_line_l2(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
    __builtin_prefetch(p, 0, 2);  // may be dropped as above; only x86 is built and measured
#endif
}

// Every line of [p, p + bytes) into L2.
inline void prefetch_l2(const uint8_t* p, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) prefetch_line_l2(p + off);
}

}  // namespace smartkv
