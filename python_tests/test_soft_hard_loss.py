"""Fused soft-KL / hard-CE loss against the plain-PyTorch reference (hald_ext.reference)."""
import itertools

import pytest
import torch

import hald_ext
from hald_ext.ops import SoftHardSpec, soft_hard_loss, soft_hard_loss_spec
from hald_ext.reference import soft_hard_loss_reference

DECODES = ["marginal", "renorm", "truncate"]
REDUCTIONS = ["batchmean", "mean", "sum", "none"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GRAD_ATOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


def make_case(B, C, k, *, seed=0, value_kind="fp32", device="cpu", pair=False, ignore=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g, dtype=torch.float64) * 4
    teacher = torch.softmax(torch.randn(B, C, generator=g) * 3, dim=1)
    top = teacher.topk(k, dim=1)
    ids, probs = top.indices, top.values
    # Shuffle the k entries: the kernel must not assume sorted ids or values.
    perm = torch.argsort(torch.rand(B, k, generator=g), dim=1)
    ids, probs = ids.gather(1, perm), probs.gather(1, perm)
    values, codebook = encode_values(probs, value_kind)
    ids = ids.to(torch.int32) if C > 65535 else ids.to(torch.int16 if seed % 2 else torch.int64)
    target, extra = hard_targets(B, C, g, pair, ignore)
    move = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
    return (move(logits), move(ids), move(values), move(target), move(codebook),
            {k_: move(v) for k_, v in extra.items()})


def hard_targets(B, C, g, pair, ignore):
    """Hard targets (every third row ignored when `ignore`) and, when `pair`, a CutMix pair."""
    target = torch.randint(0, C, (B,), generator=g)
    if ignore:
        target[::3] = -100
    extra = {}
    if pair:
        extra = dict(target_b=torch.randint(0, C, (B,), generator=g), mix_lambda=torch.rand(B, generator=g))
    return target, extra


VALUE_DTYPES = dict(fp32=torch.float32, fp64=torch.float64, fp16=torch.float16, bf16=torch.bfloat16)


def encode_values(probs, kind):
    """(values, codebook) of probabilities stored as `kind`: a float dtype, or 8/16-bit codes."""
    if kind == "code8":
        return (probs.sqrt() * 255).round().to(torch.uint8), torch.linspace(0, 1, 256) ** 2
    if kind == "code16":
        return (probs * 65535).round().to(torch.int32).to(torch.uint16), torch.linspace(0, 1, 65536)
    return probs.to(VALUE_DTYPES[kind]), None


def run_both(logits, ids, values, target, codebook, extra, dtype, upstream_seed=1, **kw):
    """(loss, grad) of the fused op and of the float64 reference on the same (dtype-rounded) logits."""
    x = logits.to(dtype)
    a = x.clone().requires_grad_()
    b = x.double().clone().requires_grad_()
    la = soft_hard_loss(a, ids, values, target, codebook=codebook, **extra, **kw)
    lb = soft_hard_loss_reference(b, ids, values, target, codebook=codebook, **extra, **kw)
    # A random upstream gradient: the loss is not the last node of the graph.
    up = torch.rand(la.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64) + 0.5
    (la * up.to(la.device, la.dtype)).sum().backward()
    (lb * up.to(lb.device)).sum().backward()
    return la, lb, a.grad, b.grad


def assert_close_case(la, lb, ga, gb, dtype):
    # fp32 accumulation over up to 21843 classes: a few 1e-5 relative on the loss.
    torch.testing.assert_close(la.double(), lb.double(), rtol=5e-5 if dtype != torch.float64 else 1e-10,
                               atol=1e-5 if dtype != torch.float64 else 1e-10)
    scale = max(gb.abs().max().item(), 1e-3)
    torch.testing.assert_close(ga.double(), gb.double(), rtol=0, atol=GRAD_ATOL[dtype] * scale * 2)


# The grid: every (C, k, decode) cell, cycling through temperatures, reductions, dtypes, value
# encodings and hard-term options so each value of each axis appears many times.
CS = [10, 1000, 1001, 21843]
GRID = []
for i, (C, kk, decode) in enumerate(itertools.product(CS, ["1", "5", "C"], DECODES)):
    k = {"1": 1, "5": 5, "C": C}[kk]
    GRID.append(dict(
        C=C, k=k, decode=decode, T=[1.0, 4.0, 20.0][i % 3], reduction=REDUCTIONS[i % 4], dtype=DTYPES[i % 3],
        values=["fp32", "fp16", "code8", "code16"][(i // 3) % 4], hard=[0.0, 1.0, 0.5][(i // 2) % 3],
        smoothing=[0.0, 0.1, 0.8][i % 3], pair=i % 2 == 1, hinton=i % 5 == 0, soft_loss="ce" if i % 7 == 3 else "kl",
    ))


@pytest.mark.parametrize("case", GRID, ids=lambda c: "C{C}-k{k}-{decode}-T{T}-{reduction}-{values}".format(**c))
def test_matches_reference_grid(case):
    B = 5 if case["C"] > 5000 else 33
    logits, ids, values, target, codebook, extra = make_case(
        B, case["C"], case["k"], seed=case["C"] + case["k"], value_kind=case["values"], pair=case["pair"],
        ignore=case["hard"] > 0)
    la, lb, ga, gb = run_both(logits, ids, values, target, codebook, extra, case["dtype"],
                              temperature=case["T"], decode=case["decode"], reduction=case["reduction"],
                              hard_weight=case["hard"], label_smoothing=case["smoothing"], hinton=case["hinton"],
                              soft_loss=case["soft_loss"])
    assert la.dtype == torch.float32
    assert ga.dtype == case["dtype"]
    assert_close_case(la, lb, ga, gb, case["dtype"])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_every_reduction_and_dtype(reduction, dtype):
    logits, ids, values, target, codebook, extra = make_case(17, 1000, 5, pair=True, ignore=True)
    la, lb, ga, gb = run_both(logits, ids, values, target, codebook, extra, dtype, temperature=4.0,
                              reduction=reduction, hard_weight=0.7, label_smoothing=0.1)
    assert_close_case(la, lb, ga, gb, dtype)


@pytest.mark.parametrize("decode", DECODES)
def test_soft_only_and_hard_only(decode):
    logits, ids, values, target, codebook, extra = make_case(9, 100, 5)
    for kw in [dict(soft_weight=1.0, hard_weight=0.0), dict(soft_weight=0.0, hard_weight=1.0)]:
        la, lb, ga, gb = run_both(logits, ids, values, target, codebook, extra, torch.float64, decode=decode,
                                  temperature=20.0, **kw)
        assert_close_case(la, lb, ga, gb, torch.float64)
    # Hard term alone, without any soft label.
    x = logits.clone().requires_grad_()
    loss = soft_hard_loss(x, hard_target=target, soft_weight=0.0, hard_weight=1.0, label_smoothing=0.1)
    ref = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    torch.testing.assert_close(loss, ref)


def test_matches_torch_cross_entropy_and_kl_div():
    """Anchor the reference itself to torch's own losses."""
    logits, ids, values, target, codebook, extra = make_case(8, 50, 50)  # k = C: the full distribution
    T = 4.0
    q = torch.zeros(8, 50, dtype=torch.float64).scatter(1, ids.long(), values.double())
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits / T, 1), q, reduction="batchmean")
    torch.testing.assert_close(soft_hard_loss(logits, ids, values, temperature=T), kl)
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=3, label_smoothing=0.2)
    target = target.clone()
    target[0] = 3
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=3, label_smoothing=0.2)
    ours = soft_hard_loss(logits, hard_target=target, soft_weight=0, hard_weight=1, label_smoothing=0.2,
                          ignore_index=3, reduction="mean")
    torch.testing.assert_close(ours, ce)


def test_all_rows_ignored_gives_zero_hard_term():
    logits = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    target = torch.full((4,), -100)
    for reduction in REDUCTIONS:
        loss = soft_hard_loss(logits, hard_target=target, soft_weight=0, hard_weight=1, reduction=reduction)
        assert torch.all(loss == 0)
        loss.sum().backward()
        assert torch.all(logits.grad == 0)
        logits.grad = None


def test_gradcheck_float64():
    logits, ids, values, target, codebook, extra = make_case(4, 13, 3, pair=True, ignore=True)
    for decode in DECODES:
        fn = lambda x: soft_hard_loss(x, ids, values, target, temperature=3.0, decode=decode,  # noqa: E731
                                      hard_weight=0.5, label_smoothing=0.1, reduction="none", **extra)
        assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


def op_args(op, logits, compute_grad=True, **kw):
    """Positional arguments of a raw op call (the out-of-place op also takes `compute_grad`)."""
    args = SoftHardSpec(**kw).op_args(logits)
    return args + (compute_grad,) if op is torch.ops.hald.soft_hard_loss else args


def _opcheck_samples():
    logits, ids, values, target, codebook, extra = make_case(6, 40, 5, value_kind="code8", pair=True)
    base = dict(topk_ids=ids, topk_values=values, hard_target=target, codebook=codebook, temperature=4.0,
                hard_weight=0.5, label_smoothing=0.1, **extra)
    for dtype, rg in [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True), (torch.float64, True)]:
        yield logits.to(dtype).requires_grad_(rg), dict(base, compute_grad=rg)


def test_opcheck():
    for logits, kw in _opcheck_samples():
        torch.library.opcheck(torch.ops.hald.soft_hard_loss.default, op_args(torch.ops.hald.soft_hard_loss, logits, **kw))
        kw.pop("compute_grad")
        inplace_args = op_args(torch.ops.hald.soft_hard_loss_, logits.detach().clone(), **kw)
        torch.library.opcheck(torch.ops.hald.soft_hard_loss_.default, inplace_args,
                              test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    _, ids, values, target, codebook, _ = make_case(8, 10, 3, value_kind="code8")
    x = torch.randn(8, 16)

    def step(x):
        return soft_hard_loss(model(x), ids, values, target, codebook=codebook, temperature=4.0, hard_weight=0.3)

    assert_compiled_matches_eager(step, x, model)


def assert_compiled_matches_eager(step, x, model):
    """torch.compile(fullgraph=True) of a training step gives the eager loss and parameter gradients."""
    eager = step(x)
    eager.backward()
    g_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(step, fullgraph=True)(x)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(model.parameters(), g_eager):
        torch.testing.assert_close(p.grad, g)


def test_inplace_matches_out_of_place_and_reuses_buffer():
    logits, ids, values, target, codebook, extra = make_case(16, 1000, 5, pair=True)
    for dtype in DTYPES:
        x = logits.to(dtype)
        a = x.clone().requires_grad_()
        la = soft_hard_loss(a, ids, values, target, temperature=4.0, hard_weight=0.5, **extra)
        la.backward()
        leaf = x.clone().requires_grad_()
        b = leaf * 1.0  # a non-leaf whose buffer the loss may overwrite
        lb = soft_hard_loss(b, ids, values, target, temperature=4.0, hard_weight=0.5, inplace=True, **extra)
        lb.backward()
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(leaf.grad, a.grad, rtol=0, atol=0)
        assert torch.equal(b.detach(), a.grad)  # the buffer now holds the gradient


def test_row_strided_logits():
    logits, ids, values, target, codebook, extra = make_case(8, 100, 5)
    wide = torch.randn(8, 160, dtype=torch.float64)
    wide[:, :100] = logits
    view = wide[:, :100].float().clone()  # contiguous reference input
    strided = wide.float()[:, :100]
    assert strided.stride(0) == 160
    a = strided.detach().requires_grad_()
    b = view.requires_grad_()
    soft_hard_loss(a, ids, values, target, hard_weight=1.0).backward()
    soft_hard_loss(b, ids, values, target, hard_weight=1.0).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_deterministic_and_no_grad_path():
    logits, ids, values, target, codebook, extra = make_case(64, 1000, 5)
    x = logits.float()
    runs = []
    for _ in range(2):
        a = x.clone().requires_grad_()
        loss = soft_hard_loss(a, ids, values, target, temperature=20.0, hard_weight=1.0)
        loss.backward()
        runs.append((loss, a.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    with torch.no_grad():
        assert torch.equal(soft_hard_loss(x, ids, values, target, temperature=20.0, hard_weight=1.0), runs[0][0])


def test_module_uses_its_codebook():
    logits, ids, values, target, codebook, extra = make_case(8, 100, 5, value_kind="code8")
    crit = hald_ext.SoftHardLoss(temperature=4.0, codebook=codebook, hard_weight=0.5)
    torch.testing.assert_close(
        crit(logits, ids, values, target),
        soft_hard_loss_reference(logits, ids, values, target, codebook=codebook, temperature=4.0, hard_weight=0.5))
    assert "temperature=4.0" in repr(crit)


def test_retain_graph_backward_twice():
    logits, ids, values, target, codebook, extra = make_case(4, 10, 3)
    x = logits.clone().requires_grad_()
    loss = soft_hard_loss(x, ids, values)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    # The in-place mode consumes its buffer: a second backward is refused, not silently wrong.
    y = logits.clone().requires_grad_() * 1.0
    loss = soft_hard_loss(y, ids, values, inplace=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward can run only once"):
        loss.backward()


# ---- bad input: each gets a clear error naming the problem -------------------------------------
def _bad_cases():
    logits, ids, values, target, codebook, extra = make_case(4, 10, 3)
    ids64 = ids.long()
    big = ids64.clone()
    big[1, 2] = 10
    neg = ids64.clone()
    neg[0, 0] = -1
    dup = ids64.clone()
    dup[2, 1] = dup[2, 0]
    badp = values.clone()
    badp[0, 0] = -0.1
    nanp = values.clone()
    nanp[1, 1] = float("nan")
    bad_t = target.clone()
    bad_t[3] = 10
    codes = (values * 255).to(torch.uint8)
    return [
        ("outside \\[0, 10\\)", (logits, big, values), {}),
        ("outside \\[0, 10\\)", (logits, neg, values), {}),
        ("repeats class", (logits, dup, values), {}),
        ("k \\(topk_ids.size\\(1\\) = 11\\) must be in \\[0, C = 10\\]",
         (logits, torch.zeros(4, 11, dtype=torch.long), torch.zeros(4, 11)), {}),
        ("topk_ids must have shape \\[4, k\\]", (logits, ids[:3], values[:3]), {}),
        ("hard_target must have shape \\[4\\]", (logits, ids, values, target[:2]), dict(hard_weight=1.0)),
        ("hard_target\\[3\\] = 10 is outside", (logits, ids, values, bad_t), dict(hard_weight=1.0)),
        ("logits must be float32", (logits.long(), ids, values), {}),
        ("logits must be 2-D", (logits[0], ids, values), {}),
        ("topk_values must be probabilities", (logits, ids, values.to(torch.int64)), {}),
        ("topk_ids must be int64", (logits, ids.float(), values), {}),
        ("temperature must be finite and > 0", (logits, ids, values), dict(temperature=0.0)),
        ("temperature must be finite and > 0", (logits, ids, values), dict(temperature=float("inf"))),
        ("temperature must be finite and > 0", (logits, ids, values), dict(temperature=-2.0)),
        ("codebook of 256 float entries is required", (logits, ids, codes), {}),
        ("must have shape \\[256\\]", (logits, ids, codes), dict(codebook=torch.zeros(255))),
        ("a codebook was given but topk_values are probabilities", (logits, ids, values),
         dict(codebook=torch.zeros(256))),
        ("not a finite non-negative probability", (logits, ids, badp), {}),
        ("not a finite non-negative probability", (logits, ids, nanp), {}),
        ("must be given together", (logits, ids, None), {}),
        ("mix_lambda\\[0\\] = 1.5 is outside", (logits, ids, values, target),
         dict(hard_weight=1.0, target_b=target, mix_lambda=torch.full((4,), 1.5))),
        ("decode must be one of", (logits, ids, values), dict(decode="soft")),
        ("reduction must be one of", (logits, ids, values), dict(reduction="avg")),
        ("soft_loss must be 'kl' or 'ce'", (logits, ids, values), dict(soft_loss="js")),
        ("give a soft target", (logits,), {}),
        ("label_smoothing must be in \\[0, 1\\]", (logits, ids, values), dict(label_smoothing=1.5)),
    ]


@pytest.mark.parametrize("match,args,kw", _bad_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_errors(match, args, kw):
    with pytest.raises((RuntimeError, ValueError), match=match):
        soft_hard_loss(*args, **kw)


# ---- the argument spec -------------------------------------------------------------------------
def test_spec_matches_schema_and_wrapper():
    """One argument list: the spec's fields are the schema's, and the spec entry point equals the wrapper."""
    names = [a.name for a in torch.ops.hald.soft_hard_loss_.default._schema.arguments][1:]
    assert tuple(names) == SoftHardSpec._fields
    logits, ids, values, target, codebook, extra = make_case(6, 30, 4, value_kind="code8", pair=True)
    spec = SoftHardSpec(ids, values, target, codebook=codebook, temperature=3.0, hard_weight=0.5, **extra)
    kw = spec._asdict()
    direct = soft_hard_loss(logits, kw.pop("topk_ids"), kw.pop("topk_values"), kw.pop("hard_target"), **kw)
    torch.testing.assert_close(soft_hard_loss_spec(logits, spec), direct)
    torch.testing.assert_close(soft_hard_loss_reference(logits, spec), direct)
    with pytest.raises(TypeError):
        SoftHardSpec(tempreature=2.0)


# ---- gradient traffic: one buffer, written in the forward, adopted as .grad --------------------
def _raw_forward(x, spec):
    """The op's (rows, grad) as the wrapper gets them (the autograd kernel is in C++)."""
    return torch.ops.hald.soft_hard_loss.default(*spec.op_args(x), True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_adopts_the_forward_gradient_buffer(dtype):
    logits, ids, values, target, codebook, extra = make_case(8, 100, 5, pair=True)
    spec = SoftHardSpec(ids, values, target, temperature=4.0, hard_weight=0.5, **extra)
    ref = logits.to(dtype).clone().requires_grad_()
    soft_hard_loss_spec(ref, spec).backward()
    for scale in (1.0, 3.0):  # 1: nothing to do; 3: scaled in place
        x = logits.to(dtype).clone().requires_grad_()
        rows, grad = _raw_forward(x, spec)
        ptr = grad.data_ptr()
        del grad
        (rows.sum() * scale).backward()
        assert x.grad.data_ptr() == ptr, "backward must hand autograd the forward's buffer, not a copy"
        torch.testing.assert_close(x.grad.float(), ref.grad.float() * scale, rtol=1e-2 if dtype != torch.float32
                                   else 1e-6, atol=1e-6)


def test_retained_graph_keeps_the_saved_gradient():
    """retain_graph: backward scales a copy, so a second backward with another factor is right."""
    logits, ids, values, target, codebook, extra = make_case(4, 50, 3)
    x = logits.clone().requires_grad_()
    loss = soft_hard_loss(x, ids, values, target, hard_weight=0.5)
    (loss * 2).backward(retain_graph=True)
    g2 = x.grad.clone()
    x.grad = None
    (loss * 3).backward()
    torch.testing.assert_close(x.grad, 1.5 * g2)


def _big_allocations(fn, nbytes):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [(e.name, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage >= nbytes]


def test_forward_and_backward_allocate_one_gradient_buffer():
    B, C = 64, 1000
    logits, ids, values, target, codebook, extra = make_case(B, C, 5, pair=True)
    x = logits.float().requires_grad_()

    def step(scale):
        x.grad = None
        (soft_hard_loss(x, ids, values, target, hard_weight=0.5, **extra) * scale).backward()

    for scale in (1.0, 0.5):
        big = _big_allocations(lambda: step(scale), B * C * 4)
        assert len(big) == 1, big  # the gradient, written by the forward kernel
    with torch.no_grad():  # forward only: no gradient buffer at all
        assert not _big_allocations(lambda: soft_hard_loss(x, ids, values, target), B * C * 4)
    assert not _big_allocations(lambda: soft_hard_loss(x.detach(), ids, values, target), B * C * 4)


# ---- edge cases --------------------------------------------------------------------------------
@pytest.mark.parametrize("decode", DECODES)
def test_empty_stored_label_k0(decode):
    """k = 0 (no stored entries): marginal is the uniform target, renorm / truncate an empty one; the
    id and value tensors are never read."""
    logits, ids, values, target, codebook, extra = make_case(5, 20, 3)
    for idt in (torch.int64, torch.int16):
        empty_ids, empty_vals = torch.empty(5, 0, dtype=idt), torch.empty(5, 0)
        la, lb, ga, gb = run_both(logits, empty_ids, empty_vals, target, None, {}, torch.float32, decode=decode,
                                  hard_weight=0.5, temperature=2.0)
        assert_close_case(la, lb, ga, gb, torch.float32)


def test_inplace_refuses_overlapping_rows():
    row = torch.randn(1, 10)
    _, ids, values, _, _, _ = make_case(4, 10, 3)
    for x in (row.expand(4, 10), torch.randn(40).as_strided((4, 10), (5, 1))):
        with pytest.raises(RuntimeError, match="inplace=True needs logits rows that do not overlap"):
            soft_hard_loss(x, ids, values, inplace=True)


def test_duplicate_ids_found_for_every_k():
    """The O(k) bitset check: a repeat anywhere in a long row, and a clean call right after it."""
    C = 3000
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, C, generator=g)
    ids = torch.stack([torch.randperm(C, generator=g) for _ in range(3)])
    values = torch.full((3, C), 1.0 / C)
    dup = ids.clone()
    dup[2, 2999] = dup[2, 17]
    with pytest.raises(RuntimeError, match=f"topk_ids row 2 repeats class {int(dup[2, 17])}"):
        soft_hard_loss(logits, dup, values)
    torch.testing.assert_close(soft_hard_loss(logits, ids, values), soft_hard_loss_reference(logits, ids, values))


@pytest.mark.parametrize("C", [1000, 21843])
@pytest.mark.parametrize("kind", ["topk", "dense-ce", "teacher"])
def test_loss_value_error_at_most_torch_fp32(kind, C):
    """fp32 loss against a float64 computation on the same inputs: no worse than the same loss written
    with torch's own fp32 ops (log_softmax + cascade-summed reductions)."""
    B = 16
    g = torch.Generator().manual_seed(C)
    logits = torch.randn(B, C, generator=g) * 3
    t = torch.randn(B, C, generator=g) * 3
    if kind == "topk":
        top = torch.softmax(t, 1).topk(10, dim=1)
        kw = dict(topk_ids=top.indices, topk_values=top.values, temperature=4.0)
    elif kind == "dense-ce":
        kw = dict(topk_values=torch.softmax(t, 1), soft_loss="ce", decode="truncate")
    else:
        kw = dict(teacher_logits=t, temperature=4.0)
    ours = soft_hard_loss(logits, reduction="none", **kw).double()
    exact = soft_hard_loss_reference(logits.double(), reduction="none",
                                     **{k_: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
                                        for k_, v in kw.items()})
    torch_fp32 = soft_hard_loss_reference(logits, reduction="none", **kw).double()
    err, err_torch = (ours - exact).abs().max().item(), (torch_fp32 - exact).abs().max().item()
    assert err <= max(err_torch, 1e-6 * exact.abs().max().item()), (err, err_torch)
