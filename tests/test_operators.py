"""VDM's operator designs (the paper's Fig. 6): shapes, where their gradient goes, the linear design's closed-form
optimum, the default path unchanged, and the frozen-image probe."""

from __future__ import annotations

import pytest
import torch

from dreammapping.guidance import VDM
from dreammapping.guidance.operator_probe import ProbeSummary, curve, run_frozen_probe, summarise
from dreammapping.guidance.operators import LinearOperator, WithObservationNoise, build_operator, linear_optimum
from dreammapping.guidance.ulite import ULite, _sinusoidal

DESIGNS = ["nonlinear", "linear", "nonlinear-noise"]
# every design, plus the t-conditioned U-Lites (t added at the bottleneck; FiLM on every decoder level)
CONFIGS = {**{d: {"operator_design": d} for d in DESIGNS}, "t-bottleneck": {"condition_on_t": True},
           "t-film": {"condition_on_t": True, "t_conditioning": "film"}}


@pytest.mark.parametrize("name", CONFIGS)
def test_each_design_maps_eps_to_its_shape_and_starts_as_the_identity(name, tiny_prior):
    op = VDM(tiny_prior, VDM.Config(**CONFIGS[name])).operator
    design = CONFIGS[name].get("operator_design", "nonlinear")
    eps = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = op(eps, torch.tensor([10, 500, 990]))
    assert out.shape == eps.shape
    torch.testing.assert_close(out, eps)  # identity start: A = 1, n = 0, U-Lite's head 0
    kind = {"nonlinear": ULite, "linear": LinearOperator, "nonlinear-noise": WithObservationNoise}[design]
    assert type(op) is kind
    if design != "nonlinear":  # the extra tensor is the shape of ε_φ, one per model-space image
        tensor = op.scale if design == "linear" else op.noise
        assert tensor.shape == (3, 16, 16)


@pytest.mark.parametrize("name", CONFIGS)
def test_gradient_reaches_only_the_operator_and_the_render_only_through_the_update(name, tiny_prior):
    """aux_loss (L_op) trains ψ and nothing else; loss (the update) reaches the render and never ψ or the UNet."""
    torch.manual_seed(0)
    method = VDM(tiny_prior, VDM.Config(guidance_scale=4.0, **CONFIGS[name]))
    with torch.no_grad():  # move ψ off the identity so that every parameter has a live gradient path
        for p in method.parameters():
            p.add_(0.05 * torch.randn_like(p))
    emb = tiny_prior.encode_text("a red cube").for_views(["front", "back"])
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = method(images, emb, 0, 1)
    ops, unet = method.parameters(), list(tiny_prior.unet.parameters())

    out.aux_loss.backward(retain_graph=True)
    assert images.grad is None  # L_op never reaches the render
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ops)  # every ψ tensor trains
    assert all(p.grad is None for p in unet)  # never the frozen UNet

    for p in ops:
        p.grad = None
    out.loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # the update reaches the render
    assert all(p.grad is None for p in ops + unet)  # and trains neither ψ nor the UNet


def test_linear_design_reaches_its_closed_form_optimum():
    """A known problem: ε_φ = a·ε + b·ξ elementwise (a, b per element, ξ independent noise). L_op's optimum is
    A* = E[ε_φ ε]/E[ε_φ²] = a/(a² + b²) per element; `linear_optimum` on samples and Adam on L_op both find it."""
    gen = torch.Generator().manual_seed(0)
    a = 0.5 + torch.rand(1, 2, 3, generator=gen)
    b = 0.2 + 0.5 * torch.rand(1, 2, 3, generator=gen)
    eps = torch.randn(20000, 1, 2, 3, generator=gen)
    eps_phi = a * eps + b * torch.randn(20000, 1, 2, 3, generator=gen)
    exact = a / (a ** 2 + b ** 2)
    torch.testing.assert_close(linear_optimum(eps_phi, eps), exact, atol=0.02, rtol=0.0)

    op = LinearOperator((1, 2, 3))
    opt = torch.optim.Adam(op.parameters(), lr=0.02)
    for _ in range(800):  # full-batch gradient descent on L_op
        opt.zero_grad()
        (op(eps_phi) - eps).pow(2).mean().backward()
        opt.step()
    torch.testing.assert_close(op.scale.detach(), linear_optimum(eps_phi, eps), atol=2e-3, rtol=0.0)


def test_default_operator_is_todays_ulite_bit_for_bit(tiny_prior):
    """The default design builds the same U-Lite as before the designs existed: same weights from the same seed,
    and the same number of draws from the global RNG (so a seeded run's later draws are unchanged)."""
    for kwargs in ({}, {"condition_on_t": True}, {"operator_size": "ulite"}, {"operator_init": "random"}):
        torch.manual_seed(3)
        built = VDM(tiny_prior, VDM.Config(**kwargs)).operator
        after_built = torch.rand(4)
        torch.manual_seed(3)
        c = VDM.Config(**kwargs)
        before = ULite.for_prior(tiny_prior, size=c.operator_size, condition_on_t=c.condition_on_t,
                                 residual=c.operator_init == "identity")
        after_before = torch.rand(4)
        assert type(built) is ULite
        for (n1, p1), (n2, p2) in zip(built.state_dict().items(), before.state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2), n1
        assert torch.equal(after_built, after_before)
    # the noisy design wraps exactly that U-Lite (same draws) and adds a zero tensor
    torch.manual_seed(3)
    noisy = VDM(tiny_prior, VDM.Config(operator_design="nonlinear-noise")).operator
    torch.manual_seed(3)
    plain = VDM(tiny_prior).operator
    for (n1, p1), (n2, p2) in zip(noisy.operator.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(p1, p2), n1


def test_film_conditioning_makes_the_output_depend_on_t(tiny_prior):
    """FiLM's scale, shift and output gain are live paths from t (off the zero start), absent by default."""
    torch.manual_seed(0)
    op = VDM(tiny_prior, VDM.Config(condition_on_t=True, t_conditioning="film")).operator
    assert op.film is not None and VDM(tiny_prior, VDM.Config(condition_on_t=True)).operator.film is None
    with torch.no_grad():
        for p in op.parameters():
            p.add_(0.1 * torch.randn_like(p))
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out_lo, out_hi = op(eps, torch.tensor([10, 10])), op(eps, torch.tensor([900, 900]))
    assert (out_lo - out_hi).norm() > 1e-3 * out_lo.norm()
    with torch.no_grad():  # the output gain alone: exp(gain(t)) multiplies the head's output per channel
        for p in [*op.film.parameters()]:
            p.zero_()
        gain = op.out_gain(op.t_embed(_sinusoidal(
            torch.tensor([10.0, 900.0]) / op.num_train_timesteps, 32))).exp()
    assert gain.shape == (2, 3) and not torch.allclose(gain[0], gain[1])
    with pytest.raises(ValueError, match="t_conditioning"):
        ULite(3, (8, 16), condition_on_t=True, t_conditioning="concat")


def test_bad_design_options_are_refused(tiny_prior):
    with pytest.raises(ValueError, match="operator_design"):
        VDM(tiny_prior, VDM.Config(operator_design="quadratic"))
    with pytest.raises(ValueError, match="condition_on_t"):
        build_operator(tiny_prior, VDM.Config(operator_design="linear", condition_on_t=True))
    with pytest.raises(ValueError, match="operator_init"):
        build_operator(tiny_prior, VDM.Config(operator_design="linear", operator_init="random"))


@pytest.mark.parametrize("name", CONFIGS)
def test_diagnostics_match_hand_computation_for_each_design(name, tiny_prior):
    """op_ratio and cos(VDM, SDS) as logged, against the same quantities computed by hand from the draw."""
    torch.manual_seed(0)
    method = VDM(tiny_prior, VDM.Config(guidance_scale=4.0, **CONFIGS[name]))
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    emb = tiny_prior.encode_text("a red cube").for_views(["front", "back"])
    z = 2 * torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) - 1
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([100, 700])
    g, _, logs = method.gradient(z, t, noise, emb)
    a = tiny_prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * z + (1 - a).sqrt() * noise
    with torch.no_grad():
        e_c = tiny_prior.unet(x_t, t, encoder_hidden_states=emb.cond).sample
        e_u = tiny_prior.unet(x_t, t, encoder_hidden_states=emb.uncond).sample
        m = method.operator(e_c, t)
    e_cfg = e_u + 4.0 * (e_c - e_u)
    lam = torch.where(t.view(-1, 1, 1, 1) > 300, torch.ones_like(a), 1 - a)
    g_ref, g_sds = (1 - a) * (e_cfg - lam * m), (1 - a) * (e_cfg - noise)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
    ratio = float((m - noise).pow(2).sum() / (e_c - noise).pow(2).sum())
    assert logs["op_ratio"] == pytest.approx(ratio, rel=1e-4)
    cos = [float((g_ref[i] * g_sds[i]).sum() / (g_ref[i].norm() * g_sds[i].norm())) for i in range(2)]
    assert logs["cos_sds"] == pytest.approx(sum(cos) / 2, abs=1e-5)
    assert logs["loss_op"] == pytest.approx(float((m - noise).pow(2).mean()), rel=1e-4)


def test_frozen_probe_keeps_the_image_and_pools_as_a_ratio_of_sums(tiny_prior):
    """The probe trains ψ only (the image never moves), reproduces text2img(frozen=True)'s draws for a batch of
    one, keeps one row per draw, and pools op_ratio as Σ err_op / Σ err_id."""
    from dreammapping.guidance.text2img import text2img

    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    config = VDM.Config(guidance_scale=4.0, condition_on_t=True)
    seen = []
    out = text2img("a red cube", "vdm", tiny_prior, steps=4, seed=0, config=config, init=image, frozen=True,
                   callback=lambda step, o: seen.append(o.logs))
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)  # frozen: the returned image is the start
    rows = run_frozen_probe(tiny_prior, "a red cube", config, steps=4, seed=0, image=image)
    assert [r["step"] for r in rows] == list(range(4))
    assert [r["op_ratio"] for r in rows] == [logs["op_ratio"] for logs in seen]  # the same draws, bit for bit
    assert rows[0]["op_ratio"] == pytest.approx(1.0, abs=1e-5)  # identity start, before any update
    assert any(abs(r["op_ratio"] - 1) > 1e-4 for r in rows[1:])  # ψ trains
    for r in rows:  # per-draw errors agree with the logged ratio
        assert r["err_op"] / r["err_id"] == pytest.approx(r["op_ratio"], rel=1e-4)

    rows = run_frozen_probe(tiny_prior, "a red cube", config, steps=3, seed=0, image=image, batch=2)
    assert len(rows) == 6 and [r["step"] for r in rows] == [0, 0, 1, 1, 2, 2]
    for a, b in zip(rows[::2], rows[1::2]):  # a step's logged op_ratio is the ratio of its draws' sums
        assert (a["err_op"] + b["err_op"]) / (a["err_id"] + b["err_id"]) == pytest.approx(a["op_ratio"], rel=1e-4)
    s = summarise(rows, first=1)
    late = rows[2:]
    assert isinstance(s, ProbeSummary) and s.steps == 2
    assert s.op_ratio == pytest.approx(sum(r["err_op"] for r in late) / sum(r["err_id"] for r in late), rel=1e-9)
    hi = [r for r in late if r["t"] >= 600]
    if hi:
        assert s.op_ratio_hi == pytest.approx(sum(r["err_op"] for r in hi) / sum(r["err_id"] for r in hi), rel=1e-9)
    assert [w["step"] for w in curve(rows, 2)] == [0, 2]
    with pytest.raises(ValueError, match="init must be"):
        text2img("a red cube", "vdm", tiny_prior, steps=1, init=torch.rand(1, 3, 8, 8))


def test_replayed_draws_are_vdms_and_a_film_operator_learns_a_known_bias(tiny_prior):
    """make_draws gives ε_φ(x_t, t, y) of the frozen image (checked by hand for two draws); replay measures each
    draw before training on it; on a known problem — ε = ε_φ − c(t)·b, a fixed image b scaled by a function of t —
    the FiLM-conditioned U-Lite learns to explain most of ‖ε_φ − ε‖² (op_ratio well below 1)."""
    from dreammapping.guidance import OptimizerConfig
    from dreammapping.guidance.operator_probe import DrawSet, make_draws, replay

    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    draws = make_draws(tiny_prior, "a red cube", image, 8, seed=1, chunk=4)
    assert draws.t.shape == (8,) and draws.eps_cond.shape == draws.noise.shape == (8, 3, 16, 16)
    assert int(draws.t.min()) >= 20 and int(draws.t.max()) <= 980
    longer = make_draws(tiny_prior, "a red cube", image, 12, seed=1, chunk=4)  # whole chunks: a prefix, bit for bit
    assert all(torch.equal(getattr(longer, k)[:8], getattr(draws, k)) for k in ("t", "noise", "eps_cond"))
    z = 2 * image - 1
    cond = tiny_prior.encode_text("a red cube", view_dependent=False).for_views(1).cond
    for i in (0, 5):
        a = tiny_prior.scheduler.alphas_cumprod[draws.t[i]]
        x_t = a.sqrt() * z + (1 - a).sqrt() * draws.noise[i:i + 1]
        with torch.no_grad():
            ref = tiny_prior.unet(x_t, draws.t[i:i + 1], encoder_hidden_states=cond).sample
        torch.testing.assert_close(draws.eps_cond[i:i + 1], ref, atol=1e-4, rtol=1e-4)

    gen = torch.Generator().manual_seed(2)
    n = 600
    t = torch.randint(20, 981, (n,), generator=gen)
    noise = torch.randn(n, 3, 16, 16, generator=gen)
    bias = torch.randn(1, 3, 16, 16, generator=gen)
    scale = (t.float() / 1000).view(-1, 1, 1, 1)  # c(t): the bias grows with t
    known = DrawSet(t=t, noise=noise, eps_cond=noise + scale * bias)
    torch.manual_seed(0)
    op = build_operator(tiny_prior, VDM.Config(condition_on_t=True, t_conditioning="film"))
    rows = replay(op, OptimizerConfig(lr=0.01).build(op.parameters()), known)
    assert len(rows) == n and rows[0]["err_op"] == pytest.approx(rows[0]["err_id"], rel=1e-5)  # identity, untrained
    assert summarise(rows, first=n - 150).op_ratio < 0.5  # from 1 at the start
