import os from 'node:os';
import * as v from 'valibot';

/**
 * provenance.json beside a built kernel. Its fields are a superset of the ones the libkrun runtime
 * bundle validator reads (src/vmm/libkrun/runtime.ts `Provenance`: artifact, version,
 * build_timestamp, kernel_version, kernel_config_fragment, artifact_sha256, host_os, host_arch,
 * builder, kernel_source, kernel_source_sha256, kernel_config_sha256, compiler, cache_key), so the same file can stand beside a libkrunfw built from the same config.
 */
const SHA256 = v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/));
export const provenanceSchema = v.strictObject({
  artifact: v.string(),
  /** The kernel release (`make kernelrelease`, what `uname -r` says in the guest). */
  version: v.string(),
  build_timestamp: v.string(),
  kernel_version: v.string(),
  kernel_config_fragment: v.string(),
  artifact_sha256: SHA256,
  host_os: v.string(),
  host_arch: v.string(),
  builder: v.string(),
  target: v.literal('qemu'),
  arch: v.picklist(['x86_64', 'aarch64']),
  /** The source package and its version: "linux-source-6.12 6.12.118-1~deb12u1". */
  kernel_source: v.string(),
  kernel_source_sha256: SHA256,
  /** The resolved kernel.config's sha256 (the file beside the image). */
  kernel_config_sha256: SHA256,
  /** What was asked (base recipe + fragments): `auto` boots a build only while this is current. */
  request_sha256: SHA256,
  compiler: v.string(),
  make: v.string(),
  build_seconds: v.number(),
  modules: v.literal('none'),
  cache_key: v.string(),
});
export type KernelProvenance = v.InferOutput<typeof provenanceSchema>;

/** The parsed provenance, or why it is not one. */
export function parseProvenance(text: string): KernelProvenance | string {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return 'not valid JSON';
  }
  const parsed = v.safeParse(provenanceSchema, json);
  if (!parsed.success)
    return parsed.issues.map((i) => `${v.getDotPath(i) ?? 'provenance'}: ${i.message}`).join('; ');
  return parsed.output;
}

export interface ProvenanceFacts {
  readonly artifact: string;
  readonly release: string;
  readonly kernelVersion: string;
  readonly fragments: readonly string[];
  readonly artifactSha256: string;
  readonly arch: 'x86_64' | 'aarch64';
  readonly source: { readonly package: string; readonly version: string; readonly sha256: string };
  readonly configSha256: string;
  readonly requestSha256: string;
  readonly toolchain: { readonly compiler: string; readonly make: string };
  readonly buildSeconds: number;
  readonly key: string;
  readonly builtAt: Date;
  readonly toolVersion: string;
}

export function buildProvenance(facts: ProvenanceFacts): KernelProvenance {
  return {
    artifact: facts.artifact,
    version: facts.release,
    build_timestamp: facts.builtAt.toISOString(),
    kernel_version: facts.kernelVersion,
    kernel_config_fragment: facts.fragments.join(' '),
    artifact_sha256: facts.artifactSha256,
    host_os: `${os.type()} ${os.release()}`,
    host_arch: os.machine(),
    builder: `openshell-vm ${facts.toolVersion} kernel build on ${os.hostname()}`,
    target: 'qemu',
    arch: facts.arch,
    kernel_source: `${facts.source.package} ${facts.source.version}`,
    kernel_source_sha256: facts.source.sha256,
    kernel_config_sha256: facts.configSha256,
    request_sha256: facts.requestSha256,
    compiler: facts.toolchain.compiler,
    make: facts.toolchain.make,
    build_seconds: facts.buildSeconds,
    modules: 'none',
    cache_key: facts.key,
  };
}
