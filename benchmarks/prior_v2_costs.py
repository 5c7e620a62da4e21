"""What prior v2's training costs on this machine: parameters, s/step of each stage, render and encode per image.

Measured with the trainer's own pieces (random weights, real world renders): one optimiser step = forward + backward
+ AdamW at the given batch, the VAE on 64² renders (f = 4), the UNet + text encoder on 16²×4 latents; median of
`--steps` steps after one warm-up. Rendering = `sample_batch` of one `shards.RENDER_CHUNK` at 64², supersample 2;
encoding = the VAE's posterior means of the same images. Prints one markdown table, row by row (a slow shared machine still leaves the rows it finished).

    nice -n 10 python benchmarks/prior_v2_costs.py --steps 3 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dreammapping.toyworld import latent_prior as lp
from dreammapping.toyworld import shards
from dreammapping.toyworld.dataset import sample_batch
from dreammapping.toyworld.train_prior import build_vocabulary, tokenize


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--presets", default="small,base")
    ap.add_argument("--vae-presets", default="small,base")
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    b, res = args.batch, args.resolution
    rows = [f"torch threads {torch.get_num_threads()}, batch {b}, {res}² renders, median of {args.steps} steps", "",
            "| what | parameters | seconds |", "|---|---|---|"]

    t0 = time.perf_counter()
    images, captions, _ = sample_batch(shards.RENDER_CHUNK, resolution=res, generator=torch.Generator().manual_seed(0),
                                       world=2)
    render_s = time.perf_counter() - t0
    rows.append(f"| render {shards.RENDER_CHUNK} images (per image) | – | {render_s:.2f} ({render_s / len(images):.4f}) |")
    print("\n".join(rows), flush=True)
    x = images[:b] * 2 - 1

    u8 = (images * 255).round().to(torch.uint8)
    for vp in args.vae_presets.split(","):
        vae = lp.build_vae(vp, res).train()
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)

        def vae_step():
            post = vae.encode(x).latent_dist
            loss = (vae.decode(post.sample()).sample - x).pow(2).mean() + 1e-6 * post.kl().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        rows.append(f"| VAE `{vp}` {lp.VAE_PRESETS[vp]['block_out_channels']} step | "
                    f"{lp.count_parameters(vae) / 1e6:.2f}M | {timed(vae_step, args.steps):.2f} |")
        print(rows[-1], flush=True)
        vae.eval()
        t0 = time.perf_counter()
        lat = shards.encode_images(vae, u8, batch_size=b)
        enc_s = time.perf_counter() - t0
        rows.append(f"| encode {len(u8)} images, VAE `{vp}` (per image) | – | {enc_s:.2f} ({enc_s / len(u8):.4f}) |")
        print(rows[-1], flush=True)

    vocab = build_vocabulary(captions=captions)
    z0 = lat[:b]
    for preset in args.presets.split(","):
        m = lp.build_latent_models(preset, "small", vocab, res)
        unet, text = m.unet.train(), m.text_encoder.train()
        ids = tokenize(m.tokenizer, captions[:b])
        params = list(unet.parameters()) + list(text.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)

        def unet_step():
            noise = torch.randn_like(z0)
            t = torch.randint(0, 1000, (b,))
            pred = unet(z0 + noise, t, encoder_hidden_states=text(ids)[0]).sample
            loss = (pred - noise).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        rows.append(f"| UNet `{preset}` + text step | {lp.count_parameters(unet) / 1e6:.2f}M + "
                    f"{lp.count_parameters(text) / 1e6:.2f}M | {timed(unet_step, args.steps):.2f} |")
        print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
