// Sequential: the layer stack, its loss and metrics, and the training loop of the
// seed's 梯度下降算法 with Batch Size — for each mini-batch: forward, loss, backward,
// one optimizer step.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>

#include "steepest/autograd.h"
#include "steepest/dist.h"
#include "steepest/losses.h"
#include "steepest/model.h"
#include "steepest/ops.h"

namespace steepest::model {

void Sequential::add(std::shared_ptr<Layer> layer) {
  if (built_) fail("Sequential", "cannot add layers to a model that is already built");
  layer->set_compute_dtype(compute_dtype_);
  layers_.push_back(std::move(layer));
}

void Sequential::build(const Dims& input_shape, uint64_t seed) {
  if (layers_.empty()) fail("Sequential", "the model has no layers");
  Dims shape = input_shape;
  uint64_t layer_seed = seed;
  for (auto& layer : layers_) {
    shape = layer->build(shape, layer_seed);
    layer_seed += 0x9E3779B97F4A7C15ull;
  }
  input_shape_ = input_shape;
  built_ = true;
  if (!device_.is_cpu())
    for (auto& layer : layers_) layer->to_device(device_);
}

void Sequential::to(Device device) {
  for (auto& layer : layers_) layer->to_device(device);
  device_ = device;
}

std::vector<Tensor> Sequential::parameters() const {
  std::vector<Tensor> params;
  for (const auto& layer : layers_)
    for (auto& entry : layer->weights())
      if (entry.second.requires_grad()) params.push_back(entry.second);
  return params;
}

std::vector<std::string> Sequential::parameter_names() const {
  std::vector<std::string> names;
  for (const auto& layer : layers_)
    for (auto& entry : layer->weights())
      if (entry.second.requires_grad()) names.push_back(layer->name() + "/" + entry.first);
  return names;
}

void Sequential::compile(std::shared_ptr<optim::Optimizer> optimizer, LossSpec loss,
                         std::vector<Metric> metrics, DType compute_dtype,
                         std::shared_ptr<optim::LossScaler> loss_scaler, bool shard_optimizer_state,
                         std::shared_ptr<const CustomMetrics> custom_metrics) {
  if (!optimizer) fail("compile", "an optimizer is required");
  if (compute_dtype != DType::Float32 && !is_half_float(compute_dtype))
    fail<TypeError>("compile", "the compute dtype must be float32, float16 or bfloat16, got ",
                    dtype_name(compute_dtype));
  for (auto& layer : layers_) layer->set_compute_dtype(compute_dtype);
  compute_dtype_ = compute_dtype;
  loss_scaler_ = std::move(loss_scaler);
  if (optimizer != optimizer_) optimizer_state_sharded_ = false;
  optimizer_ = std::move(optimizer);
  shard_optimizer_state_ = shard_optimizer_state;
  loss_ = loss;
  custom_metrics_ = std::move(custom_metrics);
  // "accuracy" means the accuracy that fits the loss, as in Keras; with a custom loss,
  // the one that fits the labels and outputs (see metric_sums).
  for (Metric& m : metrics) {
    if (m != Metric::Accuracy || loss.custom) continue;
    switch (loss.spec.kind) {
      case losses::Kind::SparseCategoricalCrossentropy:
        m = Metric::SparseCategoricalAccuracy;
        break;
      case losses::Kind::CategoricalCrossentropy:
        m = Metric::CategoricalAccuracy;
        break;
      default:
        m = Metric::BinaryAccuracy;
        break;
    }
  }
  metrics_ = std::move(metrics);
}

namespace {

// The model's input in the compute dtype (integer inputs, token ids, stay as they are).
Tensor to_compute(const Tensor& x, DType compute_dtype) {
  return is_floating(x.dtype()) && x.dtype() != compute_dtype ? ops::astype(x, compute_dtype) : x;
}

// Outputs leave a mixed-precision model in float32: losses and metrics are computed there.
Tensor to_float32(const Tensor& y) {
  return is_half_float(y.dtype()) ? ops::astype(y, DType::Float32) : y;
}

}  // namespace

Tensor Sequential::forward(const Tensor& x, Pass pass) const {
  Tensor h = to_compute(x, compute_dtype_);
  for (const auto& layer : layers_) h = layer->forward(h, pass);
  return to_float32(h);
}

bool Sequential::supports_decode() const {
  bool embedded = false;
  for (const auto& layer : layers_) {
    const std::string kind = layer->kind();
    if (kind == "TokenAndPositionEmbedding") {
      embedded = true;
    } else if (auto* block = dynamic_cast<TransformerBlock*>(layer.get())) {
      if (!block->causal()) return false;
    } else if (kind != "Dense" && kind != "LayerNormalization" && kind != "Activation" &&
               kind != "Dropout") {
      return false;
    }
  }
  return embedded;
}

Tensor Sequential::decode(const Tensor& tokens, DecodeState& state) const {
  if (!supports_decode())
    fail("decode", "needs a token-and-position embedding, causal TransformerBlocks and "
                   "position-wise layers (Dense, LayerNormalization, Activation, Dropout)");
  NoGradGuard no_grad;
  Tensor h = to_compute(tokens, compute_dtype_);
  size_t block = 0;
  for (const auto& layer : layers_) {
    if (auto* embedding = dynamic_cast<TokenAndPositionEmbedding*>(layer.get())) {
      h = embedding->forward_at(h, state.length);
    } else if (auto* transformer = dynamic_cast<TransformerBlock*>(layer.get())) {
      if (state.blocks.size() <= block) state.blocks.resize(block + 1);
      h = transformer->forward_cached(h, state.blocks[block++]);
    } else {
      h = layer->forward(h, Pass::inference());
    }
  }
  state.length += tokens.ndim() == 2 ? tokens.shape()[1] : 0;
  return to_float32(h);
}

namespace {

// A custom loss reduced Keras' way (losses::reduce), after checking that it gave a
// scalar or one value per sample.
Tensor custom_loss_of(const CustomLoss& custom, const Tensor& out, const Tensor& y, const Tensor& sample_weight,
                      losses::Reduction reduction) {
  Tensor terms = custom.fn(y, out);
  if (!terms.defined() || !is_floating(terms.dtype()))
    fail<TypeError>("loss", "a custom loss must return floating-point values, got ",
                    terms.defined() ? dtype_name(terms.dtype()) : "an undefined tensor");
  const int64_t n = out.ndim() ? out.shape()[0] : 1;
  if (terms.ndim() > 0 && terms.shape()[0] != n)
    fail("loss", "a custom loss returned values of shape ", terms.shape(), " for a batch of ", n,
         " samples; expected a scalar or one value per sample, shape (", n, ",)");
  return losses::reduce("fit", to_float32(terms), sample_weight, reduction);
}

}  // namespace

Tensor Sequential::batch_loss(const Tensor& x, const Tensor& y, const Tensor& sample_weight, Pass pass,
                              Tensor* output) const {
  Tensor h = to_compute(x, compute_dtype_);
  for (size_t i = 0; i + 1 < layers_.size(); ++i) h = layers_[i]->forward(h, pass);
  Layer& last = *layers_.back();
  Activation act = last.final_activation();
  bool fuse = !loss_.custom && !loss_.spec.from_logits &&
              ((losses::info(loss_.spec.kind).crossentropy && act == Activation::Softmax) ||
               (loss_.spec.kind == losses::Kind::BinaryCrossentropy && act == Activation::Sigmoid));
  // Under a mixed policy the logits are cast up before the loss: the softmax /
  // cross-entropy reductions run in float32.
  Tensor loss;
  if (loss_.custom) {
    *output = to_float32(last.forward(h, pass));
    loss = custom_loss_of(*loss_.custom, *output, y, sample_weight, loss_.reduction);
  } else if (fuse) {
    // softmax + cross-entropy as one log-softmax (the seed's log-softmax section).
    Tensor logits = to_float32(last.forward_pre_activation(h, pass));
    loss = losses::loss("fit", {loss_.spec.kind, true}, y, logits, sample_weight, loss_.reduction);
    NoGradGuard no_grad;
    *output = apply_activation(act, logits);
  } else {
    *output = to_float32(last.forward(h, pass));
    loss = losses::loss("fit", loss_.spec, y, *output, sample_weight, loss_.reduction);
  }
  for (const auto& layer : layers_) {
    Tensor penalty = layer->regularization();
    if (penalty.defined()) loss = ops::add(loss, penalty);
  }
  return loss;
}

namespace {

template <class T, class L>
double metric_sum(Metric metric, const T* out, const L* y, int64_t rows, int64_t cols,
                  bool y_is_index) {
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* o = out + r * cols;
    switch (metric) {
      case Metric::SparseCategoricalAccuracy:
      case Metric::CategoricalAccuracy: {
        int64_t best = 0;
        for (int64_t c = 1; c < cols; ++c)
          if (o[c] > o[best]) best = c;
        int64_t truth = 0;
        if (y_is_index) {
          truth = static_cast<int64_t>(y[r]);
        } else {
          const L* yr = y + r * cols;
          for (int64_t c = 1; c < cols; ++c)
            if (yr[c] > yr[truth]) truth = c;
        }
        total += best == truth ? 1.0 : 0.0;
        break;
      }
      case Metric::BinaryAccuracy: {
        double hits = 0;
        for (int64_t c = 0; c < cols; ++c)
          hits += ((o[c] > T(0.5)) == (static_cast<double>(y[r * cols + c]) > 0.5)) ? 1.0 : 0.0;
        total += hits / static_cast<double>(cols);
        break;
      }
      case Metric::MeanAbsoluteError:
      case Metric::MeanSquaredError: {
        double acc = 0;
        for (int64_t c = 0; c < cols; ++c) {
          double d = static_cast<double>(o[c]) - static_cast<double>(y[r * cols + c]);
          acc += metric == Metric::MeanAbsoluteError ? std::fabs(d) : d * d;
        }
        total += acc / static_cast<double>(cols);
        break;
      }
      case Metric::Accuracy:
        break;
    }
  }
  return total;
}

}  // namespace

std::vector<double> Sequential::metric_sums(const Tensor& output, const Tensor& y, int64_t n) const {
  std::vector<double> sums(metrics_.size(), 0.0);
  if (metrics_.empty() || n == 0) return sums;
  Tensor out = ops::contiguous(ops::to_device(output.detach(), {}));
  Tensor labels = ops::contiguous(ops::to_device(y.detach(), {}));
  // A position is one entry of the output's last axis, e.g. one time step of (B, T, V)
  // logits; metrics average over every position, as Keras does.
  int64_t cols = out.ndim() > 1 ? out.shape().back() : 1;
  int64_t positions = cols ? out.numel() / cols : 0;
  bool index_labels = !is_floating(labels.dtype());
  if (index_labels ? labels.numel() != positions : labels.numel() != out.numel())
    fail("metrics", "labels of shape ", labels.shape(), " do not match outputs of shape ", out.shape());
  for (size_t i = 0; i < metrics_.size(); ++i) {
    Metric metric = metrics_[i];
    // Left by compile for a custom loss: the accuracy the labels and outputs call for.
    if (metric == Metric::Accuracy)
      metric = index_labels ? Metric::SparseCategoricalAccuracy
               : cols > 1   ? Metric::CategoricalAccuracy
                            : Metric::BinaryAccuracy;
    if (index_labels && metric != Metric::SparseCategoricalAccuracy)
      fail("metrics", "integer labels need sparse_categorical_accuracy (or 'accuracy' with a sparse loss)");
    double total = dispatch_float("metrics", out.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      return dispatch_all("metrics", labels.dtype(), [&](auto label_tag) {
        using L = typename decltype(label_tag)::type;
        return metric_sum<T, L>(metric, out.data<T>(), labels.data<L>(), positions, cols, index_labels);
      });
    });
    // Every sample holds positions / n of them: the caller's running mean over samples
    // stays the mean over positions.
    sums[i] = positions ? total * static_cast<double>(n) / static_cast<double>(positions) : 0.0;
  }
  return sums;
}

void Sequential::gather_optimizer_state() {
  if (!optimizer_state_sharded_) return;
  dist::gather_optimizer_state(*dist::world(), *optimizer_, parameters());
  optimizer_state_sharded_ = false;
}

void Sequential::synchronize_replicas() {
  dist::Communicator* comm = dist::world();
  if (!built_ || !comm || comm->world_size() == 1) return;
  std::vector<Tensor> weights;
  for (const auto& layer : layers_)
    for (auto& entry : layer->weights()) weights.push_back(entry.second);
  dist::synchronize_replicas(*comm, weights);
}

namespace {

// The array path: batches cut from the model's tensors in Batching's order; each rank
// gathers only its contiguous share of every batch.
class ArraySource final : public BatchSource {
 public:
  ArraySource(const Tensor& x, const Tensor& y, const Tensor& sample_weight, const Batching& batching,
              dist::Communicator* comm)
      : x_(x), y_(y), w_(sample_weight), order_(batching.order), comm_(comm) {
    n_ = x.shape()[0];
    // A batch larger than the data is the whole data; clamped, no batch count below can
    // overflow (batch_size = 2^63 - 1 gave zero batches and a loss of 0).
    batch_size_ = std::min(batching.batch_size, n_);
    total_ = n_ / batch_size_ + (n_ % batch_size_ != 0);
    if (batching.steps > 0) total_ = std::min(total_, batching.steps);
    if (!order_.empty()) {
      // Shuffled batches are gathered rows (index_select); contiguous once here, so that
      // no batch copies the whole array.
      x_ = ops::contiguous(x_.detach());
      y_ = ops::contiguous(y_.detach());
      if (w_.defined()) w_ = ops::contiguous(w_.detach());
      order_tensor_ = Tensor::empty({static_cast<int64_t>(order_.size())}, DType::Int64);
      std::copy(order_.begin(), order_.end(), order_tensor_.data<int64_t>());
    }
  }
  int64_t size() const override { return total_; }
  std::string describe() const override {
    return cat(n_, " samples in ", total_, " batches of ", batch_size_, w_.defined() ? ", weighted" : "");
  }
  bool next(Batch& batch) override {
    if (b_ == total_) return false;
    int64_t begin = b_++ * batch_size_, count = std::min(batch_size_, n_ - begin);
    auto [share_begin, share_end] = comm_ && comm_->world_size() > 1
                                        ? dist::local_share(count, comm_->rank(), comm_->world_size())
                                        : std::pair<int64_t, int64_t>{0, count};
    int64_t local = share_end - share_begin, first = begin + share_begin;
    auto cut = [&](const Tensor& all) {
      if (!all.defined()) return Tensor();
      if (order_.empty()) return ops::slice(all.detach(), 0, first, first + local, 1);
      return ops::index_select(all.detach(), 0, ops::slice(order_tensor_, 0, first, first + local, 1));
    };
    batch = {cut(x_), cut(y_), cut(w_), count};
    return true;
  }

 private:
  Tensor x_, y_, w_;
  const std::vector<int64_t>& order_;
  Tensor order_tensor_;  // order_ as int64 indices
  dist::Communicator* comm_;
  int64_t n_ = 0, batch_size_ = 1, total_ = 0, b_ = 0;
};

}  // namespace

BatchQueue::BatchQueue(int64_t capacity) : capacity_(std::max<int64_t>(capacity, 1)) {}

bool BatchQueue::put(Batch batch) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return closed_ || static_cast<int64_t>(batches_.size()) < capacity_; });
  if (closed_) return false;
  batches_.push_back(std::move(batch));
  changed_.notify_all();
  return true;
}

void BatchQueue::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  finished_ = true;
  changed_.notify_all();
}

void BatchQueue::fail() {
  std::lock_guard<std::mutex> lock(mutex_);
  failed_ = finished_ = true;
  changed_.notify_all();
}

void BatchQueue::close() {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  batches_.clear();
  changed_.notify_all();
}

bool BatchQueue::pop(Batch& batch, const std::function<bool()>& interrupted) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto ready = [&] { return closed_ || finished_ || !batches_.empty(); };
  while (!changed_.wait_for(lock, std::chrono::milliseconds(100), ready)) {
    if (!interrupted) continue;
    // Asked without the lock: the check waits for the GIL, and producers must not wait
    // for the lock meanwhile.
    lock.unlock();
    bool give_up = interrupted();
    lock.lock();
    if (give_up) return false;
  }
  if (!batches_.empty()) {
    batch = std::move(batches_.front());
    batches_.pop_front();
    changed_.notify_all();
    return true;
  }
  // The producer keeps its exception; the Python front raises it in place of this one.
  if (failed_) steepest::fail<StateError>("fit", "the input pipeline failed");
  return false;
}

int64_t BatchQueue::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(batches_.size());
}

bool QueueSource::next(Batch& batch) {
  if (steps_ > 0 && taken_ == steps_) return false;
  if (!queue_->pop(batch, interrupted_)) return false;
  ++taken_;
  batch.count = batch.x.shape()[0];
  dist::Communicator* comm = dist::world();
  if (share_ == Share::PerRank && comm && comm->world_size() > 1) {
    // Every rank streams the same batches and computes its contiguous share of each.
    auto [begin, end] = dist::local_share(batch.count, comm->rank(), comm->world_size());
    auto rows = [&](const Tensor& t) { return t.defined() ? ops::slice(t, 0, begin, end, 1) : t; };
    batch = {rows(batch.x), rows(batch.y), rows(batch.sample_weight), batch.count};
  }
  return true;
}

std::string QueueSource::describe() const { return cat("streamed batches, ", steps_, " steps"); }

// A KFAC optimizer's factors come from the layers it preconditions: they collect them while
// this model trains. Any other optimizer leaves every layer on its plain forward.
void Sequential::connect_kfac(bool distributed) {
  auto* kfac = dynamic_cast<optim::KFAC*>(optimizer_.get());
  if (kfac && distributed)
    fail("fit", "KFAC does not all-reduce its Kronecker factors across ranks; train with it on "
         "one process, or use another optimizer for data-parallel training");
  if (kfac && loss_scaler_)
    fail("fit", "KFAC with a mixed-precision loss scaler is not supported: the scaled "
         "gradients would enter its factor G");
  for (auto& layer : layers_) {
    const optim::KfacLayout layout = layer->kfac_layout();
    if (layout == optim::KfacLayout::None) continue;
    layer->set_kfac(kfac ? kfac->track(layer->weights()[0].second, layout) : nullptr);
  }
}

void Sequential::check_ready(const char* op) const {
  if (!built_) fail(op, "the model is not built; give it an Input layer or call build()");
  if (!compiled()) fail(op, "the model must be compiled before fit/evaluate; call compile()");
}

Logs Sequential::run(BatchSource& source, const LoopOptions& options, const BatchCallbacks& callbacks) {
  const bool train = options.mode == LoopOptions::Mode::Train;
  const int64_t accumulation_steps = options.accumulation_steps;
  const char* op = train ? "fit" : "evaluate";
  Logs logs;
  const size_t custom_metrics = custom_metrics_ ? custom_metrics_->count : 0;
  logs.metrics.assign(metrics_.size() + custom_metrics, 0.0);
  if (custom_metrics) custom_metrics_->reset();
  std::vector<Tensor> params = parameters();
  const int64_t total_batches = source.size();  // -1: until the source runs out

  dist::Communicator* comm = dist::world();
  const bool distributed = comm && comm->world_size() > 1;
  if (distributed)
    comm->check_agreement(op, cat(source.describe(), ", accumulating ", accumulation_steps),
                          "every rank must pass the same data and batch size");
  std::unique_ptr<dist::GradientReducer> reducer;
  if (train && distributed) {
    const bool shard = shard_optimizer_state_;
    reducer = std::make_unique<dist::GradientReducer>(*comm, params, shard ? optimizer_.get() : nullptr);
    if (shard && !optimizer_state_sharded_) dist::shard_optimizer_state(*comm, *optimizer_, params);
    if (!shard) gather_optimizer_state();
    optimizer_state_sharded_ = shard;
  }
  const std::vector<Tensor>& stepped = reducer ? reducer->step_parameters() : params;
  optim::DecayMask decay;
  if (train) {
    connect_kfac(distributed);
    decay = optimizer_->decay_mask(params, parameter_names());
    if (reducer) decay = reducer->step_decay_mask(decay);
  }
  optim::LossScaler* scaler = train ? loss_scaler_.get() : nullptr;
  // Under data parallelism a stop asked for on one rank (by its progress callback) is
  // agreed on at the next batch's exchange, so that every rank takes the same steps.
  bool stop_requested = false;

  // The batches of one optimizer step, fetched together: each one's gradient is
  // weighted by its share of the step's samples, which needs all their sizes.
  std::deque<Batch> group;
  int64_t group_samples = 0;
  for (int64_t b = 0; total_batches < 0 || b < total_batches; ++b) {
    if (group.empty()) {
      group_samples = 0;
      for (int64_t k = 0; k < accumulation_steps && (total_batches < 0 || b + k < total_batches); ++k) {
        Batch next;
        if (!source.next(next)) break;
        group_samples += next.count;
        group.push_back(std::move(next));
      }
    }
    const bool exhausted = group.empty();
    Batch batch;
    if (!exhausted) {
      batch = std::move(group.front());
      group.pop_front();
      if (callbacks.before_batch) callbacks.before_batch(b);
    }
    const int64_t count = batch.count;
    const int64_t local = batch.x.defined() ? batch.x.shape()[0] : 0;
    // Batches are copied to the model's device one at a time.
    auto on_device = [&](const Tensor& t) { return t.defined() ? ops::to_device(t, device_) : t; };
    Tensor xb = on_device(batch.x), yb = on_device(batch.y), wb = on_device(batch.sample_weight);
    // A rank whose share of a last, small batch is empty computes nothing but still
    // takes part in every exchange.
    Tensor output, loss;
    double loss_value = 0.0;
    if (local > 0) {
      if (train) {
        loss = batch_loss(xb, yb, wb, Pass::train(optimizer_->iterations()), &output);
        loss_value = loss.item();
      } else {
        NoGradGuard no_grad;
        loss_value = batch_loss(xb, yb, wb, Pass::inference(), &output).item();
      }
    }
    // Sums over the batch: the loss, each metric, the samples; then the exhausted and
    // stop flags.
    std::vector<double> sums{loss_value * static_cast<double>(local)};
    for (double m : metric_sums(output, yb, local)) sums.push_back(m);
    sums.push_back(static_cast<double>(local));
    sums.push_back(exhausted ? 1.0 : 0.0);
    sums.push_back(stop_requested ? 1.0 : 0.0);
    if (distributed)
      comm->control().all_reduce(sums.data(), static_cast<int64_t>(sums.size()), DType::Float64,
                                   dist::ReduceOp::Sum);
    if (sums[sums.size() - 2] > 0.0) {
      // Keras: an input that runs out before the epoch's batches (or gives none at
      // all) ends training; a stream of unknown length ends its epoch there.
      logs.exhausted = total_batches >= 0 || b == 0;
      break;
    }
    if (sums.back() > 0.0) {
      logs.stopped = true;
      break;
    }
    const double loss_sum = sums.front();
    if (train) {
      if (options.on_nan_loss == OnNanLoss::Stop && !std::isfinite(loss_sum)) {
        // Stop before the update: the weights stay those of the last finite step.
        logs.nan_loss = logs.stopped = true;
        logs.loss = loss_sum / static_cast<double>(count);
        break;
      }
      bool first_of_group = b % accumulation_steps == 0;
      bool last_of_group = group.empty();
      // A step that wants the Hessian's diagonal (Sophia) records its gradients
      // (create_graph) and keeps the graph for the Hessian-vector product.
      const bool curvature = optimizer_->wants_curvature();
      if (curvature && (distributed || scaler))
        fail<StateError>(op, optimizer_->name(), "'s Hessian estimate is not supported ",
                         distributed ? "under data parallelism" : "with float16 loss scaling");
      if (first_of_group)
        for (Tensor& p : params) p.set_grad(Tensor());
      if (local > 0) {
        // Weighted by the share of the step's global samples: summed over batches and
        // ranks, the gradient is that of the mean loss over all of them.
        if (group_samples != local)
          loss = ops::mul_scalar(loss, static_cast<double>(local) / static_cast<double>(group_samples));
        BackwardOptions backward_options;
        // A curvature estimate differentiates this backward again (a Hessian-vector product).
        backward_options.retain_graph = curvature;
        backward_options.create_graph = curvature;
        if (reducer && last_of_group) backward_options.on_gradient_ready = reducer->overlap_hook();
        steepest::backward(scaler ? scaler->scale(loss) : loss, Tensor(), backward_options);
      }
      if (last_of_group) {
        if (curvature) {
          std::vector<Tensor> grads;
          for (const Tensor& p : params) grads.push_back(p.grad());
          optimizer_->update_curvature(params, optim::hutchinson_hessian_diagonal(params, grads));
        }
        if (reducer) reducer->reduce();
        dist::Communicator* shards = reducer ? reducer->shard_group() : nullptr;
        if (scaler) {
          // Unscaled, checked and applied — or skipped on overflow — then the scale moves.
          if (!scaler->step(*optimizer_, stepped, shards, decay)) ++logs.skipped_steps;
          scaler->update();
          logs.loss_scale = scaler->get_scale();
        } else {
          optimizer_->step(stepped, shards, decay);
        }
        if (reducer) reducer->gather_parameters();
      }
    }
    const double seen = static_cast<double>(logs.samples), batch_samples = static_cast<double>(count);
    for (size_t i = 0; i < metrics_.size(); ++i)
      logs.metrics[i] = (logs.metrics[i] * seen + sums[i + 1]) / (seen + batch_samples);
    if (custom_metrics && local > 0) {
      NoGradGuard no_grad;
      std::vector<double> results = custom_metrics_->update(yb, output.detach());
      if (results.size() != custom_metrics)
        fail("metrics", "the custom metrics gave ", results.size(), " results, expected ", custom_metrics);
      std::copy(results.begin(), results.end(), logs.metrics.begin() + static_cast<std::ptrdiff_t>(metrics_.size()));
    }
    logs.loss = (logs.loss * seen + loss_sum) / (seen + batch_samples);
    logs.samples += count;
    logs.batches = b + 1;
    if (callbacks.after_batch && !callbacks.after_batch(b + 1, total_batches, logs)) {
      stop_requested = true;
      if (!distributed) {
        logs.stopped = true;
        break;
      }
    }
  }
  return logs;
}

namespace {

// The checks of the array path's data, before any batch is cut.
void check_arrays(const char* op, const Tensor& x, const Tensor& y, const Tensor& sample_weight,
                  const Batching& batching) {
  if (batching.batch_size <= 0) fail(op, "batch_size must be positive, got ", batching.batch_size);
  int64_t n = x.ndim() ? x.shape()[0] : 0;
  if (!y.defined() || y.ndim() == 0 || y.shape()[0] != n)
    fail(op, "x has ", n, " samples but y has shape ", y.defined() ? y.shape() : Dims{});
  // An empty epoch would report a loss of 0 for data never seen.
  if (n == 0) fail(op, "x has no samples");
  if (sample_weight.defined() && (sample_weight.ndim() == 0 || sample_weight.shape()[0] != n))
    fail("fit", "x has ", n, " samples but sample_weight has shape ", sample_weight.shape());
  if (batching.steps < 0) fail("fit", "steps must be positive (or 0 for all batches), got ", batching.steps);
}

void check_accumulation(int64_t accumulation_steps) {
  if (accumulation_steps <= 0)
    fail("fit", "gradient_accumulation_steps must be positive, got ", accumulation_steps);
}

}  // namespace

Logs Sequential::train_epoch(const Tensor& x, const Tensor& y, const Tensor& sample_weight,
                             const Batching& batching, OnNanLoss on_nan_loss, const BatchCallbacks& callbacks) {
  check_ready("fit");
  check_accumulation(batching.accumulation_steps);
  check_arrays("fit", x, y, sample_weight, batching);
  if (!batching.order.empty() && static_cast<int64_t>(batching.order.size()) != x.shape()[0])
    fail("fit", "the shuffle order has ", batching.order.size(), " entries for ", x.shape()[0], " samples");
  ArraySource source(x, y, sample_weight, batching, dist::world());
  return run(source, LoopOptions::train(std::min(batching.accumulation_steps, x.shape()[0]), on_nan_loss),
             callbacks);
}

Logs Sequential::evaluate(const Tensor& x, const Tensor& y, const Tensor& sample_weight,
                          const Batching& batching, const BatchCallbacks& callbacks) {
  check_ready("evaluate");
  Batching in_order = batching;
  in_order.order.clear();
  check_arrays("evaluate", x, y, sample_weight, in_order);
  ArraySource source(x, y, sample_weight, in_order, dist::world());
  return run(source, LoopOptions::evaluate(), callbacks);
}

Logs Sequential::train_epoch(BatchSource& source, const Batching& batching, OnNanLoss on_nan_loss,
                             const BatchCallbacks& callbacks) {
  check_ready("fit");
  check_accumulation(batching.accumulation_steps);
  return run(source, LoopOptions::train(batching.accumulation_steps, on_nan_loss), callbacks);
}

Logs Sequential::evaluate(BatchSource& source, const BatchCallbacks& callbacks) {
  check_ready("evaluate");
  return run(source, LoopOptions::evaluate(), callbacks);
}

Tensor Sequential::predict(BatchSource& source, const PredictCallbacks& callbacks) const {
  if (!built_) fail("predict", "the model is not built; give it an Input layer or call build()");
  NoGradGuard no_grad;
  std::vector<Tensor> outputs;
  Batch batch;
  for (int64_t b = 0; source.size() < 0 || b < source.size(); ++b) {
    if (callbacks.before_batch) callbacks.before_batch(b);
    if (!source.next(batch)) break;
    Tensor out = ops::contiguous(ops::to_device(forward(ops::to_device(batch.x, device_), Pass::inference()), {}));
    if (callbacks.after_batch) callbacks.after_batch(b, out);
    outputs.push_back(std::move(out));
  }
  if (outputs.empty()) fail("predict", "the input gave no batches");
  return outputs.size() == 1 ? outputs.front() : ops::cat(outputs, 0);
}

Tensor Sequential::predict(const Tensor& x, int64_t batch_size, const PredictCallbacks& callbacks) const {
  if (!built_) fail("predict", "the model is not built; give it an Input layer or call build()");
  if (batch_size <= 0) fail("predict", "batch_size must be positive, got ", batch_size);
  NoGradGuard no_grad;
  int64_t n = x.ndim() ? x.shape()[0] : 0;
  Tensor result;
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    int64_t count = std::min(batch_size, n - begin);
    if (callbacks.before_batch) callbacks.before_batch(begin / batch_size);
    Tensor out = forward(ops::to_device(ops::slice(x, 0, begin, begin + count, 1), device_), Pass::inference());
    if (!result.defined()) {
      Dims shape = out.shape();
      shape[0] = n;
      result = Tensor::empty(shape, out.dtype());  // on the host, wherever the model runs
    }
    Tensor dst = ops::slice(result, 0, begin, begin + count, 1);
    ops::copy_into(out, dst);
    if (callbacks.after_batch) callbacks.after_batch(begin / batch_size, dst);
  }
  if (!result.defined()) fail("predict", "x has no samples");
  return result;
}

}  // namespace steepest::model
