"""Sparse-transfer base-model catalog: an index (YAML or JSON) of pre-sparsified models per
use case with their size, sparsity and accuracy.

Format (``version: 1``)::

    version: 1
    models:
      - name: resnet18-imagenet-pruned80
        useCase: image-classification
        uri: resnet18-pruned80.pt          # relative to the catalog file, or a full URI
        arch: resnet18                     # torchvision name (when uri is a bare state dict)
        parameters: 11689512
        sizeBytes: 46830571
        sparsity: 0.8
        accuracy: 0.694                    # top-1; for object-detection: mAP@0.5:0.95
        dataset: imagenet
        description: free text

Selection follows the original product: the optim level picks larger (more accurate) base
models at low levels and smaller/sparser (faster) ones at high levels. Torch-free: the
``sparsifyctl catalog`` commands import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .errors import InputError
from .spec import normalize_use_case, uri_scheme

CATALOG_VERSION = 1


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    name: str
    use_case: str
    uri: str
    arch: str | None = None
    parameters: int | None = Field(None, ge=0)
    size_bytes: int | None = Field(None, ge=0)
    sparsity: float = Field(0.0, ge=0.0, le=1.0)
    accuracy: float | None = None
    dataset: str | None = None
    description: str | None = None
    structure: str = "unstructured"

    def effective_size(self) -> float:
        """Non-zero weights (or bytes): what makes a base model slower and more accurate."""
        base = self.parameters or self.size_bytes or 0
        return base * (1.0 - self.sparsity)


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    version: int = CATALOG_VERSION
    models: list[CatalogEntry] = Field(default_factory=list)


def load_catalog(path: Path) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise InputError(f"catalog '{path}' is not readable YAML/JSON: {str(err).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"catalog '{path}' must be a mapping with 'version' and 'models'")
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InputError(f"catalog '{path}': field '{loc}': {first['msg']}") from None
    if catalog.version != CATALOG_VERSION:
        raise InputError(
            f"catalog '{path}' has version {catalog.version}; this build reads version {CATALOG_VERSION}"
        )
    for entry in catalog.models:
        entry.use_case = normalize_use_case(entry.use_case)
    return catalog


def save_catalog(catalog: Catalog, path: Path) -> None:
    data = catalog.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def select(catalog: Catalog, use_case: str, optim_level: float) -> tuple[CatalogEntry, list[CatalogEntry]]:
    """Pick a base model: candidates sorted largest (most accurate) to smallest; the optim
    level walks that list (0 -> largest, 1 -> smallest)."""
    use_case = normalize_use_case(use_case)
    candidates = sorted(
        (e for e in catalog.models if e.use_case == use_case),
        key=lambda e: (-e.effective_size(), -(e.accuracy or 0.0), e.name),
    )
    if not candidates:
        have = sorted({e.use_case for e in catalog.models}) or ["none"]
        raise InputError(
            f"the catalog lists no base model for use case '{use_case}' (it has: {', '.join(have)}); "
            "pass --model or register one with 'sparsifyctl catalog register'"
        )
    index = round(min(max(optim_level, 0.0), 1.0) * (len(candidates) - 1))
    return candidates[index], candidates


def resolve_uri(entry_uri: str, catalog_uri: str) -> str:
    """Entry URIs may be relative to the catalog's own location (a folder or a prefix)."""
    if "://" in entry_uri or entry_uri.startswith("/"):
        return entry_uri
    if uri_scheme(catalog_uri) == "file":
        base = Path(catalog_uri.removeprefix("file://")).expanduser().parent
        return str((base / entry_uri).resolve())
    return catalog_uri.rsplit("/", 1)[0] + "/" + entry_uri


def entry_from_run(
    output_dir: Path,
    catalog_path: Path,
    *,
    name: str | None = None,
    dataset: str | None = None,
    description: str | None = None,
) -> CatalogEntry:
    """A catalog entry for a finished training-aware run (its report.json + model.pt/model-hf.tar)."""
    report_file = output_dir / "report.json"
    if not report_file.is_file():
        raise InputError(f"'{output_dir}' has no report.json; pass the output folder of a finished run")
    try:
        report: dict[str, Any] = json.loads(report_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"'{report_file}' is not valid JSON: {err}") from None
    artifact = next(
        (output_dir / n for n in ("model.pt", "model-hf.tar") if (output_dir / n).is_file()), None
    )
    if artifact is None:
        raise InputError(
            f"'{output_dir}' has no model.pt or model-hf.tar; only training runs can be registered"
        )
    exp = report.get("experiment", {})
    optimized = report.get("optimized", {})
    try:
        uri = str(artifact.resolve().relative_to(catalog_path.resolve().parent))
    except ValueError:
        uri = str(artifact.resolve())
    settings = report.get("settings", {})
    return CatalogEntry(
        name=name or exp.get("name") or output_dir.resolve().name,
        use_case=exp.get("useCase", "image-classification"),
        uri=uri,
        arch=settings.get("arch"),
        parameters=settings.get("torch_parameters") or optimized.get("parameters"),
        size_bytes=artifact.stat().st_size,
        sparsity=float(settings.get("torch_sparsity", optimized.get("sparsity", 0.0)) or 0.0),
        # the headline metric: top-1 accuracy, or a detector's mAP@0.5:0.95
        accuracy=optimized.get("accuracy") if optimized.get("accuracy") is not None else optimized.get("map"),
        dataset=dataset,
        description=description or f"{report.get('mode')} result of a {exp.get('type')} run",
        structure="channels" if report.get("mode") == "channels" else "unstructured",
    )


def register(catalog_path: Path, entry: CatalogEntry) -> Catalog:
    catalog = load_catalog(catalog_path) if catalog_path.is_file() else Catalog()
    catalog.models = [e for e in catalog.models if e.name != entry.name] + [entry]
    save_catalog(catalog, catalog_path)
    return catalog
