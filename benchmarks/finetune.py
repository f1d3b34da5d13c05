"""Fine-tuning throughput and memory: clips per second and peak memory for SAM 2.1 adapters.

Trains on phantom clips (`sam2refine.datasets.phantoms`, written to a temporary nnU-Net folder) with
the real training step (`sam2refine.finetune.train.Trainer`: simulated prompts, correction rounds,
memory tracking, AdamW) on a random-init model: speed and memory do not depend on the
weights' values. The first `--warmup` steps are not timed.

Peak memory: `torch.cuda.max_memory_allocated` on a GPU; on the CPU the process's peak
resident set size (`resource.getrusage`), which also counts Python, torch and the data.

Usage: python benchmarks/finetune.py [--image-size 512] [--clip-length 8] [--steps 3]
       [--device auto] [--grad-checkpointing] [--train-decoder]
Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from sam2refine.finetune.config import FinetuneConfig
from sam2refine.finetune.data import ClipDataset
from sam2refine.finetune.train import Trainer
from sam2refine.runtime import resolve_device
from sam2refine.sam.model import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--clip-length", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--bottleneck", type=int, default=16)
    parser.add_argument("--train-decoder", action="store_true")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        from sam2refine.datasets.nnunet import read_dataset
        from sam2refine.datasets.phantoms import write_phantom_dataset

        root = write_phantom_dataset(Path(tmp) / "phantoms", 2, seed=0)
        dataset = read_dataset(root)
        config = FinetuneConfig(root, Path(tmp) / "out", model_name=args.model,
                                image_size=args.image_size, clip_length=args.clip_length,
                                bottleneck=args.bottleneck, train_decoder=args.train_decoder,
                                grad_checkpointing=args.grad_checkpointing, device=str(device))
        clips = ClipDataset(dataset, dataset.cases, args.image_size, args.clip_length, seed=0)
        torch.manual_seed(0)
        model = build_model(args.model, args.image_size, None, device)
        trainer = Trainer(model, config, total_steps=args.warmup + args.steps)
        trained = sum(p.numel() for p in trainer.params)
        total = sum(p.numel() for p in trainer.model.parameters())
        from sam2refine.sam.adapters import count_parameters

        adapter_params, _ = count_parameters(trainer.model)
        # Clips prepared up front: the figure is the training step, not NIfTI decoding.
        batch = [clips[i % len(clips)] for i in range(args.warmup + args.steps)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        losses, seconds = [], 0.0
        for step, clip in enumerate(batch):
            _sync(device)
            started = time.perf_counter()
            out = trainer.train_step(clip.images, clip.masks, [0, step])
            _sync(device)
            if step >= args.warmup:
                seconds += time.perf_counter() - started
            losses.append(out["loss"])
            print(f"step {step + 1}: {time.perf_counter() - started:.2f} s, loss "
                  f"{out['loss']:.4f} ({clip.organ}, {len(clip.frames)} slices)", flush=True)
    if device.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        peak_kind = "cpu_peak_rss"
    figures = {
        "benchmark": "finetune",
        "model": args.model,
        "image_size": args.image_size,
        "clip_length": args.clip_length,
        "device": _device_name(device),
        "torch_threads": torch.get_num_threads(),
        "grad_checkpointing": args.grad_checkpointing,
        "train_decoder": args.train_decoder,
        "timed_steps": args.steps,
        "clips_per_s": round(args.steps / seconds, 4),
        "frames_per_s": round(args.steps * args.clip_length / seconds, 3),
        "seconds_per_clip": round(seconds / args.steps, 3),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "trained_params": trained,
        "total_params": total,
        "trained_param_share": round(trained / total, 6),
        "adapter_param_share": round(adapter_params / (total - adapter_params), 6),
        "losses": [round(v, 4) for v in losses],
    }
    print(f"{figures['clips_per_s']} clips/s ({figures['seconds_per_clip']} s per clip of "
          f"{args.clip_length} slices at {args.image_size} px), peak memory "
          f"{figures['peak_memory_mb']} MB ({peak_kind}); training {trained:,} of {total:,} "
          f"parameters ({100 * trained / total:.3f} %)")
    print(json.dumps(figures))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


if __name__ == "__main__":
    main()
