"""GPU check: the same perplexity and the same GPTQ W4 on cuda as on the CPU.

On SmolLM2-135M-Instruct, in one process:

  1. token perplexity on the first --windows windows of WikiText-2 test, the model on the CPU (float32)
     and on cuda (float32 and bfloat16), with the timing of each;
  2. GPTQ W4 g64 calibrated on --calib-samples sequences of WikiText-2 valid, the runner computing each
     block on the CPU and on cuda (the model itself stays on the CPU), then the perplexity of both
     quantized models on cuda.

Prints one table and exits 1 when a cuda perplexity differs from its CPU twin by more than --tolerance
(1 % by default). Needs a CUDA machine (the `device` tool); about 3-5 minutes on an H200.

    python benchmarks/gpu_check.py --json-out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT.parent / "shared" / "data"


def timed(function):
    import torch

    start = time.perf_counter()
    value = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--eval-data", type=Path, default=DATA / "wikitext-2-raw-test.txt")
    parser.add_argument("--calib-data", type=Path, default=DATA / "wikitext-2-valid-tokenized.txt")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import torch

    import slmkit
    from slmkit.logs import quiet_libraries

    quiet_libraries()
    if not torch.cuda.is_available():
        print("no CUDA device here; run this on the GPU machine", file=sys.stderr)
        return 2
    config = slmkit.EvalConfig(max_length=args.max_length, limit=args.windows, batch_size=4)
    rows = {}

    def perplexity(lm) -> float:
        return slmkit.evaluate(lm, args.eval_data, config).summary["token_perplexity"]

    for label, options in [("cpu float32", {"device": "cpu"}), ("cuda float32", {"device": "cuda", "dtype": "float32"}),
                           ("cuda bfloat16", {"device": "cuda", "dtype": "bfloat16"})]:
        rows[label] = timed(lambda: perplexity(slmkit.load(args.model, **options)))
    calibration = slmkit.Calibration(args.calib_data, samples=args.calib_samples, seq_len=512)
    for device in ("cpu", "cuda"):
        lm = slmkit.load(args.model, device="cpu", dtype="float32")
        _, seconds = timed(lambda: slmkit.quantize(lm, slmkit.GPTQConfig(bits=4, group_size=64), calibration,
                                                   fake_quant=True, device=device))
        lm.model.to("cuda")
        rows[f"gptq-w4 on {device} (eval on cuda)"] = (perplexity(lm), seconds)
        del lm
    checks = {"cuda float32 vs cpu": rows["cuda float32"][0] / rows["cpu float32"][0] - 1,
              "cuda bfloat16 vs cpu": rows["cuda bfloat16"][0] / rows["cpu float32"][0] - 1,
              "gptq on cuda vs on cpu": rows["gptq-w4 on cuda (eval on cuda)"][0] /
              rows["gptq-w4 on cpu (eval on cuda)"][0] - 1}
    print(f"{'run':34} {'perplexity':>11} {'seconds':>8}")
    for label, (value, seconds) in rows.items():
        print(f"{label:34} {value:11.4f} {seconds:8.1f}")
    for label, difference in checks.items():
        print(f"{label:34} {difference * 100:+.3f} %")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "checks": checks, "device": torch.cuda.get_device_name()},
                                            indent=2))
    return 1 if any(abs(difference) > args.tolerance for difference in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
