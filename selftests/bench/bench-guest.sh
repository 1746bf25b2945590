#!/bin/sh
# Runs inside the guest, started by scripts/bench:
#   scripts/vm-run --no-module --add bench-guest.sh --add ksm_bench \
#       --add rmap_bench --add cost_bench [--add rust_ksm.ko] -- \
#       bench-guest.sh ROUNDS [KSM_BENCH_ARGS...]
# ROUNDS rounds, each running the same workloads on the built-in KSM and on
# rust_ksm (insmod, the workloads, rmmod), so that both engines see the
# same guest conditions round by round; scripts/bench takes the median of
# each figure.  After the rounds, each engine is profiled once on a merge,
# a steady-state scan and an unmerge (cost_bench --profile: "KPROF" lines),
# for the per-page cost breakdown.  The order alternates: the built-in KSM goes first in odd
# rounds, rust_ksm in even ones, so that neither always meets a fresh (or a
# used) guest.  ksm_bench (merge figures) and rmap_bench (rmap walk
# latency, its own median over many walks) run every round and print
# "RESULT <engine> <figure> <value|NA> <unit>"; each round begins with
# "ROUND <n>"; ksm_bench prints the knobs each side runs with; cost_bench
# adds the cost figures (default knobs, per-batch overhead, steady state,
# many processes, THP, a deep tree, near-duplicates, unrelated migration,
# the memory-read floor).
# Exits 0 only if the built-in side measured every figure in every round.

rounds=$1
shift

# (Should vm-run have loaded it anyway: the built-in side needs it gone.)
rmmod rust_ksm 2>/dev/null

echo "# guest: $(uname -r) $(uname -v), $(grep -c ^processor /proc/cpuinfo) CPUs, $(grep MemTotal /proc/meminfo | tr -s ' ')"

builtin=0
# builtin_side: the workloads on the built-in KSM.
builtin_side() {
	ksm_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd --reps 1 "$@" || builtin=1
	rmap_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd || builtin=1
	cost_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd || builtin=1
}

# rust_ksm_side: the same on rust_ksm, loaded for the purpose.
rust_ksm_side() {
	if [ ! -f /bin/rust_ksm.ko ]; then
		echo "BENCH-SIDE rust_ksm no-module"
	elif ! insmod /bin/rust_ksm.ko; then
		echo "BENCH-SIDE rust_ksm insmod-failed"
	else
		ksm_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd \
			--reps 1 "$@"
		rmap_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd
		cost_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd
		rmmod rust_ksm || echo "BENCH-SIDE rust_ksm rmmod-failed"
	fi
}

r=1
while [ "$r" -le "$rounds" ]; do
	echo "ROUND $r"
	if [ $((r % 2)) = 1 ]; then
		echo "# round $r: built-in KSM first"
		builtin_side "$@"
		rust_ksm_side "$@"
	else
		echo "# round $r: rust_ksm first"
		rust_ksm_side "$@"
		builtin_side "$@"
	fi
	r=$((r + 1))
done

# The per-page cost breakdown: each engine sampled on the three workloads
# (merge and scan: its thread; unmerge: the task writing run=2).
echo "PROFILE"
for w in merge scan unmerge; do
	cost_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd \
		--only "profile-$w" --profile || builtin=1
done
if [ -f /bin/rust_ksm.ko ] && insmod /bin/rust_ksm.ko; then
	# The engine handover, both directions (rmmod and insmod inside).
	cost_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd --only handover
	for w in merge scan unmerge; do
		cost_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd \
			--only "profile-$w" --profile
	done
	rmmod rust_ksm || echo "BENCH-SIDE rust_ksm rmmod-failed"
fi
echo "BENCH-SIDE ksm rc=$builtin"
exit $builtin
