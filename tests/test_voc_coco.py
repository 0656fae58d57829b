"""VOC-2007 and MS-COCO 2014 readers, their schemes, the info CLI and the real-image transforms,
on tiny trees in the real file formats (VOC XML with difficult flags, COCO instances JSON)."""
import json
import os

import pytest
import torch
from PIL import Image

from indeed_ext.recipes.data import info
from indeed_ext.recipes.data.coco import COCO2014, read_coco2014
from indeed_ext.recipes.data.images import Cutout, MultiLabelImages, eval_transform, scheme_indices, train_transform
from indeed_ext.recipes.data.voc import VOC2007, VOC_CLASSES, find_voc2007

VOC_ORDER = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

# id -> objects (class name, difficult flag; None: no <difficult> element, which counts as 0)
VOC_TRAINVAL = {
    "000001": [("dog", 0)],
    "000002": [("dog", 0), ("person", 0)],
    "000003": [("cat", 0), ("cat", 0)],  # one distinct class
    "000004": [("person", 0), ("chair", 1)],  # multi-label only when difficult objects count
    "000005": [("bottle", 1)],  # only a difficult object: all-zero target by default
    "000006": [("aeroplane", None), ("tvmonitor", 0), ("sofa", 0)],
}
VOC_TEST = {
    "000007": [("horse", 0)],
    "000008": [("horse", 0), ("person", 0)],
    "000009": [("sheep", 1), ("sheep", 0)],
    "000010": [("car", 1), ("bus", 0)],
}
VOC_COUNTS = {"train": {"all": 6, "split": 2}, "test": {"single": 3, "entire": 4}}
VOC_COUNTS_DIFFICULT = {"train": {"all": 6, "split": 3}, "test": {"single": 2, "entire": 4}}


def write_jpeg(path, size=(40, 30), colour=(200, 30, 60)):
    Image.new("RGB", size, colour).save(path, format="JPEG")


def voc_xml(image_id, objects):
    parts = [f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
             "<size><width>40</width><height>30</height><depth>3</depth></size>"]  # fmt: skip
    for name, difficult in objects:
        flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(f"<object><name> {name}\n</name><pose>Unspecified</pose><truncated>0</truncated>{flag}"
                     "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>")  # fmt: skip
    return "".join(parts) + "</annotation>"


def write_voc_tree(root, trainval: dict, test: dict, colour=lambda image_id: (200, 30, 60)):
    """ROOT/VOCdevkit/VOC2007 with the images {id: [(class, difficult), ...]} of trainval and test."""
    voc = root / "VOCdevkit" / "VOC2007"
    for part in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / part).mkdir(parents=True)
    for image_set, images in (("trainval", trainval), ("test", test)):
        (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))
        for image_id, objects in images.items():
            (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, objects))
            write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", colour=colour(image_id))
    return root


@pytest.fixture
def voc_root(tmp_path):
    return write_voc_tree(tmp_path, VOC_TRAINVAL, VOC_TEST)


# COCO: categories listed out of id order with gaps; image 7 and image 6 have no annotations.
COCO_CATEGORIES = [(90, "toothbrush"), (1, "person"), (3, "car"), (18, "dog")]
COCO_ORDER = ["person", "car", "dog", "toothbrush"]
COCO_IMAGES = {
    "train2014": {10: [1, 3], 5: [18, 18], 7: [], 3: [1, 90]},
    "val2014": {2: [3], 4: [1, 18], 6: [], 8: [90]},
}
COCO_COUNTS = {"train": {"all": 3, "split": 2}, "test": {"single": 2, "entire": 3}}
COCO_COUNTS_UNANNOTATED = {"train": {"all": 4, "split": 2}, "test": {"single": 2, "entire": 4}}


@pytest.fixture
def coco_root(tmp_path):
    (tmp_path / "annotations").mkdir()
    annotation_id = 0
    for subset, images in COCO_IMAGES.items():
        (tmp_path / subset).mkdir()
        instances = {"info": {}, "licenses": [], "images": [], "annotations": [],
                     "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in COCO_CATEGORIES]}  # fmt: skip
        for image_id, category_ids in images.items():
            file_name = f"COCO_{subset}_{image_id:012d}.jpg"
            write_jpeg(tmp_path / subset / file_name, size=(32, 48))
            instances["images"].append({"id": image_id, "file_name": file_name, "width": 32, "height": 48})
            for category_id in category_ids:
                annotation_id += 1
                instances["annotations"].append({"id": annotation_id, "image_id": image_id, "category_id": category_id,
                                                 "iscrowd": int(category_id == 1 and image_id == 3), "bbox": [0, 0, 4, 4]})  # fmt: skip
        (tmp_path / "annotations" / f"instances_{subset}.json").write_text(json.dumps(instances))
    return tmp_path


def positives(dataset, index):
    return {dataset.class_names[k] for k in dataset.targets[index].nonzero().flatten().tolist()}


# ----------------------------------------------------------------------------- VOC
def test_voc_class_order():
    assert list(VOC_CLASSES) == VOC_ORDER


@pytest.mark.parametrize("below", ["", "VOCdevkit", "VOCdevkit/VOC2007"])
def test_voc_root_forms(voc_root, below):
    assert find_voc2007(str(voc_root / below)) == str(voc_root / "VOCdevkit" / "VOC2007")
    assert len(VOC2007(str(voc_root / below), "entire")) == 4


@pytest.mark.parametrize("use_difficult, counts", [(False, VOC_COUNTS), (True, VOC_COUNTS_DIFFICULT)])
def test_voc_scheme_counts(voc_root, use_difficult, counts):
    for subset in counts.values():
        for scheme, n in subset.items():
            dataset = VOC2007(str(voc_root), scheme, use_difficult=use_difficult)
            assert len(dataset) == len(dataset.image_ids) == len(dataset.paths) == n, scheme


def test_voc_targets_and_ids(voc_root):
    train = VOC2007(str(voc_root), "all")
    assert train.image_ids == list(VOC_TRAINVAL) and train.num_classes == 20 and train.class_names == VOC_CLASSES
    expected = [{"dog"}, {"dog", "person"}, {"cat"}, {"person"}, set(), {"aeroplane", "tvmonitor", "sofa"}]
    assert [positives(train, i) for i in range(len(train))] == expected
    assert VOC2007(str(voc_root), "split").image_ids == ["000002", "000006"]
    assert VOC2007(str(voc_root), "single").image_ids == ["000007", "000009", "000010"]
    with_difficult = VOC2007(str(voc_root), "all", use_difficult=True)
    assert positives(with_difficult, 3) == {"person", "chair"} and positives(with_difficult, 4) == {"bottle"}


def test_voc_item(voc_root):
    dataset = VOC2007(str(voc_root), "split", transform=eval_transform(16))
    image, target = dataset[1]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert target.dtype == torch.float32 and target.shape == (20,)
    assert target.tolist() == [float(name in {"aeroplane", "tvmonitor", "sofa"}) for name in VOC_ORDER]


def test_voc_errors(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    with pytest.raises(FileNotFoundError, match="VOCdevkit/VOC2007/Annotations"):
        VOC2007(str(voc_root / "nowhere"))
    with pytest.raises(ValueError, match="scheme"):
        VOC2007(str(voc_root), "train")
    os.remove(voc / "JPEGImages" / "000008.jpg")
    with pytest.raises(FileNotFoundError, match="000008.jpg"):
        VOC2007(str(voc_root), "entire")
    assert len(VOC2007(str(voc_root), "single")) == 3  # the missing image is not in this scheme
    os.remove(voc / "Annotations" / "000003.xml")
    with pytest.raises(FileNotFoundError, match="000003.xml"):
        VOC2007(str(voc_root), "all")
    (voc / "Annotations" / "000003.xml").write_text(voc_xml("000003", [("kitten", 0)]))
    with pytest.raises(ValueError, match="kitten"):
        VOC2007(str(voc_root), "all")
    os.remove(voc / "ImageSets" / "Main" / "test.txt")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        VOC2007(str(voc_root), "entire")


# ----------------------------------------------------------------------------- COCO
def test_coco_classes_and_targets(coco_root):
    image_ids, file_names, targets, class_names = read_coco2014(str(coco_root), "train2014")
    assert list(class_names) == COCO_ORDER
    assert image_ids == [3, 5, 10] and file_names[0] == "COCO_train2014_000000000003.jpg"
    assert targets.tolist() == [[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 0, 0]]  # crowd counts; duplicates collapse
    kept = read_coco2014(str(coco_root), "train2014", keep_unannotated=True)
    assert kept[0] == [3, 5, 7, 10] and kept[2][2].sum() == 0


@pytest.mark.parametrize("keep_unannotated, counts", [(False, COCO_COUNTS), (True, COCO_COUNTS_UNANNOTATED)])
def test_coco_scheme_counts(coco_root, keep_unannotated, counts):
    for subset in counts.values():
        for scheme, n in subset.items():
            dataset = COCO2014(str(coco_root), scheme, keep_unannotated=keep_unannotated)
            assert len(dataset) == n and dataset.num_classes == 4, scheme
    assert COCO2014(str(coco_root), "split").image_ids == [3, 10]
    assert COCO2014(str(coco_root), "single").image_ids == [2, 8]


def test_coco_item(coco_root):
    dataset = COCO2014(str(coco_root), "entire", transform=train_transform(24))
    image, target = dataset[1]  # image 4: person + dog
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert target.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_coco_errors(coco_root):
    with pytest.raises(FileNotFoundError, match="instances_train2014.json"):
        COCO2014(str(coco_root / "nowhere"))
    os.remove(coco_root / "val2014" / "COCO_val2014_000000000008.jpg")
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000008.jpg"):
        COCO2014(str(coco_root), "single")
    (coco_root / "annotations" / "instances_train2014.json").write_text("{\"images\": []")
    with pytest.raises(ValueError, match="not valid JSON"):
        COCO2014(str(coco_root), "all")
    (coco_root / "annotations" / "instances_train2014.json").write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="annotations"):
        COCO2014(str(coco_root), "all")


# ----------------------------------------------------------------------------- info CLI
@pytest.mark.parametrize(
    "dataset, flag, counts",
    [
        ("voc2007", None, VOC_COUNTS),
        ("voc2007", "--use-difficult", VOC_COUNTS_DIFFICULT),
        ("coco2014", None, COCO_COUNTS),
        ("coco2014", "--keep-unannotated", COCO_COUNTS_UNANNOTATED),
    ],
)
def test_info_cli(request, capsys, dataset, flag, counts):
    root = request.getfixturevalue("voc_root" if dataset == "voc2007" else "coco_root")
    assert info.main(["--dataset", dataset, "--root", str(root)] + ([flag] if flag else [])) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out) == counts


def test_info_cli_reports_missing_files(voc_root, capsys):
    os.remove(voc_root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg")
    assert info.main(["--dataset", "voc2007", "--root", str(voc_root)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "000002.jpg" in captured.err


# ----------------------------------------------------------------------------- shared pieces
def test_scheme_indices():
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float32)
    assert scheme_indices(targets, "split") == [1, 4]
    assert scheme_indices(targets, "single") == [0, 3]
    assert scheme_indices(targets, "all") == scheme_indices(targets, "entire") == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="scheme"):
        scheme_indices(targets, "multi")


def test_multilabel_images_checks_lengths():
    with pytest.raises(ValueError, match="differ"):
        MultiLabelImages(["a.jpg"], torch.zeros(2, 3), ["x", "y", "z"], [1, 2])
    with pytest.raises(ValueError, match="class names"):
        MultiLabelImages(["a.jpg"], torch.zeros(1, 3), ["x", "y"], [1])


def test_eval_transform_squishes_and_normalises():
    picture = Image.new("RGB", (50, 20), (255, 0, 51))
    unnormalised = eval_transform((12, 8), mean=None, std=None)(picture)
    assert unnormalised.shape == (3, 12, 8)
    torch.testing.assert_close(unnormalised, torch.tensor([1.0, 0.0, 0.2]).view(3, 1, 1).expand(3, 12, 8))
    normalised = eval_transform(10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))(picture)
    torch.testing.assert_close(normalised, torch.tensor([1.0, -2.0, -0.6]).view(3, 1, 1).expand(3, 10, 10))
    with pytest.raises(ValueError, match="mean and std"):
        eval_transform(10, mean=(0.5,), std=None)
    with pytest.raises(ValueError, match="image size"):
        eval_transform(0)


def test_train_transform_is_seeded_by_torch():
    picture = Image.effect_noise((40, 30), 50).convert("RGB")
    transform = train_transform(20)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(transform(picture))
    assert outputs[0].shape == (3, 20, 20)
    torch.testing.assert_close(outputs[0], outputs[1])


def test_cutout_fills_one_rectangle_with_one_colour():
    torch.manual_seed(0)
    for _ in range(20):
        image = torch.full((3, 20, 16), 7, dtype=torch.uint8)
        out = Cutout(0.5)(image)
        changed = (out != image).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        assert 0 < rows.numel() <= 10 and 0 < cols.numel() <= 8  # seeded: no fill colour equals 7 in all channels
        assert changed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
        assert changed.sum() == rows.numel() * cols.numel()
        assert out[:, changed].unique(dim=1).shape[1] == 1
    with pytest.raises(TypeError, match="uint8"):
        Cutout(0.5)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="fraction"):
        Cutout(1.5)


# ----------------------------------------------------------------------------- Singh et al.'s evaluation
# dog and person co-occur in 3 of their 4 training images each, cat and sofa in 1 of 2; the test set holds
# exclusive and co-occur images of both pairs.
BIAS_TRAINVAL = {
    "000101": [("dog", 0), ("person", 0)], "000102": [("dog", 0), ("person", 0)], "000103": [("dog", 0), ("person", 0)],
    "000104": [("dog", 0)], "000105": [("person", 0)], "000106": [("cat", 0)], "000107": [("cat", 0), ("sofa", 0)],
    "000108": [("sofa", 0)],
}  # fmt: skip
BIAS_TEST = {
    "000201": [("dog", 0)], "000202": [("dog", 0), ("person", 0)], "000203": [("person", 0)], "000204": [("cat", 0)],
    "000205": [("sofa", 0), ("cat", 0)], "000206": [("horse", 0)], "000207": [("person", 0), ("horse", 0)],
}  # fmt: skip


def _colour(image_id):  # images that differ, so that the scores do
    k = int(image_id)
    return (k * 37 % 256, k * 91 % 256, k * 13 % 256)


def _test_scores(checkpoint, dataset):
    from indeed_ext.recipes.engine import load_model

    model, _ = load_model(str(checkpoint))
    with torch.no_grad():
        return torch.sigmoid(model(torch.stack([dataset[i][0] for i in range(len(dataset))])))


def test_exclusive_cooccur_evaluation_through_indeed_train(tmp_path):
    """--method both on VOC: the baseline's training-set scores rank the pairs for both models, each model's
    exclusive / co-occur APs are the metric's on its test scores; --bias-model CHECKPOINT ranks the same."""
    from indeed_ext.metrics import biased_pairs_by_scores, exclusive_cooccur_ap
    from indeed_ext.recipes import train

    root = write_voc_tree(tmp_path / "data", BIAS_TRAINVAL, BIAS_TEST, colour=_colour)
    common = ["--dataset", "voc2007", "--root", str(root), "--image-size", "32", "--batch-size", "4", "--epochs", "1",
              "--device", "cpu", "--quiet", "--backend", "reference"]  # fmt: skip
    assert train.main([*common, "--method", "both", "--out", str(tmp_path / "both")]) == 0
    results = json.loads((tmp_path / "both" / "results.json").read_text())
    train_set = VOC2007(str(root), "all", transform=eval_transform(32))
    baseline_train = _test_scores(tmp_path / "both" / "baseline" / "checkpoint.pt", train_set)
    pairs, bias = biased_pairs_by_scores(baseline_train, train_set.targets)
    test_set = VOC2007(str(root), "entire", transform=eval_transform(32))
    for r in results:
        evaluation = r["exclusive_cooccur"]
        assert evaluation["ranking"].startswith("the bias of this run's baseline on the training images")
        assert [(p["b"], p["c"]) for p in evaluation["pairs"]] == [(VOC_CLASSES[b], VOC_CLASSES[c]) for b, c in pairs.tolist()]
        assert [p["strength"] for p in evaluation["pairs"]] == pytest.approx(bias.tolist(), rel=1e-4)
        scores = _test_scores(tmp_path / "both" / r["name"] / "checkpoint.pt", test_set)
        exclusive, cooccur, n_exclusive, n_cooccur = exclusive_cooccur_ap(scores, test_set.targets, pairs)
        for key, expected in (("exclusive_ap", exclusive), ("cooccur_ap", cooccur)):
            ours = [p[key] for p in evaluation["pairs"]]
            assert [v is None for v in ours] == expected.isnan().tolist()  # no such test image: null in the JSON
            assert [v for v in ours if v is not None] == pytest.approx(expected[~expected.isnan()].tolist(), abs=1e-3)
        assert [(p["exclusive_images"], p["cooccur_images"]) for p in evaluation["pairs"]] == list(zip(n_exclusive.tolist(), n_cooccur.tolist()))
        assert evaluation["exclusive_mAP"] == pytest.approx(exclusive.nanmean().item(), abs=1e-3)
    assert {tuple(sorted(p)) for p in pairs.tolist()} <= {(11, 14), (7, 17)}  # dog-person and cat-sofa
    table = (tmp_path / "both" / "table.md").read_text()
    assert "Exclusive / co-occur AP (%) of Singh et al." in table and "| Baseline: exclusive | co-occur | INDeeD (Min-max): exclusive" in table

    checkpoint = str(tmp_path / "both" / "baseline" / "checkpoint.pt")
    assert train.main([*common, "--method", "indeed", "--bias-model", checkpoint, "--out", str(tmp_path / "model")]) == 0
    (result,) = json.loads((tmp_path / "model" / "results.json").read_text())
    assert result["exclusive_cooccur"]["ranking"].startswith(f"the bias of {checkpoint}")
    assert result["exclusive_cooccur"]["pairs"] == results[1]["exclusive_cooccur"]["pairs"]  # the same INDeeD model, the same pairs


def test_exclusive_cooccur_evaluation_by_annotations_on_coco(coco_root, tmp_path):
    """Without a baseline the training annotations rank the pairs: person's most co-occurring class is car (a tie
    with toothbrush, the lower index first), whose co-occur AP has no test image here (n/a)."""
    from indeed_ext.recipes import train

    argv = ["--dataset", "coco2014", "--root", str(coco_root), "--image-size", "16", "--batch-size", "2", "--epochs", "1",
            "--device", "cpu", "--quiet", "--backend", "reference", "--method", "indeed", "--out", str(tmp_path)]  # fmt: skip
    assert train.main(argv) == 0
    (result,) = json.loads((tmp_path / "results.json").read_text())
    evaluation = result["exclusive_cooccur"]
    assert evaluation["ranking"] == "annotation co-occurrence: P(c | b) of the training labels"
    (pair,) = evaluation["pairs"]
    assert (pair["b"], pair["c"], pair["strength"]) == ("person", "car", 0.5)
    assert (pair["exclusive_images"], pair["cooccur_images"]) == (1, 0) and pair["cooccur_ap"] is None
    test_set = COCO2014(str(coco_root), "entire", transform=eval_transform(16))  # images 2 (car), 4 (person, dog), 8
    person = _test_scores(tmp_path / "indeed-minmax" / "checkpoint.pt", test_set)[:, 0]
    # One positive: 1 / its rank, ties counted at once (the fixture's images are all alike).
    assert pair["exclusive_ap"] == pytest.approx(100 / int((person >= person[1]).sum()), abs=1e-3)
    assert evaluation["cooccur_mAP"] is None and "| person | car | 0.50 | 1 / 0 |" in (tmp_path / "table.md").read_text()
