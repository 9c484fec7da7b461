#!/bin/sh
# Stand-in for the gf180mcu precheck, for tests: same command line, log lines,
# exit codes, run folder tree and report formats as the real flow's runs, but
# no real checks. Despite its name this is a POSIX sh script; the image's
# `python3` runs it with sh.
#
# Behaviour comes from text strings in the layout: `PRECHECK_SIM <key>[=<value>]`
# (a bare key means =1). Keys: fail=<StepId>, deferred=<N>, drc_at=<x,y;...>,
# density=<N>, antenna=<N>, antenna_at=<x,y;...>, zeroarea=<N>,
# zeroarea_at=<x,y;...>, magic=<N>, magic_at=<x,y;...>, sleep=<s>,
# step_sleep=<s>, lines=<N>, oom=<MB>, oom_step=<StepId>, oom_flow, hang,
# exit=<code>. The README's simulator section says what each does.

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
# The real flow's logger pads its lines to the terminal width, COLUMNS when set.
COLS=${COLUMNS:-80}
is_uint "$COLS" || COLS=80

# ---------------------------------------------------------------- logging
flowlog='' steplog='' rundir=''

# Centiseconds since boot: busybox date has no %N.
now_cs() {
    read -r up _ </proc/uptime
    up=${up%.*}${up#*.}
    up=${up#"${up%%[!0]*}"}
    echo "${up:-0}"
}
flow_start_cs=$(now_cs)

# Width in characters: UTF-8 continuation bytes take no column.
width_of() {
    case $1 in
        *[!\ -~]*) printf '%s' "$1" | tr -d '\200-\277' | wc -c ;;
        *) echo ${#1} ;;
    esac
}

# A line padded with spaces to $COLS columns, $2 (a source reference) at its right edge.
padded() {
    w=$(width_of "$1")
    gap=$((COLS - w - ${#2}))
    [ -z "$2" ] || [ $gap -ge 1 ] || gap=1
    [ $gap -ge 0 ] || gap=0
    printf '%s%*s%s\n' "$1" "$gap" '' "$2"
}

to_logs() {
    [ -z "$flowlog" ] || printf '%s\n' "$1" >>"$flowlog"
}

# A plain print of the flow's own script: not padded.
say() {
    printf '%s\n' "$1"
    to_logs "$1"
}

# A logger line: `[HH:MM:SS] LEVEL    message`, padded, the source at the right edge.
log() {
    lvl=$1 src=$2 msg=$3
    head="[$(date +%H:%M:%S)] $(printf '%-8s' "$lvl") $msg"
    padded "$head" "$src"
    to_logs "$head"
    case ${quiet_logs:-0}$lvl in
        0WARNING) printf '%s\n' "$msg" >>"$rundir/warning.log" ;;
        0ERROR) printf '%s\n' "$msg" >>"$rundir/error.log" ;;
    esac
}

# A line of a step's subprocess: echoed padded, kept in the step's log.
tool() {
    padded "$1" ''
    to_logs "$1"
    [ -z "$steplog" ] || printf '%s\n' "$1" >>"$steplog"
}

# `─── Title ───` across $COLS columns: a step begins.
rule() {
    w=$(width_of "$1")
    n=$(((COLS - w - 2) / 2))
    [ $n -ge 1 ] || n=1
    m=$((COLS - w - 2 - n))
    [ $m -ge 1 ] || m=1
    bars=$(printf '%*s|%*s' "$n" '' "$m" '' | sed 's/ /─/g')
    say "${bars%|*} $1 ${bars#*|}"
}

# The progress bar, printed once as the flow ends: `<flow> - Stage N - <name> ━━━ done/total H:MM:SS`.
progress() {
    stage=$1 name=$2 done=$3 total=$4
    halves=$((80 * done / total))
    bar=$(printf '%*s' $((halves / 2)) '' | sed 's/ /━/g')
    [ $((halves % 2)) = 0 ] || bar="$bar╸"
    gap=$((40 - halves / 2 - halves % 2))
    t=$((($(now_cs) - flow_start_cs) / 100))
    elapsed=$(printf '%d:%02d:%02d' $((t / 3600)) $((t / 60 % 60)) $((t % 60)))
    flow=PrecheckFlow
    [ $cob = False ] || flow="PrecheckFlow'"
    say "$(printf "%s - Stage %d - %s %s%*s %*s/%s %s" "$flow" "$stage" "$name" "$bar" "$gap" '' \
        ${#total} "$done" "$total" "$elapsed")"
}

json_str() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

layout_cat() {
    case $input in
        *.gz) zcat "$input" ;;
        *) cat "$input" ;;
    esac
}

# ---------------------------------------------------------------- header
# The real script prints its --skip argument first, unset: `None`.
say None
say "PDK_ROOT = $PDK_ROOT"
say "PDK = $PDK"
if [ "$PDK" != gf180mcuD ]; then
    say "Error: Precheck is only supported for gf180mcuD. PDK = $PDK"
    exit 1
fi
header="None
PDK_ROOT = $PDK_ROOT
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
sim_fail='' sim_deferred=0 sim_drc_at='' sim_density=0 sim_antenna=0 sim_antenna_at=''
sim_zero=0 sim_zero_at='' sim_magic=0 sim_magic_at='' sim_sleep='' sim_step_sleep=''
sim_lines=0 sim_oom=0 sim_oom_step=KLayout.DRC sim_oom_flow=0 sim_hang=0 sim_exit=''

# The step ids the simulator once had, still accepted in fail= and oom_step=.
step_alias() {
    case $1 in
        KLayout.ZeroArea) echo KLayout.ZeroAreaPolygons ;;
        Checker.ZeroArea) echo Checker.KLayoutZeroAreaPolygons ;;
        *) echo "$1" ;;
    esac
}

# Points `x,y;x,y` (µm); a marker list from them.
is_points() {
    case $1 in '' | *[!0-9.,\;-]*) return 1 ;; esac
    return 0
}

# How many points a list holds.
points_count() {
    printf '%s' "$1" | tr ';' '\n' | grep -c ','
}

# busybox grep stops a line at NUL, so NULs become newlines first.
directives=$(layout_cat 2>/dev/null | tr '\000' '\n' |
    grep -a -o 'PRECHECK_SIM [a-z_]*\(=[^[:cntrl:] ]*\)\{0,1\}' |
    sed 's/^PRECHECK_SIM //')
# An image built FROM this one may add directives of its own, as a newer precheck image that
# judges the same layout differently: ENV PRECHECK_SIM_DIRECTIVES="fail=KLayout.CheckSize".
directives="$directives ${PRECHECK_SIM_DIRECTIVES:-}"
for d in $directives; do
    key=${d%%=*}
    val=${d#*=}
    [ "$key" != "$d" ] || val=1
    case $key in
        fail) sim_fail=$(step_alias "$val") ;;
        deferred) is_uint "$val" && sim_deferred=$val ;;
        drc_at) is_points "$val" && sim_drc_at=$val ;;
        density) is_uint "$val" && sim_density=$val ;;
        antenna) is_uint "$val" && sim_antenna=$val ;;
        antenna_at) is_points "$val" && sim_antenna_at=$val ;;
        zeroarea) is_uint "$val" && sim_zero=$val ;;
        zeroarea_at) is_points "$val" && sim_zero_at=$val ;;
        magic) is_uint "$val" && sim_magic=$val ;;
        magic_at) is_points "$val" && sim_magic_at=$val ;;
        sleep) is_seconds "$val" && sim_sleep=$val ;;
        step_sleep) is_seconds "$val" && sim_step_sleep=$val ;;
        lines) is_uint "$val" && sim_lines=$val ;;
        oom) is_uint "$val" && sim_oom=$val ;;
        oom_step) sim_oom_step=$(step_alias "$val") ;;
        oom_flow) sim_oom_flow=1 ;;
        hang) sim_hang=1 ;;
        exit) is_uint "$val" && sim_exit=$val ;;
    esac
done
# Points without a count: one marker at each.
[ -z "$sim_drc_at" ] || [ "$sim_deferred" -gt 0 ] || sim_deferred=$(points_count "$sim_drc_at")
[ -z "$sim_antenna_at" ] || [ "$sim_antenna" -gt 0 ] || sim_antenna=$(points_count "$sim_antenna_at")
[ -z "$sim_zero_at" ] || [ "$sim_zero" -gt 0 ] || sim_zero=$(points_count "$sim_zero_at")
[ -z "$sim_magic_at" ] || [ "$sim_magic" -gt 0 ] || sim_magic=$(points_count "$sim_magic_at")

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
mkdir -p "$rundir" || exit 1
rundir=$(cd "$rundir" && pwd)
flowlog=$rundir/flow.log
printf '%s\n' "$header" >>"$flowlog"
: >>"$rundir/warning.log"
: >>"$rundir/error.log"

if [ $resumed = 1 ]; then
    log INFO flow.py:654 "Using existing run at '$tag' with the 'PrecheckFlow' flow."
else
    log INFO flow.py:654 "Starting a new run of the 'PrecheckFlow' flow with the tag '$tag'."
fi
log INFO sequential.py:339 "Starting$ELLIPSIS"

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
m_density=0 m_zero=0 m_antenna=0 m_drc_magic=0 m_drc_klayout=0

# The real flow's metrics, in its order.
metrics_json() {
    cat <<EOF
{
    "klayout__density_error__count": $m_density,
    "klayout__zero_area_polygons__count": $m_zero,
    "klayout__antenna_error__count": $m_antenna,
    "magic__drc_error__count": $m_drc_magic,
    "klayout__drc_error__count": $m_drc_klayout
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

# ---------------------------------------------------------------- reports
# Rules of each check, `name|description` (descriptions as in the real reports).
DENSITY_RULES='M1.4|M1.4 : Metal1 coverage over the entire die shall be >30% : 30%
M2.4|M2.4 : Metal2 coverage over the entire die shall be >30% : 30%
M3.4|M3.4 : metal3 coverage over the entire die shall be >30% : 30%
M4.4|M4.4 : metal4 coverage over the entire die shall be >30% : 30%
M5.4|M5.4 : metal5 coverage over the entire die shall be >30% : 30%
MT.3|MT.3 : MetalTop coverage over the entire die shall be >30% : 30%'
ZERO_RULES='0/0_zero_area|0/0 zero area polygon violation
167/5_zero_area|167/5 zero area polygon violation
22/0_zero_area|22/0 zero area polygon violation
30/0_zero_area|30/0 zero area polygon violation
34/0_zero_area|34/0 zero area polygon violation
36/0_zero_area|36/0 zero area polygon violation
42/0_zero_area|42/0 zero area polygon violation
46/0_zero_area|46/0 zero area polygon violation
81/0_zero_area|81/0 zero area polygon violation'
ANTENNA_RULES='ANT.1|ANT.1: Maximum ratio of Poly2 perimeter area to related gate oxide area: 200
ANT.8|ANT.8: Maximum ratio of contact area to related gate oxide area: 10'
DRC_RULES='MIMTM.1|MIMTM.1 : Minimum MiM bottom plate spacing to the bottom plate metal (whether adjacent MiM or routing metal). : 1.2µm
MIMTM.2|MIMTM.2 : Minimum MiM bottom plate overlap of Vian-1 layer. : 0.4µm
MIMTM.3|MIMTM.3 : Minimum MiM bottom plate overlap of Top plate.
MIMTM.4|MIMTM.4 : Minimum MiM top plate (FuseTop) overlap of Vian-1: 0.4µm
MIMTM.5|MIMTM.5 : Minimum spacing between top plate and the Vian-1 connecting to the bottom plate. : 0.4µm
MIMTM.6|MIMTM.6 : Minimum spacing between unrelated top plates: 0.6µm
MIMTM.7|MIMTM.7 : Min FuseTop enclosure by CAP_MK: 0um.
MIMTM.8a|MIMTM.8a : Minimum MIM cap area (defined by FuseTop area): 25µm²
MIMTM.8b|MIMTM.8b : Maximum single MIM Cap area (um2). : 10000µm
MIMTM.9|MIMTM.9 : Min. Via (Vian-1) spacing for sea of Via on MIM top plate. : 0.5µm
MIMTM.10|MIMTM.10 : (a) There cannot be any Vian-2 touching MIM bottom plate Metaln-1.
MIMTM.11|MIMTM.11 : Bottom plate of multiple MIM caps can be shared (for common nodes). : -µm
DE.2|DE.2 : Minimum NDMY or PMNDMY size (x or y dimension in um) : 0.8µm
DE.3|DE.3 : Maximum NDMY size (um2): 15000 um2.
DE.4|DE.4 : Minimum NDMY to NDMY space (Merge if space is less) : 20µm'
MAGIC_RULES='M1.1|Metal1 width < 46 (M1.1)
M1.2a|Metal1 spacing < 46 (M1.2a)'
# The rules markers go to, in turn (the first ones the real reports show firing).
DENSITY_FIRE='M1.4 M2.4 M3.4 M4.4 M5.4 MT.3'
ZERO_FIRE='36/0_zero_area 42/0_zero_area 0/0_zero_area 22/0_zero_area'
ANTENNA_FIRE='ANT.1 ANT.8'
DRC_FIRE='DE.2 DE.4'
MAGIC_FIRE='M1.1 M1.2a'

# Markers: the i-th at the i-th point of $points (cycled; by default spread over the die's
# lower left), of the i-th rule of $fire (cycled). mode: items (.lyrdb items), compact (the
# one-line .lyrdb Magic writes), rpt (Magic's report), json (a count per rule of $cats and
# the total). kind: edge-pair (a width or space rule), box, sliver (a zero-area polygon),
# die (the whole die: a coverage rule), magic (a Magic box).
MARKERS_AWK='
function n(v) { return sprintf("%.10g", v) }
function m(v) { return sprintf("%.3f", v) }
BEGIN {
    nd = split(descs, dl, "\n")
    for (j = 1; j <= nd; j++) { split(dl[j], kv, "|"); desc[kv[1]] = kv[2] }
    np = split(points, p, ";"); nr = split(fire, r, " ")
    for (i = 0; i < count; i++) {
        x = 30 + 10 * (i % 10); y = 100 + 100 * int(i / 10)
        if (np > 0) {
            k = split(p[i % np + 1], xy, ",")
            if (k == 2 && xy[1] != "" && xy[2] != "") { x = xy[1] + 0; y = xy[2] + 0 }
        }
        rule = r[i % nr + 1]; cnt[rule]++
        if (kind == "edge-pair")
            v = "edge-pair: (" n(x) "," n(y) ";" n(x) "," n(y + 0.5) ")|(" n(x + 0.5) "," n(y + 0.5) ";" n(x + 0.5) "," n(y) ")"
        else if (kind == "box")
            v = "polygon: (" n(x) "," n(y) ";" n(x) "," n(y + 1) ";" n(x + 1) "," n(y + 1) ";" n(x + 1) "," n(y) ")"
        else if (kind == "sliver")
            v = "polygon: (" n(x) "," n(y) ";" n(x) "," n(y + 10) ";" n(x) "," n(y + 10) ";" n(x) "," n(y) ")"
        else if (kind == "die")
            v = "polygon: (0,0;0," h ";" w "," h ";" w ",0)"
        else
            v = "polygon: (" m(x) "," m(y) ";" m(x + 0.13) "," m(y) ";" m(x + 0.13) "," m(y + 2) ";" m(x) "," m(y + 2) ")"
        if (mode == "items") {
            print "  <item>\n   <tags/>\n   <category>\047" rule "\047</category>\n   <cell>" cell "</cell>"
            print "   <visited>false</visited>\n   <multiplicity>1</multiplicity>\n   <comment/>\n   <image/>"
            print "   <values>\n    <value>" v "</value>\n   </values>\n  </item>"
        } else if (mode == "compact") {
            printf "<item><cell>%s</cell><category>\047%s\047</category><visited>false</visited>", cell, rule
            printf "<multiplicity>1</multiplicity><values><value>%s</value><value>text: \047None\047</value></values></item>", v
        } else if (mode == "rpt")
            boxes[rule] = boxes[rule] " " m(x) "um " m(y) "um " m(x + 0.13) "um " m(y + 2) "um\n"
    }
    if (mode == "json") {
        print "{"
        nc = split(cats, c, " ")
        for (j = 1; j <= nc; j++) if (!fired || cnt[c[j]]) print "    \"" c[j] "\": " (cnt[c[j]] + 0) ","
        print "    \"total\": " (count + 0) "\n}"
    } else if (mode == "rpt") {
        for (j = 1; j <= nr; j++) if (cnt[r[j]]) {
            print "----------------------------------------"
            print desc[r[j]]
            print "----------------------------------------"
            printf "%s", boxes[r[j]]
        }
    }
}'

# markers MODE KIND COUNT POINTS FIRE [CATS [FIRED_ONLY [RULES]]]
markers() {
    awk -v mode="$1" -v kind="$2" -v count="$3" -v points="$4" -v fire="$5" \
        -v cats="${6-}" -v fired="${7-0}" -v descs="${8-}" -v cell="$(xml_esc "$top")" \
        -v w="$slot_w" -v h="$slot_h" "$MARKERS_AWK" </dev/null
}

# The names of a rule list, and of the first N rules markers go to (those that fire).
rule_names() {
    printf '%s\n' "$1" | sed 's/|.*//' | tr '\n' ' '
}
fired_rules() {
    names='' i=0
    for r in $1; do
        [ $i -lt "$2" ] || break
        names="$names $r" i=$((i + 1))
    done
    echo "$names"
}

# lyrdb DESCRIPTION GENERATOR RULES KIND COUNT POINTS FIRE FIRED_ONLY: a report database
# as the real flow's deck writes it; with FIRED_ONLY only the rules that fired are listed.
lyrdb() {
    echo '<?xml version="1.0" encoding="utf-8"?>'
    echo '<report-database>'
    echo " <description>$1</description>"
    echo ' <original-file/>'
    echo " <generator>drc: script='$2'</generator>"
    echo " <top-cell>$(xml_esc "$top")</top-cell>"
    echo ' <tags>'
    echo ' </tags>'
    echo ' <categories>'
    fired=" $(fired_rules "$7" "$5") "
    printf '%s\n' "$3" | while IFS='|' read -r name description; do
        case $8$fired in 1*" $name "*| 0*) ;; *) continue ;; esac
        echo '  <category>'
        echo "   <name>$(xml_esc "$name")</name>"
        echo "   <description>$(xml_esc "$description")</description>"
        echo '   <categories>'
        echo '   </categories>'
        echo '  </category>'
    done
    echo ' </categories>'
    echo ' <cells>'
    echo '  <cell>'
    echo "   <name>$(xml_esc "$top")</name>"
    echo '   <variant/>'
    echo '   <layout-name/>'
    echo '   <references>'
    echo '   </references>'
    echo '  </cell>'
    echo ' </cells>'
    echo ' <items>'
    markers items "$4" "$5" "$6" "$7"
    echo ' </items>'
    echo '</report-database>'
}

# check_reports NAME DESCRIPTION GENERATOR RULES KIND COUNT POINTS FIRE FIRED_ONLY: the
# step's reports/NAME.lyrdb and the per-rule count reports/NAME.json beside it.
check_reports() {
    mkdir -p "$sdir/reports"
    lyrdb "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9" >"$sdir/reports/$1.lyrdb"
    if [ "$9" = 1 ]; then
        markers json "$5" "$6" "$7" "$8" "$(fired_rules "$8" "$6")" 1 >"$sdir/reports/$1.json"
    else
        markers json "$5" "$6" "$7" "$8" "$(rule_names "$4")" 0 >"$sdir/reports/$1.json"
    fi
    # The real zero-area deck prints nothing; the others say what they run.
    if [ "$5" != sliver ]; then
        tool "$(date '+%Y-%m-%d %H:%M:%S +0000'): Memory Usage (416184K) : Runset output at: $sdir/reports/$1.lyrdb"
        for r in $(rule_names "$4"); do
            tool "$(date '+%Y-%m-%d %H:%M:%S +0000'): Memory Usage (416184K) : Executing rule $r"
        done
    fi
    # The flow turns the database into the .json with a subprocess of its own.
    log VERBOSE step.py:1338 "Logging subprocess to '$relrun/$folder/xml_drc_report_to_json.log'$ELLIPSIS"
    echo "Wrote $1.json" >"$sdir/xml_drc_report_to_json.log"
    process_stats xml_drc_report_to_json
}

magic_reports() {
    mkdir -p "$sdir/reports" "$sdir/views"
    fired=$(fired_rules "$MAGIC_FIRE" "$m_drc_magic")
    {
        echo "$top"
        markers rpt magic "$m_drc_magic" "$sim_magic_at" "$MAGIC_FIRE" '' 0 "$MAGIC_RULES"
        echo '----------------------------------------'
        echo "[INFO] COUNT: $m_drc_magic"
        echo '[INFO] Should be divided by 3 or 4'
        echo
    } >"$sdir/reports/drc.magic.rpt"
    {
        echo "<?xml version='1.0' encoding='utf8'?>"
        printf '<report-database><cells><cell><name>%s</name></cell></cells><categories>' "$(xml_esc "$top")"
        printf '%s\n' "$MAGIC_RULES" | while IFS='|' read -r name description; do
            case " $fired " in *" $name "*) ;; *) continue ;; esac
            printf '<category><name>%s</name><description>%s</description></category>' \
                "$(xml_esc "$name")" "$(xml_esc "$description")"
        done
        printf '</categories><items>'
        markers compact magic "$m_drc_magic" "$sim_magic_at" "$MAGIC_FIRE"
        printf '</items></report-database>'
    } >"$sdir/reports/drc.magic.lyrdb"
    echo "magic $top" >"$sdir/views/$top.drc.mag"
}

process_stats() {
    printf '{\n    "exit_code": 0,\n    "time": {"cpu_s": 0.0, "runtime_s": 0.0},\n    "peak_resources": {}\n}\n' \
        >"$sdir/$1.process_stats.json"
}

# ---------------------------------------------------------------- steps
deferred_errors='' warnings='' fail_reason=''

step_name() {
    case $1 in
        KLayout.ReadLayout) echo 'Read the Layout' ;;
        KLayout.CheckTopLevel) echo 'Check Top-Level Name' ;;
        KLayout.CheckSize) echo 'Check Slot Size' ;;
        KLayout.CheckPadMask) echo 'Check Pad Mask' ;;
        KLayout.GenerateID) echo 'Generate ID' ;;
        KLayout.Render) echo 'Render Image (w/ KLayout)' ;;
        KLayout.Density) echo 'Density Check' ;;
        Checker.KLayoutDensity) echo 'KLayout Density Checker' ;;
        KLayout.ZeroAreaPolygons) echo 'Find Zero Area Polygons' ;;
        Checker.KLayoutZeroAreaPolygons) echo 'KLayout Zero Area Polygons Checker' ;;
        KLayout.Antenna) echo 'Antenna Check' ;;
        Checker.KLayoutAntenna) echo 'KLayout Antenna Checker' ;;
        Magic.DRC) echo 'Design Rule Checks' ;;
        Checker.MagicDRC) echo 'Magic Design Rule Checker' ;;
        KLayout.DRC) echo 'Design Rule Check (KLayout)' ;;
        Checker.KLayoutDRC) echo 'KLayout Design Rule Checker' ;;
        KLayout.WriteLayout) echo 'Write the Layout' ;;
    esac
}

# What a checker checks, as its lines name it.
checker_what() {
    case $1 in
        Checker.KLayoutDensity) echo 'KLayout density errors' ;;
        Checker.KLayoutZeroAreaPolygons) echo 'KLayout zero area polygons count' ;;
        Checker.KLayoutAntenna) echo 'KLayout antenna errors' ;;
        Checker.MagicDRC) echo 'Magic DRC errors' ;;
        Checker.KLayoutDRC) echo 'KLayout DRC errors' ;;
    esac
}

# A checker's verdict on COUNT: clear; or found, deferred (returns 2) or at once (returns 1);
# Magic's only warns.
checker() {
    what=$(checker_what "$1")
    if [ "$2" -eq 0 ]; then
        log INFO checker.py:131 "Check for $what clear."
    elif [ "$1" = Checker.MagicDRC ]; then
        log WARNING checker.py:122 "$2 $what found."
        warnings="$warnings
[$1] $2 $what found."
    elif [ "$1" = Checker.KLayoutZeroAreaPolygons ]; then
        log ERROR checker.py:127 "$2 $what found."
        fail_reason="$2 $what found."
        return 1
    else
        log ERROR checker.py:124 "$2 $what found. - deferred"
        deferred_errors="$deferred_errors
$2 $what found."
        return 2
    fi
    return 0
}

# The final layout, in the format its name asks for, as the flow's writer does: an `.oas`
# output is OASIS (the magic, then the layout's cell names and text as the test layouts carry
# them), anything else the layout as read.
write_output() {
    case $output in
        *.oas)
            if [ "$(head -c 4 "$cur_gds" | od -An -tx1 | tr -d ' \n')" = 2553454d ]; then
                cp "$cur_gds" "$output"
            else
                { printf '%%SEMI-OASIS\r\n'; tr -c 'A-Za-z0-9_$=,;.-' '\n' <"$cur_gds" | tr -s '\n'; } >"$output"
            fi
            ;;
        *) cp "$cur_gds" "$output" ;;
    esac
}

# A step's subprocess failing: its last words, the argv the flow names in its exception.
sub_fail() {
    code=$1 argv=$2
    shift 2
    for line in "$@"; do tool "$line"; done
    fail_reason="$(step_name "$id"): subprocess ($code, [$argv]) failed"
    return 3
}

# Sets fail_reason and returns 1 (a checker's immediate failure) or 3 (a subprocess failed);
# returns 2 on a deferred failure.
step_body() {
    failing=0
    [ "$sim_fail" != "$1" ] || failing=1
    gds_arg="'$cur_gds'"
    case $1 in
        KLayout.ReadLayout)
            argv="'read_layout.py', '-rd', 'input=$input'"
            magic=$(layout_cat 2>/dev/null | head -c 4 | od -An -tx1 | tr -d ' \n')
            case $magic in
                00060002 | 2553454d) ;;
                *) failing=1 ;;
            esac
            if [ $failing = 1 ] || ! layout_cat >"$sdir/$top.gds"; then
                sub_fail 1 "$argv" "[Error]: Failed to read '$input': not a GDS or OASIS layout."
                return 3
            fi
            cur_gds=$sdir/$top.gds
            ;;
        KLayout.CheckTopLevel)
            argv="'python3', 'check_top.py', $gds_arg, '--top', '$top'"
            if [ $failing = 1 ] || ! layout_cat 2>/dev/null | tr '\000' '\n' | grep -a -q -F -e "$top"; then
                sub_fail 1 "$argv" "[Error] Top-level cell name does not match expected name '$top'!"
                return 3
            fi
            tool "Design name '$top' matches top-level cell in $cur_gds."
            ;;
        KLayout.CheckSize)
            lw=$slot_w.0
            [ $failing = 0 ] || lw=$((slot_w - 36)).0
            tool 'Layout size:'
            tool "layout width:  $lw"
            tool "layout height: $slot_h.0"
            tool 'Expected slot size:'
            tool "slot width:  $slot_w.0"
            tool "slot height: $slot_h.0"
            if [ $failing = 1 ]; then
                sub_fail 255 "'python3', 'check_size.py', $gds_arg, '--slot', '$slot'" \
                    "[Error]: Layout size does not match slot size $slot."
                return 3
            fi
            tool "Layout dimension matches the selected slot size $slot."
            ;;
        KLayout.CheckPadMask)
            if [ $failing = 1 ]; then
                sub_fail 1 "'check_mask.drc', '-rd', 'input=$cur_gds'" \
                    'Error: Pad mask does not match!'
                return 3
            fi
            tool 'Pad mask matches.'
            ;;
        KLayout.GenerateID)
            if [ $failing = 1 ]; then
                sub_fail 1 "'python3', 'generate_id.py', $gds_arg, '--id', '$die_id'" \
                    "Error: Couldn't find ID cell: 'gf180mcu_ws_ip__qrcode_id'."
                return 3
            fi
            tool 'Width: 21, Height: 21'
            tool '> ██████████████  ██    ██    ██████████████'
            tool '> ██          ██  ████        ██          ██'
            tool "Inserted ID: $die_id"
            cp "$cur_gds" "$sdir/$top.gds"
            cur_gds=$sdir/$top.gds
            ;;
        KLayout.Render)
            [ $failing = 0 ] || { sub_fail 1 "'render.py'" 'Error: Rendering failed.'; return 3; }
            printf '%s' "$RENDER_PNG" | base64 -d >"$sdir/$top.png"
            cur_png=$sdir/$top.png
            ;;
        KLayout.Density)
            [ $failing = 0 ] || { sub_fail 1 "'density.drc'" 'ERROR: Density check failed.'; return 3; }
            m_density=$sim_density
            check_reports density.klayout 'GF180 DENSITY DRC Run Report at' 'density.drc' \
                "$DENSITY_RULES" die "$m_density" '' "$DENSITY_FIRE" 1
            ;;
        KLayout.ZeroAreaPolygons)
            [ $failing = 0 ] || { sub_fail 1 "'zero_area.drc'" 'ERROR: Zero area check failed.'; return 3; }
            m_zero=$sim_zero
            # The real step writes its reports under the density step's names.
            check_reports density.klayout 'Zero Area Polygon Report' 'zero_area.drc' \
                "$ZERO_RULES" sliver "$m_zero" "$sim_zero_at" "$ZERO_FIRE" 0
            ;;
        KLayout.Antenna)
            [ $failing = 0 ] || { sub_fail 1 "'antenna.drc'" 'ERROR: Antenna check failed.'; return 3; }
            m_antenna=$sim_antenna
            check_reports antenna.klayout 'GF180 ANTENNA DRC Run Report at' 'antenna.drc' \
                "$ANTENNA_RULES" box "$m_antenna" "$sim_antenna_at" "$ANTENNA_FIRE" 0
            ;;
        Magic.DRC)
            if [ "$sim_lines" -gt 0 ]; then
                # Plain lines, not padded: tests count them exactly.
                seq 1 "$sim_lines" | sed 's/^/noise /' | tee -a "$flowlog" "$steplog"
            fi
            echo "set ::env(DESIGN_NAME) $top" >"$sdir/_env.tcl"
            tool 'Loading DRC CIF style.'
            [ $failing = 0 ] || { sub_fail 1 "'drc.tcl'" 'Error: DRC run failed.'; return 3; }
            m_drc_magic=$sim_magic
            [ "$m_drc_magic" -gt 0 ] || tool 'No errors found.'
            tool "[INFO] COUNT: $m_drc_magic"
            tool '[INFO] Should be divided by 3 or 4'
            tool "[INFO] DRC Checking DONE ($sdir/reports/drc.magic.rpt)"
            magic_reports
            tool "[INFO] Saving mag view with DRC errors ($sdir/views/$top.drc.mag)"
            tool '[INFO] Saved'
            ;;
        KLayout.DRC)
            if [ "$sim_hang" = 1 ]; then
                while :; do sleep 3600; done
            fi
            [ $failing = 0 ] || { sub_fail 1 "'gf180mcu.drc'" 'ERROR: DRC run failed.'; return 3; }
            m_drc_klayout=$sim_deferred
            check_reports drc.klayout 'DRC Run Report at' 'gf180mcu.drc' \
                "$DRC_RULES" edge-pair "$m_drc_klayout" "$sim_drc_at" "$DRC_FIRE" 0
            ;;
        KLayout.WriteLayout)
            [ $failing = 0 ] || { sub_fail 1 "'write_layout.py'" "Error: Failed to write '$output'."; return 3; }
            if [ -n "$output" ]; then
                case $output in */*) mkdir -p "${output%/*}" ;; esac
                write_output || {
                    sub_fail 1 "'write_layout.py'" "Error: Failed to write '$output'."
                    return 3
                }
            fi
            ;;
        Checker.KLayoutDensity) checker "$1" "$([ $failing = 1 ] && echo 1 || echo "$m_density")" ;;
        Checker.KLayoutZeroAreaPolygons) checker "$1" "$([ $failing = 1 ] && echo 1 || echo "$m_zero")" ;;
        Checker.KLayoutAntenna) checker "$1" "$([ $failing = 1 ] && echo 1 || echo "$m_antenna")" ;;
        Checker.MagicDRC) checker "$1" "$m_drc_magic" ;;
        Checker.KLayoutDRC) checker "$1" "$([ $failing = 1 ] && echo 1 || echo "$m_drc_klayout")" ;;
    esac
}

# What a step says before it starts its subprocess.
step_intro() {
    case $1 in
        KLayout.CheckPadMask) log INFO precheck.py:403 "Running KLayout pad mask check$ELLIPSIS" ;;
        KLayout.Density) log INFO klayout.py:1222 "Running KLayout density check with 2 threads$ELLIPSIS" ;;
        KLayout.ZeroAreaPolygons) log INFO precheck.py:306 "Running KLayout zero area polygons check$ELLIPSIS" ;;
        KLayout.Antenna) log INFO klayout.py:1325 "Running KLayout antenna check$ELLIPSIS" ;;
        KLayout.DRC) log INFO klayout.py:668 "Running KLayout DRC with 2 threads$ELLIPSIS" ;;
    esac
}

runtime() {
    t=$(($(now_cs) - start_cs))
    printf '%02d:%02d:%02d.%02d0\n' $((t / 360000)) $((t / 6000 % 60)) $((t / 100 % 60)) $((t % 100))
}

# The flow's end on an error: the progress bar, the exception, exit 1.
fail_now() {
    progress "$ordinal" "$(step_name "$id")" $((ordinal - 1)) "$total"
    say "Error: The precheck failed with the following exception: "
    say "$1"
    exit 1
}

# What the flow prints when a step's subprocess exits non-zero: its last lines repeated.
subprocess_failed() {
    log ERROR step.py:1383 'Subprocess had a non-zero exit.'
    last=$(tail -n 10 "$steplog")
    n=$(printf '%s\n' "$last" | wc -l)
    log ERROR step.py:1388 "Last $n line(s):"
    printf '%s\n' "$last" | while IFS= read -r line; do
        padded "                    $line" ''
        printf '%s\n' "$line" >>"$rundir/error.log"
    done
    padded '' ''
    echo >>"$rundir/error.log"
    log ERROR step.py:1391 "Full log file: '$relrun/$folder/$slug.log'"
}

STEPS='KLayout.ReadLayout KLayout.CheckTopLevel KLayout.CheckSize'
[ $cob = True ] && STEPS="$STEPS KLayout.CheckPadMask"
STEPS="$STEPS KLayout.GenerateID KLayout.Render KLayout.Density
Checker.KLayoutDensity KLayout.ZeroAreaPolygons Checker.KLayoutZeroAreaPolygons
KLayout.Antenna Checker.KLayoutAntenna Magic.DRC Checker.MagicDRC KLayout.DRC
Checker.KLayoutDRC KLayout.WriteLayout"
total=16
[ $cob = False ] || total=17

[ -z "$sim_sleep" ] || sleep "$sim_sleep"

ordinal=0
for id in $STEPS; do
    ordinal=$((ordinal + 1))
    slug=$(echo "$id" | tr 'A-Z.' 'a-z-')
    folder=$(printf '%02d-%s' "$ordinal" "$slug")
    sdir=$rundir/$folder
    rule "$(step_name "$id")"

    if [ -f "$sdir/state_out.json" ]; then
        log INFO step.py:1138 "Skipping '$id': already completed at '$relrun/$folder'."
        v=$(state_get "$sdir/state_out.json" gds)
        [ -z "$v" ] || cur_gds=$v
        v=$(state_get "$sdir/state_out.json" render)
        [ -z "$v" ] || cur_png=$v
        continue
    fi

    mkdir -p "$sdir"
    start_cs=$(now_cs)
    log VERBOSE step.py:1138 "Running '$id' at '$relrun/$folder'$ELLIPSIS"
    {
        echo '{'
        printf '  "meta": {"step": "%s"},\n' "$id"
        config_body
        echo '}'
    } >"$sdir/config.json"
    state_json >"$sdir/state_in.json"
    # Checkers run no subprocess: no COMMANDS, no log of their own.
    case $id in
        Checker.*) steplog='' ;;
        *)
            echo "precheck-simulator $id" >"$sdir/COMMANDS"
            step_intro "$id"
            log VERBOSE step.py:1338 "Logging subprocess to '$relrun/$folder/$slug.log'$ELLIPSIS"
            steplog=$sdir/$slug.log
            : >"$steplog"
            process_stats "$slug"
            ;;
    esac

    [ -z "$sim_step_sleep" ] || sleep "$sim_step_sleep"

    if [ "$sim_oom" -gt 0 ] && [ "$id" = "$sim_oom_step" ]; then
        # The real flow's step writes its files as it goes: the render's image is there, empty.
        [ "$id" != KLayout.Render ] || : >"$sdir/$top.png"
        # Touches every page of the buffer; past the memory limit the kernel kills it, as it
        # kills the real step's subprocess on a big design.
        if [ "$sim_oom_flow" = 1 ]; then
            # The flow's own process killed: the container ends with 137.
            dd if=/dev/zero of=/dev/null bs="${sim_oom}M" count=1 2>/dev/null || exit 137
        elif ! dd if=/dev/zero of=/dev/null bs="${sim_oom}M" count=1 2>/dev/null; then
            steplog=''
            fail_now "$(step_name "$id"): Interrupted (SIGKILL)"
        fi
    fi

    step_body "$id"
    rc=$?
    case $rc in
        0)
            runtime >"$sdir/runtime.txt"
            state_json >"$sdir/state_out.json"
            ;;
        2) ;; # deferred: the step did not complete, the flow goes on
        3)
            subprocess_failed
            steplog=''
            fail_now "$fail_reason"
            ;;
        *)
            steplog=''
            fail_now "$fail_reason"
            ;;
    esac
    steplog=''
done

# ---------------------------------------------------------------- final views
final=$rundir/final
log INFO state.py:209 "Saving views to '$final'$ELLIPSIS"
rm -rf "$final"
mkdir -p "$final/gds" "$final/render"
cp "$cur_gds" "$final/gds/$top.gds"
cp "$cur_png" "$final/render/$top.png"
metrics_json >"$final/metrics.json"
{
    echo 'Metric,Value'
    metrics_json | sed -n 's/^    "\([^"]*\)": \([^,]*\),\{0,1\}$/\1,\2/p'
} >"$final/metrics.csv"

if [ -n "$deferred_errors" ]; then
    progress "$ordinal" "$(step_name "$id")" "$total" "$total"
    say "Error: The precheck failed with the following exception: "
    say "One or more deferred errors were encountered:${deferred_errors}"
    exit 1
fi

log INFO sequential.py:413 "Flow complete."
progress "$ordinal" "$(step_name "$id")" "$total" "$total"
say ''
if [ -n "$warnings" ]; then
    # Not in warning.log again: the checker's line is there already.
    quiet_logs=1
    log WARNING flow.py:699 'The following warnings were generated by the flow:'
    printf '%s\n' "$warnings" | sed 1d | while IFS= read -r line; do
        log WARNING flow.py:701 "$line"
    done
fi
say "Precheck successfully completed."
exit 0
