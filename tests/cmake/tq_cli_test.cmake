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

# run_fails_empty(option args...): `tq args... option ""` (an empty value, which a CMake list cannot
# carry through ARGN) must fail, naming the option: "<option>: got an empty value; want a number".
function(run_fails_empty option)
  execute_process(COMMAND ${TQ} ${ARGN} ${option} "" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0 OR NOT err MATCHES "${option}: got an empty value; want a number")
    message(FATAL_ERROR "tq ${ARGN} ${option} '': exit ${rc}, want an error naming ${option}'s empty value:\n${out}\n${err}")
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

# check_help_defaults(): every option of every subcommand that takes a value shows its default in
# --help, as CLI11 prints it after the type ("-n,--steps INT=256"), or its text says what the
# default is ("default: ..."): a user should not have to read the source to know what a flag does
# when left out.
function(check_help_defaults)
  execute_process(COMMAND ${TQ} --help OUTPUT_VARIABLE top RESULT_VARIABLE rc)
  string(REGEX MATCH "[Ss]ubcommands:\n.*" subs "${top}")
  string(REGEX MATCHALL "\n  [a-z][a-z-]*" subs "${subs}")
  if(NOT subs)
    message(FATAL_ERROR "tq --help lists no subcommands:\n${top}")
  endif()
  set(missing "")
  foreach(sub ${subs})
    string(STRIP "${sub}" sub)
    execute_process(COMMAND ${TQ} ${sub} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
    string(REGEX REPLACE "[][;]" "_" help "${help}")  # list syntax: ';' splits, brackets would group lines
    string(REPLACE "\n" ";" lines "${help}")
    set(opt "")
    foreach(line IN LISTS lines ITEMS "  -end")
      # "  -n,--steps INT=256   text": the type runs to the first double space ("UINT:INT in [1 - 1024]=32")
      if(line MATCHES "^  (-[^ ]+)( [A-Z]([^ ]| [^ ])*)?(.*)$")
        set(next "${CMAKE_MATCH_1}")
        set(next_type "${CMAKE_MATCH_2}")
        set(next_text "${CMAKE_MATCH_4}")
        # The previous option is complete: judge it.
        if(opt AND NOT opt_type MATCHES "=|REQUIRED" AND NOT opt_text MATCHES "[Dd]efault")
          list(APPEND missing "${sub} ${opt}")
        endif()
        set(opt "${next}")
        set(opt_type "${next_type}")
        set(opt_text "${next_text}")
        if(NOT opt_type)  # a flag (or --help): no value, no default to show
          set(opt "")
        endif()
      elseif(line MATCHES "^   +(.*)$")
        string(APPEND opt_text " ${CMAKE_MATCH_1}")
      endif()
    endforeach()
  endforeach()
  if(missing)
    list(JOIN missing "\n  " missing)
    message(FATAL_ERROR "--help shows no default for:\n  ${missing}")
  endif()
endfunction()
