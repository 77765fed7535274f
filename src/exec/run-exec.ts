// `openshell-vm run` is a preset on the one instance lifecycle: src/presets/run.ts. This module
// stays for the importers that name it (the CLI, the benchmarks) until they move.
export * from '../presets/run.ts';
