"""The ways of running a model on CPU that tlq tried, timed on one model: `python bench/ways.py resnet50`.

Images per second of the model alone (random input, no decoding), best of 3 after a warm-up, in this order:
plain fp32, fp32 in channels_last, bf16 autocast, bf16 autocast in channels_last, TorchScript trace + freeze +
optimize_for_inference (oneDNN fusion, fp32), torch.compile with inductor freezing (fp32, then bf16; with the
seconds the compile took), and bf16 + channels_last at batch sizes 8 to 64. The README's table of what was
tried comes from this script.
"""

from __future__ import annotations

import argparse
import copy
import time

import timm
import torch


def rate(step, batch: int, tries: int = 3) -> float:
    step()
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="?", default="resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build)")
    args = parser.parse_args()
    model = timm.create_model(args.arch, pretrained=False, num_classes=0).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_x = x.contiguous(memory_format=torch.channels_last)

    def eager(m, inputs, bf16):
        def step():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                m(inputs)

        return step

    print(f"{args.arch}, batch {args.batch}, {torch.get_num_threads()} threads", flush=True)
    for name, m, inputs, bf16 in (
        ("plain fp32", model, x, False),
        ("fp32, channels_last", cl_model, cl_x, False),
        ("bf16 autocast", model, x, True),
        ("bf16 autocast, channels_last", cl_model, cl_x, True),
    ):
        print(f"{name}: {rate(eager(m, inputs, bf16), args.batch):.1f} img/s", flush=True)
    with torch.no_grad():
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(cl_model), cl_x)))

        def traced():
            scripted(cl_x)

        print(f"TorchScript freeze + optimize_for_inference, fp32: {rate(traced, args.batch):.1f} img/s", flush=True)
    if not args.no_compile:
        import torch._inductor.config as inductor

        with inductor.patch(freezing=True):
            for name, bf16 in (("fp32", False), ("bf16", True)):
                compiled = torch.compile(copy.deepcopy(cl_model))
                start = time.perf_counter()
                eager(compiled, cl_x, bf16)()
                built = time.perf_counter() - start
                speed = rate(eager(compiled, cl_x, bf16), args.batch)
                print(f"torch.compile with freezing, {name}: {speed:.1f} img/s ({built:.0f} s to compile)", flush=True)
    for batch in (8, 16, 32, 64):
        inputs = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        print(f"bf16, channels_last, batch {batch}: {rate(eager(cl_model, inputs, True), batch):.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
