#!/usr/bin/env python3
"""Load generator for tq serve (or any OpenAI-compatible server): N streaming completion requests
at a fixed concurrency, with the openai package's async client, mixed prompt and output lengths,
and a fraction of clients that leave mid-stream.

Reports completed requests/s (requests that ran to their end; those the client left mid-stream are
counted apart, and no rate counts them), output tokens/s of the completed requests, time to first
token (TTFT) and time per output token (TPOT) percentiles of the completed requests, errors by kind,
and, from tq serve's /metrics after the run, KV pages still held (must be 0), preemptions and the
prefix-cache hit rate. A server without /metrics (or one that does not answer it) gets a one-line
note instead of those three, and the rest is reported as usual. Exits 1 on unexpected errors or
leaked pages.

TTFT and TPOT as vLLM's benchmark_serving takes them: TTFT is the time from sending the request to
the first streamed chunk that carries choices, even when its text is empty (a first token may
decode to no text: a partial UTF-8 sequence, a special token); TPOT is the time from that chunk to
the last chunk with choices over the completion tokens (the usage chunk's count) less one.

  python bench/serve/serve_load.py --url http://127.0.0.1:8000 --requests 1000 --concurrency 32 --cancel 0.1
  python bench/serve/serve_load.py --launch "build/release/apps/cli/tq serve -m model.gguf" --requests 200

Prompts are random words (--prompt-words lo,hi), or random token ids (--token-prompts lo,hi) for
models without a usable vocabulary; output lengths are --max-tokens lo,hi with ignore_eos semantics
approximated by a vocabulary that rarely ends text.
"""
import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

WORDS = ("the a little girl boy dog cat park sun tree ball red big happy sad day time once upon there was named "
         "lily tom max sue bird fish mom dad friend play run jump saw went home toy box garden flower sky blue").split()


def pair(text):
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def percentiles(xs, ps=(50, 90, 99)):
    if not xs:
        return {f"p{p}": None for p in ps}
    s = sorted(xs)
    return {f"p{p}": s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] for p in ps}


def metrics(url):
    """/metrics as {sample name: value}, read by Prometheus' own parser (a malformed exposition raises,
    as does a server without /metrics)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        return {s.name: s.value for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}


def launch(cmd):
    proc = subprocess.Popen(cmd.split() + ["--port", "0"], stderr=subprocess.PIPE, text=True)
    found = {}
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            sys.stderr.write(line)
            m = re.search(r"on (http://[\d.]+:\d+)", line)
            if m:
                found["url"] = m.group(1)
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 600
    while not ready.wait(0.2):
        if proc.poll() is not None or time.time() > deadline:  # a server that exited fails at once
            proc.kill()
            sys.exit("the server did not start")
    return proc, found["url"]


async def one(client, model, rng, a, stats):
    if a.token_prompts:
        prompt = [rng.randrange(a.vocab_lo, a.vocab_hi) for _ in range(rng.randint(*a.token_prompts))]
    else:
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*a.prompt_words)))
    max_tokens = rng.randint(*a.max_tokens)
    leave_after = rng.randint(1, max(1, max_tokens - 1)) if rng.random() < a.cancel else None
    t0 = time.perf_counter()
    first = last = None
    n = 0
    try:
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=a.temperature,
                                                 stream=True, seed=rng.randrange(1 << 31), stream_options={"include_usage": True})
        chunks = 0
        async for chunk in stream:
            if chunk.usage:
                n = chunk.usage.completion_tokens  # a chunk may carry several tokens: the usage chunk counts them
            # vLLM's benchmark_serving times every chunk that carries choices, empty text included (a
            # first token may decode to none: a partial UTF-8 sequence, a special token); the usage
            # chunk has none.
            if not chunk.choices:
                continue
            now = time.perf_counter()
            first = first or now
            last = now
            chunks += 1
            if leave_after is not None and chunks >= leave_after:
                # Left mid-stream: counted apart, in no rate; its tokens (no usage chunk counts them)
                # and its TTFT are not reported.
                await stream.close()
                stats["cancelled"] += 1
                return
        stats["ok"] += 1
    except openai.APIStatusError as e:
        stats["errors"][f"HTTP {e.status_code}"] = stats["errors"].get(f"HTTP {e.status_code}", 0) + 1
        return
    except Exception as e:  # noqa: BLE001 - counted and reported
        stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
        return
    stats["tokens"] += n
    if first is not None:
        stats["ttft"].append(first - t0)
        if n > 1:
            stats["tpot"].append((last - first) / (n - 1))


async def run(a, url):
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    model = (await client.models.list()).data[0].id
    rng = random.Random(a.seed)
    stats = {"ok": 0, "cancelled": 0, "tokens": 0, "ttft": [], "tpot": [], "errors": {}}
    queue = list(range(a.requests))
    done = 0
    t0 = time.perf_counter()

    async def worker(wid):
        nonlocal done
        wrng = random.Random(rng.random() + wid)
        while queue:
            queue.pop()
            await one(client, model, wrng, a, stats)
            done += 1
            if a.progress and done % max(1, a.requests // 10) == 0:
                print(f"  {done}/{a.requests} requests", file=sys.stderr, flush=True)

    await asyncio.gather(*(worker(i) for i in range(a.concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    return model, wall, stats


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    p.add_argument("--launch", help="a server command to start on a free port (--port 0 is added)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--prompt-words", type=pair, default=(4, 60), help="lo,hi random words per prompt")
    p.add_argument("--token-prompts", type=pair, help="lo,hi random token ids per prompt instead of words")
    p.add_argument("--vocab-lo", type=int, default=100)
    p.add_argument("--vocab-hi", type=int, default=500)
    p.add_argument("--max-tokens", type=pair, default=(16, 128), help="lo,hi max_tokens per request")
    p.add_argument("--cancel", type=float, default=0.0, help="fraction of clients that leave mid-stream")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args()
    if bool(a.url) == bool(a.launch):
        p.error("give one of --url and --launch")
    proc = None
    url = a.url
    if a.launch:
        proc, url = launch(a.launch)
    m, metrics_error = None, None
    try:
        model, wall, s = asyncio.run(run(a, url))
        # Cancellations reach the engine within a step; wait for the pool to drain before judging it.
        # /metrics is tq serve's: another server may have none, and its results stand without it.
        deadline = time.time() + 30
        try:
            while True:
                m = metrics(url)
                if (m.get("tq_requests_running", 0) == 0 and m.get("tq_requests_waiting", 0) == 0) or time.time() > deadline:
                    break
                time.sleep(0.2)
        except Exception as e:  # noqa: BLE001 - reported as a note; a reading before the drain would mislead
            m, metrics_error = None, " ".join(f"{type(e).__name__}: {e}".split())
            print(f"note: no {url}/metrics after the run ({metrics_error}): KV pages held, preemptions and the prefix hit rate "
                  f"are not reported", file=sys.stderr, flush=True)
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
    queried = m.get("tq_prefix_cache_queried_tokens_total", 0) if m is not None else 0
    result = {
        "model": model, "requests": a.requests, "concurrency": a.concurrency, "wall_s": round(wall, 3),
        "completed": s["ok"], "cancelled_by_client": s["cancelled"], "errors": s["errors"],
        # requests that ran to their end over the wall time; those left mid-stream are in cancelled_by_client only
        # (this was requests_per_s, which counted both)
        "completed_requests_per_s": round(s["ok"] / wall, 3),
        "output_tokens_per_s": round(s["tokens"] / wall, 1),  # completion tokens of the completed requests
        "ttft_ms": {k: v and round(v * 1e3, 2) for k, v in percentiles(s["ttft"]).items()},  # completed requests
        "tpot_ms": {k: v and round(v * 1e3, 3) for k, v in percentiles(s["tpot"]).items()},  # completed requests
        "kv_pages_used_after": m.get("tq_kv_pages_used") if m is not None else None,
        "preemptions": m.get("tq_preemptions_total") if m is not None else None,
        "prefix_hit_rate": (round(m.get("tq_prefix_cache_hit_tokens_total", 0) / queried, 4) if queried else 0) if m is not None else None,
        "metrics_error": metrics_error,  # why /metrics could not be read after the run; null when it was
    }
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{model}: {a.requests} requests at concurrency {a.concurrency} in {wall:.1f} s: {result['completed_requests_per_s']} "
              f"completed requests/s, {result['output_tokens_per_s']} output tokens/s of the completed requests")
        print(f"  completed {s['ok']}, left mid-stream {s['cancelled']} (in no rate or percentile), errors {s['errors'] or 'none'}")
        print(f"  completed requests: TTFT ms {result['ttft_ms']}  TPOT ms {result['tpot_ms']}")
        if metrics_error is None:
            print(f"  after the run: KV pages used {result['kv_pages_used_after']}, preemptions {result['preemptions']}, "
                  f"prefix hit rate {result['prefix_hit_rate']}")
        else:
            print(f"  after the run: no /metrics ({metrics_error})")
    leaked = (result["kv_pages_used_after"] or 0) != 0
    sys.exit(1 if s["errors"] or leaked else 0)


if __name__ == "__main__":
    main()
