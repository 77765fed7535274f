// The gateway is a preset on the one instance lifecycle: src/presets/gateway.ts. This module stays
// for the importers that name it (the CLI, config/gateway-options.ts) until they move.
export * from '../presets/gateway.ts';
