"""The fast paths added for speed and memory give the same results as the plain ones.

* Conv2d's three algorithms (pointwise GEMM, im2col, shift) agree with each other and with the loop oracle;
* the memory-efficient DenseNet (recomputes BN-ReLU in backward, one shared workspace per block) is
  bit-identical to the default one, and updates the running statistics once;
* the dense block's shared batch statistics equal what each BatchNorm would compute itself;
* no_grad() keeps nothing for backward;
* float32 BatchNorm backward stays accurate for inputs with a large mean;
* the `out=` workspaces (BatchNorm backward in place into its upstream gradient, Conv2d backward into a given
  array) give the same results and reject arrays of the wrong shape, dtype or layout.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpy_densenet import DenseNet, gradcheck, fast, nn
from numpy_densenet.fast.norm import channel_statistics
from reference_loops import conv2d_loop


class ForcedConv(fast.Conv2d):
    """Conv2d with its algorithm chosen by the test rather than by the geometry."""

    def __init__(self, algorithm, *args, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "forced", algorithm)

    @property
    def algorithm(self):
        return self.forced


@given(data=st.data())
def test_shift_and_im2col_algorithms_agree(data):
    C = data.draw(st.integers(2, 6), label="C")
    O = data.draw(st.integers(1, 5), label="O")
    k = data.draw(st.integers(1, 3), label="k")
    d = data.draw(st.integers(1, 2), label="dilation")
    p = data.draw(st.integers(0, 2), label="padding")
    H = data.draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 7), label="H")
    W = data.draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 7), label="W")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((2, C, H, W))
    dout = None
    results = {}
    for algorithm in ("shift", "im2col"):
        conv = ForcedConv(algorithm, C, O, k, padding=p, dilation=d, dtype=np.float64, generator=np.random.default_rng(0))
        y = conv(x)
        dout = rng.standard_normal(y.shape) if dout is None else dout
        dx = conv.backward(dout)
        results[algorithm] = (y, dx, conv.weight.grad.copy(), conv.bias.grad.copy())
    np.testing.assert_allclose(results["shift"][0], conv2d_loop(x, conv.weight.data, conv.bias.data, 1, p, d),
                               rtol=1e-12, atol=1e-12)
    for a, b in zip(results["shift"], results["im2col"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C, O, kernel, padding, dilation, N, H, W", [
    (6, 3, 3, 1, 1, 3, 5, 7),            # DenseNet's 3x3: several images, so reads that wrap cross images too
    (6, 3, 3, 2, 2, 2, 6, 5),            # dilated
    (5, 2, 5, 2, 1, 2, 4, 3),            # kernel larger than the image: some offsets only read padding
    (4, 2, (3, 1), (1, 0), 1, 2, 4, 4),  # non-square kernel
    (4, 3, (1, 5), (0, 2), 1, 3, 1, 2),  # one-row images
    (3, 2, 3, 1, 1, 2, 1, 2),            # 1x2 images: the offsets one row up or down read only padding
    (3, 2, 3, 1, 1, 1, 1, 1),            # one pixel: only the centre offset reaches the output
])
@pytest.mark.parametrize("threads, chunk_elements", [(1, 1 << 30), (2, 1 << 30), (2, 1)])
def test_shift_algorithm_for_same_size_outputs_uses_flat_shifts(C, O, kernel, padding, dilation, N, H, W, threads,
                                                                 chunk_elements, monkeypatch):
    """Output as large as the input: the shift algorithm adds each offset's contribution as one slice over
    the flattened images (Conv2d._flat_shifts), zeroing what would be read across a row's or image's edge.
    Checked against the loop oracle and the im2col algorithm, forward and backward, in chunks of images too."""
    from numpy_densenet.fast import conv as conv_module
    before = fast.get_num_threads()
    fast.set_num_threads(threads)
    monkeypatch.setattr(conv_module, "SHIFT_CHUNK_ELEMENTS", chunk_elements)   # 1: one image per chunk (views)
    used = []
    flat_shifts = conv_module.Conv2d._flat_shifts
    monkeypatch.setattr(conv_module.Conv2d, "_flat_shifts", lambda self, h, w: used.append((h, w)) or
                        flat_shifts(self, h, w))
    try:
        rng = np.random.default_rng(C * H + W)
        x = rng.standard_normal((N, C, H, W))
        results = {}
        for algorithm in ("shift", "im2col"):
            conv = ForcedConv(algorithm, C, O, kernel, padding=padding, dilation=dilation, dtype=np.float64,
                              generator=np.random.default_rng(0))
            y = conv(x)
            assert y.shape == (N, O, H, W)
            dout = np.random.default_rng(1).standard_normal(y.shape)
            results[algorithm] = (y, conv.backward(dout), conv.weight.grad.copy(), conv.bias.grad.copy())
            if algorithm == "shift":
                chunks = len(conv._image_chunks(N, H, W))
                assert chunks == (N if chunk_elements == 1 and threads > 1 else 1)
                assert used.count((H, W)) == 2 * chunks             # forward and backward, each chunk
    finally:
        fast.set_num_threads(before)
    np.testing.assert_allclose(results["shift"][0], conv2d_loop(x, conv.weight.data, conv.bias.data, 1, padding,
                                                                dilation), rtol=1e-12, atol=1e-12)
    for a, b in zip(results["shift"], results["im2col"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_algorithm_choice_follows_the_geometry():
    assert fast.Conv2d(8, 4, 1).algorithm == "pointwise"
    assert fast.Conv2d(48, 12, 3, padding=1).algorithm == "shift"          # DenseNet-BC's 3x3 conv
    assert fast.Conv2d(3, 24, 3, padding=1).algorithm == "im2col"          # more outputs than inputs
    assert fast.Conv2d(48, 12, 3, stride=2, padding=1).algorithm == "im2col"
    assert fast.Conv2d(8, 4, 1, stride=2).algorithm == "im2col"


def test_shift_algorithm_passes_gradcheck_with_dilation_and_padding():
    conv = fast.Conv2d(5, 3, (2, 3), padding=(1, 2), dilation=(2, 1), dtype=np.float64,
                     generator=np.random.default_rng(1))
    assert conv.algorithm == "shift"
    assert gradcheck(conv, np.random.default_rng(2).standard_normal((2, 5, 6, 5))).passed


def _pair(dtype, drop_rate=0.0, bn_size=2):
    kwargs = dict(growth_rate=4, block_config=(3, 2), num_init_features=6, bn_size=bn_size, num_classes=3,
                  stem="cifar", drop_rate=drop_rate, dtype=dtype, seed=0)
    return DenseNet(**kwargs, memory_efficient=False), DenseNet(**kwargs, memory_efficient=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("drop_rate, bn_size", [(0.0, 2), (0.2, 2), (0.0, None)])
def test_memory_efficient_model_is_bit_identical(dtype, train, drop_rate, bn_size):
    plain, efficient = _pair(dtype, drop_rate, bn_size)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 6, 6)).astype(dtype)
    for step in range(2):                                   # two steps: running statistics evolve identically
        for model in (plain, efficient):
            model.train(train)
            model.zero_grad()
        y1, y2 = plain(x), efficient(x)
        g = rng.standard_normal(y1.shape).astype(dtype)
        d1, d2 = plain.backward(g), efficient.backward(g)
        assert np.array_equal(y1, y2) and np.array_equal(d1, d2)
        assert d2.dtype == dtype
        grads1 = dict((n, p.grad) for n, p in plain.named_parameters())
        grads2 = dict((n, p.grad) for n, p in efficient.named_parameters())
        assert grads1.keys() == grads2.keys() and len(grads2) == len(list(efficient.parameters()))
        for name in grads1:
            assert np.array_equal(grads1[name], grads2[name]), name
            assert np.abs(grads2[name]).sum() > 0, f"{name} received no gradient"
        for (n1, b1), (n2, b2) in zip(plain.state_dict().items(), efficient.state_dict().items()):
            assert n1 == n2 and np.array_equal(b1, b2), n1
    tracked = efficient.features.denseblock1.denselayer1.norm1.num_batches_tracked
    assert int(tracked) == (2 if train else 0)             # recomputing BN in backward does not count again


def test_memory_efficient_model_passes_gradcheck():
    _, efficient = _pair(np.float64, drop_rate=0.2)
    x = np.random.default_rng(3).standard_normal((3, 3, 6, 6))
    assert gradcheck(efficient, x, mode="sampled").passed
    assert gradcheck(efficient, x, mode="directional").passed


def test_shared_block_statistics_equal_each_batchnorms_own():
    model, _ = _pair(np.float64)
    block = model.features.denseblock1
    x0 = np.random.default_rng(4).standard_normal((6, 5, 4, 4))           # channel-major (C, N, H, W)
    seen = []
    for layer in block.layers():
        original = layer.norm1.forward_cnhw

        def spy(x, stats=None, update_stats=True, out=None, original=original):
            seen.append((x.copy(), stats))
            return original(x, stats, update_stats, out)

        object.__setattr__(layer.norm1, "forward_cnhw", spy)
    block.forward_cnhw(x0)
    assert len(seen) == block.num_layers
    for x, (mean, var, count) in seen:
        assert count == x[0].size                                        # N*H*W: the batch is this process's
        own_mean, own_var = channel_statistics(x)
        np.testing.assert_allclose(mean, own_mean, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(var, own_var, rtol=1e-13, atol=1e-15)


def test_no_grad_keeps_nothing_and_backward_says_why():
    model, _ = _pair(np.float32)
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)
    model.eval()
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        y = model(x)
    assert nn.is_grad_enabled()
    assert np.array_equal(y, model(x))                     # same values as a normal forward ...
    with nn.no_grad():
        model(x)
    conv = model.features.denseblock1.denselayer1.conv1
    assert isinstance(conv._cache, str)                    # ... but nothing kept for backward
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(y))


def test_float32_batchnorm_backward_is_accurate_for_a_large_mean():
    rng = np.random.default_rng(6)
    x = (1000.0 + rng.standard_normal((8, 3, 5, 5))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = {}
    for dtype in (np.float32, np.float64):
        bn = fast.BatchNorm2d(3, dtype=dtype)
        bn(x.astype(dtype))
        dx = bn.backward(dy.astype(dtype))
        results[dtype] = (dx, bn.weight.grad.copy())
    for a, b in zip(results[np.float32], results[np.float64]):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_backward_in_place_into_its_upstream_gradient(relu):
    """``out=dout``: the dense layer computes the input gradient in the array conv1's backward wrote."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 3, 4, 4)) * 2 + 1                       # channel-major (C, N, H, W)
    dy = rng.standard_normal(x.shape)
    layers = [(fast.BatchNormReLU2d if relu else fast.BatchNorm2d)(5, dtype=np.float64) for _ in range(2)]
    expected = (layers[0].forward_cnhw(x), layers[0].backward_cnhw(dy))
    buffer = dy.copy()
    layers[1].forward_cnhw(x)
    got = layers[1].backward_cnhw(buffer, out=buffer)
    assert np.shares_memory(got, buffer)
    np.testing.assert_array_equal(got, expected[1])
    np.testing.assert_array_equal(layers[1].weight.grad, layers[0].weight.grad)


def test_out_arguments_are_checked():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 2, 3, 3))                               # channel-major
    bn = fast.BatchNorm2d(4, dtype=np.float64)
    with pytest.raises(ValueError, match="BatchNorm2d: out must be a C-contiguous array of the input's shape"):
        bn.forward_cnhw(x, out=np.empty((4, 2, 3, 6))[..., ::2])
    bn.forward_cnhw(x)
    with pytest.raises(ValueError, match=r"BatchNorm2d.backward: out must be a C-contiguous .* got \(4, 2, 3\)"):
        bn.backward_cnhw(np.ones_like(x), out=np.empty((4, 2, 3)))
    conv = fast.Conv2d(4, 3, 1, bias=False, dtype=np.float64)
    conv.forward_cnhw(x)
    with pytest.raises(ValueError, match="Conv2d.backward: out must be a C-contiguous array"):
        conv.backward_cnhw(np.ones((3, 2, 3, 3)), out=np.empty((4, 2, 3, 3), dtype=np.float32))
    for algorithm_conv in (fast.Conv2d(4, 3, 1, bias=False, dtype=np.float64),              # pointwise
                           fast.Conv2d(4, 2, 3, padding=1, bias=False, dtype=np.float64),   # shift
                           fast.Conv2d(4, 5, 3, stride=2, padding=1, dtype=np.float64)):    # im2col
        y = algorithm_conv.forward_cnhw(x)
        d = rng.standard_normal(y.shape)
        plain = algorithm_conv.backward_cnhw(d)
        algorithm_conv.forward_cnhw(x)
        out = np.empty_like(x)
        assert algorithm_conv.backward_cnhw(d, out=out) is out
        np.testing.assert_allclose(out, plain, rtol=1e-13, atol=1e-13)


def test_rejected_out_arguments_change_nothing():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 2, 3, 3))                               # channel-major
    bn = fast.BatchNorm2d(4, dtype=np.float64)
    with pytest.raises(ValueError, match="BatchNorm2d: out must not overlap the input"):
        bn.forward_cnhw(x, out=x)
    assert int(bn.num_batches_tracked) == 0                             # running statistics untouched
    conv = fast.Conv2d(4, 3, 1, dtype=np.float64)                         # with a bias
    conv.forward_cnhw(x)
    with pytest.raises(ValueError, match="Conv2d.backward: out must be"):
        conv.backward_cnhw(np.ones((3, 2, 3, 3)), out=np.empty((4, 2, 3, 3), dtype=np.float32))
    assert not conv.bias.grad.any() and not conv.weight.grad.any()      # no gradient was added


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 5), ((1 << 16) + 5,), (2, 1 << 16, 1)])    # within / across pieces
@pytest.mark.parametrize("layout", ["contiguous", "in place", "strided"])
def test_relu_into_equals_maximum_with_zero(dtype, shape, layout):
    """ReLU (and BatchNormReLU2d) compare contiguous arrays with a block of zeros, piece by piece, instead of
    the scalar 0 (faster in NumPy): same values, NaN kept, every piece written."""
    from numpy_densenet.fast.activation import relu_into
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::97] = np.nan
    x.reshape(-1)[1::89] = -0.0
    expected = np.maximum(x, 0)
    if layout == "strided":
        big = np.full(shape + (2,), 5.0, dtype=dtype)
        big[..., 0] = x
        x, out = big[..., 0], np.full(shape, 7.0, dtype=dtype)
    elif layout == "in place":
        out = x
    else:
        out = np.full(shape, 7.0, dtype=dtype)
    assert relu_into(x, out) is out
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == dtype
