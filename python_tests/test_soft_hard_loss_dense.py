"""Dense soft targets in the fused loss: probabilities / codes [B, C] (topk_ids=None) and teacher
logits [B, C] with their own temperature, against the plain-PyTorch reference."""
import itertools

import pytest
import torch

from hald_ext.ops import soft_hard_loss
from hald_ext.reference import soft_hard_loss_reference
from test_soft_hard_loss import (DTYPES, REDUCTIONS, assert_close_case, assert_compiled_matches_eager, encode_values,
                                 hard_targets, op_args, run_both)


def make_dense(B, C, *, seed=0, kind="fp32", normalised=True, pair=False, ignore=False):
    """(logits fp64, values or None, teacher logits or None, codebook, hard target, extra) for one case."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g, dtype=torch.float64) * 4
    t = torch.randn(B, C, generator=g) * 3
    probs = torch.softmax(t, dim=1)
    if not normalised:  # mass below one (truncate / renorm cases)
        probs = probs * (0.5 + 0.5 * torch.rand(B, 1, generator=g))
    values, teacher, codebook = None, None, None
    if kind.startswith("teacher"):
        teacher = t.to(dict(teacher32=torch.float32, teacher16=torch.bfloat16, teacher64=torch.float64)[kind])
    else:
        values, codebook = encode_values(probs, kind)
    target, extra = hard_targets(B, C, g, pair, ignore)
    return logits, values, teacher, codebook, target, extra


KINDS = ["fp32", "fp16", "bf16", "fp64", "code8", "code16", "teacher32", "teacher16", "teacher64"]
CS = [10, 1000, 1001, 21843]
GRID = []
for i, (C, kind) in enumerate(itertools.product(CS, KINDS)):
    codes = kind.startswith("code")
    GRID.append(dict(
        C=C, kind=kind, decode=(["renorm", "truncate"] if codes else ["marginal", "renorm", "truncate"])[i % (2 if codes else 3)],
        T=[1.0, 4.0, 20.0][i % 3], Tt=[None, 2.0, 7.0][(i // 2) % 3], reduction=REDUCTIONS[i % 4],
        dtype=DTYPES[(i // 3) % 3], hard=[0.0, 1.0, 0.5][(i // 2) % 3], smoothing=[0.0, 0.1, 0.8][i % 3],
        pair=i % 2 == 1, hinton=i % 5 == 0, soft_loss="ce" if i % 7 == 3 else "kl"))


def run_dense(case, B, seed=0, dtype=None, **over):
    logits, values, teacher, codebook, target, extra = make_dense(
        B, case["C"], seed=seed, kind=case["kind"], normalised=case["decode"] == "marginal", pair=case["pair"],
        ignore=case["hard"] > 0)
    kw = dict(temperature=case["T"], decode=case["decode"], reduction=case["reduction"], hard_weight=case["hard"],
              label_smoothing=case["smoothing"], hinton=case["hinton"], soft_loss=case["soft_loss"])
    if teacher is not None:
        kw.update(teacher_logits=teacher, teacher_temperature=case["Tt"])
    kw.update(over)
    return run_both(logits, None, values, target, codebook, extra, dtype or case["dtype"], **kw)


@pytest.mark.parametrize("case", GRID, ids=lambda c: "C{C}-{kind}-{decode}-T{T}-{reduction}".format(**c))
def test_dense_matches_reference_grid(case):
    B = 5 if case["C"] > 5000 else 33
    la, lb, ga, gb = run_dense(case, B, seed=case["C"])
    assert ga.dtype == case["dtype"]
    assert_close_case(la, lb, ga, gb, case["dtype"])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("kind", ["fp32", "teacher32"])
def test_dense_every_reduction_and_dtype(kind, reduction, dtype):
    case = dict(C=1000, kind=kind, decode="marginal", T=4.0, Tt=2.0, reduction=reduction, hard=0.7, smoothing=0.1,
                pair=True, hinton=True, soft_loss="kl")
    la, lb, ga, gb = run_dense(case, 17, dtype=dtype)
    assert_close_case(la, lb, ga, gb, dtype)


def test_dense_probabilities_equal_topk_with_k_equal_C():
    """A dense target is a stored label with every class present: both paths give the same numbers."""
    logits, values, _, _, target, extra = make_dense(8, 50, kind="fp32", pair=True)
    ids = torch.arange(50).expand(8, 50)
    perm = torch.argsort(torch.rand(8, 50), dim=1)
    for decode in ("marginal", "renorm", "truncate"):
        kw = dict(temperature=3.0, hard_weight=0.5, label_smoothing=0.1, decode=decode, **extra)
        x1 = logits.clone().requires_grad_()
        x2 = logits.clone().requires_grad_()
        l1 = soft_hard_loss(x1, None, values, target, **kw)
        l2 = soft_hard_loss(x2, ids.gather(1, perm), values.gather(1, perm), target, **kw)
        l1.backward()
        l2.backward()
        torch.testing.assert_close(l1, l2)
        torch.testing.assert_close(x1.grad, x2.grad)


def test_teacher_logits_match_timm_style_kd():
    """kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True) * T^2, as distillation trainers write it."""
    s = torch.randn(16, 100, dtype=torch.float64, requires_grad=True)
    t = torch.randn(16, 100, dtype=torch.float64) * 2
    T = 4.0
    ref = torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1),
                                     reduction="batchmean", log_target=True) * T * T
    ours = soft_hard_loss(s, teacher_logits=t, temperature=T, hinton=True)
    torch.testing.assert_close(ours, ref)
    g_ref, = torch.autograd.grad(ref, s)
    g_ours, = torch.autograd.grad(soft_hard_loss(s, teacher_logits=t, temperature=T, hinton=True), s)
    torch.testing.assert_close(g_ours, g_ref)


def test_dense_gradcheck_float64():
    for kind in ("fp64", "teacher64"):
        logits, values, teacher, codebook, target, extra = make_dense(4, 13, kind=kind, pair=True, ignore=True)
        for decode in ("marginal", "renorm", "truncate"):
            fn = lambda x: soft_hard_loss(x, None, values, target, teacher_logits=teacher,  # noqa: E731
                                          temperature=3.0, teacher_temperature=2.0, decode=decode, hard_weight=0.5,
                                          label_smoothing=0.1, reduction="none", **extra)
            assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


def test_dense_opcheck():
    op, op_ = torch.ops.hald.soft_hard_loss, torch.ops.hald.soft_hard_loss_
    logits, values, _, codebook, target, extra = make_dense(6, 40, kind="code8", normalised=False, pair=True)
    _, _, teacher, _, _, _ = make_dense(6, 40, kind="teacher16")
    for dtype, rg in [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True), (torch.float64, True)]:
        for kw in (dict(topk_values=values, codebook=codebook, decode="renorm"),
                   dict(teacher_logits=teacher, teacher_temperature=2.0)):
            kw = dict(kw, hard_target=target, temperature=4.0, hard_weight=0.5, label_smoothing=0.1, **extra)
            x = logits.to(dtype).requires_grad_(rg)
            torch.library.opcheck(op.default, op_args(op, x, compute_grad=rg, **kw))
            torch.library.opcheck(op_.default, op_args(op_, x.detach().clone(), **kw),
                                  test_utils=("test_schema", "test_faketensor"))


def test_dense_torch_compile_fullgraph():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    teacher = torch.nn.Linear(16, 10)
    _, values, _, _, target, _ = make_dense(8, 10, kind="fp32")
    x = torch.randn(8, 16)

    def step(x):
        with torch.no_grad():
            t = teacher(x)
        return (soft_hard_loss(model(x), None, values, soft_loss="ce", decode="truncate")
                + soft_hard_loss(model(x), teacher_logits=t, hard_target=target, temperature=4.0, hard_weight=0.3))

    assert_compiled_matches_eager(step, x, model)


@pytest.mark.parametrize("kind", ["fp16", "teacher16"])
def test_dense_inplace_matches_out_of_place(kind):
    logits, values, teacher, _, target, extra = make_dense(16, 1000, kind=kind, pair=True)
    for dtype in DTYPES:
        kw = dict(teacher_logits=teacher, temperature=4.0, hard_weight=0.5, **extra)
        a = logits.to(dtype).requires_grad_()
        la = soft_hard_loss(a, None, values, target, **kw)
        la.backward()
        leaf = logits.to(dtype).requires_grad_()
        b = leaf * 1.0
        lb = soft_hard_loss(b, None, values, target, inplace=True, **kw)
        lb.backward()
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(leaf.grad, a.grad, rtol=0, atol=0)


def test_dense_no_grad_and_strided_logits():
    logits, values, _, _, target, _ = make_dense(8, 100, kind="fp32")
    wide = torch.randn(8, 160, dtype=torch.float64)
    wide[:, :100] = logits
    strided = wide.float()[:, :100]
    a = strided.detach().requires_grad_()
    b = strided.contiguous().requires_grad_()
    soft_hard_loss(a, None, values, target, hard_weight=1.0).backward()
    soft_hard_loss(b, None, values, target, hard_weight=1.0).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(soft_hard_loss(strided, None, values), soft_hard_loss_reference(
            strided, None, values))


def _bad_dense():
    logits, values, teacher, _, target, _ = make_dense(4, 10, kind="fp32")
    _, _, t, _, _, _ = make_dense(4, 10, kind="teacher32")
    neg = values.clone()
    neg[1, 3] = -0.01
    nan = values.clone()
    nan[2, 0] = float("nan")
    inf = values.clone()
    inf[0, 5] = float("inf")
    half = values * 0.5
    tnan = t.clone()
    tnan[3, 1] = float("nan")
    tinf = t.clone()
    tinf[0, 0] = float("inf")
    tmask = t.clone()
    tmask[1] = float("-inf")  # every class masked
    return [
        ("topk_values\\[1, 3\\] = -0.01.* is not a finite non-negative", (logits, None, neg), {}),
        ("topk_values\\[2, 0\\] = nan is not a finite", (logits, None, nan), {}),
        ("topk_values\\[0, 5\\] = inf is not a finite", (logits, None, inf), {}),
        ("topk_values row 0 \\(a dense target\\) sums to 0.5", (logits, None, half), {}),
        ("dense target and must have the shape of logits", (logits, None, values[:, :9]), {}),
        ("dense target and must have the shape of logits", (logits, None, values[:3]), {}),
        ("teacher_logits must have the shape of logits", (logits,), dict(teacher_logits=t[:, :5])),
        ("teacher_logits row 3 has a NaN or \\+inf value", (logits,), dict(teacher_logits=tnan)),
        ("teacher_logits row 0 has a NaN or \\+inf value", (logits,), dict(teacher_logits=tinf)),
        ("teacher_logits row 1 has a NaN or \\+inf value, or no finite one", (logits,), dict(teacher_logits=tmask)),
        ("teacher_logits must be floating point", (logits,), dict(teacher_logits=t.long())),
        ("teacher_temperature must be finite and > 0", (logits,), dict(teacher_logits=t, teacher_temperature=0.0)),
        ("either a stored label .* or teacher_logits, not both", (logits, None, values), dict(teacher_logits=t)),
        ("codebook was given with teacher_logits", (logits,), dict(teacher_logits=t, codebook=torch.zeros(256))),
        ("codebook of 256 float entries is required", (logits, None, (values * 255).to(torch.uint8)), {}),
    ]


@pytest.mark.parametrize("match,args,kw", _bad_dense(), ids=lambda v: v if isinstance(v, str) else "")
def test_dense_bad_input_errors(match, args, kw):
    with pytest.raises((RuntimeError, ValueError), match=match):
        soft_hard_loss(*args, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_masked_teacher_class_gets_zero_probability(dtype):
    """A -inf teacher logit masks its class: q = 0 there, the loss and gradient stay finite and equal
    the float64 reference (which takes softmax's 0 for it)."""
    logits, _, teacher, _, target, extra = make_dense(6, 50, kind="teacher32", pair=True)
    teacher = teacher.clone()
    teacher[:, ::7] = float("-inf")
    teacher[2, :45] = float("-inf")  # a row with only five live classes
    for T in (1.0, 3.0):
        la, lb, ga, gb = run_both(logits, None, None, target, None, extra, dtype, teacher_logits=teacher,
                                  temperature=T, hard_weight=0.5)
        assert torch.isfinite(la).all() and torch.isfinite(ga.float()).all()
        assert_close_case(la, lb, ga, gb, dtype)


def test_dense_rows_need_not_sum_to_one_under_renorm_or_truncate():
    logits, values, _, _, _, _ = make_dense(4, 10, kind="fp32", normalised=False)
    for decode in ("renorm", "truncate"):
        torch.testing.assert_close(soft_hard_loss(logits, None, values, decode=decode),
                                   soft_hard_loss_reference(logits, None, values, decode=decode))


def test_module_takes_dense_targets_and_teacher_logits():
    import hald_ext

    logits, values, _, _, target, _ = make_dense(8, 100, kind="fp16")
    _, _, teacher, _, _, _ = make_dense(8, 100, kind="teacher32")
    crit = hald_ext.SoftHardLoss(temperature=4.0, hinton=True, hard_weight=0.5, teacher_temperature=2.0)
    torch.testing.assert_close(crit(logits, hard_target=target, teacher_logits=teacher), soft_hard_loss_reference(
        logits, hard_target=target, teacher_logits=teacher, temperature=4.0, hinton=True, hard_weight=0.5,
        teacher_temperature=2.0))
    torch.testing.assert_close(crit(logits, None, values, target), soft_hard_loss_reference(
        logits, None, values, target, temperature=4.0, hinton=True, hard_weight=0.5))


def test_backward_allocates_no_logits_sized_buffer():
    """The gradient is the forward's buffer: backward adds nothing [B, C]-sized (no zero-filled
    gradient for the op's unused gradient output, no scaled copy when the upstream gradient is 1)."""
    B, C = 64, 1000
    x = torch.randn(B, C).requires_grad_()
    t = torch.softmax(torch.randn(B, C), 1)
    for kw in (dict(topk_values=t, soft_loss="ce", decode="truncate"), dict(teacher_logits=t, hard_target=t.argmax(1),
                                                                           hard_weight=0.5, hinton=True)):
        for scale in (1.0, 0.25):
            x.grad = None
            loss = soft_hard_loss(x, **kw) * scale
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
                loss.backward()
            big = [(e.name, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage >= B * C * 4]
            assert not big, big
            assert x.grad is not None and x.grad.shape == (B, C)
