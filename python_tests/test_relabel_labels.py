"""What `hald relabel` stores: the KL it records against the teacher's full label, full-width labels
(k == C, no ids; coded or lossless float16), and the same labels from a streamed image source."""
import math

import pytest
import torch

from hald_ext.cli import main as hald
from hald_ext.labels import LabelStore, Quantizer
from hald_ext.labels.relabel import relabel_with_stats
from hald_ext.labels.relabel_plan import make_plan
from test_relabel_scale import S, Recorder, folder, images, run, save_checkpoint, small_net  # noqa: F401

T = 2.0


def teacher_logits(rec, net, n=9, slots=2):
    """The teacher's logits on the recorded batches, batch by batch (as relabel ran it), in
    (image, slot) order."""
    with torch.no_grad():
        z = torch.cat([net.eval()(x) for x in rec.inputs])
    out = torch.empty_like(z)
    out[make_plan(n, slots, 4, 3).order] = z
    return out


def test_stats_are_the_mean_kl_to_the_full_label(images, tmp_path):
    net = small_net()
    rec = Recorder(net)
    store, stats = relabel_with_stats(images, rec, str(tmp_path / "k1.safetensors"), sli=2, k=1, temperature=T,
                                      batch_size=4, seed=3, size=S, progress=False, device="cpu", teacher_bn="eval")
    p = torch.softmax(teacher_logits(rec, net).double() / T, 1)
    # k = 1, marginal decode: the stored probability on its class, the rest spread evenly.
    top = store.codebook.double()[store.codes.view(-1).long()]
    q = ((1 - top) / 2).view(-1, 1).expand(18, 3).clone()
    q.scatter_(1, store.topk_ids.view(18, 1).long(), top.view(18, 1))
    kl = (p * (p / q).log()).sum(1)
    assert stats["kl_to_teacher"] == pytest.approx(float(kl.mean()), rel=1e-9, abs=1e-12)
    assert stats["kl_uniform"] == pytest.approx(float(((p * p.log()).sum(1) + math.log(3)).mean()), rel=1e-9)
    assert LabelStore.open(store.path).header.stats == stats
    # A full-width fp16 label keeps (almost) everything; the top-1 label loses more.
    _, full = relabel_with_stats(images, net, str(tmp_path / "k3.safetensors"), sli=2, k=3, temperature=T,
                                 batch_size=4, seed=3, size=S, progress=False, device="cpu", teacher_bn="eval",
                                 quantizer="fp16")
    assert full["kl_to_teacher"] < 1e-5 < stats["kl_to_teacher"]


@pytest.mark.parametrize("quantizer", ["power", "fp16"])
def test_full_width_labels(images, tmp_path, quantizer):
    net = small_net()
    rec = Recorder(net)
    store = run(images, tmp_path / "f.safetensors", rec, k=3, teacher_bn="eval", quantizer=quantizer)
    assert store.full_width and store.topk_ids is None and store.codes.shape == (9, 2, 3)
    p = torch.softmax(teacher_logits(rec, net).double() / T, 1)
    q = Quantizer(quantizer)
    assert torch.equal(store.codes.view(18, 3), q.encode(p))  # every class, in class order
    assert store.bytes_per_label == 8 + 1 + 3 * (2 if quantizer == "fp16" else 1)
    ids, values = store.labels([4], [1])
    assert ids is None and values.shape == (1, 3)


def test_fp16_top_k(images, tmp_path):
    net = small_net()
    rec = Recorder(net)
    store = run(images, tmp_path / "t.safetensors", rec, k=2, teacher_bn="eval", quantizer="fp16")
    p = torch.softmax(teacher_logits(rec, net).double() / T, 1)
    top = p.topk(2, 1)
    assert torch.equal(store.topk_ids.view(18, 2).long(), top.indices)
    assert torch.equal(store.codes.view(18, 2), top.values.half())


def test_streamed_images_give_the_resident_labels(images, tmp_path):
    kw = {"cutmix_alpha": 1.0, "teacher_bn": "train"}
    resident = run(images, tmp_path / "r.safetensors", small_net(), **kw)
    streamed = run(images, tmp_path / "s.safetensors", small_net(), max_resident_bytes=0, **kw)
    for name in ("boxes", "flips", "topk_ids", "codes"):
        assert torch.equal(getattr(resident, name), getattr(streamed, name)), name
    assert torch.equal(resident.mix.partner, streamed.mix.partner)


def test_cli_full_width_fp16_with_the_torch_loader(folder, tmp_path, capsys):
    ck = save_checkpoint(tmp_path / "t.pt")
    out = tmp_path / "c.safetensors"
    assert hald(["relabel", folder, "-o", str(out), "--model", "convnet3", "--checkpoint", ck, "--loader", "torch",
                 "--size", str(S), "--k", "3", "--quantizer", "fp16", "-T", "4", "--no-progress"]) == 0
    text = capsys.readouterr().out
    store = LabelStore.open(out)
    assert store.full_width and store.codes.dtype == torch.float16 and store.quantizer.kind == "fp16"
    assert f"{store.header.stats['kl_to_teacher']:.4f} nats" in text
    assert store.header.stats["kl_to_teacher"] < 1e-5 < store.header.stats["kl_uniform"]
