// The Transformer pieces of the seed's LLM practice section: token + position
// embeddings and the pre-LN decoder block (multi-head causal attention, GELU MLP,
// residual connections), with optional activation checkpointing.
#include <cmath>

#include "steepest/autograd.h"
#include "steepest/model.h"
#include "steepest/ops.h"

namespace steepest::model {

TokenAndPositionEmbedding::TokenAndPositionEmbedding(std::string name, int64_t vocab_size,
                                                     int64_t context, int64_t d_model)
    : Layer(std::move(name)), vocab_size_(vocab_size), context_(context), d_model_(d_model) {
  if (vocab_size <= 0 || context <= 0 || d_model <= 0)
    fail("TokenAndPositionEmbedding", "vocab_size, context and d_model must be positive, got ",
         vocab_size, ", ", context, ", ", d_model);
}

Dims TokenAndPositionEmbedding::build_weights(const Dims& input_shape, uint64_t seed) {
  if (input_shape.size() != 1 || input_shape[0] > context_)
    fail("TokenAndPositionEmbedding", "expects token sequences of length <= ", context_,
         ", got input shape ", input_shape);
  add_weight("token_embeddings", {vocab_size_, d_model_}, "random_normal", 0, 0, seed);
  add_weight("position_embeddings", {context_, d_model_}, "random_normal", 0, 0, seed + 1);
  return {input_shape[0], d_model_};
}

Tensor TokenAndPositionEmbedding::forward(const Tensor& x, Pass) { return forward_at(x, 0); }

Tensor TokenAndPositionEmbedding::forward_at(const Tensor& x, int64_t offset) {
  if (x.ndim() != 2) fail("TokenAndPositionEmbedding", "expects (batch, time) tokens, got ", x.shape());
  int64_t t = x.shape()[1];
  if (offset < 0 || t > context_ - offset)
    fail("TokenAndPositionEmbedding", "tokens at positions ", offset, " to ", offset + t,
         " do not fit the context ", context_);
  Tensor tokens = is_floating(x.dtype()) ? ops::astype(x.detach(), DType::Int64) : x;
  Tensor positions = ops::slice(weights_[1].second, 0, offset, offset + t, 1);
  // Summed in float32 from the float32 tables, rounded once to the compute dtype.
  return cast(ops::add(ops::embedding(tokens, weights_[0].second), positions));
}

TransformerBlock::TransformerBlock(std::string name, int64_t d_model, int64_t num_heads,
                                   int64_t mlp_ratio, double dropout, bool causal, bool remat,
                                   uint64_t seed)
    : Layer(std::move(name)), d_model_(d_model), num_heads_(num_heads), mlp_ratio_(mlp_ratio),
      dropout_(dropout), causal_(causal), remat_(remat), seed_(seed) {
  if (d_model <= 0 || num_heads <= 0 || d_model % num_heads != 0)
    fail("TransformerBlock", "d_model (", d_model, ") must be a positive multiple of num_heads (",
         num_heads, ")");
  if (mlp_ratio <= 0) fail("TransformerBlock", "mlp_ratio must be positive, got ", mlp_ratio);
  if (!(dropout >= 0.0 && dropout < 1.0)) fail("TransformerBlock", "dropout must be in [0, 1), got ", dropout);
}

// Weight order: ln1 γ β, qkv W b, out W b, ln2 γ β, fc1 W b, fc2 W b.
Dims TransformerBlock::build_weights(const Dims& input_shape, uint64_t seed) {
  if (input_shape.size() != 2 || input_shape[1] != d_model_)
    fail("TransformerBlock", "expects (time, ", d_model_, ") inputs, got input shape ", input_shape);
  // Dims::product checks the multiplications: the sizes may come from a model file.
  int64_t d = d_model_, d3 = Dims{3, d}.product(), hidden = Dims{mlp_ratio_, d}.product();
  add_weight("ln1_gamma", {d}, "ones", 0, 0, seed);
  add_weight("ln1_beta", {d}, "zeros", 0, 0, seed);
  add_weight("qkv_kernel", {d, d3}, "glorot_uniform", d, d3, seed + 1);
  add_weight("qkv_bias", {d3}, "zeros", 0, 0, seed);
  add_weight("out_kernel", {d, d}, "glorot_uniform", d, d, seed + 2);
  add_weight("out_bias", {d}, "zeros", 0, 0, seed);
  add_weight("ln2_gamma", {d}, "ones", 0, 0, seed);
  add_weight("ln2_beta", {d}, "zeros", 0, 0, seed);
  add_weight("fc1_kernel", {d, hidden}, "glorot_uniform", d, hidden, seed + 3);
  add_weight("fc1_bias", {hidden}, "zeros", 0, 0, seed);
  add_weight("fc2_kernel", {hidden, d}, "glorot_uniform", hidden, d, seed + 4);
  add_weight("fc2_bias", {d}, "zeros", 0, 0, seed);
  return input_shape;
}

Tensor TransformerBlock::drop(const Tensor& x, Pass pass, uint64_t salt) const {
  if (!pass.training || dropout_ == 0.0) return x;
  uint64_t key = (seed_ + salt) ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(pass.step + 1));
  return ops::dropout(x, dropout_, true, key);
}

namespace {

// Decoding's attention on the fused projection qkv (B,T,3d): the keys and values of the
// new tokens join the cached ones (B,H,T,d/H).
Tensor cached_attention(const Tensor& qkv, int64_t h, bool causal, KVCache& cache) {
  const int64_t b = qkv.shape()[0], t = qkv.shape()[1], d = qkv.shape()[2] / 3;
  Tensor heads = ops::permute(ops::reshape(qkv, {b, t, 3, h, d / h}), {2, 0, 3, 1, 4});
  Tensor keys = ops::select(heads, 0, 1), values = ops::select(heads, 0, 2);
  // A new token sees every cached one: the causal mask only matters among the prompt's.
  if (cache.keys.defined()) {
    keys = ops::cat({cache.keys, keys}, 2);
    values = ops::cat({cache.values, values}, 2);
    causal = false;
  } else {
    keys = ops::contiguous(keys);
    values = ops::contiguous(values);
  }
  cache.keys = keys;
  cache.values = values;
  Tensor attended = ops::scaled_dot_product_attention(ops::select(heads, 0, 0), keys, values, causal);
  return ops::reshape(ops::permute(attended, {0, 2, 1, 3}), {b, t, d});
}

}  // namespace

Tensor TransformerBlock::block(const Tensor& x, Pass pass, KVCache* cache) {
  // Cast inside the block, so that a checkpointed block recomputes the casts too.
  auto w = [&](int i) { return cast(weights_[static_cast<size_t>(i)].second); };
  auto mw = [&](int i) { return product_weight(weights_[static_cast<size_t>(i)].second); };
  // Multi-head self-attention on the fused projection (B,T,3d).
  Tensor qkv = ops::linear(ops::layer_norm(x, w(0), w(1), 1e-5), mw(2), w(3));
  Tensor merged = cache ? cached_attention(qkv, num_heads_, causal_, *cache)
                        : ops::qkv_attention(qkv, num_heads_, causal_);
  // A projection's bias is added by the fused op that follows it (one pass for bias,
  // residual and LayerNorm), unless dropout has to see the biased output first.
  const bool dropping = pass.training && dropout_ > 0.0;
  Tensor bias;
  auto project = [&](const Tensor& in, int kernel, uint64_t salt) {
    bias = dropping ? Tensor() : w(kernel + 1);
    return dropping ? drop(ops::linear(in, mw(kernel), w(kernel + 1)), pass, salt)
                    : ops::matmul(in, mw(kernel));
  };
  Tensor attention_out = project(merged, 4, 1);
  auto [x1, normed] = ops::add_layer_norm(x, attention_out, bias, w(6), w(7), 1e-5);
  // GELU MLP.
  Tensor hidden = ops::bias_gelu(ops::matmul(normed, mw(8)), w(9));
  Tensor mlp_out = project(hidden, 10, 2);
  return ops::bias_residual(x1, mlp_out, bias);
}

Tensor TransformerBlock::forward(const Tensor& x, Pass pass) {
  if (x.ndim() != 3 || x.shape()[2] != d_model_)
    fail("TransformerBlock", "expects (batch, time, ", d_model_, ") inputs, got ", x.shape());
  if (!remat_) return block(cast(x), pass, nullptr);
  return ops::checkpoint(
      [this, pass](const std::vector<Tensor>& in) { return block(in[0], pass, nullptr); },
      {cast(x)});
}

Tensor TransformerBlock::forward_cached(const Tensor& x, KVCache& cache) {
  if (x.ndim() != 3 || x.shape()[2] != d_model_)
    fail("TransformerBlock", "expects (batch, time, ", d_model_, ") inputs, got ", x.shape());
  if (!causal_) fail("TransformerBlock", "cached decoding needs a causal block");
  if (cache.keys.defined() && x.shape()[1] != 1)
    fail("TransformerBlock", "after the prompt, cached decoding takes one token at a time, got ",
         x.shape()[1]);
  NoGradGuard no_grad;
  return block(cast(x), Pass::inference(), &cache);
}

}  // namespace steepest::model
