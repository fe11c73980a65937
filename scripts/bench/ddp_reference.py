"""Reference for `spatiallock bench dp`: PyTorch DistributedDataParallel (gloo backend, CPU) on
diffusers' GLIGEN U-Net of the same architecture, global batch and boxes that `spatiallock bench`
writes to CONFIG.json, at each world size asked for; and `torch.distributed.all_reduce` of
float32 tensors of the sizes asked for. One process per rank (torch.multiprocessing), 1 intra-op
thread each, loopback rendezvous. DDP's defaults: 25 MiB buckets, all-reduce overlapped with
the backward pass.

Usage: ddp_reference.py CONFIG.json. Prints one JSON object:
  {"ddp": {"1": s/step, "2": s/step}, "all_reduce": {"<bytes>": s per all-reduce}}
"""
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(iters, unit):
    unit()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        unit()
    return (time.perf_counter() - start) / iters


def rank_main(rank, world, port, cfg, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from diffusers import UNet2DConditionModel

    torch.manual_seed(rank)
    unet_cfg = {k: v for k, v in cfg["unet"].items() if not k.startswith("_")}
    unet = UNet2DConditionModel.from_config(unet_cfg)
    unet.train()
    unet.requires_grad_(False)
    for n, p in unet.named_parameters():
        if ".fuser." in n or n.startswith("position_net."):
            p.requires_grad_(True)
    model = torch.nn.parallel.DistributedDataParallel(unet) if world > 1 else unet
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    B, N, S = cfg["batch"] // world, cfg["boxes"], cfg["size"]
    C_in, L, C = unet_cfg["in_channels"], cfg["context_tokens"], unet_cfg["cross_attention_dim"]
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    x0 = torch.randn(B, C_in, S, S)
    ctx = torch.randn(B, L, C)
    xy = torch.rand(B, N, 2) * 0.5
    g = {"boxes": torch.cat([xy, xy + 0.3], -1), "positive_embeddings": torch.randn(B, N, C), "masks": torch.ones(B, N)}

    def step():
        t = torch.randint(0, 1000, (B,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(B, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps = model(noisy, t, ctx, cross_attention_kwargs={"gligen": dict(g)}).sample
        torch.nn.functional.mse_loss(eps, noise).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    result = {"step_s": timed(cfg["iters"], step)}
    if world > 1:
        result["all_reduce"] = {}
        for nbytes in cfg["all_reduce_bytes"]:
            t = torch.ones(max(nbytes // 4, 1))
            result["all_reduce"][str(nbytes)] = timed(cfg["iters"], lambda: dist.all_reduce(t))
    if rank == 0:
        out.put(result)
    dist.barrier()
    dist.destroy_process_group()


def main():
    cfg = json.load(open(sys.argv[1]))
    ctx = mp.get_context("spawn")
    report = {"ddp": {}, "all_reduce": {}}
    for world in cfg["worlds"]:
        out = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=rank_main, args=(r, world, port, cfg, out)) for r in range(world)]
        for p in procs:
            p.start()
        result = out.get()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"DDP rank exited with {p.exitcode}")
        report["ddp"][str(world)] = result["step_s"]
        report["all_reduce"].update(result.get("all_reduce", {}))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
