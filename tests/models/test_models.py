"""The model registry, user factories, and checkpoint reading with its errors."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from ravn.errors import RavnError
from ravn.models import MODELS, ModelRef, count_parameters, load_model, read_state_dict
from ravn.models.resnet_cifar import CifarResNet, resnet20, resnet32
from ravn.settings import data_root

FACTORY_MODULE = "ravn_test_tiny_factory"


# the registry


@pytest.mark.parametrize(
    ("name", "params"),
    [("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586), ("resnet56", 853_018)],
)
def test_registry_builds_models_with_published_parameter_counts(name, params):
    model = ModelRef.parse(name).build()
    assert isinstance(model, CifarResNet)
    assert count_parameters(model) == params
    assert not model.training


def test_resnet_forward_and_num_classes():
    ref = ModelRef.parse("resnet20", num_classes=100)
    assert ref.kwargs == {"num_classes": 100}
    model = ref.build()
    assert count_parameters(model) == 269_722 - 650 + 6_500  # Linear(64, 10) -> Linear(64, 100)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21)


def test_state_dict_names_match_the_published_checkpoints():
    names = list(resnet20().state_dict())
    assert names[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer3.2.bn2.running_var" in names and "linear.bias" in names
    assert not any("shortcut" in n for n in names)  # option-A shortcuts have no parameters


def test_model_ref_round_trips_through_a_dict():
    ref = ModelRef.parse("resnet32", num_classes=7, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    again = ModelRef.from_dict(ref.to_dict())
    assert again == ref
    assert again.normalize.mean == (0.5, 0.5, 0.5)
    assert ModelRef.parse("resnet56").mean == MODELS["resnet56"].mean


@pytest.mark.parametrize("name", ["resnet18", "ResNet20", "", "resnet"])
def test_unknown_model_name(name):
    with pytest.raises(RavnError, match=f"unknown model '{name}'") as info:
        ModelRef.parse(name)
    assert "resnet20" in str(info.value) and "package.module:function" in str(info.value)


def test_registry_model_without_any_weights(monkeypatch):
    monkeypatch.setattr("ravn.models.data_root", lambda required=True: None)
    with pytest.raises(RavnError, match="no weights for resnet20"):
        load_model(ModelRef.parse("resnet20"))


# user factories


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / f"{FACTORY_MODULE}.py").write_text(textwrap.dedent("""
        from torch import nn


        def tiny(num_classes=3):
            return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))


        def not_a_model():
            return 42


        def broken():
            raise RuntimeError("boom")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield FACTORY_MODULE
    sys.modules.pop(FACTORY_MODULE, None)


def test_user_factory_without_weights(factory_module):
    ref = ModelRef.parse(f"{factory_module}:tiny")
    assert ref.name == ref.factory == f"{factory_module}:tiny"
    model = load_model(ref)
    assert isinstance(model, torch.nn.Sequential) and not model.training
    assert model(torch.zeros(2, 3, 2, 2)).shape == (2, 3)


def test_user_factory_with_a_state_dict(factory_module, tmp_path):
    weights = {"1.weight": torch.full((3, 12), 0.25), "1.bias": torch.tensor([1.0, 2.0, 3.0])}
    path = tmp_path / "tiny.pt"
    torch.save(weights, path)
    model = load_model(ModelRef.parse(f"{factory_module}:tiny"), path)
    assert torch.equal(model[1].weight, weights["1.weight"])
    assert torch.equal(model[1].bias, weights["1.bias"])
    assert not model.training
    torch.testing.assert_close(model(torch.ones(1, 12)), torch.tensor([[4.0, 5.0, 6.0]]))


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("missing", "cannot import model factory"),
        ("not_a_model", "returned int, not a torch.nn.Module"),
        ("broken", "failed: boom"),
    ],
)
def test_bad_user_factory(factory_module, attr, message):
    with pytest.raises(RavnError, match=message):
        ModelRef.parse(f"{factory_module}:{attr}").build()


@pytest.mark.parametrize("factory", ["no_such_pkg_xyz.models:net", ":net", ".relative:net", "os:"])
def test_factory_that_cannot_be_imported(factory):
    with pytest.raises(RavnError, match=f"cannot import model factory '{factory}'"):
        load_model(ModelRef.parse(factory))


# checkpoints


@pytest.fixture(scope="module")
def resnet20_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    torch.save(resnet20().state_dict(), path)
    return path.read_bytes()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(RavnError, match=r"checkpoint .*nope\.th does not exist"):
        read_state_dict(tmp_path / "nope.th")


def test_empty_checkpoint(tmp_path):
    path = tmp_path / "empty.th"
    path.touch()
    with pytest.raises(RavnError, match=r"checkpoint .*empty\.th is empty"):
        load_model(ModelRef.parse("resnet20"), path)


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"definitely not a pytorch checkpoint\n" * 20)
    with pytest.raises(RavnError, match=r"cannot read checkpoint .*junk\.pth") as info:
        read_state_dict(path)
    assert "corrupt, truncated or not a PyTorch checkpoint" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.01])
def test_truncated_checkpoint(tmp_path, resnet20_bytes, keep):
    path = tmp_path / "cut.th"
    path.write_bytes(resnet20_bytes[: int(len(resnet20_bytes) * keep)])
    with pytest.raises(RavnError, match=r"cannot read checkpoint .*cut\.th") as info:
        load_model(ModelRef.parse("resnet20"), path)
    assert "\n" not in str(info.value)


class _Pickled(torch.nn.Linear):
    """A class a whole-model pickle names: loading it would import and run this module's code."""


def test_a_whole_pickled_model_is_refused_unpickled(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save(_Pickled(2, 2), path)
    ran = []
    monkeypatch.setattr(_Pickled, "__setstate__", lambda self, state: ran.append(state), raising=False)
    with pytest.raises(RavnError, match=r"holds a pickled (tests\.models\.)?test_models\._Pickled, not only tensors: "
                                        r"ravn never unpickles.*torch\.save\(model\.state_dict\(\), path\)"):
        read_state_dict(path)
    assert not ran


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "best_prec1": 91.0}, path)
    with pytest.raises(RavnError, match=r"holds no state dict of tensors \(its keys: epoch, best_prec1\)"):
        read_state_dict(path)


def test_the_one_dict_of_tensors_beside_training_state_is_read(tmp_path):
    state = resnet20().state_dict()
    optimizer = torch.optim.SGD(resnet20().parameters(), lr=0.1, momentum=0.9).state_dict()
    path = tmp_path / "train_state.pt"
    torch.save({"epoch": 3, "model_state": state, "optimizer_state": optimizer}, path)
    assert list(read_state_dict(path)) == list(state)
    torch.save({"epoch": 3, "a": state, "b": state}, path)  # two candidates: no guess
    with pytest.raises(RavnError, match=r"its keys: epoch, a, b"):
        read_state_dict(path)


@pytest.mark.parametrize("outer", ["_orig_mod.", "model.", "model._orig_mod.", "module._orig_mod."])
def test_keys_under_an_outer_name_load(tmp_path, outer):
    """torch.compile's ``_orig_mod.``, a Lightning module's attribute: read without it when the rest fits."""
    torch.manual_seed(2)
    state = resnet20().state_dict()
    path = tmp_path / "outer.pt"
    torch.save({"state_dict": {outer + k: v for k, v in state.items()}}, path)
    model = load_model(ModelRef.parse("resnet20"), path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_an_outer_name_that_leaves_a_mismatch_is_not_dropped(tmp_path):
    path = tmp_path / "outer32.pt"
    torch.save({f"model.{k}": v for k, v in resnet32().state_dict().items()}, path)
    with pytest.raises(RavnError, match=r"unexpected keys: model\.conv1\.weight"):
        load_model(ModelRef.parse("resnet20"), path)


def test_smaller_architecture_weights_name_missing_keys(tmp_path, resnet20_bytes):
    path = tmp_path / "r20.th"
    path.write_bytes(resnet20_bytes)
    with pytest.raises(RavnError, match="does not fit the model") as info:
        load_model(ModelRef.parse("resnet32"), path)
    message = str(info.value)
    assert "missing keys: layer1.3.conv1.weight" in message
    assert "unexpected keys" not in message
    assert "pick the --model" in message


def test_larger_architecture_weights_name_unexpected_keys(tmp_path):
    path = tmp_path / "r32.th"
    torch.save(resnet32().state_dict(), path)
    with pytest.raises(RavnError, match="does not fit the model") as info:
        load_model(ModelRef.parse("resnet20"), path)
    message = str(info.value)
    assert "unexpected keys: layer1.3.conv1.weight" in message
    assert "missing keys" not in message
    assert "more" in message  # a long list is shortened


def test_wrong_number_of_classes_names_the_shape_mismatch(tmp_path):
    path = tmp_path / "r20_100.th"
    torch.save(resnet20(num_classes=100).state_dict(), path)
    with pytest.raises(RavnError, match=r"shape mismatch: linear\.weight \(100, 64\) vs \(10, 64\)"):
        load_model(ModelRef.parse("resnet20"), path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight(tmp_path, bad):
    state = resnet20().state_dict()
    state["layer2.1.conv2.weight"][0, 0, 1, 1] = bad
    path = tmp_path / "diverged.th"
    torch.save(state, path)
    with pytest.raises(RavnError, match=r"NaN or infinite values in 'layer2\.1\.conv2\.weight'"):
        read_state_dict(path)


def test_module_prefix_is_stripped_and_state_dict_wrapper_unwrapped(tmp_path):
    torch.manual_seed(1)
    state = resnet20().state_dict()
    path = tmp_path / "wrapped.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 91.0}, path)
    read = read_state_dict(path)
    assert list(read) == list(state)
    model = load_model(ModelRef.parse("resnet20"), path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_raw_state_dict_loads_exactly(tmp_path, resnet20_bytes):
    path = tmp_path / "raw.th"
    path.write_bytes(resnet20_bytes)
    torch.manual_seed(0)
    expected = resnet20().state_dict()  # the same seed as the bytes
    model = load_model(ModelRef.parse("resnet20"), str(path))
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_published_resnet20_checkpoint():
    root = data_root(required=False)
    path = None if root is None else root / "weights" / "akamaster_cifar10" / "resnet20-12fca82f.th"
    if path is None or not path.is_file():
        pytest.skip("shared data root with weights/akamaster_cifar10/resnet20-12fca82f.th not found (set RAVN_DATA)")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"])
    model = load_model(ModelRef.parse("resnet20"), path)
    assert count_parameters(model) == 269_722
    state = model.state_dict()
    for key, tensor in raw["state_dict"].items():
        assert torch.equal(state[key.removeprefix("module.")], tensor), key
    default = load_model(ModelRef.parse("resnet20"))  # the registry's default checkpoint is the same file
    assert torch.equal(default.linear.weight, model.linear.weight)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_normalisation_and_input_size_from_the_reference_or_arguments(factory_module):
    ref = ModelRef.parse("resnet20", mean=(0.5, 0.5, 0.5), std=[0.25, 0.25, 0.25], input_size=224)
    assert ref.mean == (0.5, 0.5, 0.5) and ref.std == (0.25, 0.25, 0.25)
    assert ref.input_size == 32  # a registered model keeps its own input size
    user = ModelRef.parse(f"{factory_module}:tiny", std=(1.0, 2.0, 3.0), input_size=224)
    assert user.mean == ModelRef.parse("resnet20").mean and user.std == (1.0, 2.0, 3.0) and user.input_size == 224
    assert ModelRef.from_dict(user.to_dict()) == user


@pytest.mark.parametrize(("mean", "std"), [((0.5, 0.5), None), (None, (0.2, 0.0, 0.2)), ((float("nan"),) * 3, None)])
def test_bad_normalisation_is_a_ravn_error(mean, std):
    with pytest.raises(RavnError, match=r"normalisation mean .* --mean and --std"):
        ModelRef.parse("resnet20", mean=mean, std=std)
