"""Pretrained weights: timm's (its hub, or a local file through timm's own `pretrained_cfg_overlay=
dict(file=PATH)`) and torchvision's (models named `tv:NAME`: its weights enum, or a local state dict).

    pretrained_model("resnet18")                              timm, weights from the hub (or its cache)
    pretrained_model("resnet18.a1_in1k", file="r18.safetensors")   timm, a local file of its weights
    pretrained_model("tv:resnet18", file="resnet18-f37072fd.pth")  torchvision's resnet18 state dict

A model comes with the class count of its weights (1000 for ImageNet-1k), the normalisation it was
trained with as `model.hald_normalization` (timm: the tag's `pretrained_cfg` mean / std; torchvision:
its weights' transforms, ImageNet's constants), and `model.hald_pretrained`, a record of where the
weights came from (stored in a label store's teacher record). `for_classes` fits it to a data set of C
classes: the same C, or a class map selecting the data's C outputs of the teacher's (`--class-map
imagenet`: class folders named by ImageNet wnids, n01440764 ...; or a file); anything else is an error.

Nothing here downloads in tests: with no network (or HF_HUB_OFFLINE=1) `--pretrained` fails with an
error that names the model and says to give a local file.
"""
from __future__ import annotations

import os

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD, checked

TV_PREFIX = "tv:"
OFFLINE_HINT = ("download the weights on a machine with network access and give them with --pretrained-file PATH")


def is_torchvision(name: str) -> bool:
    return name.startswith(TV_PREFIX)


def _first_lines(e: BaseException, n: int = 2, width: int = 300) -> str:
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:n] if line.strip())
    return text[:width] or type(e).__name__


# ------------------------------------------------------------------------------------------ timm
def _timm_cfg(name: str):
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: not in timm's registry (e.g. resnet18, resnet18.a1_in1k); a "
                         f"torchvision model is named tv:NAME (e.g. tv:resnet18)")
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except (RuntimeError, KeyError, ValueError):
        return None


def _unwrap_state(state):
    """The state dict inside a checkpoint, the way timm's load_state_dict finds it."""
    if isinstance(state, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                return state[key]
    return state


def _shapes_of(path: str) -> dict:
    """{key: shape} of a weights file without reading its tensors (safetensors header, or a memory
    map of a torch zip file); prefixes of DDP / torch.compile wrappers removed."""
    if path.endswith(".safetensors"):
        with safe_open(path, "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip file (legacy format): no memory map
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = _unwrap_state(state)
        if not isinstance(state, dict):
            raise ValueError(f"{path} is not a state dict (a dict of tensors)")
        shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    out = {}
    for k, s in shapes.items():
        for prefix in ("_orig_mod.", "module.", "_orig_mod."):
            k = k[len(prefix):] if k.startswith(prefix) else k
        out[k] = s
    return out


def _classes_in_file(path: str, classifier) -> int | None:
    """The output count of the classifier `classifier` (timm's pretrained_cfg name) in a weights file."""
    if classifier is None:
        return None
    classifier = classifier if isinstance(classifier, str) else classifier[0]
    shape = _shapes_of(path).get(f"{classifier}.weight")
    return int(shape[0]) if shape else None


def _timm_model(name: str, num_classes: int | None, file: str | None, **kwargs) -> nn.Module:
    """timm.create_model(name, pretrained=True) from the hub or from `file` (timm's file overlay);
    `num_classes` None keeps the weights' classifier, another count gets a new classifier (timm drops
    the pretrained one)."""
    import timm

    cfg = _timm_cfg(name)
    where = f"--pretrained-file {file}" if file else "--pretrained"
    if cfg is None and file is None:
        raise ValueError(f"timm model {name!r} has no pretrained weights of its own: give a local file with "
                         "--pretrained-file PATH")
    overlay = None
    if file is not None:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"--pretrained-file {file} (model {name!r}) does not exist")
        try:
            n_file = _classes_in_file(file, getattr(cfg, "classifier", None))
        except Exception as e:  # noqa: BLE001 - any unreadable file: say which
            raise ValueError(f"--pretrained-file {file} is not a readable weights file: {_first_lines(e)}") from None
        overlay = dict(file=file)
        if n_file is not None:
            overlay["num_classes"] = n_file
        if num_classes is None:
            num_classes = n_file
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # noqa: BLE001 - turned into one error that names the model and the source
        if file is not None:
            tv = _torchvision_hint(name)
            raise ValueError(f"{where} does not load into timm model {name!r}: {_first_lines(e)}{tv}") from None
        hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "its hub"
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise ValueError(f"--pretrained: could not get the pretrained weights of timm model {name!r} from {hub}"
                         f"{offline}: {_first_lines(e, 1)}; {OFFLINE_HINT} (timm's own file mechanism, "
                         "pretrained_cfg_overlay=dict(file=PATH))") from None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = checked(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                        where=f"timm model {name!r}: pretrained_cfg")
    model.hald_normalization = (mean, std)
    model.hald_pretrained = {"source": "timm-file" if file else "timm-hub", "model": name,
                             **({"file": os.path.abspath(file)} if file else
                                {"hub": cfg.get("hf_hub_id") or cfg.get("url")}),
                             "tag": cfg.get("tag"), "num_classes": int(_num_outputs(model)),
                             "input_size": int((cfg.get("input_size") or (3, 224, 224))[-1]),
                             "mean": list(mean), "std": list(std)}
    return model


# ----------------------------------------------------------------------------------- torchvision
def _torchvision_hint(name: str) -> str:
    import torchvision

    arch = name.split(".")[0]
    if arch not in torchvision.models.list_models(module=torchvision.models):
        return ""
    return f"; a state dict of torchvision's {arch} loads with --model {TV_PREFIX}{arch}"


def _tv_builder(name: str):
    import torchvision

    arch = name[len(TV_PREFIX):]
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown model {name!r}: {arch!r} is not a torchvision classification model "
                         "(torchvision.models.list_models())")
    return arch


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear classifier")
    return names[-1]


def _tv_model(name: str, num_classes: int | None, file: str | None) -> nn.Module:
    """A torchvision model with its DEFAULT weights (torch.hub download or $TORCH_HOME cache) or a
    state dict file; `num_classes` None keeps the weights' classifier, another count gets a new one."""
    import torchvision

    arch = _tv_builder(name)
    if file is None:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = torchvision.models.get_model(arch, weights=weights)
        except Exception as e:  # noqa: BLE001 - no network, a bad cached file ...: one error naming the model
            raise ValueError(f"--pretrained: could not get the pretrained weights of torchvision model {arch!r} from "
                             f"{weights.url}: {_first_lines(e, 1)}; {OFFLINE_HINT} (or put the file in "
                             f"{torch.hub.get_dir()}/checkpoints)") from None
        t = weights.transforms()
        mean, std = checked(t.mean, t.std, where=f"torchvision {weights}")
        source = {"source": "torchvision", "weights": str(weights), "url": weights.url,
                  "input_size": int(t.crop_size[0])}
        state = None
    else:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"--pretrained-file {file} (model {name!r}) does not exist")
        try:
            if file.endswith(".safetensors"):
                state = safetensors.torch.load_file(file)
            else:
                state = _unwrap_state(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - any unreadable file: say which
            raise ValueError(f"--pretrained-file {file} is not a readable weights file: {_first_lines(e)}") from None
        with torch.device("meta"):
            head = _last_linear(torchvision.models.get_model(arch))
        w = state.get(f"{head}.weight") if isinstance(state, dict) else None
        if w is None:
            raise ValueError(f"--pretrained-file {file} is not a state dict of torchvision's {arch} (no {head}.weight)")
        model = torchvision.models.get_model(arch, num_classes=int(w.shape[0]))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"--pretrained-file {file} does not load into torchvision model {arch!r}: "
                             f"{_first_lines(e)}") from None
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # every torchvision classification weight's transforms
        source = {"source": "torchvision-file", "file": os.path.abspath(file), "input_size": 224}
    model.hald_normalization = (tuple(mean), tuple(std))
    model.hald_pretrained = {**source, "model": name, "num_classes": int(_num_outputs(model)),
                             "mean": list(mean), "std": list(std)}
    if num_classes is not None and num_classes != _num_outputs(model):
        _new_head(model, num_classes)
    return model


def _new_head(model: nn.Module, num_classes: int) -> None:
    """Replace the last linear layer (torchvision's classifier) by a fresh one of `num_classes` outputs."""
    head = _last_linear(model)
    parent, _, leaf = head.rpartition(".")
    old = model.get_submodule(head)
    setattr(model.get_submodule(parent) if parent else model, leaf,
            nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else int(model.get_submodule(_last_linear(model)).out_features)


# ----------------------------------------------------------------------------------------- API
CLASS_MAP_HELP = ("read a pretrained teacher of another class count (ImageNet-1k's 1000) as the data's classes: "
                  "'imagenet' (class folders named by ImageNet wnids) or a file, one line per data class: INDEX or "
                  "CLASS_NAME INDEX (docs/teachers.md)")


def pretrained_model(name: str, file: str | None = None, num_classes: int | None = None, **kwargs) -> nn.Module:
    """`name` (timm, or torchvision as tv:NAME) with pretrained weights: its hub's (file None) or a
    local file's. `num_classes` None keeps the weights' classifier (a teacher); another count replaces
    it by a fresh one (fine-tuning). Errors are ValueError / FileNotFoundError naming model and file."""
    if is_torchvision(name):
        if kwargs:
            raise ValueError(f"torchvision model {name!r} takes no extra options ({', '.join(kwargs)})")
        return _tv_model(name, num_classes, file)
    return _timm_model(name, num_classes, file, **kwargs)


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    """A torchvision model (tv:NAME) with random weights."""
    import torchvision

    return torchvision.models.get_model(_tv_builder(name), num_classes=num_classes)


class ClassSubset(nn.Module):
    """A teacher of K classes read as one of the data's C: outputs `model(x)[:, index]` (index [C])."""

    def __init__(self, model: nn.Module, index: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.int64).clone())
        for attr in ("hald_normalization", "pretrained_cfg"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x):
        return self.model(x).index_select(1, self.index)


def class_index(spec: str, data_classes: list, teacher_classes: int) -> torch.Tensor:
    """int64 [C]: the teacher output of each data class. `spec` "imagenet": the data's class names are
    ImageNet-1k wnids (n01440764, ...) and the teacher's outputs are in ImageNet-1k order (timm's and
    torchvision's in1k weights); else a text file, one line per data class: `INDEX` (in the data's class
    order) or `CLASS_NAME INDEX` (any order, every class once)."""
    C = len(data_classes)
    if spec == "imagenet":
        from timm.data import ImageNetInfo

        wnids = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
        if teacher_classes != len(wnids):
            raise ValueError(f"--class-map imagenet needs a teacher of the {len(wnids)} ImageNet-1k classes; this "
                             f"one has {teacher_classes}")
        missing = [c for c in data_classes if c not in wnids]
        if missing:
            raise ValueError(f"--class-map imagenet: {len(missing)} data classes are not ImageNet-1k wnids (e.g. "
                             f"{missing[0]!r}); name the class folders n01440764 ... or give a class map file")
        index = [wnids[c] for c in data_classes]
    else:
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"--class-map {spec}: no such file (or give 'imagenet')")
        with open(spec) as f:
            rows = [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]
        try:
            if all(len(r) == 1 for r in rows):
                if len(rows) != C:
                    raise ValueError(f"{len(rows)} lines for the data's {C} classes")
                index = [int(r[0]) for r in rows]
            elif all(len(r) >= 2 for r in rows):
                named = {" ".join(r[:-1]): int(r[-1]) for r in rows}
                missing = [c for c in data_classes if c not in named]
                if missing or len(named) != len(rows):
                    raise ValueError(f"every data class once by name (missing e.g. {missing[:1]})" if missing
                                     else "a class named twice")
                index = [named[c] for c in data_classes]
            else:
                raise ValueError("mixes `INDEX` and `CLASS_NAME INDEX` lines")
        except ValueError as e:
            raise ValueError(f"--class-map {spec}: {e} (one line per data class: INDEX, or CLASS_NAME INDEX)") from None
    bad = [i for i in index if not 0 <= i < teacher_classes]
    if bad:
        raise ValueError(f"--class-map {spec}: index {bad[0]} outside the teacher's {teacher_classes} classes")
    if len(set(index)) != len(index):
        raise ValueError(f"--class-map {spec}: two data classes map to the same teacher class")
    return torch.tensor(index, dtype=torch.int64)


def for_classes(model: nn.Module, data_classes: list, class_map: str | None = None, what: str = "teacher") -> nn.Module:
    """A pretrained `model` that answers over the data's classes: itself when its class count is the
    data's (a class map is for the others), a ClassSubset through `class_map` when it has another
    count, else an error naming both counts."""
    K, C = _num_outputs(model), len(data_classes)
    rec = dict(getattr(model, "hald_pretrained", None) or {})
    if K == C:
        return model
    if class_map is None:
        raise ValueError(f"{what} {rec.get('model', type(model).__name__)!r} has {K} classes (its pretrained "
                         f"weights), the data {C}: give --class-map imagenet (class folders named by ImageNet "
                         "wnids) or --class-map FILE (the teacher class of each data class), or fine-tune it "
                         "with `hald teacher --pretrained`")
    index = class_index(class_map, list(data_classes), K)
    wrapped = ClassSubset(model, index)
    wrapped.hald_pretrained = {**rec, "class_map": class_map if class_map == "imagenet" else os.path.abspath(class_map),
                               "class_index": index.tolist()}
    return wrapped
