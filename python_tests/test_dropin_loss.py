"""The loss calls of the field's training loops, written from their code, against the one-line swap to
the fused forms (values and gradients, float32 and bfloat16 autocast, a random upstream gradient):

  SRe2L  validate/train_FKD.py          KLDivLoss(batchmean)(log_softmax(out / T), softmax(soft_label / T))
  LPLD   train_FKD_label_pruning_batch  the same (ImageNet); tiny: log_target=True and * T^2
  LPQLD  train_FKD_LPQLD.py             MR-k: softmax(top-k logits / T) scattered into zeros
  HALD   validate/train_fkd.py          soft: KLDivLoss(batchmean)(log_softmax(out / 20), soft_label probs);
                                        hard: soft_cross_entropy(out, timm Mixup(cutmix, smoothing 0.8))
  FKD    train_FKD.py + utils_FKD.py    Soft_CrossEntropy(out / temp, Recover_soft_label(marginal_*))
  timm   timm.loss.SoftTargetCrossEntropy, timm.task.LogitDistillationTask's KD term
  Liger  LigerKLDIVLoss (an nn.KLDivLoss), LigerFusedLinearDistillationBase's weighting
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hald_ext
from hald_ext import functional as HF

B, C = 12, 50


def outcome(loss_fn, logits, seed=0):
    """(loss, d(r * loss)/d logits) for a random upstream factor r."""
    x = logits.detach().clone().requires_grad_()
    loss = loss_fn(x)
    r = torch.rand((), generator=torch.Generator().manual_seed(seed)) + 0.5
    (loss * r.to(loss.dtype)).backward()
    return loss.detach().double(), x.grad.double()


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol * max(1.0, gb.abs().max().item()))


def data(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, C, generator=g) * 3).to(dtype)
    t = torch.randn(B, C, generator=g) * 4
    y = torch.randint(0, C, (B,), generator=g)
    return z, t, y


# ------------------------------------------------------------------ the loops' own loss calls
def sre2l_loss(out, soft_label, T):
    """SRe2L train_FKD.py / LPLD (ImageNet): soft_label is the teacher's fp16 logits, `.float()`."""
    loss_function_kl = nn.KLDivLoss(reduction="batchmean")
    soft_label = F.softmax(soft_label.float() / T, dim=1)
    output = F.log_softmax(out / T, dim=1)
    return loss_function_kl(output, soft_label)


def lpld_tiny_loss(out, soft_label, T):
    loss_function_kl = nn.KLDivLoss(reduction="batchmean", log_target=True)
    return loss_function_kl(F.log_softmax(out / T, dim=1), F.log_softmax(soft_label / T, dim=1)) * T ** 2


def hald_soft_loss(out, soft_label):
    """HALD validate/train_fkd.py soft_train: soft_label = softmax(z / 20).half() from relabel_slc.py, `.float()`."""
    return nn.KLDivLoss(reduction="batchmean")(F.log_softmax(out / 20, dim=1), soft_label)


def soft_cross_entropy(logits, soft_targets):  # HALD hard_train's criterion
    log_probs = F.log_softmax(logits, dim=1)
    return -(soft_targets * log_probs).sum(dim=1).mean()


class Soft_CrossEntropy(nn.modules.loss._Loss):  # FKD utils_FKD.py
    def forward(self, model_output, soft_output):
        model_output_log_prob = F.log_softmax(model_output, dim=1)
        soft_output = soft_output.unsqueeze(1)
        model_output_log_prob = model_output_log_prob.unsqueeze(2)
        return (-torch.bmm(soft_output, model_output_log_prob)).mean()


def recover_soft_label(label, label_type, n_classes):
    """FKD utils_FKD.Recover_soft_label for its marginal label types (k = 5)."""
    index = label[:, 0, :].to(dtype=int)
    value = label[:, 1, :]
    if label_type == "marginal_smoothing_k5":
        minor_value = (torch.ones(label.size(0), 1) - torch.sum(value, dim=1, keepdim=True)) / (n_classes - 5)
        minor_value = minor_value.reshape(-1, 1).repeat_interleave(n_classes, dim=1)
        return (minor_value * torch.ones(index.size(0), n_classes)).scatter_(1, index, value)
    soft_label = torch.zeros(index.size(0), n_classes).scatter_(1, index, value)
    return F.normalize(soft_label, p=1.0, dim=1, eps=1e-12)


def fkd_label(t):
    """label_quantization(softmax(output), 'marginal_smoothing_k5'): [N, 2, 5] float ids and values."""
    p = F.softmax(t, dim=1)
    rows = []
    for q in p:
        order = torch.argsort(q, descending=True)
        rows.append(torch.stack([order[:5].float(), q[order[:5]]], dim=0))
    return torch.stack(rows)


def lpqld_mr_loss(out, topk_logits, indices, T, num_class):
    """train_FKD_LPQLD.py, label_quantization 'MR-k'."""
    partial_soft_label = F.softmax(topk_logits / T, dim=1)
    full = torch.zeros(partial_soft_label.size(0), num_class).scatter_(1, indices.long(), partial_soft_label)
    return nn.KLDivLoss(reduction="batchmean")(F.log_softmax(out / T, dim=1), full)


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("T", [1.0, 20.0])
def test_sre2l_lpld_loop(T):
    z, t, _ = data(1)
    t16 = t.half()
    want = outcome(lambda x: sre2l_loss(x, t16, T), z)
    crit_kl = hald_ext.KLDivLoss(reduction="batchmean")  # the one-line swap of loss_function_kl
    assert_same(outcome(lambda x: crit_kl(F.log_softmax(x / T, dim=1), F.softmax(t16.float() / T, dim=1)), z), want)
    # the natural call: logits and the stored soft label (teacher logits)
    crit = hald_ext.SoftHardLoss(temperature=T, soft_target="logits")
    assert_same(outcome(lambda x: crit(x, t16), z), want)
    assert_same(outcome(lambda x: hald_ext.DistillationLoss(T, hinton=False)(x, t16), z), want)
    assert_same(outcome(lambda x: HF.soft_hard_loss(x, t16, soft_target="logits", temperature=T), z), want)


def test_lpld_tiny_loop_log_target_and_t_squared():
    z, t, _ = data(2)
    T = 4.0
    want = outcome(lambda x: lpld_tiny_loss(x, t, T), z)
    crit = hald_ext.KLDivLoss(reduction="batchmean", log_target=True)
    assert_same(outcome(lambda x: crit(F.log_softmax(x / T, dim=1), F.log_softmax(t / T, dim=1)) * T ** 2, z), want)
    assert_same(outcome(lambda x: hald_ext.DistillationLoss(T, hinton=True)(x, t), z), want)


def test_hald_soft_and_hard_loops():
    pytest.importorskip("timm")
    from timm.data import Mixup

    z, t, y = data(3)
    soft_label = F.softmax(t / 20, dim=1).half().float()
    want = outcome(lambda x: hald_soft_loss(x, soft_label), z)
    assert_same(outcome(lambda x: hald_ext.SoftHardLoss(temperature=20)(x, soft_label), z), want)
    assert_same(outcome(lambda x: hald_ext.DistillationLoss(20, teacher="probs", hinton=False)(x, soft_label), z), want)
    torch.manual_seed(0)
    mixup_fn = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.8, num_classes=C)
    _, labels_mixed = mixup_fn(torch.randn(B, 3, 8, 8), y)
    want = outcome(lambda x: soft_cross_entropy(x, labels_mixed), z)
    hard = hald_ext.SoftHardLoss(soft_loss="ce", decode="truncate")
    assert_same(outcome(lambda x: hard(x, labels_mixed), z), want)


@pytest.mark.parametrize("label_type,decode", [("marginal_smoothing_k5", "marginal"), ("marginal_renorm", "renorm")])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_fkd_loop_soft_cross_entropy(label_type, decode, temp):
    z, t, _ = data(4)
    label = fkd_label(t)
    want = outcome(lambda x: Soft_CrossEntropy()(x / temp, recover_soft_label(label, label_type, C)), z)
    crit = hald_ext.SoftHardLoss(soft_loss="ce", decode=decode, temperature=temp)
    ids, values = label[:, 0].long(), label[:, 1]
    assert_same(outcome(lambda x: crit(x, ids, values), z), want)


def test_lpqld_mr_loop():
    z, t, _ = data(5)
    T = 20.0
    top = torch.topk(t, 10, dim=1)
    logits16, indices = top.values.half(), top.indices.short()  # as generate_soft_label_pruning_batch.py stores
    want = outcome(lambda x: lpqld_mr_loss(x, logits16.float(), indices, T, C), z)
    crit = hald_ext.SoftHardLoss(temperature=T, decode="renorm")
    assert_same(outcome(lambda x: crit(x, indices, F.softmax(logits16.float() / T, dim=1)), z), want)


def test_timm_soft_target_and_distillation_term():
    pytest.importorskip("timm")
    from timm.loss import SoftTargetCrossEntropy

    z, t, y = data(6)
    target = F.softmax(t, 1)
    want = outcome(lambda x: SoftTargetCrossEntropy()(x, target), z)
    assert_same(outcome(lambda x: hald_ext.SoftHardLoss(soft_loss="ce", decode="truncate")(x, target), z), want)
    T, wt, wd = 4.0, 0.3, 0.7

    def timm_task_total(x):  # LogitDistillationTask.forward with nn.CrossEntropyLoss as the criterion
        kd = F.kl_div(F.log_softmax(x / T, -1), F.log_softmax(t / T, -1), reduction="batchmean",
                      log_target=True) * T ** 2
        return wt * nn.CrossEntropyLoss()(x, y) + wd * kd

    kd = hald_ext.DistillationLoss(T, hinton=True, soft_weight=wd, hard_weight=wt, reduction="batchmean")
    assert_same(outcome(lambda x: kd(x, t, y), z), outcome(timm_task_total, z))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_module_is_nn_kldivloss(reduction, log_target):
    """LigerKLDIVLoss subclasses nn.KLDivLoss with its semantics; both are replaced by hald_ext.KLDivLoss."""
    z, t, _ = data(7)
    target = F.log_softmax(t, 1) if log_target else F.softmax(t, 1)
    ref = nn.KLDivLoss(reduction=reduction, log_target=log_target)
    ours = hald_ext.KLDivLoss(reduction=reduction, log_target=log_target)
    fn_ref = (lambda x: ref(F.log_softmax(x, 1), target).sum()) if reduction == "none" else \
        (lambda x: ref(F.log_softmax(x, 1), target))
    for feed in (lambda x: F.log_softmax(x, 1), lambda x: x):  # log-probabilities or the logits themselves
        fn = (lambda x: ours(feed(x), target).sum()) if reduction == "none" else (lambda x: ours(feed(x), target))
        assert_same(outcome(fn, z), outcome(fn_ref, z))
    if reduction == "none":
        assert ours(F.log_softmax(z, 1), target).shape == (B, C)
    assert hald_ext.KLDivLoss(size_average=False).reduction == "sum"  # torch's legacy arguments


def test_liger_distillation_weighting():
    """LigerFusedLinearDistillationBase._compute_loss: weight_hard * nll_sum / N + weight_soft * soft_sum / N,
    student and teacher logits divided by T, no T^2 (here with a KL soft term)."""
    z, t, y = data(8)
    y[[1, 4]] = -100
    T = 2.0

    def liger(x):
        hard = F.nll_loss(F.log_softmax(x.float(), dim=-1), y, reduction="sum", ignore_index=-100) / y.shape[0]
        soft = F.kl_div(F.log_softmax(x / T, -1), F.log_softmax(t / T, -1), reduction="sum",
                        log_target=True) / y.shape[0]
        return 0.5 * hard + 0.5 * soft

    kd = hald_ext.DistillationLoss(T, hinton=False, soft_weight=0.5, hard_weight=0.5, reduction="batchmean")
    assert_same(outcome(lambda x: kd(x, t, y), z), outcome(liger, z))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_hard_term_reductions_and_ignore_index_are_cross_entropys(reduction, smoothing):
    z, _, y = data(9)
    y[[0, 5, 6]] = -100
    ref = nn.CrossEntropyLoss(reduction=reduction, ignore_index=-100, label_smoothing=smoothing)
    crit = hald_ext.SoftHardLoss(soft_weight=0.0, hard_weight=1.0, label_smoothing=smoothing, reduction=reduction)
    agg = (lambda v: v.sum()) if reduction == "none" else (lambda v: v)
    assert_same(outcome(lambda x: agg(crit(x, hard_target=y)), z), outcome(lambda x: agg(ref(x, y)), z))
    # every row ignored: 0, not NaN, under "mean" (torch gives NaN there; a skipped batch should not poison a run)
    if reduction == "mean":
        assert crit(z, hard_target=torch.full((B,), -100)).item() == 0.0


def test_bf16_autocast_closer_to_float64_than_the_loops_own_losses():
    """Logits from a bf16 autocast region; each loss against float64 on the same bf16 logits."""
    torch.manual_seed(0)
    layer = nn.Linear(32, C)
    feats = torch.randn(64, 32) * 2
    t = torch.randn(64, C) * 4
    probs20 = F.softmax(t / 20, 1)
    cases = {
        "sre2l": (lambda x: sre2l_loss(x, t, 20.0),
                  lambda x: hald_ext.SoftHardLoss(temperature=20, soft_target="logits")(x, t)),
        "hald": (lambda x: hald_soft_loss(x, probs20), lambda x: hald_ext.SoftHardLoss(temperature=20)(x, probs20)),
        "kd": (lambda x: lpld_tiny_loss(x, t, 4.0), lambda x: hald_ext.DistillationLoss(4.0)(x, t)),
    }
    r = 0.731
    for name, (theirs, ours) in cases.items():
        errs = []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = layer(feats)
        assert logits.dtype == torch.bfloat16
        exact_x = logits.detach().double().requires_grad_()
        (theirs(exact_x) * r).backward()
        exact_loss = theirs(exact_x).detach()
        for fn in (theirs, ours):
            x = logits.detach().clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = fn(x)
            (loss * r).backward()
            scale = exact_x.grad.abs().max()
            errs.append(((x.grad.double() - exact_x.grad).abs().max() / scale).item())
            errs.append(abs(loss.double().item() - exact_loss.item()) / abs(exact_loss.item()))
        their_err, their_loss_err, our_err, our_loss_err = errs
        assert our_loss_err < 1e-5 and our_loss_err <= their_loss_err + 1e-7, (name, errs)
        assert our_err <= their_err * 1.01 + 1e-12, (name, our_err, their_err)
        assert our_err < 2 ** -8, (name, our_err)  # one bf16 rounding of each gradient entry


def test_second_argument_read_by_dtype_and_misuse_named():
    z, t, y = data(10)
    ids = torch.topk(t, 5, 1).indices
    vals = F.softmax(torch.topk(t, 5, 1).values, 1)
    crit = hald_ext.SoftHardLoss(decode="renorm")
    torch.testing.assert_close(crit(z, ids, vals), crit(z, topk_ids=ids, topk_values=vals))
    with pytest.raises(ValueError, match="top-k ids must be integers"):
        crit(z, ids.float(), vals)
    with pytest.raises(ValueError, match="soft_target must be 'probs' or 'logits'"):
        hald_ext.SoftHardLoss(soft_target="log")
    with pytest.raises(ValueError, match="reduction must be one of"):
        hald_ext.KLDivLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"target must have input's shape"):
        hald_ext.KLDivLoss()(z, t[:, :3])
    # the teacher gets no gradient
    tt = t.clone().requires_grad_()
    hald_ext.DistillationLoss(2.0)(z.clone().requires_grad_(), tt).backward()
    assert tt.grad is None
