"""Hostile and malformed files for the robustness tests (issue 15), built small and fast.

Every ``make_*`` function writes a file (or folder) under ``root`` and returns its path. ``CASES`` lists
command lines that must each end in one clean error line (exit status 2) naming the file or option; run in a
subprocess under a memory limit by ``tests/test_hostile_files.py``, which also reads the peak memory.
"""
import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import asdict

import numpy as np

# -- building blocks ---------------------------------------------------------------------------------------------


def npy_bytes(shape, dtype="<f4", fortran=False, data=b""):
    """A .npy file: a version 1.0 header declaring ``shape`` / ``dtype``, then ``data`` (maybe not enough)."""
    header = repr({"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)})
    header = header.encode("latin1")
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def write_zip(path, members, compress=zipfile.ZIP_STORED):
    """A .npz made by hand: ``members`` maps name -> bytes (or a callable writing chunks to a stream)."""
    with zipfile.ZipFile(path, "w", compression=compress, compresslevel=1 if compress else None) as z:
        for name, content in members.items():
            if callable(content):
                with z.open(name + ".npy", "w", force_zip64=True) as f:
                    content(f)
            else:
                z.writestr(name + ".npy", content)
    return str(path)


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def tiny_model_arrays(in_channels=1, num_classes=10, seed=0):
    """The arrays of a best.npz for a depth-10, k-4 DenseNet-BC, as ``train`` writes them (no training)."""
    from numpy_densenet import densenet_bc
    from numpy_densenet.io import metadata_arrays
    from numpy_densenet.training import TrainConfig
    model = densenet_bc(10, 4, num_classes=num_classes, in_channels=in_channels, seed=seed)
    cfg = TrainConfig(depth=10, growth_rate=4).resolved()
    return {**model.state_dict(), **metadata_arrays(model.config, asdict(cfg), np.full(in_channels, 0.3),
                                                    np.full(in_channels, 0.2), [str(k) for k in range(num_classes)])}


def save_arrays(path, arrays):
    np.savez(path, **arrays)
    return str(path)


def idx_bytes(magic, dims, data=b""):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width, height):
    """A tiny PNG whose header declares ``width`` x ``height`` grey pixels (its data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + png_chunk(b"IEND", b""))


def png_ztxt_bomb():
    """An 8x8 PNG with a zTXt chunk that decompresses to 64 MiB."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    raw = buf.getvalue()
    bomb = zlib.compress(b"\x00" * (64 * 2 ** 20), 9)
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + bomb)
    return raw[:33] + ztxt + raw[33:]


def zero_stream(total, chunk=2 ** 20):
    """A writer of ``total`` zero bytes in chunks (to fill a compressed member without holding it)."""
    def write(f):
        block = bytes(chunk)
        left = total
        while left > 0:
            f.write(block[:min(left, chunk)])
            left -= chunk
    return write


# -- the hostile corpus ------------------------------------------------------------------------------------------

def build_corpus(root):
    """Write every hostile file under ``root``; returns a list of (name, argv, fragments) cases.

    Each case must exit with status 2 and print one line on stderr holding every fragment.
    """
    root = str(root)
    p = lambda *names: os.path.join(root, *names)  # noqa: E731
    os.makedirs(root, exist_ok=True)
    cases = []

    weights = save_arrays(p("good_weights.npz"), tiny_model_arrays())
    grey = p("grey.npy")
    np.save(grey, np.zeros((2, 8, 8), np.uint8))

    def train_npz(name, arrays_or_path, *fragments):
        path = arrays_or_path if isinstance(arrays_or_path, str) else save_arrays(p(name + ".npz"), arrays_or_path)
        cases.append((name, ["train", "--dataset", "npz", "--data-dir", path, "--epochs", "1", "--depth", "10",
                             "--growth-rate", "4", "--out", p("out_" + name)], (path,) + fragments))

    x = np.zeros((8, 1, 8, 8), np.uint8)
    # 1. tiny files that used to exhaust memory
    train_npz("label_1e12", dict(x=x, y=np.array([0] * 7 + [10 ** 12])), "65536")
    train_npz("label_200000", dict(x=x, y=np.array([0] * 7 + [200_000])), "65536")
    os.makedirs(p("mnist_gzip_long"), exist_ok=True)
    with gzip.open(p("mnist_gzip_long", "train-images-idx3-ubyte.gz"), "wb", compresslevel=1) as f:
        f.write(idx_bytes(2051, (40, 28, 28)))
        zero_stream(256 * 2 ** 20)(f)                                    # 256 MiB of zeros, about 250 kB
    gz = p("mnist_gzip_long", "train-images-idx3-ubyte.gz")
    for name, raw in (("train-labels-idx1-ubyte", idx_bytes(2049, (40,), bytes(40))),
                      ("t10k-images-idx3-ubyte", idx_bytes(2051, (1, 28, 28), bytes(784))),
                      ("t10k-labels-idx1-ubyte", idx_bytes(2049, (1,), bytes(1)))):
        with open(p("mnist_gzip_long", name), "wb") as f:
            f.write(raw)
    cases.append(("idx_gzip_longer", ["train", "--dataset", "mnist", "--data-dir", p("mnist_gzip_long")],
                  (gz, "longer than it should be")))
    bomb = write_zip(p("zip_bomb.npz"), {"x": lambda f: (f.write(npy_bytes((256, 1, 1024, 1024), "|u1")),
                                                         zero_stream(256 * 2 ** 20)(f)),
                                         "y": npy_bytes((256,), "<i8", data=bytes(8 * 256))},
                     compress=zipfile.ZIP_DEFLATED)
    train_npz("zip_bomb_data", bomb, "zip bomb")
    wbomb = write_zip(p("zip_bomb_weights.npz"), {"classifier.weight": lambda f: (
        f.write(npy_bytes((2 ** 24, 4), "<f4")), zero_stream(2 ** 28)(f))}, compress=zipfile.ZIP_DEFLATED)
    cases.append(("zip_bomb_weights", ["predict", "--weights", wbomb, grey], (wbomb, "zip bomb")))
    for kind, compress, fragment in (("stored", zipfile.ZIP_STORED, "truncated"),
                                     ("deflated", zipfile.ZIP_DEFLATED, "zip bomb")):
        huge = write_zip(p(f"huge_header_{kind}.npz"), {"x": npy_bytes((2 ** 40,), "|u1"),
                                                        "y": npy_bytes((2 ** 40,), "<i8")}, compress=compress)
        train_npz(f"npy_header_2_40_{kind}", huge, fragment, "(1099511627776,)")
        cases.append((f"npy_header_2_40_{kind}_predict", ["predict", "--weights", huge, grey], (huge, fragment)))
        cases.append((f"npy_header_2_40_{kind}_evaluate", ["evaluate", "--weights", huge, "--model", "densenet_bc",
                                                           "--depth", "10", "--growth-rate", "4"], (huge, fragment)))
    big_png = p("big.png")
    from PIL import Image
    Image.new("L", (4000, 4000)).save(big_png, optimize=True)
    cases.append(("png_4000x4000", ["predict", "--weights", weights, big_png], (big_png, "1024x1024")))
    arrays = tiny_model_arrays()
    cfg = json.loads(str(arrays["_model_config"][()]))
    cfg["growth_rate"] = 10 ** 7
    arrays["_model_config"] = np.array(json.dumps(cfg))
    g = save_arrays(p("growth_1e7.npz"), arrays)
    cases.append(("model_config_growth_1e7", ["predict", "--weights", g, grey], (g, "growth_rate")))

    # 6. predict
    renamed = p("renamed.npy")
    with open(renamed, "wb") as f:
        f.write(npz_bytes(a=np.zeros(3)))
    cases.append(("npz_renamed_npy", ["predict", "--weights", weights, renamed], (renamed, ".npz archive")))
    small = p("declares_20000.png")
    with open(small, "wb") as f:
        f.write(png_declaring(20000, 20000))
    cases.append(("png_69_bytes_20000x20000", ["predict", "--weights", weights, small], (small, "pixels")))
    ztxt = p("ztxt_bomb.png")
    with open(ztxt, "wb") as f:
        f.write(png_ztxt_bomb())
    cases.append(("png_ztxt_bomb", ["predict", "--weights", weights, ztxt], (ztxt,)))
    os.makedirs(p("mnist_overflow"), exist_ok=True)
    names = {"train-images-idx3-ubyte": idx_bytes(2051, (2 ** 32 - 1, 2 ** 16, 2 ** 16)),
             "train-labels-idx1-ubyte": idx_bytes(2049, (4,), bytes(4)),
             "t10k-images-idx3-ubyte": idx_bytes(2051, (1, 2, 2), bytes(4)),
             "t10k-labels-idx1-ubyte": idx_bytes(2049, (1,), bytes(1))}
    for name, raw in names.items():
        with open(p("mnist_overflow", name), "wb") as f:
            f.write(raw)
    ov = p("mnist_overflow", "train-images-idx3-ubyte")
    for command in (["train"], ["evaluate", "--weights", weights], ["inspect"]):
        cases.append((f"idx_overflow_{command[0]}", command + ["--dataset", "mnist", "--data-dir", p("mnist_overflow")],
                      (ov, "65536x65536")))

    # 7. silent wrong results
    for name, change in (("nan", lambda a: a.__setitem__(0, np.nan)),
                         ("neg_var", None), ("int", None), ("complex", None)):
        arrays = tiny_model_arrays()
        key = "features.conv0.weight"
        if name == "nan":
            arrays[key] = arrays[key].copy()
            arrays[key].reshape(-1)[0] = np.nan
            fragment = "finite"
        elif name == "neg_var":
            key = "features.norm5.running_var"
            arrays[key] = -np.abs(arrays[key]) - 1
            fragment = "negative variance"
        elif name == "int":
            arrays[key] = arrays[key].astype(np.int32)
            fragment = "int32"
        else:
            arrays[key] = arrays[key].astype(np.complex64)
            fragment = "complex64"
        path = save_arrays(p(f"weights_{name}.npz"), arrays)
        cases.append((f"weights_{name}", ["predict", "--weights", path, grey], (path, key, fragment)))
    empty = p("empty.npy")
    np.save(empty, np.zeros((0, 8, 8), np.uint8))
    cases.append(("empty_npy", ["predict", "--weights", weights, empty], (empty, "no images")))
    cases.append(("momentum_2", ["train", "--momentum", "2", "--epochs", "1", "--out", p("o_m")], ("--momentum",)))
    cases.append(("out_empty", ["train", "--out", ""], ("--out",)))

    # 4. malformed metadata
    def meta_case(name, change, *fragments, command=None):
        """The malformed file through predict, evaluate and inspect (or only ``command``)."""
        arrays = tiny_model_arrays()
        change(arrays)
        path = save_arrays(p(f"meta_{name}.npz"), arrays)
        for argv in (["predict", "--weights", path, grey], ["evaluate", "--weights", path],
                     ["inspect", "--weights", path]):
            if command in (None, argv[0]):
                cases.append((f"meta_{name}_{argv[0]}", argv, (path,) + fragments))

    def set_key(k, v):
        return lambda a: a.__setitem__(k, v)

    def edit_config(**kw):
        def change(a):
            cfg = json.loads(str(a["_model_config"][()]))
            for k, v in kw.items():
                if v is KeyError:
                    del cfg[k]
                else:
                    cfg[k] = v
            a["_model_config"] = np.array(json.dumps(cfg))
        return change

    meta_case("config_not_json", set_key("_model_config", np.array("{growth")), "not valid JSON")
    meta_case("config_number", set_key("_model_config", np.array(3.0)), "_model_config")
    meta_case("config_list", set_key("_model_config", np.array("[1, 2]")), "JSON dict")
    meta_case("config_missing", edit_config(stem=KeyError), "lacks stem")
    meta_case("config_extra", edit_config(colour="red"), "colour")
    meta_case("config_bool", edit_config(growth_rate=True), "growth_rate")
    meta_case("config_neg", edit_config(num_classes=-3), "num_classes")
    meta_case("config_blocks", edit_config(block_config="abc"), "block_config")
    meta_case("config_blocks_more", edit_config(block_config=[1, 1, 1, 1]), "block")
    meta_case("config_stem", edit_config(stem="huge"), "stem")
    meta_case("config_compression", edit_config(compression=float("inf")), "compression")
    meta_case("config_classes_1e9", edit_config(num_classes=10 ** 9), "num_classes")
    meta_case("mean_shape", set_key("_mean", np.zeros(5)), "_mean")
    meta_case("mean_nan", set_key("_mean", np.array([np.nan])), "_mean")
    meta_case("std_zero", set_key("_std", np.zeros(1)), "_std")
    meta_case("std_string", set_key("_std", np.array(["a"])), "_std")
    meta_case("classes_len", set_key("_classes", np.array(json.dumps(["a"]))), "_classes")
    meta_case("classes_not_json", set_key("_classes", np.array("[a")), "_classes")
    meta_case("classes_numbers", set_key("_classes", np.array(json.dumps(list(range(10))))), "_classes")
    meta_case("train_config_eval", set_key("_train_config", np.array("nope")), "_train_config", command="evaluate")
    meta_case("missing_tensor", lambda a: a.pop("classifier.weight"), "classifier.weight")
    rgb = save_arrays(p("rgb_weights.npz"), tiny_model_arrays(in_channels=3))
    cases.append(("inspect_rgb_weights_on_digits", ["inspect", "--weights", rgb], ("3-channel",)))

    # 9. a folder or a link loop where a file should be
    os.makedirs(p("a_folder.npz"), exist_ok=True)
    loop = p("loop.npz")
    if not os.path.lexists(loop):
        os.symlink(loop, loop)
    for label, path, fragment in (("folder", p("a_folder.npz"), "folder"), ("loop", loop, "link loop")):
        cases.append((f"weights_{label}", ["predict", "--weights", path, grey], (path, fragment)))
        cases.append((f"data_{label}", ["train", "--dataset", "npz", "--data-dir", path], (path, fragment)))
    through = os.path.join(weights, "inside.npy")
    cases.append(("path_through_file", ["predict", "--weights", weights, through], (through, "not a folder")))
    return cases


# -- seeded fuzzing in the memory-limited subprocess ---------------------------------------------------------------

def seed_files():
    """One valid file per parser, as bytes: the starting points of the mutations."""
    from PIL import Image
    buf = io.BytesIO()
    np.savez(buf, **tiny_model_arrays())
    png = io.BytesIO()
    Image.new("RGB", (5, 4), (10, 20, 30)).save(png, format="PNG")
    run = checkpoint_run()
    with open(os.path.join(run.config.out, "checkpoint.npz"), "rb") as f:
        checkpoint = f.read()
    return {"npz": npz_bytes(x=np.arange(96, dtype=np.uint8).reshape(2, 3, 4, 4), y=np.array([0, 1]),
                             classes=np.array(["a", "b"])),
            "weights": buf.getvalue(), "npy": npy_bytes((2, 3), "<f8", data=np.arange(6.0).tobytes()),
            "idx": idx_bytes(2051, (2, 3, 3), bytes(range(18))), "png": png.getvalue(), "checkpoint": checkpoint}


_RUN = []


def checkpoint_run():
    """A tiny run (12 grey 4x4 images, 1 epoch of 3 steps) with its checkpoint written: the Run object that
    mutated checkpoints are loaded into, made once per process."""
    if not _RUN:
        import tempfile

        from numpy_densenet.training import Run, TrainConfig, train
        folder = tempfile.mkdtemp(prefix="hostile-run-")
        rng = np.random.default_rng(0)
        np.savez(os.path.join(folder, "d.npz"), x=rng.integers(0, 255, (12, 1, 4, 4)).astype(np.uint8),
                 y=np.arange(12) % 2, x_test=np.zeros((2, 1, 4, 4), np.uint8), y_test=np.array([0, 1]))
        config = TrainConfig(dataset="npz", data_dir=os.path.join(folder, "d.npz"), depth=10, growth_rate=2,
                             batch_size=4, epochs=1, drop_rate=0.2, out=os.path.join(folder, "run"))
        train(config, log=lambda line: None)
        _RUN.append(Run(config, log=lambda line: None))
    return _RUN[0]


PARSER_SEEDS = {"read_npz": "npz", "read_npy": "npy", "load_npz data set": "npz", "load_npz weights": "weights",
                "load_model_file": "weights", "read_gzip idx": "idx", "open_image": "png",
                "Run.load_checkpoint": "checkpoint", "load_model_file (checkpoint)": "checkpoint"}


def run_parser(parser, path):
    """Run one parser on a file: True for its documented clean error, False for a result; anything else raises."""
    from numpy_densenet.data import DatasetError, load_dataset
    from numpy_densenet.data.files import FileFormatError, open_image, read_gzip, read_npy, read_npz
    from numpy_densenet.io import WeightsFileError, load_npz
    from numpy_densenet.io import load_model_file
    from numpy_densenet.training import TrainingError
    try:
        if parser == "read_npz":
            read_npz(path)
        elif parser == "read_npy":
            read_npy(path)
        elif parser == "load_npz data set":
            load_dataset("npz", path)
        elif parser == "load_npz weights":
            load_npz(path)
        elif parser == "load_model_file":
            load_model_file(path)
        elif parser == "read_gzip idx":
            read_gzip(path, 16, lambda h: struct.unpack(">I", h[4:8])[0] * 9)
        elif parser == "open_image":
            open_image(path, "RGB")
        elif parser == "Run.load_checkpoint":
            checkpoint_run().load_checkpoint(path)
        elif parser == "load_model_file (checkpoint)":
            load_model_file(path)
    except (FileFormatError, DatasetError, WeightsFileError, TrainingError):
        return True
    return False


def seeded_mutations(raw, rng, n):
    """``n`` variants of ``raw``: truncated, with bits flipped (sizes in headers included), spliced or random."""
    for i in range(n):
        b = bytearray(raw)
        how = i % 4
        if how == 0:
            yield bytes(b[:rng.integers(0, len(b) + 1)])
        elif how == 1:
            for _ in range(rng.integers(1, 9)):
                j = int(rng.integers(0, min(len(b), 160)) if rng.random() < 0.7 else rng.integers(0, len(b)))
                b[j] ^= 1 << int(rng.integers(0, 8))
            yield bytes(b)
        elif how == 2:
            j = int(rng.integers(0, len(b) + 1))
            yield bytes(b[:j]) + rng.bytes(int(rng.integers(1, 64))) + bytes(b[j:])
        else:
            yield rng.bytes(int(rng.integers(0, 512)))


def fuzz_all(root, n_per_parser, seed=0):
    """Run every parser on ``n_per_parser`` mutated files; returns {parser: (tried, clean errors)}."""
    rng = np.random.default_rng(seed)
    seeds, counts = seed_files(), {}
    for parser, kind in PARSER_SEEDS.items():
        tried = clean = 0
        for k, raw in enumerate(seeded_mutations(seeds[kind], rng, n_per_parser)):
            path = os.path.join(root, f"fuzz{k}" + (".gz" if parser == "read_gzip idx" and k % 2 else ""))
            with open(path, "wb") as f:
                f.write(gzip.compress(raw) if path.endswith(".gz") else raw)
            clean += run_parser(parser, path)
            tried += 1
            os.unlink(path)
        counts[parser] = (tried, clean)
    return counts
