// The dense part of a Llama-family decoder (RMSNorm, RoPE, GQA projections,
// SwiGLU, tied or untied head), run per layer so that attention can happen
// elsewhere: in the in-process KV engine or a remote cache service.
//
//   x = embed(tokens)                                   [n][d_model]
//   for each layer l:
//       q, k, v = pre_attention(l, x, positions)        RoPE applied
//       o = attention(q, k, v)  <- not here             [n][n_heads*head_dim]
//       post_attention(l, o, x)                         x += o·Wo; x += MLP(norm(x))
//   logits = final(x)                                   [n][vocab]
//
// Weights are views into memory the caller owns (a memory-mapped
// safetensors file); nothing is copied. F32, F16 and BF16 are read directly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace smartkv {

class thread_pool;

enum class weight_dtype : uint8_t { f32 = 0, f16 = 1, bf16 = 2 };

struct tensor_view {
    const void* data = nullptr;  // row-major [rows][cols]
    weight_dtype dtype = weight_dtype::f32;
    int64_t rows = 0, cols = 0;  // a vector has rows == 1
};

struct model_config {
    int n_layers = 0, d_model = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, d_ff = 0, vocab = 0;
    float rms_eps = 1e-5f;
    std::vector<float> rope_inv_freq;  // [head_dim/2] after any rope scaling
};

struct layer_weights {
    tensor_view attn_norm;              // [d_model]
    tensor_view wq, wk, wv, wo;         // [Hq*D][d], [Hkv*D][d], [Hkv*D][d], [d][Hq*D]
    tensor_view bq, bk, bv;             // optional biases (data == nullptr: none)
    tensor_view mlp_norm;               // [d_model]
    tensor_view w_gate, w_up, w_down;   // [d_ff][d], [d_ff][d], [d][d_ff]
};

struct model_weights {
    tensor_view embed;       // [vocab][d]
    tensor_view final_norm;  // [d]
    tensor_view lm_head;     // [vocab][d] (the embedding when tied)
    std::vector<layer_weights> layers;
};

// y[n][rows] = x[n][cols] · W^T (+ bias)
void matmul(const float* x, int n, const tensor_view& w, const tensor_view* bias, float* y, thread_pool& pool);

class model_runtime {
public:
    model_runtime(model_config cfg, model_weights w, int n_threads);
    ~model_runtime();
    const model_config& config() const { return cfg_; }

    void embed(const int32_t* tokens, int n, float* x /*[n][d]*/) const;
    // q: [n][Hq][D], k, v: [n][Hkv][D]
    void pre_attention(int layer, const float* x, const int32_t* positions, int n, float* q, float* k, float* v);
    // attn: [n][Hq*D]; x: [n][d] updated in place
    void post_attention(int layer, const float* attn, int n, float* x);
    void logits(const float* x, int n, float* out /*[n][vocab]*/);

private:
    void rms_norm(const float* x, int n, const tensor_view& w, float* y) const;
    void rope(float* v, int n, int heads, const int32_t* positions) const;

    model_config cfg_;
    model_weights w_;
    std::unique_ptr<thread_pool> pool_;
    std::vector<float> h_, gate_, up_;  // scratch grown to the largest n seen
};

}  // namespace smartkv
