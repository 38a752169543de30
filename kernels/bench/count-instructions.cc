// Exact user-space instruction counts of the attention kernels, per token per
// kv-head, independent of machine load.
//
// This VM exposes no performance counters (perf: <not supported>) and
// valgrind 3.19 cannot run AVX-512, so the parent process single-steps the
// child with ptrace between two markers (raise(SIGSTOP)) and counts steps.
// The marker's own cost is measured on an empty region and subtracted.
//
//   parent                 child
//   wait ── SIGSTOP ──────  raise()        region starts
//   SINGLESTEP × N          kernel calls
//   wait ── SIGSTOP ──────  raise()        region ends: print N - empty
//
// Usage: smartkv-count-instructions [n_blocks [profile [ref]]]   (32-token blocks, default 8)
// With ref = 1 the kernel regions run the scalar reference (attend_block_ref:
// what a CPU without a fast path runs) instead of attend_block_fast, which
// takes the AVX-512 or the AVX2 path, whichever this CPU has.
// With profile = 1 each region also writes "rip count" lines to
// /tmp/skv-profile-<region>.txt (addresses in the child, whose
// /proc/<pid>/maps goes to /tmp/skv-profile-maps.txt) for symbolisation.
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "cpu/attend-kernels.h"
#include "cpu/thread-pool.h"
#include "dense/dense-attention.h"
#include "smartkv/kivi.h"

using namespace smartkv;

namespace {

constexpr int D = 128, T = 32;

void marker() { raise(SIGSTOP); }

bool use_ref = false;  // count attend_block_ref instead of attend_block_fast

// One kv-head's blocks of format f (fp16 = the protected window's kind).
struct blocks {
    block_layout L;
    std::vector<uint8_t*> data;
};

blocks make_blocks(kv_format f, int n_blocks, std::mt19937& rng) {
    blocks b;
    b.L = make_block_layout(f, quant_mode::symmetric, D, 1, T);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> x(D);
    for (int i = 0; i < n_blocks; ++i) {
        uint8_t* p = static_cast<uint8_t*>(std::aligned_alloc(64, b.L.bytes));
        for (int t = 0; t < T; ++t)
            for (int kv = 0; kv < 2; ++kv) {
                for (auto& v : x) v = g(rng);
                const size_t codes = kv == 0 ? b.L.k_codes : b.L.v_codes, params = kv == 0 ? b.L.k_params : b.L.v_params;
                quantize_vector(f, quant_mode::symmetric, x.data(), D, p + codes + b.L.code_offset(0, t),
                                reinterpret_cast<half_bits*>(p + params + b.L.param_offset(0, t)));
            }
        int32_t* pos = reinterpret_cast<int32_t*>(p + b.L.pos);
        for (int t = 0; t < T; ++t) pos[t] = i * T + t;
        b.data.push_back(p);
    }
    return b;
}

// One kv-head's KIVI groups (kivi.h): keys per channel, values per token.
blocks make_kivi_blocks(kv_format f, int n_blocks, std::mt19937& rng) {
    blocks b;
    b.L = make_block_layout(f, quant_mode::asymmetric, D, 1, kivi_group, /*kivi_keys=*/true);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> keys(size_t(kivi_group) * D), x(D);  // [32][D], [D]
    for (int i = 0; i < n_blocks; ++i) {
        uint8_t* p = static_cast<uint8_t*>(std::aligned_alloc(64, b.L.bytes));
        for (auto& k : keys) k = g(rng);
        kivi_quantize_keys(f, keys.data(), D, p + b.L.k_codes, b.L.row, reinterpret_cast<half_bits*>(p + b.L.k_params));
        for (int t = 0; t < kivi_group; ++t) {
            for (auto& v : x) v = g(rng);
            quantize_vector(f, quant_mode::asymmetric, x.data(), D, p + b.L.v_codes + b.L.code_offset(0, t),
                            reinterpret_cast<half_bits*>(p + b.L.v_params + b.L.param_offset(0, t)));
        }
        int32_t* pos = reinterpret_cast<int32_t*>(p + b.L.pos);
        for (int t = 0; t < kivi_group; ++t) pos[t] = i * kivi_group + t;
        b.data.push_back(p);
    }
    return b;
}

// Decode attention of nq queries (one kv-head's group) over the blocks: the
// kernel calls of one (sequence, kv-head) task, then the importance pass.
void run_kernel(const blocks& b, kv_format f, int nq, bool with_importance, bool kivi = false) {
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0.f, 1.f);
    const int n = int(b.data.size()) * T;
    std::vector<float> q(size_t(nq) * D), qsum(nq), q8s(nq), m(nq, -std::numeric_limits<float>::infinity()), l(nq), z(nq),
        acc(size_t(nq) * D), scores(size_t(nq) * n), scratch(attend_scratch_floats(D, T)), probs(n);
    std::vector<int8_t> q8(size_t(nq) * D);
    std::vector<int32_t> q8sum(nq), row_pos(1, n);
    for (int i = 0; i < nq; ++i) {
        float amax = 0.f;
        for (int d = 0; d < D; ++d) q[size_t(i) * D + d] = g(rng) / std::sqrt(float(D)), amax = std::max(amax, std::fabs(q[size_t(i) * D + d]));
        q8s[i] = amax / 127.f;
        for (int d = 0; d < D; ++d) q8[size_t(i) * D + d] = int8_t(std::lrintf(q[size_t(i) * D + d] / q8s[i])), q8sum[i] += q8[size_t(i) * D + d];
    }
    head_query hq;
    hq.n_rows = 1;
    hq.group = nq;
    hq.head_dim = D;
    hq.q = q.data();
    hq.q_sum = qsum.data();
    hq.q8 = q8.data();
    hq.q8_scale = q8s.data();
    hq.q8_sum = q8sum.data();
    hq.row_pos = row_pos.data();
    head_state st{m.data(), l.data(), z.data(), acc.data()};
    const score_sink sink{scores.data(), size_t(n)};
    const block_kind kind = kivi ? block_kind::kivi : f == kv_format::fp16 ? block_kind::fp16 : block_kind::quantized;
    std::vector<block_ref> refs;  // [n_blocks]
    for (size_t i = 0; i < b.data.size(); ++i) refs.push_back({b.data[i], kind, f, T, false, uint32_t(i * T)});
    marker();
    // As cpu-attend.cc calls them: the fast path may fold a run of blocks at once.
    for (size_t i = 0; i < refs.size();) {
        if (use_ref) {
            attend_block_ref(b.L, quant_mode::symmetric, refs[i++], 0, hq, st, sink, scratch.data());
            continue;
        }
        i += size_t(attend_blocks_fast(b.L, quant_mode::symmetric, &refs[i], int(refs.size() - i), 0, hq, st, sink, scratch.data()));
    }
    if (with_importance)
        for (int i = 0; i < nq; ++i) add_probabilities(&scores[size_t(i) * n], size_t(n), m[i], 1.f / l[i], probs.data());
    marker();
}

void run_dense(int n, int nq) {
    std::mt19937 rng(3);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<uint16_t> k(size_t(n) * D), v(size_t(n) * D);
    for (auto& x : k) x = float_to_half(g(rng));
    for (auto& x : v) x = float_to_half(g(rng));
    std::vector<float> q(size_t(nq) * D), out(size_t(nq) * D);
    for (auto& x : q) x = g(rng);
    thread_pool pool(1);
    const dense_problem p{nq, 1, D, n, q.data(), k.data(), v.data(), out.data()};
    marker();
    dense_attention_f16(p, pool);
    marker();
}

// Child side: the regions, in the order the parent reports them.
void child(int n_blocks) {
    std::mt19937 rng(1);
    marker();  // empty region: the markers' own cost
    marker();
    const char* names[] = {"fp16", "int8", "int4", "int2"};
    for (int nq : {1, 4})
        for (int f = 0; f < n_formats; ++f) {
            const blocks b = make_blocks(kv_format(f), n_blocks, rng);
            std::printf("kernel %s nq=%d\n", names[f], nq);
            std::fflush(stdout);
            run_kernel(b, kv_format(f), nq, false);
            std::printf("kernel+importance %s nq=%d\n", names[f], nq);
            std::fflush(stdout);
            run_kernel(b, kv_format(f), nq, true);
        }
    for (int nq : {1, 4})
        for (kv_format f : {kv_format::int2, kv_format::int4}) {
            const blocks b = make_kivi_blocks(f, n_blocks, rng);
            std::printf("kernel kivi-%d nq=%d\n", f == kv_format::int2 ? 2 : 4, nq);
            std::fflush(stdout);
            run_kernel(b, f, nq, false, true);
            std::printf("kernel+importance kivi-%d nq=%d\n", f == kv_format::int2 ? 2 : 4, nq);
            std::fflush(stdout);
            run_kernel(b, f, nq, true, true);
        }
    for (int nq : {1, 4}) {
        std::printf("dense-f16 nq=%d\n", nq);
        std::fflush(stdout);
        run_dense(n_blocks * T, nq);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const int n_blocks = argc > 1 ? std::atoi(argv[1]) : 8;
    const bool profile = argc > 2 && std::atoi(argv[2]) == 1;
    use_ref = argc > 3 && std::atoi(argv[3]) == 1;
    int region = 0;
    if (!use_ref && !fast_path_available(D)) {
        std::fprintf(stderr, "no fast path (AVX-512 or AVX2) on this CPU\n");
        return 1;
    }
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    const pid_t pid = fork();
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
        child(n_blocks);
        _exit(0);
    }
    const double tokens = double(n_blocks) * T;
    long empty = -1;
    for (;;) {
        int status = 0;
        waitpid(pid, &status, 0);  // region start (or exit)
        if (WIFEXITED(status)) break;
        if (!(WIFSTOPPED(status) && WSTOPSIG(status) == SIGSTOP)) {
            ptrace(PTRACE_CONT, pid, nullptr, nullptr);
            continue;
        }
        long steps = 0;
        std::map<unsigned long long, long> hist;
        for (;;) {
            ptrace(PTRACE_SINGLESTEP, pid, nullptr, nullptr);
            waitpid(pid, &status, 0);
            if (WIFSTOPPED(status) && WSTOPSIG(status) == SIGSTOP) break;
            ++steps;
            if (profile) {
                user_regs_struct regs;
                ptrace(PTRACE_GETREGS, pid, nullptr, &regs);
                ++hist[regs.rip];
            }
        }
        if (profile) {
            char path[64];
            std::snprintf(path, sizeof path, "/tmp/skv-profile-%d.txt", region);
            if (FILE* f = std::fopen(path, "w")) {
                for (const auto& [rip, n] : hist) std::fprintf(f, "%llx %ld\n", rip, n);
                std::fclose(f);
            }
            if (region == 0) {
                std::snprintf(path, sizeof path, "cp /proc/%d/maps /tmp/skv-profile-maps.txt", int(pid));
                if (std::system(path) != 0) std::fprintf(stderr, "could not copy the maps\n");
            }
        }
        ++region;
        if (empty < 0) {
            empty = steps;
        } else {
            std::printf("  %ld instructions, %.1f per token per kv-head\n", steps - empty, double(steps - empty) / tokens);
        }
        ptrace(PTRACE_CONT, pid, nullptr, nullptr);
    }
    return 0;
}
