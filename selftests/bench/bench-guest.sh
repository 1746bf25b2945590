#!/bin/sh
# Runs inside the guest, started by scripts/bench:
#   scripts/vm-run --no-module --add bench-guest.sh --add ksm_bench \
#       --add rmap_bench [--add rust_ksm.ko] -- bench-guest.sh ROUNDS \
#       [KSM_BENCH_ARGS...]
# ROUNDS rounds, each the built-in KSM then rust_ksm (insmod, the same
# workloads, rmmod), so that both engines see the same guest conditions
# round by round; scripts/bench takes the median of each figure.
# ksm_bench (merge figures, one repetition per round) and rmap_bench (rmap
# walk latency, first round only: it takes its own median over many walks)
# print "RESULT <engine> <figure> <value|NA> <unit>"; each round begins
# with "ROUND <n>".
# Exits 0 only if the built-in side measured every figure in every round.

rounds=$1
shift

# (Should vm-run have loaded it anyway: the built-in side needs it gone.)
rmmod rust_ksm 2>/dev/null

echo "# guest: $(grep -c ^processor /proc/cpuinfo) CPUs, $(grep MemTotal /proc/meminfo | tr -s ' ')"
builtin=0
r=1
while [ "$r" -le "$rounds" ]; do
	echo "ROUND $r"
	ksm_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd --reps 1 "$@" ||
		builtin=1
	if [ "$r" = 1 ]; then
		rmap_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd || builtin=1
	fi

	if [ ! -f /bin/rust_ksm.ko ]; then
		echo "BENCH-SIDE rust_ksm no-module"
	elif ! insmod /bin/rust_ksm.ko; then
		echo "BENCH-SIDE rust_ksm insmod-failed"
	else
		ksm_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd \
			--reps 1 "$@"
		if [ "$r" = 1 ]; then
			rmap_bench --ksm-dir /sys/kernel/mm/rust_ksm \
				--kthread rust_ksmd
		fi
		rmmod rust_ksm || echo "BENCH-SIDE rust_ksm rmmod-failed"
	fi
	r=$((r + 1))
done
echo "BENCH-SIDE ksm rc=$builtin"
exit $builtin
