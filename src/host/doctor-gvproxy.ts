import { type DoctorCheck, failed, passed } from './doctor-check.ts';

/** The transport, said in the check's text: why -listen-qemu, on both platforms. */
export const GVPROXY_TRANSPORT =
  "-listen-qemu: a unix stream socket with QEMU's framing, the transport openshell-vm uses on Linux and macOS alike " +
  '(never the vfkit unixgram one, -listen-vfkit: the host-side frame filter, src/net/frame-relay.ts, relays streams only)';

/** What gvproxy says of itself: `gvproxy -help` (usage, on stderr) and `gvproxy -version`. */
export interface GvproxyFacts {
  readonly binary: string;
  readonly usage: string;
  /** `gvproxy -version`'s output; undefined when it has no -version. */
  readonly version: string | undefined;
}

/** The flags in gvproxy's usage text ("  -listen-qemu string" lines), sorted. */
export function gvproxyFlags(usage: string): string[] {
  return [...usage.matchAll(/^\s+-([a-z][a-z0-9-]*)\b/gm)].map((m) => m[1] as string).sort();
}

/** "0.8.1" from "gvproxy version v0.8.1"; undefined when it says no version. */
export function gvproxyVersion(text: string | undefined): string | undefined {
  return /\bversion v?(\d+\.\d+(?:\.\d+)?\S*)/.exec(text ?? '')?.[1];
}

/**
 * gvproxy found and new enough for openshell-vm's transport (-listen-qemu; -services, 0.8.2+, is
 * used when present, else -listen in a 0700 directory). `fix` is the platform's way to get one.
 */
export function gvproxyCheck(facts: GvproxyFacts, installFix: string): DoctorCheck {
  const flags = new Set(gvproxyFlags(facts.usage));
  const version = gvproxyVersion(facts.version);
  const what = `${facts.binary} (gvproxy ${version ?? 'of unknown version'})`;
  if (!flags.size) {
    return failed(
      'gvproxy',
      true,
      `${what} printed no usage for -help: it is not gvproxy, or it does not run here`,
      installFix,
    );
  }
  if (!flags.has('listen-qemu')) {
    return failed(
      'gvproxy',
      true,
      `${what} has no -listen-qemu; openshell-vm needs ${GVPROXY_TRANSPORT}`,
      installFix,
    );
  }
  const api = flags.has('services')
    ? 'API on -services (no /connect)'
    : 'no -services (0.8.2+): API on -listen, in a 0700 directory';
  return passed('gvproxy', `${what}, ${GVPROXY_TRANSPORT}; ${api}`);
}
