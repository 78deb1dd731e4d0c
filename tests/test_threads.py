"""numpy_densenet's own threads (numpy_densenet.fast.threads) change how work is shared out, not the results.

* matmul split by columns or by the inner dimension equals a @ b, and leaves OpenBLAS's thread count as it was;
* parallel_for keeps the order of results, raises a piece's exception, and runs nested calls serially;
* Conv2d (all three algorithms), BatchNorm2d / BatchNormReLU2d, MaxPool2d and a whole DenseNet train step give the same
  results with 1, 2 and 3 threads (element-wise passes bit for bit; products to rounding), and the same
  results twice with the same thread count; element-wise passes done in blocks of channels equal one pass
  over all channels, and the shift convolution's chunks of images equal one chunk;
* inference (eval mode in no_grad) runs the whole network on pieces of the batch in parallel, and its logits
  equal a batch forward's; the pieces are used only for inference with more than one thread;
* set_num_threads rejects what is not a positive int.
"""
import numpy as np
import pytest

from numpy_densenet import densenet_bc, fast, nn
from numpy_densenet.fast import conv, norm, pooling, threads


@pytest.fixture
def restore_threads():
    before = fast.get_num_threads()
    yield
    fast.set_num_threads(before)


def test_matmul_split_by_columns_and_by_inner_dimension_equals_the_product(restore_threads):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 300)), rng.standard_normal((300, 9000))
    long_k = rng.standard_normal((60, 20000))
    assert 2 * 40 * 300 * 9000 >= threads.MIN_FLOPS_TO_SPLIT and 2 * 60 * 20000 * 60 >= threads.MIN_FLOPS_TO_SPLIT
    small = rng.standard_normal((8, 8))                    # below the threshold: one thread, same result
    for n in (1, 2, 3):
        fast.set_num_threads(n)
        np.testing.assert_allclose(threads.matmul(a, b), a @ b, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(threads.matmul(b.T, a.T), b.T @ a.T, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(threads.matmul(long_k, long_k.T, split_inner=True), long_k @ long_k.T,
                                   rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(threads.matmul(small, small), small @ small)


def test_matmul_leaves_openblas_thread_count_as_it_was(restore_threads):
    blas = threads._blas()
    fast.set_num_threads(2)
    a = np.ones((64, 64))
    b = np.ones((64, 8192))
    if blas:                                        # numpy's OpenBLAS was found: its setting is restored
        get, set_ = blas
        before = get()
        set_(3)
        try:
            threads.matmul(a, b)
            assert get() == 3
        finally:
            set_(before)
    else:                                           # not found: one thread by default, nothing to restore
        assert np.array_equal(threads.matmul(a, b), a @ b)


def test_parallel_for_keeps_order_raises_and_runs_nested_calls_serially(restore_threads):
    fast.set_num_threads(3)
    assert threads.parallel_for(lambda i: i * i, range(50)) == [i * i for i in range(50)]
    nested = threads.parallel_for(lambda i: threads.parallel_for(lambda j: (i, j), range(3)), range(4))
    assert nested == [[(i, j) for j in range(3)] for i in range(4)]

    def boom(i):
        if i == 7:
            raise ValueError("piece 7 failed")
        return i

    with pytest.raises(ValueError, match="piece 7 failed"):
        threads.parallel_for(boom, range(20))
    assert threads.parallel_for(lambda i: i, range(5)) == list(range(5))       # still usable afterwards


def test_add_into_contiguous_and_strided(restore_threads):
    rng = np.random.default_rng(4)
    for n in (1, 2, 3):
        fast.set_num_threads(n)
        for a, b in [(rng.standard_normal((40, 3000)), rng.standard_normal((40, 3000))),
                     (rng.standard_normal((3000, 40)).T, rng.standard_normal((40, 3000)))]:   # a not contiguous
            expected = a + b
            assert threads.add_into(a, b) is a
            np.testing.assert_array_equal(a, expected)


def test_split_covers_the_range_in_order():
    for n, parts, multiple in [(10, 3, 1), (9000, 2, 16), (5, 8, 1), (1, 2, 16)]:
        pieces = threads.split(n, parts, multiple)
        assert pieces[0].start == 0 and pieces[-1].stop == n and len(pieces) <= parts
        assert all(p.stop == q.start for p, q in zip(pieces, pieces[1:]))


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_values(n, restore_threads):
    with pytest.raises(ValueError, match=r"set_num_threads: n must be a positive int, got"):
        fast.set_num_threads(n)


def _layer_results(layer, x, dy):
    y = layer(x)
    dx = layer.backward(dy)
    grads = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    return [y, dx] + grads


@pytest.mark.parametrize("case", ["conv1x1", "conv3x3_shift", "conv3x3_stride2_im2col", "bn", "bnrelu", "maxpool",
                                  "relu"])
def test_layers_agree_across_thread_counts(case, restore_threads):
    """Inputs large enough that every split path is taken (several channel blocks, long products)."""
    rng = np.random.default_rng(1)
    C = 48
    x = rng.standard_normal((16, C, 32, 32))                # BatchNorm: 4 blocks of channels
    fast.set_num_threads(2)
    assert len(norm.channel_blocks(C, 16 * 32 * 32)) == 4 and 2 * 64 * C * 16 * 32 * 32 >= threads.MIN_FLOPS_TO_SPLIT
    layer, out_shape = {
        "conv1x1": (fast.Conv2d(C, 64, 1, bias=False, dtype=np.float64, generator=rng), (16, 64, 32, 32)),
        "conv3x3_shift": (fast.Conv2d(C, 6, 3, padding=1, bias=False, dtype=np.float64, generator=rng),
                          (16, 6, 32, 32)),
        "conv3x3_stride2_im2col": (fast.Conv2d(C, 12, 3, stride=2, padding=1, dtype=np.float64, generator=rng),
                                   (16, 12, 16, 16)),
        "bn": (fast.BatchNorm2d(C, dtype=np.float64), (16, C, 32, 32)),
        "bnrelu": (fast.BatchNormReLU2d(C, dtype=np.float64), (16, C, 32, 32)),
        "maxpool": (fast.MaxPool2d(3, stride=2, padding=1), (16, C, 32, 32)),
        "relu": (fast.ReLU(), (16, C, 32, 32)),
    }[case]
    if case == "maxpool":                                  # 6 blocks of channels need 64x64 images
        x = rng.standard_normal((16, C, 64, 64))
    dy = rng.standard_normal(out_shape)
    results = {}
    for n in (1, 2, 3, 2):
        fast.set_num_threads(n)
        got = _layer_results(layer, x, dy)
        if n in results:                                   # the same thread count again: bit-identical
            for r, g in zip(results[n], got):
                np.testing.assert_array_equal(r, g)
        results[n] = got
    exact = case in ("bn", "bnrelu", "maxpool", "relu")    # element-wise passes: the same operations per block
    if exact:                                              # and the blocks together equal one block of all
        fast.set_num_threads(1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(norm, "channel_blocks", lambda C, M, elements=0: [slice(0, C)])
            mp.setattr(pooling, "channel_blocks", lambda C, M, elements=0: [slice(0, C)])
            whole = _layer_results(layer, x, dy)
        for r, g in zip(whole, results[1]):
            np.testing.assert_array_equal(r, g)
    if case == "conv3x3_shift":                            # chunks of images together equal one chunk of all
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(conv, "SHIFT_CHUNK_ELEMENTS", 1 << 60)
            assert len(layer._image_chunks(16, 32, 32)) == 1
            whole = _layer_results(layer, x, dy)
        assert len(layer._image_chunks(16, 32, 32)) == 3
        for r, g in zip(whole, results[1]):
            np.testing.assert_allclose(r, g, rtol=1e-12, atol=1e-12)
    for n in (2, 3):
        for r, g in zip(results[1], results[n]):
            if exact:
                np.testing.assert_array_equal(r, g)
            else:
                np.testing.assert_allclose(r, g, rtol=1e-12, atol=1e-12)


def test_densenet_train_step_agrees_across_thread_counts(restore_threads):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    dlogits = rng.standard_normal((16, 10)).astype(np.float32)
    results = {}
    for n in (1, 2):
        fast.set_num_threads(n)
        model = densenet_bc(16, 12, dtype=np.float32, seed=3)
        logits = model(x)
        dx = model.backward(dlogits)
        results[n] = [logits, dx] + [p.grad for p in model.parameters()]
    for a, b in zip(results[1], results[2]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_starts_its_own_threads(restore_threads):
    """A child forked after the pool started has no worker threads; it must not wait for them forever."""
    import os
    fast.set_num_threads(2)
    threads.parallel_for(lambda i: i, range(4))                       # the parent's pool is running
    pid = os.fork()
    if pid == 0:                                                      # child: exit 0 only if the work completes
        try:
            ok = threads.parallel_for(lambda i: i * 2, range(8)) == [i * 2 for i in range(8)]
        finally:
            os._exit(0 if ok else 1)
    for _ in range(200):                                              # up to 20 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        __import__("time").sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung waiting for threads it does not have")
    assert os.WEXITSTATUS(status) == 0


def test_openblas_is_found_without_numpy_config(monkeypatch):
    """numpy < 1.26 has no numpy.__config__.CONFIG: the library is then looked for directly."""
    found = threads._find_openblas()
    monkeypatch.delattr(np.__config__, "CONFIG", raising=False)
    assert bool(threads._find_openblas()) == bool(found)


def test_threadpoolctl_and_the_ctypes_search_control_the_same_blas():
    """With threadpoolctl installed (the test extra has it) NumPy's BLAS is found through it; the hand-written
    OpenBLAS search, used without threadpoolctl, finds the same library: a setting made through one is read
    back through the other."""
    pytest.importorskip("threadpoolctl")
    via_threadpoolctl, via_ctypes = threads._find_blas_with_threadpoolctl(), threads._find_openblas()
    assert via_threadpoolctl is not None and via_ctypes is not None
    before = via_ctypes[0]()
    try:
        for n in (1, 2):
            via_threadpoolctl[1](n)
            assert via_ctypes[0]() == n
            via_ctypes[1](3 - n)
            assert via_threadpoolctl[0]() == 3 - n
    finally:
        via_ctypes[1](before)


def test_without_threadpoolctl_the_ctypes_search_is_used(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    assert threads._find_blas_with_threadpoolctl() is None
    monkeypatch.setitem(threads._state, "blas", None)
    found = threads._blas()
    assert type(found[0]).__name__ == "_FuncPtr"                      # ctypes functions, not threadpoolctl's
    assert found[0]() == threads._find_openblas()[0]()


def test_matmul_rejects_mismatched_inner_dimensions(restore_threads):
    fast.set_num_threads(2)
    for split_inner in (False, True):
        with pytest.raises(ValueError, match=r"matmul: inner dimensions differ, \(64, 4000\) @ \(4100, 9000\)"):
            threads.matmul(np.ones((64, 4000)), np.ones((4100, 9000)), split_inner=split_inner)


@pytest.mark.parametrize("n", [1, 2])
def test_an_empty_batch_goes_through_every_layer(n, restore_threads):
    fast.set_num_threads(n)
    model = densenet_bc(16, 12, dtype=np.float64, seed=0).eval()
    with nn.no_grad():
        assert model(np.zeros((0, 3, 32, 32))).shape == (0, 10)
    for conv_layer, out_channels in ((fast.Conv2d(8, 2, 3, padding=1, dtype=np.float64), 2),           # shift
                                     (fast.Conv2d(8, 4, 3, stride=2, padding=1, dtype=np.float64), 4)):  # im2col
        y = conv_layer(np.zeros((0, 8, 6, 6)))
        assert y.shape[:2] == (0, out_channels)
        assert conv_layer.backward(np.zeros_like(y)).shape == (0, 8, 6, 6)


def _eval_model_with_running_stats(dtype, seed, **kwargs):
    """A small DenseNet in eval mode whose BatchNorms have non-trivial running statistics and affine parameters."""
    from numpy_densenet import DenseNet
    model = DenseNet(dtype=dtype, seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, fast.BatchNorm2d):
            C = m.num_features
            m.running_mean[...] = rng.standard_normal(C)
            m.running_var[...] = rng.uniform(0.5, 2.0, C)
            m.weight.data[...] = rng.uniform(0.5, 1.5, C)
            m.bias.data[...] = rng.standard_normal(C) * 0.1
    return model.eval()


@pytest.mark.parametrize("dtype, n, N, kwargs", [
    (np.float64, 2, 8, dict(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=5, stem="cifar")),
    (np.float64, 3, 7, dict(growth_rate=4, block_config=(2, 1), num_init_features=8, num_classes=5)),   # imagenet stem
    (np.float32, 2, 6, dict(growth_rate=4, block_config=(3,), num_init_features=8, num_classes=3, stem="cifar",
                            memory_efficient=False)),
])
def test_inference_in_pieces_agrees_with_a_batch_forward(dtype, n, N, kwargs, restore_threads, monkeypatch):
    """Eval mode inside no_grad() runs the network on pieces of the batch in parallel (DenseNet.forward): the
    logits equal the one-batch forward's (run with gradients enabled, which never uses pieces), image by image
    in order, to rounding."""
    fast.set_num_threads(n)
    model = _eval_model_with_running_stats(dtype, seed=n, **kwargs)
    size = 16 if kwargs.get("stem") == "cifar" else 32
    x = np.random.default_rng(N).standard_normal((N, 3, size, size)).astype(dtype)
    with nn.no_grad():
        pieces = model.inference_pieces(N)
    assert pieces is not None and len(pieces) > 1                    # the piece path is the one under test
    calls = []
    pooled_features = model.pooled_features
    monkeypatch.setattr(model, "pooled_features", lambda x_: calls.append(len(x_)) or pooled_features(x_))
    with nn.no_grad():
        pieced = model(x)
    assert sorted(calls) == sorted(p.stop - p.start for p in pieces)
    batch = model(x)                                                  # grad enabled: one batch forward
    assert calls[len(pieces):] == [N]
    assert pieced.dtype == dtype and pieced.shape == batch.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(pieced, batch, rtol=tol, atol=tol)
    assert np.abs(batch).max() > 1e-3 and np.ptp(batch, axis=0).max() > 1e-3   # images differ: order is tested


def test_inference_pieces_only_for_inference_with_threads(restore_threads):
    model = densenet_bc(16, 12, dtype=np.float32, seed=0)
    fast.set_num_threads(2)
    with nn.no_grad():
        assert model.inference_pieces(64) is None                     # train mode: batch statistics
    model.eval()
    assert model.inference_pieces(64) is None                         # gradients enabled: caches for backward
    with nn.no_grad():
        assert model.inference_pieces(64) == [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)]
        assert model.inference_pieces(2) == [slice(0, 1), slice(1, 2)]
        assert model.inference_pieces(3) is None                      # 2 pieces + 1: one thread idles half the time
        assert model.inference_pieces(5) == [slice(0, 2), slice(2, 4), slice(4, 5)]
        assert model.inference_pieces(1) is None and model.inference_pieces(0) is None
        fast.set_num_threads(1)
        assert model.inference_pieces(64) is None


def test_no_pieces_when_some_layer_is_in_train_mode(restore_threads):
    """A model in eval mode with one BatchNorm back in train mode (test-time adaptation) or with dropout in
    train mode (Monte Carlo dropout) runs as one batch: one set of batch statistics and one running-statistics
    update per forward, masks drawn in order -- the same results with 1 and 2 threads, run after run."""
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)

    def adapted(n):
        fast.set_num_threads(n)
        model = densenet_bc(16, 12, dtype=np.float32, seed=0).eval()
        model.features.norm5.train()
        with nn.no_grad():
            assert model.inference_pieces(8) is None
            return model(x), model.features.norm5.running_mean.copy(), int(model.features.norm5.num_batches_tracked)

    one, two = adapted(1), adapted(2)
    np.testing.assert_allclose(one[0], two[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one[1], two[1], rtol=1e-5, atol=1e-6)
    assert one[2] == two[2] == 1

    def mc_dropout():
        fast.set_num_threads(2)
        model = _eval_model_with_running_stats(np.float32, seed=4, growth_rate=4, block_config=(2, 2),
                                               num_init_features=8, num_classes=5, stem="cifar", drop_rate=0.3)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()
        with nn.no_grad():
            assert model.inference_pieces(8) is None
            return model(x)

    np.testing.assert_array_equal(mc_dropout(), mc_dropout())
