# Runs the `tq` command as a user would: help, JSON output, and errors on bad input.
# Invoked by ctest: cmake -DTQ=<path to tq> -P cli_smoke.cmake
include(${CMAKE_CURRENT_LIST_DIR}/../cmake/tq_cli_test.cmake)

foreach(sub "" distortion kv-size)
  run_ok(${sub} --help)
endforeach()

run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv k3v2 --json)
string(JSON ratio GET "${OUT}" ratio_vs_fp16)
string(JSON bpt GET "${OUT}" bytes_per_token)
if(ratio LESS 6.0 OR NOT bpt EQUAL 21504)
  message(FATAL_ERROR "k3v2 at 32x8x128: ratio ${ratio}, bytes/token ${bpt}; expected >= 6.0 and 21504")
endif()
# Edge layers are counted in their own format: 28 layers of k3v2 (84 bytes a head and token) and
# 4 of k4v4 (132), 8 heads.
run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv k3v2:edge=2/k4v4 --json)
string(JSON bpt GET "${OUT}" bytes_per_token)
if(NOT bpt EQUAL 23040)
  message(FATAL_ERROR "k3v2:edge=2/k4v4 at 32x8x128: bytes/token ${bpt}, expected 23040")
endif()

# The default is tq run's spec, against fp16 and fp8; the sink/window side buffer is its own
# column (a fixed cost per sequence, not in bytes/token) and in each --context's MiB.
run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128 --context 1024,32768 --json)
string(JSON n LENGTH "${OUT}" rows)
string(JSON k0 GET "${OUT}" rows 0 kv)
string(JSON k1 GET "${OUT}" rows 1 kv)
string(JSON k2 GET "${OUT}" rows 2 kv)
if(NOT n EQUAL 3 OR NOT k0 STREQUAL "fp16" OR NOT k1 STREQUAL "fp8" OR NOT k2 STREQUAL "k3v2:ip:edge=2/k4v4:sink=4:window=64:centre")
  message(FATAL_ERROR "kv-size without --kv: want fp16, fp8 and tq run's default spec, got ${n} rows:\n${OUT}")
endif()
string(JSON side0 GET "${OUT}" rows 0 side_kib)
string(JSON side2 GET "${OUT}" rows 2 side_kib)
string(JSON bpt GET "${OUT}" rows 2 bytes_per_token)
string(JSON mib GET "${OUT}" rows 2 mib_at_32768)
string(JSON fp16mib GET "${OUT}" rows 0 mib_at_1024)
# (4 + 64 + 64) tokens of fp16 at 32x8x128 (131072 bytes a token) = 16896 KiB; 23040 bytes a token
# in pages (see above), 32768 tokens = 720 MiB, plus the side buffer = 736.5 MiB; fp16 @ 1024 = 128 MiB.
if(NOT side0 EQUAL 0 OR NOT side2 EQUAL 16896 OR NOT bpt EQUAL 23040 OR NOT mib EQUAL 736.5 OR NOT fp16mib EQUAL 128)
  message(FATAL_ERROR "kv-size default spec: side KiB ${side0} / ${side2} (want 0 / 16896), bytes/token ${bpt} (23040), "
                      "MiB @ 32768 ${mib} (736.5), fp16 MiB @ 1024 ${fp16mib} (128)")
endif()
# The key centres: 4 bytes x 32 layers x 8 KV heads x 128 = 128 KiB per cache, in a column of their own.
run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv k3v2,k3v2:centre --json)
string(JSON c0 GET "${OUT}" rows 0 centre_kib)
string(JSON c1 GET "${OUT}" rows 1 centre_kib)
string(JSON bpt GET "${OUT}" rows 1 bytes_per_token)
if(NOT c0 EQUAL 0 OR NOT c1 EQUAL 128 OR NOT bpt EQUAL 21504)
  message(FATAL_ERROR "kv-size k3v2:centre: centre KiB ${c0} / ${c1} (want 0 / 128), bytes/token ${bpt} (21504)")
endif()
run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv k3v2:centre)
if(NOT OUT MATCHES "centre KiB" OR NOT OUT MATCHES "a fixed cost per cache")
  message(FATAL_ERROR "kv-size does not show the key centres' bytes:\n${OUT}")
endif()
run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128)
if(NOT OUT MATCHES "side KiB/seq" OR NOT OUT MATCHES "'default' is tq run's spec \\(k3v2:ip:edge=2/k4v4:sink=4:window=64:centre\\)"
   OR NOT OUT MATCHES "centre KiB")  # the default is centred: its column is shown
  message(FATAL_ERROR "kv-size does not say what it counts:\n${OUT}")
endif()
run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv fp16,k3v2)
if(OUT MATCHES "centre KiB")  # that column only with a centred spec
  message(FATAL_ERROR "kv-size shows a centre column without a centred spec:\n${OUT}")
endif()

# --help prints the defaults: the value after the type (CLI11's "TYPE=value").
run_ok(run --help)
foreach(want "-n,--steps INT=256" "--kv TEXT=k3v2:ip:edge=2/k4v4:sink=4:window=64:centre" "--top-p FLOAT=1")
  string(FIND "${OUT}" "${want}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "tq run --help does not show '${want}':\n${OUT}")
  endif()
endforeach()
run_ok(kv-size --help)
foreach(want "--layers UINT:INT in [1 - 1024]=32" "--head-dim UINT:UINT in [1 - 1024]=128" "--kv TEXT=fp16,fp8,default")
  string(FIND "${OUT}" "${want}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "tq kv-size --help does not show '${want}':\n${OUT}")
  endif()
endforeach()
# Every option that takes a value, in every subcommand, shows a default or says what it is.
check_help_defaults()

run_ok(distortion --dim 64 --bits 1,3 --method both --samples 500 --json)
string(JSON n LENGTH "${OUT}" rows)
if(NOT n EQUAL 4)
  message(FATAL_ERROR "distortion --json: expected 4 rows, got ${n}")
endif()
foreach(key bits method mse ip_bias ip_var)
  string(JSON v ERROR_VARIABLE e GET "${OUT}" rows 0 ${key})
  if(e)
    message(FATAL_ERROR "distortion --json: row lacks '${key}'")
  endif()
endforeach()

# Fractional widths: 64 channels at 4 bits and 64 at 3 (56 bytes) and two fp16 norms for K, 40 + 4
# for V at 2.5 bits: 104 bytes a head and token.
run_ok(kv-size --layers 32 --kv-heads 8 --head-dim 128 --kv k3.5v2.5 --json)
string(JSON bpt GET "${OUT}" bytes_per_token)
if(NOT bpt EQUAL 26624)
  message(FATAL_ERROR "k3.5v2.5 at 32x8x128: bytes/token ${bpt}, expected 26624")
endif()
run_ok(distortion --dim 64 --bits 2.5 --method both --samples 500 --json)
string(JSON n LENGTH "${OUT}" rows)
string(JSON b GET "${OUT}" rows 0 bits)
if(NOT n EQUAL 1 OR NOT b EQUAL 2.5)
  message(FATAL_ERROR "distortion --bits 2.5: expected one MSE row of 2.5 bits (prod takes whole widths), got ${n} rows:\n${OUT}")
endif()
# A first word that is no command is named, with the close one and the list.
run_fails("unknown command 'kvsize' (did you mean 'kv-size'?); the commands: distortion, kv-size" 2 kvsize)
run_fails("'2.7'" 2 kv-size --kv k2.7v2)
run_fails("'2.7'" ANY distortion --bits 2.7)

run_fails("k9v2" 2 kv-size --kv k9v2)
run_fails("'zz'" 2 kv-size --kv k3v2:zz)
run_fails("head-dim" 2 kv-size --kv k3v2 --head-dim 0)
run_fails("--context: lengths are 1..2^40 tokens, got 0" 2 kv-size --context 1024,0)
run_fails("method" ANY distortion --method foo)
# An empty item of a comma-separated list is refused (CLI11 dropped it: --bits 1,,2 measured 1 and 2),
# and so is an empty number (CLI11 read it as 0).
set(single "an empty item in the list; give the items separated by single commas")
run_fails("--bits '1,,2': ${single}" 2 distortion --bits 1,,2 --samples 100)
run_fails("--bits '3,': ${single}" 2 distortion --bits=3, --samples 100)
run_fails("--context ',8192': ${single}" 2 kv-size --context ,8192)
run_fails_empty(--samples distortion)
run_fails_empty(--context kv-size)

# Model files named by what their bytes are: an empty or truncated .gguf is not "a llama2.c
# checkpoint", GGUF version 0 is not "byte-swapped".
file(WRITE ${TMP}/smoke_empty.gguf "")
run_fails("'${TMP}/smoke_empty.gguf' is empty (0 bytes): not a model file" 2 run -m ${TMP}/smoke_empty.gguf)
file(WRITE ${TMP}/smoke_trunc.gguf "GGU")
run_fails("GGUF '${TMP}/smoke_trunc.gguf': truncated: the magic needs 4 bytes" 2 run -m ${TMP}/smoke_trunc.gguf)
execute_process(COMMAND printf "GGUF\\000\\000\\000\\000garbage" OUTPUT_FILE ${TMP}/smoke_v0.gguf)  # CMake strings hold no NUL
run_fails("GGUF '${TMP}/smoke_v0.gguf': version 0 is not supported (only 2 and 3)" 2 run -m ${TMP}/smoke_v0.gguf)
file(WRITE ${TMP}/smoke_text.gguf "this is a text file, not a model")
run_fails("'${TMP}/smoke_text.gguf' is not a GGUF file (magic bytes 74 68 69 73)" 2 run -m ${TMP}/smoke_text.gguf)
# Output that cannot be written is an error (exit 2), --help's too.
if(EXISTS /dev/full)
  foreach(args "kv-size;--kv;k3v2;--json" "kv-size;--help")
    execute_process(COMMAND ${TQ} ${args} OUTPUT_FILE /dev/full RESULT_VARIABLE rc ERROR_VARIABLE err)
    if(NOT rc EQUAL 2 OR NOT err MATCHES "cannot write to standard output")
      message(FATAL_ERROR "tq ${args} > /dev/full: exit ${rc}, want 2 and a write error:\n${err}")
    endif()
  endforeach()
endif()
message(STATUS "cli smoke: all passed")

# A model's shape (--shape, or -m FILE): Gemma-3-270M's 15 sliding-window layers (window 512) hold
# their window rings, 49 pages of 16 positions, where that is smaller than the sequence; its 3 global
# layers every position. fp16, one KV head of 256: 16 KiB a layer's page. At 32768 positions:
# 3 x 2048 + 15 x 49 pages = 107.484375 MiB; every position (--swa-full) 576 MiB; at 512 no ring.
run_ok(kv-size --shape gemma-3-270m --kv fp16 --context 512,32768 --json)
string(JSON m512 GET "${OUT}" rows 0 mib_at_512)
string(JSON m32k GET "${OUT}" rows 0 mib_at_32768)
string(JSON nwin GET "${OUT}" window_layers)
if(NOT m512 EQUAL 9 OR NOT m32k EQUAL 107.484375 OR NOT nwin EQUAL 15)
  message(FATAL_ERROR "kv-size --shape gemma-3-270m: MiB @ 512 ${m512} (9), @ 32768 ${m32k} (107.484375), window layers ${nwin} (15)")
endif()
run_ok(kv-size --shape gemma-3-270m --kv fp16 --context 32768 --swa-full --json)
string(JSON m32k GET "${OUT}" rows 0 mib_at_32768)
if(NOT m32k EQUAL 576)
  message(FATAL_ERROR "kv-size --shape gemma-3-270m --swa-full: MiB @ 32768 ${m32k} (576)")
endif()
run_ok(kv-size --shape gemma-3-270m --kv k3v2 --context 32768)
if(NOT OUT MATCHES "gemma-3-270m: 18 layers x 1 KV heads x head dim 256" OR NOT OUT MATCHES "15 of its layers are sliding-window layers")
  message(FATAL_ERROR "kv-size --shape does not say what it counts:\n${OUT}")
endif()
