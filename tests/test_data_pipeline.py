"""Generators, iterables and st.data.PyDataset in fit/evaluate/predict (issue 15 item 4),
written as a Keras user would use them."""

import logging
import os
import threading
import time

import numpy as np
import pytest

import steepest as st

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 8)).astype(np.float32)
Y = RNG.integers(0, 3, 120)
W = RNG.uniform(0.5, 2.0, 120).astype(np.float32)
BATCH = 20


def make_model(seed=0):
    st.manual_seed(seed)
    model = st.Sequential([st.layers.Input((8,)), st.layers.Dense(16, activation="relu"), st.layers.Dense(3)])
    model.compile(optimizer=st.optimizers.SGD(0.1),
                  loss=st.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def twin_models():
    a, b = make_model(), make_model()
    b.set_weights(a.get_weights())
    return a, b


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


def batches(x=X, y=Y, w=None, size=BATCH):
    for i in range(0, len(x), size):
        s = slice(i, i + size)
        yield (x[s], y[s]) if w is None else (x[s], y[s], w[s])


def endless(x=X, y=Y, size=BATCH):
    while True:
        yield from batches(x, y, size=size)


class Slices(st.data.PyDataset):
    """Batches sliced from arrays; records the indices it served and its epoch ends."""

    def __init__(self, x=X, y=Y, w=None, size=BATCH, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.w, self.size = x, y, w, size
        self.served = []
        self.epoch_ends = 0

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        self.served.append(i)
        s = slice(i * self.size, (i + 1) * self.size)
        return (self.x[s], self.y[s]) if self.w is None else (self.x[s], self.y[s], self.w[s])

    def on_epoch_end(self):
        self.epoch_ends += 1


def test_generator_with_steps_per_epoch_matches_arrays_bit_for_bit():
    a, b = twin_models()
    ha = a.fit(X, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    hb = b.fit(endless(), steps_per_epoch=len(X) // BATCH, epochs=2, verbose=0)
    assert same_weights(a, b)
    assert ha.history == hb.history


def test_iterable_of_tuples_runs_until_exhausted_each_epoch():
    a, b = twin_models()
    ha = a.fit(X, Y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    hb = b.fit(list(batches()), epochs=3, verbose=0)
    assert same_weights(a, b)
    assert ha.history == hb.history


def test_sample_weights_as_third_element():
    a, b = twin_models()
    a.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, sample_weight=W, verbose=0)
    b.fit(batches(w=W), epochs=1, verbose=0)
    assert same_weights(a, b)


@pytest.mark.parametrize("workers", [1, 4])
def test_pydataset_matches_arrays(workers):
    a, b = twin_models()
    ha = a.fit(X, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    data = Slices(workers=workers)
    hb = b.fit(data, epochs=2, shuffle=False, verbose=0)
    assert same_weights(a, b)
    assert ha.history == hb.history
    assert data.epoch_ends == 2


def test_pydataset_shuffle_permutes_batch_indices_reproducibly():
    data = Slices()
    make_model().fit(data, epochs=2, shuffle=True, seed=3, verbose=0)
    first, second = data.served[:6], data.served[6:]
    assert sorted(first) == sorted(second) == list(range(6))
    assert first != list(range(6)) or second != list(range(6))
    again = Slices()
    make_model().fit(again, epochs=2, shuffle=True, seed=3, verbose=0)
    assert again.served == data.served


def test_on_epoch_end_reshuffles_the_samples():
    class Reshuffled(Slices):
        def __init__(self):
            super().__init__()
            self.orders = []
            self.order = np.arange(len(X))

        def __getitem__(self, i):
            rows = self.order[i * self.size:(i + 1) * self.size]
            return X[rows], Y[rows]

        def on_epoch_end(self):
            super().on_epoch_end()
            self.orders.append(self.order)
            self.order = np.random.default_rng(len(self.orders)).permutation(len(X))

    data = Reshuffled()
    a, b = twin_models()
    b.fit(data, epochs=3, shuffle=False, verbose=0)
    assert data.epoch_ends == 3
    # The same epochs from arrays, each in the order on_epoch_end chose before it.
    for order in data.orders:
        a.fit(X[order], Y[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert same_weights(a, b)


def test_generator_continues_across_epochs():
    seen = []

    def numbered():
        for k in range(100):
            seen.append(k)
            i = (k % 6) * BATCH
            yield X[i:i + BATCH], Y[i:i + BATCH]

    model = make_model()
    h = model.fit(numbered(), steps_per_epoch=2, epochs=3, verbose=0)
    assert len(h.history["loss"]) == 3
    # Epoch 2 starts at the third batch; a few more may have been read ahead.
    assert seen[:6] == list(range(6))


def test_gradient_accumulation_with_a_generator():
    a, b = twin_models()
    a.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, gradient_accumulation_steps=3, verbose=0)
    b.fit(batches(), epochs=1, gradient_accumulation_steps=3, verbose=0)
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


def test_evaluate_and_predict_on_streams_match_arrays():
    model = make_model()
    model.fit(X, Y, epochs=1, verbose=0)
    expected = model.evaluate(X, Y, batch_size=BATCH)
    for data in (batches(), list(batches()), Slices(), Slices(workers=3)):
        assert model.evaluate(data) == expected
    outputs = model.predict(X, batch_size=BATCH)
    np.testing.assert_array_equal(model.predict((x for x, _ in batches())), outputs)
    np.testing.assert_array_equal(model.predict(batches()), outputs)  # (x, y) tuples: x is used
    np.testing.assert_array_equal(model.predict(Slices(workers=2)), outputs)
    np.testing.assert_array_equal(model.predict(endless(), steps=2), outputs[:2 * BATCH])


def test_validation_data_as_a_pydataset():
    a, b = twin_models()
    ha = a.fit(X, Y, batch_size=BATCH, epochs=2, shuffle=False, validation_data=(X[:60], Y[:60]), verbose=0)
    hb = b.fit(Slices(), epochs=2, shuffle=False, validation_data=Slices(X[:60], Y[:60]), verbose=0)
    assert ha.history["val_loss"] == hb.history["val_loss"]
    assert ha.history["val_accuracy"] == hb.history["val_accuracy"]
    hc = make_model().fit(endless(), steps_per_epoch=3, epochs=2, validation_data=endless(),
                          validation_steps=2, verbose=0)
    assert len(hc.history["val_loss"]) == 2


def test_batch_hooks_and_model_built_from_the_first_batch():
    class Count(st.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.begins, self.ends = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self.begins.append(batch)

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append((batch, logs["loss"]))

    model = st.Sequential([st.layers.Dense(4), st.layers.Dense(3)])
    model.compile(optimizer="adam", loss=st.losses.SparseCategoricalCrossentropy(from_logits=True))
    count = Count()
    model.fit(batches(), epochs=1, callbacks=[count], verbose=0)
    assert count.begins == list(range(6))
    assert [b for b, _ in count.ends] == list(range(6))
    assert model.input_shape[1:] == (8,)


def test_bad_batches_raise_clear_errors():
    model = make_model()

    def bad_shape():
        yield X[:10], Y[:10]
        yield X[:10, :5], Y[:10]

    with pytest.raises(ValueError, match=r"\[fit\] batch 1: .*\(None, 8\).*\(10, 5\)"):
        model.fit(bad_shape(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"\[fit\] batch 0: x has 10 samples but y has shape \(9,\)"):
        model.fit(iter([(X[:10], Y[:9])]), epochs=1, verbose=0)
    with pytest.raises(TypeError, match=r"\[fit\] batch 0: x must be numeric"):
        model.fit(iter([(np.array([["a"] * 8] * 4), Y[:4])]), epochs=1, verbose=0)
    with pytest.raises(TypeError, match=r"\[fit\] batch 0: expected a tuple \(x, y\)"):
        model.fit(iter([X[:4]]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"y and sample_weight cannot be given"):
        model.fit(batches(), Y, epochs=1, verbose=0)
    # Still usable.
    model.fit(X, Y, epochs=1, verbose=0)


def test_exception_in_a_generator_reaches_the_caller():
    class DataError(Exception):
        pass

    def failing():
        yield from list(batches())[:2]
        raise DataError("disk on fire")

    model = make_model()
    before = threading.active_count()
    with pytest.raises(DataError, match="disk on fire"):
        model.fit(failing(), epochs=1, verbose=0)

    class Failing(Slices):
        def __getitem__(self, i):
            if i == 3:
                raise KeyError(f"no batch {i}")
            return super().__getitem__(i)

    for workers in (1, 3):
        with pytest.raises(KeyError, match="no batch 3"):
            model.fit(Failing(workers=workers), epochs=1, shuffle=False, verbose=0)
    assert threading.active_count() == before
    h = model.fit(X, Y, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])


def test_exhausted_generator_warns_and_stops(caplog):
    model = make_model()
    with caplog.at_level(logging.WARNING, logger="steepest"):
        h = model.fit(batches(), steps_per_epoch=4, epochs=3, verbose=0)
    assert "ran out of data" in caplog.text
    # 6 batches: one epoch of 4, then 2 of the second epoch, then the stop.
    assert len(h.history["loss"]) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="steepest"):
        h = model.fit(batches(), epochs=3, verbose=0)  # a generator cannot restart
    assert "ran out of data" in caplog.text
    assert len(h.history["loss"]) == 1


def test_early_stopping_leaves_no_threads():
    before = threading.active_count()
    stop = st.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    h = make_model().fit(Slices(workers=4), epochs=5, callbacks=[stop], verbose=0)
    assert len(h.history["loss"]) < 5
    h = make_model().fit(endless(), steps_per_epoch=3, epochs=5, callbacks=[stop], verbose=0)
    assert len(h.history["loss"]) < 5
    assert threading.active_count() == before


class Picklable(st.data.PyDataset):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def __len__(self):
        return len(X) // BATCH

    def __getitem__(self, i):
        return X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]


@pytest.mark.training
def test_pydataset_on_a_process_pool():
    a, b = twin_models()
    a.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    b.fit(Picklable(workers=2, use_multiprocessing=True), epochs=1, shuffle=False, verbose=0)
    assert same_weights(a, b)


def test_unpicklable_dataset_falls_back_to_threads(caplog):
    data = Slices(workers=2, use_multiprocessing=True)
    data.lock = threading.Lock()  # cannot be pickled
    a, b = twin_models()
    a.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    with caplog.at_level(logging.WARNING, logger="steepest"):
        b.fit(data, epochs=1, shuffle=False, verbose=0)
    assert "threads instead" in caplog.text
    assert same_weights(a, b)


def _peak_rss_bytes(reset=False):
    if reset:  # Linux resets the peak to the current RSS
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@pytest.mark.training
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memmap_bigger_than_the_allowed_growth_trains_with_flat_memory(tmp_path):
    rows, features = 200_000, 512  # 400 MB of float32
    path = tmp_path / "big.f32"
    # Written in chunks through a file, so that the test's own peak stays low.
    with open(path, "wb") as f:
        for i in range(0, rows, 10_000):
            f.write(np.random.default_rng(i).normal(size=(10_000, features)).astype(np.float32).tobytes())
    labels = np.random.default_rng(1).integers(0, 2, rows)

    class Memmapped(st.data.PyDataset):
        """Maps only the rows of each batch, so that pages read go when the batch does."""

        def __init__(self, batch_size, **kwargs):
            super().__init__(**kwargs)
            self.batch_size = batch_size

        def __len__(self):
            return rows // self.batch_size

        def __getitem__(self, i):
            begin = i * self.batch_size
            x = np.memmap(path, dtype=np.float32, mode="r", offset=begin * features * 4,
                          shape=(self.batch_size, features))
            return np.array(x), labels[begin:begin + self.batch_size]

    model = st.Sequential([st.layers.Input((features,)), st.layers.Dense(8, activation="relu"), st.layers.Dense(2)])
    model.compile(optimizer="adam", loss=st.losses.SparseCategoricalCrossentropy(from_logits=True))
    try:
        before = _peak_rss_bytes(reset=True)
        h = model.fit(Memmapped(1000, workers=2, max_queue_size=4), epochs=1, verbose=0)
        growth = _peak_rss_bytes() - before
        print(f"peak RSS growth {growth / 2**20:.1f} MiB")
    finally:
        os.remove(path)
    assert np.isfinite(h.history["loss"][0])
    file_size = rows * features * 4
    assert growth < file_size / 4, f"peak RSS grew by {growth / 2**20:.0f} MiB for a {file_size / 2**20:.0f} MiB file"


def test_slow_producer_does_not_block_interpreter_exit():
    # A producer still blocked on a full queue when fit ends is stopped and joined.
    def slowly():
        while True:
            time.sleep(0.001)
            yield X[:BATCH], Y[:BATCH]

    before = threading.active_count()
    make_model().fit(slowly(), steps_per_epoch=2, epochs=2, verbose=0)
    assert threading.active_count() == before


def test_ctrl_c_while_waiting_for_a_slow_producer_stops_cleanly():
    import _thread

    timer = threading.Timer(0.3, _thread.interrupt_main)

    def stalled():
        yield X[:BATCH], Y[:BATCH]
        timer.start()  # fit is running: it is waiting for this batch
        time.sleep(1.0)
        while True:
            yield X[:BATCH], Y[:BATCH]

    model = make_model()
    start = time.perf_counter()
    h = model.fit(stalled(), steps_per_epoch=5, epochs=3, verbose=0)
    timer.join()
    assert time.perf_counter() - start < 5
    assert model._interrupted
    assert len(h.history.get("loss", [])) <= 1
