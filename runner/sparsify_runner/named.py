"""Named models and datasets, as the original accepted them: ``--model resnet50``,
``--model bert-base-uncased``, ``--data sst2``, ``--data imagenette``.

A name is resolved to a local file or folder that the ordinary loaders read, so nothing
downstream knows about names:

* a torchvision architecture -> its pretrained weights from torchvision's own cache
  (``$TORCH_HOME/hub/checkpoints``), saved as a ``{state_dict, arch_key}`` checkpoint
  (and, for one-shot, exported to a static-shape ONNX file at the weights' input size);
* a Hugging Face model id -> its snapshot folder in the hub cache (``$HF_HOME/hub``);
* a Hugging Face dataset id -> ``datasets.load_dataset`` through its cache
  (``HF_DATASETS_CACHE``), saved to disk for :mod:`.data.hf_datasets`;
* an image dataset name (``imagenette``, ...) -> its extracted folder under
  ``$SPARSIFY_DATASETS`` (downloaded once from the address in ``IMAGE_DATASETS``).

A value is only a name when it has no URI scheme and no such local path exists (a local
path always wins). Offline (``SPARSIFY_OFFLINE``, ``HF_HUB_OFFLINE``) nothing is
downloaded: a name that is not cached fails with one line naming the cache path to fill.
In the cluster the same variables point at a mounted volume.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputError, TransientError
from .spec import Experiment, ExperimentType, UseCase, uri_scheme

log = logging.getLogger("sparsify.named")

FILE_SUFFIXES = (".onnx", ".pt", ".pth", ".safetensors", ".tar", ".gz", ".tgz", ".bin", ".zip", ".npz")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
TEXT_USE_CASES = (UseCase.text_classification,)

# The original's name rewriting: a bare GLUE task is ("glue", task).
GLUE_TASKS = (
    "ax",
    "cola",
    "mnli",
    "mnli_matched",
    "mnli_mismatched",
    "mrpc",
    "qnli",
    "qqp",
    "rte",
    "sst2",
    "stsb",
    "wnli",
)

# Image datasets by name: the extracted folder (ImageFolder layout train/ + val/) and where
# it comes from (fast.ai's public Imagenette/Imagewoof archives).
_FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas"
IMAGE_DATASETS: dict[str, tuple[str, str]] = {
    "imagenette": ("imagenette2-160", f"{_FASTAI}/imagenette2-160.tgz"),
    "imagenette-160": ("imagenette2-160", f"{_FASTAI}/imagenette2-160.tgz"),
    "imagenette-320": ("imagenette2-320", f"{_FASTAI}/imagenette2-320.tgz"),
    "imagenette-full": ("imagenette2", f"{_FASTAI}/imagenette2.tgz"),
    "imagewoof": ("imagewoof2-160", f"{_FASTAI}/imagewoof2-160.tgz"),
    "imagewoof-160": ("imagewoof2-160", f"{_FASTAI}/imagewoof2-160.tgz"),
    "imagewoof-320": ("imagewoof2-320", f"{_FASTAI}/imagewoof2-320.tgz"),
}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    return any(_truthy(v) for v in ("SPARSIFY_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _datasets_offline() -> bool:
    return offline() or _truthy("HF_DATASETS_OFFLINE")


def is_name(value: str | None) -> bool:
    """No scheme, no such local path, shaped like ``name`` or ``org/name`` (not a file name)."""
    if not value or "://" in value or uri_scheme(value) != "file":
        return False
    if Path(value).expanduser().exists() or not _NAME.match(value):
        return False
    return not value.lower().endswith(FILE_SUFFIXES)


def _scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="sparsify-named-"))
    atexit.register(shutil.rmtree, path, True)
    return path


# ---- models ---------------------------------------------------------------------------------------
def torchvision_kind(name: str) -> str | None:
    """'classification', 'detection', 'segmentation' (or 'video', ...) for a torchvision name."""
    import torchvision.models as tvm

    for kind, module in (
        ("classification", tvm),
        ("detection", tvm.detection),
        ("segmentation", tvm.segmentation),
        ("video", tvm.video),
        ("optical flow", tvm.optical_flow),
    ):
        if name in tvm.list_models(module=module):
            return kind
    return None


def resolve_model(uri: str | None, exp: Experiment, *, what: str = "model") -> Path | None:
    """A local path for a named model, or None when ``uri`` is not a name (fetch it as a URI)."""
    if not is_name(uri):
        return None
    assert uri is not None
    if exp.use_case in TEXT_USE_CASES:
        if exp.type == ExperimentType.one_shot:
            raise InputError(
                f"one-shot needs an ONNX file, and {what} '{uri}' is a Hugging Face model id; export it to "
                "ONNX (static shapes) and pass the .onnx file, or run training-aware with this id"
            )
        return hf_model_folder(uri, what=what)
    kind = torchvision_kind(uri)
    if kind is None:
        return None  # an ordinary missing path: storage.fetch says so
    if kind == "detection":
        raise InputError(
            f"{what} '{uri}' names a torchvision detection architecture; detectors are not fetched by name: "
            "save {'arch_key': ..., 'state_dict': ...} (or a state dict with --arch) and pass the file, "
            "or for one-shot your own exported .onnx file (see docs/detection.md)"
        )
    if kind != "classification":
        raise InputError(
            f"{what} '{uri}' is a torchvision {kind} architecture; this project has no {kind} pathway yet, "
            "so only classification architectures can be named (e.g. resnet50, mobilenet_v2); for one-shot "
            "pass your own exported .onnx file"
        )
    checkpoint, weights, state = torchvision_checkpoint(uri, what=what)
    if exp.type == ExperimentType.one_shot and what == "model":
        return export_static_onnx(uri, weights, state)
    return checkpoint


def _weights_candidates(arch: str):
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    default = enum.DEFAULT if hasattr(enum, "DEFAULT") else next(iter(enum))
    return [default] + [w for w in enum if w is not default]


def _checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_checkpoint(arch: str, *, what: str = "model") -> tuple[Path, Any, dict]:
    """The pretrained weights of ``arch`` from torchvision's cache (downloaded there when
    online): any cached variant is used before downloading the default one."""
    import torch

    candidates = _weights_candidates(arch)
    folder = _checkpoint_dir()
    cached = [w for w in candidates if (folder / os.path.basename(w.url)).is_file()]
    weights = cached[0] if cached else candidates[0]
    path = folder / os.path.basename(weights.url)
    if not cached:
        if offline():
            raise InputError(
                f"{what} '{arch}': pretrained weights are not in torchvision's cache and downloads are off "
                f"(offline); put {path.name} (from {weights.url}) at {path} "
                f"(TORCH_HOME={folder.parent.parent})"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), progress=False)
        except Exception as err:  # urllib/http errors of many kinds: a retry may help
            raise TransientError(
                f"{what} '{arch}': downloading {weights.url} to {path} failed ({type(err).__name__}); "
                "retry, or fill the cache by hand"
            ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise InputError(
            f"{what} '{arch}': cached weights {path} are not readable ({type(err).__name__}); delete the "
            "file and download it again"
        ) from None
    log.info("named model %s: weights %s from %s", arch, weights, path)
    out = _scratch() / f"{arch}.pt"
    torch.save({"state_dict": state, "arch_key": arch}, out)
    return out, weights, state


def export_static_onnx(arch: str, weights: Any, state: dict) -> Path:
    """The ImageNet model as ONNX with a static ``input`` of (1, 3, S, S), S = the weights'
    evaluation crop size (224 for most), for one-shot."""
    import warnings

    import torch
    import torchvision

    from .training.export import OPSET

    model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(state)
    model.eval()
    crop = getattr(weights.transforms(), "crop_size", None) or [224]
    size = int(crop[0] if isinstance(crop, list | tuple) else crop)
    path = _scratch() / f"{arch}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def hf_model_folder(repo_id: str, *, what: str = "model") -> Path:
    """The snapshot folder of a Hugging Face model id in the hub cache (downloading the
    config, tokenizer and safetensors weights when online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hf_hub_cache()
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    try:
        folder = snapshot_download(
            repo_id,
            cache_dir=str(cache),
            local_files_only=offline(),
            allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"],
        )
    except LocalEntryNotFoundError:
        raise InputError(
            f"{what} '{repo_id}' is not a local path and not in the Hugging Face cache (offline); "
            f"fill {entry} "
            "(e.g. `hf download` with HF_HOME set, snapshots/<rev>/ + refs/main) or check the path"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise InputError(
            f"{what} '{repo_id}' is not a local path and could not be fetched from the Hugging Face hub "
            f"({str(err).splitlines()[0][:120]}); check the id or fill {entry}"
        ) from None
    return Path(folder)


# ---- data ---------------------------------------------------------------------------------------
def datasets_root() -> Path:
    return Path(os.environ.get("SPARSIFY_DATASETS") or os.path.expanduser("~/.cache/sparsify/datasets"))


def resolve_data(exp: Experiment, *, show_progress: bool = False) -> Path | None:
    """A local folder for a named dataset, or None when ``exp.data`` is not a name."""
    name = exp.data
    if exp.type == ExperimentType.one_shot or not is_name(name):
        return None
    if exp.use_case == UseCase.image_classification:
        return image_dataset(name, show_progress=show_progress)
    if exp.use_case in TEXT_USE_CASES:
        from .data.hf_datasets import materialize_hub_dataset

        path, config = hub_dataset_id(name, exp.train_kwargs.get("dataset_config"))
        return materialize_hub_dataset(path, config, _scratch() / "dataset")
    return None


def hub_dataset_id(name: str, config: str | None = None) -> tuple[str, str | None]:
    """``sst2`` -> ("glue", "sst2"), ``glue/mnli`` -> ("glue", "mnli"), ``imdb`` -> ("imdb", None),
    ``org/name`` -> ("org/name", config)."""
    lowered = name.lower()
    if lowered in GLUE_TASKS:
        return "glue", lowered
    head, _, tail = name.partition("/")
    if head.lower() == "glue" and tail:
        return "glue", tail.lower()
    return name, config


def image_dataset(name: str, *, show_progress: bool = False) -> Path | None:
    key = name.lower().replace("_", "-")
    if key not in IMAGE_DATASETS:
        return None
    folder_name, url = IMAGE_DATASETS[key]
    root = datasets_root()
    folder = root / folder_name
    if (folder / "train").is_dir():
        return folder
    if offline() or _datasets_offline():
        raise InputError(
            f"data '{name}' is not downloaded yet and downloads are off (offline); extract {url} so that "
            f"{folder}/train and {folder}/val exist (SPARSIFY_DATASETS={root})"
        )
    import tarfile

    from . import storage

    archive = storage.fetch(url, what="data", show_progress=show_progress)
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder_name}-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        extracted = partial / folder_name
        if not (extracted / "train").is_dir():
            raise InputError(f"data '{name}': {url} did not contain {folder_name}/train; report this")
        os.replace(extracted, folder)
    except (tarfile.TarError, OSError) as err:
        raise TransientError(f"data '{name}': extracting {archive} failed ({err}); retry") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder
