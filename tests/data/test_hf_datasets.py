"""``hf-dataset:DIR``: save_to_disk datasets of images, arrays or text, splits, columns, errors, the CLI."""

from __future__ import annotations

import json
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import fcpts
from fcpts.data.images import load_imagefolder
from fcpts.data.specs import DATA_SPECS, load_data
from fcpts.data.text import load_text
from tests.helpers import FACTORY_TOTAL, load_factory

IMAGE_FEATURES = datasets.Features(
    {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"]), "name": datasets.Value("string")}
)


def gray(value: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.fromarray(np.full(size, value, np.uint8))


def save_images(path, values, labels):
    rows = {"image": [gray(v) for v in values], "label": labels, "name": [f"f{v}.png" for v in values]}
    datasets.Dataset.from_dict(rows, features=IMAGE_FEATURES).save_to_disk(str(path))
    return path


def toy_tokenizer(texts, padding, truncation, max_length, return_tensors):
    """One token per word (its length), right-padded with 0 to the longest text, cut at ``max_length``."""
    ids = [[len(w) for w in t.split()][:max_length] for t in texts]
    n = max(map(len, ids))
    ids = torch.tensor([row + [0] * (n - len(row)) for row in ids])
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


# --- images ----------------------------------------------------------------------------------------------


def test_image_dataset_exact_pixels_and_labels(tmp_path):
    d = save_images(tmp_path / "ds", [0, 51, 102, 255], [2, 0, 1, 1])
    data = load_data(f"hf-dataset:{d}")
    assert data.name == f"hf-dataset:{d}"
    x, y = data.calibration.x, data.calibration.y
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32  # the string column 'name' is not the input
    assert torch.equal(x.amax(dim=(1, 2, 3)), torch.tensor([0.0, 51, 102, 255]) / 255)
    assert bool((x == x[:, :, :1, :1]).all())  # every image is flat
    assert y.tolist() == [2, 0, 1, 1] and y.dtype == torch.int64
    assert data.evaluation is data.calibration


def test_image_preprocessing_is_imagefolders(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    labels = [1, 0, 1]
    rows = {"image": [Image.fromarray(p) for p in pixels], "label": labels, "name": ["x", "y", "z"]}
    datasets.Dataset.from_dict(rows, features=IMAGE_FEATURES).save_to_disk(str(tmp_path / "ds"))
    for i, (p, label) in enumerate(zip(pixels, labels, strict=True)):
        (tmp_path / "folder" / "ab"[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(tmp_path / "folder" / "ab"[label] / f"{i}.png")
    options = {"image_size": 6, "channels": 3, "crop": 4, "normalize": "imagenet"}
    ours = load_data(f"hf-dataset:{tmp_path / 'ds'}", **options).calibration
    folder = load_imagefolder(tmp_path / "folder", **options).calibration
    assert ours.x.shape == (3, 3, 4, 4)
    order = [1, 0, 2]  # imagefolder sorts by class: a/1.png, then b/0.png, b/2.png
    assert torch.equal(ours.x[order], folder.x)
    assert torch.equal(ours.y[order], folder.y)
    gray_x = load_data(f"hf-dataset:{tmp_path / 'ds'}", channels=1).calibration.x
    assert gray_x.shape == (3, 1, 10, 12)


def test_image_arrays_by_column_name(tmp_path):
    hwc = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    datasets.Dataset.from_dict({"pixel_values": list(hwc), "labels": [4, 7]}).save_to_disk(str(tmp_path / "u8"))
    split = load_data(f"hf-dataset:{tmp_path / 'u8'}").calibration
    assert split.x.shape == (2, 3, 4, 5)
    assert torch.equal(split.x, torch.from_numpy(hwc).permute(0, 3, 1, 2).float() / 255)
    assert split.y.tolist() == [4, 7]
    # Float arrays are model-ready (N, C, H, W): used as they are.
    chw = np.linspace(-1, 1, 2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    datasets.Dataset.from_dict({"img": list(chw)}).save_to_disk(str(tmp_path / "f"))
    split = load_data(f"hf-dataset:{tmp_path / 'f'}").calibration
    assert torch.equal(split.x, torch.from_numpy(chw)) and split.y is None
    with pytest.raises(fcpts.FcptsError, match="float image arrays are used as they are"):
        load_data(f"hf-dataset:{tmp_path / 'f'}", image_size=4)
    datasets.Dataset.from_dict({"image": [np.full((2, 2), 300)]}).save_to_disk(str(tmp_path / "big"))
    with pytest.raises(fcpts.FcptsError, match=r"integers in \[0, 255\]"):
        load_data(f"hf-dataset:{tmp_path / 'big'}")


# --- text ------------------------------------------------------------------------------------------------


def test_text_dataset_is_tokenised_like_a_text_file(tmp_path):
    sentences = ["the cat sat", "  ", "a dog", "hello brave new world"]
    rows = {"idx": ["0", "1", "2", "3", "4"], "sentence": [*sentences, None], "label": [1, 0, 0, 1, 0]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "lines.txt").write_text("\n".join(sentences) + "\n")
    data = load_data(f"hf-dataset:{tmp_path / 'ds'}", tokenizer=toy_tokenizer, max_length=3)
    x = data.calibration.x
    assert x["input_ids"].tolist() == [
        [3, 3, 3],
        [1, 3, 0],
        [5, 5, 3],
    ]  # blank and missing rows skipped; 4 words cut to 3
    assert x["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]
    assert data.calibration.y.tolist() == [1, 0, 1]  # labels stay with their rows
    from_file = load_text(tmp_path / "lines.txt", toy_tokenizer, max_length=3).calibration.x
    assert all(torch.equal(x[k], from_file[k]) for k in from_file) and x.keys() == from_file.keys()
    # A loader is called only when the data is text; an image dataset never calls it.
    calls = []
    load_data(f"hf-dataset:{tmp_path / 'ds'}", tokenizer_loader=lambda: calls.append(1) or toy_tokenizer)
    save_images(tmp_path / "img", [1, 2], [0, 1])
    load_data(f"hf-dataset:{tmp_path / 'img'}", tokenizer_loader=lambda: calls.append(2) or toy_tokenizer)
    assert calls == [1]
    with pytest.raises(fcpts.FcptsError, match="needs a model with a tokenizer"):
        load_data(f"hf-dataset:{tmp_path / 'ds'}")


# --- splits, labels, columns ------------------------------------------------------------------------------


def test_dataset_dict_splits(tmp_path):
    train = datasets.Dataset.from_dict({"image": [gray(10), gray(20), gray(30)], "label": [0, 1, 2]})
    test = datasets.Dataset.from_dict({"image": [gray(200), gray(250)], "label": [2, 2]})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    train, test = train.cast(features), test.cast(features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "tt"))
    data = load_data(f"hf-dataset:{tmp_path / 'tt'}")
    assert data.calibration.y.tolist() == [0, 1, 2] and data.evaluation.y.tolist() == [2, 2]
    assert torch.equal(data.evaluation.x[:, 0, 0, 0], torch.tensor([200.0, 250]) / 255)
    swapped = load_data(f"hf-dataset:{tmp_path / 'tt'}", split="test", eval_split="train")
    assert swapped.calibration.y.tolist() == [2, 2] and swapped.evaluation.y.tolist() == [0, 1, 2]
    with pytest.raises(fcpts.FcptsError, match=r"no split 'dev' \(splits: train, test\); pass --split NAME"):
        load_data(f"hf-dataset:{tmp_path / 'tt'}", split="dev")
    # validation is the evaluation split when there is no test split; a lone split serves both.
    datasets.DatasetDict({"train": train, "validation": test}).save_to_disk(str(tmp_path / "tv"))
    assert load_data(f"hf-dataset:{tmp_path / 'tv'}").evaluation.y.tolist() == [2, 2]
    datasets.DatasetDict({"all": test}).save_to_disk(str(tmp_path / "one"))
    one = load_data(f"hf-dataset:{tmp_path / 'one'}")
    assert one.calibration is one.evaluation and one.calibration.y.tolist() == [2, 2]
    # ClassLabel's -1 marks unlabelled rows (e.g. GLUE test splits): no labels for that split.
    unlabelled = test.cast(datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])}))
    unlabelled = unlabelled.map(lambda row: {"label": -1})
    datasets.DatasetDict({"train": train, "test": unlabelled}).save_to_disk(str(tmp_path / "nolabels"))
    data = load_data(f"hf-dataset:{tmp_path / 'nolabels'}")
    assert data.evaluation.y is None and data.calibration.y.tolist() == [0, 1, 2]
    save_images(tmp_path / "single", [1], [0])
    with pytest.raises(fcpts.FcptsError, match="single Dataset"):
        load_data(f"hf-dataset:{tmp_path / 'single'}", split="train")


def test_column_choice_and_overrides(tmp_path):
    rows = {"a": ["x y", "z"], "b": ["one", "two three"], "target": [3, 4], "label": ["p", "q"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "two"))
    spec = f"hf-dataset:{tmp_path / 'two'}"
    with pytest.raises(fcpts.FcptsError, match=r"several text columns \(a, b, label\); pick one with --text-column"):
        load_data(spec, tokenizer=toy_tokenizer)
    data = load_data(spec, tokenizer=toy_tokenizer, text_column="b", label_column="target")
    assert data.calibration.x["input_ids"].tolist() == [[3, 0], [3, 5]]
    assert data.calibration.y.tolist() == [3, 4]
    assert load_data(spec, tokenizer=toy_tokenizer, text_column="a").calibration.y is None  # string labels: none
    with pytest.raises(fcpts.FcptsError, match="label column 'label' is not ClassLabel or integers"):
        load_data(spec, tokenizer=toy_tokenizer, text_column="a", label_column="label")
    with pytest.raises(fcpts.FcptsError, match=r"no column 'c' \(--text-column\); columns: a, b, target, label"):
        load_data(spec, text_column="c")
    with pytest.raises(fcpts.FcptsError, match="not both"):
        load_data(spec, text_column="a", image_column="b")
    both = datasets.Features({"front": datasets.Image(), "back": datasets.Image()})
    datasets.Dataset.from_dict({"front": [gray(1)], "back": [gray(2)]}, features=both).save_to_disk(
        str(tmp_path / "2i")
    )
    with pytest.raises(fcpts.FcptsError, match=r"several image columns \(front, back\)"):
        load_data(f"hf-dataset:{tmp_path / '2i'}")
    assert (
        load_data(f"hf-dataset:{tmp_path / '2i'}", image_column="back").calibration.x[0, 0, 0, 0]
        == torch.tensor(2.0) / 255
    )


# --- errors ------------------------------------------------------------------------------------------


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(fcpts.FcptsError, match="hf-dataset directory not found"):
        load_data(f"hf-dataset:{tmp_path / 'missing'}")
    with pytest.raises(fcpts.FcptsError, match=r"cannot read .* as a save_to_disk dataset"):
        load_data(f"hf-dataset:{tmp_path}")
    datasets.Dataset.from_dict({"n": [1, 2], "m": [0.5, 0.25]}).save_to_disk(str(tmp_path / "numbers"))
    with pytest.raises(fcpts.FcptsError, match=r"no image column .* and no text column .*\(n, m\)"):
        load_data(f"hf-dataset:{tmp_path / 'numbers'}")
    with pytest.raises(fcpts.FcptsError) as info:
        load_data("hf-dataset:")
    assert "'hf-dataset:DIR'" in str(info.value) and "'imagefolder:DIR'" in str(info.value)
    assert set(DATA_SPECS) >= {"fashion-mnist", "npz", "imagefolder", "text", "hf-dataset"}
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the extra were not installed
    with pytest.raises(fcpts.FcptsError, match=r"pip install 'fcpts\[hf-datasets\]'"):
        load_data(f"hf-dataset:{tmp_path / 'numbers'}")


# --- the CLI -----------------------------------------------------------------------------------------


def test_prune_with_an_hf_dataset(run_cli, model_file, tmp_path):
    rng = np.random.default_rng(0)
    pixels, labels = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), rng.integers(0, 10, 40)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels], "label": labels}, features)
    datasets.DatasetDict({"train": ds.select(range(30)), "test": ds.select(range(30, 40))}).save_to_disk(
        str(tmp_path / "ds")
    )
    out = tmp_path / "out"
    args = ["prune", "--model", f"{model_file}:factory", "--data", f"hf-dataset:{tmp_path / 'ds'}"]
    code, stdout, stderr = run_cli(*args, "--sparsity", "0.6", "--out", out, "--iters", "5", "--no-progress")
    assert code == 0, stderr
    k = round(0.6 * FACTORY_TOTAL)
    assert f"global sparsity  {k / FACTORY_TOTAL:.6f} ({k} of {FACTORY_TOTAL} weights zero)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["zeros"] == k and report["data_spec"] == f"hf-dataset:{tmp_path / 'ds'}"
    assert report["calibration_samples"] == 30 and report["evaluation_samples"] == 10
    # Evaluation ran on the test split: the report's accuracies are those of its 10 images.
    model, dense = load_factory(model_file), load_factory(model_file)
    model.load_state_dict(load_file(out / "model.safetensors"))
    x, y = torch.from_numpy(pixels[30:]).float().div(255).unsqueeze(1), torch.from_numpy(labels[30:])
    assert report["dense_accuracy"] == fcpts.accuracy(dense, x, y)
    assert report["sparse_accuracy"] == fcpts.accuracy(model, x, y)
    assert sum(int((m.weight == 0).sum()) for _, m in fcpts.prunable_layers(model)) == k
    # Text data with a model that has no tokenizer: one clear error.
    datasets.Dataset.from_dict({"text": ["a b", "c"]}).save_to_disk(str(tmp_path / "text"))
    code, _, stderr = run_cli(
        *args[:-1], f"hf-dataset:{tmp_path / 'text'}", "--sparsity", "0.6", "--out", tmp_path / "o2"
    )
    assert code == 2 and "holds text: it needs a model with a tokenizer" in stderr
    # An embedding model (a dict without logits) gets fidelity, not a top-1 from the argmax of its embeddings.
    (tmp_path / "embedder.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Embed(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        torch.manual_seed(0)\n"
        "        self.fc = nn.Linear(64, 10)\n\n"
        "    def forward(self, x):\n        return {'sentence_embedding': self.fc(x.flatten(1))}\n"
    )
    embed = ["prune", "--model", f"{tmp_path / 'embedder.py'}:Embed", "--data", f"hf-dataset:{tmp_path / 'ds'}"]
    code, stdout, stderr = run_cli(
        *embed, "--sparsity", "0.5", "--out", tmp_path / "o3", "--iters", "2", "--no-progress"
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "o3" / "report.json").read_text())
    assert report["dense_accuracy"] is None and report["sparse_accuracy"] is None and "top-1" not in stdout
    assert report["fidelity"]["recall_at_1"] >= 0 and "fidelity" in stdout
