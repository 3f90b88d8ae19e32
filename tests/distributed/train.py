"""Run by tests/test_distributed.py, under mpirun or as one plain process: trains a small
MLP and saves each rank's final weights, history and optimizer-state size to
OUT/rank<r>.npz, so the test can compare ranks with each other and with one process.

    train.py OUT [--shard] [--accumulate K] [--samples N] [--batch B] [--precision P]
                 [--optimizer adamw|lamb] [--fault die|raise|mismatch] [--weighted]
                 [--backup DIR [--crash-at EPOCH]] [--exclude-bias] [--stream] [--grow-batch]
"""

import argparse
import json
import os

import numpy as np

import steepest as st

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--shard", action="store_true")
parser.add_argument("--accumulate", type=int, default=1)
parser.add_argument("--samples", type=int, default=203)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--precision", default="float32")
parser.add_argument("--fault", choices=("die", "raise", "mismatch"))
parser.add_argument("--optimizer", choices=("adamw", "lamb"), default="adamw")
parser.add_argument("--weighted", action="store_true",
                    help="sample and class weights, and only 5 batches per epoch")
parser.add_argument("--backup", help="train with BackupAndRestore into this folder")
parser.add_argument("--crash-at", type=int, help="every rank raises when this epoch begins")
parser.add_argument("--exclude-bias", action="store_true",
                    help="strong weight decay (0.5) that the biases are excluded from")
parser.add_argument("--stream", action="store_true",
                    help="the training and validation data as st.data.PyDatasets of the same batches")
parser.add_argument("--grow-batch", action="store_true",
                    help="BatchSizeScheduler doubles the (global) batch every epoch")
args = parser.parse_args()

st.distributed.init()
rank = st.distributed.rank()
rng = np.random.default_rng(0)
x = rng.standard_normal((args.samples, 12)).astype(np.float32)
y = rng.integers(0, 4, args.samples)
if args.precision == "mixed_float16":
    # Past float16's range on one sample only: that step's gradients overflow on the rank
    # that holds it, and the loss scaler must skip the step on every rank.
    x[5] *= 1e5
st.mixed_precision.set_global_policy(args.precision)
# Every rank draws different initial weights: fit must start them all from rank 0's.
st.manual_seed(100 + rank)
hidden = 32 + (rank if args.fault == "mismatch" else 0)
model = st.Sequential([st.layers.Input((12,)), st.layers.Dense(hidden, activation="relu"),
                       st.layers.Dense(hidden, activation="tanh"), st.layers.Dense(4)])
optimizer = {"adamw": st.optimizers.AdamW, "lamb": st.optimizers.Lamb}[args.optimizer]
optimizer = optimizer(learning_rate=0.01, clipnorm=0.5, **({"weight_decay": 0.5} if args.exclude_bias else {}))
if args.exclude_bias:
    optimizer.exclude_from_weight_decay(var_names=["bias"])
model.compile(optimizer=optimizer,
              loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              shard_optimizer_state=args.shard)


class Fault(st.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if rank == 1 and epoch == 0:
            if args.fault == "die":
                os._exit(3)
            raise RuntimeError("rank 1 fails on purpose")


class Crash(st.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == args.crash_at:
            raise SystemExit(f"rank {rank} crashes at epoch {epoch} on purpose")


callbacks = [Fault()] if args.fault in ("die", "raise") else []
if args.grow_batch:
    callbacks.append(st.callbacks.BatchSizeScheduler(lambda epoch, size: args.batch * 2 ** epoch))
if args.backup:
    callbacks += [st.callbacks.BackupAndRestore(args.backup), Crash()]
weighting = {}
validation_data = (x[:40], y[:40])
if args.weighted:
    w = rng.uniform(0.2, 2.0, args.samples).astype(np.float32)
    weighting = dict(sample_weight=w, class_weight={0: 3.0, 2: 0.5}, steps_per_epoch=5)
    validation_data = (x[:40], y[:40], w[:40])
data = dict(x=x, y=y, batch_size=args.batch)
if args.stream:
    class Batches(st.data.PyDataset):
        def __init__(self, x, y, **kwargs):
            super().__init__(**kwargs)
            self.x, self.y = x, y

        def __len__(self):
            return -(-len(self.x) // args.batch)

        def __getitem__(self, i):
            return self.x[i * args.batch:(i + 1) * args.batch], self.y[i * args.batch:(i + 1) * args.batch]

    data = dict(x=Batches(x, y, workers=2))
    validation_data = Batches(x[:40], y[:40])
try:
    history = model.fit(**data, epochs=args.epochs, seed=7, verbose=0,
                        validation_data=validation_data, callbacks=callbacks,
                        gradient_accumulation_steps=args.accumulate, **weighting)
except ValueError as e:
    if args.fault != "mismatch":
        raise
    print(f"rank {rank} refused: {e}", flush=True)
    raise SystemExit(0)

state = model.optimizer.state_dict()["state"]
state_bytes = sum(np.asarray(v).nbytes for entry in state if entry for k, v in entry.items() if k != "step")
arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
np.savez(os.path.join(args.out, f"rank{rank}.npz"), state_bytes=state_bytes,
         history=json.dumps(history.history), **arrays)
model.save(os.path.join(args.out, "model.steepest"))
print(f"rank {rank} done", flush=True)
