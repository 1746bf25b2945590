#!/bin/sh
# Runs inside the guest, started by scripts/bench:
#   scripts/vm-run --no-module --add bench-guest.sh --add ksm_bench \
#       --add rmap_bench [--add rust_ksm.ko] -- bench-guest.sh [KSM_BENCH_ARGS...]
# The built-in KSM first (rust_ksm not loaded: vm-run --no-module leaves the
# .ko out of the initramfs, so it comes in with --add as /bin/rust_ksm.ko),
# then insmod rust_ksm and the same workloads against it.  ksm_bench (merge
# figures, given KSM_BENCH_ARGS) and rmap_bench (rmap walk latency, its
# defaults) print "RESULT <engine> <figure> <value|NA> <unit>"; scripts/bench
# joins them.
# Exits 0 only if the built-in side measured every figure.

# (Should vm-run have loaded it anyway: the built-in side needs it gone.)
rmmod rust_ksm 2>/dev/null

echo "# guest: $(grep -c ^processor /proc/cpuinfo) CPUs, $(grep MemTotal /proc/meminfo | tr -s ' ')"
ksm_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd "$@"
builtin=$?
rmap_bench --ksm-dir /sys/kernel/mm/ksm --kthread ksmd || builtin=1
echo "BENCH-SIDE ksm rc=$builtin"

if [ ! -f /bin/rust_ksm.ko ]; then
	echo "BENCH-SIDE rust_ksm no-module"
elif ! insmod /bin/rust_ksm.ko; then
	echo "BENCH-SIDE rust_ksm insmod-failed"
else
	ksm_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd "$@"
	rc=$?
	rmap_bench --ksm-dir /sys/kernel/mm/rust_ksm --kthread rust_ksmd || rc=1
	echo "BENCH-SIDE rust_ksm rc=$rc"
fi
exit $builtin
