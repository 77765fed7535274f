import { readEnvironment } from '../config/environment.ts';
import { stableApiPort } from '../gateway/api-port.ts';
import { lexists } from '../host/fs.ts';
import { ensureRootLocation } from '../instance/root-location.ts';
import { ensureInstanceDir, instanceDir } from '../instance/runs.ts';
import { checkHostPortsFree, type PortForward } from '../net/ports.ts';
import { hostCapacity, type OptionNames } from '../options/exec-options.ts';
import {
  type GatewayOptions,
  type RawGatewayOptions,
  resolveGatewayOptions,
} from '../options/gateway-options.ts';
import { KUBE_API_GUEST_PORT } from '../presets/gateway.ts';
import { rootfsDir } from '../rootfs/layout.ts';
import { readRootfsRecord } from '../rootfs/record.ts';
import { assignHostPorts, type PreparedVm } from './prepare.ts';
import { chooseVmm, type ProgressSink } from './vmm-choice.ts';

/**
 * The gateway's preparation (prepare.ts for a run's), in its own module so that `run` does not
 * load the gateway's and the rootfs builder's code.
 */

/** A gateway's boot, decided: its rootfs and every forward (the gateway's, the API's, the extra ones). */
export interface PreparedGateway extends PreparedVm<GatewayOptions> {
  readonly rootfs: string;
  readonly api: PortForward;
  readonly forwards: readonly PortForward[];
}

/**
 * A gateway (`openshell-vm` without --exec, the library's startGateway()): the options, then its
 * rootfs (one of the user's choice only where no other local user can reach it; the instance's own
 * inside the instance directory, checked and tightened before anything in it is read), its build
 * record, the API port, the VMM.
 */
export async function prepareGateway(
  raw: RawGatewayOptions,
  names: OptionNames,
  sink: ProgressSink,
): Promise<PreparedGateway> {
  const { options: resolved, warnings } = resolveGatewayOptions(raw, hostCapacity(), names);
  for (const warning of warnings) sink.warn(warning);
  const env = readEnvironment();
  const [gateway, ...extraForwards] = await assignHostPorts([resolved.gateway, ...resolved.extraForwards]);
  const options: GatewayOptions = Object.freeze({
    ...resolved,
    gateway: gateway as PortForward,
    extraForwards,
  });
  const rootfs =
    options.rootfs === undefined
      ? rootfsDir(env, options.instance)
      : await ensureRootLocation(options.rootfs);
  if (options.rootfs !== undefined || (await lexists(instanceDir(env, options.instance))))
    await ensureInstanceDir(env, options.instance, (m) => sink.warn(m));
  await readRootfsRecord(rootfs); // a missing rootfs: "build it: openshell-vm prepare-rootfs --name N"
  const api: PortForward = {
    hostAddress: '127.0.0.1',
    hostPort:
      options.apiPort ??
      (await stableApiPort(instanceDir(env, options.instance), { warn: (m) => sink.warn(m) })),
    guestPort: KUBE_API_GUEST_PORT,
  };
  const forwards = [options.gateway, api, ...options.extraForwards];
  const { backend, accel } = await chooseVmm(
    env,
    { ...options, network: 'gvproxy', forwards, purpose: 'gateway' },
    sink,
  );
  await checkHostPortsFree(forwards);
  return { env, options, rootfs, api, forwards, backend, accel };
}
