"""Datasets: the synthetic domains through torch, and real folders in their exact layouts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lwmm_lab import LwmmError
from lwmm_lab.analysis.evaluation import val_set
from lwmm_lab.data import labels as L
from lwmm_lab.data.datasets import (
    SyntheticScenes,
    check_dataset_names,
    cityscapes,
    data_key,
    gta5,
    open_dataset,
    synthia,
)
from lwmm_lab.fixtures import cityscapes_folder


def test_synthetic_dataset_items() -> None:
    ds = SyntheticScenes("real", "val", size=5, resolution=(64, 128), instances=True)
    assert len(ds) == 5
    image, label, instances = ds[2]
    assert image.shape == (3, 64, 128) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert label.shape == (64, 128) and label.dtype == torch.int64
    assert instances.dtype == torch.int64 and int(instances.max()) > 0
    assert len(SyntheticScenes("real", "val", size=5)[0]) == 2, "no instances unless asked"
    with pytest.raises(IndexError):
        ds[5]
    assert len(SyntheticScenes("synthetic", "train")) == 2000


def test_dataloader_workers_give_the_same_batches() -> None:
    ds = SyntheticScenes("night", "val", size=6, resolution=(32, 64))
    serial = [b for b in DataLoader(ds, batch_size=3)]
    workers = [b for b in DataLoader(ds, batch_size=3, num_workers=2)]
    for (xa, ya), (xb, yb) in zip(serial, workers, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_open_dataset_names() -> None:
    assert isinstance(open_dataset("foggy", "val", size=3), SyntheticScenes)
    with pytest.raises(LwmmError, match="dataset 'mars' is not a synthetic domain"):
        open_dataset("mars")
    with pytest.raises(LwmmError, match="domain 'mars' is not one of"):
        SyntheticScenes("mars")
    with pytest.raises(LwmmError, match=r"^dataset None: give a domain's name or cityscapes:PATH"):
        open_dataset(None)  # was an AttributeError on .partition


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _image(h: int = 8, w: int = 16, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def _cityscapes_tree(root: Path) -> np.ndarray:
    ids = np.zeros((8, 16), dtype=np.uint8)
    ids[:, 0:4] = 7  # road
    ids[:, 4:8] = 26  # car
    ids[:, 8:12] = 33  # bicycle
    ids[:, 12:] = 3  # out of roi -> ignore
    for city, stem in (("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019")):
        _png(root / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png", _image())
        _png(root / "gtFine/val" / city / f"{stem}_gtFine_labelIds.png", ids)
        instances = ids.astype(np.uint16)
        instances[:, 4:8] = 26 * 1000 + 1
        _png(root / "gtFine/val" / city / f"{stem}_gtFine_instanceIds.png", instances)
    return ids


def test_cityscapes_folder(tmp_path: Path) -> None:
    _cityscapes_tree(tmp_path)
    ds = cityscapes(tmp_path, "val", instances=True)
    assert len(ds) == 2
    image, label, instances = ds[0]
    assert image.shape == (3, 8, 16)
    assert label[0, :4].eq(L.ROAD).all() and label[0, 4:8].eq(L.CAR).all()
    assert label[0, 8:12].eq(L.BICYCLE).all() and label[0, 12:].eq(L.IGNORE).all()
    assert instances[0, 4:8].eq(26001).all() and instances[0, :4].eq(0).all()
    _, small = cityscapes(tmp_path, "val", resolution=(4, 8))[1]
    assert small.shape == (4, 8) and small[0, 0] == L.ROAD
    assert len(open_dataset(f"cityscapes:{tmp_path}", "val", resolution=None)) == 2
    with pytest.raises(IndexError, match=r"^image 2 is outside 0\.\.1 of the dataset"):
        ds[2]  # "list index out of range"; an IndexError still, which ends iteration by index
    assert len(list(ds)) == 2
    with pytest.raises(LwmmError, match=r"leftImg8bit/vla' is missing .*; its splits: val\)"):
        cityscapes(tmp_path, "vla")


def test_a_val_set_on_disk_is_read_at_the_resolution_asked(tmp_path: Path) -> None:
    """The panels and sweeps score a dataset on disk as they score a synthetic domain: its
    first images, resized, in memory; all of them where it has fewer than asked."""
    root = cityscapes_folder(tmp_path / "cs", images=3, size=(64, 128))
    name = f"cityscapes:{root}"
    images, labels = val_set(name, 16, (32, 64)).tensors
    assert images.shape == (3, 3, 32, 64) and labels.shape == (3, 32, 64)
    for i, (image, label) in enumerate(open_dataset(name, "val", (32, 64))):
        assert torch.equal(images[i], image) and torch.equal(labels[i], label)
    assert len(val_set(name, 2, (32, 64))) == 2
    assert check_dataset_names(["real", name]) == ["real", name]
    with pytest.raises(LwmmError, match=r"^dataset 'reel' is not a synthetic domain .*'real'\?"):
        val_set("reel")
    with pytest.raises(LwmmError, match=r"^Cityscapes root '.*nowhere' is not a directory"):
        check_dataset_names(["real", f"cityscapes:{tmp_path / 'nowhere'}"])
    with pytest.raises(LwmmError, match=r"^no domain given \(pick from synthetic, .*PATH\)"):
        check_dataset_names([])


def test_a_dataset_on_disk_is_keyed_by_its_files_contents(tmp_path: Path) -> None:
    """A cache of scores keys a dataset on disk by the contents of the files it scores: a
    label changed (or another image among the first ones) is read and scored again; a copy
    elsewhere is the same data."""
    root = cityscapes_folder(tmp_path / "cs", images=3, size=(16, 32))
    name = f"cityscapes:{root}"
    key = data_key(name, 2)
    assert data_key("real", 2) == "real" and data_key(name, 2) == key
    assert data_key(name, 3) != key, "a third image is other data"
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in root.rglob("*.png"):
        (copy / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (copy / f.relative_to(root)).write_bytes(f.read_bytes())
    assert data_key(f"cityscapes:{copy}", 2) == key
    before = val_set(name, 2, (16, 32)).tensors[1]
    label = sorted(root.glob("gtFine/val/*/*_labelIds.png"))[0]
    ids = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    ids[:4] = 7  # road
    _png(label, ids)
    assert data_key(name, 2) != key
    after = val_set(name, 2, (16, 32)).tensors[1]
    assert after[0, :4].eq(L.ROAD).all() and not torch.equal(after, before), "read again"


def test_gta5_folder_reads_palette_labels(tmp_path: Path) -> None:
    """GTA5's labels are palette PNGs: the pixels are the ids, whatever colours the palette has."""
    _png(tmp_path / "images/00001.png", _image())
    ids = np.full((8, 16), 23, dtype=np.uint8)  # sky
    ids[4:] = 8  # sidewalk
    (tmp_path / "labels").mkdir()
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([(37 * i) % 256 for i in range(768)])
    palette.save(tmp_path / "labels/00001.png")
    _, label = gta5(tmp_path)[0]
    assert label[0].eq(L.SKY).all() and label[-1].eq(L.SIDEWALK).all()
    for array, says in (
        (np.full((8, 16), 300, np.uint16), "label id 300 is not a Cityscapes label id"),
        (_image(), "an image of mode RGB; a label holds one id per pixel"),
    ):
        Image.fromarray(array).save(tmp_path / "labels/00001.png")
        with pytest.raises(LwmmError, match=rf"00001.png: {says}"):
            gta5(tmp_path)[0]


def test_a_label_a_few_pixels_off_its_image_is_fitted_and_one_far_off_refused(
    tmp_path: Path,
) -> None:
    """Some GTA5 pairs differ by a few pixels: the label is resized to the image (nearest), so
    the pair reads at its native size; a label of another size altogether is refused."""
    _png(tmp_path / "images/00001.png", _image(40, 80))
    ids = np.full((41, 80), 23, dtype=np.uint8)  # one row more than the image
    ids[20:] = 8
    _png(tmp_path / "labels/00001.png", ids)
    image, label = gta5(tmp_path)[0]
    assert label.shape == image.shape[1:] == (40, 80)
    assert label[0].eq(L.SKY).all() and label[-1].eq(L.SIDEWALK).all()
    _png(tmp_path / "labels/00001.png", np.full((20, 40), 23, dtype=np.uint8))
    with pytest.raises(LwmmError, match=r"00001.png: label is 20 x 40, its image 40 x 80 \(mo"):
        gta5(tmp_path)[0]


def test_synthia_folder_reads_16_bit_labels(tmp_path: Path) -> None:
    _png(tmp_path / "RGB/0000000.png", _image())
    raw = np.zeros((8, 16, 3), dtype=np.uint16)  # RGB order: class id in the first channel
    raw[:, :4, 0] = 3  # road
    raw[:, 4:8, 0] = 8  # car
    raw[:, 8:12, 0] = 16  # terrain: not a SYNTHIA-16 class
    raw[:, 12:, 0] = 21  # wall
    raw[..., 1] = 7  # instance channel, must be ignored
    _png(tmp_path / "GT/LABELS/0000000.png", cv2.cvtColor(raw, cv2.COLOR_RGB2BGR))
    ds = synthia(tmp_path)
    _, label = ds[0]
    assert label[0, :4].eq(L.ROAD).all() and label[0, 4:8].eq(L.CAR).all()
    assert label[0, 8:12].eq(L.IGNORE).all() and label[0, 12:].eq(L.WALL).all()
    assert ds.classes == L.CLASS_SETS["synthia-16"]


def test_a_dataset_file_that_holds_no_image_says_what_it_holds(tmp_path: Path) -> None:
    """A dataset cloned without git-lfs holds pointer files, and a scripted download may
    save a web page: the error says so, naming the file, where OpenCV and Pillow only failed."""
    data = cityscapes(cityscapes_folder(tmp_path / "cs", images=1, size=(16, 32)))
    image, label = data.pairs[0]
    image.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0f\nsize 9\n")
    label.write_bytes(b"<!DOCTYPE html><html><body>Please sign in</body></html>")
    with pytest.raises(LwmmError) as e:
        data[0]
    assert str(e.value) == (
        f"{image}: not a readable image (it is a Git LFS pointer, not an image; fetch the "
        "files with `git lfs pull`)"
    )
    image.write_bytes(cv2.imencode(".png", np.zeros((16, 32, 3), np.uint8))[1].tobytes())
    with pytest.raises(
        LwmmError,
        match=rf"{label.name}: not a readable label image \(it is a "
        "web page, not an image: the download fetched a page",
    ):
        data[0]


def test_missing_or_malformed_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(LwmmError, match=r"Cityscapes root .*nowhere' is not a directory"):
        cityscapes(tmp_path / "nowhere")
    (tmp_path / "cs/leftImg8bit/val/aachen").mkdir(parents=True)
    with pytest.raises(LwmmError, match=r"gtFine/val' is missing \(expected gtFine/<split>/<city>"):
        cityscapes(tmp_path / "cs")
    (tmp_path / "cs/gtFine/val").mkdir(parents=True)
    with pytest.raises(LwmmError, match=r"no images matching \*/\*_leftImg8bit.png"):
        cityscapes(tmp_path / "cs")
    _png(tmp_path / "cs/leftImg8bit/val/aachen/a_leftImg8bit.png", _image())
    with pytest.raises(
        LwmmError, match=r"no label for .*a_leftImg8bit.png': expected .*a_gtFine_labelIds.png"
    ):
        cityscapes(tmp_path / "cs")
    with pytest.raises(LwmmError, match=r"'.*GT/LABELS' is missing"):
        (tmp_path / "sy/RGB").mkdir(parents=True)
        synthia(tmp_path / "sy")
    _png(tmp_path / "gta/labels/1.png", np.zeros((8, 16), np.uint8))
    (tmp_path / "gta/images").mkdir(parents=True)
    (tmp_path / "gta/images/1.png").write_bytes(b"not a png")
    with pytest.raises(LwmmError, match=r"1.png: not a readable image"):
        gta5(tmp_path / "gta")[0]
