"""The model on the user's device: a web export's page in headless Chromium against the native runtimes on the
same files, in one run.

Decoder (SmolLM2-135M-Instruct as a q4_0 GGUF, or --gguf FILE): `slm export --format web` of the file, served on
loopback by `slm serve --static`'s app (cross-origin isolated: the page may use threads), opened in headless
Chromium. For each thread count (--threads, default 1 and 2) the page is loaded afresh with ?threads=N and
measured through `window.slm`, and llama.cpp native (llama-cpp-python, the same file, the same thread count,
context and flash-attention setting as the page) runs the same work:
  - load: the page until `slm.ready` (download from loopback, WebAssembly compile, model load);
  - time to first token: a --prompt-tokens prompt processed and its first token out (the page's own clock from
    the call to the first streamed piece; native: prompt evaluation plus the first sampled token);
  - decode tokens/s over --gen-tokens greedy tokens (the page: llama.cpp's own `predicted_per_second` timing in
    the worker; native: tokens after the first / their wall time), median of --repeats;
  - whether the greedy texts are equal.
Download size: every file the page fetches (slm-web.json lists them).

Classifier (all-MiniLM-L6-v2 fine-tuned on BANKING77 by `slmkit.finetune`, or --classifier DIR): its web export
in the browser (transformers.js on onnxruntime-web) against onnxruntime native on the same ONNX graph:
accuracy on banking77_dev.tsv (1,000 texts), how many predictions agree, the largest probability difference,
and the mean latency per text (one text at a time, as an app classifies what a user typed).

Phone (SmolLM2-135M-Instruct exported by `slm export --format executorch`, 8da4w, or --pte DIR): the `.pte` run by
ExecuTorch's runtime against the float model in torch and the q4_0 GGUF on llama.cpp: token perplexity on the
first --ppl-chars characters of WikiText-2's test text (windows of --ppl-window tokens), decode tokens/s
(`slmkit.bench`: --prompt-tokens prompt, --gen-tokens tokens, median of --repeats; each runtime's default thread
count, which the output names), file size; and the export's wall time.

Data: ../shared/data (wikitext-2-raw-test.txt for the prompt and the perplexity, banking77_*.tsv).

Usage (from the repository root; nothing else running, llama.cpp's and the browser's threads spin):

    .venv/bin/python benchmarks/on_device.py                      # all three parts, ~40 min on 2 cores
    .venv/bin/python benchmarks/on_device.py --parts decoder --gguf model.q4_0.gguf --threads 1,2,4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import slmkit
from finetune_classifier import quoted_rows
from slmkit.exporters import WebConfig
from slmkit.models.loading import WEB_MANIFEST
from slmkit.server.static import static_app

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))  # the DevTools driver and loopback server the page tests use
from chromium import CHROMIUM, Page  # noqa: E402
from test_serve import Running  # noqa: E402


def folder_bytes(folder: Path) -> int:
    return sum(file["bytes"] for file in json.loads((folder / WEB_MANIFEST).read_text())["files"])


def prompt_text(tokenizer, tokens: int) -> str:
    """The first `tokens` tokens of WikiText-2's test text, as text."""
    text = (DATA / "wikitext-2-raw-test.txt").read_text()[:20000]
    return tokenizer.decode(tokenizer(text)["input_ids"][:tokens])


def native_decoder(gguf: Path, prompt: str, threads: int, context: int, gen_tokens: int) -> dict:
    """llama.cpp native on the file: time to first token and decode tokens/s, greedy."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, flash_attn=False,
                          verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    started = time.perf_counter()
    tokens, times = [], []
    for token in llm.generate(ids, temp=0, top_k=1, reset=True):
        times.append(time.perf_counter())
        if llm.token_eos() == token or len(tokens) == gen_tokens:
            break
        tokens.append(token)
    decode_seconds = times[len(tokens) - 1] - times[0]
    return {"time_to_first_token_ms": (times[0] - started) * 1000,
            "decode_tokens_per_s": (len(tokens) - 1) / decode_seconds, "tokens": len(tokens),
            "text": llm.detokenize(tokens).decode(errors="replace")}


def browser_decoder(served: Running, prompt: str, threads: int, gen_tokens: int, repeats: int,
                    profile: Path) -> dict:
    shutil.rmtree(profile, ignore_errors=True)  # a first visit: nothing cached
    started = time.perf_counter()
    page = Page(f"{served.url}/?threads={threads}", profile)
    try:
        info = page.run("window.slm.ready", timeout=600)
        load_seconds = time.perf_counter() - started
        call = f"window.slm.complete({json.dumps(prompt)}, {{temperature: 0, max_tokens: {gen_tokens}}})"
        page.run(call, timeout=600)  # warm-up
        runs = []
        for _ in range(repeats):
            text = page.run(call, timeout=600)
            runs.append({**page.run("window.slm.stats"), "text": text})
        outside = page.requests_outside(served.url)
    finally:
        page.close()
    return {"threads": info["threads"], "multithread": info["multithread"], "load_s": load_seconds,
            "time_to_first_token_ms": statistics.median(run["time_to_first_token_ms"] for run in runs),
            "decode_tokens_per_s": statistics.median(run["tokens_per_second"] for run in runs),
            "tokens": runs[0]["completion_tokens"], "text": runs[0]["text"], "requests_outside_origin": outside}


def decoder_part(args, work: Path) -> dict:
    gguf = Path(args.gguf) if args.gguf else work / "smollm2.q4_0.gguf"
    if not gguf.is_file():
        print("exporting smollm2-135m-instruct as q4_0 ...", flush=True)
        slmkit.export(slmkit.load("smollm2-135m-instruct"), gguf, slmkit.GGUFConfig(quant="q4_0"))
    folder = slmkit.export(str(gguf), work / "decoder-web", WebConfig(), force=True).out
    context = json.loads((folder / WEB_MANIFEST).read_text())["context"]
    from slmkit.runtime import open_model

    prompt = prompt_text(open_model(str(gguf), backend="llamacpp").tokenizer, args.prompt_tokens)
    served = Running(static_app(folder))
    rows = []
    try:
        for threads in args.threads:
            print(f"decoder, {threads} thread(s): browser ...", flush=True)
            browser = browser_decoder(served, prompt, threads, args.gen_tokens, args.repeats,
                                      work / f"profile-decoder-{threads}")
            print(f"decoder, {threads} thread(s): llama.cpp native ...", flush=True)
            natives = [native_decoder(gguf, prompt, threads, context, args.gen_tokens) for _ in range(args.repeats)]
            native = {"time_to_first_token_ms": statistics.median(n["time_to_first_token_ms"] for n in natives),
                      "decode_tokens_per_s": statistics.median(n["decode_tokens_per_s"] for n in natives),
                      "text": natives[0]["text"]}
            rows.append({"threads": threads, "browser": browser, "native": native,
                         "decode_ratio": browser["decode_tokens_per_s"] / native["decode_tokens_per_s"],
                         "same_greedy_text": browser["text"] == native["text"]})
    finally:
        served.stop()
    return {"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "download_bytes": folder_bytes(folder),
            "context": context, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "rows": rows}


def classifier_part(args, work: Path) -> dict:
    dev_rows = [line.split("\t") for line in quoted_rows(DATA / "banking77_dev.tsv")]
    classifier = Path(args.classifier) if args.classifier else work / "minilm-banking77"
    if not classifier.is_dir():
        train = work / "banking77_train.tsv"
        train.write_text("text\tlabel\n" + "\n".join(quoted_rows(DATA / "banking77_train.tsv")) + "\n")
        print("fine-tuning minilm-l6 on BANKING77 ...", flush=True)
        config = slmkit.FinetuneConfig(data=str(train), task="classification", epochs=args.epochs, batch_size=32,
                                       lr=1e-4, max_length=64, save_every=0)
        slmkit.finetune("minilm-l6", classifier, config)
    folder = slmkit.export(slmkit.load(str(classifier)), work / "classifier-web", WebConfig(), force=True).out
    from slmkit.runtime.onnx import OnnxModel

    onnx = OnnxModel(folder / "model", n_threads=args.classifier_threads)  # the graph the page runs
    texts = [text for text, _ in dev_rows]
    native, started = [], time.perf_counter()
    for text in texts:
        native.append(onnx.classify([text], max_length=512).softmax(-1)[0])
    native_ms = (time.perf_counter() - started) * 1000 / len(texts)
    labels = onnx.config.id2label
    served = Running(static_app(folder))
    shutil.rmtree(work / "profile-classifier", ignore_errors=True)
    page = Page(f"{served.url}/?threads={args.classifier_threads}", work / "profile-classifier")
    try:
        page.run("window.slm.ready", timeout=600)
        page.run("window.slm.classify('warm up')")
        browser = page.run(f"""(async () => {{
            const texts = {json.dumps(texts)}, out = [];
            const started = performance.now();
            for (const text of texts) out.push(await window.slm.classify(text));
            return {{out, ms: (performance.now() - started) / texts.length}};
        }})()""", timeout=1800)
        outside = page.requests_outside(served.url)
    finally:
        page.close()
        served.stop()
    native_labels = [labels[int(p.argmax())] for p in native]
    browser_labels = [row["label"] for row in browser["out"]]
    gold = [label for _, label in dev_rows]
    differences = [abs(float(p.max()) - row["score"]) for p, row in zip(native, browser["out"])]
    return {"classifier": str(classifier), "texts": len(texts), "download_bytes": folder_bytes(folder),
            "threads": args.classifier_threads,
            "accuracy_browser": sum(a == b for a, b in zip(browser_labels, gold)) / len(gold),
            "accuracy_onnxruntime": sum(a == b for a, b in zip(native_labels, gold)) / len(gold),
            "same_label": sum(a == b for a, b in zip(browser_labels, native_labels)),
            "max_probability_difference": max(differences), "ms_per_text_browser": browser["ms"],
            "ms_per_text_onnxruntime": native_ms, "requests_outside_origin": outside}


def phone_part(args, work: Path) -> dict:
    from slmkit.evaluation.config import BenchConfig, EvalConfig
    from slmkit.runtime import open_model

    gguf = Path(args.gguf) if args.gguf else work / "smollm2.q4_0.gguf"
    if not gguf.is_file():
        slmkit.export(slmkit.load("smollm2-135m-instruct"), gguf, slmkit.GGUFConfig(quant="q4_0"))
    pte = Path(args.pte) if args.pte else work / "smollm2-pte"
    export_seconds = None
    if not (pte / "model.pte").is_file():
        print("exporting smollm2-135m-instruct to ExecuTorch (8da4w) ...", flush=True)
        started = time.perf_counter()
        slmkit.export(slmkit.load("smollm2-135m-instruct"), pte, slmkit.ExecuTorchConfig(max_context=1024))
        export_seconds = time.perf_counter() - started
    text = work / "wikitext-slice.txt"
    text.write_text((DATA / "wikitext-2-raw-test.txt").read_text()[:args.ppl_chars])
    evaluation = EvalConfig(max_length=args.ppl_window)
    bench = BenchConfig(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, repeats=args.repeats)
    rows = {}
    for name, opened in (("pte (ExecuTorch)", lambda: open_model(str(pte))),
                         ("float (torch)", lambda: open_model("smollm2-135m-instruct")),
                         ("q4_0 GGUF (llama.cpp)", lambda: open_model(str(gguf), logits_all=True))):
        print(f"phone: {name} ...", flush=True)
        lm = opened()
        measured = slmkit.evaluate(lm, text, evaluation).summary
        speed = slmkit.bench(lm, bench).summary
        rows[name] = {"token_perplexity": measured["token_perplexity"], "windows": measured["windows"],
                      "decode_tokens_per_s": speed["decode_tokens_per_s"], "threads": speed["threads"],
                      "bytes_on_disk": speed["bytes_on_disk"]}
        del lm
    return {"pte": str(pte), "export_s": export_seconds, "ppl_chars": args.ppl_chars, "ppl_window": args.ppl_window,
            "rows": rows}


def report(results: dict) -> None:
    decoder = results.get("decoder")
    if decoder:
        print(f"\ndecoder {decoder['gguf']} ({decoder['gguf_bytes'] / 1e6:.1f} MB; the page downloads "
              f"{decoder['download_bytes'] / 1e6:.1f} MB), prompt {decoder['prompt_tokens']} tokens, "
              f"{decoder['gen_tokens']} greedy tokens, context {decoder['context']}")
        print("threads | browser tok/s | native tok/s | ratio | browser TTFT ms | native TTFT ms | page load s | "
              "multi-threaded | same text")
        for row in decoder["rows"]:
            b, n = row["browser"], row["native"]
            print(f"{row['threads']} | {b['decode_tokens_per_s']:.1f} | {n['decode_tokens_per_s']:.1f} | "
                  f"{row['decode_ratio']:.2f} | {b['time_to_first_token_ms']:.0f} | {n['time_to_first_token_ms']:.0f}"
                  f" | {b['load_s']:.1f} | {b['multithread']} | {row['same_greedy_text']}")
            if b["requests_outside_origin"]:
                print(f"  requests outside the origin: {b['requests_outside_origin']}")
    classifier = results.get("classifier")
    if classifier:
        c = classifier
        print(f"\nclassifier {c['classifier']} on banking77_dev ({c['texts']} texts; the page downloads "
              f"{c['download_bytes'] / 1e6:.1f} MB), {c['threads']} thread(s)")
        print(f"accuracy browser {c['accuracy_browser']:.4f} | onnxruntime {c['accuracy_onnxruntime']:.4f} | "
              f"same label {c['same_label']}/{c['texts']} | max probability difference "
              f"{c['max_probability_difference']:.2e}")
        print(f"latency per text: browser {c['ms_per_text_browser']:.1f} ms | onnxruntime "
              f"{c['ms_per_text_onnxruntime']:.1f} ms")
        if c["requests_outside_origin"]:
            print(f"  requests outside the origin: {c['requests_outside_origin']}")
    phone = results.get("phone")
    if phone:
        export = f", exported in {phone['export_s']:.0f} s" if phone["export_s"] else ""
        print(f"\nphone {phone['pte']}{export}; perplexity on the first {phone['ppl_chars']} characters of "
              f"WikiText-2 test, windows of {phone['ppl_window']} tokens")
        print("model | token perplexity | decode tok/s | threads | MB on disk")
        for name, row in phone["rows"].items():
            print(f"{name} | {row['token_perplexity']:.3f} ({row['windows']} windows) | "
                  f"{row['decode_tokens_per_s']:.1f} | {row['threads']} | {(row['bytes_on_disk'] or 0) / 1e6:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="decoder,classifier,phone")
    parser.add_argument("--gguf", help="the decoder's GGUF [default: SmolLM2-135M-Instruct exported as q4_0]")
    parser.add_argument("--threads", default="1,2", type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classifier", help="a fine-tuned classifier [default: MiniLM fine-tuned on BANKING77]")
    parser.add_argument("--classifier-threads", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=3.0, help="the default classifier's fine-tuning epochs")
    parser.add_argument("--pte", help="an ExecuTorch export [default: SmolLM2-135M-Instruct, 8da4w]")
    parser.add_argument("--ppl-chars", type=int, default=40000)
    parser.add_argument("--ppl-window", type=int, default=512)
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "build" / "on-device"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("error: headless Chromium is needed (Debian package chromium)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    results = {}
    if "decoder" in parts:
        results["decoder"] = decoder_part(args, work)
    if "classifier" in parts:
        results["classifier"] = classifier_part(args, work)
    if "phone" in parts:
        results["phone"] = phone_part(args, work)
    print(json.dumps(results, indent=2) if args.json else "", end="")
    report(results)


if __name__ == "__main__":
    main()
