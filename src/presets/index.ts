import type { InstanceCleanup } from '../instance/cleanup.ts';
import { gatewayCleanup } from './gateway-cleanup.ts';

/**
 * Every preset's cleanup, for `delete` (which runs those the instance's presets record names,
 * src/instance/cleanup.ts). `run` has none: what it makes is all inside the instance directory.
 */
export const PRESET_CLEANUPS: readonly InstanceCleanup[] = [gatewayCleanup];
