"""The fast tier's reuse of memory between train steps changes no result and never overwrites a live array.

* :class:`~numpy_densenet.fast.reuse.ReusedArrays` hands an array out again only when nothing else refers to it
  (a view, a cache or a caller's variable all count), keeps nothing inside ``no_grad()``, and copies of a layer
  start with none;
* a DenseNet run through any sequence of train steps, forwards without backward, ``no_grad`` forwards and batch
  sizes gives bit for bit the results of one that allocates everything afresh, and outputs a caller keeps
  never change; the memory it keeps does not grow from step to step;
* the in-place paths the reuse relies on (BatchNorm-ReLU finding its mask from x, Conv2d's input gradient
  written over its input, a dense block accumulating into its upstream gradient) equal the paths they replace.
"""
import copy
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpy_densenet import DenseNet, fast, nn
from numpy_densenet.fast.reuse import ReusedArrays, kept_nbytes, release_memory


@pytest.fixture(autouse=True)
def restore_threads():
    before = fast.get_num_threads()
    yield
    fast.set_num_threads(before)


def test_an_array_is_handed_out_again_only_when_nothing_else_holds_it():
    kept = ReusedArrays()
    a = kept.empty("x", (3, 4), np.float32)
    assert kept.empty("x", (3, 4), np.float32) is not a             # a is held here
    a = kept.empty("x", (3, 4), np.float32)
    view = a[1:]
    del a
    b = kept.empty("x", (3, 4), np.float32)
    assert not np.shares_memory(b, view)                             # a view holds its base
    pointer = b.ctypes.data
    del b, view
    assert kept.empty("x", (3, 4), np.float32).ctypes.data == pointer   # free: the same memory again
    assert kept.empty("x", (3, 5), np.float32).shape == (3, 5)           # another shape: a new array
    assert kept.empty("x", (3, 5), np.float64).dtype == np.float64


def test_nothing_is_kept_inside_no_grad_and_copies_start_empty():
    kept = ReusedArrays()
    with nn.no_grad():
        kept.empty("x", (1000,), np.float64)
    assert kept.nbytes == 0
    kept.empty("x", (1000,), np.float64)
    assert kept.nbytes == 8000
    assert copy.deepcopy(kept).nbytes == 0 and pickle.loads(pickle.dumps(kept)).nbytes == 0
    kept.clear()
    assert kept.nbytes == 0


def tiny(**overrides):
    cfg = dict(growth_rate=4, block_config=(3, 2), num_init_features=6, bn_size=2, num_classes=3, stem="cifar",
               dtype=np.float64, seed=0)
    cfg.update(overrides)
    return DenseNet(**cfg)


OPS = st.lists(st.tuples(st.sampled_from(["step", "step", "forward", "stages", "no_grad", "eval_step"]),
                         st.sampled_from([2, 3])), min_size=2, max_size=7)


@settings(max_examples=15, deadline=None)
@given(ops=OPS, dtype=st.sampled_from([np.float32, np.float64]), threads=st.sampled_from([1, 2]),
       memory_efficient=st.booleans(), drop_rate=st.sampled_from([0.0, 0.2]))
def test_any_sequence_of_steps_equals_fresh_allocation(ops, dtype, threads, memory_efficient, drop_rate):
    """Twin models, one releasing its kept arrays after every call (so it allocates everything afresh, as before
    the reuse), go through the same calls: every result is bit-identical, and no output kept by the caller
    (forward_stages' views of the block buffers among them) changes afterwards."""
    fast.set_num_threads(threads)
    twins = [tiny(dtype=dtype, memory_efficient=memory_efficient, drop_rate=drop_rate) for _ in range(2)]
    rng = np.random.default_rng(0)
    held = []                                                      # (output, its values when returned)
    for op, batch in ops:
        x = rng.standard_normal((batch, 3, 5, 5)).astype(dtype)
        results = []
        for i, model in enumerate(twins):
            model.train(op != "eval_step")
            if op == "no_grad":
                with nn.no_grad():
                    out = [model(x)]
            elif op == "stages":                                   # views of the block buffers, kept by us
                out = [output for _, _, output in model.forward_stages(x)]
            else:
                out = [model(x)]
                if op in ("step", "eval_step"):
                    out.append(model.backward(np.ones_like(out[0])))
                    out += [p.grad.copy() for p in model.parameters()]
                    model.zero_grad()
            out += [b.copy() for _, b in model.named_buffers()]
            if i == 1:
                release_memory(model)
            results.append(out)
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b, err_msg=f"{op} batch {batch}")
        held += [(a, a.copy()) for a in results[0]]
        for a, values in held:
            np.testing.assert_array_equal(a, values, err_msg="an array returned earlier changed")


def test_kept_memory_does_not_grow_and_is_let_go_in_eval_mode():
    model = tiny()
    x2, x3 = (np.random.default_rng(1).standard_normal((n, 3, 6, 6)) for n in (2, 3))

    def step(x):
        model.backward(np.ones_like(model(x)))

    step(x3)
    after_one = kept_nbytes(model)
    assert after_one > 0
    for x in (x3, x2, x3, x3, x2, x3):
        step(x)
        assert kept_nbytes(model) <= after_one                        # one array per use, of the last shape
    model(x3)                                                          # forward twice before backward
    step(x3)
    assert kept_nbytes(model) == after_one
    model.eval()
    assert kept_nbytes(model) == 0                                     # inference keeps nothing


def test_a_free_block_buffer_is_reused_and_a_held_one_is_not():
    block = fast.DenseBlock(3, 4, 2, bn_size=2, dtype=np.float64, rng=np.random.default_rng(0),
                            memory_efficient=True)
    x0 = np.random.default_rng(1).standard_normal((4, 2, 3, 3))       # channel-major
    y = block.forward_cnhw(x0)
    expected = y.copy()
    pointer = y.ctypes.data
    block.backward_cnhw(np.ones_like(y))
    del y
    y = block.forward_cnhw(x0)
    assert y.ctypes.data == pointer                                     # the same memory, step after step
    block.backward_cnhw(np.ones_like(y))
    z = block.forward_cnhw(2 * x0)                                      # y is still held: a new buffer
    assert not np.shares_memory(y, z)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_relu_mask_found_again_from_x_is_the_same(dtype, train):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 3, 4, 4)) * 2 + 0.5).astype(dtype)     # channel-major, both signs after BN
    dy = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for keep_output in (True, False):
        bn = fast.BatchNormReLU2d(5, dtype=dtype)
        bn.weight.data[:] = rng.standard_normal(5)
        bn.train(train)
        y = bn.forward_cnhw(x, keep_output=keep_output).copy()
        d = dy.copy()
        results.append((y, bn.backward_cnhw(d, out=d), bn.weight.grad.copy(), bn.bias.grad.copy()))
        rng = np.random.default_rng(2)
        rng.standard_normal(x.shape), rng.standard_normal(x.shape)      # same weights for the second one
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("conv", [dict(out_channels=3, kernel_size=1),                       # pointwise
                                  dict(out_channels=2, kernel_size=3, padding=1),            # shift
                                  dict(out_channels=5, kernel_size=3, stride=2, padding=1)],  # im2col
                         ids=["pointwise", "shift", "im2col"])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_input_gradient_written_over_its_input_is_the_same(conv, threads):
    fast.set_num_threads(threads)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 7, 7))                               # channel-major, several images
    layers = [fast.Conv2d(4, **conv, dtype=np.float64, generator=np.random.default_rng(0)) for _ in range(2)]
    y = layers[0].forward_cnhw(x)
    d = rng.standard_normal(y.shape)
    expected = layers[0].backward_cnhw(d)
    own = x.copy()
    layers[1].forward_cnhw(own)
    assert layers[1].backward_cnhw(d, out=own) is own
    np.testing.assert_array_equal(own, expected)
    np.testing.assert_array_equal(layers[1].weight.grad, layers[0].weight.grad)


def test_dense_block_accumulating_into_its_upstream_gradient_is_the_same():
    blocks = [fast.DenseBlock(3, 4, 2, bn_size=2, dtype=np.float64, rng=np.random.default_rng(0),
                              memory_efficient=True) for _ in range(4)]
    x0 = np.random.default_rng(4).standard_normal((4, 2, 3, 3))
    dy = np.random.default_rng(5).standard_normal((10, 2, 3, 3))
    for block in blocks:
        block.forward_cnhw(x0)
    expected = blocks[0].backward_cnhw(dy)
    own = dy.copy()
    got = blocks[1].backward_cnhw(own, out=own)
    assert np.shares_memory(got, own)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match=r"DenseBlock.backward: out must be a C-contiguous array of shape"):
        blocks[2].backward_cnhw(dy, out=np.empty((10, 2, 3, 3), dtype=np.float32))
    other = np.full_like(dy, np.nan)                  # a caller's own array, not dout: dout is copied into it
    got = blocks[3].backward_cnhw(dy, out=other)
    assert np.shares_memory(got, other)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("conv", [dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),         # CIFAR stem
                                  dict(in_channels=2, out_channels=4, kernel_size=7, stride=2, padding=3)],  # ImageNet's
                         ids=["3x3", "7x7-stride2"])
def test_im2col_in_chunks_of_images_equals_one_patch_matrix(conv, threads, monkeypatch):
    """The im2col algorithm builds the patch matrix a few images at a time (never for the whole batch): in
    chunks of one image it gives the same output and gradients to rounding (the weight gradient is summed over
    the chunks in a fixed order; OpenBLAS may order a product's sums differently for fewer columns)."""
    from numpy_densenet.fast import conv as conv_module
    fast.set_num_threads(threads)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, conv["in_channels"], 9, 8))
    results = []
    for chunk_elements in (1 << 30, 1):                                  # one chunk; one image per chunk
        monkeypatch.setattr(conv_module, "IM2COL_CHUNK_ELEMENTS", chunk_elements)
        layer = fast.Conv2d(**conv, dtype=np.float64, generator=np.random.default_rng(0))
        assert layer.algorithm == "im2col"
        y = layer(x)
        d = np.random.default_rng(7).standard_normal(y.shape)
        results.append((y, layer.backward(d), layer.weight.grad.copy(), layer.bias.grad.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inplace_relu_keeps_where_its_output_is_positive_not_the_output(dtype, contiguous):
    import weakref
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    x[rng.random(x.shape) < 0.2] = 0                                    # exact zeros: the gradient there is 0
    dy = rng.standard_normal(x.shape).astype(dtype)
    plain, quick = nn.ReLU(inplace=True), fast.ReLU(inplace=True)
    view = (lambda a: a.transpose(1, 0, 2, 3)) if not contiguous else (lambda a: a)
    expected = plain(view(x.copy())).copy()
    own = view(x.copy())
    alive = weakref.ref(own.base if own.base is not None else own)
    np.testing.assert_array_equal(quick(own), expected)
    del own                                                             # the caller lets its output go ...
    assert alive() is None                                              # ... and the layer does not hold it
    np.testing.assert_array_equal(quick.backward(view(dy)), plain.backward(view(dy)))
