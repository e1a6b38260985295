#!/usr/bin/env python3
"""tq serve against the `openai` package, the client users have: a server started on a free
localhost port with stories260K, then completions and chat, streaming and not, greedy text equal
to `tq run`'s, concurrent streams with cancellations, prefix-cache hits, malformed requests, a full
queue and a shutdown mid-stream. After each test that ran requests, every KV page is back in the pool.

Usage: test_openai_client.py --tq build/release/apps/cli/tq --data ../shared/data
Exits 77 (skipped) when the openai package or stories260K is missing.
"""
import argparse
import concurrent.futures
import gzip
import http.client
import json
import os
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

try:
    import openai
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print(f"SKIPPED: {e.name} is missing (scripts/setup.sh installs tests/serve/requirements.txt into .venv)")
    sys.exit(77)

ARGS = None
PROMPTS = ["Once upon a time", "Lily and Tom went to the park", "The little dog was sad because", "One day, a bird"]


class Server:
    """`tq serve` on a free port; stop() sends SIGTERM and returns the exit code."""

    def __init__(self, *extra, model=None):
        d = os.path.join(ARGS.data, "stories260K")
        files = ["-m", model] if model else ["-m", os.path.join(d, "stories260K.bin"), "--tokenizer", os.path.join(d, "tok512.bin")]
        self.cmd = [ARGS.tq, "serve", *files, "--port", "0", "-t", "2", *extra]
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, text=True)
        self.log = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"on http://([\d.]+):(\d+)", line)
                if m:
                    self.url = f"http://{m.group(1)}:{m.group(2)}"
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + 60
        while not ready.wait(0.1) and self.proc.poll() is None and time.time() < deadline:
            pass
        if not ready.is_set():
            self.proc.kill()
            raise RuntimeError("tq serve did not start:\n" + "".join(self.log))
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.status, r.read().decode()

    def post(self, path, body):
        """Raw POST: (status, parsed JSON body)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metrics(self):
        """/metrics as {sample name: value}, read by Prometheus' own parser (a malformed exposition raises)."""
        _, text = self.get("/metrics")
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def wait_drained(self, test):
        """Every request ended and every page back in the pool (cached prefix pages count as free)."""
        deadline = time.time() + 20
        while True:
            m = self.metrics()
            if m["tq_requests_running"] == 0 and m["tq_requests_waiting"] == 0 and m["tq_kv_pages_used"] == 0:
                return m
            if time.time() > deadline:
                test.fail(f"pages or requests left after the test: {m}")
            time.sleep(0.1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc.stderr.close()
        return code


def tq_run(prompt, n, kv):
    d = os.path.join(ARGS.data, "stories260K")
    out = subprocess.run([ARGS.tq, "run", "-m", os.path.join(d, "stories260K.bin"), "--tokenizer", os.path.join(d, "tok512.bin"),
                          "-p", prompt, "-n", str(n), "--kv", kv, "-t", "2"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]


class ServeTest(unittest.TestCase):
    KV = "k4v4:page=8"

    @classmethod
    def setUpClass(cls):
        # A small pool (40 pages of 8 tokens for 8 requests of up to ~100) makes requests preempt each other.
        cls.s = Server("--kv", cls.KV, "--max-num-seqs", "8", "--num-pages", "40", "--max-num-batched-tokens", "64")
        cls.model = cls.s.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        code = cls.s.stop()
        assert code == 0, f"tq serve exited with {code}:\n" + "".join(cls.s.log)

    def complete(self, prompt, n, **kw):
        return self.s.client.completions.create(model=self.model, prompt=prompt, max_tokens=n, temperature=0, **kw)

    def test_models_and_health(self):
        self.assertEqual(self.model, "stories260K")
        self.assertEqual(self.s.get("/health"), (200, '{"status":"ok"}'))
        m = self.s.client.models.list().data[0]
        self.assertEqual(m.owned_by, "turboquant")
        self.assertEqual(self.s.client.models.retrieve(self.model).id, self.model)  # OpenAI's retrieve route
        with self.assertRaises(openai.NotFoundError) as nf:
            self.s.client.models.retrieve("other/model")
        self.assertEqual(nf.exception.code, "model_not_found")

    def test_metrics_are_prometheus_text(self):
        _, text = self.s.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        # Counters lose their _total suffix in the family name, as Prometheus reads them.
        self.assertEqual(families["tq_requests"].type, "counter")
        self.assertEqual(families["tq_requests"].samples[0].name, "tq_requests_total")
        self.assertEqual(families["tq_kv_pages_free"].type, "gauge")
        self.assertTrue(all(f.documentation for f in families.values()), "every metric has its HELP")
        m = self.s.metrics()
        self.assertEqual(m["tq_kv_pages_total"], 40)
        self.assertEqual(m["tq_prefix_tail_slots"], 0)  # no side buffers in this spec

    def test_greedy_completion_is_tq_runs_text(self):
        for p in PROMPTS[:2]:
            r = self.complete(p, 40)
            self.assertEqual(r.choices[0].text, tq_run(p, 40, self.KV), p)
            self.assertEqual(r.usage.completion_tokens, 40)
            self.assertEqual(r.choices[0].finish_reason, "length")
        # No max_tokens: 16 on completions, as OpenAI's and vLLM's (the text's first 16 tokens)
        r = self.s.client.completions.create(model=self.model, prompt=PROMPTS[0], temperature=0)
        self.assertEqual((r.usage.completion_tokens, r.choices[0].finish_reason), (16, "length"))
        self.assertTrue(tq_run(PROMPTS[0], 40, self.KV).startswith(r.choices[0].text))
        self.s.wait_drained(self)

    def test_streams_give_the_same_text(self):
        full = self.complete(PROMPTS[2], 30).choices[0].text
        chunks = list(self.s.client.completions.create(model=self.model, prompt=PROMPTS[2], max_tokens=30, temperature=0, stream=True))
        self.assertEqual("".join(c.choices[0].text for c in chunks), full)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "length")
        msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A story about a cat"}]
        chat = self.s.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=25, temperature=0)
        self.assertEqual(chat.choices[0].message.role, "assistant")
        stream = self.s.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=25, temperature=0, stream=True,
                                                       stream_options={"include_usage": True})
        parts, usage = [], None
        for c in stream:
            if c.usage:
                usage = c.usage
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
        self.assertEqual("".join(parts), chat.choices[0].message.content)
        self.assertEqual(usage.completion_tokens, chat.usage.completion_tokens)
        self.s.wait_drained(self)

    def test_logprobs(self):
        # Completions: greedy text as tq run's, one entry a token, the chosen token the most likely.
        r = self.complete(PROMPTS[0], 30, logprobs=3)
        self.assertEqual(r.choices[0].text, tq_run(PROMPTS[0], 30, self.KV))
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), r.usage.completion_tokens)
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        self.assertEqual(lp.text_offset[0], 0)
        for i, (tok, x, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
            self.assertLessEqual(x, 0.0)
            self.assertTrue(1 <= len(top) <= 3, top)
            self.assertEqual(max(top.values()), x, (i, tok, top))
            self.assertEqual(top[tok], x)
            if i:
                self.assertEqual(lp.text_offset[i], lp.text_offset[i - 1] + len(lp.tokens[i - 1]))
        # Streamed: the same entries, spread over the chunks.
        chunks = list(self.s.client.completions.create(model=self.model, prompt=PROMPTS[0], max_tokens=30, temperature=0, logprobs=3,
                                                       stream=True))
        streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
        self.assertEqual(sum((p.tokens for p in streamed), []), lp.tokens)
        self.assertEqual(sum((p.token_logprobs for p in streamed), []), lp.token_logprobs)
        self.assertEqual(sum((p.text_offset for p in streamed), []), lp.text_offset)
        # Chat: logprobs true with top_logprobs, each entry with its bytes.
        msgs = [{"role": "user", "content": "A story about a dog"}]
        chat = self.s.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=20, temperature=0, logprobs=True,
                                                     top_logprobs=2)
        content = chat.choices[0].logprobs.content
        self.assertEqual(len(content), chat.usage.completion_tokens)
        self.assertEqual("".join(e.token for e in content), chat.choices[0].message.content)
        for e in content:
            self.assertEqual(bytes(e.bytes), e.token.encode())
            self.assertEqual(len(e.top_logprobs), 2)
            self.assertEqual(e.top_logprobs[0].logprob, e.logprob)
            self.assertGreaterEqual(e.top_logprobs[0].logprob, e.top_logprobs[1].logprob)
        plain = self.s.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=20, temperature=0)
        self.assertIsNone(plain.choices[0].logprobs)
        self.assertEqual(plain.choices[0].message.content, chat.choices[0].message.content)
        self.s.wait_drained(self)

    def test_echo_with_logprobs_scores_the_prompt(self):
        # lm-evaluation-harness's loglikelihood requests: echo, logprobs and max_tokens 0 (or 1).
        # Each prompt token's entry is its log-probability given those before it (the first has
        # none), and scoring a greedy completion's text gives back the logprobs its generation
        # reported for those tokens.
        gen = self.complete(PROMPTS[1], 12, logprobs=2)
        glp = gen.choices[0].logprobs
        full = PROMPTS[1] + gen.choices[0].text
        scored = self.s.client.completions.create(model=self.model, prompt=full, max_tokens=0, echo=True, logprobs=2, temperature=0)
        c = scored.choices[0]
        self.assertEqual(c.text, full)
        self.assertEqual(c.finish_reason, "length")
        self.assertEqual(scored.usage.completion_tokens, 0)
        lp = c.logprobs
        self.assertEqual("".join(lp.tokens), full)
        self.assertEqual(len(lp.tokens), scored.usage.prompt_tokens)
        self.assertIsNone(lp.token_logprobs[0])
        self.assertIsNone(lp.top_logprobs[0])
        self.assertEqual(lp.text_offset[0], 0)
        for i in range(1, len(lp.tokens)):
            self.assertEqual(lp.text_offset[i], lp.text_offset[i - 1] + len(lp.tokens[i - 1]))
            self.assertLessEqual(lp.token_logprobs[i], 0.0)
            self.assertTrue(1 <= len(lp.top_logprobs[i]) <= 3)  # the 2 asked for, and the token itself where it is not one
            self.assertEqual(lp.top_logprobs[i][lp.tokens[i]], lp.token_logprobs[i])
            self.assertGreaterEqual(max(lp.top_logprobs[i].values()), lp.token_logprobs[i])
        # The completion's tokens are the scored text's last ones (the same tokenization here);
        # their logprobs agree to float rounding (one chunk of the prompt against one token a step).
        n = len(glp.tokens)
        self.assertEqual(lp.tokens[-n:], glp.tokens)
        for a, b in zip(lp.token_logprobs[-n:], glp.token_logprobs):
            self.assertAlmostEqual(a, b, delta=1e-4 * max(1.0, abs(b)))
        # With max_tokens 1 (the harness's other form) the prompt's entries come first, then the
        # token's; streamed, the echo's chunk carries the prompt's entries.
        one = self.s.client.completions.create(model=self.model, prompt=full, max_tokens=1, echo=True, logprobs=1, temperature=0)
        self.assertEqual(one.choices[0].logprobs.token_logprobs[:-1], lp.token_logprobs)  # the same steps: the same bits
        chunks = list(self.s.client.completions.create(model=self.model, prompt=full, max_tokens=1, echo=True, logprobs=1, temperature=0,
                                                       stream=True))
        streamed = [ch.choices[0].logprobs for ch in chunks if ch.choices and ch.choices[0].logprobs]
        self.assertEqual(sum((p.tokens for p in streamed), []), one.choices[0].logprobs.tokens)
        self.assertEqual(sum((p.text_offset for p in streamed), []), one.choices[0].logprobs.text_offset)
        self.assertEqual(chunks[0].choices[0].text, full)
        # lm-evaluation-harness's own request: a batch of one prompt of token ids, max_tokens 1; it
        # reads token_logprobs[ctxlen:-1] and top_logprobs[ctxlen:-1]. The same ids flat, max_tokens
        # 0, score the same.
        ids = [1] + [random.Random(3).randrange(2, 500) for _ in range(40)]
        code, b = self.s.post("/v1/completions", {"model": self.model, "prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True,
                                                  "temperature": 0, "seed": 1234})
        self.assertEqual(code, 200, b)
        harness = b["choices"][0]["logprobs"]
        code, flat = self.s.post("/v1/completions", {"prompt": ids, "max_tokens": 0, "logprobs": 1, "echo": True})
        self.assertEqual(code, 200, flat)
        self.assertEqual(len(harness["token_logprobs"]), len(ids) + 1)
        self.assertEqual(harness["token_logprobs"][:-1], flat["choices"][0]["logprobs"]["token_logprobs"])
        self.assertEqual(harness["top_logprobs"][:-1], flat["choices"][0]["logprobs"]["top_logprobs"])
        self.assertEqual(b["choices"][0]["text"][:len(flat["choices"][0]["text"])], flat["choices"][0]["text"])
        self.s.wait_drained(self)

    def test_seeded_sampling_repeats(self):
        a = self.s.client.completions.create(model=self.model, prompt=PROMPTS[0], max_tokens=30, temperature=0.9, top_p=0.9, seed=123)
        b = self.s.client.completions.create(model=self.model, prompt=PROMPTS[0], max_tokens=30, temperature=0.9, top_p=0.9, seed=123)
        self.assertEqual(a.choices[0].text, b.choices[0].text)

    def test_stop_strings_end_the_text(self):
        before = self.s.wait_drained(self)
        first = self.complete(PROMPTS[0], 60)
        full = first.choices[0].text
        stop = full.split()[4]  # a word the greedy text reaches
        r = self.complete(PROMPTS[0], 60, stop=[stop, "zzzz"])
        self.assertEqual(r.choices[0].text, full[:full.index(stop)])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        streamed = self.s.client.completions.create(model=self.model, prompt=PROMPTS[0], max_tokens=60, temperature=0, stop=stop,
                                                    stream=True)
        self.assertEqual("".join(c.choices[0].text for c in streamed), full[:full.index(stop)])
        after = self.s.wait_drained(self)
        # A request ended by a stop string is finished, not cancelled.
        self.assertEqual(after["tq_requests_finished_total"] - before["tq_requests_finished_total"], 3)
        self.assertEqual(after["tq_requests_cancelled_total"], before["tq_requests_cancelled_total"])
        # Ids are unique across restarts: a random part drawn at start, then the request's number.
        self.assertRegex(first.id, r"^cmpl-[0-9a-f]{17,}$")
        self.assertNotEqual(first.id, r.id)

    def test_speculative_requests_keep_greedy_text(self):
        before = self.s.metrics()
        # Streams at once: two speculate (tq's "speculative" field), one does not; greedy text is tq run's.
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(self.complete, PROMPTS[i], 60, extra_body=body)
                       for i, body in [(0, {"speculative": "ngram:min=1"}), (1, {"speculative": "ngram:k=3:min=1"}), (2, {})]]
            texts = [f.result().choices[0].text for f in futures]
        for i, text in enumerate(texts):
            self.assertEqual(text, tq_run(PROMPTS[i], 60, self.KV), PROMPTS[i])
        after = self.s.metrics()
        self.assertGreater(after["tq_spec_verify_steps_total"], before["tq_spec_verify_steps_total"])
        self.assertGreater(after["tq_spec_accepted_tokens_total"], before["tq_spec_accepted_tokens_total"])
        self.assertGreater(after["tq_spec_draft_tokens_total"], after["tq_spec_accepted_tokens_total"])
        self.assertTrue(0 < after["tq_spec_acceptance_rate"] < 1)
        # Logprobs with speculation: the kept drafts' entries come from their verification rows,
        # the same values a plain request reports (the CPU engine's logits do not depend on the
        # batch or the chunk: the same bits).
        plain = self.complete(PROMPTS[1], 60, logprobs=2).choices[0]
        before = self.s.metrics()["tq_spec_accepted_tokens_total"]
        spec = self.complete(PROMPTS[1], 60, logprobs=2, extra_body={"speculative": "ngram:k=3:min=1"}).choices[0]
        self.assertGreater(self.s.metrics()["tq_spec_accepted_tokens_total"], before)
        self.assertEqual(spec.text, plain.text)
        self.assertEqual(spec.logprobs.tokens, plain.logprobs.tokens)
        self.assertEqual(spec.logprobs.token_logprobs, plain.logprobs.token_logprobs)
        self.assertEqual(spec.logprobs.top_logprobs, plain.logprobs.top_logprobs)
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete(PROMPTS[0], 5, extra_body={"speculative": "draft"})
        self.assertEqual(e.exception.param, "speculative")
        self.s.wait_drained(self)

    def test_prefix_cache_hits_give_cold_tokens(self):
        long = " ".join(PROMPTS) + " and then they all went home to sleep"
        before = self.s.metrics()["tq_prefix_cache_hit_tokens_total"]
        cold = self.complete(long, 30).choices[0].text
        hot = self.complete(long, 30).choices[0].text
        self.assertEqual(hot, cold)
        self.assertEqual(cold, tq_run(long, 30, self.KV))
        self.assertGreater(self.s.metrics()["tq_prefix_cache_hit_tokens_total"], before)
        self.s.wait_drained(self)

    def test_concurrent_streams_with_cancellations(self):
        expected = {p: self.complete(p, 70).choices[0].text for p in PROMPTS}
        rng = random.Random(3)
        jobs = [(PROMPTS[i % len(PROMPTS)], rng.random() < 0.3, rng.randint(1, 15)) for i in range(40)]
        results, errors = [None] * len(jobs), []

        def client(i):
            prompt, cancel, after = jobs[i]
            try:
                stream = self.s.client.completions.create(model=self.model, prompt=prompt, max_tokens=70, temperature=0, stream=True)
                text, n = "", 0
                for c in stream:
                    text += c.choices[0].text
                    n += 1
                    if cancel and n == after:
                        stream.close()  # the client goes away mid-stream
                        results[i] = "cancelled"
                        return
                results[i] = text
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                errors.append(f"client {i}: {e!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        for (prompt, cancel, _), got in zip(jobs, results):
            if got != "cancelled":
                self.assertEqual(got, expected[prompt])
        m = self.s.wait_drained(self)
        self.assertGreater(m["tq_preemptions_total"], 0)  # the pool is small on purpose
        self.assertGreater(m["tq_requests_cancelled_total"], 0)  # clients that left were noticed

    def test_malformed_requests_get_openai_errors(self):
        cases = [
            (b"{not json", 400, None),
            ({"prompt": 5}, 400, "prompt"),
            ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
            ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
            ({"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
            ({"prompt": "x", "temperature": -1}, 400, "temperature"),
            ({"prompt": "x", "top_p": 0}, 400, "top_p"),
            ({"prompt": "x", "n": 2}, 400, "n"),
            ({"prompt": "x", "logprobs": 21}, 400, "logprobs"),
            ({"prompt": "x", "max_tokens": 0, "echo": True}, 400, "max_tokens"),
            ({"prompt": "x", "stop": [str(i) for i in range(65)]}, 400, "stop"),
            ({"prompt": "x", "stream": "yes"}, 400, "stream"),
            ({"prompt": ["a", "b"]}, 400, "prompt"),
            ({"prompt": [1, 99999]}, 400, "prompt"),
            ({"prompt": "once " * 600}, 400, "prompt"),
            ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
            ({"max_tokens": 3}, 400, "prompt"),
            ([1, 2], 400, None),
        ]
        for body, status, param in cases:
            code, err = self.s.post("/v1/completions", body)
            self.assertEqual(code, status, (body, err))
            self.assertIn("message", err["error"], body)
            self.assertEqual(err["error"]["param"], param, (body, err))
        hi = [{"role": "user", "content": "hi"}]
        for body, param in [({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
                            ({"messages": [{"role": "user"}]}, "messages[0].content"), ({"prompt": "x"}, "messages"),
                            ({"messages": hi, "add_generation_prompt": False}, "add_generation_prompt"),
                            ({"messages": hi, "continue_final_message": True}, "continue_final_message"),
                            ({"messages": hi, "chat_template": "{{ messages }}"}, "chat_template"),
                            ({"messages": [{"role": "user", "content": "x" * (4 << 20)}]}, "messages")]:
            code, err = self.s.post("/v1/chat/completions", body)
            self.assertEqual((code, err["error"]["param"]), (400, param), (body if len(str(body)) < 200 else "4 MiB", err))
        # vLLM's defaults pass.
        code, _ = self.s.post("/v1/chat/completions", {"messages": hi, "max_tokens": 1, "add_generation_prompt": True,
                                                       "continue_final_message": False, "chat_template_kwargs": {}})
        self.assertEqual(code, 200)
        # A prompt whose bytes alone fill the context is refused before it is tokenized.
        code, err = self.s.post("/v1/completions", {"prompt": "x" * (4 << 20)})
        self.assertEqual((code, err["error"]["param"], err["error"]["code"]), (400, "prompt", "context_length_exceeded"))
        self.assertIn("at least", err["error"]["message"])
        code, err = self.s.post("/v1/completions", {"prompt": "x", "max_tokens": 1 << 30})
        self.assertEqual((code, err["error"]["param"], err["error"]["code"]), (400, "max_tokens", "context_length_exceeded"))
        code, err = self.s.post("/v1/chat/completions", {"messages": hi, "max_completion_tokens": 1 << 30})  # the field as sent
        self.assertEqual((code, err["error"]["param"], err["error"]["code"]), (400, "max_completion_tokens", "context_length_exceeded"))
        # vLLM's fields that would change the text are refused by name, not ignored
        code, err = self.s.post("/v1/completions", {"prompt": "x", "repetition_penalty": 1.3})
        self.assertEqual((code, err["error"]["param"]), (400, "repetition_penalty"))
        with self.assertRaises(openai.BadRequestError):
            self.s.client.completions.create(model=self.model, prompt="x", n=3)
        with self.assertRaises(openai.NotFoundError) as nf:
            self.s.client.completions.create(model="other", prompt="x")
        self.assertEqual(nf.exception.code, "model_not_found")
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(self.s.url + "/v2/nothing", timeout=10)
        self.assertEqual(e.exception.code, 404)
        self.assertEqual(json.loads(e.exception.read())["error"]["type"], "invalid_request_error")  # OpenAI's type for a bad URL
        self.assertEqual(self.s.get("/health")[0], 200)  # still serving
        self.s.wait_drained(self)

    def raw(self, method, path, body=b"", headers=None, chunked=False):
        """One request on its own connection: (status, headers, parsed JSON body or None)."""
        host, port = self.s.url[len("http://"):].split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            if chunked:
                c.request(method, path, body=iter([body[:7], body[7:]]), headers=headers or {}, encode_chunked=True)
            else:
                c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), json.loads(data) if data else None
        finally:
            c.close()

    def test_bodies_in_chunks_compressed_and_other_methods(self):
        ok = json.dumps({"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0}).encode()
        want = self.complete(PROMPTS[0], 4).choices[0].text
        # Chunked and gzip bodies are read, counted after decompression.
        for kw in ({"chunked": True}, {"body": gzip.compress(ok), "headers": {"Content-Encoding": "gzip"}}):
            code, _, b = self.raw("POST", "/v1/completions", **{"body": ok, **kw})
            self.assertEqual((code, b["choices"][0]["text"]), (200, want), kw)
        # A body that inflates past 64 MiB is refused once it does, not held in memory.
        bomb = gzip.compress(b'{"prompt": "' + b"a" * (80 << 20) + b'"}')
        code, _, b = self.raw("POST", "/v1/completions", bomb, {"Content-Encoding": "gzip"})
        self.assertEqual(code, 413, b)
        self.assertIn("64 MiB", b["error"]["message"])
        code, _, b = self.raw("POST", "/v1/completions", ok, {"Content-Encoding": "zstd-of-the-future"})
        self.assertEqual(code, 415, b)
        form = b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n--x--\r\n'
        code, _, b = self.raw("POST", "/v1/completions", form, {"Content-Type": "multipart/form-data; boundary=x"})
        self.assertEqual(code, 415, b)
        self.assertIn("multipart", b["error"]["message"])
        # The wrong method on a route is 405 with an error body, as is a method no route takes.
        for method, path in (("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"), ("POST", "/v1/models")):
            code, headers, b = self.raw(method, path)
            self.assertEqual(code, 405, (method, path, b))
            self.assertIn(method, b["error"]["message"])
            self.assertIn("Allow", headers)
        # CORS (vLLM's default, --allowed-origins '*'): a browser's preflight and the answer that follows.
        page = {"Origin": "http://localhost:3000"}
        code, headers, _ = self.raw("OPTIONS", "/v1/chat/completions", headers={**page, "Access-Control-Request-Method": "POST",
                                                                                  "Access-Control-Request-Headers": "content-type"})
        self.assertEqual((code, headers.get("Access-Control-Allow-Origin"), headers.get("Access-Control-Allow-Headers")),
                         (204, "*", "content-type"), headers)
        self.assertIn("POST", headers["Access-Control-Allow-Methods"])
        code, headers, _ = self.raw("POST", "/v1/completions", ok, page)
        self.assertEqual((code, headers.get("Access-Control-Allow-Origin")), (200, "*"))
        self.assertNotIn("Access-Control-Allow-Origin", self.raw("GET", "/health")[1])  # no Origin: not a browser page's request
        # echo of token ids outside the vocabulary: the prompt is refused, not a 500.
        code, b = self.s.post("/v1/completions", {"prompt": [1, 99999], "echo": True, "max_tokens": 2})
        self.assertEqual((code, b["error"]["param"]), (400, "prompt"), b)
        # What clients send when they mean "none" passes.
        code, b = self.s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "tools": [],
                                                        "tool_choice": "none", "response_format": {"type": "text"}})
        self.assertEqual(code, 200, b)
        # No max_tokens on chat: what the pool holds (40 pages of 8 here), not the context (512), which the pool cannot.
        code, b = self.s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[0]}], "temperature": 0})
        self.assertEqual(code, 200, b)
        self.assertLessEqual(b["usage"]["prompt_tokens"] + b["usage"]["completion_tokens"], 40 * 8 + 1)
        # What cpp-httplib refuses by itself gets a message naming the cause; so does a body without a length.
        host, port = self.s.url[len("http://"):].split(":")
        # A body without a length is no body (RFC 9112): answered at once, not read until the client
        # closes (cpp-httplib's way, 5 s here); the 4 s timeout fails a server that waits.
        no_length = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n" + json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
        for head, status, says in [(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "not a byte count"),
                                   (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too long"),
                                   (no_length, 411, "needs a Content-Length header"),
                                   (no_length.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: gzip\r\n\r\n", 1), 411, "not Transfer-Encoding 'gzip'")]:
            with socket.create_connection((host, int(port)), timeout=4 if status == 411 else 30) as conn:
                conn.sendall(head)
                reply = b""
                while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                    data = conn.recv(65536)
                    if not data:
                        break
                    reply += data
            self.assertTrue(reply.startswith(f"HTTP/1.1 {status}".encode()), reply[:200])
            self.assertIn(says, json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"])
        self.assertEqual(self.s.get("/health")[0], 200)
        self.s.wait_drained(self)


SMOLLM2 = os.path.join(os.path.dirname(__file__), "..", "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


@unittest.skipUnless(os.path.exists(SMOLLM2), "SmolLM2 not downloaded (scripts/get_model.sh)")
class SideBufferPrefixTest(unittest.TestCase):
    """Prefix caching with a sink/window spec (tq run's default until 2026-12-01): hits start from
    the fp16 tails kept where a prompt is computed and where a request ends (docs/serving.md)."""
    KV = "k3v2:edge=2/k4v4:sink=4:window=64"

    def test_repeats_and_next_turns_hit_with_cold_tokens(self):
        s = Server("--kv", self.KV, "--max-num-seqs", "4", "--prefix-tails", "4")
        try:
            model = s.client.models.list().data[0].id
            m = s.metrics()
            self.assertEqual(m["tq_prefix_tail_slots"], 4)
            self.assertGreater(m["tq_prefix_tail_memory_bytes"], 0)

            def complete(p, n):
                return s.client.completions.create(model=model, prompt=p, max_tokens=n, temperature=0).choices[0].text

            # Longer than the 64-token window, so the tail's window rows are read.
            first = " ".join(PROMPTS) + " and then they all went home to sleep. The next morning the sun was"
            hits = s.metrics()["tq_prefix_cache_hit_tokens_total"]
            cold = complete(first, 30)
            self.assertEqual(cold, tq_run(first, 30, self.KV))
            self.assertEqual(complete(first, 30), cold)  # the prompt's tail
            self.assertGreater(s.metrics()["tq_prefix_cache_hit_tokens_total"], hits)
            hits = s.metrics()["tq_prefix_cache_hit_tokens_total"]
            second = first + cold + " Then"  # the next turn: the first request's end has a tail
            self.assertEqual(complete(second, 20), tq_run(second, 20, self.KV))
            self.assertGreater(s.metrics()["tq_prefix_cache_hit_tokens_total"], hits)
            self.assertGreater(s.metrics()["tq_prefix_tail_slots_used"], 0)
            s.wait_drained(self)
        finally:
            self.assertEqual(s.stop(), 0, "".join(s.log))

    def test_a_shared_system_prompt_is_shared_from_the_third_question_on(self):
        s = Server("--kv", self.KV, "--max-num-seqs", "4", "--prefix-tails", "4")
        try:
            model = s.client.models.list().data[0].id
            system = " ".join(PROMPTS) + " and then they all went home to sleep. The next morning the sun was bright and warm."
            questions = [" 1. Who went to the park with Lily, and what did they find under the big green tree that day?",
                         " 2. Why was the little dog so sad, and who came to help him find his red ball again?",
                         " 3. Where did the bird fly one day, and what did it see from high up in the blue sky?"]
            m = s.metrics
            for i, q in enumerate(questions):
                hits = m()["tq_prefix_cache_hit_tokens_total"]
                text = s.client.completions.create(model=model, prompt=system + q, max_tokens=12, temperature=0).choices[0].text
                self.assertEqual(text, tq_run(system + q, 12, self.KV), f"question {i}")
                got = m()["tq_prefix_cache_hit_tokens_total"] - hits
                if i < 2:  # no tail inside the shared part yet; the second keeps one where it leaves the first's pages
                    self.assertEqual(got, 0, f"question {i}")
                else:  # at least the system prompt's pages but the last (a page is 16 tokens, each token at least a byte)
                    self.assertGreater(got, 0)
            self.assertEqual(m()["tq_prefix_branch_tails_total"], 1)
            s.wait_drained(self)
        finally:
            self.assertEqual(s.stop(), 0, "".join(s.log))


class SmolLM2Test(unittest.TestCase):
    """SmolLM2, a real model: the chat route's greedy answer is `tq run --chat`'s, and a load of many streams at once."""

    def test_chat_matches_tq_run(self):
        s = Server("--kv", "k3v2", "--max-num-seqs", "2", model=SMOLLM2)
        try:
            q = "What is the capital of France?"
            r = s.client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=[{"role": "user", "content": q}],
                                                 max_tokens=24, temperature=0)
            out = subprocess.run([ARGS.tq, "run", "-m", SMOLLM2, "--chat", "-p", q, "-n", "24", "--kv", "k3v2", "-t", "2"],
                                 capture_output=True, text=True, check=True).stdout
            self.assertEqual(out, q + "\n" + r.choices[0].message.content + "\n")
            s.wait_drained(self)
        finally:
            self.assertEqual(s.stop(), 0)


    def test_a_small_step_budget_keeps_tq_runs_text(self):
        # The default spec's key centre is calibrated on a 64-token step, whatever
        # --max-num-batched-tokens (at 48 it was calibrated on 48 tokens, and the greedy text left
        # tq run's after ~30 tokens).
        s = Server("--max-num-batched-tokens", "48", "--max-num-seqs", "2", model=SMOLLM2)
        try:
            code, b = s.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0})
            self.assertEqual(code, 200, b)
            out = subprocess.run([ARGS.tq, "run", "-m", SMOLLM2, "-p", "Once upon a time", "-n", "40", "-t", "2"],
                                 capture_output=True, text=True, check=True).stdout
            self.assertEqual(out, "Once upon a time" + b["choices"][0]["text"] + "\n")
            s.wait_drained(self)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_chat_messages_cannot_inject_turns(self):
        # The text of a message is text: "<|im_start|>" in it is several tokens, not ChatML's turn
        # token, while a completions prompt's is the token itself (as vLLM and llama-server).
        s = Server("--kv", "k3v2", "--max-num-seqs", "2", model=SMOLLM2)
        try:
            def prompt_tokens(route, body):
                code, r = s.post(route, dict(body, max_tokens=1))
                self.assertEqual(code, 200, r)
                return r["usage"]["prompt_tokens"]
            chat = lambda text: prompt_tokens("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]})
            self.assertGreater(chat("<|im_start|>"), chat("hello") + 2)
            self.assertEqual(prompt_tokens("/v1/completions", {"prompt": "<|im_start|>"}), 1)
            s.wait_drained(self)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_a_client_that_leaves_a_plain_request_cancels_it(self):
        # Not streamed: the server writes nothing until the answer is complete, so it watches the
        # connection itself; a client that hangs up ends its request within a step or so.
        s = Server("--kv", "k3v2", "--max-num-seqs", "2", model=SMOLLM2)
        try:
            host, port = s.url.rsplit("//", 1)[1].split(":")
            # Counting goes on for as long as max_tokens lets it (no end of text comes early).
            body = json.dumps({"prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "max_tokens": 1000, "temperature": 0}).encode()
            conn = socket.create_connection((host, int(port)))
            conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            deadline = time.time() + 60
            while s.metrics()["tq_generation_tokens_total"] < 5:
                self.assertLess(time.time(), deadline, "the request did not start")
                time.sleep(0.05)
            conn.close()
            left = time.time()
            m = s.wait_drained(self)
            self.assertLess(time.time() - left, 5)
            self.assertEqual(m["tq_requests_cancelled_total"], 1)
            self.assertLess(m["tq_generation_tokens_total"], 200)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_an_echoed_special_token_is_its_text(self):
        # A completions prompt's special-token strings are those tokens; echoed, each entry spells
        # its token, so the entries add up to the echoed text and the offsets count it (the
        # entry of <|im_end|> was "" and the next one's offset 0).
        s = Server("--kv", "fp16", model=SMOLLM2)
        try:
            code, b = s.post("/v1/completions", {"prompt": "<|im_end|>-x", "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0})
            self.assertEqual(code, 200, b)
            c = b["choices"][0]
            self.assertEqual("".join(c["logprobs"]["tokens"]), c["text"])
            self.assertEqual(c["logprobs"]["tokens"][0], "<|im_end|>")
            self.assertEqual(c["logprobs"]["text_offset"][:2], [0, len("<|im_end|>")])
            s.wait_drained(self)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_requests_of_clients_that_reset_at_once_are_cancelled(self):
        # A client that resets its connection (SO_LINGER 0: an RST, no FIN) right after sending: its
        # socket has no peer address by the time the handler looks for it. Three such requests of
        # 1000 tokens each are cancelled, not run to their end holding the one slot.
        s = Server("--kv", "k3v2", "--max-num-seqs", "1", "--max-queue", "3", model=SMOLLM2)
        try:
            host, port = s.url.rsplit("//", 1)[1].split(":")
            body = json.dumps({"prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "max_tokens": 1000, "temperature": 0}).encode()
            for _ in range(3):
                conn = socket.create_connection((host, int(port)))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                conn.close()
            left = time.time()
            deadline = left + 60
            while s.metrics()["tq_requests_cancelled_total"] < 3:
                self.assertLess(time.time(), deadline, f"not all cancelled: {s.metrics()}")
                time.sleep(0.05)
            m = s.wait_drained(self)
            self.assertLess(m["tq_generation_tokens_total"], 300)  # of the 3000 they asked for
        finally:
            self.assertEqual(s.stop(), 0)

    def test_load_of_32_streams_with_cancellations(self):
        # bench/serve/serve_load.py as users would run it: 32 streaming clients at once on one async
        # client, 10% leaving mid-stream, while the engine keeps the cores busy. It exits non-zero on
        # an error or a KV page not given back. cpp-httplib listens with a backlog of 5; before the
        # server raised it, about half of these runs lost connections at the start (httpx ReadError).
        tq = os.path.abspath(ARGS.tq)
        script = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "serve", "serve_load.py")
        r = subprocess.run([sys.executable, script, "--launch", f"{tq} serve -m {SMOLLM2} --kv k3v2 --max-num-seqs 64 -t 2",
                            "--requests", "60", "--concurrency", "32", "--cancel", "0.1", "--max-tokens", "8,32", "--json"],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr[-3000:])
        result = json.loads(r.stdout)
        self.assertEqual(result["errors"], {})
        self.assertEqual(result["completed"] + result["cancelled_by_client"], 60)


class DraftModelTest(unittest.TestCase):
    """--draft: stories260K drafts for itself on its own fp16 cache, for requests that ask for "draft"."""

    def test_draft_requests_keep_greedy_text(self):
        d = os.path.join(ARGS.data, "stories260K")
        s = Server("--kv", "k3v2:page=8", "--max-num-seqs", "4", "--draft", os.path.join(d, "stories260K.bin"), "--draft-kv", "fp16")
        try:
            self.assertTrue(any("draft model" in line and "fp16" in line for line in s.log), "".join(s.log))
            self.assertTrue(any("speculative decoding draft for every request" in line for line in s.log), "".join(s.log))
            # --draft alone makes "draft" the default: only the draft model drafts here.
            bodies = [{"speculative": "draft"}, {"speculative": "draft:k=3:fixed=1"}, {}, {"speculative": "off"}]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(s.client.completions.create, model=s.client.models.list().data[0].id, prompt=PROMPTS[i],
                                       max_tokens=50, temperature=0, extra_body=body) for i, body in enumerate(bodies)]
                texts = [f.result().choices[0].text for f in futures]
            for i, text in enumerate(texts):
                self.assertEqual(text, tq_run(PROMPTS[i], 50, "k3v2:page=8"), PROMPTS[i])
            m = s.wait_drained(self)
            # Its own draft on another cache: most drafts kept, not all (the tiny model's argmax moves with the cache).
            self.assertGreater(m["tq_spec_accepted_tokens_total"], 30)
            self.assertEqual(m["tq_spec_draft_failures_total"], 0)
        finally:
            self.assertEqual(s.stop(), 0, "".join(s.log))


class QueueAndShutdownTest(unittest.TestCase):
    def test_allowed_origins_name_the_pages(self):
        # --allowed-origins with a list: its origins' pages only, each answered with its own origin
        # (and Vary: Origin, so that a cache keeps them apart); '' turns CORS off.
        for flag, origin, allowed in (("http://a.example,http://b.example:8080", "http://b.example:8080", True),
                                      ("http://a.example", "http://evil.example", False), ("", "http://a.example", False)):
            s = Server("--kv", "fp16", "--allowed-origins", flag)
            try:
                host, port = s.url[len("http://"):].split(":")
                c = http.client.HTTPConnection(host, int(port), timeout=60)
                c.request("OPTIONS", "/v1/completions", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
                r = c.getresponse()
                r.read()
                c.close()
                self.assertEqual(r.status, 204)
                self.assertEqual(r.getheader("Access-Control-Allow-Origin"), origin if allowed else None, (flag, origin))
                if allowed:
                    self.assertEqual(r.getheader("Vary"), "Origin")
            finally:
                self.assertEqual(s.stop(), 0)

    def test_full_queue_answers_429(self):
        s = Server("--kv", "k3v2", "--max-num-seqs", "1", "--max-queue", "1", "--max-num-batched-tokens", "16")
        try:
            codes = []

            def one():
                try:
                    s.client.completions.create(model="stories260K", prompt=PROMPTS[0], max_tokens=480, temperature=0)
                    codes.append(200)
                except openai.RateLimitError:
                    codes.append(429)

            threads = [threading.Thread(target=one) for _ in range(5)]
            for t in threads:
                t.start()
                time.sleep(0.01)
            for t in threads:
                t.join(120)
            self.assertIn(429, codes)
            self.assertIn(200, codes)
            m = s.wait_drained(self)
            self.assertEqual(m["tq_requests_refused_total"], codes.count(429))
        finally:
            self.assertEqual(s.stop(), 0)

    def test_sigterm_lets_a_running_stream_finish(self):
        s = Server("--kv", "k3v2", "--shutdown-timeout", "30")
        full = s.client.completions.create(model="stories260K", prompt=PROMPTS[1], max_tokens=300, temperature=0).choices[0].text
        stream = s.client.completions.create(model="stories260K", prompt=PROMPTS[1], max_tokens=300, temperature=0, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        s.proc.send_signal(signal.SIGTERM)
        rest = list(chunks)
        self.assertEqual(rest[-1].choices[0].finish_reason, "length")
        # A chunk may carry several tokens' text (the handler sends what has arrived): compare text, not chunk counts.
        self.assertEqual(first.choices[0].text + "".join(c.choices[0].text for c in rest), full)
        self.assertEqual(s.proc.wait(30), 0)
        s.proc.stderr.close()
        self.assertTrue(any("SIGTERM received" in line for line in s.log), s.log)

    def test_sigterm_cancels_what_outlives_the_grace(self):
        s = Server("--kv", "k3v2", "--shutdown-timeout", "0", "--max-num-seqs", "1", "--max-num-batched-tokens", "1")
        stream = s.client.completions.create(model="stories260K", prompt=PROMPTS[1], max_tokens=500, temperature=0, stream=True)
        chunks = iter(stream)
        next(chunks)
        s.proc.send_signal(signal.SIGTERM)
        rest = list(chunks)
        self.assertEqual(rest[-1].choices[0].finish_reason, "abort")
        self.assertLess(len(rest), 499)  # chunks <= tokens
        self.assertEqual(s.proc.wait(30), 0)
        s.proc.stderr.close()

    def test_a_signal_during_startup_stops_it(self):
        # SIGTERM right after the start: it waits, blocked, until the signal thread starts, which is
        # before the HTTP loop runs; the server stops as soon as it is up.
        d = os.path.join(ARGS.data, "stories260K")
        for delay in (0.0, 0.01, 0.02, 0.04, 0.08, 0.16):
            proc = subprocess.Popen([ARGS.tq, "serve", "-m", os.path.join(d, "stories260K.bin"), "--tokenizer", os.path.join(d, "tok512.bin"),
                                     "--port", "0", "-t", "1"], stderr=subprocess.PIPE, text=True)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.fail(f"tq serve did not stop after a SIGTERM {delay} s into its startup:\n" + proc.stderr.read())
            proc.stderr.close()
            self.assertIn(code, (0, -signal.SIGTERM), delay)  # stopped cleanly, or killed before it blocked the signal

    def test_threads_it_cannot_start_are_an_error(self):
        # 1.5 GB of address space holds ~100 thread stacks, not the 4136 HTTP threads asked for.
        d = os.path.join(ARGS.data, "stories260K")
        limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))
        r = subprocess.run([ARGS.tq, "serve", "-m", os.path.join(d, "stories260K.bin"), "--tokenizer", os.path.join(d, "tok512.bin"),
                            "--port", "0", "-t", "1", "--max-queue", "4096"], capture_output=True, text=True, timeout=60, preexec_fn=limit)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot start 4136 HTTP worker threads", r.stderr)
        self.assertNotIn("serving", r.stderr)

    def test_kept_alive_connections_do_not_hold_the_shutdown(self):
        # A client that keeps its connection open after its answer (httpx, the openai package's)
        # must not outlive the shutdown's watchdog: the server still exits 0.
        s = Server("--kv", "k3v2", "--shutdown-timeout", "0")
        host, port = s.url[len("http://"):].split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": "Once", "max_tokens": 2}), headers={"Content-Type": "application/json"})
        self.assertTrue(c.getresponse().read())
        s.proc.send_signal(signal.SIGTERM)
        self.assertEqual(s.proc.wait(30), 0, "".join(s.log))
        s.proc.stderr.close()
        c.close()

    def test_a_second_signal_exits_at_once(self):
        s = Server("--kv", "k3v2", "--shutdown-timeout", "300", "--max-num-seqs", "1", "--max-num-batched-tokens", "1")
        stream = s.client.completions.create(model="stories260K", prompt=PROMPTS[1], max_tokens=500, temperature=0, stream=True)
        next(iter(stream))
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertIsNone(s.proc.poll())  # finishing the stream, for up to 300 s
        s.proc.send_signal(signal.SIGINT)
        self.assertEqual(s.proc.wait(10), 128 + signal.SIGINT)
        s.proc.stderr.close()
        self.assertTrue(any("SIGINT received again" in line for line in s.log), s.log)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tq", required=True)
    parser.add_argument("--data", required=True)
    ARGS, rest = parser.parse_known_args()
    if not os.path.exists(os.path.join(ARGS.data, "stories260K", "stories260K.bin")):
        print("SKIPPED: stories260K not found under", ARGS.data)
        sys.exit(77)
    unittest.main(argv=[sys.argv[0], "-v", *rest])
