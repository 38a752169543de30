// Reading arguments the TypeScript layer has already validated. These checks
// are only a backstop against misuse of the raw addon (a wrong type would be
// memory corruption, not an error), so they throw TypeError and stop there.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "smartkv/engine.h"

namespace smartkv_node {

template <typename T>
constexpr napi_typedarray_type typed_array_kind();
template <> constexpr napi_typedarray_type typed_array_kind<float>() { return napi_float32_array; }
template <> constexpr napi_typedarray_type typed_array_kind<uint8_t>() { return napi_uint8_array; }
template <> constexpr napi_typedarray_type typed_array_kind<uint16_t>() { return napi_uint16_array; }
template <> constexpr napi_typedarray_type typed_array_kind<uint32_t>() { return napi_uint32_array; }

// Pointer into a typed array of element type T (zero-copy), or null when the
// value is null/undefined and `optional`.
template <typename T>
T* typed_data(const Napi::Value& v, const char* what, bool optional = false, size_t* length = nullptr) {
    if (optional && (v.IsNull() || v.IsUndefined())) {
        if (length) *length = 0;
        return nullptr;
    }
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != typed_array_kind<T>())
        throw Napi::TypeError::New(v.Env(), std::string(what) + ": wrong typed array type");
    Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
    if (length) *length = a.ElementLength();
    return a.Data();
}

inline uint32_t u32_arg(const Napi::Value& v, const char* what) {
    if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
    return v.As<Napi::Number>().Uint32Value();
}

inline int32_t i32_arg(const Napi::Value& v, const char* what) {
    if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
    return v.As<Napi::Number>().Int32Value();
}

// Engine config from the plain object KvEngine builds (numbers and booleans only).
struct backend_spec {
    smartkv::engine_config config;
    smartkv::device_choice device = smartkv::device_choice::cpu;
};
backend_spec parse_backend_spec(const Napi::Object& o);

}  // namespace smartkv_node
