#!/bin/sh
# Runs inside the guest (copied into /bin next to the test binaries):
#   run-guest.sh TEST...   runs each TEST in order, passing its TAP through.
# Exits 0 only if every TEST exited 0.
failed=
for t in "$@"; do
	echo "# run-guest: $t"
	"$t" || failed="$failed $t($?)"
done
[ -z "$failed" ] && echo "# run-guest: all passed" && exit 0
echo "# run-guest: FAILED:$failed"
exit 1
