#!/bin/sh
# Runs in the guest for `make run`: a mergeable workload, rust_ksm scanning it.
K=/sys/kernel/mm/rust_ksm
show() {
	printf '%-10s' "$1"
	for f in run pages_scanned full_scans pages_shared pages_sharing; do
		[ -r $K/$f ] && printf ' %s=%s' $f "$(cat $K/$f)"
	done
	echo
}
echo "rust_ksm knobs in $K:"
for f in $K/*; do printf '  %-18s %s\n' "${f##*/}" "$(cat "$f")"; done
demo-workload 8192 &
pid=$!
sleep 1
echo 1000 > $K/pages_to_scan
echo 0 > $K/sleep_millisecs
echo 1 > $K/run
show start
for i in 1 2 3 4 5; do
	sleep 1
	show "after ${i}s"
done
# What it bought: each page sharing a KSM page is a page not spent
# (pages_sharing), less what rust_ksm spends tracking them (general_profit).
sharing=$(cat $K/pages_sharing)
profit=$(cat $K/general_profit)
page_kb=$(($(getconf PAGESIZE 2>/dev/null || echo 4096) / 1024))
echo "merging saved $((sharing * page_kb / 1024)) MiB ($sharing pages of ${page_kb} KiB);" \
	"general_profit $((profit / 1048576)) MiB after rust_ksm's own memory"
echo 0 > $K/run
kill -TERM $pid
wait $pid
status=$?
for c in /proc/[0-9]*/comm; do
	[ "$(cat "$c" 2>/dev/null)" = rust_ksmd ] || continue
	d=${c%/comm}
	echo "rust_ksmd: pid ${d#/proc/}, nice $(cut -d' ' -f19 "$d/stat")"
done
exit $status
