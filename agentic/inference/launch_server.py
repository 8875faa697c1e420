"""Serve a model with the embedded JAX engine behind SGLang's native HTTP API.

    python -m agentic.inference.launch_server --model-path smollm2-135m-instruct --port 30000

Flags mirror `python -m sglang.launch_server` (same names and meanings); flags
of SGLang's that have no meaning here (GPU memory fractions, kernels, ...) are
accepted with a warning, so one command line can start either server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

log = logging.getLogger("agentic.inference.launch_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agentic.inference.launch_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True,
                   help="registry name (e.g. smollm2-135m-instruct), Hugging Face directory or .gguf file")
    p.add_argument("--tokenizer-path", default=None, help="default: --model-path")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key", default=os.environ.get("SGLANG_API_KEY"),
                   help="clients must send 'Authorization: Bearer <key>' (SGLang's flag; default $SGLANG_API_KEY); "
                        "required for a non-loopback --host")
    p.add_argument("--insecure", action="store_true", help="serve a non-loopback --host without --api-key")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="param/compute dtype (auto: the checkpoint's, bfloat16 on accelerators)")
    p.add_argument("--context-length", type=int, default=4096, help="tokens per request, prompt + output")
    p.add_argument("--max-running-requests", type=int, default=32, help="KV slots decoded together")
    p.add_argument("--chunked-prefill-size", type=int, default=512, help="most prompt tokens per prefill call")
    p.add_argument("--max-prefill-batch", type=int, default=8)
    p.add_argument("--enable-mixed-chunk", action="store_true",
                   help="run new requests' prefill in the decode step's forward pass also on CPU (SGLang's flag; "
                        "default: on for accelerators, off on CPU: EngineConfig.mixed_prefill='auto')")
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1,
                   help="devices per model replica (ignored with a warning when fewer devices exist)")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--weight-version", default="0",
                   help="initial weight version label (any string, as SGLang's; integers are also the engine's)")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--warmup", action="store_true",
                   help="compile every bucketed prefill and decode shape before serving (slower start, "
                        "no compiles during the first requests)")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    from agentic.transport.auth import is_loopback

    if not args.api_key and not args.insecure and not is_loopback(args.host):
        parser.error(f"refusing to serve on {args.host} without --api-key (or $SGLANG_API_KEY); --insecure "
                     "only on a closed network")
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    if unknown:
        log.warning("ignoring SGLang flags that have no meaning for the JAX engine: %s", " ".join(unknown))

    import jax

    from agentic import models
    from agentic.inference.engine import EngineConfig, EngineCore, JaxEngine
    from agentic.inference.http_server import SGLangServer, start_server

    tp = args.tp_size
    if tp > 1 and jax.device_count() < tp:
        log.warning("--tp-size %d ignored: only %d device(s); serving with tp_size=1", tp, jax.device_count())
        tp = 1
    dtype = None if args.dtype == "auto" else args.dtype
    if dtype is None and jax.default_backend() != "cpu":
        dtype = "bfloat16"
    log.info("loading %s (dtype=%s)", args.model_path, dtype or "checkpoint")
    config, params, tokenizer = models.load_model(args.model_path, dtype=dtype)
    if args.tokenizer_path:
        tokenizer = models.load_tokenizer(args.tokenizer_path)
    ec = EngineConfig(num_slots=args.max_running_requests, max_len=args.context_length,
                      prefill_chunk=min(args.chunked_prefill_size, args.context_length),
                      max_prefill_batch=args.max_prefill_batch, tp_size=tp, seed=args.random_seed,
                      mixed_prefill="on" if args.enable_mixed_chunk else "auto")
    version = int(args.weight_version) if args.weight_version.lstrip("-").isdigit() else 0
    core = EngineCore(config, params, tokenizer, ec, devices=jax.devices()[:tp], weight_version=version)
    if args.warmup:
        t = time.perf_counter()
        n = core.warmup()
        log.info("warmup: compiled %d prefill/decode programs in %.1f s", n, time.perf_counter() - t)
    engine = JaxEngine(core=core)

    def load_params(path: str):
        return models.load_model(path, dtype=dtype)[1]

    server = SGLangServer(engine, model_path=args.served_model_name or args.model_path, load_params=load_params,
                          server_info={"tp_size": tp, "dtype": dtype or config.dtype},
                          weight_version=args.weight_version, api_key=args.api_key)
    async def serve():
        runner = await start_server(server, args.host, args.port, insecure=args.insecure)
        log.info("serving %s on http://%s:%d (SGLang native API, OpenAI API under /v1). "
                 "The server is fired up and ready to roll!",
                 args.model_path, args.host, args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        await engine.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main(sys.argv[1:])
