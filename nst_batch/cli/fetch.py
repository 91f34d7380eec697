"""Downloading the ImageNet weights (`nst-batch fetch-weights`): the only network access there
is, so the engine and the daemon never wait on one."""

import hashlib
import os
import re
import tempfile
import urllib.request
from pathlib import Path

from ..engine import imagenet_file, imagenet_url, load_network
from ..util.errors import WeightsError


def fetch_weights(backbone: str, url: str | None = None, timeout: float = 30.0) -> Path:
    """Download the ImageNet weights of ``backbone`` into torchvision's cache; return the file.

    From the official URL the file's SHA-256 prefix (in its name) is checked; from a mirror
    (``url``) the file must at least load as a state dict of the right shape.
    """
    target = imagenet_file(backbone)
    official = url is None
    source = imagenet_url(backbone) if official else url
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(source, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        expected = re.search(r"-([a-f0-9]+)\.", target.name)
        if official and expected and not digest.hexdigest().startswith(expected.group(1)):
            raise WeightsError(f"download of {source} is corrupt (sha256 {digest.hexdigest()[:8]}...): try again")
        load_network(backbone, tmp_name, "torchvision")  # it must load as this backbone's weights
        os.replace(tmp_name, target)
    except (OSError, ValueError) as error:  # URLError is an OSError; a malformed URL a ValueError
        raise WeightsError(
            f"could not download {source}: {getattr(error, 'reason', error)}; without network access, "
            f"copy {os.path.basename(imagenet_url(backbone))} into {target.parent} by hand"
        ) from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target
