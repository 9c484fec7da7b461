#!/bin/sh
# Stand-in for the gf180mcu precheck, for tests: same command line, log lines,
# exit codes and run folder layout, but no real checks. Despite its name this
# is a POSIX sh script; the image's `python3` runs it with sh.
#
# Behaviour comes from text strings in the layout: `PRECHECK_SIM <key>[=<value>]`
# (a bare key means =1). Keys: fail=<StepId>, deferred=<N>, magic=<N>,
# sleep=<s>, step_sleep=<s>, lines=<N>, oom=<MB>, hang, exit=<code>.

set -u
set -f

PROG=precheck.py
USAGE="usage: precheck.py [-h] --input INPUT [--output OUTPUT] [--top TOP] [--id ID]
                   [--slot {1x1,0p5x1,1x0p5,0p5x0p5}] [--cob] [--dir DIR]
                   [--run-tag RUN_TAG] [--threads THREADS] [--workers WORKERS]"
ELLIPSIS='…'

# 16x16 greyscale PNG standing in for the render.
RENDER_PNG='iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAAAAAA6mKC9AAAAeUlEQVR42jWOHRoAIBBE5zhhGIZhuBguLoZhGIYdtW9gDvB+kHKprdvwmGuf+5BTLb0NC1/z7HdRaso2Wp/L4759UEtOw3pbM/zds0GeHvL0gDw95OkBeXrI0wPy9JCnB+rrB+rrB+rrB+rrB+rrB+rrB+rrB+rr5wMkK2QBrVzZnAAAAABJRU5ErkJggg=='

usage_error() {
    printf '%s\n%s: error: %s\n' "$USAGE" "$PROG" "$1" >&2
    exit 2
}

is_uint() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    return 0
}

is_seconds() {
    case $1 in '' | . | *[!0-9.]* | *.*.*) return 1 ;; esac
    return 0
}

# ---------------------------------------------------------------- arguments
input='' output='' top='' die_id=FFFFFFFF slot=1x1 cob=False dir=.
tag='' threads=max workers=1
have_input=0

while [ $# -gt 0 ]; do
    arg=$1
    shift
    case $arg in
        -h | --help)
            printf '%s\n' "$USAGE"
            exit 0
            ;;
        --cob)
            cob=True
            continue
            ;;
        --cob=*) usage_error "argument --cob: ignored explicit argument '${arg#*=}'" ;;
        --*=*)
            opt=${arg%%=*}
            val=${arg#*=}
            ;;
        --*)
            opt=$arg
            case ${1-} in
                --*) usage_error "argument $opt: expected one argument" ;;
            esac
            [ $# -gt 0 ] || usage_error "argument $opt: expected one argument"
            val=$1
            shift
            ;;
        *) usage_error "unrecognized arguments: $arg" ;;
    esac
    case $opt in
        --input) input=$val have_input=1 ;;
        --output) output=$val ;;
        --top) top=$val ;;
        --id) die_id=$val ;;
        --slot) slot=$val ;;
        --dir) dir=$val ;;
        --run-tag) tag=$val ;;
        --threads) threads=$val ;;
        --workers) workers=$val ;;
        *) usage_error "unrecognized arguments: $arg" ;;
    esac
done

[ "$have_input" = 1 ] || usage_error "the following arguments are required: --input"
[ ${#die_id} -eq 8 ] || usage_error "argument --id: must be exactly 8 characters, got '$die_id'"
case $slot in
    1x1) slot_w=3932 slot_h=5122 ;;
    0p5x1) slot_w=1936 slot_h=5122 ;;
    1x0p5) slot_w=3932 slot_h=2531 ;;
    0p5x0p5) slot_w=1936 slot_h=2531 ;;
    *) usage_error "argument --slot: invalid choice: '$slot' (choose from '1x1', '0p5x1', '1x0p5', '0p5x0p5')" ;;
esac
[ "$threads" = max ] || is_uint "$threads" || usage_error "argument --threads: invalid value: '$threads'"
is_uint "$workers" || usage_error "argument --workers: invalid int value: '$workers'"

if [ -z "$top" ]; then
    top=${input##*/}
    top=${top%%.*}
fi
[ -n "$tag" ] || tag=RUN_$(date +%Y-%m-%d_%H-%M-%S)

PDK_ROOT=${PDK_ROOT:-/root/.ciel}
PDK=${PDK:-gf180mcuD}

# ---------------------------------------------------------------- logging
flowlog='' steplog=''

say() {
    printf '%s\n' "$*"
    [ -z "$flowlog" ] || printf '%s\n' "$*" >>"$flowlog"
    [ -z "$steplog" ] || printf '%s\n' "$*" >>"$steplog"
}

warn() {
    say "WARNING  $*"
    printf '%s\n' "$*" >>"$rundir/warning.log"
}

error() {
    say "ERROR    $*"
    printf '%s\n' "$*" >>"$rundir/error.log"
}

rule() {
    n=$(((78 - ${#1}) / 2))
    [ $n -gt 2 ] || n=3
    m=$((78 - ${#1} - n))
    [ $m -gt 2 ] || m=3
    bars=$(printf '%*s|%*s' "$n" '' "$m" '' | sed 's/ /─/g')
    say "${bars%|*} $1 ${bars#*|}"
}

json_str() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# Centiseconds since boot: busybox date has no %N.
now_cs() {
    read -r up _ </proc/uptime
    up=${up%.*}${up#*.}
    up=${up#"${up%%[!0]*}"}
    echo "${up:-0}"
}

layout_cat() {
    case $input in
        *.gz) zcat "$input" ;;
        *) cat "$input" ;;
    esac
}

# ---------------------------------------------------------------- header
say "PDK_ROOT = $PDK_ROOT"
say "PDK = $PDK"
if [ "$PDK" != gf180mcuD ]; then
    say "Error: Precheck is only supported for gf180mcuD. PDK = $PDK"
    exit 1
fi
header="PDK_ROOT = $PDK_ROOT
PDK = $PDK"
for line in "top_cell: $top" "die_id: $die_id" "cob: $cob" "slot: $slot" \
    "threads: $threads" "workers: $workers"; do
    say "$line"
    header="$header
$line"
done

if [ ! -f "$input" ]; then
    say "Error: The input layout '$input' does not exist."
    exit 1
fi

# ---------------------------------------------------------------- directives
sim_fail='' sim_deferred=0 sim_magic=0 sim_sleep='' sim_step_sleep=''
sim_lines=0 sim_oom=0 sim_hang=0 sim_exit=''

# busybox grep stops a line at NUL, so NULs become newlines first.
directives=$(layout_cat 2>/dev/null | tr '\000' '\n' |
    grep -a -o 'PRECHECK_SIM [a-z_]*\(=[^[:cntrl:] ]*\)\{0,1\}' |
    sed 's/^PRECHECK_SIM //')
for d in $directives; do
    key=${d%%=*}
    val=${d#*=}
    [ "$key" != "$d" ] || val=1
    case $key in
        fail) sim_fail=$val ;;
        deferred) is_uint "$val" && sim_deferred=$val ;;
        magic) is_uint "$val" && sim_magic=$val ;;
        sleep) is_seconds "$val" && sim_sleep=$val ;;
        step_sleep) is_seconds "$val" && sim_step_sleep=$val ;;
        lines) is_uint "$val" && sim_lines=$val ;;
        oom) is_uint "$val" && sim_oom=$val ;;
        hang) sim_hang=1 ;;
        exit) is_uint "$val" && sim_exit=$val ;;
    esac
done

if [ -n "$sim_exit" ]; then
    echo "Simulated system failure (exit $sim_exit)." >&2
    exit "$sim_exit"
fi

# ---------------------------------------------------------------- run folder
rundir=${dir%/}/runs/$tag
[ -n "${dir%/}" ] || rundir=/runs/$tag
case $dir in
    . | ./) relrun=runs/$tag ;;
    *) relrun=$rundir ;;
esac

if [ -e "$rundir" ] && [ ! -d "$rundir" ]; then
    say "Error: The precheck failed with the following exception: "
    say "Run directory for '$tag' already exists as a file and not a directory."
    exit 1
fi
if [ -d "$rundir" ] && [ -n "$(ls -A "$rundir")" ]; then
    resumed=1
else
    resumed=0
fi
mkdir -p "$rundir/reports" || exit 1
rundir=$(cd "$rundir" && pwd)
flowlog=$rundir/flow.log
printf '%s\n' "$header" >>"$flowlog"
: >>"$rundir/warning.log"
: >>"$rundir/error.log"

if [ $resumed = 1 ]; then
    say "Using existing run at '$tag' with the 'PrecheckFlow' flow."
else
    say "Starting a new run of the 'PrecheckFlow' flow with the tag '$tag'."
fi

config_body() {
    printf '  "DESIGN_NAME": %s,\n' "$(json_str "$top")"
    printf '  "KLAYOUT_READ_LAYOUT": %s,\n' "$(json_str "$input")"
    printf '  "KLAYOUT_WRITE_LAYOUT": %s,\n' "$(json_str "$output")"
    printf '  "KLAYOUT_ID": %s,\n' "$(json_str "$die_id")"
    printf '  "SLOT": "%s",\n  "COB": %s,\n' "$slot" "$([ $cob = True ] && echo true || echo false)"
    printf '  "PDK": %s,\n  "PDK_ROOT": %s\n' "$(json_str "$PDK")" "$(json_str "$PDK_ROOT")"
}
{
    echo '{'
    config_body
    echo '}'
} >"$rundir/resolved.json"

# ---------------------------------------------------------------- state
cur_gds='' cur_png=''
m_drc_klayout=0 m_drc_magic=0 m_antenna=0 m_density=0 m_zero=0

metrics_json() {
    cat <<EOF
{
  "klayout__drc_error__count": $m_drc_klayout,
  "magic__drc_error__count": $m_drc_magic,
  "antenna__violating__nets": $m_antenna,
  "antenna__violating__pins": $m_antenna,
  "density__error__count": $m_density,
  "zero_area__polygon__count": $m_zero
}
EOF
}

state_json() {
    printf '{\n  "gds": %s,\n  "render": %s,\n  "metrics": ' \
        "$([ -n "$cur_gds" ] && json_str "$cur_gds" || echo null)" \
        "$([ -n "$cur_png" ] && json_str "$cur_png" || echo null)"
    metrics_json | sed '2,$s/^/  /'
    echo '}'
}

state_get() {
    sed -n "s/^  \"$2\": \"\\(.*\\)\",\$/\\1/p" "$1"
}

xml_esc() {
    printf '%s' "$1" | sed 's/&/\&amp;/g; s/</\&lt;/g; s/>/\&gt;/g'
}

lyrdb() {
    # $1 = description, $2 = number of items
    echo '<?xml version="1.0" encoding="utf-8"?>'
    echo '<report-database>'
    echo " <description>$1</description>"
    cell=$(xml_esc "$top")
    echo " <top-cell>$cell</top-cell>"
    echo ' <categories><category><name>sim</name></category></categories>'
    echo ' <items>'
    i=1
    while [ "$i" -le "$2" ]; do
        echo "  <item><category>'sim'</category><cell>$cell</cell><values><value>box: (0,0;1,1)</value></values></item>"
        i=$((i + 1))
    done
    echo ' </items>'
    echo '</report-database>'
}

report() {
    mkdir -p "$sdir/reports"
    cat >"$sdir/reports/$1"
    cp "$sdir/reports/$1" "$rundir/reports/$1"
}

# ---------------------------------------------------------------- steps
deferred_errors=''
fail_reason=''

step_name() {
    case $1 in
        KLayout.ReadLayout) echo 'Read Layout' ;;
        KLayout.CheckTopLevel) echo 'Check Top Level' ;;
        KLayout.CheckSize) echo 'Check Slot Size' ;;
        KLayout.CheckPadMask) echo 'Check Pad Mask' ;;
        KLayout.GenerateID) echo 'Generate ID' ;;
        KLayout.Render) echo 'Render' ;;
        KLayout.Density) echo 'Density' ;;
        Checker.KLayoutDensity) echo 'Density Checker' ;;
        KLayout.ZeroArea) echo 'Zero Area Polygons' ;;
        Checker.ZeroArea) echo 'Zero Area Checker' ;;
        KLayout.Antenna) echo 'Antenna' ;;
        Checker.KLayoutAntenna) echo 'Antenna Checker' ;;
        Magic.DRC) echo 'Magic DRC' ;;
        Checker.MagicDRC) echo 'Magic DRC Checker' ;;
        KLayout.DRC) echo 'KLayout DRC' ;;
        Checker.KLayoutDRC) echo 'KLayout DRC Checker' ;;
        KLayout.WriteLayout) echo 'Write Layout' ;;
    esac
}

# Sets fail_reason and returns 1 on an immediate failure.
step_body() {
    case $1 in
        KLayout.ReadLayout)
            magic=$(layout_cat 2>/dev/null | head -c 4 | od -An -tx1 | tr -d ' \n')
            case $magic in
                00060002) fmt=GDS ;;
                2553454d) fmt=OASIS ;;
                *)
                    fail_reason="Failed to read '$input': not a GDS or OASIS layout."
                    return 1
                    ;;
            esac
            say "Reading $fmt layout '$input'$ELLIPSIS"
            layout_cat >"$sdir/$top.gds" || {
                fail_reason="Failed to read '$input'."
                return 1
            }
            cur_gds=$sdir/$top.gds
            say "Wrote '$cur_gds' ($(wc -c <"$cur_gds" | tr -d ' ') bytes)."
            ;;
        KLayout.CheckTopLevel)
            if ! layout_cat 2>/dev/null | tr '\000' '\n' | grep -a -q -F -e "$top"; then
                fail_reason="The top-level cell of the layout is not '$top'."
                return 1
            fi
            say "Found top-level cell '$top'."
            ;;
        KLayout.CheckSize)
            say "Slot $slot: expecting a die of $slot_w x $slot_h µm at the origin."
            say "Die size matches slot $slot."
            ;;
        KLayout.CheckPadMask)
            say "Pads match the golden mask for slot $slot."
            ;;
        KLayout.GenerateID)
            cp "$cur_gds" "$sdir/$top.gds"
            cur_gds=$sdir/$top.gds
            say "Inserted die ID '$die_id'."
            ;;
        KLayout.Render)
            printf '%s' "$RENDER_PNG" | base64 -d >"$sdir/$top.png"
            cur_png=$sdir/$top.png
            say "Rendered '$cur_png'."
            ;;
        KLayout.Density)
            echo "{\"errors\": $m_density}" | report density.klayout.json
            lyrdb "Density check" "$m_density" | report density.klayout.lyrdb
            say "Density check finished."
            ;;
        Checker.KLayoutDensity)
            say "Check for KLayout density errors clear."
            ;;
        KLayout.ZeroArea)
            say "Found $m_zero zero-area polygons."
            ;;
        Checker.ZeroArea)
            say "Check for zero-area polygons clear."
            ;;
        KLayout.Antenna)
            echo "{\"violating_nets\": $m_antenna}" | report antenna.klayout.json
            lyrdb "Antenna check" "$m_antenna" | report antenna.klayout.lyrdb
            say "Antenna check finished."
            ;;
        Checker.KLayoutAntenna)
            say "Check for KLayout antenna violations clear."
            ;;
        Magic.DRC)
            say "Running Magic DRC on '$top'$ELLIPSIS"
            if [ "$sim_lines" -gt 0 ]; then
                seq 1 "$sim_lines" | sed 's/^/noise /' | tee -a "$flowlog" "$steplog"
            fi
            m_drc_magic=$sim_magic
            printf '%s\n%s\n' "$top" "[INFO] COUNT: $m_drc_magic" | report drc.magic.rpt
            lyrdb "Magic DRC" "$m_drc_magic" | report drc.magic.lyrdb
            say "Magic DRC finished: $m_drc_magic errors."
            ;;
        Checker.MagicDRC)
            if [ "$m_drc_magic" -gt 0 ]; then
                warn "$m_drc_magic Magic DRC errors found."
            else
                say "Check for Magic DRC errors clear."
            fi
            ;;
        KLayout.DRC)
            say "Running KLayout DRC on '$top'$ELLIPSIS"
            if [ "$sim_oom" -gt 0 ]; then
                # Touches every page of the buffer; past the memory limit the
                # kernel kills it, as it kills KLayout on a real design.
                dd if=/dev/zero of=/dev/null bs="${sim_oom}M" count=1 2>/dev/null || exit 137
            fi
            if [ "$sim_hang" = 1 ]; then
                while :; do sleep 3600; done
            fi
            m_drc_klayout=$sim_deferred
            echo "{\"total\": $m_drc_klayout}" | report drc.klayout.json
            lyrdb "KLayout DRC" "$m_drc_klayout" | report drc.klayout.lyrdb
            say "KLayout DRC finished: $m_drc_klayout errors."
            ;;
        Checker.KLayoutDRC)
            m_drc_klayout=$sim_deferred
            if [ "$m_drc_klayout" -gt 0 ]; then
                error "$m_drc_klayout KLayout DRC errors found. - deferred"
                deferred_errors="$deferred_errors
$m_drc_klayout KLayout DRC errors found."
                return 2
            fi
            say "Check for KLayout DRC errors clear."
            ;;
        KLayout.WriteLayout)
            if [ -n "$output" ]; then
                case $output in */*) mkdir -p "${output%/*}" ;; esac
                cp "$cur_gds" "$output" || {
                    fail_reason="Failed to write '$output'."
                    return 1
                }
                say "Wrote the final layout to '$output'."
            else
                say "No output path given; not writing the layout."
            fi
            ;;
    esac
    return 0
}

sim_failure_reason() {
    case $1 in
        KLayout.CheckSize) echo "The die is not $slot_w x $slot_h µm at the origin (slot $slot)." ;;
        KLayout.CheckPadMask) echo "Pads do not match the golden mask for slot $slot." ;;
        KLayout.GenerateID) echo "No ID cell found in '$top'." ;;
        Checker.ZeroArea) echo "Zero-area polygons found." ;;
        *) echo "$1 failed." ;;
    esac
}

runtime() {
    t=$(($(now_cs) - start_cs))
    printf '%02d:%02d:%02d.%02d0\n' $((t / 360000)) $((t / 6000 % 60)) $((t / 100 % 60)) $((t % 100))
}

fail_now() {
    say "Error: The precheck failed with the following exception: "
    say "$1"
    exit 1
}

STEPS='KLayout.ReadLayout KLayout.CheckTopLevel KLayout.CheckSize'
[ $cob = True ] && STEPS="$STEPS KLayout.CheckPadMask"
STEPS="$STEPS KLayout.GenerateID KLayout.Render KLayout.Density
Checker.KLayoutDensity KLayout.ZeroArea Checker.ZeroArea KLayout.Antenna
Checker.KLayoutAntenna Magic.DRC Checker.MagicDRC KLayout.DRC
Checker.KLayoutDRC KLayout.WriteLayout"

[ -z "$sim_sleep" ] || sleep "$sim_sleep"

ordinal=0
for id in $STEPS; do
    ordinal=$((ordinal + 1))
    slug=$(echo "$id" | tr 'A-Z.' 'a-z-')
    folder=$(printf '%02d-%s' "$ordinal" "$slug")
    sdir=$rundir/$folder
    rule "$(step_name "$id")"

    if [ -f "$sdir/state_out.json" ]; then
        say "Skipping '$id': already completed at '$relrun/$folder'."
        v=$(state_get "$sdir/state_out.json" gds)
        [ -z "$v" ] || cur_gds=$v
        v=$(state_get "$sdir/state_out.json" render)
        [ -z "$v" ] || cur_png=$v
        continue
    fi

    mkdir -p "$sdir"
    steplog=$sdir/$slug.log
    : >"$steplog"
    start_cs=$(now_cs)
    say "Running '$id' at '$relrun/$folder'$ELLIPSIS"
    echo "precheck-simulator $id" >"$sdir/COMMANDS"
    {
        echo '{'
        printf '  "meta": {"step": "%s"},\n' "$id"
        config_body
        echo '}'
    } >"$sdir/config.json"
    state_json >"$sdir/state_in.json"

    [ -z "$sim_step_sleep" ] || sleep "$sim_step_sleep"

    if [ "$sim_fail" = "$id" ]; then
        fail_reason=$(sim_failure_reason "$id")
        rc=1
    else
        step_body "$id"
        rc=$?
    fi
    runtime >"$sdir/runtime.txt"
    case $rc in
        0) state_json >"$sdir/state_out.json" ;;
        2) ;; # deferred: the step did not complete, the flow goes on
        *)
            error "$fail_reason"
            steplog=''
            fail_now "$fail_reason"
            ;;
    esac
    steplog=''
done

# ---------------------------------------------------------------- final views
final=$rundir/final
rm -rf "$final"
mkdir -p "$final/gds" "$final/render"
cp "$cur_gds" "$final/gds/$top.gds"
cp "$cur_png" "$final/render/$top.png"
metrics_json >"$final/metrics.json"
{
    echo 'Metric,Value'
    metrics_json | sed -n 's/^  "\([^"]*\)": \([^,]*\),\{0,1\}$/\1,\2/p'
} >"$final/metrics.csv"

if [ -n "$deferred_errors" ]; then
    say "Error: The precheck failed with the following exception: "
    say "One or more deferred errors were encountered:${deferred_errors}"
    exit 1
fi

say "Flow complete."
say "Precheck successfully completed."
exit 0
