"""Variational score distillation (ProlificDreamer, Wang et al., NeurIPS 2023), with one particle.

The rendered images' own score is modelled by a LoRA-adapted copy of the prior's UNet, ε_lora, trained on the
(detached) renderings with the ordinary diffusion loss:

    g        = ω(t)·(ε_φ^cfg(x_t, t, y) − ε_lora(x_t, t, y))          (ProlificDreamer Eq. 9; paper Table 1)
    aux_loss = ||ε_lora(√ᾱ_τ·sg(x) + √(1−ᾱ_τ)·ε', τ, y) − ε'||²,  τ ~ U{0..T−1}, ε' ~ N(0, I)

Simplifications, stated: ProlificDreamer also conditions ε_lora on the camera (an MLP embedding of the pose added
to the timestep embedding); here it is omitted (the view suffix of the prompt already carries the view). ε_lora
is evaluated without CFG (ProlificDreamer's default LoRA guidance scale is 1). For v-prediction priors the LoRA
is trained on ε (the prior's `eps` converts), a reweighting of the usual v loss.

The LoRA lives on a deep copy of the UNet (peft `LoraConfig`, rank 4, on to_q/to_k/to_v/to_out.0) so the frozen
prior is untouched and no adapter switching is needed. Memory: one more UNet — for SD 2.1-base 865M parameters,
1.7 GB in fp16. VSD is the only method whose aux path goes through a UNet backward (the expensive part, Fig. 2).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from dreammapping.guidance.base import Guidance, GuidanceConfig, OptimizerConfig


@dataclass
class VSDConfig(GuidanceConfig):
    lora_rank: int = 4  # rank of the LoRA on the attention projections
    lora_alpha: float = 4.0  # LoRA scaling numerator (scale = alpha / rank)
    lora_lr: float = 1e-3  # AdamW learning rate of the LoRA (ProlificDreamer)


class VSD(Guidance):
    """g = ω(t)(ε_φ^cfg(x_t,t,y) − ε_lora(x_t,t,y)); aux_loss trains the LoRA on the renderings."""

    Config = VSDConfig

    def __init__(self, prior, config: VSDConfig | None = None):
        super().__init__(prior, config)
        from peft import LoraConfig, inject_adapter_in_model

        self.lora_unet = copy.deepcopy(prior.unet)
        lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha,
                          target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        inject_adapter_in_model(lora, self.lora_unet)
        self._lora_params = []
        for name, param in self.lora_unet.named_parameters():
            is_lora = "lora_" in name
            if is_lora:
                param.data = param.data.float()  # train the adapter in fp32 even when the UNet is fp16
            param.requires_grad_(is_lora)
            if is_lora:
                self._lora_params.append(param)
        self.lora_unet.eval()  # no dropout; LoRA still trains

    def parameters(self):
        return list(self._lora_params)

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(name="adamw", lr=self.config.lora_lr)

    def gradient(self, z, t, noise, emb):
        x_t = self.prior.add_noise(z, noise, t)
        eps_cfg, _, _ = self.prior.predict_noise(x_t, t, emb, self.guidance_scale)
        with torch.no_grad():
            eps_lora = self.prior.eps(x_t, t, emb.cond, unet=self.lora_unet)
        g = self.weight(t) * (eps_cfg - eps_lora)
        # train ε_lora on the detached renderings at a fresh τ and ε'
        tau = torch.randint(0, self.prior.num_train_timesteps, (z.shape[0],)).to(z.device)
        noise2 = torch.randn(z.shape).to(z.device)
        pred = self.prior.eps(self.prior.add_noise(z.detach(), noise2, tau), tau, emb.cond, unet=self.lora_unet)
        loss_lora = (pred - noise2).pow(2).mean()
        return g, loss_lora, {"loss_lora": float(loss_lora.detach())}
