"""Reference timings for `spatiallock bench`: diffusers' UNet2DConditionModel on the bench-tiny
configuration (configs/models/bench-tiny.yaml), in the same run as ours.

  train-step: the GLIGEN train step (attention_type="gated"), AdamW on the grounding modules
              (fuser + position_net), batch 16, 8 boxes, ε-MSE on q_sample'd inputs.
  sample:     50-step DDIM with classifier-free guidance (batch 2 per step: null + conditional
              grounding), one 32×32 image.

Prints one JSON object. Runs with 1 intra-op thread, like ours.
"""
import json
import resource
import sys
import time

import torch

torch.set_num_threads(1)
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402

mode = sys.argv[1]
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.manual_seed(0)

unet = UNet2DConditionModel(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(64, 128, 256),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=128,
    attention_head_dim=8,
    norm_num_groups=32,
    attention_type="gated",
)
B, N, L, C = 16, 8, 16, 128
betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
alphas_cumprod = torch.cumprod(1 - betas, 0)


def grounding(b):
    xy = torch.rand(b, N, 2) * 0.5
    boxes = torch.cat([xy, xy + 0.3], -1)
    return {"boxes": boxes, "positive_embeddings": torch.randn(b, N, C), "masks": torch.ones(b, N)}


if mode == "train-step":
    unet.train()
    unet.requires_grad_(False)
    params = [p for n, p in unet.named_parameters() if ".fuser." in n or n.startswith("position_net.")]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    x0 = torch.randn(B, 3, 32, 32)
    ctx = torch.randn(B, L, C)
    g = grounding(B)

    def step():
        t = torch.randint(0, 1000, (B,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(B, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps = unet(noisy, t, ctx, cross_attention_kwargs={"gligen": dict(g)}).sample
        loss = torch.nn.functional.mse_loss(eps, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        step()
    seconds = (time.perf_counter() - start) / iters
    unit = "s/step"
elif mode == "sample":
    unet.eval()
    sched = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    ctx = torch.randn(2, L, C)
    g = grounding(1)
    g2 = {
        "boxes": torch.cat([g["boxes"], g["boxes"]]),
        "positive_embeddings": torch.cat([torch.zeros_like(g["positive_embeddings"]), g["positive_embeddings"]]),
        "masks": torch.cat([torch.zeros_like(g["masks"]), g["masks"]]),
    }

    def image():
        sched.set_timesteps(50)
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            for t in sched.timesteps:
                eps = unet(torch.cat([x, x]), t, ctx, cross_attention_kwargs={"gligen": dict(g2)}).sample
                e_u, e_c = eps.chunk(2)
                x = sched.step(e_u + 7.5 * (e_c - e_u), t, x).prev_sample
        return x

    image()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        image()
    seconds = (time.perf_counter() - start) / iters
    unit = "s/image"
else:
    raise SystemExit(f"unknown mode {mode}")

print(json.dumps({
    "impl": "diffusers",
    "mode": mode,
    "seconds": seconds,
    "unit": unit,
    "iters": iters,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
}))
