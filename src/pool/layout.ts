import { createHash } from 'node:crypto';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import type { VmOptions } from '../options/exec-options.ts';

/**
 * A warm pool's key and files. A pool is identified by its key, the options that shape a VM (what
 * `run` must match to take one of its VMs): its id is a hash of the key, so `run` finds the one
 * pool it may use by its own options, with one lookup and no scan.
 *
 * <data>/pools/<id>/
 *   pool.json        the pool's record: supervisor pid and start time, key, size (see record.ts)
 *   ready/<member>   a booted, warmed member nobody has taken (appears whole: renamed into place)
 *   claimed/<member> a member a `run` took (renamed from ready/: only one rename can win); its
 *                    content, written after the rename, is the claimant's pid and start time
 *   supervisor.log   the pool supervisor's progress and errors
 * Members are instances named pool-<id>-<n> (n counts up and is never reused).
 */
export const POOL_FILES = {
  record: 'pool.json',
  ready: 'ready',
  claimed: 'claimed',
  log: 'supervisor.log',
} as const;

/** The options that shape a pool's VMs, as resolved by the one validator (src/options/). */
export interface PoolKey {
  readonly arch: string;
  readonly vcpus: number;
  readonly memMib: number;
  readonly network: string;
  readonly backend: string | null;
  readonly accel: string | null;
  readonly rootfs: string | null;
  readonly kernel: string | null;
}

/** The pool key of resolved VM options (the same for `pool start` and `run`). */
export function poolKeyOf(options: VmOptions): PoolKey {
  return {
    arch: options.arch,
    vcpus: options.vcpus,
    memMib: options.memMib,
    network: options.network,
    backend: options.backend ?? null,
    accel: options.accel ?? null,
    rootfs: options.rootfs ?? null,
    kernel: options.kernel ? JSON.stringify(options.kernel) : null,
  };
}

/** The id of the pool with this key: 10 hex digits of the key's sha256 (fixed field order). */
export function poolIdOf(key: PoolKey): string {
  const canonical = JSON.stringify([
    key.arch,
    key.vcpus,
    key.memMib,
    key.network,
    key.backend,
    key.accel,
    key.rootfs,
    key.kernel,
  ]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 10);
}

export const POOL_ID = /^[0-9a-f]{10}$/;

export function poolsRoot(env: HostEnvironment): string {
  return path.join(env.dataDir, 'pools');
}

export function poolDir(env: HostEnvironment, id: string): string {
  return path.join(poolsRoot(env), id);
}

/** The instance name of a pool's n-th member. */
export function memberName(id: string, n: number): string {
  return `pool-${id}-${n}`;
}

/** Whether an instance name is one of pool `id`'s members. */
export function isMemberOf(id: string, instance: string): boolean {
  return new RegExp(`^pool-${id}-[0-9]+$`).test(instance);
}

/** A key as one line for humans: "x86_64, 2 vCPU, 2048 MiB, gvproxy". */
export function describeKey(key: PoolKey): string {
  const parts = [key.arch, `${key.vcpus} vCPU`, `${key.memMib} MiB`, `net ${key.network}`];
  if (key.backend) parts.push(`backend ${key.backend}`);
  if (key.accel) parts.push(`accel ${key.accel}`);
  if (key.rootfs) parts.push(`rootfs ${key.rootfs}`);
  if (key.kernel) parts.push(`kernel ${key.kernel}`);
  return parts.join(', ');
}
