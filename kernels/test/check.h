// A minimal check harness: CHECK records failures, each test is a function,
// and the run ends with the "N passed, N failed" line CI reads.
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace smartkv::testing {

struct test_case {
    const char* name;
    std::function<void()> fn;
};
std::vector<test_case>& registry();
void record_failure(const char* file, int line, const std::string& what);

struct run_counts {
    int passed = 0, failed = 0;
};
// Runs every registered test whose name contains `filter`, printing one
// ok/FAIL line each; `note(name)` may return a suffix for that line.
run_counts run_registered(const char* filter, const std::function<const char*(const char*)>& note = nullptr);

struct registrar {
    registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

}  // namespace smartkv::testing

#define SKV_CONCAT2(a, b) a##b
#define SKV_CONCAT(a, b) SKV_CONCAT2(a, b)
#define TEST(name)                                                                               \
    static void name();                                                                          \
    static ::smartkv::testing::registrar SKV_CONCAT(reg_, name)(#name, name);                   \
    static void name()
#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) ::smartkv::testing::record_failure(__FILE__, __LINE__, #cond);        \
    } while (0)
#define CHECK_MSG(cond, msg)                                                               \
    do {                                                                                   \
        if (!(cond)) ::smartkv::testing::record_failure(__FILE__, __LINE__, (msg));        \
    } while (0)
