#!/usr/bin/env bash
# tq serve over HTTP on the GPU, with the openai package as the client (carried as wheels with
# prometheus-client, serve_load.py's /metrics parser: tests/serve/requirements.txt; the GPU machine
# has no network; device/README.md of the tool library says how):
#   1. a greedy chat completion through the server equals `tq run --chat` on the same device;
#   1b. the same with the server drafting on a draft model (--draft, the model itself on an fp16
#      cache): on the GPU a verify pass may round a near-tie the other way, so a difference is
#      reported with where it starts, and does not fail the script;
#   2. bench/serve/serve_load.py: 1000 streaming requests, 32 at once, 10% of the clients leaving
#      mid-stream; it exits non-zero on an unexpected error or a KV page not given back.
# Usage: [DEVICE=cuda] [REQUESTS=1000] bench/gpu/serve_http.sh TQ MODEL.gguf OUTDIR   (prints one line per check; rc 0 when all pass)
set -uo pipefail
tq=${1:?usage: serve_http.sh TQ MODEL OUTDIR} model=${2:?} out=${3:?}
dev=${DEVICE:-cuda} requests=${REQUESTS:-1000}  # DEVICE=cpu REQUESTS=40: a quick try on a machine without a GPU
mkdir -p "$out"
"$tq" serve --help >/dev/null 2>&1 || { echo "serve_http: this tq has no serve command (cpp-httplib missing at build time)"; exit 1; }
rc=0
q="What is the capital of France?"
"$tq" run -m "$model" --device $dev --chat -p "$q" -n 24 --kv k3v2 >"$out/run_chat.txt" 2>"$out/run_chat.err" || rc=1
chat_check() {  # chat_check LOG [extra tq serve flags]: rc 0 when the served chat equals run_chat.txt
python3 - "$tq" "$model" "$q" "$out/run_chat.txt" "$dev" "${@:2}" >"$1" 2>&1 <<'PY'
import re, signal, subprocess, sys, threading
import openai
tq, model, q, ref, dev, *extra = sys.argv[1:]
p = subprocess.Popen([tq, "serve", "-m", model, "--device", dev, "--kv", "k3v2", "--port", "0", "--max-num-seqs", "4", *extra],
                     stderr=subprocess.PIPE, text=True)
url, ready, log = [None], threading.Event(), []
def read():
    for line in p.stderr:
        log.append(line)
        m = re.search(r"on http://([\d.]+):(\d+)", line)
        if m:
            url[0] = f"http://{m.group(1)}:{m.group(2)}"
            ready.set()
threading.Thread(target=read, daemon=True).start()
if not ready.wait(120):
    p.kill(); print("".join(log)); sys.exit("tq serve did not start")
c = openai.OpenAI(base_url=url[0] + "/v1", api_key="none", max_retries=0, timeout=120)
name = c.models.list().data[0].id
r = c.chat.completions.create(model=name, messages=[{"role": "user", "content": q}], max_tokens=24, temperature=0)
got = q + "\n" + r.choices[0].message.content + "\n"
want = open(ref).read()
p.send_signal(signal.SIGTERM); code = p.wait(60)
print("".join(log[:8]))
print("serve:", repr(got)); print("run:  ", repr(want)); print("exit:", code)
if got != want:
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    print(f"first difference at character {at}: {got[at:at + 40]!r} vs {want[at:at + 40]!r}")
sys.exit(0 if got == want and code == 0 else 1)
PY
}
chat_check "$out/serve_chat.log"
chat=$?
[ $chat -ne 0 ] && rc=1
echo "serve_http: greedy chat through tq serve ($dev) equals tq run --chat: $([ $chat -eq 0 ] && echo yes || echo "NO (see serve_chat.log)")"
echo "serve_http: $(grep -m1 -o 'KV cache:.*' "$out/run_chat.err" || echo 'no KV line from tq run')"
chat_check "$out/serve_chat_draft.log" --draft "$model" --draft-kv fp16
echo "serve_http: the same chat with --draft (the model drafting for itself on fp16): $([ $? -eq 0 ] && echo "equal" || echo "differs: $(grep -m1 'first difference\|exit:' "$out/serve_chat_draft.log")")"
python3 bench/serve/serve_load.py --launch "$tq serve -m $model --device $dev --kv k3v2 --max-num-seqs 64" --requests "$requests" \
  --concurrency 32 --cancel 0.1 --max-tokens 16,128 --json >"$out/serve_load.json" 2>"$out/serve_load.err"
load=$?
[ $load -ne 0 ] && rc=1
echo "serve_http: serve_load.py, $requests requests, 32 at once, 10% cancelled: rc=$load $(python3 -c "
import json,sys
try: d=json.load(open('$out/serve_load.json'))
except Exception as e: print('(no JSON:', e, ')'); sys.exit()
print({k: d[k] for k in d if not isinstance(d[k], (dict, list))})" 2>&1 | cut -c1-600)"
exit $rc
