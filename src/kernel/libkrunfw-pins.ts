/**
 * The libkrunfw release `openshell-vm kernel build --target libkrunfw` builds, and the kernel
 * tarball that release is made for, each pinned by URL and sha256. A download is used only when
 * its bytes have the pinned sha256.
 *
 * Where the values come from (2026-12-02):
 * - libkrunfw v5.5.0 is the release Debian packages as libkrunfw5 5.5.0+ds-1 (its kernel reports
 *   `Linux version 6.12.91`); its Makefile says KERNEL_VERSION = linux-6.12.91, ABI_VERSION = 5,
 *   FULL_VERSION = 5.5.0. The archive's sha256 is the one the tag's `git archive` (the format the
 *   forge serves: prefix libkrunfw-5.5.0/, gzip -n) gives from the upstream repository at commit
 *   ec4b297964877d83432f9ccda6dad8ff6e9de3e4; a third-party release record publishes the same value.
 * - linux-6.12.91.tar.xz's sha256 is the one two independent package recipes pin for it.
 */
export interface PinnedDownload {
  /** What it is, for messages: "libkrunfw source", "Linux kernel source". */
  readonly what: string;
  readonly version: string;
  readonly url: string;
  /** Undefined: not pinned yet, and the build refuses to download it (pass a local path). */
  readonly sha256: string | undefined;
  /** The file name it is kept under in the download cache. */
  readonly fileName: string;
}

export const LIBKRUNFW_REPO = 'https://github.com/libkrun/libkrunfw';
export const LIBKRUNFW_COMMIT = 'ec4b297964877d83432f9ccda6dad8ff6e9de3e4';

export const LIBKRUNFW_SOURCE_PIN: PinnedDownload = {
  what: 'libkrunfw source',
  version: '5.5.0',
  url: `${LIBKRUNFW_REPO}/archive/refs/tags/v5.5.0.tar.gz`,
  sha256: 'b0cbf1450269c80aea1dccbf440011deb2762a098b338c234079a6ef06456ead',
  fileName: 'libkrunfw-5.5.0.tar.gz',
};

export const LIBKRUNFW_KERNEL_PIN: PinnedDownload = {
  what: 'Linux kernel source',
  version: '6.12.91',
  url: 'https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.91.tar.xz',
  sha256: '0ff2ab9e169f9f1948557471fbb450d3018f8c5b77caf288e1a3982582597969',
  fileName: 'linux-6.12.91.tar.xz',
};
