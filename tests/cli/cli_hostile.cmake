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
execute_process(COMMAND ${TQ} serve --help RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)  # a build with the server
  run_fails("--shutdown-timeout must be 0..86400 seconds, got inf" 2 serve -m ${M} --tokenizer ${T} --shutdown-timeout inf)
  run_fails("--max-queue must be 1..4096, got 4294967295" 2 serve -m ${M} --tokenizer ${T} --max-queue 4294967295)
endif()

# Negative values of unsigned options: CLI11 2.1 would read -1 as 2^64 - 1; refused naming the option.
run_fails("--context: must not be negative, got -1" 105 kv-size --context -1)
run_fails("--max-tokens: must not be negative, got -5" 105 perplexity -m ${M} --tokenizer ${T} -f ${CMAKE_CURRENT_LIST_FILE} --max-tokens -5)
run_fails("--seed: must not be negative, got -1" 105 passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 64 --seed -1)
run_fails("--seed: is larger than 2^64 - 1: 18446744073709551616" 105 ${R} -p "Once" -n 2 --temp 1 --seed 18446744073709551616)
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
run_fails("--layers excludes --shape" 108 kv-size --shape gemma-3-270m --layers 3)
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
run_ok(bench ${B} --batch 1,1000000 --context 512 --kv-memory 1e30)
if(NOT ERR MATCHES "--kv-memory 1e\\+30 GB is more than this machine's [0-9.]+ GB of available memory"
   OR NOT OUT MATCHES "fp16 +1000000 .*beyond this machine's available memory" OR NOT OUT MATCHES "16777216")
  message(FATAL_ERROR "tq bench --kv-memory 1e30 on the CPU:\n${OUT}\n${ERR}")
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
run_fails("--reps must be at least 1, got 0" 2 bench -m ${M} --tokenizer ${T} --device cpu --kv fp16 --context 64 --batch 1 --prefill 32 --reps 0)
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
  execute_process(COMMAND ${TQ} passkey -m ${M} --tokenizer ${T} --kv fp16 --lengths 100 --depths 0.5 --json OUTPUT_FILE /dev/full
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 2 OR NOT err MATCHES "cannot write to standard output")
    message(FATAL_ERROR "tq passkey --json > /dev/full: exit ${rc} (want 2):\n${err}")
  endif()
endif()
message(STATUS "cli hostile: all passed")
