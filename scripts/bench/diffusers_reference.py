"""Reference timings for `spatiallock bench train-step|sample`: diffusers' GLIGEN
(UNet2DConditionModel with attention_type="gated") on the architecture, device, precision and
sizes that `spatiallock bench` writes to CONFIG.json, in the same run as ours.

  train-step: ε-MSE on add_noise'd inputs, AdamW on the grounding modules (fuser + position_net),
              forward under torch.autocast(bf16) when asked, loss in fp32.
  sample:     DDIM with classifier-free guidance (batch 2 per step: null + conditional grounding),
              scheduled grounding as StableDiffusionGLIGENPipeline does it (the gated layers are
              switched off after the first `grounding_fraction` of the steps), then the VAE decode
              when the model has one.

Usage: diffusers_reference.py CONFIG.json. Prints one JSON object. 1 intra-op thread, like ours.
"""
import json
import resource
import sys
import time

import torch

torch.set_num_threads(1)
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention import GatedSelfAttentionDense  # noqa: E402

cfg = json.load(open(sys.argv[1]))
mode, iters = cfg["mode"], int(cfg["iters"])
device = torch.device(cfg["device"])
B, N, S = cfg["batch"], cfg["boxes"], cfg["size"]
torch.manual_seed(0)

unet_cfg = {k: v for k, v in cfg["unet"].items() if not k.startswith("_")}
unet = UNet2DConditionModel.from_config(unet_cfg).to(device)
C_in = unet_cfg["in_channels"]
L, C = cfg["context_tokens"], unet_cfg["cross_attention_dim"]
vae = None
if cfg.get("vae"):
    v = cfg["vae"]
    levels = len(v["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=v["in_channels"], out_channels=v["out_channels"], latent_channels=v["latent_channels"],
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(v["block_out_channels"]), layers_per_block=v["layers_per_block"],
        norm_num_groups=v["norm_num_groups"], scaling_factor=v["scaling_factor"],
    ).to(device).eval()
betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
alphas_cumprod = torch.cumprod(1 - betas, 0).to(device)
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg["bf16"]))


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grounding(b):
    xy = torch.rand(b, N, 2, device=device) * 0.5
    boxes = torch.cat([xy, xy + 0.3], -1)
    return {"boxes": boxes, "positive_embeddings": torch.randn(b, N, C, device=device),
            "masks": torch.ones(b, N, device=device)}


def timed(unit):
    unit()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        unit()
        sync()
    return (time.perf_counter() - start) / iters


if mode == "train-step":
    unet.train()
    unet.requires_grad_(False)
    params = [p for n, p in unet.named_parameters() if ".fuser." in n or n.startswith("position_net.")]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    x0 = torch.randn(B, C_in, S, S, device=device)
    ctx = torch.randn(B, L, C, device=device)
    g = grounding(B)

    def step():
        t = torch.randint(0, 1000, (B,), device=device)
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(B, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast:
            eps = unet(noisy, t, ctx, cross_attention_kwargs={"gligen": dict(g)}).sample
        loss = torch.nn.functional.mse_loss(eps.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds, unit = timed(step), "s/step"
elif mode == "sample":
    unet.eval()
    sched = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    ctx = torch.randn(2, L, C, device=device)
    g = grounding(1)
    g2 = {
        "boxes": torch.cat([g["boxes"], g["boxes"]]),
        "positive_embeddings": torch.cat([torch.zeros_like(g["positive_embeddings"]), g["positive_embeddings"]]),
        "masks": torch.cat([torch.zeros_like(g["masks"]), g["masks"]]),
    }
    gated = [m for m in unet.modules() if isinstance(m, GatedSelfAttentionDense)]
    steps = int(cfg["steps"])
    on_steps = round(cfg["grounding_fraction"] * steps)

    def image():
        sched.set_timesteps(steps)
        x = torch.randn(1, C_in, S, S, device=device)
        with torch.no_grad(), autocast:
            for k, t in enumerate(sched.timesteps):
                for m in gated:  # StableDiffusionGLIGENPipeline.enable_fuser
                    m.enabled = k < on_steps
                eps = unet(torch.cat([x, x]), t, ctx, cross_attention_kwargs={"gligen": dict(g2)}).sample.float()
                e_u, e_c = eps.chunk(2)
                x = sched.step(e_u + 7.5 * (e_c - e_u), t, x).prev_sample
            if vae is not None:
                vae.decode(x / vae.config.scaling_factor).sample
        return x

    seconds, unit = timed(image), "s/image"
else:
    raise SystemExit(f"unknown mode {mode}")

trainable = sum(p.numel() for n, p in unet.named_parameters() if ".fuser." in n or n.startswith("position_net."))
out = {
    "impl": "diffusers",
    "mode": mode,
    "seconds": seconds,
    "unit": unit,
    "iters": iters,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "trainable_params": trainable,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
    "diffusers": __import__("diffusers").__version__,
}
if device.type == "cuda":
    free, total = torch.cuda.mem_get_info(device)
    out["cuda_memory_bytes"] = total - free  # same measure as ours (cudaMemGetInfo)
    out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    out["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    out["gpu"] = torch.cuda.get_device_name(device)
print(json.dumps(out))
