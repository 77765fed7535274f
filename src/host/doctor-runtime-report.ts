import * as v from 'valibot';
import type { GatewayOptions, LibkrunfwFacts } from './doctor-libkrun.ts';

// doctor reads libkrunfw through `openshell-vm runtime --json` in a child process (the FFI stays
// out of doctor's process); this reads that report.

/** The part of `openshell-vm runtime --json` (src/cli/runtime.ts) doctor reads. */
const runtimeReportSchema = v.looseObject({
  kind: v.picklist(['custom', 'stock']),
  provenance: v.optional(
    v.looseObject({ version: v.optional(v.string()), libkrunfw_version: v.optional(v.string()) }),
  ),
  libkrunfwKernel: v.looseObject({
    library: v.string(),
    abiVersion: v.number(),
    kernelBytes: v.number(),
    kernel: v.optional(v.looseObject({ release: v.string() })),
    options: v.variant('known', [
      v.looseObject({
        known: v.literal(true),
        source: v.string(),
        gatewayOptions: v.number(),
        missing: v.array(v.string()),
        modules: v.array(v.string()),
      }),
      v.looseObject({ known: v.literal(false), why: v.string() }),
    ]),
  }),
});

/** What `runtime --json` says of a runtime directory's libkrunfw (its library not yet resolved). */
export interface RuntimeReport {
  readonly facts: Omit<LibkrunfwFacts, 'library'> & { readonly library: string };
  readonly options: GatewayOptions;
}

/**
 * `openshell-vm runtime --json`'s stdout read for doctor (pure): undefined when it is no such
 * report (the command failed before it could write one: its stderr says why).
 */
export function parseRuntimeReport(stdout: string): RuntimeReport | undefined {
  let json: unknown;
  try {
    json = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  const parsed = v.safeParse(runtimeReportSchema, json);
  if (!parsed.success) return undefined;
  const { kind, provenance, libkrunfwKernel: k } = parsed.output;
  const o = k.options;
  return {
    facts: {
      library: k.library,
      kind,
      provenanceVersion: provenance?.libkrunfw_version ?? provenance?.version,
      abiVersion: k.abiVersion,
      kernelRelease: k.kernel?.release,
      kernelBytes: k.kernelBytes,
    },
    options: o.known
      ? { known: true, source: o.source, total: o.gatewayOptions, absent: [...o.missing, ...o.modules] }
      : { known: false, why: o.why },
  };
}

const errorReportSchema = v.object({
  error: v.object({ message: v.string(), hint: v.optional(v.string()) }),
});

/**
 * Why a command gave no report: the CLI's boundary writes `{"error": {message, hint}}` to stdout
 * under --json, and "openshell-vm: error: ..." / "  hint: ..." to stderr; a crash says neither.
 */
export function errorOf(
  stdout: string,
  stderr: string,
): { error: string | undefined; hint: string | undefined } {
  try {
    const parsed = v.safeParse(errorReportSchema, JSON.parse(stdout));
    if (parsed.success) return { error: parsed.output.error.message, hint: parsed.output.error.hint };
  } catch {
    // not JSON: stderr is all there is
  }
  const lines = stderr.split('\n').map((l) => l.trim());
  return {
    error: lines.map((l) => /^(?:openshell-vm: )?error: (.*)$/.exec(l)?.[1]).find((m) => m !== undefined),
    hint: lines.find((l) => l.startsWith('hint: '))?.slice('hint: '.length),
  };
}
