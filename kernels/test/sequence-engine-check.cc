// sequence_engine (engine/sequence-engine.h), the registry and checks the CPU
// and CUDA backends share, over a stand-in store with no KV bytes: ids, the
// layers it asks for, the memory limit, batch and plan validation (nothing
// changes when a check fails), the two plan orders, and the accounting.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "check.h"
#include "engine/sequence-engine.h"

using namespace smartkv;

namespace {

// Bytes a token holds in the stand-in, by kv_format (fp16, int8, int4, int2).
constexpr size_t k_token_bytes[n_formats] = {64, 32, 16, 8};
constexpr size_t k_token_metadata = 4;

struct fake_held {
    size_t payload = 0, params = 0, metadata = 0, master = 0;
    size_t total() const { return payload + params + metadata; }
};
struct fake_bucket {
    size_t n = 0;
    size_t size() const { return n; }
};
struct fake_slot {
    kv_format fmt;
};

// A layer: one format per token, bytes from k_token_bytes.
class fake_store {
public:
    fake_store(storage_kind kind, bool reversible) : kind_(kind), reversible_(reversible) {}
    size_t size() const { return fmt_.size(); }
    bool reversible() const { return reversible_; }
    storage_kind kind() const { return kind_; }
    fake_slot where(size_t pos) const { return {fmt_[pos]}; }
    fake_bucket bucket_of(kv_format f) const {
        fake_bucket b;
        for (kv_format x : fmt_) b.n += x == f;
        return b;
    }
    size_t n_groups() const { return kind_ == storage_kind::mixed ? 0 : fmt_.size() / kivi_group; }
    fake_held held() const {
        fake_held h;
        for (kv_format f : fmt_) h.payload += k_token_bytes[int(f)];
        h.metadata = fmt_.size() * k_token_metadata;
        h.master = reversible_ ? fmt_.size() * k_token_bytes[0] : 0;
        return h;
    }
    size_t growth_for_append(int n_rows) const { return size_t(n_rows) * (k_token_bytes[0] + k_token_metadata); }
    // Each move that gains bytes, against the stored formats.
    size_t growth_for_moves(const uint32_t* positions, const uint8_t* formats, size_t n) const {
        size_t g = 0;
        for (size_t i = 0; i < n; ++i) {
            const size_t from = k_token_bytes[int(fmt_[positions[i]])], to = k_token_bytes[formats[i]];
            if (to > from) g += to - from;
        }
        return g;
    }
    void append(int n_rows) { fmt_.insert(fmt_.end(), size_t(n_rows), kv_format::fp16); }
    bool move(uint32_t pos, kv_format to) {
        const bool changed = fmt_[pos] != to;
        fmt_[pos] = to;
        return changed;
    }

private:
    storage_kind kind_;
    bool reversible_;
    std::vector<kv_format> fmt_;  // [n] format of each token
};

// The stand-in backend: the shared registry and checks, a trivial data path.
class fake_engine final : public sequence_engine<fake_store> {
public:
    struct made {
        storage_kind kind;
        bool reversible;
    };
    fake_engine(const engine_config& cfg, plan_order order) : sequence_engine(cfg), order_(order) {}

    const char* name() const override { return "fake"; }
    void append(uint32_t seq, int layer, int n_rows, const float*, const float*) override {
        std::lock_guard<std::mutex> lock(mutex_);
        store_for_append(seq, layer, n_rows).append(n_rows);
    }
    void attend(const attend_request* requests, size_t n_requests) override {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::vector<fake_store*> stores = stores_for_batch(requests, n_requests);
        for (size_t i = 0; i < n_requests; ++i) stores[i]->append(requests[i].n_rows);
    }
    move_result apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                           size_t n) override {
        std::lock_guard<std::mutex> lock(mutex_);
        sequence& s = get(seq);
        const layer_span span = check_plan(s, seq, layer, positions, formats, n, order_);
        move_result r;
        for (int l = span.first; l < span.last; ++l)
            for (size_t i = 0; i < n; ++i) r.tokens_changed += s.layers[size_t(l)]->move(positions[i], kv_format(formats[i]));
        return r;
    }
    void report(uint32_t, int, const token_report&) const override {
        throw engine_error(error_code::internal, "not in the stand-in");
    }
    void read_kv(uint32_t, int, float*, float*) const override {
        throw engine_error(error_code::internal, "not in the stand-in");
    }
    // The format of (seq, layer, pos), for the checks.
    kv_format format_at(uint32_t seq, int layer, size_t pos) const {
        std::lock_guard<std::mutex> lock(mutex_);
        return get_layer(seq, layer).where(pos).fmt;
    }
    std::vector<made> layers_made;

private:
    std::unique_ptr<fake_store> make_layer(storage_kind kind, bool reversible) override {
        layers_made.push_back({kind, reversible});
        return std::make_unique<fake_store>(kind, reversible);
    }
    plan_order order_;
};

engine_config fake_config(size_t limit = 0) {
    engine_config c;
    c.n_layers = 3, c.n_q_heads = 4, c.n_kv_heads = 2, c.head_dim = 32;
    c.memory_limit_bytes = limit;
    return c;
}

// The engine_error code `fn` throws (-1: none), its message in *what.
template <class Fn>
int code_of(Fn&& fn, std::string* what = nullptr) {
    try {
        fn();
    } catch (const engine_error& e) {
        if (what) *what = e.what();
        return int(e.code);
    }
    return -1;
}
constexpr int k_invalid = int(error_code::invalid_argument), k_not_found = int(error_code::not_found),
              k_exhausted = int(error_code::resource_exhausted), k_precondition = int(error_code::failed_precondition);

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

const float k_dummy[1] = {0.f};  // rows are not read by the stand-in; the batch check wants pointers
float k_dummy_out[1];

attend_request request(uint32_t seq, int layer, int n_rows) {
    attend_request r;
    r.seq = seq, r.layer = layer, r.n_rows = n_rows;
    r.q = r.k_new = r.v_new = k_dummy;
    r.out = k_dummy_out;
    return r;
}

}  // namespace

TEST(sequence_engine_config_is_validated_first) {
    engine_config c = fake_config();
    c.head_dim = 48;
    std::string what;
    CHECK(code_of([&] { fake_engine e(c, plan_order::as_given); }, &what) == k_invalid);
    CHECK(contains(what, "head_dim"));
}

TEST(sequence_engine_registry_ids_and_layers) {
    fake_engine e(fake_config(), plan_order::as_given);
    CHECK(e.create_sequence(storage_kind::mixed) == 1);
    CHECK(e.create_sequence(storage_kind::mixed, 0.5f, precision_mode::reversible) == 2);
    CHECK(e.create_sequence(storage_kind::kivi2, 0.5f, precision_mode::reversible) == 3);
    // One store per layer; a master copy only for a reversible mixed sequence.
    CHECK(e.layers_made.size() == 9);
    for (size_t i = 0; i < e.layers_made.size(); ++i) CHECK(e.layers_made[i].reversible == (i / 3 == 1));
    CHECK(e.layers_made[8].kind == storage_kind::kivi2);

    e.free_sequence(2);
    CHECK(!e.has_sequence(2) && e.has_sequence(1) && e.has_sequence(3));
    std::string what;
    CHECK(code_of([&] { e.free_sequence(2); }, &what) == k_not_found);
    CHECK(what == "unknown sequence 2");
    CHECK(code_of([&] { e.sequence_length(2, 0); }) == k_not_found);
    CHECK(code_of([&] { e.stats(2); }) == k_not_found);
    CHECK(code_of([&] { e.sequence_length(1, 3); }, &what) == k_invalid);
    CHECK(what == "layer 3 is out of range [0, 3)");
    CHECK(code_of([&] { e.sequence_length(1, -1); }) == k_invalid);

    // Bad arguments are refused before an id or a layer is spent; ids are never reused.
    const size_t made = e.layers_made.size();
    CHECK(code_of([&] { e.create_sequence(storage_kind(7)); }, &what) == k_invalid);
    CHECK(what == "unknown storage kind");
    CHECK(code_of([&] { e.create_sequence(storage_kind::mixed, 1.f); }) == k_invalid);
    CHECK(code_of([&] { e.create_sequence(storage_kind::mixed, -0.1f); }) == k_invalid);
    CHECK(code_of([&] { e.create_sequence(storage_kind::mixed, std::nanf("")); }) == k_invalid);
    CHECK(e.layers_made.size() == made);
    CHECK(e.create_sequence(storage_kind::mixed) == 4);

    // The short form takes the config's precision mode.
    engine_config c = fake_config();
    c.master_copy = true;
    fake_engine r(c, plan_order::as_given);
    r.create_sequence(storage_kind::mixed);
    CHECK(r.layers_made.size() == 3 && r.layers_made[0].reversible);
}

TEST(sequence_engine_memory_limit) {
    // Two fp16 rows in one layer fit exactly; the third byte-for-byte does not.
    const size_t row = k_token_bytes[0] + k_token_metadata;
    fake_engine e(fake_config(2 * row), plan_order::as_given);
    const uint32_t a = e.create_sequence(storage_kind::mixed), b = e.create_sequence(storage_kind::mixed);
    e.append(a, 0, 1, k_dummy, k_dummy);
    e.append(b, 2, 1, k_dummy, k_dummy);  // the limit counts every sequence and layer
    CHECK(e.total_held_bytes() == 2 * row);
    std::string what;
    CHECK(code_of([&] { e.append(a, 1, 1, k_dummy, k_dummy); }, &what) == k_exhausted);
    CHECK(what == "KV memory limit reached: holding " + std::to_string(2 * row) + " bytes, need " +
                      std::to_string(row) + " more, limit " + std::to_string(2 * row));
    CHECK(e.sequence_length(a, 1) == 0 && e.total_held_bytes() == 2 * row);
    // Row and layer checks come before the limit.
    CHECK(code_of([&] { e.append(a, 0, 0, k_dummy, k_dummy); }) == k_invalid);
    CHECK(code_of([&] { e.append(a, 5, 1, k_dummy, k_dummy); }) == k_invalid);
    // Freeing makes room again.
    e.free_sequence(b);
    e.append(a, 1, 1, k_dummy, k_dummy);
    CHECK(e.total_held_bytes() == 2 * row);

    // limit 0: none.
    fake_engine u(fake_config(0), plan_order::as_given);
    const uint32_t s = u.create_sequence(storage_kind::mixed);
    u.append(s, 0, 100000, k_dummy, k_dummy);
    CHECK(u.sequence_length(s, 0) == 100000);
}

TEST(sequence_engine_batch_is_checked_whole) {
    const size_t row = k_token_bytes[0] + k_token_metadata;
    fake_engine e(fake_config(3 * row), plan_order::as_given);
    const uint32_t a = e.create_sequence(storage_kind::mixed), b = e.create_sequence(storage_kind::mixed);
    auto lengths = [&] { return e.sequence_length(a, 0) + e.sequence_length(a, 1) + e.sequence_length(b, 0); };
    std::string what;

    attend_request twice[2] = {request(a, 0, 1), request(a, 0, 1)};
    CHECK(code_of([&] { e.attend(twice, 2); }, &what) == k_invalid);
    CHECK(what == "sequence " + std::to_string(a) + " layer 0 appears twice in one batch");
    attend_request unknown[2] = {request(a, 0, 1), request(99, 0, 1)};
    CHECK(code_of([&] { e.attend(unknown, 2); }) == k_not_found);
    attend_request no_rows[2] = {request(a, 0, 1), request(b, 0, 0)};
    CHECK(code_of([&] { e.attend(no_rows, 2); }, &what) == k_invalid);
    CHECK(what == "request 1: n_rows must be positive");
    attend_request no_out[1] = {request(a, 0, 1)};
    no_out[0].out = nullptr;
    CHECK(code_of([&] { e.attend(no_out, 1); }, &what) == k_invalid);
    CHECK(what == "request 0: q, k_new, v_new and out are required");
    // Each request fits on its own, the batch together does not.
    attend_request over[2] = {request(a, 0, 2), request(b, 0, 2)};
    CHECK(code_of([&] { e.attend(over, 2); }) == k_exhausted);
    CHECK(lengths() == 0);  // no check above appended anything

    attend_request fits[3] = {request(a, 0, 1), request(a, 1, 1), request(b, 0, 1)};
    e.attend(fits, 3);
    CHECK(lengths() == 3);
}

TEST(sequence_engine_plan_checks) {
    fake_engine e(fake_config(), plan_order::as_given);
    const uint32_t down = e.create_sequence(storage_kind::mixed, 0.9f, precision_mode::downgrade_only);
    const uint32_t up = e.create_sequence(storage_kind::mixed, 0.9f, precision_mode::reversible);
    const uint32_t kivi = e.create_sequence(storage_kind::kivi4);
    for (uint32_t s : {down, up, kivi})
        for (int l = 0; l < 3; ++l) e.append(s, l, 4, k_dummy, k_dummy);
    const uint32_t p0[1] = {0};
    const uint8_t int4[1] = {uint8_t(kv_format::int4)}, fp16[1] = {uint8_t(kv_format::fp16)};
    std::string what;

    CHECK(code_of([&] { e.apply_plan(kivi, 0, p0, int4, 1); }, &what) == k_precondition);
    CHECK(what == "sequence " + std::to_string(kivi) + " uses KIVI storage; plans do not apply");
    CHECK(code_of([&] { e.apply_plan(down, -2, p0, int4, 1); }) == k_invalid);
    CHECK(code_of([&] { e.apply_plan(down, 3, p0, int4, 1); }) == k_invalid);
    CHECK(code_of([&] { e.apply_plan(99, 0, p0, int4, 1); }) == k_not_found);

    // A bad entry anywhere refuses the whole plan: the good ones before it do not move.
    const uint32_t far[2] = {1, 4};
    const uint8_t two_int4[2] = {uint8_t(kv_format::int4), uint8_t(kv_format::int4)};
    CHECK(code_of([&] { e.apply_plan(down, 1, far, two_int4, 2); }, &what) == k_invalid);
    CHECK(what == "plan names token 4 but layer 1 holds 4");
    const uint32_t near[2] = {1, 2};
    const uint8_t bad_format[2] = {uint8_t(kv_format::int4), uint8_t(n_formats)};
    CHECK(code_of([&] { e.apply_plan(down, -1, near, bad_format, 2); }, &what) == k_invalid);
    CHECK(what == "plan gives token 2 unknown format 4");
    CHECK(e.format_at(down, 0, 1) == kv_format::fp16);

    // layer -1: every layer.
    CHECK(e.apply_plan(down, -1, p0, int4, 1).tokens_changed == 3);
    for (int l = 0; l < 3; ++l) CHECK(e.format_at(down, l, 0) == kv_format::int4);
    // Raising needs the master copy.
    CHECK(code_of([&] { e.apply_plan(down, 0, p0, fp16, 1); }, &what) == k_precondition);
    CHECK(what == "plan raises token 0 from int4 to fp16, which needs the FP16 master copy: the sequence is "
                  "downgrade-only");
    CHECK(e.apply_plan(up, 0, p0, int4, 1).tokens_changed == 1);
    CHECK(e.apply_plan(up, 0, p0, fp16, 1).tokens_changed == 1);
}

TEST(sequence_engine_plan_orders) {
    // A downgrade-only token at int8, a plan that names it twice: int4, then int8.
    // as_given (CUDA: moves in plan order) sees int4 -> int8, an upgrade, and
    // refuses; losers_first (CPU: judged against the stored int8) lets it through.
    const uint32_t twice[2] = {0, 0};
    const uint8_t down_up[2] = {uint8_t(kv_format::int4), uint8_t(kv_format::int8)};
    const uint8_t int8[1] = {uint8_t(kv_format::int8)};
    for (plan_order order : {plan_order::as_given, plan_order::losers_first}) {
        fake_engine e(fake_config(), order);
        const uint32_t s = e.create_sequence(storage_kind::mixed, 0.9f, precision_mode::downgrade_only);
        e.append(s, 0, 2, k_dummy, k_dummy);
        e.apply_plan(s, 0, twice, int8, 1);
        const int code = code_of([&] { e.apply_plan(s, 0, twice, down_up, 2); });
        if (order == plan_order::as_given) {
            CHECK(code == k_precondition);
            CHECK(e.format_at(s, 0, 0) == kv_format::int8);
        } else {
            CHECK(code == -1);
        }
    }
}

TEST(sequence_engine_plan_memory_limit) {
    // Four int2 tokens of a reversible sequence raised to fp16 need 4 * 56
    // bytes more: refused one byte short of that, unchanged; allowed at it.
    const size_t gain = 4 * (k_token_bytes[0] - k_token_bytes[3]);
    const uint32_t pos[4] = {0, 1, 2, 3};
    const uint8_t int2[4] = {3, 3, 3, 3}, fp16[4] = {0, 0, 0, 0};
    for (size_t extra : {gain - 1, gain}) {
        const size_t after_int2 = 4 * (k_token_bytes[3] + k_token_metadata);
        fake_engine e(fake_config(after_int2 + extra), plan_order::losers_first);
        const uint32_t s = e.create_sequence(storage_kind::mixed, 0.9f, precision_mode::reversible);
        // Fill in two steps so the appends fit under the limit, then lower to int2.
        e.append(s, 0, 2, k_dummy, k_dummy);
        e.apply_plan(s, 0, pos, int2, 2);
        e.append(s, 0, 2, k_dummy, k_dummy);
        e.apply_plan(s, 0, pos + 2, int2, 2);
        CHECK(e.total_held_bytes() == after_int2);
        const int code = code_of([&] { e.apply_plan(s, 0, pos, fp16, 4); });
        CHECK(code == (extra < gain ? k_exhausted : -1));
        CHECK(e.format_at(s, 0, 3) == (extra < gain ? kv_format::int2 : kv_format::fp16));
    }
}

TEST(sequence_engine_stats_sum_layers) {
    engine_config c = fake_config();
    fake_engine e(c, plan_order::as_given);
    const uint32_t s = e.create_sequence(storage_kind::mixed, 0.9f, precision_mode::reversible);
    const uint32_t k = e.create_sequence(storage_kind::kivi2);
    e.append(s, 0, 3, k_dummy, k_dummy);
    e.append(s, 2, 5, k_dummy, k_dummy);
    e.append(k, 1, 70, k_dummy, k_dummy);
    const uint32_t p[2] = {0, 1};
    const uint8_t f[2] = {uint8_t(kv_format::int8), uint8_t(kv_format::int2)};
    e.apply_plan(s, 0, p, f, 2);

    const memory_stats m = e.stats(s);
    CHECK(m.tokens == 8);
    CHECK(m.tokens_by_format[int(kv_format::fp16)] == 6);
    CHECK(m.tokens_by_format[int(kv_format::int8)] == 1 && m.tokens_by_format[int(kv_format::int2)] == 1);
    CHECK(m.payload == 6 * 64 + 32 + 8 && m.metadata == 8 * k_token_metadata && m.params == 0);
    CHECK(m.master == 8 * 64);  // outside held()
    CHECK(m.held() == m.payload + m.metadata);
    CHECK(m.fp16_equivalent == 8 * 2 * size_t(c.n_kv_heads) * size_t(c.head_dim) * 2);
    CHECK(m.kivi_tokens == 0);
    CHECK(e.stats(k).kivi_tokens == 64);  // two whole groups of 32 of the 70 tokens
    CHECK(e.total_held_bytes() == m.held() + e.stats(k).held());
}

TEST(sequence_engine_error_names) {
    CHECK(std::strcmp(error_code_name(error_code::invalid_argument), "INVALID_ARGUMENT") == 0);
    CHECK(std::strcmp(error_code_name(error_code::not_found), "NOT_FOUND") == 0);
    CHECK(std::strcmp(error_code_name(error_code::resource_exhausted), "RESOURCE_EXHAUSTED") == 0);
    CHECK(std::strcmp(error_code_name(error_code::failed_precondition), "FAILED_PRECONDITION") == 0);
    CHECK(std::strcmp(error_code_name(error_code::internal), "INTERNAL") == 0);
}
