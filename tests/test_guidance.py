"""Guidance methods: every method through one shared check (its gradient equals its formula computed by hand on
the tiny UNet, the frozen prior never changes, the learnable parts are trained), plus DCA, VDM on a known
degradation, VSD's LoRA, and text-to-2D."""

from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import disk_full_at
from dreammapping.guidance import METHODS, VDM, dca_lambda
from dreammapping.guidance.nfsd import NEGATIVE_PROMPT
from dreammapping.priors import PromptEmbeddings, embedded_prior_path

SCALE = 4.0

B = 2


# ------------------------------------------------------------------------------------------ references by hand
def _eps(prior, x, t, hidden, unet=None):
    with torch.no_grad():
        return (unet or prior.unet)(x, t, encoder_hidden_states=hidden).sample


def _hand(prior, t):
    return prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)


def _noisy(prior, z, noise, t):
    a = _hand(prior, t)
    return a.sqrt() * z + (1 - a).sqrt() * noise


def _cfg(prior, x, t, emb, s=SCALE):
    e_c, e_u = _eps(prior, x, t, emb.cond), _eps(prior, x, t, emb.uncond)
    return e_u + s * (e_c - e_u), e_c, e_u


def ref_sds(method, z, t, noise, emb):
    x_t = _noisy(method.prior, z, noise, t)
    return (1 - _hand(method.prior, t)) * (_cfg(method.prior, x_t, t, emb)[0] - noise)


def ref_vdm(method, z, t, noise, emb):
    prior = method.prior
    x_t = _noisy(prior, z, noise, t)
    e_cfg, e_c, _ = _cfg(prior, x_t, t, emb)
    a = _hand(prior, t)
    lam = torch.where(t.view(-1, 1, 1, 1) > method.config.dca_cutoff, torch.ones_like(a), 1 - a)
    with torch.no_grad():
        m = method.operator(e_c, t)
    return (1 - a) * (e_cfg - lam * m)


def ref_csd(method, z, t, noise, emb):
    x_t = _noisy(method.prior, z, noise, t)
    _, e_c, e_u = _cfg(method.prior, x_t, t, emb)
    return (1 - _hand(method.prior, t)) * SCALE * (e_c - e_u)


def ref_nfsd(method, z, t, noise, emb):
    prior = method.prior
    x_t = _noisy(prior, z, noise, t)
    _, e_c, e_u = _cfg(prior, x_t, t, emb)
    neg = prior.text_embedding(NEGATIVE_PROMPT).expand(len(t), -1, -1)
    e_n = _eps(prior, x_t, t, neg)
    out = []
    for i, ti in enumerate(t.tolist()):  # per sample, as written in the paper
        delta_d = e_u[i] if ti < 200 else e_u[i] - e_n[i]
        out.append(delta_d + SCALE * (e_c[i] - e_u[i]))
    return (1 - _hand(prior, t)) * torch.stack(out)


def ref_ism(method, z, t, noise, emb):
    prior, c = method.prior, method.config
    abar = prior.scheduler.alphas_cumprod
    grads = []
    for i, ti in enumerate(t.tolist()):  # one sample at a time, plain Python timesteps
        zi, ni, ui, ci = z[i:i + 1], noise[i:i + 1], emb.uncond[i:i + 1], emb.cond[i:i + 1]

        def step(x, e, a, b):
            x0 = (x - (1 - abar[a]).sqrt() * e) / abar[a].sqrt()
            return abar[b].sqrt() * x0 + (1 - abar[b]).sqrt() * e

        s = max(ti - c.delta_t, 0)
        cur = max(s - c.delta_s * c.xs_inv_steps, 0)
        x = abar[cur].sqrt() * zi + (1 - abar[cur]).sqrt() * ni
        while cur < s:
            nxt = min(cur + c.delta_s, s)
            x = step(x, _eps(prior, x, torch.tensor([cur]), ui), cur, nxt)
            cur = nxt
        e_s = _eps(prior, x, torch.tensor([s]), ui)
        x_t = step(x, e_s, s, ti)
        e_c, e_u = _eps(prior, x_t, torch.tensor([ti]), ci), _eps(prior, x_t, torch.tensor([ti]), ui)
        grads.append((1 - abar[ti]) * (e_u + SCALE * (e_c - e_u) - e_s))
    return torch.cat(grads)


def ref_vsd(method, z, t, noise, emb):
    x_t = _noisy(method.prior, z, noise, t)
    e_lora = _eps(method.prior, x_t, t, emb.cond, unet=method.lora_unet)
    return (1 - _hand(method.prior, t)) * (_cfg(method.prior, x_t, t, emb)[0] - e_lora)


REFERENCES = {"sds": ref_sds, "vdm": ref_vdm, "csd": ref_csd, "nfsd": ref_nfsd, "ism": ref_ism, "vsd": ref_vsd}


def _hash(*modules) -> str:
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _prior_modules(prior):
    return [m for m in (prior.unet, prior.text_encoder, prior.vae) if m is not None]


# ---------------------------------------------------------------------------------------- the shared check
def check_method(name: str, prior, config_kwargs=None, steps: int = 2):
    """One method, through the trainer's real path: call, backward, step the method's own optimiser.

    Checks the image gradient against the formula by hand (same RNG draws), a finite scalar loss/aux_loss,
    that only the method's own parameters change and the frozen prior stays bit-identical.
    """
    cls = METHODS[name]
    method = cls(prior, cls.Config(guidance_scale=SCALE, t_min=0.02, t_max=0.98, **(config_kwargs or {})))
    emb = prior.encode_text("a red cube").for_views(["front", "back"])
    before = _hash(*_prior_modules(prior))
    params = method.parameters()
    own_before = [p.detach().clone() for p in params]
    opt = method.optimizer_config().build(params)
    assert (opt is None) == (len(params) == 0)

    for step in range(steps):
        images = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(step)).requires_grad_(True)
        torch.manual_seed(100 + step)
        out = method(images, emb, step=step, max_steps=10)
        assert out.loss.ndim == 0 and out.aux_loss.ndim == 0
        assert torch.isfinite(out.loss) and torch.isfinite(out.aux_loss)
        assert all(isinstance(v, float) for v in out.logs.values())

        # the formula, by hand, with the same draws (t first, then ε)
        torch.manual_seed(100 + step)
        z = prior.encode_images(images.detach())
        t, noise = method.draw(z, step, 10)
        g = REFERENCES[name](method, z, t, noise, emb)

        (out.loss + out.aux_loss).backward()
        if prior.is_latent:  # carry g / B back through the VAE encoder by hand
            x = images.detach().requires_grad_(True)
            expected = torch.autograd.grad(prior.encode_images(x), x, g / B)[0]
        else:  # z = 2x − 1
            expected = 2 * g / B
        torch.testing.assert_close(images.grad, expected, atol=1e-4, rtol=1e-3)
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    assert _hash(*_prior_modules(prior)) == before, f"{name} changed the frozen prior"
    if params:
        assert any(not torch.equal(a, p.detach()) for a, p in zip(own_before, params)), f"{name} did not learn"
    return method


@pytest.mark.parametrize("name", list(METHODS))
def test_method_gradient_matches_formula(name, tiny_prior):
    check_method(name, tiny_prior)


@pytest.mark.parametrize("name", ["sds", "vdm"])
def test_method_gradient_through_vae(name, tiny_latent_prior):
    check_method(name, tiny_latent_prior, steps=1)


def test_options_annealing_weighting_no_dca(tiny_prior):
    check_method("vdm", tiny_prior, {"dca": False, "weighting": "sds", "t_max_end": 0.5}, steps=1)
    method = METHODS["sds"](tiny_prior, METHODS["sds"].Config(t_min=0.02, t_max=0.98, t_max_end=0.5))
    assert method.timestep_range(0, 100) == (20, 980)
    assert method.timestep_range(100, 100) == (20, 500)
    with pytest.raises(ValueError, match="weighting"):
        METHODS["sds"](tiny_prior, METHODS["sds"].Config(weighting="nope"))


def test_csd_negative_prompt_term(tiny_prior):
    method = METHODS["csd"](tiny_prior, METHODS["csd"].Config(guidance_scale=SCALE, negative_prompt="blurry",
                                                              negative_scale=0.5))
    emb = tiny_prior.encode_text("a cube").for_views(["front", "back"])
    images = torch.rand(B, 3, 16, 16, requires_grad=True)
    torch.manual_seed(3)
    method(images, emb, 0, 1).loss.backward()
    torch.manual_seed(3)
    z = tiny_prior.encode_images(images.detach())
    t, noise = method.draw(z, 0, 1)
    x_t = _noisy(tiny_prior, z, noise, t)
    _, e_c, e_u = _cfg(tiny_prior, x_t, t, emb)
    e_n = _eps(tiny_prior, x_t, t, tiny_prior.text_embedding("blurry").expand(B, -1, -1))
    g = (1 - _hand(tiny_prior, t)) * (SCALE * (e_c - e_u) - 0.5 * (e_n - e_u))
    torch.testing.assert_close(images.grad, 2 * g / B, atol=1e-4, rtol=1e-3)


def test_grad_to_loss_gradient_and_non_finite_g():
    from dreammapping.guidance.base import grad_to_loss

    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    g = torch.randn(2, 3, 4, 4)
    loss = grad_to_loss(z, g)
    loss.backward()
    torch.testing.assert_close(z.grad, g / 2)
    torch.testing.assert_close(loss, 0.5 * g.pow(2).sum() / 2)
    g[0, 0, 0, 0] = float("nan")  # must surface (the trainer then stops), not be zeroed away
    assert not torch.isfinite(grad_to_loss(z, g))


# -------------------------------------------------------------------------------------------------------- DCA
def test_dca_lambda_values_and_limits():
    from diffusers import DDPMScheduler

    abar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    for cutoff in (100, 300, 500):
        lam = dca_lambda(torch.tensor([cutoff - 1, cutoff, cutoff + 1]), abar, cutoff)
        torch.testing.assert_close(lam, torch.stack([1 - abar[cutoff - 1], 1 - abar[cutoff], torch.tensor(1.0)]))
    all_t = torch.arange(1000)
    assert torch.all(dca_lambda(all_t, abar, cutoff=-1) == 1)  # cutoff below every t: DCA off
    torch.testing.assert_close(dca_lambda(all_t, abar, cutoff=999), 1 - abar)  # everywhere 1 − ᾱ_t
    lam = dca_lambda(all_t, abar)
    assert lam[0] < 1e-2 and torch.all(lam > 0) and torch.all(lam <= 1)  # λ → 0 as t → 0
    assert torch.all(lam[1:301] >= lam[:300])  # annealed monotonically up to the cut-off
    assert float(dca_lambda(300, abar)) == pytest.approx(float(1 - abar[300]))


# --------------------------------------------------------------------------- VDM learns a known degradation
class LinearNoisePrior:
    """A synthetic prior whose prediction is a fixed linear map of the true noise: ε_φ(x_t) = A·ε.

    A mixes the channels and scales them (0.9, 1.1, 0): the prediction carries no information about one mixed
    direction of ε. SDS's update ω(ε_φ − ε) keeps that unpredictable part of ε; Mψ learns E[ε | ε_φ] = A⁺ε_φ
    (= Pε, P = A⁺A), so VDM's ω(ε_φ − Mψ(ε_φ)) keeps only the small deterministic mismatch (A − P)ε.
    """

    is_latent, num_train_timesteps, resolution, downsample, latent_channels = False, 1000, 16, 1, 3
    device = torch.device("cpu")

    def __init__(self):
        from diffusers import DDPMScheduler

        self.alphas_cumprod = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                            beta_end=0.012).alphas_cumprod
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
        self.A = q @ torch.diag(torch.tensor([0.9, 1.1, 0.0])) @ q.T
        self.P = q @ torch.diag(torch.tensor([1.0, 1.0, 0.0])) @ q.T

    def encode_images(self, x):
        self._z = 2 * x - 1
        return self._z

    def add_noise(self, z, noise, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * z + (1 - a).sqrt() * noise

    def predict_noise(self, x_t, t, emb, guidance_scale=7.5):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self._z) / (1 - a).sqrt()
        e = torch.einsum("ij,bjhw->bihw", self.A, eps)
        return e, e, e


def test_vdm_learns_known_degradation():
    from dreammapping.guidance import ULite

    prior = LinearNoisePrior()
    emb = PromptEmbeddings(cond=torch.zeros(4, 1, 1), uncond=torch.zeros(4, 1, 1))
    cfg = dict(weighting="uniform", t_min=0.4, t_max=0.9)  # t > cut-off: λ_t = 1
    torch.manual_seed(0)
    # a randomly initialised Mψ (not the identity start), so that convergence has somewhere to come from
    vdm = METHODS["vdm"](prior, METHODS["vdm"].Config(**cfg), operator=ULite.for_prior(prior, residual=False))
    sds = METHODS["sds"](prior, METHODS["sds"].Config(**cfg))
    opt = vdm.optimizer_config().build(vdm.parameters())
    assert opt.param_groups[0]["lr"] == 0.01
    losses = []
    for step in range(150):
        out = vdm(torch.rand(4, 3, 16, 16), emb, step, 150)
        opt.zero_grad()
        out.aux_loss.backward()
        opt.step()
        losses.append(out.logs["loss_op"])
    floor = 1 / 3  # the unpredictable third of ε: min E||Mψ(Aε) − ε||² per element
    assert losses[0] > floor + 0.3 and sum(losses[-10:]) / 10 < floor + 0.03, (losses[0], losses[-10:])

    # Mψ ≈ A⁺ on the prediction, and the VDM update is far smaller than SDS's on the same draws
    eps = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        mapped = vdm.operator(torch.einsum("ij,bjhw->bihw", prior.A, eps))
    target = torch.einsum("ij,bjhw->bihw", prior.P, eps)
    assert (mapped - target).norm() / target.norm() < 0.2
    norms = {}
    for name, method in (("vdm", vdm), ("sds", sds)):
        images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        torch.manual_seed(7)
        method(images, emb, 0, 1).loss.backward()
        norms[name] = images.grad.norm().item()
    assert norms["vdm"] < 0.35 * norms["sds"], norms


# ---------------------------------------------------------------------------- VDM diagnostics and options
def test_vdm_diagnostics_match_hand_computation(tiny_prior):
    """op_ratio (overall and per t band), op_shift, cos_sds and lambda against a computation by hand."""
    torch.manual_seed(0)
    method = VDM(tiny_prior, VDM.Config(guidance_scale=SCALE, operator_init="random"))  # Mψ far from identity
    emb = tiny_prior.encode_text("a red cube").for_views(["front", "back", "side", "overhead"])
    z = tiny_prior.encode_images(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([50, 400, 700, 950])  # one draw in lo, one in mid, two in hi
    g, _, logs = method.gradient(z, t, noise, emb)

    x_t = _noisy(tiny_prior, z, noise, t)
    e_cfg, e_c, _ = _cfg(tiny_prior, x_t, t, emb)
    with torch.no_grad():
        m = method.operator(e_c, t)
    err_id = [float(((e_c[i] - noise[i]) ** 2).sum()) for i in range(4)]
    err_op = [float(((m[i] - noise[i]) ** 2).sum()) for i in range(4)]
    shift = [float(((e_c[i] - m[i]) ** 2).sum()) for i in range(4)]
    assert logs["op_ratio"] == pytest.approx(sum(err_op) / sum(err_id), rel=1e-4)
    assert logs["op_shift"] == pytest.approx(sum(shift) / sum(err_id), rel=1e-4)
    assert logs["op_ratio_lo"] == pytest.approx(err_op[0] / err_id[0], rel=1e-4)
    assert logs["op_ratio_mid"] == pytest.approx(err_op[1] / err_id[1], rel=1e-4)
    assert logs["op_ratio_hi"] == pytest.approx((err_op[2] + err_op[3]) / (err_id[2] + err_id[3]), rel=1e-4)
    assert abs(logs["op_ratio"] - 1) > 0.01 and logs["op_shift"] > 0.1  # a random Mψ is not the identity
    g_sds = ref_sds(method, z, t, noise, emb)
    g_ref = ref_vdm(method, z, t, noise, emb)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
    cos = [float((g_ref[i] * g_sds[i]).sum() / (g_ref[i].norm() * g_sds[i].norm())) for i in range(4)]
    assert logs["cos_sds"] == pytest.approx(sum(cos) / 4, abs=1e-5)
    abar = tiny_prior.scheduler.alphas_cumprod
    assert logs["lambda"] == pytest.approx(float((1 - abar[50] + 3) / 4), rel=1e-5)  # λ = 1 − ᾱ_50, 1, 1, 1

    # the identity start explains exactly nothing: ratio 1, shift 0; above the cut-off g is the classifier term
    ident = VDM(tiny_prior, VDM.Config(guidance_scale=SCALE))
    g, _, logs = ident.gradient(z, torch.tensor([20, 40, 60, 80]), noise, emb)
    assert logs["op_ratio"] == pytest.approx(1.0, abs=1e-6) and logs["op_shift"] == 0.0
    assert logs["op_ratio_lo"] == pytest.approx(1.0, abs=1e-6)
    assert all(logs[k] != logs[k] for k in ("op_ratio_mid", "op_ratio_hi"))  # nan: no draw in those bands
    t = torch.tensor([400, 500, 600, 900])
    g, _, logs = ident.gradient(z, t, noise, emb)
    x_t = _noisy(tiny_prior, z, noise, t)
    _, e_c, e_u = _cfg(tiny_prior, x_t, t, emb)
    torch.testing.assert_close(g, (1 - _hand(tiny_prior, t)) * (SCALE - 1) * (e_c - e_u), atol=1e-5, rtol=1e-4)


def test_vdm_operator_options_change_behaviour(tiny_prior):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t_lo, t_hi = torch.tensor([10, 10]), torch.tensor([900, 900])

    # size: "ulite" is the paper's ~1M U-Lite even on a 16² pixel prior; "small"/"auto" the ~14k one
    assert count(VDM(tiny_prior, VDM.Config(operator_size="ulite")).operator) > 0.8e6
    assert count(VDM(tiny_prior, VDM.Config(operator_size="small")).operator) < 50_000
    assert count(VDM(tiny_prior).operator) == count(VDM(tiny_prior, VDM.Config(operator_size="small")).operator)
    with pytest.raises(ValueError, match="operator size"):
        VDM(tiny_prior, VDM.Config(operator_size="huge"))

    # init: identity start returns its input; a plain random start does not
    torch.testing.assert_close(VDM(tiny_prior).operator(eps, t_lo), eps)
    torch.manual_seed(0)
    random_op = VDM(tiny_prior, VDM.Config(operator_init="random")).operator
    assert (random_op(eps, t_lo) - eps).norm() > 0.5 * eps.norm()
    with pytest.raises(ValueError, match="operator_init"):
        VDM(tiny_prior, VDM.Config(operator_init="zeros"))

    # t-conditioning: the output depends on t (random start, so the t path is live), and not without it
    torch.manual_seed(0)
    timed = VDM(tiny_prior, VDM.Config(operator_init="random", condition_on_t=True)).operator
    assert (timed(eps, t_lo) - timed(eps, t_hi)).norm() > 1e-3 * timed(eps, t_lo).norm()
    torch.testing.assert_close(random_op(eps, t_lo), random_op(eps, t_hi))

    # learning rate reaches Mψ's optimiser
    opt = VDM(tiny_prior, VDM.Config(operator_lr=3e-4)).optimizer_config().build(VDM(tiny_prior).parameters())
    assert opt.param_groups[0]["lr"] == 3e-4


def test_vdm_operator_warmup_holds_theta_while_psi_learns(tiny_prior):
    method = VDM(tiny_prior, VDM.Config(guidance_scale=SCALE, operator_warmup=2))
    opt = method.optimizer_config().build(method.parameters())
    emb = tiny_prior.encode_text("a red cube").for_views(["front", "back"])
    for step in range(3):
        before = [p.detach().clone() for p in method.parameters()]
        images = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(step)).requires_grad_(True)
        out = method(images, emb, step, 10)
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert any(not torch.equal(a, p) for a, p in zip(before, method.parameters()))  # ψ trains throughout
        if step < 2:
            assert torch.count_nonzero(images.grad) == 0 and float(out.loss.detach()) == 0.0
        else:
            assert images.grad.norm() > 0
    with pytest.raises(ValueError, match="operator_warmup"):
        VDM(tiny_prior, VDM.Config(operator_warmup=-1))


# --------------------------------------------------------------------------------------------------------- VSD
def test_vsd_trains_lora_only(tiny_prior):
    method = check_method("vsd", tiny_prior, steps=2)
    lora = [n for n, p in method.lora_unet.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    # the copy's base weights equal the prior's, untouched by training
    base = {n.replace(".base_layer", ""): p for n, p in method.lora_unet.named_parameters() if "lora_" not in n}
    for name, param in tiny_prior.unet.named_parameters():
        assert torch.equal(base[name], param), name


def test_vdm_operator_sizes(tiny_prior):
    from dreammapping.guidance import ULite

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.8e6 < count(ULite.for_sd()) < 1.2e6
    small = VDM(tiny_prior).operator
    assert count(small) < 50_000
    eps = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(small(eps), eps)  # residual, zero-initialised head: starts as the identity
    timed = ULite.for_prior(tiny_prior, condition_on_t=True)
    assert timed(eps, torch.tensor([10, 900])).shape == eps.shape


# --------------------------------------------------------------------------------------------------- text2img
@pytest.mark.parametrize("method", ["vdm", "sds"])
def test_text2img_smoke(method, tiny_prior, tiny_latent_prior):
    from dreammapping.guidance.text2img import text2img

    for prior in (tiny_prior, tiny_latent_prior):
        seen = []
        start = text2img("a red cube", method=method, prior=prior, steps=0, seed=1)
        image = text2img("a red cube", method=method, prior=prior, steps=4, seed=1,
                         callback=lambda step, out: seen.append((out.loss.item(), out.logs["grad_norm"])))
        assert image.shape == (1, 3, 16, 16) and image.min() >= 0 and image.max() <= 1
        assert len(seen) == 4 and all(torch.isfinite(torch.tensor(s)).all() for s in seen)
        assert (image - start).abs().max() > 1e-3


def test_text2img_snapshots_are_the_images_after_that_many_steps(tiny_prior):
    """on_snapshot(k, images) every `snapshot_every` steps: the snapshot after all steps is the returned image,
    and the one after 2 of 4 steps is what a 2-step run gives (same seed: the same draws up to there)."""
    from dreammapping.guidance.text2img import text2img

    shots = {}
    image = text2img("a red cube", method="sds", prior=tiny_prior, steps=4, seed=3, snapshot_every=2,
                     on_snapshot=lambda k, images: shots.__setitem__(k, images.clone()))
    assert sorted(shots) == [2, 4]
    torch.testing.assert_close(shots[4], image)
    two = text2img("a red cube", method="sds", prior=tiny_prior, steps=2, seed=3)
    assert (shots[2] - image).abs().max() > 0
    torch.testing.assert_close(shots[2], two)  # no t annealing by default: the draws do not depend on `steps`


def test_cli_text2img_errors_and_output(tmp_path, tiny_pixel_folder, capsys):
    from dreammapping.guidance.text2img import cli_text2img

    assert cli_text2img(["  "]) == 2
    assert cli_text2img(["a cube", "--method", "magic"]) == 2
    assert cli_text2img(["a cube", "--prior", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("dreammapping text2img: error:") for line in err)
    out = tmp_path / "img.png"
    assert cli_text2img(["a cube", "--prior", str(tiny_pixel_folder), "--steps", "2", "--out", str(out),
                         "--device", "cpu"]) == 0
    assert out.stat().st_size > 0


@pytest.mark.skipif(not (embedded_prior_path() / "unet").is_dir(), reason="the embedded prior is not shipped yet")
def test_text2img_embedded_follows_the_prompt():
    """The shipped prior + VDM, text-to-2D: two prompts, two colours (an update that ignored y would give one)."""
    from dreammapping.guidance.text2img import text2img
    from dreammapping.priors import DiffusionPrior
    from dreammapping.toyworld.classifier import AttributeClassifier
    from dreammapping.toyworld.grammar import COLORS

    prior, classifier = DiffusionPrior.from_pretrained("embedded", device="cpu"), AttributeClassifier.from_pretrained()
    for prompt, colour in (("a red cube", "red"), ("a blue sphere", "blue")):
        image = text2img(prompt, method="vdm", prior=prior, steps=60, seed=0)
        assert list(COLORS)[int(classifier.classify(image)["color"][0])] == colour, prompt


def test_a_negative_prompt_leaves_the_unconditional_terms_alone(tiny_prior):
    """CFG pairs the prompt with the negative prompt, but NFSD's δ_D/δ_C and ISM's inversion use ε_φ(·, ∅)."""
    plain = tiny_prior.encode_text("abc").for_views(2)
    negative = tiny_prior.encode_text("abc", negative_prompt="zzz").for_views(2)
    torch.testing.assert_close(negative.null, plain.uncond)
    assert not torch.equal(negative.uncond, plain.uncond)
    torch.manual_seed(0)
    z, noise, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16), torch.tensor([100, 600])
    nfsd = METHODS["nfsd"](tiny_prior)
    torch.testing.assert_close(nfsd.gradient(z, t, noise, negative)[0], nfsd.gradient(z, t, noise, plain)[0])
    ism = METHODS["ism"](tiny_prior)
    for a, b in zip(ism.invert(z, noise, t, negative), ism.invert(z, noise, t, plain)):
        torch.testing.assert_close(a, b)


def test_cli_text2img_checks_values_and_the_output_before_any_work(tmp_path, tiny_pixel_folder, capsys, monkeypatch):

    from dreammapping.guidance import text2img as t2i

    def no_work(*args, **kwargs):
        raise AssertionError("optimised before the arguments were checked")

    monkeypatch.setattr(t2i, "text2img", no_work)
    (tmp_path / "a-file").write_text("not a folder")
    prior = ["--prior", str(tiny_pixel_folder)]
    cases = [(["--out", str(tmp_path / "a-file" / "x.png")], 6, "cannot write"),
             (["--guidance-scale", "nan"], 2, "--guidance-scale"), (["--guidance-scale", "0"], 2, "--guidance-scale"),
             (["--lr", "nan"], 2, "--lr"), (["--out", str(tmp_path / "x.unknown")], 2, "extension"),
             (["--device", "tpu"], 2, "tpu"), (["--steps", "ten"], 2, "--steps")]
    for flags, code, named in cases:
        assert t2i.cli_text2img(["a red cube", *prior, *flags]) == code, flags
        err = capsys.readouterr().err.strip().splitlines()  # argparse's own errors come after its usage lines
        assert err[-1].startswith("dreammapping text2img: error:") and named in err[-1], (flags, err)
        assert len(err) == 1 or err[0].startswith("usage:")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="guidance scale"):
        t2i.text2img("a red cube", prior=str(tiny_pixel_folder), steps=1, guidance_scale=float("nan"))
    # the image is written through the atomic writer: a failed final rename keeps the old image
    out = tmp_path / "img.png"
    assert t2i.cli_text2img(["a red cube", *prior, "--steps", "1", "--out", str(out)]) == 0
    old = out.read_bytes()
    disk_full_at(monkeypatch, "img.png")
    capsys.readouterr()
    assert t2i.cli_text2img(["a red cube", *prior, "--steps", "1", "--seed", "5", "--out", str(out)]) == 6
    assert "disk is full" in capsys.readouterr().err and out.read_bytes() == old


def test_method_optimiser_is_fused_on_the_cpu_and_steps_as_plain_adam():
    # The fused kernel (one call for every tensor) must be the same Adam as torch's per-tensor loop: the reference.
    from dreammapping.guidance.base import OptimizerConfig

    torch.manual_seed(0)
    shapes = [(8, 3, 1, 1), (8,), (3, 8, 7, 1), (3,)]
    a = [torch.randn(s, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    start = [p.detach().clone() for p in a]
    fused = OptimizerConfig(lr=0.01).build(a)
    plain = torch.optim.Adam(b, lr=0.01, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    for step in range(5):
        grads = [torch.randn(s, generator=torch.Generator().manual_seed(step * 10 + i)) for i, s in enumerate(shapes)]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all((p - p0).abs().max() > 1e-3 for p, p0 in zip(a, start))  # and both moved
