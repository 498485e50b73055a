"""The COCO protocol end to end on the two COCO images with ground truth that equiadapt 0.1.2 ships (sample_data.pt),
with a stand-in SAM: the figures are meaningless, the path is the real one."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from canon.cli import main
from canon.coco import evaluate_coco
from canon.maskio import encode_rle
from canon.segmenter import EquivariantSegmenter
from test_convert import WHEEL


@pytest.fixture(scope="module")
def coco_sample(tmp_path_factory):
    """Write sample_data.pt as a COCO dataset: images/*.png and instances.json with RLE ground truth."""
    assert WHEEL.exists(), f"{WHEEL.name} is missing: run `make setup`"
    with zipfile.ZipFile(WHEEL) as wheel:
        images, targets = torch.load(io.BytesIO(wheel.read("tutorials/images/utils/sample_data.pt")),
                                     map_location="cpu", weights_only=True)
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    dataset = {"images": [], "annotations": [], "categories": []}
    for index, (image, target) in enumerate(zip(images, targets)):
        name = f"{index:012d}.png"
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / name)
        dataset["images"].append({"id": index + 1, "file_name": name, "height": pixels.shape[0],
                                  "width": pixels.shape[1]})
        for box, mask, label in zip(target["boxes"].tolist(), target["masks"].numpy(), target["labels"].tolist()):
            x0, y0, x1, y1 = box
            dataset["annotations"].append({
                "id": len(dataset["annotations"]) + 1, "image_id": index + 1, "category_id": label,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(mask.sum()), "iscrowd": 0,
                "segmentation": encode_rle(mask.astype(bool))})
    dataset["categories"] = [{"id": c, "name": str(c)} for c in
                             sorted({a["category_id"] for a in dataset["annotations"]})]
    (root / "instances.json").write_text(json.dumps(dataset))
    return root


def test_protocol_scores_both_paths_at_every_rotation(coco_sample, paper_canonicalizer, standin_backend):
    summary = evaluate_coco(EquivariantSegmenter(paper_canonicalizer, standin_backend),
                            coco_sample / "instances.json", coco_sample / "images", progress=False)
    assert summary["n_images"] == 2 and summary["n_instances"] == 5
    for path in ("sam", "canonicalized"):
        assert set(summary[path]) == {"0", "90", "180", "270", "mean"}
        assert all(0.0 <= v <= 1.0 for v in summary[path].values())
        assert summary[path]["mean"] == pytest.approx(np.mean([summary[path][a] for a in ("0", "90", "180", "270")]))
    # Exact equivariance: the canonicalized path scores the same at every rotation.
    assert len({summary["canonicalized"][a] for a in ("0", "90", "180", "270")}) == 1


def test_ground_truth_masks_score_perfectly(coco_sample):
    """The scorer itself: feeding the ground truth back as detections gives mAP 1 (so a 0 would be a real 0)."""
    from canon.coco import _segm_map
    from pycocotools.coco import COCO

    ground_truth = COCO(str(coco_sample / "instances.json"))
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                   "score": 1.0} for a in ground_truth.dataset["annotations"]]
    assert _segm_map(ground_truth, ground_truth.getImgIds(), detections) == pytest.approx(1.0)


def test_cli(coco_sample, standin_sam_path, tmp_path, capsys):
    code = main(["evaluate", "coco", "--annotations", str(coco_sample / "instances.json"), "--images",
                 str(coco_sample / "images"), "--sam", str(standin_sam_path), "--max-images", "1",
                 "--device", "cpu", "--json", str(tmp_path / "coco.json")])
    assert code == 0
    assert json.loads((tmp_path / "coco.json").read_text())["n_images"] == 1
    assert "| SAM + canonicalizer |" in capsys.readouterr().out
