import zlib from 'node:zlib';
import { HostError } from '../errors.ts';

/**
 * What can be read from a kernel image's bytes (the kernel libkrunfw embeds: vmlinux's loadable
 * segments on x86_64, the arm64 Image on aarch64), pure: its `Linux version ...` banner, and its
 * configuration when it was built with CONFIG_IKCONFIG (kernel/configs.c puts the gzipped .config
 * between the markers IKCFG_ST and IKCFG_ED).
 */

export interface KernelBanner {
  /** The release, e.g. "6.12.91". */
  readonly release: string;
  /** The whole banner line: "Linux version 6.12.91 (root@libkrunfw) (gcc ...) #1 SMP ...". */
  readonly banner: string;
}

const BANNER_PREFIX = Buffer.from('Linux version ', 'latin1');
/** The banner proper (linux_banner), not the "Linux version %s" format strings beside it. */
const BANNER = /^Linux version (\d+\.\d+(?:\.\d+)?[^\s]*) \([^\n\0]*/;

/** The image's `Linux version` banner, or undefined when it has none (not a Linux kernel). */
export function findKernelBanner(image: Uint8Array): KernelBanner | undefined {
  const bytes = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  for (let at = bytes.indexOf(BANNER_PREFIX); at >= 0; at = bytes.indexOf(BANNER_PREFIX, at + 1)) {
    const text = bytes.subarray(at, at + 512).toString('latin1');
    const m = BANNER.exec(text);
    if (m) return { release: m[1] as string, banner: m[0].trimEnd() };
  }
  return undefined;
}

const IKCFG_START = Buffer.from('IKCFG_ST', 'latin1');
const IKCFG_END = Buffer.from('IKCFG_ED', 'latin1');

/**
 * The .config embedded by CONFIG_IKCONFIG, or undefined when the image carries none. Markers
 * whose contents do not decompress to a kernel config are an error (a damaged image).
 */
export function extractIkconfig(image: Uint8Array): string | undefined {
  const bytes = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  const start = bytes.indexOf(IKCFG_START);
  if (start < 0) return undefined;
  const end = bytes.indexOf(IKCFG_END, start + IKCFG_START.length);
  if (end < 0) {
    throw new HostError('the kernel image has an IKCFG_ST marker but no IKCFG_ED after it', {
      hint: 'the library is damaged: reinstall or rebuild it',
    });
  }
  let text: string;
  try {
    text = zlib.gunzipSync(bytes.subarray(start + IKCFG_START.length, end)).toString('utf8');
  } catch (err) {
    throw new HostError('the kernel configuration embedded in the image (IKCONFIG) does not decompress', {
      hint: 'the library is damaged: reinstall or rebuild it',
      cause: err,
    });
  }
  if (!/^CONFIG_[A-Z0-9_]+=/m.test(text)) {
    throw new HostError('the configuration embedded in the kernel image (IKCONFIG) has no CONFIG_ lines', {
      hint: 'the library is damaged: reinstall or rebuild it',
    });
  }
  return text;
}
