// The exported model, run on the visitor's device: `openModel()` gives the object index.html puts at window.slm.
// Decoders run on llama.cpp compiled to WebAssembly (wllama), encoders on transformers.js (onnxruntime-web).
// Every file comes from this folder (slm-web.json lists them); sw.js keeps them so a later visit starts offline.

const here = new URL(".", import.meta.url);
const at = (path) => new URL(path, here).href;
const quiet = { debug() {}, log() {}, warn: console.warn, error: console.error };

export async function readManifest() {
  const response = await fetch(at("slm-web.json"));
  if (!response.ok) throw new Error(`slm-web.json: HTTP ${response.status}`);
  return response.json();
}

// The service worker that keeps every file of the export; resolves once it controls this page (its fetches go
// through it), false where the browser gives none (an insecure origin: http on a host other than localhost).
export async function keepOffline() {
  if (!("serviceWorker" in navigator) || !window.isSecureContext) return false;
  await navigator.serviceWorker.register(at("sw.js"), { scope: here.pathname });
  await navigator.serviceWorker.ready;
  if (!navigator.serviceWorker.controller) {
    await new Promise((resolve) => navigator.serviceWorker.addEventListener("controllerchange", resolve, { once: true }));
  }
  return true;
}

// The model files as Blobs, read in order with the bytes so far reported to `onProgress({loaded, total})`.
async function download(files, onProgress) {
  const total = files.reduce((sum, file) => sum + file.bytes, 0);
  let loaded = 0;
  const blobs = [];
  for (const file of files) {
    const response = await fetch(at(file.path));
    if (!response.ok) throw new Error(`${file.path}: HTTP ${response.status}`);
    const reader = response.body.getReader(), parts = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parts.push(value);
      loaded += value.byteLength;
      onProgress?.({ loaded, total });
    }
    blobs.push(new Blob(parts));
  }
  return blobs;
}

function refuse(what, kind) {
  return () => Promise.reject(new Error(`${what} needs ${what === "classify" ? "a classifier" : "a decoder"}; ` +
                                        `this export is ${kind === "causal-lm" ? "a decoder" : `an ${kind}`}`));
}

// Options: threads (default: the runtime's choice), gpu (false: WebGPU off; wllama uses it where the browser has
// it), context (decoders' tokens of context, default the export's), onProgress({loaded, total}).
export async function openModel(manifest, options = {}) {
  const files = manifest.model_files;
  const opened = manifest.kind === "causal-lm" ? await openDecoder(manifest, files, options)
                                               : await openEncoder(manifest, options);
  return { manifest, ...opened };
}

async function openDecoder(manifest, files, { threads, gpu = true, context, onProgress }) {
  const { Wllama } = await import(at(manifest.runtime.module));
  const wllama = new Wllama({ default: at(manifest.runtime.wasm) }, { logger: quiet, suppressNativeLog: true });
  const blobs = await download(files, onProgress);
  // Flash attention off, as slm's llama.cpp runtime runs the file: the same sums in the same order, so the page
  // answers as the model that was measured (with it on, near-tied tokens can come out the other way).
  await wllama.loadModel(blobs, { n_ctx: context ?? manifest.context, n_threads: threads, jinja: true,
                                  flash_attn: false, ...(gpu ? {} : { n_gpu_layers: 0 }) });
  let running = null;
  const stats = {};

  // One request at a time (wllama runs one sequence); its pieces stream to `onToken(text)`.
  // slm's sampling defaults, not llama-server's (top_k 40, min_p 0.05, a repetition penalty over the last 64
  // tokens): temperature 0 is then plain greedy, as `slm generate` decodes.
  async function generate(call, params, { max_tokens = 256, temperature = 0.7, top_p = 1, top_k = 0, min_p = 0,
                                          repetition_penalty = 1, seed, onToken } = {}) {
    if (running) throw new Error("a reply is still running; await it or call stop() first");
    running = new AbortController();
    const started = performance.now();
    let first = null, text = "", finish = null, usage = null, timings = null;
    try {
      await call({ ...params, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty: repetition_penalty,
                   ...(seed === undefined ? {} : { seed }), stream: true, abortSignal: running.signal,
                   onData: (chunk) => {
                     const choice = chunk.choices?.[0];
                     const piece = choice ? (choice.delta ? choice.delta.content : choice.text) : null;
                     if (piece) {
                       first ??= performance.now();
                       text += piece;
                       onToken?.(piece);
                     }
                     if (choice?.finish_reason) finish = choice.finish_reason;
                     if (chunk.usage) usage = chunk.usage;
                     if (chunk.timings) timings = chunk.timings;
                   } });
    } catch (error) {
      if (!running.signal.aborted) throw error;
      finish = "stopped";
    } finally {
      running = null;
    }
    Object.assign(stats, {
      finish_reason: finish, prompt_tokens: usage?.prompt_tokens ?? timings?.prompt_n ?? null,
      completion_tokens: usage?.completion_tokens ?? timings?.predicted_n ?? null,
      tokens_per_second: timings?.predicted_per_second ?? null,
      prompt_tokens_per_second: timings?.prompt_per_second ?? null,
      time_to_first_token_ms: first === null ? null : first - started,
    });
    return text;
  }

  return {
    threads: wllama.getNumThreads(), multithread: wllama.isMultithread(), stats,
    chat: (messages, options) => generate((p) => wllama.createChatCompletion(p), { messages }, options),
    complete: (prompt, options) => generate((p) => wllama.createCompletion(p), { prompt }, options),
    stop: () => running?.abort(),
    classify: refuse("classify", manifest.kind),
    embed: refuse("embed", manifest.kind),
  };
}

async function openEncoder(manifest, { threads, onProgress }) {
  const transformers = await import(at(manifest.runtime.module));
  const { env } = transformers;
  env.allowRemoteModels = false;  // nothing leaves the origin: the model is this folder's `model/`
  env.allowLocalModels = true;
  env.localModelPath = here.pathname;
  env.useBrowserCache = false;  // sw.js keeps the files
  env.backends.onnx.wasm.wasmPaths = { mjs: at(manifest.runtime.mjs), wasm: at(manifest.runtime.wasm) };
  if (threads) env.backends.onnx.wasm.numThreads = threads;
  const total = manifest.model_files.reduce((sum, file) => sum + file.bytes, 0), loaded = {};
  const progress_callback = (event) => {
    if (event.status !== "progress" || !onProgress) return;
    loaded[event.file] = event.loaded;
    onProgress({ loaded: Object.values(loaded).reduce((a, b) => a + b, 0), total });
  };
  const task = manifest.kind === "classifier" ? "text-classification" : "feature-extraction";
  // The graph is beside the config (slm's ONNX directory), not in transformers.js's usual onnx/ folder.
  const pipe = await transformers.pipeline(task, manifest.model_dir, { dtype: "fp32", device: "wasm", subfolder: "",
                                                                       progress_callback });
  const stats = {};
  const timed = async (run) => {
    const started = performance.now();
    const result = await run();
    stats.latency_ms = performance.now() - started;
    return result;
  };
  const classify = async (text) => {
    const [top] = await timed(() => pipe(text, { top_k: 1 }));
    return { label: top.label, score: top.score };
  };
  // Embeddings as the export's pooling says (sentence-transformers models: mean over tokens, unit length).
  const embed = async (text) => {
    const output = await timed(() => pipe(text, manifest.pooling));
    return Array.from(output.data);
  };
  return {
    threads: env.backends.onnx.wasm.numThreads ?? null, multithread: self.crossOriginIsolated, stats,
    classify: manifest.kind === "classifier" ? classify : refuse("classify", manifest.kind),
    embed: manifest.kind === "encoder" ? embed : refuse("embed", manifest.kind),
    chat: refuse("chat", manifest.kind), complete: refuse("complete", manifest.kind), stop() {},
  };
}
