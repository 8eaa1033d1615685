# Airlock Bash kernel driver: one persistent shell. Each request line on
# fd 4 names a cell file and an environment-restore file; the cell is
# sourced in this shell (so variables, cd and functions persist) with stdin
# from /dev/null, and a JSON line on fd 3 reports completion.
trap 'printf "\n"' INT
__airlock_count=0
printf '{"type":"ready"}\n' >&3
while IFS= read -r -u 4 __airlock_req; do
    __airlock_cell="${__airlock_req%%|*}"
    __airlock_restore="${__airlock_req#*|}"
    __airlock_count=$((__airlock_count + 1))
    source "$__airlock_cell" </dev/null 4<&- 3>&-
    __airlock_ec=$?
    source "$__airlock_restore" 4<&- 3>&-
    rm -f "$__airlock_cell" "$__airlock_restore"
    if [ "$__airlock_ec" -ne 0 ]; then
        printf '{"type":"error","name":"BashError","value":"exit code %d","traceback":""}\n' "$__airlock_ec" >&3
    fi
    printf '{"type":"done","execution_count":%d}\n' "$__airlock_count" >&3
done
