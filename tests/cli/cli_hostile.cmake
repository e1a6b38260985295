# Hostile input to the `tq` commands on stories260K (512 positions of training context): sizes past
# the machine or the model, numbers that mean nothing, a context that fills up, output that cannot be
# written. Each must end in a clear message naming the value, never a hang, a crash or garbage.
# Invoked by ctest: cmake -DTQ=<tq> -DDATA=<shared data dir> -DTMP=<scratch dir> -P cli_hostile.cmake
include(${CMAKE_CURRENT_LIST_DIR}/../cmake/tq_cli_test.cmake)

set(M ${DATA}/stories260K/stories260K.bin)
set(T ${DATA}/stories260K/tok512.bin)
require_file(${M} "stories260K comes with the shared data (../shared/data beside the clone, or -DTQ_SHARED_DATA=DIR)")
set(R run -m ${M} --tokenizer ${T})

# Threads: more than the machine has are capped, with a note (not one thread each).
run_ok(${R} -p "Once" -n 2 --kv fp16 -t 1000)
if(NOT ERR MATCHES "tq: -t 1000: more threads than this machine's [0-9]+ hardware threads; using [0-9]+" OR ERR MATCHES "cpu, 1000 threads")
  message(FATAL_ERROR "tq run -t 1000 was not capped with a note:\n${ERR}")
endif()

# Numbers: non-finite and out-of-range values are refused, naming the option and the value.
run_fails("--temp: temperature must be a finite number >= 0 (0: greedy), got nan" 2 ${R} --temp nan)
run_fails("--temp: temperature must be a finite number >= 0 (0: greedy), got inf" 2 ${R} --temp inf)
run_fails("--temp: temperature must be a finite number >= 0 (0: greedy), got -1" 2 ${R} --temp -1)
run_fails("--top-p: top_p must be in (0, 1] (1: off), got 1.5" 2 ${R} --temp 1 --top-p 1.5)
run_fails("--top-p: top_p must be in (0, 1] (1: off), got nan" 2 ${R} --temp 1 --top-p nan)
run_fails("--min-p: min_p must be in [0, 1] (0: off), got nan" 2 ${R} --temp 1 --min-p nan)
run_fails("--gpu-memory is a fraction of the GPU's memory in (0, 1], got nan" 2 ${R} -p "Once" -n 2 --gpu-memory nan)
run_fails("--depths nan: a depth is a fraction of the filler, in [0, 1]" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 64 --depths nan)
run_fails("--depths 1.5: a depth is a fraction of the filler, in [0, 1]" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 64 --depths 1.5)
# A haystack shorter than the longest prompt is said against --lengths (it named the 1-token probe of the shortest)
file(WRITE ${TMP}/one_word.txt "a")
run_fails("--haystack: the text holds about 1 tokens, fewer than the 300 of the longest --lengths" 2
          passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 256,300 --haystack ${TMP}/one_word.txt)
execute_process(COMMAND ${TQ} serve --help RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)  # a build with the server
  run_fails("--shutdown-timeout must be 0..86400 seconds, got inf" 2 serve -m ${M} --tokenizer ${T} --shutdown-timeout inf)
  run_fails("--max-queue must be 1..4096, got 4294967295" 2 serve -m ${M} --tokenizer ${T} --max-queue 4294967295)
  # A pool past the CPU's 64 GiB names the options that size it.
  run_fails("more than the 64 GiB allowed on the CPU (a smaller --max-num-seqs, --max-model-len or --num-pages needs less)" 2
            serve -m ${M} --tokenizer ${T} --num-pages 2000000000)
  # An int64_t option: CLI11 read a number past 2^63 - 1 as 2^63 - 1.
  run_fails("--prefix-tails: 99999999999999999999 is out of range: an integer in -9223372036854775808..9223372036854775807" 2
            serve -m ${M} --tokenizer ${T} --prefix-tails 99999999999999999999)
  # A pool smaller than one request of the context refuses the longer requests: said at startup, naming
  # --num-pages. 192.0.2.1 (TEST-NET-1) is no address of this machine: listening there fails after the
  # model and the pool are made, and ends the server (the timeout only where the system lets it listen).
  foreach(pages 1 31 32)  # 32 pages of 16 hold 512 positions, a request of the whole 512-token context (511 + 1)
    execute_process(COMMAND ${TQ} serve -m ${M} --tokenizer ${T} --kv fp16 --num-pages ${pages} --host 192.0.2.1 --port 0 TIMEOUT 60
                    RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
    math(EXPR tokens "${pages} * 16")
    math(EXPR most "${tokens} + 1")
    string(FIND "${err}" "tq serve: warning: --num-pages ${pages} gives a KV pool of ${tokens} tokens, less than one request of 512 (the model's context): a request's prompt and max_tokens are at most ${most} tokens together, longer requests are refused" at)
    if(NOT err MATCHES "cannot listen on 192\\.0\\.2\\.1|serving 'stories260K'" OR (pages LESS 32 AND at EQUAL -1)
       OR (pages EQUAL 32 AND NOT at EQUAL -1))
      message(FATAL_ERROR "tq serve --num-pages ${pages}: a warning wanted below 32 pages only (exit ${rc}):\n${err}")
    endif()
  endforeach()
  # --host and --port are tried before the model is loaded: a name that does not resolve, an address
  # of another machine (with a port: port 0 takes any, above).
  run_fails("--host 'not a host': not an address or a name of this machine" 2 serve -m ${M} --tokenizer ${T} --host "not a host")
  run_fails("cannot listen on 192.0.2.1:8123: " 2 serve -m ${M} --tokenizer ${T} --host 192.0.2.1 --port 8123)
  run_fails("--allowed-origins: 'localhost:3000' is not an origin (scheme://host[:port]" 2
            serve -m ${M} --tokenizer ${T} --allowed-origins http://a.example,localhost:3000)
endif()

# Negative values of unsigned options: CLI11 2.1 would read -1 as 2^64 - 1; refused naming the option.
run_fails("--context: must not be negative, got -1" 2 kv-size --context -1)
run_fails("--max-tokens: must not be negative, got -5" 2 perplexity -m ${M} --tokenizer ${T} -f ${CMAKE_CURRENT_LIST_FILE} --max-tokens -5)
run_fails("--seed: must not be negative, got -1" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 64 --seed -1)
run_fails("--seed: is larger than 2^64 - 1: 18446744073709551616" 2 ${R} -p "Once" -n 2 --temp 1 --seed 18446744073709551616)
# Integers beyond their option's type (int, uint32_t) were CLI11's "Could not convert", naming no range.
run_fails("--top-k: 99999999999999999999 is out of range: an integer in -2147483648..2147483647" 2 ${R} --temp 1 --top-k 99999999999999999999)
run_fails("--top-k: -2147483649 is out of range: an integer in -2147483648..2147483647" 2 ${R} --temp 1 --top-k -2147483649)
run_fails("-t/--threads: 4294967296 is out of range: an integer in 0..4294967295" 2 ${R} -p "Once" -n 2 -t 4294967296)
# The type's edge itself is no parse error (the sampler then takes --top-k 2147483647 as every token).
run_ok(${R} -p "Once" -n 2 --kv fp16 --temp 1 --seed 1 --top-k 2147483647)
# An option that has a short name is named by both spellings, whichever was typed (-n "" said "--steps").
execute_process(COMMAND ${TQ} ${R} -p "Once" -n "" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "-n/--steps: got an empty value; want a number")
  message(FATAL_ERROR "tq run -n '': exit ${rc}, want an error naming -n/--steps:\n${out}\n${err}")
endif()
run_fails("Could not convert: -n/--steps = x" ANY ${R} -p "Once" -n x)
run_fails("-n/--steps: 99999999999 is out of range: an integer in -2147483648..2147483647" 2 ${R} -p "Once" -n 99999999999)
# Sums and products of sizes are taken in 64 bits, not wrapped.
run_fails("--context: lengths are 1..2^40 tokens, got 18446744073709551615" 2 kv-size --context 18446744073709551615)
run_fails("--prompt 4294967295 + --output 2 = 4294967297 tokens: beyond the model's 512" 2
          bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 4294967295 --output 2)
run_fails("must exceed --warmup + --steps with the drafts of --queries (4294967297)" 2
          bench -m ${M} --tokenizer ${T} --device cpu --kv fp16 --context 256 --warmup 4294967295 --steps 2)
# A --json path that cannot be written is refused before the benchmark runs (it was found after it).
run_fails("--json: cannot write '${TMP}/no such dir/b.json'" 2
          bench -m ${M} --tokenizer ${T} --device cpu --kv fp16 --context 64 --batch 1 --steps 1 --warmup 1 --prefill none
          --json "${TMP}/no such dir/b.json")
run_fails("--json: cannot write '${TMP}/no such dir/s.json'" 2
          bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 8 --output 2 --json "${TMP}/no such dir/s.json")
# The early check is a probe: a run refused after it leaves no empty file behind.
file(REMOVE "${TMP}/refused.json")
run_fails("--prompt 500 + --output 100 = 600 tokens: beyond the model's 512" 2
          bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 500 --output 100 --json "${TMP}/refused.json")
if(EXISTS "${TMP}/refused.json")
  message(FATAL_ERROR "a refused tq bench-serve left ${TMP}/refused.json behind")
endif()
# Files and lists where one is expected, and knobs that would silently override each other.
run_fails("--file '${TMP}' is a directory, not a text file" 2 perplexity -m ${M} --tokenizer ${T} -f ${TMP} --kv fp16)
run_fails("--file '${TMP}/no such file' does not exist" 2 perplexity -m ${M} --tokenizer ${T} -f "${TMP}/no such file" --kv fp16)
run_fails("--kv 'fp16,k3v2': tq run takes one KV spec, not a list" 2 run -m ${TMP}/not-loaded.gguf --kv fp16,k3v2 -p x)
run_fails("KV spec 'k3v2:window=64:window=8': option 'window' is given twice" 2 kv-size --kv k3v2:window=64:window=8)
run_fails("unknown model shape 'llama-9'" 2 kv-size --shape llama-9)
run_fails("--layers excludes --shape" 2 kv-size --shape gemma-3-270m --layers 3)
run_fails("cannot open '${TMP}/none.gguf'" 2 kv-size -m ${TMP}/none.gguf)
run_fails("--swa-full counts a model's sliding-window layers: give the model's --shape or -m FILE" 2 kv-size --swa-full)
run_fails("--bits 2.5 with --method prod: prod has plain whole widths only" 2 distortion --bits 2.5 --method prod --samples 100)
run_fails("--bits 3t with --method prod: prod has plain whole widths only" 2 distortion --bits 3t --method prod --samples 100)
run_fails("--bits: widths are 1..8, 1.5..7.5 (N.5: the outlier split) or 1t..7t (trellis-coded), got '3v2:edge=1/k3'" 2 distortion --bits 3v2:edge=1/k3 --samples 100)
run_fails("got '8t'" 2 distortion --bits 8t --samples 100)

# Lists with an empty item, and numbers given as "": refused (they were dropped, or read as 0).
run_fails("--lengths '64,,128': an empty item in the list" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 64,,128)
run_fails("--depths '0.5,': an empty item in the list" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 64 --depths 0.5,)
run_fails_empty(--depths passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 64)
run_fails_empty(--steps ${R} -p "Once")
run_fails_empty(--temp ${R} -p "Once" -n 2)
run_fails_empty(--seed ${R} -p "Once" -n 2 --temp 1)
# --logits FILE that cannot be written is refused before the model runs (it was found after the
# prompt, naming no option); a write that fails (a full disk) is an error, not a short file.
execute_process(COMMAND ${TQ} ${R} -p "Once" -n 2 --kv fp16 --logits "${TMP}/no such dir/l.bin" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--logits: cannot write '${TMP}/no such dir/l.bin'" OR err MATCHES "tq run:")
  message(FATAL_ERROR "tq run --logits to a path it cannot write: exit ${rc}, want 2 before the model runs:\n${err}")
endif()
if(EXISTS /dev/full)
  run_fails("--logits: writing '/dev/full' failed" 2 ${R} -p "Once" -n 2 --kv fp16 --logits /dev/full)
endif()
# An empty --file is named as such (it was "the text has 1 tokens": its BOS).
file(WRITE ${TMP}/empty.txt "")
run_fails("--file '${TMP}/empty.txt' is empty" 2 perplexity -m ${M} --tokenizer ${T} -f ${TMP}/empty.txt --kv fp16)
# --tokenizer with a GGUF (which carries its own) is refused; it replaced the GGUF's tokenizer.
if(GGUF AND EXISTS "${GGUF}")
  run_fails("--tokenizer '${T}': '${GGUF}' is a GGUF file, which carries its own tokenizer" 2 run -m ${GGUF} --tokenizer ${T} -p x -n 2)
endif()

# Sizes beyond the model's training context: refused unless asked for, before anything is allocated.
set(beyond "beyond the model's training context of 512 tokens")
run_fails("--ctx 10000000: ${beyond}" 2 ${R} -p "Once" -n 2 --ctx 10000000)
run_fails("pass --allow-long-context to run anyway" 2 ${R} -p "Once" -n 2 --ctx 513)
run_fails("--ctx: Value 0 not in range" ANY ${R} -p "Once" -n 2 --ctx 0)  # was read as the model's context
run_fails("-n 600: more tokens than the context holds after the prompt's 2 (512 tokens, the model's training context)" 2 ${R} -p "Once" -n 600)
run_fails("-n 100: more tokens than the context holds after the prompt's 2 (50 tokens, --ctx)" 2 ${R} -p "Once" -n 100 --ctx 50)
# prompt + -n at most, as tq serve's prompt + max_tokens: 2 + 510 fits 512, 2 + 511 does not.
run_fails("-n 511: more tokens than the context holds after the prompt's 2" 2 ${R} -p "Once" -n 511 --kv fp16)
run_fails("--ctx 1048576: ${beyond}" 2 perplexity -m ${M} --tokenizer ${T} -f ${CMAKE_CURRENT_LIST_FILE} --ctx 1048576)
run_fails("--lengths 99999999: with the 8 answer tokens, ${beyond}" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 99999999)
run_fails("--lengths 0: a prompt length is at least 1 token" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 0)
# A length below the shortest prompt (the instructions, the key and the question around one round of the
# filler: 204 tokens with stories260K's tokenizer) built that prompt silently: refused, naming both.
set(shortest "the shortest pass-key prompt is 204 tokens with this model (the instructions, the key and the question around the least filler); give lengths of at least 204")
run_fails("--lengths 1: ${shortest}" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 1)
run_fails("--lengths 203: ${shortest}" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 256,203)
run_ok(passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 204 --depths 0.5 --json)
# A length the prompt's intro and question push past the context is refused with the prompt's size.
run_fails("--lengths 500: its prompt has" 2 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 500 --depths 0.5)
# Asked for explicitly: a huge --ctx runs, the pool sized by what the run needs (prompt + -n), not by
# --ctx (2e9 positions would need tens of GB for the pool and the RoPE tables alone).
run_ok(${R} -p "Once" -n 4 --kv fp16 --ctx 2000000000 --allow-long-context)
run_ok(perplexity -m ${M} --tokenizer ${T} -f ${CMAKE_CURRENT_LIST_FILE} --max-tokens 64 --kv fp16 --ctx 1048576 --allow-long-context --json)
string(JSON w GET "${OUT}" ctx)
if(NOT w EQUAL 1048576)
  message(FATAL_ERROR "perplexity --ctx 1048576 --allow-long-context: JSON ctx ${w}")
endif()
# Without --ctx, perplexity's windows are the model's context where it is shorter than 2048.
run_ok(perplexity -m ${M} --tokenizer ${T} -f ${CMAKE_CURRENT_LIST_FILE} --max-tokens 64 --kv fp16 --json)
string(JSON w GET "${OUT}" ctx)
if(NOT w EQUAL 512)
  message(FATAL_ERROR "perplexity without --ctx on a 512-token model: windows of ${w}")
endif()

# Encodings: a byte that is not UTF-8 (a Latin-1 'ÿ') is scored as its byte token where the vocabulary
# has byte tokens (stories260K's does; a vocabulary without one is refused naming the byte's offset, a
# unit test checks that).
string(ASCII 255 ff)
file(WRITE ${TMP}/latin1.txt "Once upon a time there was a cat ${ff} named Tom.\n")
run_ok(perplexity -m ${M} --tokenizer ${T} -f ${TMP}/latin1.txt --kv fp16 --json)
if(NOT OUT MATCHES "\"tokens_scored\": 16")
  message(FATAL_ERROR "tq perplexity on a Latin-1 byte gave no result:\n${OUT}\n${ERR}")
endif()

# The text does not depend on -n: the default spec's key centre is taken over the context asked for
# (--ctx, or the model's), not over the prompt + -n the run's pool is sized by.
run_ok(${R} -p "Once upon a time" -n 6 --temp 0)
string(STRIP "${OUT}" short)
run_ok(${R} -p "Once upon a time" -n 60 --temp 0)
string(FIND "${OUT}" "${short}" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "tq run -n 6 is not the start of -n 60:\n${short}\n${OUT}")
endif()

# A context that fills up ends the text with a message on stderr, not silently (an -n given is
# checked against it up front: -n 15 after 5 prompt tokens fills 20 exactly, and says nothing).
run_ok(${R} -p "Once upon a time" -n 15 --kv fp16 --ctx 20)
if(ERR MATCHES "is full")
  message(FATAL_ERROR "tq run said the context was full when -n ended it:\n${ERR}")
endif()
run_ok(${R} -p "Once upon a time" -n 5 --kv fp16 --ctx 20)
if(ERR MATCHES "is full")
  message(FATAL_ERROR "tq run said the context was full when -n ended it:\n${ERR}")
endif()
run_ok(${R} -p "Once upon a time" --kv fp16 --ctx 20)  # the default -n (256) is not refused: it stops at the context
if(NOT ERR MATCHES "stopped after [0-9]+ of -n 256 tokens: the context of 20 tokens")
  message(FATAL_ERROR "tq run with the default -n and --ctx 20:\n${ERR}")
endif()

# Benchmarks: a KV budget beyond the machine is held to its available memory on the CPU (the pool
# lives there), points beyond it are said and not run, and a huge budget does not overflow the fit.
set(B -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prefill none --steps 2 --warmup 1)
run_ok(bench ${B} --batch 1 --context 512 --kv-memory 1e30)
if(NOT ERR MATCHES "--kv-memory 1e\\+30 GB is more than this machine's [0-9.]+ GB of available memory" OR NOT OUT MATCHES "16777216")
  message(FATAL_ERROR "tq bench --kv-memory 1e30 on the CPU:\n${OUT}\n${ERR}")
endif()
# A step holds at most 4096 sequences (tq serve's --max-num-seqs limit: the runners' per-sequence
# buffers are not in the KV budget): a larger batch or concurrency is refused, a larger 'max' run at it.
run_fails("--batch 1000000: at most 4096 sequences a step" 2 bench ${B} --batch 1,1000000 --context 512)
run_fails("--concurrency 5000: at most 4096 clients" 2 bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --concurrency 5000)
run_fails("--batch: 16 given twice" 2 bench ${B} --batch 16,1,16 --context 512)
run_ok(bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 8 --output 2 --requests 2)  # millions fit 90% of the memory
if(NOT ERR MATCHES "--concurrency max: [0-9]+ clients fit --kv-memory; running 4096 \\(at most 4096 at once\\)" OR NOT ERR MATCHES "2 clients, 2 requests")
  message(FATAL_ERROR "tq bench-serve --concurrency max of a tiny model on the CPU:\n${OUT}\n${ERR}")
endif()
run_ok(bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 32 --output 4 --concurrency 2 --requests 2 --kv-memory 1e6)
if(NOT ERR MATCHES "tq bench-serve: --kv-memory 1e\\+06 GB is more than this machine's" OR NOT ERR MATCHES "2 clients, 2 requests, 6 pages")
  message(FATAL_ERROR "tq bench-serve --kv-memory 1e6 on the CPU:\n${OUT}\n${ERR}")
endif()
# 'max' where not one sequence fits the budget is a row that says so (it was left out without a word);
# --reps 0 is refused (it ran one, the table saying "median of 1").
run_ok(bench ${B} --batch max --context 64 --kv-memory 1e-7)
if(NOT OUT MATCHES "fp16 +0 +max +64 .*beyond 1e-07 GB of KV: not one sequence of 64 tokens fits")
  message(FATAL_ERROR "tq bench --batch max with too small a --kv-memory:\n${OUT}\n${ERR}")
endif()
run_fails("--chunk: Value 0 not in range 1 to 65536" 2 bench -m ${M} --tokenizer ${T} --device cpu --kv fp16 --context 64 --batch 1 --prefill 32 --chunk 0)
run_fails("--reps must be at least 1, got 0" 2 bench -m ${M} --tokenizer ${T} --device cpu --kv fp16 --context 64 --batch 1 --prefill 32 --reps 0)
# More clients than requests ran fewer clients than asked, with only a count on stderr: a fixed
# --concurrency is refused, naming both; max (as many as fit) runs one client a request, and says so.
run_fails("--concurrency 4 is more than --requests 2: each client sends at least one request; give --requests 4 or more, or --concurrency 2" 2
          bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 32 --output 4 --concurrency 4 --requests 2)
run_ok(bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 32 --output 4 --requests 2 --kv-memory 0.001)
if(NOT ERR MATCHES "tq bench-serve: fp16: --concurrency max: [0-9]+ clients fit --kv-memory; running 2, one per request \\(--requests 2\\)"
   OR NOT ERR MATCHES "2 clients, 2 requests")
  message(FATAL_ERROR "tq bench-serve --concurrency max --requests 2:\n${OUT}\n${ERR}")
endif()
# A request that does not fit says how much it needs in a number that is not 0.00.
run_ok(bench-serve -m ${M} --tokenizer ${T} --device cpu --kv fp16 --prompt 8 --output 2 --kv-memory 1e-9)
if(NOT OUT MATCHES "one request of 10 tokens needs 1.02e-05 GB, beyond the 1e-09 GB of KV")
  message(FATAL_ERROR "tq bench-serve --kv-memory 1e-9:\n${OUT}\n${ERR}")
endif()

# Output that cannot be written is an error, and ends the run.
if(EXISTS /dev/full)
  execute_process(COMMAND ${TQ} ${R} -p "Once" -n 20 --kv fp16 OUTPUT_FILE /dev/full RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 2 OR NOT err MATCHES "cannot write to standard output: No space left on device")
    message(FATAL_ERROR "tq run > /dev/full: exit ${rc} (want 2):\n${err}")
  endif()
  execute_process(COMMAND ${TQ} passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 256 --depths 0.5 --json OUTPUT_FILE /dev/full
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 2 OR NOT err MATCHES "cannot write to standard output")
    message(FATAL_ERROR "tq passkey --json > /dev/full: exit ${rc} (want 2):\n${err}")
  endif()
endif()
message(STATUS "cli hostile: all passed")
