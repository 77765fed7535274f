import { type AgentBinary, installAgent } from '../guest/agent-build.ts';
import { writeGatewayManifest } from './helmchart.ts';
import { cleanRootfsKineDatastore, type KineReport } from './kine.ts';
import { type RootfsRecord, verifyRootfsForBoot } from './record.ts';

export interface BootPreparation {
  readonly record: RootfsRecord;
  /** undefined: k3s has not run in this rootfs yet. */
  readonly kine: KineReport | undefined;
  /** true when the HelmChart had to be written (first boot, or it was changed in the guest). */
  readonly manifestWritten: boolean;
}

/**
 * What the host does to a gateway rootfs before every boot, with k3s stopped: refuse a rootfs
 * that is not this tool's build, clean k3s's datastore of runtime records (and refuse a corrupt
 * one with the --reset hint), and render the HelmChart with the same function and values as the
 * build did (so its bytes do not change and the Helm controller does not re-install). The rootfs
 * is the guest's: each step reaches it through GuestRoot and refuses a planted symlink.
 */
export async function prepareRootfsForBoot(
  rootfs: string,
  options: { readonly kernelRelease?: string | undefined; readonly agent?: AgentBinary | undefined } = {},
): Promise<BootPreparation> {
  const record = await verifyRootfsForBoot(rootfs, options);
  if (options.agent) await installAgent(rootfs, options.agent);
  const kine = await cleanRootfsKineDatastore(rootfs);
  const manifestWritten = await writeGatewayManifest(rootfs);
  return { record, kine, manifestWritten };
}
