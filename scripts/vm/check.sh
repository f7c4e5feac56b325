# shellcheck shell=bash
# The VM suites' reporting, sourced by node-suite.sh, iscsi-suite.sh and
# self-test.sh. The suite sets LOG (the file a check's output goes to, which a
# check may read back) before its first check; CHECK_SHOWN_LINES (default 30)
# is how much of a failed check's output is shown in full, a longer one shows
# its first and last halves.

PASSED=0 FAILED=0

# check NAME COMMAND...: run COMMAND, report, show its output on failure.
# The time is the guest clock's (close to the host's, good enough per check).
check() {
    local name=$1
    shift
    local shown=${CHECK_SHOWN_LINES:-30}
    local t0=${EPOCHREALTIME/./} ok=0
    "$@" >"$LOG" 2>&1 && ok=1
    local ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
    local took
    took=$((ms / 1000)).$(printf '%03d' $((ms % 1000)))
    if ((ok)); then
        PASSED=$((PASSED + 1))
        echo "ok - $name"
    else
        FAILED=$((FAILED + 1))
        echo "not ok - $name"
        if (($(wc -l <"$LOG") > shown)); then
            { head -n $((shown / 2)) "$LOG"; echo '...'; tail -n $((shown / 2)) "$LOG"; } | sed 's/^/#   /'
        else
            sed 's/^/#   /' "$LOG"
        fi
    fi
    echo "#   ${took} s"
}

# check_summary: print `N passed, M failed`; fails when a check failed.
check_summary() {
    echo "$PASSED passed, $FAILED failed"
    ((FAILED == 0))
}
