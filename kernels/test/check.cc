// The check harness shared by smartkv-kernel-check and smartkv-gpu-check.
#include "check.h"

#include <cstring>
#include <exception>

namespace smartkv::testing {

namespace {
int g_failures = 0;
}

std::vector<test_case>& registry() {
    static std::vector<test_case> r;
    return r;
}

void record_failure(const char* file, int line, const std::string& what) {
    if (++g_failures <= 40) std::fprintf(stderr, "  FAIL %s:%d: %s\n", file, line, what.c_str());
}

run_counts run_registered(const char* filter, const std::function<const char*(const char*)>& note) {
    run_counts c;
    for (const test_case& t : registry()) {
        if (*filter && !std::strstr(t.name, filter)) continue;
        const int before = g_failures;
        try {
            t.fn();
        } catch (const std::exception& e) {
            record_failure(__FILE__, __LINE__, std::string(t.name) + " threw: " + e.what());
        }
        const bool ok = g_failures == before;
        std::printf("%s %s%s\n", ok ? "ok  " : "FAIL", t.name, note ? note(t.name) : "");
        (ok ? c.passed : c.failed)++;
    }
    return c;
}

}  // namespace smartkv::testing
