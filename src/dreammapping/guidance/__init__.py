"""Score-distillation guidance: one small class per method, chosen by name from `METHODS`.

    method = METHODS["vdm"](prior, METHODS["vdm"].Config(dca_cutoff=300))
    out = method(images, emb, step, max_steps)      # GuidanceOutput(loss, aux_loss, logs)
    (out.loss + out.aux_loss).backward()            # images get the method's update; Mψ / LoRA get theirs
    opt = method.optimizer_config().build(method.parameters())   # None for training-free methods

See docs/interfaces.md ("guidance") for the contract and each module's docstring for its equation.
"""

from dreammapping.guidance.base import (
    WEIGHTINGS,
    Guidance,
    GuidanceConfig,
    GuidanceOutput,
    OptimizerConfig,
    dca_lambda,
    default_guidance_scale,
    grad_to_loss,
)
from dreammapping.guidance.csd import CSD
from dreammapping.guidance.ism import ISM
from dreammapping.guidance.nfsd import NFSD
from dreammapping.guidance.sds import SDS
from dreammapping.guidance.ulite import ULite
from dreammapping.guidance.vdm import VDM
from dreammapping.guidance.vsd import VSD

METHODS: dict[str, type[Guidance]] = {"sds": SDS, "vdm": VDM, "csd": CSD, "nfsd": NFSD, "ism": ISM, "vsd": VSD}

__all__ = ["METHODS", "WEIGHTINGS", "Guidance", "GuidanceConfig", "GuidanceOutput", "OptimizerConfig", "dca_lambda",
           "default_guidance_scale",
           "grad_to_loss", "ULite", "SDS", "VDM", "CSD", "NFSD", "ISM", "VSD"]
