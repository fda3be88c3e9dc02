"""hald_ext.timm against timm's own objects on the same inputs: values and gradients."""
import copy

import pytest
import torch

timm = pytest.importorskip("timm")
from timm.data import Mixup  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy as TimmLSCE  # noqa: E402
from timm.loss import SoftTargetCrossEntropy as TimmSTCE  # noqa: E402
from timm.task import LogitDistillationTask as TimmKDTask  # noqa: E402

from hald_ext import timm as ht  # noqa: E402


def grads_of(loss_fn, x, *args, seed=0):
    """(loss, d(r * loss)/dx) for a random upstream factor r: the loss need not be the last node."""
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x, *args)
    r = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    (loss * r.to(loss.dtype)).backward()
    return loss, x.grad


def close(a, b, dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(a.double(), b.double(), **tol)


def mixup_targets(B, C, seed, smoothing=0.1):
    torch.manual_seed(seed)
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=smoothing, num_classes=C)
    _, target = mix(torch.randn(B, 3, 8, 8), torch.randint(0, C, (B,)))
    return target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(16, 10), (8, 1000), (4, 3, 21843)])
def test_soft_target_cross_entropy_equals_timm(shape, dtype):
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    x = torch.randn(*shape, generator=g, dtype=dtype) * 3
    rows = x.numel() // shape[-1]
    targets = [torch.softmax(torch.randn(rows, shape[-1], generator=g) * 2, -1).reshape(shape),
               mixup_targets(rows, shape[-1], seed=shape[-1]).reshape(shape)]
    for target in targets:
        la, ga = grads_of(ht.SoftTargetCrossEntropy(), x, target)
        lb, gb = grads_of(TimmSTCE(), x, target)
        close(la, lb, dtype)
        close(ga, gb, dtype)


def test_soft_target_cross_entropy_bf16_logits_close_to_timm_in_fp32():
    x = torch.randn(32, 1000) * 3
    target = mixup_targets(32, 1000, seed=1)
    la, ga = grads_of(ht.SoftTargetCrossEntropy(), x.bfloat16(), target)
    lb, gb = grads_of(TimmSTCE(), x.bfloat16().float(), target)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga.float(), gb, rtol=0, atol=2 ** -7 * gb.abs().max().item())  # rounded twice: forward, upstream factor


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_smoothing_cross_entropy_equals_timm(smoothing, dtype):
    g = torch.Generator().manual_seed(int(smoothing * 10))
    x = torch.randn(24, 100, generator=g, dtype=dtype) * 3
    y = torch.randint(0, 100, (24,), generator=g)
    ours, theirs = ht.LabelSmoothingCrossEntropy(smoothing), TimmLSCE(smoothing)
    assert (ours.smoothing, ours.confidence) == (theirs.smoothing, theirs.confidence)
    la, ga = grads_of(ours, x, y)
    lb, gb = grads_of(theirs, x, y)
    close(la, lb, dtype)
    close(ga, gb, dtype)
    with pytest.raises(AssertionError):
        ht.LabelSmoothingCrossEntropy(1.0)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_distillation_loss_equals_timm_formula(T):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(16, 1000, generator=g, dtype=torch.float64) * 2
    t = torch.randn(16, 1000, generator=g, dtype=torch.float64) * 3

    def timm_kd(s, t):  # the expression in timm.task.LogitDistillationTask.forward
        return torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1),
                                          reduction="batchmean", log_target=True) * T ** 2

    la, ga = grads_of(lambda x, t: ht.distillation_loss(x, t, T), s, t)
    lb, gb = grads_of(timm_kd, s, t)
    close(la, lb, torch.float64)
    close(ga, gb, torch.float64)


def _models(seed):
    torch.manual_seed(seed)
    student = timm.create_model("test_efficientnet", num_classes=10, in_chans=1, pretrained=False)
    teacher = timm.create_model("test_efficientnet", num_classes=10, in_chans=1, pretrained=False)
    return student, teacher


@pytest.mark.parametrize("criterion", ["ce", "smoothing", "mixup"])
@pytest.mark.parametrize("weights", [dict(), dict(task_loss_weight=0.3), dict(distill_loss_weight=0.7,
                                                                            task_loss_weight=0.5)])
def test_logit_distillation_task_equals_timm(criterion, weights):
    student, teacher = _models(0)
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    crit_timm, crit_ours = {
        "ce": (torch.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()),
        "smoothing": (TimmLSCE(0.1), ht.LabelSmoothingCrossEntropy(0.1)),
        "mixup": (TimmSTCE(), ht.SoftTargetCrossEntropy()),
    }[criterion]
    target = mixup_targets(8, 10, seed=2) if criterion == "mixup" else y
    results = []
    for cls, crit in [(TimmKDTask, crit_timm), (ht.LogitDistillationTask, crit_ours)]:
        task = cls(copy.deepcopy(student), copy.deepcopy(teacher), criterion=crit, temperature=4.0, verbose=False,
                   **weights)
        out = task(x, target)
        (out["loss"] * 0.73).backward()  # an upstream factor, as under a gradient scaler
        grads = [p.grad.clone() for p in task.trainable_module.parameters()]
        results.append((out, grads))
    (a, ga), (b, gb) = results
    for key in ("loss", "task_loss", "kd_loss", "output"):
        torch.testing.assert_close(b[key], a[key], rtol=2e-5, atol=2e-6)
    # fp32 through a conv net with batch norm: differences at the last bits of the logits' gradient
    # grow through the backward pass; compare against each tensor's scale.
    for p, q in zip(gb, ga):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=max(1e-4 * q.abs().max().item(), 1e-6))


def test_logit_distillation_loss_is_the_task_total_in_one_pass():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(16, 100, generator=g, dtype=torch.float64)
    t = torch.randn(16, 100, generator=g, dtype=torch.float64)
    y = torch.randint(0, 100, (16,), generator=g)
    T, wt, wd = 4.0, 0.3, 0.7

    def timm_total(s, t, y):
        kd = torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1),
                                        reduction="batchmean", log_target=True) * T ** 2
        return wt * TimmLSCE(0.1)(s, y) + wd * kd

    fused = ht.LogitDistillationLoss(temperature=T, task_loss_weight=wt, distill_loss_weight=wd, smoothing=0.1)
    la, ga = grads_of(fused, s, t, y)
    lb, gb = grads_of(timm_total, s, t, y)
    close(la, lb, torch.float64)
    close(ga, gb, torch.float64)


def test_negative_soft_target_names_the_argument():
    target = mixup_targets(4, 10, seed=0)
    target[1, 2] = -0.5
    with pytest.raises(RuntimeError, match="topk_values\\[1, 2\\] = -0.5 is not a finite non-negative"):
        ht.SoftTargetCrossEntropy()(torch.randn(4, 10), target)
