"""``st.data``: streamed inputs for ``fit``, ``evaluate`` and ``predict``.

``PyDataset`` is Keras 3's class: subclass it with ``__len__`` (batches per epoch) and
``__getitem__(i) -> (x, y[, sample_weight])``. Python generators and other iterables of
such batches are taken too. Batches are prepared on background threads and handed to
the C++ batch loop through a bounded queue (``_core.model.BatchQueue``), which the loop
empties without the GIL: while it computes a batch, the producers read and convert the
next ones.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import multiprocessing
import pickle
import threading
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._core import Tensor

_logger = logging.getLogger("steepest")

# What the models' preparation gives for one raw batch: x, y (None for predict) and the
# sample weights (None: none), ready for the queue.
Prepared = Tuple[Tensor, Optional[Tensor], Optional[Tensor]]


class PyDataset:
    """Keras 3's base class for batch-indexed inputs.

    >>> class Batches(st.data.PyDataset):
    ...     def __init__(self, x, y, batch_size, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.x, self.y, self.batch_size = x, y, batch_size
    ...     def __len__(self):
    ...         return -(-len(self.x) // self.batch_size)
    ...     def __getitem__(self, i):
    ...         s = slice(i * self.batch_size, (i + 1) * self.batch_size)
    ...         return self.x[s], self.y[s]
    >>> model.fit(Batches(x, y, 64, workers=4), epochs=3)

    ``workers`` batches are read at once on a thread pool (a process pool with
    ``use_multiprocessing=True``; the dataset must then pickle), at most
    ``max_queue_size`` ahead of the training loop. ``on_epoch_end`` runs after every
    epoch (reshuffles, augmentation); fit's ``shuffle`` shuffles the order of the batch
    indices.
    """

    def __init__(self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"[PyDataset] workers must be a positive int, got {workers!r}")
        if not isinstance(max_queue_size, int) or isinstance(max_queue_size, bool) or max_queue_size < 1:
            raise ValueError(f"[PyDataset] max_queue_size must be a positive int, got {max_queue_size!r}")
        self._workers = workers
        self._use_multiprocessing = bool(use_multiprocessing)
        self._max_queue_size = max_queue_size

    # A subclass that skips super().__init__() still gets Keras' defaults.
    @property
    def workers(self) -> int:
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self) -> bool:
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self) -> int:
        return getattr(self, "_max_queue_size", 10)

    @property
    def num_batches(self) -> int:
        return len(self)

    def __len__(self) -> int:
        raise NotImplementedError(f"[PyDataset] {type(self).__name__} must define __len__ (batches per epoch)")

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(f"[PyDataset] {type(self).__name__} must define __getitem__(index) -> batch")

    def on_epoch_end(self) -> None:
        """Called after every epoch (and every evaluation pass)."""


def is_stream(x: Any, y: Any) -> bool:
    """Whether fit/evaluate/predict's x is a stream of batches rather than an array:
    a PyDataset, an iterator or generator, an iterable that is not array-like, or (with
    no y) a list of (x, y[, w]) tuples."""
    if isinstance(x, PyDataset):
        return True
    if isinstance(x, (np.ndarray, Tensor, str, bytes, dict)) or hasattr(x, "__array__"):
        return False
    if isinstance(x, (list, tuple)):
        return y is None and len(x) > 0 and all(isinstance(b, tuple) for b in x)
    return hasattr(x, "__next__") or hasattr(x, "__iter__")


# ------------------------------------------------------------------ worker pools

_worker_dataset: Optional[PyDataset] = None


def _init_worker(dataset: PyDataset) -> None:
    global _worker_dataset
    _worker_dataset = dataset


def _worker_item(index: int) -> Any:
    assert _worker_dataset is not None
    return _worker_dataset[index]


def _executor(dataset: PyDataset) -> concurrent.futures.Executor:
    """The pool that reads a dataset's batches: threads, or processes (spawned, each
    with its own copy of the dataset) with use_multiprocessing. A dataset that cannot
    be pickled falls back to threads with a warning."""
    if dataset.use_multiprocessing:
        try:
            pickle.dumps(dataset)
        except Exception as e:  # noqa: BLE001 - any reason the copy cannot be made
            _logger.warning("[PyDataset] use_multiprocessing=True needs a dataset that pickles (%s: %s); "
                            "reading batches on %d threads instead", type(e).__name__, e, dataset.workers)
        else:
            # spawn, not fork: forking a process whose OpenMP and producer threads are
            # running can leave locks held in the child.
            return concurrent.futures.ProcessPoolExecutor(
                max_workers=dataset.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(dataset,))
    return concurrent.futures.ThreadPoolExecutor(max_workers=dataset.workers, thread_name_prefix="steepest-data")


def _dataset_batches(dataset: PyDataset, indices: Sequence[int]) -> Iterator[Any]:
    """dataset[i] for i in indices, in that order; with several workers read ahead on
    a pool, at most max_queue_size batches in flight."""
    if dataset.workers <= 1 and not dataset.use_multiprocessing:
        for i in indices:
            yield dataset[i]
        return
    pool = _executor(dataset)
    processes = isinstance(pool, concurrent.futures.ProcessPoolExecutor)
    read: Callable[[int], Any] = _worker_item if processes else dataset.__getitem__
    pending: collections.deque = collections.deque()
    ahead = iter(indices)
    try:
        for i in itertools.islice(ahead, max(dataset.max_queue_size, dataset.workers)):
            pending.append(pool.submit(read, i))
        while pending:
            batch = pending.popleft().result()
            for i in itertools.islice(ahead, 1):
                pending.append(pool.submit(read, i))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------ feeding the C++ loop

class _Feed:
    """One producer thread that prepares raw batches and puts them in a BatchQueue.
    An exception in the producer is kept in ``error`` and fails the queue: the batch
    loop then stops and the caller raises it."""

    def __init__(self, batches: Iterator[Any], prepare: Callable[[int, Any], Prepared], capacity: int,
                 owned: bool) -> None:
        self.queue = _core.model.BatchQueue(capacity)
        self.error: Optional[BaseException] = None
        self._batches, self._prepare, self._owned = batches, prepare, owned
        self._index = 0  # counts on across the epochs of a persistent stream
        self._thread = threading.Thread(target=self._run, name="steepest-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in self._batches:
                x, y, w = self._prepare(self._index, raw)
                self._index += 1
                if not self.queue.put(x, y, w):
                    return
            self.queue.finish()
        except BaseException as e:  # noqa: BLE001 - handed to the caller of fit
            self.error = e
            self.queue.fail()
        finally:
            # Our own generators (PyDataset passes) shut their pools down; a user's
            # generator is left as it is, to continue where it stopped.
            if self._owned:
                close = getattr(self._batches, "close", None)
                if close is not None:
                    close()

    def close(self) -> None:
        """Stops the producer (blocked puts return at once) and waits for it."""
        self.queue.close()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class Stream:
    """fit/evaluate/predict's view of a streamed input: the batches of each pass over
    it, fed to the C++ loop. An iterator (a generator) is one stream that later epochs
    continue; an iterable and a PyDataset start again every pass (a PyDataset in the
    shuffled index order when asked)."""

    def __init__(self, op: str, data: Any, steps: int) -> None:
        self.op = op
        self.dataset = data if isinstance(data, PyDataset) else None
        self._data = data
        self._iterator: Optional[Iterator[Any]] = None
        if self.dataset is None:
            if not hasattr(data, "__iter__"):
                raise TypeError(f"[{op}] x must be an array, a PyDataset or an iterable of batches, "
                                f"got {type(data).__name__}")
            if iter(data) is data:
                self._iterator = data
        elif len(self.dataset) < 1:
            raise ValueError(f"[{op}] the PyDataset has no batches (len() is {len(self.dataset)})")
        # Batches per pass; 0: until the input runs out.
        self.steps = steps or (len(self.dataset) if self.dataset is not None else 0)
        self._feed: Optional[_Feed] = None
        self._pending_first: Optional[Any] = None

    @property
    def capacity(self) -> int:
        return self.dataset.max_queue_size if self.dataset is not None else 10

    def _raw_batches(self, order_seed: Optional[Sequence[int]]) -> Tuple[Iterator[Any], bool]:
        """The raw batches of a pass, and whether they are ours to close."""
        if self.dataset is not None:
            count = len(self.dataset)
            indices = np.arange(count) if order_seed is None else np.random.default_rng(order_seed).permutation(count)
            if self.steps:
                indices = indices[: self.steps]
            return _dataset_batches(self.dataset, [int(i) for i in indices]), True
        if self._iterator is not None:
            if self._pending_first is not None:
                first, self._pending_first = self._pending_first, None
                return itertools.chain([first], self._iterator), False
            return self._iterator, False
        return iter(self._data), False

    def peek(self) -> Any:
        """A first batch, read here to build the model from its shape before the loop
        starts. An iterator's pass then starts with it; a restartable input reads it
        again."""
        try:
            if self.dataset is not None:
                return self.dataset[0]
            if self._iterator is None:
                return next(iter(self._data))
            if self._pending_first is None:
                self._pending_first = next(self._iterator)
            return self._pending_first
        except StopIteration:
            raise ValueError(f"[{self.op}] the input gave no batches") from None

    def start(self, prepare: Callable[[int, Any], Prepared], order_seed: Optional[Sequence[int]] = None) -> Any:
        """The BatchQueue of the next pass's batches (a persistent iterator's one queue)."""
        if self._iterator is not None and self._feed is not None:
            return self._feed.queue
        self.close()
        batches, owned = self._raw_batches(order_seed)
        self._feed = _Feed(batches, prepare, self.capacity, owned)
        return self._feed.queue

    def end_pass(self) -> None:
        """After a pass: a restartable input's producer stops; a PyDataset gets on_epoch_end."""
        if self._iterator is None:
            self.close()
        if self.dataset is not None:
            self.dataset.on_epoch_end()

    def raise_error(self) -> None:
        """Raises the producer's exception, if it had one."""
        if self._feed is not None:
            self._feed.raise_error()

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None

