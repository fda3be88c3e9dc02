"""Pretrained teachers: timm weights from a local file (timm's own pretrained_cfg_overlay=dict(file=...)),
torchvision state dicts (tv:NAME, and timm's resnet18 that shares their keys), the weights' normalisation
used and recorded, class maps, the offline errors of --pretrained, and `hald relabel / lvsd / teacher`
with them. Every weights file is written here; nothing is downloaded (the hub is offline)."""
import argparse
import json
import urllib.error

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from hald_ext.cli import main
from hald_ext.data import load_image_set
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD
from hald_ext.labels import LabelStore
from hald_ext.labels.relabel import relabel
from hald_ext.labels.relabel_teacher import load_teachers
from hald_ext.labels.relabel_teacher import teacher_weight_specs
from hald_ext.models import ClassSubset, create_model, for_classes, pretrained_model
from hald_ext.models.pretrained import class_index
from hald_ext.train.synthetic import color_blobs

HALF = [0.5, 0.5, 0.5]  # timm's test_resnet.r160_in1k normalisation (not ImageNet's)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No download can happen: the Hugging Face hub in offline mode, torch.hub's cache in tmp_path."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """color-blob images (4 classes c0..c3, 16 x 16), a timm test_resnet's 1000-class weights as
    safetensors, a torchvision resnet18 state dict of 4 classes, and a class map file."""
    root = tmp_path_factory.mktemp("pretrained")
    data = color_blobs(3, seed=0)
    np.savez(root / "data.npz", images=data.stacked(), labels=data.labels, classes=np.asarray(data.classes))
    torch.manual_seed(0)
    t = timm.create_model("test_resnet", pretrained=False)
    save_file(t.state_dict(), str(root / "test_resnet.safetensors"))
    tv = torchvision.models.resnet18(num_classes=4)
    torch.save(tv.state_dict(), root / "tv_resnet18.pth")
    (root / "map.txt").write_text("c2 7\nc0 3\n# a comment\nc3 999\nc1 0\n")
    return root


def relabel_cli(files, out, *teacher, extra=()):
    return main(["relabel", str(files / "data.npz"), "-o", str(out), "--k", "3", "--size", "16",
                 "--batch-size", "6", "--no-progress", *teacher, *extra])


def test_timm_file_is_loaded_by_timm_with_its_normalisation(files):
    m = pretrained_model("test_resnet", file=str(files / "test_resnet.safetensors"))
    ref = timm.create_model("test_resnet", pretrained=False)
    from safetensors.torch import load_file

    ref.load_state_dict(load_file(str(files / "test_resnet.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m.eval()(x), ref.eval()(x))
    assert m.hald_normalization == (tuple(HALF), tuple(HALF))
    rec = m.hald_pretrained
    assert rec["source"] == "timm-file" and rec["num_classes"] == 1000 and rec["mean"] == HALF
    assert rec["file"].endswith("test_resnet.safetensors") and rec["tag"] == "r160_in1k"


def test_relabel_with_a_pretrained_file_and_a_class_map(files, tmp_path, capsys):
    out = tmp_path / "l.safetensors"
    assert relabel_cli(files, out, "--model", "test_resnet", "--pretrained-file", str(files / "test_resnet.safetensors"),
                       extra=["--class-map", str(files / "map.txt")]) == 0, capsys.readouterr().err
    store = LabelStore.open(str(out), validate=False)
    rec = store.header.teacher["pretrained"]
    assert rec["source"] == "timm-file" and rec["class_index"] == [3, 0, 7, 999] and rec["mean"] == HALF
    assert store.header.crops["mean"] == HALF and store.header.crops["std"] == HALF
    # The same labels from the weights loaded by hand, read at the mapped outputs, crops normalised
    # with the weights' own mean / std (taken from the model's pretrained_cfg by relabel).
    net = timm.create_model("test_resnet", pretrained=False)
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(files / "test_resnet.safetensors")))

    class Mapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.pretrained_cfg = net.pretrained_cfg

        def forward(self, x):
            return self.net(x)[:, [3, 0, 7, 999]]

    api = relabel(load_image_set(str(files / "data.npz")), Mapped(), str(tmp_path / "api.safetensors"), k=3,
                  size=16, batch_size=6, progress=False, device="cpu")
    assert torch.equal(api.topk_ids, store.topk_ids) and torch.equal(api.codes, store.codes)


def test_a_class_count_that_differs_is_refused_without_a_map(files, tmp_path, capsys):
    out = tmp_path / "l.safetensors"
    assert relabel_cli(files, out, "--model", "test_resnet", "--pretrained-file",
                       str(files / "test_resnet.safetensors")) == 2
    err = capsys.readouterr().err
    assert "'test_resnet' has 1000 classes" in err and "the data 4" in err and "--class-map" in err
    assert not out.exists()


def test_torchvision_state_dict_loads_as_tv_model_and_as_timm_resnet18(files, tmp_path, capsys):
    """torchvision's resnet18 state dict: by name tv:resnet18, and into timm's resnet18 (same keys);
    both give the same labels, normalised with ImageNet's constants."""
    sd = str(files / "tv_resnet18.pth")
    tv, tm = tmp_path / "tv.safetensors", tmp_path / "timm.safetensors"
    assert relabel_cli(files, tv, "--model", "tv:resnet18", "--pretrained-file", sd, extra=["--teacher-bn", "eval"]) == 0
    assert relabel_cli(files, tm, "--model", "resnet18", "--pretrained-file", sd, extra=["--teacher-bn", "eval"]) == 0
    a, b = (LabelStore.open(str(p), validate=False) for p in (tv, tm))
    assert a.header.teacher["pretrained"]["source"] == "torchvision-file"
    assert b.header.teacher["pretrained"]["source"] == "timm-file"
    assert a.header.crops["mean"] == list(IMAGENET_MEAN) and a.header.crops["std"] == list(IMAGENET_STD)
    assert a.header.teacher["checkpoint_sha256"] == b.header.teacher["checkpoint_sha256"]  # the file's digest
    assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.codes, b.codes)  # one network, two implementations
    # a file that is not that model's: an error naming file and model
    capsys.readouterr()
    assert relabel_cli(files, tmp_path / "x.safetensors", "--model", "tv:resnet34", "--pretrained-file", sd) == 2
    err = capsys.readouterr().err
    assert "tv_resnet18.pth" in err and "'resnet34'" in err


def test_offline_pretrained_is_a_clear_error(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "l.safetensors"
    assert relabel_cli(files, out, "--model", "test_resnet", "--pretrained", extra=["--class-map", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "timm model 'test_resnet'" in err and "timm/test_resnet.r160_in1k" in err and "HF_HUB_OFFLINE" in err
    assert "--pretrained-file" in err and not out.exists()

    import torchvision.models._api as tv_api

    def no_network(url, *a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    assert relabel_cli(files, out, "--model", "tv:resnet18", "--pretrained") == 2
    err = capsys.readouterr().err
    assert "torchvision model 'resnet18'" in err and "resnet18-f37072fd.pth" in err and "--pretrained-file" in err


def test_pretrained_uses_a_cached_copy_offline(files, tmp_path, monkeypatch):
    """--pretrained without network: timm finds the hub's file in the Hugging Face cache, torchvision its
    DEFAULT weights in torch.hub's cache (both written here)."""
    import huggingface_hub.constants
    from safetensors.torch import load_file

    snap = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    (snap / "snapshots" / "r0").mkdir(parents=True)
    (snap / "refs").mkdir()
    (snap / "refs" / "main").write_text("r0")
    src = str(files / "test_resnet.safetensors")
    (snap / "snapshots" / "r0" / "model.safetensors").write_bytes(open(src, "rb").read())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    m = pretrained_model("test_resnet")
    assert m.hald_pretrained["source"] == "timm-hub" and m.hald_pretrained["hub"] == "timm/test_resnet.r160_in1k"
    assert torch.equal(m.state_dict()["fc.weight"], load_file(src)["fc.weight"])

    ckpts = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), ckpts / "resnet18-f37072fd.pth")
    m = pretrained_model("tv:resnet18")
    rec = m.hald_pretrained
    assert rec["source"] == "torchvision" and rec["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert rec["mean"] == list(IMAGENET_MEAN) and rec["num_classes"] == 1000 and rec["input_size"] == 224
    assert torch.equal(m.fc.weight, tv.fc.weight)


def test_weights_options_pair_with_models_in_order(files):
    from hald_ext.commands import relabel as relabel_mod

    p = argparse.ArgumentParser()
    relabel_mod.add_arguments(p)
    args = p.parse_args(["x", "-o", "y", "--model", "a", "--pretrained-file", "f", "--model", "b", "--checkpoint", "c",
                         "--model", "d", "--pretrained"])
    assert teacher_weight_specs(args) == [("pretrained-file", "f"), ("checkpoint", "c"), ("pretrained", None)]
    assert args.checkpoint == ["c"]  # --checkpoint keeps its list (sweeps pass it)
    with pytest.raises(ValueError, match="'b' has no weights"):
        load_teachers(["a", "b"], [("pretrained-file", "f")], 4, 16)
    with pytest.raises(ValueError, match="2 weights options .* for 1 --model"):
        load_teachers(["a"], [("pretrained", None), ("checkpoint", "c")], 4, 16)
    # an ensemble of a timm file teacher (0.5 normalisation) and a torchvision one (ImageNet's) is refused
    ens = load_teachers(["test_resnet", "tv:resnet18"], [("pretrained-file", str(files / "test_resnet.safetensors")),
                                                         ("pretrained-file", str(files / "tv_resnet18.pth"))],
                        4, 16, ["c0", "c1", "c2", "c3"], str(files / "map.txt"))
    assert isinstance(ens[0], ClassSubset) and not isinstance(ens[1], ClassSubset)
    with pytest.raises(ValueError, match="different input normalisations"):
        relabel(load_image_set(str(files / "data.npz")), ens, str(files / "never.safetensors"), size=16, k=3,
                progress=False, device="cpu")


def test_class_maps(tmp_path):
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo().label_names()
    assert class_index("imagenet", [wnids[5], wnids[2]], 1000).tolist() == [5, 2]
    with pytest.raises(ValueError, match="not ImageNet-1k wnids"):
        class_index("imagenet", ["cat", "dog"], 1000)
    with pytest.raises(ValueError, match="1000 ImageNet-1k classes; this one has 10"):
        class_index("imagenet", [wnids[0]], 10)
    f = tmp_path / "m.txt"
    f.write_text("4\n1\n")
    assert class_index(str(f), ["a", "b"], 5).tolist() == [4, 1]
    with pytest.raises(ValueError, match="outside the teacher's 4 classes"):
        class_index(str(f), ["a", "b"], 4)
    with pytest.raises(ValueError, match="2 lines for the data's 3 classes"):
        class_index(str(f), ["a", "b", "c"], 5)
    f.write_text("a 1\nb 1\n")
    with pytest.raises(ValueError, match="same teacher class"):
        class_index(str(f), ["a", "b"], 5)
    f.write_text("a 1\n")
    with pytest.raises(ValueError, match="missing"):
        class_index(str(f), ["a", "b"], 5)
    with pytest.raises(FileNotFoundError, match="--class-map nope"):
        class_index("nope", ["a"], 5)
    m = nn.Linear(3, 6)
    m.num_classes = 6
    f.write_text("5\n0\n")
    sub = for_classes(m, ["a", "b"], str(f))
    x = torch.randn(2, 3)
    assert torch.equal(sub(x), m(x)[:, [5, 0]])


def test_lvsd_with_a_pretrained_teacher(files, tmp_path, capsys):
    out = tmp_path / "lvsd.json"
    assert main(["lvsd", "--data", str(files / "data.npz"), "--model", "test_resnet", "--pretrained-file",
                 str(files / "test_resnet.safetensors"), "--class-map", str(files / "map.txt"), "--size", "16",
                 "--crops", "3", "--out", str(out)]) == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["teacher_weights"]["source"] == "timm-file" and res["teacher_weights"]["class_index"] == [3, 0, 7, 999]
    assert len(res["trace_sigma"]) == 12 and all(t >= 0 for t in res["trace_sigma"])
    capsys.readouterr()
    assert main(["lvsd", "--data", str(files / "data.npz"), "--pretrained-file", "x.pth", "--crops", "3"]) == 2
    assert "need --model" in capsys.readouterr().err
    assert main(["lvsd", "--data", str(files / "data.npz"), "--model", "test_resnet", "--pretrained-file",
                 str(files / "test_resnet.safetensors"), "--crops", "3"]) == 2
    assert "has 1000 classes" in capsys.readouterr().err


def test_teacher_fine_tunes_from_a_pretrained_file(files, tmp_path, capsys):
    """`hald teacher --pretrained-file`: the backbone starts from the file (lr 0 leaves it there), a new
    4-class head replaces the 1000-class one, and the weights' normalisation is recorded."""
    out = tmp_path / "t.pth"
    assert main(["teacher", "--data", str(files / "data.npz"), "--model", "test_resnet", "--pretrained-file",
                 str(files / "test_resnet.safetensors"), "--img-size", "16", "--epochs", "1", "--batch-size", "12",
                 "--lr", "0", "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    state = torch.load(out, weights_only=True)
    assert state["mean"] == HALF and state["std"] == HALF and state["model"]["fc.weight"].shape[0] == 4
    from safetensors.torch import load_file

    src = load_file(str(files / "test_resnet.safetensors"))
    params = [k for k in src if k in dict(timm.create_model("test_resnet").named_parameters()) and not k.startswith("fc.")]
    assert params and all(torch.equal(state["model"][k], src[k]) for k in params)
    # and relabel takes the fine-tuned teacher as a --checkpoint, with its recorded normalisation
    assert relabel_cli(files, tmp_path / "l.safetensors", "--model", "test_resnet", "--checkpoint", str(out)) == 0
    assert LabelStore.open(str(tmp_path / "l.safetensors"), validate=False).header.crops["mean"] == HALF


def test_torchvision_fine_tune_gets_a_new_head(files):
    m = create_model("tv:resnet18", 7, pretrained_file=str(files / "tv_resnet18.pth"))
    sd = torch.load(files / "tv_resnet18.pth", weights_only=True)
    assert m.fc.out_features == 7 and torch.equal(m.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert m.hald_normalization == (IMAGENET_MEAN, IMAGENET_STD)
    assert create_model("tv:resnet18", 3).fc.out_features == 3  # torchvision by name, random weights
    with pytest.raises(ValueError, match="not a torchvision classification model"):
        create_model("tv:nope", 3)
