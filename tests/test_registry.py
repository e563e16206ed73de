"""The one Registry type behind every plug-in kind: lookups, registration, exact error messages."""

from __future__ import annotations

import re

import pytest

import fcpts
from fcpts.core.allocation import ALLOCATIONS
from fcpts.core.importance import IMPORTANCES
from fcpts.data.images import NORMALIZATIONS
from fcpts.data.specs import DATA_SPECS
from fcpts.deploy.export import FORMATS
from fcpts.deploy.sparse_inference import KERNELS
from fcpts.method.bridge import BANDWIDTH_RULES, DENSITIES, kde_cdf, kde_terms
from fcpts.method.losses import RECONSTRUCTION_LOSSES
from fcpts.models.specs import ALIASES, BUILTIN_MODELS, MODEL_SPECS
from fcpts.registry import Registry

#: Every registry of the package: (registry, its kind, the built-in names).
BUILTIN = {
    "ALLOCATIONS": (ALLOCATIONS, "allocation", ["erk", "global", "lamp", "owl", "uniform"]),
    "IMPORTANCES": (IMPORTANCES, "importance", ["magnitude", "wanda"]),
    "METHODS": (
        fcpts.METHODS,
        "method",
        [
            "erk-magnitude",
            "fcpts",
            "global-magnitude",
            "lamp-magnitude",
            "owl-wanda",
            "pot",
            "sparsegpt",
            "uniform-magnitude",
            "wanda",
        ],
    ),
    "MODEL_SPECS": (MODEL_SPECS, "model spec prefix", ["hf", "timm", "torchvision"]),
    "BUILTIN_MODELS": (
        BUILTIN_MODELS,
        "built-in model",
        ["efficientnet_lite1", "efficientnet_lite2", "refcnn", "refdet", "refmobile", "refvit"],
    ),
    "ALIASES": (ALIASES, "model alias", ["minilm"]),
    "DATA_SPECS": (
        DATA_SPECS,
        "data spec",
        ["coco", "fashion-mnist", "hf-dataset", "imagefolder", "npz", "text", "voc"],
    ),
    "FORMATS": (FORMATS, "export format", ["compressed", "compressed-tensors", "dense", "onnx"]),
    "KERNELS": (KERNELS, "sparse kernel", ["cpu-block", "cpu-sparse", "csr", "semi-structured"]),
    "BANDWIDTH_RULES": (BANDWIDTH_RULES, "bandwidth rule", ["scott", "silverman"]),
    "DENSITIES": (DENSITIES, "density", ["histogram", "kde"]),
    "RECONSTRUCTION_LOSSES": (RECONSTRUCTION_LOSSES, "loss", ["cosine", "detection", "kl", "mse"]),
    "NORMALIZATIONS": (NORMALIZATIONS, "normalization", ["imagenet", "inception"]),
}


@pytest.fixture
def colours() -> Registry[tuple[int, int, int]]:
    registry: Registry[tuple[int, int, int]] = Registry("colour")
    registry.register("red", (255, 0, 0))
    registry.register("green", (0, 255, 0))
    return registry


def test_register_lookup_and_views(colours):
    assert colours.register("blue", (0, 0, 255)) == (0, 0, 255)  # returns the item
    assert colours["red"] == colours.get("red") == (255, 0, 0)
    assert "green" in colours and "purple" not in colours and 3 not in colours
    assert colours.names() == ["blue", "green", "red"]  # sorted
    assert list(colours) == ["red", "green", "blue"]  # registration order
    assert colours.items() == [("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))]
    assert colours.values() == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert len(colours) == 3
    assert repr(colours) == "Registry('colour': red, green, blue)"


def test_register_as_a_decorator_returns_the_function(colours):
    @colours.register("black")
    def black() -> tuple[int, int, int]:
        return (0, 0, 0)

    assert black() == (0, 0, 0)  # the decorated name still is the function
    assert colours["black"] is black


def test_registering_again_replaces_and_keeps_the_position(colours):
    colours.register("red", (200, 0, 0))
    assert colours["red"] == (200, 0, 0)
    assert list(colours) == ["red", "green"] and len(colours) == 2


def test_unregister(colours):
    colours.unregister("red")
    assert "red" not in colours and colours.names() == ["green"]
    with pytest.raises(fcpts.FcptsError, match=r"^unknown colour 'red'; choose from green$"):
        colours.unregister("red")


def test_unknown_names_raise_one_fcpts_error_naming_the_kind_and_the_choices(colours):
    for lookup in (colours.get, colours.__getitem__):
        with pytest.raises(fcpts.FcptsError, match=r"^unknown colour 'purple'; choose from green, red$") as info:
            lookup("purple")
        assert isinstance(info.value, ValueError)  # FcptsError is a ValueError
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no KeyError chained
    with pytest.raises(fcpts.FcptsError, match=r"^unknown colour \['red'\]; choose from green, red$"):
        colours.get(["red"])  # an unhashable name is an unknown name, not a TypeError
    with pytest.raises(fcpts.FcptsError, match=r"^unknown colour 'red'; choose from $"):
        Registry("colour").get("red")


def test_a_registry_is_read_only_apart_from_register(colours):
    with pytest.raises(TypeError):
        colours["white"] = (255, 255, 255)  # type: ignore[index]
    with pytest.raises((TypeError, AttributeError)):
        del colours["red"]  # type: ignore[attr-defined]
    assert colours.names() == ["green", "red"]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_package_registry_is_a_registry_with_its_builtins(name):
    registry, kind, names = BUILTIN[name]
    assert isinstance(registry, Registry)
    assert registry.kind == kind
    assert registry.names() == sorted(names)
    message = f"unknown {kind} 'nope'; choose from {', '.join(sorted(names))}"
    with pytest.raises(fcpts.FcptsError, match=f"^{re.escape(message)}$"):
        registry["nope"]


def test_package_level_names_are_the_same_registries():
    assert fcpts.ALLOCATIONS is ALLOCATIONS and fcpts.IMPORTANCES is IMPORTANCES
    assert fcpts.data.DATA_SPECS is DATA_SPECS and fcpts.deploy.FORMATS is FORMATS
    assert fcpts.models.BUILTIN_MODELS is BUILTIN_MODELS


def test_densities_replace_the_cdf_tables():
    assert DENSITIES["kde"].cdf is kde_cdf and DENSITIES["kde"].terms is kde_terms
    assert callable(DENSITIES["histogram"].cdf) and callable(DENSITIES["histogram"].terms)


def test_builtin_weights_are_packaged():
    path = BUILTIN_MODELS["refcnn"].weights_path()
    assert path.parts[-3:] == ("models", "weights", "refcnn_fashion_mnist.safetensors")
    assert path.is_file() and path.stat().st_size > 0


def test_allocate_of_an_unknown_name():
    with pytest.raises(
        fcpts.FcptsError, match=r"^unknown allocation 'nope'; choose from erk, global, lamp, owl, uniform$"
    ):
        fcpts.allocate("nope", [], 0.5)


def test_a_registered_plugin_is_used_and_unregistered(tiny_net, calib_x):
    @fcpts.register_allocation("first-layer-dense")
    def first_dense(weights, target):
        # All the zeros in the layers after the first, as far as they hold them.
        total, rest = sum(w.numel() for w in weights), sum(w.numel() for w in weights[1:])
        return [0.0] + [min(1.0, target * total / rest)] * (len(weights) - 1)

    try:
        config = fcpts.FCPTSConfig(target_sparsity=0.5, init="first-layer-dense", iters=2, learn_thresholds=False)
        result = fcpts.prune(tiny_net, calib_x, config)
        assert result.layers[0].zeros == 0
        assert result.zeros == round(0.5 * result.numel)
    finally:
        ALLOCATIONS.unregister("first-layer-dense")
    assert "first-layer-dense" not in ALLOCATIONS
