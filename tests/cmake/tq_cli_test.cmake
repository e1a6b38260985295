# Helpers for the CLI smoke tests (cmake -P scripts run by ctest with -DTQ=<path to tq>).

# run_ok(args...): runs tq; a non-zero exit fails the test. Leaves OUT and ERR in the caller's scope.
function(run_ok)
  execute_process(COMMAND ${TQ} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "tq ${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
  set(OUT "${out}" PARENT_SCOPE)
  set(ERR "${err}" PARENT_SCOPE)
endfunction()

# run_fails(expect code args...): tq must exit with `code` (2 for a tq::Error; ANY for any non-zero,
# e.g. a command-line parse error) and its message must mention `expect`.
function(run_fails expect code)
  execute_process(COMMAND ${TQ} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(code STREQUAL "ANY")
    if(rc EQUAL 0)
      message(FATAL_ERROR "tq ${ARGN} succeeded but should fail")
    endif()
  elseif(NOT rc EQUAL code)
    message(FATAL_ERROR "tq ${ARGN}: expected exit ${code}, got ${rc}:\n${out}\n${err}")
  endif()
  string(FIND "${err}${out}" "${expect}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "tq ${ARGN}: error message does not mention '${expect}':\n${err}${out}")
  endif()
endfunction()

# require_file(path why): when `path` is absent, prints "SKIPPED: <why>" and ends the script; the
# tests register SKIP_REGULAR_EXPRESSION "SKIPPED: " (tq_cli_skip_marker), so ctest reports them
# as skipped, not passed, and scripts/test.sh prints the reason. A macro: return() leaves the script.
set(tq_cli_skip_marker "SKIPPED: ")
macro(require_file path why)
  if(NOT EXISTS "${path}")
    message("${tq_cli_skip_marker}${path} is absent: ${why}")
    return()
  endif()
endmacro()

