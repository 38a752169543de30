// Results of smartkv-gpu-check: every check and timing adds a JSON record,
// and the file named by --json is rewritten after each one (write to a
// temporary, then rename), so a run cut short by a timeout keeps what it had
// measured ("complete": false until main() writes the final counts).
#pragma once
#include <cstdio>
#include <string>
#include <vector>

namespace smartkv::testing {

class json_record {
public:
    json_record& str(const char* k, const std::string& v) {
        std::string e;
        for (char c : v) {
            if (c == '"' || c == '\\') e += '\\';
            if (c == '\n') { e += "\\n"; continue; }
            e += c;
        }
        return raw(k, "\"" + e + "\"");
    }
    json_record& num(const char* k, double v) {
        char b[64];
        std::snprintf(b, sizeof b, "%.6g", v);
        return raw(k, (v != v || v > 1e300 || v < -1e300) ? std::string("null") : std::string(b));
    }
    json_record& boolean(const char* k, bool v) { return raw(k, v ? "true" : "false"); }
    std::string text() const { return "{" + body_ + "}"; }

private:
    json_record& raw(const char* k, const std::string& v) {
        if (!body_.empty()) body_ += ", ";
        body_ += "\"" + std::string(k) + "\": " + v;
        return *this;
    }
    std::string body_;
};

std::vector<std::string>& json_records(const char* section);  // "checks" or "timings"
// Appends to a section and rewrites the JSON file (when --json named one).
void add_record(const char* section, const json_record& r);

// Whether the host emulation of the kernels runs (gpu-emulate.cc): always
// without a GPU, with one only on --emulate (the real kernels are checked).
bool emulation_wanted();

// Implemented in gpu-bench.cc: the timings (decode at n = 32K, batch 16,
// beta = 0.25 mix vs FP16, copy bandwidth, write-path kernels).
void run_gpu_benchmarks(bool quick);

}  // namespace smartkv::testing
