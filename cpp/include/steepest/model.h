// Layers and the Sequential model with its training loop. The whole batch loop —
// batching and shuffling, forward, loss, backward, optimizer step, metrics — runs here
// in C++, written with ops (never a kernel); the Python front builds layers, draws the
// progress bar and runs callbacks, and is called per batch only for the Python parts a
// model uses (layers, losses, metrics, batch callbacks, data pipelines).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "steepest/losses.h"
#include "steepest/kfac.h"
#include "steepest/ops.h"
#include "steepest/optim.h"
#include "steepest/tensor.h"

namespace steepest::model {

enum class Activation { Linear, Relu, Sigmoid, Tanh, Gelu, Softmax };
Activation activation_from_name(const std::string& name);

// Where image layers find the channels: (N, C, H, W), the seed's layout and the kernels',
// or (N, H, W, C), Keras' default. Channels-last layers transpose around the kernels.
enum class DataFormat { ChannelsFirst, ChannelsLast };
DataFormat data_format_from_name(const char* op, const std::string& name);
const char* activation_name(Activation activation);
Tensor apply_activation(Activation activation, const Tensor& x);

// Keras penalties: l1·Σ|w| + l2·Σw² added to the loss (the seed's regularisation terms).
struct Regularizer {
  double l1 = 0.0, l2 = 0.0;
  bool active() const { return l1 != 0.0 || l2 != 0.0; }
  Tensor penalty(const Tensor& weight) const;
};

// A forward pass of the model: training (dropout on, batch statistics used and updated)
// at optimizer step `step`, which keys the dropout masks, or inference.
struct Pass {
  bool training = false;
  int64_t step = 0;
  static Pass train(int64_t step) { return {true, step}; }
  static Pass inference() { return {}; }
};

class Layer {
 public:
  explicit Layer(std::string name) : name_(std::move(name)) {}
  virtual ~Layer() = default;
  virtual const char* kind() const = 0;

  // Creates the weights for a per-sample input shape (no batch axis) and returns the
  // per-sample output shape. `seed` keys the initialisers.
  Dims build(const Dims& input_shape, uint64_t seed);
  // The weights build would create for input_shape, as (name, shape), and the output
  // shape, with nothing allocated: load_model checks a file's config against the file's
  // tensors with it, so that a config cannot ask for memory its tensors do not justify.
  std::pair<Dims, std::vector<std::pair<std::string, Dims>>> plan(const Dims& input_shape);
  // x has a leading batch axis. The pass's step (the optimizer's step) keys dropout masks.
  virtual Tensor forward(const Tensor& x, Pass pass) = 0;
  // The output before the layer's final activation (softmax/sigmoid), for losses that
  // fuse the activation (log-softmax + cross-entropy).
  virtual Tensor forward_pre_activation(const Tensor& x, Pass pass) {
    return forward(x, pass);
  }
  virtual Activation final_activation() const { return Activation::Linear; }
  // Sum of the layer's weight penalties, undefined when it has none.
  virtual Tensor regularization() const { return {}; }
  // How K-FAC reads this layer's first weight, its kernel (None: not preconditioned).
  virtual optim::KfacLayout kfac_layout() const { return optim::KfacLayout::None; }
  // While set, training forward passes collect K-FAC's factors into `factors`; null (the
  // default) keeps the plain forward.
  void set_kfac(std::shared_ptr<optim::KfacFactors> factors) { kfac_ = std::move(factors); }

  const std::string& name() const { return name_; }
  bool built() const { return built_; }
  const Dims& input_shape() const { return input_shape_; }
  const Dims& output_shape() const { return output_shape_; }
  // Trainable weights by name ("kernel", "bias", ...), in a fixed order.
  std::vector<std::pair<std::string, Tensor>>& weights() { return weights_; }
  // Moves every weight and its grad to `device` in place (the tensors keep their identity,
  // so a parameter list taken before still holds the moved weights).
  void to_device(Device device);
  // The dtype the forward pass computes in (a mixed-precision policy's compute dtype).
  // Weights stay float32 (the master copy) whatever it is.
  DType compute_dtype() const { return compute_dtype_; }
  void set_compute_dtype(DType dtype);

 protected:
  virtual Dims build_weights(const Dims& input_shape, uint64_t seed) = 0;
  // t in the compute dtype when t is floating (weights, inputs). astype is
  // differentiable, so a weight's gradient comes back through the cast and reaches the
  // float32 master weight in float32.
  Tensor cast(const Tensor& t) const;
  // A weight as the right operand of a matrix product: a float32 master weight stays
  // float32 under a 16-bit compute dtype, since matmul reads it rounded to the input's
  // dtype (no 16-bit copy is made or saved, and its gradient is summed in float32).
  Tensor product_weight(const Tensor& w) const;
  // A new trainable weight drawn from a Keras initializer; while planning, only its
  // shape is recorded and the result is undefined.
  Tensor add_weight(const std::string& name, const Dims& shape, const std::string& initializer,
                    int64_t fan_in, int64_t fan_out, uint64_t seed);
  bool planning() const { return plan_ != nullptr; }

  std::string name_;
  bool built_ = false;
  Dims input_shape_, output_shape_;
  std::vector<std::pair<std::string, Tensor>> weights_;
  DType compute_dtype_ = DType::Float32;
  std::shared_ptr<optim::KfacFactors> kfac_;

 private:
  std::vector<std::pair<std::string, Dims>>* plan_ = nullptr;
};

class Dense final : public Layer {
 public:
  Dense(std::string name, int64_t units, Activation activation, bool use_bias,
        std::string kernel_initializer, std::string bias_initializer,
        Regularizer kernel_regularizer, Regularizer bias_regularizer);
  const char* kind() const override { return "Dense"; }
  Tensor forward(const Tensor& x, Pass pass) override;
  Tensor forward_pre_activation(const Tensor& x, Pass pass) override;
  Activation final_activation() const override { return activation_; }
  Tensor regularization() const override;
  optim::KfacLayout kfac_layout() const override { return optim::KfacLayout::InputRows; }

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  int64_t units_;
  Activation activation_;
  bool use_bias_;
  std::string kernel_initializer_, bias_initializer_;
  Regularizer kernel_regularizer_, bias_regularizer_;
};

// Options of the convolution layers beyond Conv2D's first arguments.
struct ConvOptions {
  // 1: Conv1D over sequences, (L, C) or (C, L) samples; 2: images.
  int rank = 2;
  std::pair<int64_t, int64_t> dilation{1, 1};
  int64_t groups = 1;
  // > 0: DepthwiseConv2D, one group per input channel with this many filters each.
  int64_t depth_multiplier = 0;
  // Conv1D padding="causal": d·(k − 1) zeros before the sequence, none after.
  bool causal = false;
};

class Conv2D final : public Layer {
 public:
  Conv2D(std::string name, int64_t filters, std::pair<int64_t, int64_t> kernel_size,
         std::pair<int64_t, int64_t> strides, bool same_padding, Activation activation,
         bool use_bias, std::string kernel_initializer, Regularizer kernel_regularizer,
         DataFormat data_format = DataFormat::ChannelsFirst, ConvOptions options = {});
  const char* kind() const override;
  Tensor forward(const Tensor& x, Pass pass) override;
  Tensor forward_pre_activation(const Tensor& x, Pass pass) override;
  Activation final_activation() const override { return activation_; }
  Tensor regularization() const override;
  // 2-D convolutions without groups (KFC's setting); the others are not preconditioned.
  optim::KfacLayout kfac_layout() const override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  int64_t filters_;
  std::pair<int64_t, int64_t> kernel_, strides_;
  ops::Padding2d padding_;
  bool same_padding_;
  DataFormat data_format_;
  Activation activation_;
  bool use_bias_;
  std::string kernel_initializer_;
  Regularizer kernel_regularizer_;
  ConvOptions options_;
  // Set when built (a depthwise layer's follow from its input channels).
  int64_t out_channels_ = 0, groups_ = 1;
};

class Pool2D final : public Layer {
 public:
  // rank 1 pools sequences; same_padding pads as TF/Keras ("same"), and average pooling
  // then divides by the input pixels of each window only, as they do.
  Pool2D(std::string name, bool max, std::pair<int64_t, int64_t> pool_size,
         std::pair<int64_t, int64_t> strides, DataFormat data_format = DataFormat::ChannelsFirst,
         bool same_padding = false, int rank = 2);
  const char* kind() const override;
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  bool max_;
  std::pair<int64_t, int64_t> pool_, strides_;
  DataFormat data_format_;
  bool same_padding_;
  int rank_;
  ops::Padding2d padding_;
};

class Flatten final : public Layer {
 public:
  using Layer::Layer;
  const char* kind() const override { return "Flatten"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
};

class ActivationLayer final : public Layer {
 public:
  ActivationLayer(std::string name, Activation activation)
      : Layer(std::move(name)), activation_(activation) {}
  const char* kind() const override { return "Activation"; }
  Tensor forward(const Tensor& x, Pass pass) override;
  Tensor forward_pre_activation(const Tensor& x, Pass) override { return x; }
  Activation final_activation() const override { return activation_; }

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override { return input_shape; }
  Activation activation_;
};

class Dropout final : public Layer {
 public:
  Dropout(std::string name, double rate, uint64_t seed);
  const char* kind() const override { return "Dropout"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override { return input_shape; }
  double rate_;
  uint64_t seed_;
};

class LayerNormalization final : public Layer {
 public:
  LayerNormalization(std::string name, double epsilon, bool center, bool scale);
  const char* kind() const override { return "LayerNormalization"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  double epsilon_;
  bool center_, scale_;
};

// Feature standardisation (x − mean)/√max(variance, ε) with fixed statistics (Keras'
// Normalization). per_feature: statistics per entry of the last axis; else one scalar.
// The statistics are weights that never require grad, so they are saved with the model
// but the optimizer does not touch them.
class Normalization final : public Layer {
 public:
  Normalization(std::string name, bool per_feature, std::vector<double> mean,
                std::vector<double> variance);
  const char* kind() const override { return "Normalization"; }
  Tensor forward(const Tensor& x, Pass pass) override;
  // Replaces the statistics (Keras' adapt); written into the weights when built.
  void set_statistics(std::vector<double> mean, std::vector<double> variance);

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  void write_statistics();
  bool per_feature_;
  std::vector<double> mean_, variance_;
};

// Keras' BatchNormalization: normalises over every axis but `axis` (an axis of the
// batched input, the batch axis excluded) with the batch's statistics while training,
// updating moving_mean / moving_variance (non-trainable weights) by
// moving = moving·momentum + batch·(1 − momentum), and with the moving statistics at
// inference. Under data parallelism each rank normalises with its own share of the
// batch and keeps its own moving statistics (no SyncBatchNorm, as Keras and torch by
// default).
class BatchNormalization final : public Layer {
 public:
  BatchNormalization(std::string name, int64_t axis, double momentum, double epsilon, bool center,
                     bool scale);
  const char* kind() const override { return "BatchNormalization"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  int64_t axis_;  // as given; normalised against the input's rank when built
  int64_t batch_axis_ = 1;  // axis_ in the batched input, from build
  double momentum_, epsilon_;
  bool center_, scale_;
};

// GlobalAveragePooling2D / GlobalMaxPooling2D: the mean or max over each channel's
// pixels, (N, C) (or (N, C, 1, 1) / (N, 1, 1, C) with keepdims).
class GlobalPool2D final : public Layer {
 public:
  GlobalPool2D(std::string name, bool max, DataFormat data_format, bool keepdims);
  const char* kind() const override { return max_ ? "GlobalMaxPooling2D" : "GlobalAveragePooling2D"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  bool max_;
  DataFormat data_format_;
  bool keepdims_;
};

// Keras' Reshape: each sample to target_shape (one entry may be -1).
class Reshape final : public Layer {
 public:
  Reshape(std::string name, Dims target_shape);
  const char* kind() const override { return "Reshape"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  Dims target_;
};

// Zeros around each image: padding rows above/below and columns left/right.
class ZeroPadding2D final : public Layer {
 public:
  ZeroPadding2D(std::string name, ops::Padding2d padding, DataFormat data_format);
  const char* kind() const override { return "ZeroPadding2D"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  ops::Padding2d padding_;
  DataFormat data_format_;
};

class Embedding final : public Layer {
 public:
  Embedding(std::string name, int64_t input_dim, int64_t output_dim, std::string initializer);
  const char* kind() const override { return "Embedding"; }
  Tensor forward(const Tensor& x, Pass pass) override;

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  int64_t input_dim_, output_dim_;
  std::string initializer_;
};

// Token embeddings plus learned positional embeddings: (B, T) ints -> (B, T, d_model).
class TokenAndPositionEmbedding final : public Layer {
 public:
  TokenAndPositionEmbedding(std::string name, int64_t vocab_size, int64_t context, int64_t d_model);
  const char* kind() const override { return "TokenAndPositionEmbedding"; }
  Tensor forward(const Tensor& x, Pass pass) override;
  // Tokens at positions [offset, offset + time): the next ones after `offset` already
  // decoded (Sequential::decode).
  Tensor forward_at(const Tensor& x, int64_t offset);

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  int64_t vocab_size_, context_, d_model_;
};

// One TransformerBlock's keys and values (batch, heads, tokens, head size) of the tokens
// decoded so far; undefined before the first.
struct KVCache {
  Tensor keys, values;
};

// Where incremental decoding stands: the number of tokens consumed and each block's cache.
struct DecodeState {
  int64_t length = 0;
  std::vector<KVCache> blocks;
};

// A pre-LayerNorm decoder block: x + Attention(LN(x)), then x + MLP(LN(x)) with a GELU
// MLP of width mlp_ratio·d_model (the residual connections of the seed's LLM section).
// remat: activation checkpointing — forward keeps only the block input, backward
// recomputes the block.
class TransformerBlock final : public Layer {
 public:
  TransformerBlock(std::string name, int64_t d_model, int64_t num_heads, int64_t mlp_ratio,
                   double dropout, bool causal, bool remat, uint64_t seed);
  const char* kind() const override { return "TransformerBlock"; }
  Tensor forward(const Tensor& x, Pass pass) override;
  bool causal() const { return causal_; }
  // Inference on the tokens that follow those whose keys and values `cache` holds: a
  // prompt (empty cache, causal attention among its tokens) or one token at a time
  // (attending to every cached key); appends the new keys and values to the cache.
  Tensor forward_cached(const Tensor& x, KVCache& cache);

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override;
  // cache: null for training and plain inference, else forward_cached's.
  Tensor block(const Tensor& x, Pass pass, KVCache* cache);
  Tensor drop(const Tensor& x, Pass pass, uint64_t salt) const;
  int64_t d_model_, num_heads_, mlp_ratio_;
  double dropout_;
  bool causal_, remat_;
  uint64_t seed_;
};

// ------------------------------------------------------------------------------ model

enum class Metric { Accuracy, SparseCategoricalAccuracy, CategoricalAccuracy, BinaryAccuracy,
                    MeanAbsoluteError, MeanSquaredError };

// A loss the built-in kinds do not cover (a Python callable, through the bindings):
// fn(y_true, y_pred) gives a scalar or values with the batch as leading axis, which the
// model reduces (losses::reduce). The model calls it from the thread that runs the loop,
// never from a parallel region, so the bindings can take the GIL inside.
struct CustomLoss {
  std::function<Tensor(const Tensor& y_true, const Tensor& y_pred)> fn;
};

struct LossSpec {
  losses::Spec spec;  // a built-in loss (steepest/losses.h)
  std::shared_ptr<const CustomLoss> custom;  // set: replaces spec
  // Never None: fit needs a scalar.
  losses::Reduction reduction = losses::Reduction::SumOverBatchSize;
};

// Stateful metrics outside the built-in ones (Python callables and st.metrics.Metric
// objects, through the bindings). reset runs before each train or test loop, update
// after each batch with that batch's labels and (detached) outputs and returns the
// current result of each, in order.
struct CustomMetrics {
  size_t count = 0;
  std::function<void()> reset;
  std::function<std::vector<double>(const Tensor& y_true, const Tensor& y_pred)> update;
};

// Running averages over the samples seen so far in an epoch.
struct Logs {
  double loss = 0.0;
  std::vector<double> metrics;  // the built-in ones in compile order, then the custom ones
  int64_t samples = 0;
  int64_t batches = 0;
  bool stopped = false;  // by the progress callback (Ctrl-C) or a NaN loss
  bool nan_loss = false;
  double loss_scale = 0.0;  // the loss scaler's scale after the last step; 0 without one
  int64_t skipped_steps = 0;  // steps the loss scaler skipped (gradients not finite)
  bool exhausted = false;  // a streamed input ran out before the epoch's last batch
};

// How an epoch walks through the data.
struct Batching {
  int64_t batch_size = 32;
  std::vector<int64_t> order;  // the sample order; empty: as given
  int64_t steps = 0;           // batches to run (Keras' steps_per_epoch); 0: all of them
  // With k, the gradients of k consecutive batches are summed, each weighted by its
  // share of the k batches' samples, before one optimizer step: the same update as one
  // batch k times larger.
  int64_t accumulation_steps = 1;
};

// One batch as the loop consumes it: this rank's rows of x, y and the sample weights
// (undefined: none) on the host, and the global batch's sample count.
struct Batch {
  Tensor x, y, sample_weight;
  int64_t count = 0;
};

// Where an epoch's batches come from: the model's arrays cut by Batching (the array
// path) or prepared batches streamed from Python (generators, st.data.PyDataset).
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // Batches in the epoch; -1 when unknown (the epoch ends when next() returns false).
  virtual int64_t size() const = 0;
  // Fills the next batch; false when the source is exhausted.
  virtual bool next(Batch& batch) = 0;
  // What every rank must agree on under data parallelism.
  virtual std::string describe() const = 0;
};

// A bounded queue of prepared host batches filled by Python producer threads and
// emptied by the batch loop, which waits on it without the GIL. Each batch holds the
// whole global batch; the consumer takes its rank's share.
class BatchQueue {
 public:
  explicit BatchQueue(int64_t capacity);
  // Blocks while full; false when the consumer closed the queue (the batch is dropped).
  bool put(Batch batch);
  // The producer has no more batches (finished) or failed; the consumer gets the
  // batches already queued, then the end (finish) or an error (fail).
  void finish();
  void fail();
  // The consumer is done: blocked and later puts return false at once.
  void close();
  // Blocks until a batch or the end; throws when the producer failed. While it waits,
  // `interrupted` (when set) is asked every 100 ms whether to give up (Ctrl-C): then false.
  bool pop(Batch& batch, const std::function<bool()>& interrupted = {});
  int64_t size() const;

 private:
  int64_t capacity_;
  std::deque<Batch> batches_;
  bool finished_ = false, failed_ = false, closed_ = false;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
};

// A BatchQueue as a BatchSource: `steps` batches (0: until the producer finishes).
// Share::PerRank: under data parallelism each rank takes its contiguous share of every
// batch (fit, evaluate); predict takes whole batches (Share::WholeBatch).
class QueueSource final : public BatchSource {
 public:
  enum class Share { PerRank, WholeBatch };
  QueueSource(std::shared_ptr<BatchQueue> queue, int64_t steps, Share share,
              std::function<bool()> interrupted = {})
      : queue_(std::move(queue)), steps_(steps), share_(share), interrupted_(std::move(interrupted)) {}
  int64_t size() const override { return steps_ > 0 ? steps_ : -1; }
  bool next(Batch& batch) override;
  std::string describe() const override;

 private:
  std::shared_ptr<BatchQueue> queue_;
  int64_t steps_, taken_ = 0;
  Share share_;
  std::function<bool()> interrupted_;
};


// What fit does with a loss that is not finite (Keras' TerminateOnNaN: Stop): stop before
// the update, the weights staying those of the last finite step, or go on.
enum class OnNanLoss { Continue, Stop };

// Called after batches (the binding throttles the redraw); returning false stops the
// loop after the current step.
using Progress = std::function<bool(int64_t batch, int64_t total_batches, const Logs& logs)>;

// What the batch loops call around each batch. before_batch (batch index from 0) is set
// only where some Python callback overrides a batch-begin hook, so that a model trained
// without one never leaves C++ between batches.
struct BatchCallbacks {
  Progress after_batch;
  std::function<void(int64_t batch)> before_batch;
};
struct PredictCallbacks {
  std::function<void(int64_t batch)> before_batch;
  std::function<void(int64_t batch, const Tensor& outputs)> after_batch;
};

class Sequential {
 public:
  void add(std::shared_ptr<Layer> layer);
  const std::vector<std::shared_ptr<Layer>>& layers() const { return layers_; }
  // Builds every layer for a per-sample input shape.
  void build(const Dims& input_shape, uint64_t seed);
  bool built() const { return built_; }
  const Dims& input_shape() const { return input_shape_; }
  std::vector<Tensor> parameters() const;
  // Keras' variable paths of parameters() ("dense/kernel"), in the same order: the names
  // save_weights writes and exclude_from_weight_decay matches.
  std::vector<std::string> parameter_names() const;
  // Puts the weights on `device` (also those built later); fit, evaluate and predict then
  // copy each batch there from the host, and predict returns host tensors.
  void to(Device device);
  Device device() const { return device_; }

  // compute_dtype is the mixed-precision policy's (float32, float16 or bfloat16): the
  // layers compute in it from float32 master weights, the model casts its floating input
  // to it at the first layer and its output back to float32, where the loss and the
  // metrics are computed. loss_scaler (float16) scales the loss in the train loop and
  // skips steps whose gradients overflow; null trains without.
  // shard_optimizer_state: under data parallelism each rank keeps the optimizer state
  // of its 1/world share of the parameters (ZeRO stage 1; see dist::GradientReducer).
  void compile(std::shared_ptr<optim::Optimizer> optimizer, LossSpec loss,
               std::vector<Metric> metrics, DType compute_dtype = DType::Float32,
               std::shared_ptr<optim::LossScaler> loss_scaler = nullptr,
               bool shard_optimizer_state = false,
               std::shared_ptr<const CustomMetrics> custom_metrics = nullptr);
  bool compiled() const { return optimizer_ != nullptr; }
  bool shard_optimizer_state() const { return shard_optimizer_state_; }
  // Under data parallelism (dist::world() of more than one rank): checks that every rank
  // built the same model and gives all of them rank 0's weights. fit calls it first.
  void synchronize_replicas();
  // After fit with shard_optimizer_state, the optimizer keeps the state of this rank's
  // shard only; this gives every rank the whole per-parameter state again (a collective,
  // e.g. before saving). Does nothing when the state is not sharded.
  void gather_optimizer_state();
  const std::shared_ptr<optim::Optimizer>& optimizer() const { return optimizer_; }
  DType compute_dtype() const { return compute_dtype_; }
  const std::shared_ptr<optim::LossScaler>& loss_scaler() const { return loss_scaler_; }

  Tensor forward(const Tensor& x, Pass pass) const;
  // Incremental inference with key/value caches (st.models.generate): whether every layer
  // supports it (a token-and-position embedding, causal TransformerBlocks and layers that
  // act on each position alone), and the float32 outputs for `tokens` (batch, time) that
  // follow the state's tokens, the same as forward() on all of them, at their positions.
  bool supports_decode() const;
  Tensor decode(const Tensor& tokens, DecodeState& state) const;
  // One epoch over (x, y) in batches. sample_weight (undefined: none) weighs the loss
  // terms, reduced by the loss's reduction (losses::reduce; by default Keras'
  // Σ w·loss / number of terms); it is cut into batches with the same rows as x and y. Under data parallelism every rank passes the same data and
  // batching, batch_size is the global batch and each rank computes its contiguous
  // share of every batch; the logs are global.
  Logs train_epoch(const Tensor& x, const Tensor& y, const Tensor& sample_weight,
                   const Batching& batching, OnNanLoss on_nan_loss, const BatchCallbacks& callbacks);
  Logs evaluate(const Tensor& x, const Tensor& y, const Tensor& sample_weight,
                const Batching& batching, const BatchCallbacks& callbacks);
  Tensor predict(const Tensor& x, int64_t batch_size, const PredictCallbacks& callbacks = {}) const;
  // The same from streamed batches (their x only); batches must share their per-sample shape.
  Logs train_epoch(BatchSource& source, const Batching& batching, OnNanLoss on_nan_loss,
                   const BatchCallbacks& callbacks);
  Logs evaluate(BatchSource& source, const BatchCallbacks& callbacks);
  Tensor predict(BatchSource& source, const PredictCallbacks& callbacks = {}) const;

 private:
  // The loss of a batch, fusing a final softmax/sigmoid into the loss when the loss
  // expects probabilities (stable log-softmax instead of log(softmax)).
  Tensor batch_loss(const Tensor& x, const Tensor& y, const Tensor& sample_weight, Pass pass,
                    Tensor* output) const;
  // Σ over the n samples of each metric (a sample's value: the mean over its positions),
  // in compile order.
  std::vector<double> metric_sums(const Tensor& output, const Tensor& y, int64_t n) const;
  // How run() walks its source: training (forward, backward, an optimizer step every
  // accumulation_steps batches) or evaluating (forward only).
  struct LoopOptions {
    enum class Mode { Train, Evaluate };
    Mode mode = Mode::Evaluate;
    int64_t accumulation_steps = 1;
    OnNanLoss on_nan_loss = OnNanLoss::Continue;
    static LoopOptions train(int64_t accumulation_steps, OnNanLoss on_nan_loss) {
      return {Mode::Train, accumulation_steps, on_nan_loss};
    }
    static LoopOptions evaluate() { return {}; }
  };
  Logs run(BatchSource& source, const LoopOptions& options, const BatchCallbacks& callbacks);
  void check_ready(const char* op) const;

  std::vector<std::shared_ptr<Layer>> layers_;
  Dims input_shape_;
  bool built_ = false;
  Device device_;
  void connect_kfac(bool distributed);
  std::shared_ptr<optim::Optimizer> optimizer_;
  LossSpec loss_;
  std::vector<Metric> metrics_;
  std::shared_ptr<const CustomMetrics> custom_metrics_;
  DType compute_dtype_ = DType::Float32;
  std::shared_ptr<optim::LossScaler> loss_scaler_;
  bool shard_optimizer_state_ = false;
  bool optimizer_state_sharded_ = false;  // the optimizer holds per-piece state (ZeRO)
};

}  // namespace steepest::model
