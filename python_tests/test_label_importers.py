"""Importers of FKD, SRe2L, LPLD and HALD soft-label files. The fixtures are written with the calls and
dtypes of the public writers (read from their code):
  FKD   FKD_SLG/generate_soft_label.py: torch.save([coords.numpy(), flip.numpy(), label_quantization(...)])
  SRe2L relabel/generate_soft_label.py + utils_fkd.py: RandomSampler(generator seeded --fkd-seed),
        torch.save([coords, flip, mix_index, mix_lam, mix_bbox, output.cpu()]) per batch
  LPLD  relabel_and_validate/generate_soft_label_pruning.py: the same + sampler_indices_epoch.json
  HALD  relabel/relabel_slc.py: sampler_indices_dict.pt and one epoch_<e>.tar list over batches
"""
import json
import os

import numpy as np
import pytest
import torch

from hald_ext.core.boxes import quantize_boxes
from hald_ext.cli import main as hald
from hald_ext.labels import LabelStore
from hald_ext.labels.importers import (ImportOrderWarning, LabelImportError, import_batches, import_fkd, read_sampler,
                                       safe_load, sre2l_order)


class Payload:
    """A pickle that runs a shell command when loaded (what a malicious label file would hold)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------ the public writers' calls
def rand_bbox(size, lam):
    """SRe2L / HALD utils_fkd.rand_bbox, call for call: numpy.int64 corners from np.clip."""
    W = size[2]
    H = size[3]
    cut_rat = np.sqrt(1. - lam)
    cut_w = int(W * cut_rat)
    cut_h = int(H * cut_rat)
    cx = np.random.randint(W)
    cy = np.random.randint(H)
    bbx1 = np.clip(cx - cut_w // 2, 0, W)
    bby1 = np.clip(cy - cut_h // 2, 0, H)
    bbx2 = np.clip(cx + cut_w // 2, 0, W)
    bby2 = np.clip(cy + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def crop_coords(g, img_h=40, img_w=52):
    """RandomResizedCropWithCoords: torch.FloatTensor((i / H, j / W, h / H, w / W))."""
    h, w = int(torch.randint(8, img_h, (1,), generator=g)), int(torch.randint(8, img_w, (1,), generator=g))
    i, j = int(torch.randint(0, img_h - h + 1, (1,), generator=g)), int(torch.randint(0, img_w - w + 1, (1,), generator=g))
    return torch.FloatTensor((i / img_h, j / img_w, h / img_h, w / img_w))


def teacher_logits(labels, C, g):
    """Stand-in teacher: the image's class plus noise (what matters here is the file layout)."""
    return torch.nn.functional.one_hot(torch.as_tensor(labels), C).float() * 4 + torch.randn(len(labels), C, generator=g)


def write_fkd(save_path, names, labels, C, num_crops=3, k=5, seed=0, half=False):
    """One file per image at <save_path>/<last three dirs>/<stem>.tar, as generate_soft_labels does.
    `half`: the teacher ran in float16, so softmax is float16 and stacking the int64 ids with it
    promotes both to float16."""
    g = torch.Generator().manual_seed(seed)
    truth = {}
    for path, lab in zip(names, labels):
        coords = torch.stack([crop_coords(g) for _ in range(num_crops)])
        flip_status = torch.tensor([bool(torch.rand(1, generator=g) < 0.5) for _ in range(num_crops)])
        logits = teacher_logits([lab] * num_crops, C, g)
        output = torch.nn.functional.softmax(logits.half() if half else logits, dim=1)
        quantized = []
        for p in output:  # label_quantization(output, 'marginal_smoothing_k5')
            order = torch.argsort(p, descending=True)
            value = p[order[:k]]
            quantized.append(torch.stack([order[:k], value], dim=0))
        output_quan = torch.stack(quantized, dim=0).detach().numpy()
        save_dir = os.path.join(save_path, "/".join(path.split("/")[-4:-1]))
        os.makedirs(save_dir, exist_ok=True)
        state = [coords.detach().numpy(), flip_status.detach().numpy(), output_quan]
        torch.save(state, os.path.join(save_dir, path.split("/")[-1].split(".")[0] + ".tar"))
        truth[path] = (coords, flip_status, output)
    return truth


def cutmix_save(images_idx, B, crop_size, alpha=1.0):
    """utils_fkd.cutmix in fkd_save mode: (rand_index, lam, [bbx1, bby1, bbx2, bby2])."""
    rand_index = torch.randperm(B)
    lam = np.random.beta(alpha, alpha)
    bbx1, bby1, bbx2, bby2 = rand_bbox((B, 3, crop_size, crop_size), lam)
    return rand_index.cpu(), lam, [bbx1, bby1, bbx2, bby2]


def write_sre2l(fkd_path, labels, C, epochs=2, batch_size=4, fkd_seed=42, use_fp16=True, mix=True, crop_size=32,
                seed=0, lpld_json=False):
    """epoch_<e>/batch_<b>.tar (SRe2L; with lpld_json also LPLD's sampler_indices_epoch.json).
    Returns {(image, epoch): (coords, flip, logits row, partner image or -1, lam, bbox)}."""
    g = torch.Generator().manual_seed(seed)
    np.random.seed(seed)
    n = len(labels)
    generator = torch.Generator()
    generator.manual_seed(fkd_seed)
    sampler = torch.utils.data.RandomSampler(range(n), generator=generator)
    batches = torch.utils.data.BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    truth, sampler_indices_dict = {}, {}
    for epoch in range(epochs):
        dir_path = os.path.join(fkd_path, "epoch_{}".format(epoch))
        os.makedirs(dir_path, exist_ok=True)
        for batch_idx, index in enumerate(batches):
            B = len(index)
            coords_status = torch.stack([crop_coords(g) for _ in index])
            flip_status = torch.tensor([bool(torch.rand(1, generator=g) < 0.5) for _ in index])
            mix_index, mix_lam, mix_bbox = cutmix_save(index, B, crop_size) if mix else (None, None, None)
            output = teacher_logits([labels[i] for i in index], C, g)
            if use_fp16:
                output = output.half()
            batch_config = [coords_status, flip_status, mix_index, mix_lam, mix_bbox, output.cpu()]
            torch.save(batch_config, os.path.join(dir_path, "batch_{}.tar".format(batch_idx)))
            sampler_indices_dict.setdefault(str(epoch), []).extend(torch.tensor(index).tolist())
            # an empty box (rand_bbox clips it to nothing) pastes nothing: the row is its own crop, weight 1
            pasted = mix and (mix_bbox[2] - mix_bbox[0]) * (mix_bbox[3] - mix_bbox[1]) > 0
            for r, i in enumerate(index):
                partner = index[int(mix_index[r])] if pasted else -1
                truth[i, epoch] = (coords_status[r], flip_status[r], output[r], partner,
                                   mix_lam if pasted else 1.0, mix_bbox)
    if lpld_json:
        with open(os.path.join(fkd_path, "sampler_indices_epoch.json"), "w") as f:
            json.dump(sampler_indices_dict, f)
    return truth


def write_hald(fkd_path, labels, C, slc=None, ipc=None, batch_size=4, fkd_seed=42, temperature=20, crop_size=32,
               seed=0):
    """relabel_slc.py: sampler_indices_dict.pt, then per epoch a list over batches saved as epoch_<e>.tar."""
    g = torch.Generator().manual_seed(seed)
    np.random.seed(seed)
    dataset_len = len(labels)
    epochs = slc // ipc
    epoch_index_info = {}
    for epoch in range(epochs):
        epoch_generator = torch.Generator()
        epoch_generator.manual_seed(fkd_seed + epoch)
        indices = torch.randperm(dataset_len, generator=epoch_generator).tolist()
        epoch_index_info[str(epoch)] = indices
    os.makedirs(fkd_path, exist_ok=True)
    torch.save(epoch_index_info, os.path.join(fkd_path, "sampler_indices_dict.pt"))
    truth = {}
    for epoch in range(epochs):
        epoch_batch = []
        order = epoch_index_info[str(epoch)]
        for b in range(0, dataset_len, batch_size):
            index = order[b:b + batch_size]
            B = len(index)
            coords_status = torch.stack([crop_coords(g) for _ in index])
            flip_status = torch.tensor([bool(torch.rand(1, generator=g) < 0.5) for _ in index])
            mix_index, mix_lam, mix_bbox = cutmix_save(index, B, crop_size)
            output = teacher_logits([labels[i] for i in index], C, g)
            soft_labels = torch.nn.functional.softmax(output / temperature, dim=1)
            soft_labels = soft_labels.half()
            batch_config = [coords_status.half(), flip_status, mix_index.cpu(), mix_lam, mix_bbox, soft_labels.cpu()]
            epoch_batch.append(batch_config)
            for r, i in enumerate(index):
                truth[i, epoch] = (coords_status[r].half(), flip_status[r], soft_labels[r], index[int(mix_index[r])],
                                   mix_lam, mix_bbox)
        torch.save(epoch_batch, os.path.join(fkd_path, "epoch_{}.tar".format(epoch)))
    return truth


def _mix_box(bbox, crop_size):
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return quantize_boxes(torch.tensor([x1, y1, x2 - x1, y2 - y1], dtype=torch.float64) / crop_size)


def _check_rows(s, truth, full_values):
    """Every (image, epoch) of the store against what the writer wrote for it."""
    for (i, e), (coords, flip, row, partner, lam, bbox) in truth.items():
        c = coords.double().clamp(0, 1)
        c[2:] = torch.minimum(c[2:], 1 - c[:2])
        assert torch.equal(s.boxes[i, e], quantize_boxes(c)), (i, e)
        assert bool(s.flips[i, e]) == bool(flip)
        assert torch.equal(s.codes[i, e], full_values(row)), (i, e)
        assert int(s.mix.partner[i, e]) == partner
        assert float(s.mix.lam[i, e]) == pytest.approx(lam, abs=1e-7)
        if lam < 1:
            assert torch.equal(s.mix.boxes[i, e], _mix_box(bbox, 32))


# ------------------------------------------------------------------ tests
def test_written_files_hold_numpy_the_old_loader_refused(tmp_path):
    write_fkd(str(tmp_path / "fkd"), ["/d/train/c0/a.png"], [0], 10)
    obj = safe_load(str(tmp_path / "fkd" / "d" / "train" / "c0" / "a.tar"))
    assert [type(x) for x in obj] == [np.ndarray] * 3
    assert (obj[0].dtype, obj[1].dtype, obj[2].dtype, obj[2].shape) == (np.float32, np.bool_, np.float32, (3, 2, 5))
    write_sre2l(str(tmp_path / "s"), [0, 1, 2, 3], 10, epochs=1)
    batch = safe_load(str(tmp_path / "s" / "epoch_0" / "batch_0.tar"))
    assert type(batch[3]) is float and [type(v) for v in batch[4]] == [np.int64] * 4  # np.random.beta / np.clip
    with pytest.raises(Exception, match="numpy"):  # what the previous loader did with such a file
        torch.load(str(tmp_path / "fkd" / "d" / "train" / "c0" / "a.tar"), weights_only=True)


def test_fkd_import_matches_files_to_images_by_name(tmp_path):
    from hald_ext.data import ImageSet

    names = ["c1/img_10.png", "c0/img_2.png", "c1/img_3.png", "c0/img_1.png"]
    labels = [1, 0, 1, 0]
    truth = write_fkd(str(tmp_path / "fkd"), [f"/data/set/train/{n}" for n in names], labels, 10)
    images = ImageSet([np.zeros((4, 4, 3), np.uint8)] * 4, np.array(labels), ["c0", "c1"], names)
    rep = import_fkd(str(tmp_path / "fkd"), str(tmp_path / "s"), 10, images=images)
    s = LabelStore.open(rep.store.path, images=images)
    assert (s.num_images, s.sli, s.k) == (4, 3, 5)
    for i, n in enumerate(names):
        coords, flip, probs = truth[f"/data/set/train/{n}"]
        assert torch.equal(s.boxes[i], quantize_boxes(coords.double()))
        assert torch.equal(s.flips[i], flip)
        top = probs.topk(5)
        assert torch.equal(s.topk_ids[i].long(), top.indices)
        assert torch.equal(s.codes[i], s.quantizer.encode(top.values))
    # Without an image set: natural path order (c0/img_1, c0/img_2, c1/img_3, c1/img_10).
    s2 = import_fkd(str(tmp_path / "fkd"), str(tmp_path / "s2"), 10, quantizer="fp16").store
    assert torch.equal(s2.flips[3], truth["/data/set/train/c1/img_10.png"][1])
    assert s2.codes.dtype == torch.float16 and s2.bytes_per_label == 8 + 1 + 5 * 4
    wrong = ImageSet(images.images, images.labels, images.classes, ["c0/other.png"] + names[1:])
    with pytest.raises(LabelImportError, match="no FKD label file.*'c0/other.png'"):
        import_fkd(str(tmp_path / "fkd"), str(tmp_path / "s3"), 10, images=wrong)


def test_fkd_names_cut_at_the_first_dot_and_half_precision_teachers(tmp_path):
    from hald_ext.data import ImageSet

    # FKD writes `img.v2.png` as `img.tar`
    names = ["c0/img.v2.png", "c1/x.y.z.JPEG", "c0/plain.png"]
    labels = [0, 1, 0]
    truth = write_fkd(str(tmp_path / "fkd"), [f"/data/set/train/{n}" for n in names], labels, 10)
    assert sorted(os.listdir(tmp_path / "fkd" / "set" / "train" / "c0")) == ["img.tar", "plain.tar"]
    images = ImageSet([np.zeros((4, 4, 3), np.uint8)] * 3, np.array(labels), ["c0", "c1"], names)
    s = import_fkd(str(tmp_path / "fkd"), str(tmp_path / "s"), 10, images=images).store
    for i, n in enumerate(names):
        assert torch.equal(s.flips[i], truth[f"/data/set/train/{n}"][1])
    # a float16 teacher at C = 1000: ids below 2048 survive float16 and import exactly
    truth = write_fkd(str(tmp_path / "h1k"), ["/d/t/c0/a.png", "/d/t/c0/b.png"], [7, 999], 1000, half=True)
    s = import_fkd(str(tmp_path / "h1k"), str(tmp_path / "s1k"), 1000).store
    assert torch.equal(s.topk_ids[0].long(), truth["/d/t/c0/a.png"][2].float().topk(5).indices)
    # at C = 21843 the same writer rounds ids above 2048: refused, naming the file
    write_fkd(str(tmp_path / "h21k"), ["/d/t/c0/a.png"], [5000], 21843, half=True)
    with pytest.raises(LabelImportError, match=r"a\.tar: labels are float16, so class ids above 2048"):
        import_fkd(str(tmp_path / "h21k"), str(tmp_path / "s21k"), 21843)
    assert not (tmp_path / "s21k").exists()


def test_fkd_errors(tmp_path):
    def one(labels, name):
        dd = tmp_path / name
        dd.mkdir()
        torch.save([np.full((1, 4), 0.25, np.float32), np.zeros(1, bool), np.asarray(labels, np.float32)], dd / "a.tar")
        return str(dd)

    with pytest.raises(LabelImportError, match="out of range"):
        import_fkd(one([[[3.0, 12.0], [0.5, 0.2]]], "range"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="NaN"):
        import_fkd(one([[[3.0, 4.0], [float("nan"), 0.2]]], "nan"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="negative"):
        import_fkd(one([[[3.0, 4.0], [0.5, -0.2]]], "neg"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="whole numbers"):
        import_fkd(one([[[3.5, 4.0], [0.5, 0.2]]], "frac"), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match="same class id twice"):
        import_fkd(one([[[3.0, 3.0], [0.5, 0.2]]], "dup"), str(tmp_path / "o"), 10)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.tar").write_bytes(b"not a torch file")
    with pytest.raises(LabelImportError, match="junk/a.tar: not a readable torch file"):
        import_fkd(str(tmp_path / "junk"), str(tmp_path / "o"), 10)
    assert not (tmp_path / "o").exists()


def test_sre2l_order_rebuilt_from_its_seed(tmp_path):
    labels = [i % 5 for i in range(10)]
    truth = write_sre2l(str(tmp_path / "s"), labels, 5, epochs=3, batch_size=4)
    order = sre2l_order(10, 3, seed=42)
    rep = import_batches(str(tmp_path / "s"), str(tmp_path / "st"), 5, values="logits", temperature=4.0,
                         crop_size=32, order=order)
    s = LabelStore.open(rep.store.path)
    assert (s.num_images, s.sli, s.k) == (10, 3, 5) and s.topk_ids is None and s.header.mix
    _check_rows(s, truth, lambda z: torch.softmax(z.float() / 4.0, 0).half())
    assert s.header.stats["kl_to_teacher"] < 1e-5 < s.header.stats["kl_uniform"]  # fp16 rounding only
    # Without an order or a sampler file CutMix files are refused (their partners would be wrong) ...
    with pytest.raises(LabelImportError, match="no sampler file.*wrong partner.*--file-order"):
        import_batches(str(tmp_path / "s"), str(tmp_path / "st2"), 5, temperature=4.0, crop_size=32)
    assert not (tmp_path / "st2").exists()
    # ... unless asked for: then rows are matched by position, and a warning says so.
    with pytest.warns(ImportOrderWarning, match="no sampler file.*row r of every label epoch"):
        import_batches(str(tmp_path / "s"), str(tmp_path / "st2"), 5, temperature=4.0, crop_size=32, file_order=True)


def test_lpld_json_sampler_and_top_k(tmp_path):
    labels = [i % 5 for i in range(9)]
    truth = write_sre2l(str(tmp_path / "l"), labels, 5, epochs=2, batch_size=4, use_fp16=False, lpld_json=True)
    assert read_sampler(str(tmp_path / "l" / "sampler_indices_epoch.json"))[1].numel() == 9
    rep = import_batches(str(tmp_path / "l"), str(tmp_path / "st"), 5, values="logits", temperature=1.0, k=2,
                         quantizer="power", crop_size=32, flavor="lpld")
    s = LabelStore.open(rep.store.path)
    (coords, flip, z, partner, lam, bbox) = truth[7, 1]
    assert torch.equal(s.topk_ids[7, 1].long(), torch.softmax(z.double(), 0).topk(2).indices)
    assert int(s.mix.partner[7, 1]) == partner and bool(s.flips[7, 1]) == bool(flip)
    st = s.header.stats
    assert 0 < st["kl_to_teacher"] and st["kl_uniform"] > 0


def test_hald_epoch_files_import_losslessly(tmp_path):
    labels = [i % 10 for i in range(20)]  # IPC 2
    truth = write_hald(str(tmp_path / "h"), labels, 10, slc=6, ipc=2, batch_size=8)  # 3 label epochs
    rep = import_batches(str(tmp_path / "h"), str(tmp_path / "st"), 10, values="probs", temperature=20.0,
                         crop_size=32, flavor="hald")
    s = LabelStore.open(rep.store.path)
    assert (s.num_images, s.sli, s.k, s.quantizer.kind) == (20, 3, 10, "fp16") and s.topk_ids is None
    # The float16 probabilities come back bit for bit, in image order (via sampler_indices_dict.pt).
    _check_rows(s, truth, lambda p: p)
    assert s.header.stats["kl_to_teacher"] == 0
    assert s.bytes_per_label == 8 + 1 + 2 * 10 + 16 and rep.files == 3
    ids, values = s.labels([3, 0], [2, 1])
    assert ids is None and torch.equal(values, torch.stack([truth[3, 2][2], truth[0, 1][2]]))
    # A top-5 import of the same files records how much it loses.
    s5 = import_batches(str(tmp_path / "h"), str(tmp_path / "st5"), 10, values="probs", temperature=20.0, k=5,
                        quantizer="power", crop_size=32, flavor="hald").store
    assert s5.header.stats["kl_to_teacher"] > 1e-4


def test_sampler_file_errors(tmp_path):
    labels = [i % 4 for i in range(8)]
    write_hald(str(tmp_path / "h"), labels, 4, slc=4, ipc=2, batch_size=4)
    torch.save({"0": list(range(8)), "1": [0] * 8}, tmp_path / "h" / "sampler_indices_dict.pt")
    with pytest.raises(LabelImportError, match="epoch 1 .* not a permutation"):
        import_batches(str(tmp_path / "h"), str(tmp_path / "o"), 4, flavor="hald", crop_size=32)
    torch.save({"0": list(range(8))}, tmp_path / "h" / "sampler_indices_dict.pt")
    with pytest.raises(LabelImportError, match="no image order for label epoch"):
        import_batches(str(tmp_path / "h"), str(tmp_path / "o"), 4, flavor="hald", crop_size=32)
    torch.save({"0": "abc"}, tmp_path / "h" / "sampler_indices_dict.pt")
    with pytest.raises(LabelImportError, match="sampler entry '0'"):
        import_batches(str(tmp_path / "h"), str(tmp_path / "o"), 4, flavor="hald", crop_size=32)
    assert not (tmp_path / "o").exists()


def _payload_inputs(root, marker):
    """One directory per importer input kind, each holding a pickle whose loading would run `touch`."""
    evil = Payload(marker)
    cases = {}
    d = root / "fkd"
    d.mkdir()
    torch.save([np.zeros((1, 4), np.float32), np.zeros(1, bool), evil], d / "a.tar")
    cases["fkd"] = d
    d = root / "sre2l" / "epoch_0"
    d.mkdir(parents=True)
    torch.save([torch.zeros(1, 4), torch.zeros(1, dtype=torch.bool), None, None, None, evil], d / "batch_0.tar")
    cases["sre2l"] = root / "sre2l"
    d = root / "hald"
    d.mkdir()
    torch.save([[torch.zeros(1, 4).half(), torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.long), 0.5,
                 [np.int64(0)] * 4, evil]], d / "epoch_0.tar")
    cases["hald"] = d
    d = root / "sampler"
    write_hald(str(d), [0, 1], 2, slc=1, ipc=1, batch_size=2)
    torch.save({"0": evil}, d / "sampler_indices_dict.pt")
    cases["sampler"] = d
    d = root / "objarray"
    d.mkdir()
    torch.save([np.zeros((1, 4), np.float32), np.array([evil], dtype=object), np.zeros((1, 2, 1), np.float32)],
               d / "a.tar")
    cases["objarray"] = d
    return cases


def test_payload_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    cases = _payload_inputs(tmp_path, marker)
    with pytest.raises(LabelImportError, match=r"fkd/a.tar: refused: loading it would call (posix|os)\.system"):
        import_fkd(str(cases["fkd"]), str(tmp_path / "o"), 10)
    with pytest.raises(LabelImportError, match=r"batch_0.tar: refused: .*system.*nothing in the file was run"):
        import_batches(str(cases["sre2l"]), str(tmp_path / "o"), 10, temperature=20.0)
    with pytest.raises(LabelImportError, match=r"epoch_0.tar: refused"):
        import_batches(str(cases["hald"]), str(tmp_path / "o"), 10, flavor="hald")
    with pytest.raises(LabelImportError, match=r"sampler_indices_dict.pt: refused"):
        import_batches(str(cases["sampler"]), str(tmp_path / "o"), 2, flavor="hald", crop_size=32)
    with pytest.raises(LabelImportError, match=r"a.tar: refused"):
        import_fkd(str(cases["objarray"]), str(tmp_path / "o"), 10)
    assert hald(["labels", "import-fkd", str(cases["fkd"]), "--out", str(tmp_path / "o"), "-C", "10"]) == 2
    assert hald(["labels", "import-sre2l", str(cases["hald"]), "--out", str(tmp_path / "o"), "-C", "10",
                 "--flavor", "hald"]) == 2
    assert not marker.exists() and not (tmp_path / "o").exists()
    # The same pickle does run when loaded without the allow-list: the test's payload is real.
    torch.load(str(cases["fkd"] / "a.tar"), weights_only=False)
    assert marker.exists()


def _blob_set(tmp_path):
    from hald_ext.data import load_image_set
    from hald_ext.train.synthetic import color_blobs

    train = color_blobs(4, seed=0)  # 16 images, 4 classes, 16 px
    np.savez(tmp_path / "train.npz", images=train.stacked(), labels=train.labels, classes=np.asarray(train.classes))
    return load_image_set(str(tmp_path / "train.npz"))


# writer -> (write the files for the image set, import flags); every import keeps top-2 so it trains today
WRITERS = {
    "fkd": (lambda d, labels: write_fkd(d, [f"/d/train/all/img_{i}.png" for i in range(len(labels))], labels, 4, k=2),
            ["import-fkd"]),
    "sre2l": (lambda d, labels: write_sre2l(d, labels, 4, epochs=2, batch_size=8, crop_size=16),
              ["import-sre2l", "--sampler-seed", "42", "-T", "20", "--crop-size", "16", "--k", "2", "--quantizer", "power"]),
    "lpld": (lambda d, labels: write_sre2l(d, labels, 4, epochs=2, batch_size=8, crop_size=16, lpld_json=True),
             ["import-sre2l", "--flavor", "lpld", "--recipe-temperature", "--crop-size", "16", "--k", "2", "--quantizer", "power"]),
    "hald": (lambda d, labels: write_hald(d, labels, 4, slc=8, ipc=4, batch_size=8, crop_size=16),
             ["import-sre2l", "--flavor", "hald", "--crop-size", "16", "--k", "2", "--quantizer", "power"]),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_cli_import_info_and_train(writer, tmp_path, capsys):
    images = _blob_set(tmp_path)
    write, flags = WRITERS[writer]
    write(str(tmp_path / "in"), [int(c) for c in images.labels])
    store = str(tmp_path / "labels.safetensors")
    rc = hald(["labels", flags[0], str(tmp_path / "in"), "--out", store, "-C", "4", "--images",
               str(tmp_path / "train.npz"), *flags[1:]])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    assert hald(["labels", "info", store, "--images", str(tmp_path / "train.npz")]) == 0
    out = capsys.readouterr().out
    slots = 3 if writer == "fkd" else 2
    assert f"SLI {slots}" in out and f"SLC {16 * slots // 4} per class" in out and "top-k = 2" in out
    assert "(fp16, C wide, 33 bytes/label)" in out and "fp16 coords too, 25 bytes/label" in out and "as FKD's generator writes them (float32 top-2, 33 bytes" in out
    if writer != "fkd":  # imported from full labels: the KL the top-2 import lost is recorded
        assert "kl_to_teacher" in out and "kl_uniform" in out and "as far from the teacher's as a uniform" in out
    assert hald(["labels", "info", store, "--json"]) == 0
    z = json.loads(capsys.readouterr().out)["sizes"]
    assert (z["sli"], z["slc"], z["sre2l_bytes_per_label"], z["fkd_bytes_per_label"]) == (slots, 4 * slots, 33, 33)
    assert z["sre2l_mb"] == 16 * slots * 33 / 1e6 and z["hald_bytes_per_label"] == 2 * 4 + 17
    rc = hald(["train", "--data", str(tmp_path / "train.npz"), "--labels", store, "--epochs", "2", "--batch-size", "8",
               "--schedule", "soft-only", "--output", str(tmp_path / "runs"), "--experiment", writer, "--threads", "1",
               "--no-progress"])
    assert rc == 0, capsys.readouterr()
    rows = json.loads((tmp_path / "runs" / writer / "metrics.json").read_text())
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)


def test_cli_full_width_info(tmp_path, capsys):
    images = _blob_set(tmp_path)
    write_hald(str(tmp_path / "h"), [int(c) for c in images.labels], 4, slc=8, ipc=4, batch_size=8, crop_size=16)
    assert hald(["labels", "import-sre2l", str(tmp_path / "h"), "--out", str(tmp_path / "full.safetensors"), "-C",
                 "4", "--flavor", "hald", "--crop-size", "16", "--images", str(tmp_path / "train.npz")]) == 0
    capsys.readouterr()
    assert hald(["labels", "info", str(tmp_path / "full.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "full width (k = C, no ids)" in out and "float16 probabilities (fp16: no codebook" in out
    assert "kl_to_teacher 0," in out and "33.00 bytes/label" in out  # 2 x 4 + 9 + 16 (CutMix record)
    assert "0% as far from the teacher's as a uniform label\n" in out
    # At C = 1000 and T = 20 a top-5 label keeps next to nothing, and info says so.
    write_hald(str(tmp_path / "h1k"), [int(c) for c in images.labels], 1000, slc=4, ipc=4, batch_size=8, crop_size=16)
    assert hald(["labels", "import-sre2l", str(tmp_path / "h1k"), "--out", str(tmp_path / "top5.safetensors"), "-C",
                 "1000", "--flavor", "hald", "--crop-size", "16", "--k", "5", "--quantizer", "power"]) == 0
    capsys.readouterr()
    assert hald(["labels", "info", str(tmp_path / "top5.safetensors")]) == 0
    assert "warning: they keep little of the teacher's distribution" in capsys.readouterr().out
    assert hald(["labels", "import-sre2l", str(tmp_path / "h"), "--out", str(tmp_path / "x"), "-C", "4", "-T", "1",
                 "--quantizer", "fp16", "--bits", "8"]) == 2
    assert "16-bit floats" in capsys.readouterr().err


def _dense_loss_available() -> bool:
    from hald_ext.ops import soft_hard_loss

    try:
        soft_hard_loss(torch.zeros(1, 2), None, torch.tensor([[0.5, 0.5]]))
        return True
    except Exception:  # noqa: BLE001 - a loss without dense targets refuses ids=None in its own way
        return False


@pytest.mark.skipif(not _dense_loss_available(), reason="needs the fused loss's dense targets (ids None, [B, C])")
def test_full_width_hald_import_trains(tmp_path, capsys):
    images = _blob_set(tmp_path)
    write_hald(str(tmp_path / "h"), list(images.labels), 4, slc=8, ipc=4, batch_size=8, crop_size=16)
    assert hald(["labels", "import-sre2l", str(tmp_path / "h"), "--out", str(tmp_path / "full.safetensors"), "-C",
                 "4", "--flavor", "hald", "--crop-size", "16", "--images", str(tmp_path / "train.npz")]) == 0
    for source in ("fused", "torch"):
        rc = hald(["train", "--data", str(tmp_path / "train.npz"), "--labels", str(tmp_path / "full.safetensors"),
                   "--epochs", "2", "--batch-size", "8", "--schedule", "soft-only", "--batch-source", source,
                   "--output", str(tmp_path / "runs"), "--experiment", source, "--threads", "1", "--no-progress"])
        assert rc == 0, capsys.readouterr()
        rows = json.loads((tmp_path / "runs" / source / "metrics.json").read_text())
        assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in rows)


def test_files_pickled_under_numpy_1_load(tmp_path):
    """numpy 1.x pickles name numpy.core.multiarray; the allow-list maps those names to the same functions."""
    import io
    import zipfile

    torch.save([np.arange(4, dtype=np.float32), np.float64(0.25), np.int64(3)], tmp_path / "new.tar")
    src = zipfile.ZipFile(tmp_path / "new.tar")
    with zipfile.ZipFile(tmp_path / "old.tar", "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n" in body  # protocol 2: GLOBAL names are text lines
                body = body.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            out.writestr(info.filename, body)
    with zipfile.ZipFile(tmp_path / "old.tar") as z:
        assert b"numpy._core" not in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    arr, lam, box = safe_load(str(tmp_path / "old.tar"))
    assert arr.tolist() == [0, 1, 2, 3] and lam == 0.25 and type(box) is np.int64


class _BigArray:
    """Pickles as numpy.ndarray((5e9,), float32): 20 GB of uninitialised memory if it were called."""

    def __reduce__(self):
        return (np.ndarray, ((5 * 10**9,), np.dtype("float32")))


class _BigReconstruct:
    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (5 * 10**9,), b"b"))


@pytest.mark.parametrize("obj", [_BigArray(), _BigReconstruct()])
def test_pickled_numpy_calls_other_than_array_data_are_refused(obj, tmp_path):
    torch.save([obj], tmp_path / "big.tar")
    with pytest.raises(LabelImportError, match="big.tar: refused: refused numpy.*(called directly|plain ndarray)"):
        safe_load(str(tmp_path / "big.tar"))


class _DtypeWithState:
    """Pickles as numpy.dtype('f8') followed by a crafted BUILD state (what a hostile file can hold)."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (np.dtype, ("f8", False, True), self.state)


class _ArrayWithDtype:
    def __init__(self, dtype, shape, raw):
        self.dtype, self.shape, self.raw = dtype, shape, raw

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.raw))


@pytest.mark.parametrize("state", [
    (3, "<", None, None, None, -1, -1, 0x3F),  # flags numpy never writes for a builtin dtype
    (3, "<", (np.dtype("f8"), (1 << 20,)), None, None, -1, -1, 0),  # a sub-array dtype
    (3, "<", None, None, None, 0, 1, 0),  # a zero item size
    (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0)}, 8, 1, 0),  # a structured dtype
])
@pytest.mark.parametrize("wrap", ["dtype", "array"])
def test_safe_load_refuses_crafted_dtype_states(tmp_path, state, wrap):
    d = _DtypeWithState(state)
    path = str(tmp_path / "x.pt")
    torch.save([d] if wrap == "dtype" else [_ArrayWithDtype(d, (4,), b"\0" * 32)], path)
    with pytest.raises(LabelImportError, match="x.pt: refused: refused numpy dtype state"):
        safe_load(path)


def test_safe_load_refuses_zero_stride_views(tmp_path):
    # A few bytes on disk that claim 10^10 elements: the first whole-tensor check would allocate 40 GB.
    soft = torch.zeros(1).as_strided((10**7, 1000), (0, 0))
    coords = torch.full((1,), 0.5).as_strided((10**7, 4), (0, 0))
    flip = torch.zeros(1, dtype=torch.bool).as_strided((10**7,), (0,))
    path = str(tmp_path / "epoch_0.tar")
    torch.save([[coords, flip, None, None, None, soft]], path)
    assert os.path.getsize(path) < 10_000
    with pytest.raises(LabelImportError, match="epoch_0.tar: refused: a tensor of shape"):
        safe_load(path)
    # Transposed (strided but dense) tensors are fine.
    torch.save([torch.arange(12.0).view(3, 4).t()], path)
    assert torch.equal(safe_load(path)[0], torch.arange(12.0).view(3, 4).t())


def test_order_rows_must_match_label_epochs(tmp_path):
    root = tmp_path / "hald"
    root.mkdir()
    for e in range(2):
        p = torch.softmax(torch.randn(4, 3), 1).half()
        torch.save([[torch.tensor([[0.1, 0.2, 0.5, 0.5]] * 4).half(), torch.zeros(4, dtype=torch.bool), None, None,
                     None, p]], str(root / f"epoch_{e}.tar"))
    with pytest.raises(LabelImportError, match="--order gives 1 image order"):
        import_batches(str(root), str(tmp_path / "o.safetensors"), 3, flavor="hald", order=np.array([[3, 2, 1, 0]]))


@pytest.mark.parametrize("bbox", [[6, 8, 6, 8], [3, 0, 9, 0], [0, 5, 0, 31]])
def test_an_empty_cutmix_box_imports_as_no_mix(tmp_path, bbox):
    """SRe2L / HALD's rand_bbox clips a box to nothing when lambda is near 1 (or its centre sits on an
    edge); the writer still records the partners and its drawn lambda, but nothing was pasted: each
    row imports as its own crop (partner -1, weight 1), not as a CutMix with a wrong lambda."""
    n, B = 4, 4
    path = tmp_path / "sre2l" / "epoch_0"
    path.mkdir(parents=True)
    coords = torch.tensor([[0.1, 0.1, 0.5, 0.5]] * B)
    batch = [coords, torch.zeros(B, dtype=torch.bool), torch.tensor([1, 0, 3, 2]), 0.985, bbox,
             torch.randn(B, 10).half()]
    torch.save(batch, str(path / "batch_0.tar"))
    store = import_batches(str(tmp_path / "sre2l"), str(tmp_path / "s.safetensors"), 10, values="logits",
                           temperature=20.0, quantizer="fp16", crop_size=32, order=torch.arange(n).view(1, n),
                           flavor="sre2l").store
    assert store.mix is None or (store.mix.partner == -1).all()
