"""Detection data layer: YOLO and COCO readers, one-line errors for bad data, load_image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sparsify_runner.data.detection import (
    LETTERBOX_FILL,
    DetectionSample,
    inspect_detection,
    load_image,
)
from sparsify_runner.errors import EXIT_BAD_INPUT, InputError


def _error(root: Path, *needles: str, layout: str | None = None) -> str:
    """inspect_detection fails with ONE line that contains every needle."""
    with pytest.raises(InputError) as info:
        inspect_detection(root, layout=layout)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert info.value.exit_code == EXIT_BAD_INPUT
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def _assert_matches_truth(samples: list[DetectionSample], truth, atol: float) -> None:
    assert [s.image.name for s in samples] == [t.image.name for t in truth]
    for sample, t in zip(samples, truth, strict=True):
        assert sample.boxes.dtype == np.float32 and sample.boxes.shape == (len(t.labels), 4)
        assert sample.labels.dtype == np.int64
        np.testing.assert_allclose(sample.boxes, t.boxes, atol=atol)
        np.testing.assert_array_equal(sample.labels, t.labels)


def _copy_yolo(det_synth, dest: Path) -> Path:
    for sub in ("images", "labels"):
        shutil.copytree(det_synth.root / sub, dest / sub)
    return dest


# --- the synthetic dataset, read back --------------------------------------------------------


def test_yolo_dataset_yaml_round_trip(det_synth):
    splits = inspect_detection(det_synth.root)  # YOLO wins when both layouts are present
    assert splits.layout == "yolo"
    assert splits.classes == ["zero", "one", "two", "three", "four"]
    assert (len(splits.train), len(splits.val)) == (20, 8)
    _assert_matches_truth(splits.train, det_synth.truth["train"], atol=2e-6)
    _assert_matches_truth(splits.val, det_synth.truth["val"], atol=2e-6)
    assert all(s.size == (128, 128) for s in splits.train + splits.val)
    kinds = {t.label_file for t in det_synth.truth["train"]}
    assert kinds == {"boxes", "missing", "empty"}  # background images of both kinds
    counts = splits.counts()
    assert counts["train_images"] == 20 and counts["train_boxes"] > 20


def test_coco_round_trip_non_contiguous_ids(det_synth, tmp_path):
    ann = json.loads((det_synth.root / "annotations" / "instances_train.json").read_text())
    assert sorted(c["id"] for c in ann["categories"]) == [1, 4, 7, 10, 13]
    root = tmp_path / "coco"
    shutil.copytree(det_synth.root / "images", root / "images")
    shutil.copytree(det_synth.root / "annotations", root / "annotations")
    splits = inspect_detection(root)
    assert splits.layout == "coco"
    assert splits.classes == ["zero", "one", "two", "three", "four"]
    _assert_matches_truth(splits.train, det_synth.truth["train"], atol=1e-7)
    _assert_matches_truth(splits.val, det_synth.truth["val"], atol=1e-7)
    # forcing the layout reads the COCO files even next to YOLO ones
    assert inspect_detection(det_synth.root, layout="coco").layout == "coco"


def test_coco_alternative_image_folder(det_synth, tmp_path):
    root = tmp_path / "coco2017"
    shutil.copytree(det_synth.root / "images" / "train", root / "train2017")
    shutil.copytree(det_synth.root / "images" / "val", root / "val2017")
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        shutil.copy(
            det_synth.root / "annotations" / f"instances_{split}.json",
            root / "annotations" / f"instances_{split}2017.json",
        )
    splits = inspect_detection(root)
    assert splits.layout == "coco" and len(splits.val) == 8


def test_yolo_classes_txt(det_synth, tmp_path):
    root = _copy_yolo(det_synth, tmp_path / "txt")
    (root / "classes.txt").write_text("zero\none\ntwo\nthree\nfour\n\n")
    splits = inspect_detection(root)
    assert splits.layout == "yolo" and splits.classes[-1] == "four"
    _assert_matches_truth(splits.val, det_synth.truth["val"], atol=2e-6)


def test_yaml_dict_names_and_relative_path(det_synth, tmp_path):
    _copy_yolo(det_synth, tmp_path / "data")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "dataset.yaml").write_text(
        "path: ../data\ntrain: images/train\nval: [images/val]\n"
        "names:\n  0: zero\n  1: one\n  2: two\n  3: three\n  4: four\n"
    )
    splits = inspect_detection(cfg)
    assert splits.classes == ["zero", "one", "two", "three", "four"]
    assert splits.train[0].image.parent == cfg / ".." / "data" / "images" / "train"
    _assert_matches_truth(splits.train, det_synth.truth["train"], atol=2e-6)


def test_yaml_defaults_to_images_train_val(det_tiny):
    (det_tiny / "classes.txt").unlink()
    (det_tiny / "data.yaml").write_text("names: [cat, dog]\n")
    splits = inspect_detection(det_tiny)
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 1


def test_background_images(det_tiny):
    from PIL import Image

    Image.new("RGB", (20, 30)).save(det_tiny / "images" / "train" / "nolabel.jpg")
    Image.new("RGB", (20, 30)).save(det_tiny / "images" / "train" / "empty.jpg")
    (det_tiny / "labels" / "train" / "empty.txt").write_text("\n")
    by_name = {s.image.name: s for s in inspect_detection(det_tiny).train}
    for name in ("nolabel.jpg", "empty.jpg"):
        assert by_name[name].boxes.shape == (0, 4) and by_name[name].boxes.dtype == np.float32
        assert by_name[name].labels.shape == (0,) and by_name[name].size == (20, 30)
    np.testing.assert_allclose(by_name["train.png"].boxes, [[0.375, 0.25, 0.625, 0.75]])


def test_box_touching_the_border_within_tolerance(det_tiny):
    (det_tiny / "labels" / "train" / "train.txt").write_text("1 0.5 0.5 1.0000005 1\n")
    sample = inspect_detection(det_tiny).train[0]
    np.testing.assert_allclose(sample.boxes, [[0, 0, 1, 1]])
    assert sample.labels.tolist() == [1]


# --- bad YOLO data: one line naming the file and line -------------------------------------------


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("0 0.5 0.5 0.2", "has 4 values, expected 5"),
        ("0 0.5 0.5 0.2 0.2 0.3 0.3", "segment/polygon"),
        ("0 0.5 abc 0.2 0.2", "cy 'abc' is not a number"),
        ("0 0.5 nan 0.2 0.2", "is not a number"),
        ("2 0.5 0.5 0.2 0.2", "class id '2'"),
        ("-1 0.5 0.5 0.2 0.2", "class id '-1'"),
        ("0.5 0.5 0.5 0.2 0.2", "class id '0.5'"),
        ("0 1.2 0.5 0.2 0.2", "cx 1.2 is outside [0, 1]"),
        ("0 0.5 0.5 0 0.2", "must be > 0"),
        ("0 0.95 0.5 0.2 0.2", "reaches outside the image"),
    ],
)
def test_bad_label_line(det_tiny, line, needle):
    label = det_tiny / "labels" / "val" / "val.txt"
    label.write_text(f"1 0.5 0.5 0.1 0.1\n{line}\n")
    _error(det_tiny, f"'{label}' line 2", needle)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_image_that_does_not_decode(det_tiny, content):
    image = det_tiny / "images" / "train" / "train.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    _error(det_tiny, f"image '{image}' cannot be decoded", "replace or delete")


def test_no_val_split(det_tiny):
    shutil.rmtree(det_tiny / "images" / "val")
    _error(det_tiny, "no val split", "images/val")


def test_split_without_images(det_tiny):
    (det_tiny / "images" / "train" / "train.png").unlink()
    _error(det_tiny, f"'{det_tiny / 'images' / 'train'}' has no images")


def test_no_class_names(det_tiny):
    (det_tiny / "classes.txt").unlink()
    _error(det_tiny, "no class names", "classes.txt")
    (det_tiny / "dataset.yaml").write_text("train: images/train\n")
    _error(det_tiny, "dataset.yaml' has no 'names:'")
    (det_tiny / "dataset.yaml").write_text("names: []\n")
    _error(det_tiny, "empty 'names:' list")


def test_empty_classes_txt(det_tiny):
    (det_tiny / "classes.txt").write_text("\n\n")
    _error(det_tiny, "classes.txt' has no class names")
    (det_tiny / "classes.txt").write_text("cat\n\ndog\n")
    _error(det_tiny, "classes.txt' line 2 is empty")


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("names: {0: cat, 2: dog}\n", "without gaps, but 1 is missing"),
        ("names: [cat, dog]\nnc: 3\n", "nc: 3 but 'names:' has 2"),
        ("names: [cat, cat]\n", "'cat' is given twice"),
        ("names: cat\n", "must be a list of class names"),
        ("names: [cat, dog]\nval: images/nope\n", "'val: images/nope' resolves to"),
        ("names: [cat, dog]\npath: missing\n", "'path: missing' resolves to"),
        ("names: [cat, dog\n", "is not valid YAML at line"),
        ("- cat\n- dog\n", "must be a YAML mapping"),
    ],
)
def test_bad_dataset_yaml(det_tiny, yaml_text, needle):
    (det_tiny / "classes.txt").unlink()
    (det_tiny / "dataset.yaml").write_text(yaml_text)
    _error(det_tiny, "dataset.yaml'", needle)


def test_neither_layout(tmp_path):
    (tmp_path / "images").mkdir()
    _error(tmp_path, "has neither layout", "YOLO layout", "COCO layout")
    _error(tmp_path / "missing", "is not a folder")


# --- bad COCO data ----------------------------------------------------------------------------


@pytest.fixture
def det_coco(det_tiny) -> Path:
    """det_tiny as COCO: category ids 5 and 9, one box per image."""
    (det_tiny / "annotations").mkdir()
    for split in ("train", "val"):
        doc = {
            "images": [{"id": 7, "file_name": f"{split}.png", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 9, "bbox": [16, 12, 16, 24]}],
            "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
        }
        (det_tiny / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    for extra in ("labels", "classes.txt"):
        p = det_tiny / extra
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return det_tiny


def _edit_coco(root: Path, split: str, edit) -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def test_coco_tiny_reads(det_coco):
    splits = inspect_detection(det_coco)
    assert splits.classes == ["cat", "dog"]
    np.testing.assert_allclose(splits.val[0].boxes, [[0.25, 0.25, 0.5, 0.75]])
    assert splits.val[0].labels.tolist() == [1]


def test_coco_unknown_image(det_coco):
    path = _edit_coco(det_coco, "train", lambda d: d["annotations"][0].update(image_id=99))
    _error(det_coco, f"'{path}' annotation id 1", "image id 99, which is not in 'images'")


def test_coco_unknown_category(det_coco):
    path = _edit_coco(det_coco, "val", lambda d: d["annotations"][0].update(category_id=3))
    _error(det_coco, f"'{path}' annotation id 1", "category id 3, which is not in 'categories'")


def test_coco_malformed_json(det_coco):
    path = det_coco / "annotations" / "instances_val.json"
    path.write_text('{"images": [}')
    _error(det_coco, f"'{path}' is not valid JSON", "line 1 column")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["annotations"][0].update(bbox=[60, 12, 16, 24]), "reaches outside the image"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be 4 numbers"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 3]), "zero or negative width"),
        (lambda d: d["images"][0].update(file_name="gone.png"), "does not exist"),
        (lambda d: d["images"][0].update(width=640), "says 640x48 but"),
        (lambda d: d.pop("categories"), "has no 'categories' list"),
        (lambda d: d.update(categories=[]), "has no categories, so no class names"),
        (lambda d: d.update(images=[], annotations=[]), "lists no images"),
    ],
)
def test_coco_bad_entries(det_coco, edit, needle):
    path = _edit_coco(det_coco, "train", edit)
    _error(det_coco, f"'{path}'", needle)


def test_coco_missing_val_and_categories_mismatch(det_coco):
    val = det_coco / "annotations" / "instances_val.json"
    _edit_coco(det_coco, "val", lambda d: d["categories"].append({"id": 11, "name": "bird"}))
    _error(det_coco, f"categories in '{val}' differ")
    val.unlink()
    _error(det_coco, "no val split", "instances_val.json")


def test_coco_crowd_annotations_are_skipped(det_coco):
    _edit_coco(det_coco, "train", lambda d: d["annotations"][0].update(iscrowd=1))
    assert inspect_detection(det_coco).train[0].boxes.shape == (0, 4)


# --- load_image ---------------------------------------------------------------------------------


def test_load_image_resize(det_synth):
    sample = inspect_detection(det_synth.root).train[0]
    array, boxes = load_image(sample, 64)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32
    assert array.min() >= 0.0 and array.max() <= 1.0 and array.std() > 0.01
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes, sample.boxes * 64, rtol=1e-6)


def test_load_image_letterbox(tmp_path):
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("L", (200, 100), 255).save(path)  # grayscale in, RGB out
    sample = DetectionSample(image=path, boxes=[[0.25, 0.5, 0.75, 1.0]], labels=[0], size=(200, 100))
    array, boxes = load_image(sample, 64, letterbox=True)
    assert array.shape == (3, 64, 64)
    # 200x100 -> 64x32, padded by 16 rows above and below
    np.testing.assert_allclose(boxes, [[16, 32, 48, 48]], atol=1e-5)
    np.testing.assert_allclose(array[:, :16], LETTERBOX_FILL)
    np.testing.assert_allclose(array[:, 16:48], 1.0)
    plain, plain_boxes = load_image(sample, 64)
    np.testing.assert_allclose(plain_boxes, [[16, 32, 48, 64]])
    assert plain.min() == 1.0


# --- the builder ----------------------------------------------------------------------------------


def test_builder_is_deterministic_and_runnable(det_assets, tmp_path, capsys):
    assert det_assets.main([str(tmp_path / "a"), "--train", "3", "--val", "2", "--size", "96"]) == 0
    assert "wrote yolo detection data" in capsys.readouterr().out
    b = det_assets.build_detection_dataset(tmp_path / "b", n_train=3, n_val=2, size=96)
    for name in ("images/train/train_00002.jpg", "labels/val/val_00000.txt", "dataset.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not (tmp_path / "b" / "annotations").exists()
    assert all(len(t.labels) >= 1 for t in b.truth["train"])
    assert inspect_detection(tmp_path / "a").counts()["val_images"] == 2
