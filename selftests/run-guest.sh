#!/bin/sh
# Runs inside the guest (copied into /bin next to the test binaries):
#   run-guest.sh [--each-with ARGS] TEST...
# runs each TEST in order (with ARGS, split on spaces, if given), passing
# its TAP through; "# run-guest: TEST" heads each one's output.
# Exits 0 only if every TEST exited 0.
failed=
args=
if [ "$1" = --each-with ]; then
	args=$2
	shift 2
fi
for t in "$@"; do
	echo "# run-guest: $t"
	# shellcheck disable=SC2086 # ARGS are words
	"$t" $args || failed="$failed $t($?)"
done
[ -z "$failed" ] && echo "# run-guest: all passed" && exit 0
echo "# run-guest: FAILED:$failed"
exit 1
