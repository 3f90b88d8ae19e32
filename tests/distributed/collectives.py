"""Run under mpirun by tests/test_distributed.py: every collective against NumPy, in
every dtype, for sizes 0, 1, odd and large. A failed check raises, which aborts the job
with a non-zero status; success prints one OK line per rank."""

import numpy as np

import steepest as st

st.distributed.init()
rank, world = st.distributed.rank(), st.distributed.world_size()
assert st.distributed.backend() == "mpi" and st.distributed.is_initialized()
assert 0 <= st.distributed.local_rank() < world

# Relative error bounds: one rounding to the dtype (16-bit results are the float32
# reduction rounded once; integers up to 2^8 are exact everywhere, so only mean rounds).
FLOATS = {"float32": 2.0**-23, "float64": 2.0**-52, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def values(n, r):
    """Rank r's data: small integers, exact in every dtype, different on every rank."""
    base = (np.arange(n) % 13 - 6).astype(np.float64)
    return base * (1 + r) if r % 2 == 0 else -base + r


def as_numpy(t):
    return t.astype("float64").numpy() if t.dtype in ("float16", "bfloat16") else t.numpy().astype(np.float64)


for dtype_name, tolerance in FLOATS.items():
    for n in (0, 1, 7, (1 << 20) + 3):
        per_rank = [values(n, r) for r in range(world)]
        expected = {"sum": np.sum(per_rank, axis=0), "mean": np.sum(per_rank, axis=0) / world,
                    "max": np.max(per_rank, axis=0), "min": np.min(per_rank, axis=0)}
        for op, want in expected.items():
            t = st.tensor(per_rank[rank], dtype=dtype_name)
            out = st.distributed.all_reduce(t, op=op)
            assert out is t and t.dtype == dtype_name and t.shape == (n,)
            got = as_numpy(t)
            # 16-bit results are the float32 reduction rounded once.
            assert np.allclose(got, want, rtol=tolerance, atol=0), (dtype_name, n, op)
        b = st.tensor(per_rank[rank], dtype=dtype_name)
        st.distributed.broadcast(b, root=world - 1)
        assert np.array_equal(as_numpy(b), per_rank[world - 1].astype(np.float64)), (dtype_name, n)
        gathered = st.distributed.all_gather(st.tensor(per_rank[rank].reshape(n, 1), dtype=dtype_name))
        assert gathered.shape == (n * world, 1) and gathered.dtype == dtype_name
        assert np.array_equal(as_numpy(gathered).ravel(), np.concatenate(per_rank)), (dtype_name, n)
        rows = n * world
        full = [np.arange(rows, dtype=np.float64) % 7 * (r + 1) for r in range(world)]
        scattered = st.distributed.reduce_scatter(st.tensor(full[rank], dtype=dtype_name), op="sum")
        assert scattered.shape == (n,) and scattered.dtype == dtype_name
        assert np.array_equal(as_numpy(scattered), np.sum(full, axis=0)[rank * n:(rank + 1) * n])

for dtype_name in ("int32", "int64"):
    t = st.tensor(np.arange(5) * (rank + 1), dtype=dtype_name)
    st.distributed.all_reduce(t, op="max")
    assert t.numpy().tolist() == [i * world for i in range(5)]

# A non-contiguous tensor is reduced through a copy and written back in place.
base = st.tensor(np.arange(12, dtype=np.float32).reshape(3, 4) + rank)
view = base.T
st.distributed.all_reduce(view, op="sum")
assert np.array_equal(base.numpy(), world * np.arange(12, dtype=np.float32).reshape(3, 4) + sum(range(world)))

# Disagreeing calls raise on every rank instead of hanging.
for call in (lambda: st.distributed.all_reduce(st.zeros((3 + rank,))),
             lambda: st.distributed.broadcast(st.zeros((2,), dtype="float64" if rank else "float32")),
             lambda: st.distributed.all_gather(st.zeros((1, 1 + rank)))):
    try:
        call()
    except ValueError as e:
        assert "ranks disagree" in str(e) and "rank 1" in str(e), str(e)
    else:
        raise AssertionError("a disagreeing collective did not raise")

for bad, error in ((lambda: st.distributed.reduce_scatter(st.zeros((world + 1,))), ValueError),
                   (lambda: st.distributed.all_reduce(st.zeros((2,), dtype="int64"), op="mean"), TypeError),
                   (lambda: st.distributed.all_reduce(st.zeros((2,)), op="prod"), ValueError),
                   (lambda: st.distributed.broadcast(st.zeros((2,)), root=world), ValueError)):
    try:
        bad()
    except error:
        pass
    else:
        raise AssertionError("bad input did not raise")

st.distributed.barrier()
print(f"OK rank {rank} of {world}", flush=True)
