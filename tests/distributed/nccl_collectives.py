"""Run under mpirun by tests/test_distributed.py where the NCCL backend and a GPU exist:
the collectives on CUDA tensors against NumPy (one GPU per rank: the local rank's)."""

import numpy as np

import steepest as st

st.distributed.init("nccl")
rank, world = st.distributed.rank(), st.distributed.world_size()
device = f"cuda:{st.distributed.local_rank()}"
assert st.distributed.backend() == "nccl"

for dtype in ("float32", "float64", "float16", "bfloat16"):
    for n in (0, 1, 7, (1 << 20) + 3):
        per_rank = [(np.arange(n) % 13 - 6.0) * (r + 1) for r in range(world)]
        for op, want in (("sum", np.sum(per_rank, axis=0)), ("max", np.max(per_rank, axis=0)),
                         ("mean", np.sum(per_rank, axis=0) / world)):
            t = st.tensor(per_rank[rank], dtype=dtype).to(device)
            st.distributed.all_reduce(t, op=op)
            assert t.device == device and t.dtype == dtype
            np.testing.assert_allclose(t.to("cpu").astype("float64").numpy(), want, rtol=2.0**-7)
        b = st.tensor(per_rank[rank], dtype=dtype).to(device)
        st.distributed.broadcast(b, root=world - 1)
        assert np.array_equal(b.to("cpu").astype("float64").numpy(), per_rank[world - 1])
        g = st.distributed.all_gather(st.tensor(per_rank[rank].reshape(n, 1), dtype=dtype).to(device))
        assert np.array_equal(g.to("cpu").astype("float64").numpy().ravel(), np.concatenate(per_rank))
        full = st.tensor(np.tile(per_rank[rank], world), dtype=dtype).to(device)
        s = st.distributed.reduce_scatter(full, op="sum")
        np.testing.assert_allclose(s.to("cpu").astype("float64").numpy(), np.sum(per_rank, axis=0), rtol=2.0**-7)

try:
    st.distributed.all_reduce(st.ones((2,)))
except ValueError as e:
    assert "move it with .to('cuda" in str(e), str(e)
else:
    raise AssertionError("a CPU tensor went through NCCL")
st.distributed.barrier()
print(f"OK rank {rank} of {world}", flush=True)
