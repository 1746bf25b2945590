# Shared settings for the rust_ksm scripts; source it, do not run it.
# shellcheck shell=bash

RUST_KSM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUST_KSM_CACHE=${RUST_KSM_CACHE:-$HOME/.cache/rust_ksm}
TOOLS_DIR=$RUST_KSM_CACHE/tools
BINDGEN=$TOOLS_DIR/bin/bindgen

# Toolchain pins (see ../shared/TOOLCHAIN.md).  The module must be built
# with exactly the rustc that built the kernel.
RUSTC_DEB_VERSION=1.85.0+dfsg3-1~deb12u3
BINDGEN_VERSION=0.69.5
LLVM_SUFFIX=-19

# The same make variables go to every kernel and module make.
KMAKE_VARS=(LLVM=$LLVM_SUFFIX RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc
	RUSTDOC=/usr/bin/rustdoc RUSTFMT=/usr/bin/rustfmt
	CLIPPY_DRIVER=/usr/bin/clippy-driver BINDGEN="$BINDGEN")

KERNEL_TARBALL=/usr/src/linux-source-6.12.tar.xz

# Which kernel: "test" (make check: KASAN, lockdep, DEBUG_VM, fault
# injection) or "production" (make bench: the same minus the debugging,
# kernel/config/variants/production.config).
RUST_KSM_KERNEL=${RUST_KSM_KERNEL:-test}
case "$RUST_KSM_KERNEL" in
test | production) ;;
*)
	echo "error: RUST_KSM_KERNEL is test or production" >&2
	exit 1
	;;
esac

# The config fragments of the kernel, in the order they apply (a later line
# overrides an earlier one).
kernel_fragments() {
	ls "$RUST_KSM_ROOT"/kernel/config/*.config
	[ "$RUST_KSM_KERNEL" = test ] ||
		echo "$RUST_KSM_ROOT/kernel/config/variants/$RUST_KSM_KERNEL.config"
}

# Where the kernel tree for the current source + config lives.  Patches are
# applied incrementally inside it (scripts/kernel-build), so they are not
# part of the key: changing a patch rebuilds only what it touches.
kernel_key() {
	local srcver
	srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null)
	{
		echo "$srcver"
		echo "$RUSTC_DEB_VERSION $BINDGEN_VERSION $LLVM_SUFFIX"
		# shellcheck disable=SC2046  # one path per line, no spaces
		cat $(kernel_fragments)
	} | sha256sum | cut -c1-12
}

kernel_dir() {
	local prefix=linux
	[ "$RUST_KSM_KERNEL" = test ] || prefix=linux-$RUST_KSM_KERNEL
	echo "$RUST_KSM_CACHE/$prefix-$(kernel_key)"
}

die() {
	echo "error: $*" >&2
	exit 1
}
